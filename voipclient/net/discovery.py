"""LAN discovery over mDNS/DNS-SD (python-zeroconf): the server announces itself, clients browse.

A server started with ``--announce`` registers one service instance of type
``_voipclient._tcp.local.`` (:data:`SERVICE_TYPE`) with the TXT records

=========== ===================================================================================
``pin``     the server's SPKI pin, ``sha256/<base64>`` (what the start line prints)
``name``    the server's name (``[server] name``), shown in the client's list
``version`` ``vc1``: the protocol family (:data:`PROTOCOL_VERSION`)
=========== ===================================================================================

and the addresses it listens on. An announcement is a convenience, not a trust anchor: anyone on
the LAN can announce anything. The client still asks the user to approve a server's key on first
contact; the advertised pin only lets the approval dialog say whether the key matches.

The adapters are in :mod:`voipclient.lan` (each owning one ``zeroconf.Zeroconf``):
``Announcer`` for the server and ``LanBrowser`` for the client.

The pure parts (:func:`txt_properties`, :func:`parse_service`, :func:`instance_name`,
:func:`announce_plan`) decide everything that can be decided without sockets and are unit
tested.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from voipclient.net.pins import is_valid_pin

__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "AnnouncePlan",
    "DiscoveredServer",
    "DiscoveryUnavailable",
    "announce_plan",
    "host_label",
    "instance_name",
    "parse_service",
    "txt_properties",
]

SERVICE_TYPE: Final = "_voipclient._tcp.local."
PROTOCOL_VERSION: Final = "vc1"
#: DNS labels (the instance name, the host name) are at most 63 bytes (RFC 6763 §4.1.1).
_MAX_LABEL: Final = 63
#: Server names in the TXT record and in the list: the protocol's limit for ``server_name``.
_MAX_NAME: Final = 64
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_HOST_LABEL_BAD: Final = re.compile(r"[^A-Za-z0-9-]+")


class DiscoveryUnavailable(Exception):
    """LAN discovery cannot work here; ``str(exc)`` is the reason, for a user to read."""


@dataclass(frozen=True, slots=True)
class DiscoveredServer:
    """One server seen on the LAN."""

    #: The DNS-SD instance name (``<instance>._voipclient._tcp.local.``): the identity of this
    #: announcement; a later report with the same ``service`` replaces or removes it.
    service: str
    #: What to show: the TXT ``name`` (control characters removed, at most 64 characters), else
    #: the instance label.
    name: str
    #: An address to connect to (IPv4 preferred), or the announced ``.local`` host name.
    host: str
    #: TCP (TLS control) and UDP (voice) port.
    port: int
    #: The advertised SPKI pin (``sha256/...``), or None when absent or malformed.
    pin: str | None
    #: The TXT ``version`` (``"vc1"`` today; "" when absent). Anything else is not ours to use.
    version: str

    @property
    def compatible(self) -> bool:
        return self.version == PROTOCOL_VERSION


# -- the decisions -------------------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    return _CONTROL.sub("", text).strip()[:limit]


def txt_properties(name: str, pin: str) -> dict[str, str]:
    """The TXT records a server announces."""
    if not is_valid_pin(pin):
        raise ValueError(f"not a pin: {pin!r}")
    return {"pin": pin, "name": _clean(name, _MAX_NAME), "version": PROTOCOL_VERSION}


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def instance_name(name: str, host_label: str, port: int) -> str:
    """``"<name> @ <host>:<port>"`` within one DNS label (63 bytes; the name is shortened).

    The host and port make two servers named alike (the default name) distinct, so neither
    has to be renamed by DNS-SD's conflict resolution."""
    suffix = f" @ {host_label}:{port}"
    # A dot would split the label when zeroconf parses the full name back.
    base = _clean(name, _MAX_NAME).replace(".", " ") or "voipclient-server"
    room = _MAX_LABEL - len(suffix.encode("utf-8"))
    if room < 8:  # an absurdly long host name: drop it rather than the server's name
        suffix = f" :{port}"
        room = _MAX_LABEL - len(suffix)
    return _truncate_utf8(base, room).rstrip() + suffix


def host_label(hostname: str) -> str:
    label = _HOST_LABEL_BAD.sub("-", hostname.split(".", maxsplit=1)[0]).strip("-")
    return label[:40] or "host"


def _decode(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""


def _preferred_host(addresses: Sequence[str], server: str | None) -> str | None:
    """IPv4 first (loopback last), then global IPv6, then the ``.local`` host name."""
    v4: list[ipaddress.IPv4Address] = []
    v6: list[ipaddress.IPv6Address] = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv4Address):
            v4.append(addr)
        elif not addr.is_link_local:  # needs a scope id, which a host string cannot carry
            v6.append(addr)
    v4.sort(key=lambda a: a.is_loopback)
    v6.sort(key=lambda a: a.is_loopback)
    if v4:
        return str(v4[0])
    if v6:
        return str(v6[0])
    if server:
        return server.rstrip(".") or None
    return None


def parse_service(
    service: str,
    addresses: Sequence[str],
    port: int | None,
    properties: Mapping[bytes | str, object],
    server: str | None = None,
) -> DiscoveredServer | None:
    """A :class:`DiscoveredServer` from what zeroconf resolved, or None when it cannot be used
    (no port, no address). A missing or malformed pin is kept as None, not an error: the user
    can still connect and approve the key by hand."""
    if port is None or not 0 < port < 65536:
        return None
    host = _preferred_host(addresses, server)
    if host is None:
        return None
    props = {_decode(k).lower(): _decode(v) for k, v in properties.items()}
    pin = props.get("pin", "")
    label = service.removesuffix("." + SERVICE_TYPE).removesuffix(SERVICE_TYPE)
    name = _clean(props.get("name", ""), _MAX_NAME) or _clean(label, _MAX_NAME) or host
    return DiscoveredServer(
        service=service,
        name=name,
        host=host,
        port=port,
        pin=pin if is_valid_pin(pin) else None,
        version=_clean(props.get("version", ""), 16),
    )


@dataclass(frozen=True, slots=True)
class AnnouncePlan:
    """Where to announce: the interfaces zeroconf listens and answers on (None: all) and the
    addresses put in the A/AAAA records."""

    interfaces: tuple[str, ...] | None
    addresses: tuple[str, ...]
    #: Only this machine can use the announcement (the server listens on loopback).
    local_only: bool


def announce_plan(listen_host: str, machine_addresses: Sequence[str]) -> AnnouncePlan:
    """Decide the interfaces and addresses for a server listening on ``listen_host``.

    - loopback (``127.0.0.1``, ``::1``, ``localhost``): announce on the loopback interface only
      (other machines could not connect, and must not be told to connect to *their* loopback);
    - a wildcard (``0.0.0.0``, ``::``): every interface, with ``machine_addresses`` (the caller
      passes this machine's non-loopback addresses; ``0.0.0.0`` keeps the IPv4 ones);
    - one address: that interface and that address.

    Raises ValueError when nothing is left to announce.
    """
    host = listen_host.strip("[]")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"cannot announce a server listening on the host name {listen_host!r}; "
            "listen on an address (or 0.0.0.0) to announce it"
        ) from None
    if addr.is_loopback:
        return AnnouncePlan(("127.0.0.1",), (str(addr),), local_only=True)
    if addr.is_unspecified:
        wanted: list[str] = []
        for text in machine_addresses:
            try:
                a = ipaddress.ip_address(text)
            except ValueError:
                continue
            if a.is_loopback or (isinstance(a, ipaddress.IPv6Address) and a.is_link_local):
                continue
            if addr.version == 4 and a.version != 4:
                continue
            wanted.append(str(a))
        if not wanted:
            raise ValueError("this machine has no network address to announce")
        return AnnouncePlan(None, tuple(dict.fromkeys(wanted)), local_only=False)
    return AnnouncePlan((str(addr),), (str(addr),), local_only=False)
