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

Two adapters, each owning one ``zeroconf.Zeroconf`` (which runs its own asyncio loop in its own
thread when created outside a running loop, as here):

- :class:`Announcer` — ``start(name, port, pin)`` registers (blocking ~1.5 s: DNS-SD probes for a
  name conflict first), ``close()`` sends goodbye packets and closes the sockets.
- :class:`LanBrowser` — a ``ServiceBrowser``; every found, updated or removed server is reported
  as an immutable :class:`DiscoveredServer` through the callbacks, **on zeroconf's browser
  thread** (a Qt caller must cross to its GUI thread with a queued signal).

zeroconf is imported inside the methods: a missing package or a machine without multicast
(no interface, no route, a sandbox) raises :class:`DiscoveryUnavailable` with a reason a user can
read, never anything else.

The pure parts (:func:`txt_properties`, :func:`parse_service`, :func:`instance_name`,
:func:`announce_plan`) decide everything that can be decided without sockets and are unit
tested.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from voipclient.net.pins import is_valid_pin

__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "AnnouncePlan",
    "Announcer",
    "DiscoveredServer",
    "DiscoveryUnavailable",
    "LanBrowser",
    "announce_plan",
    "instance_name",
    "parse_service",
    "txt_properties",
]

log = logging.getLogger("voipclient.net.discovery")

SERVICE_TYPE: Final = "_voipclient._tcp.local."
PROTOCOL_VERSION: Final = "vc1"
#: DNS labels (the instance name, the host name) are at most 63 bytes (RFC 6763 §4.1.1).
_MAX_LABEL: Final = 63
#: Server names in the TXT record and in the list: the protocol's limit for ``server_name``.
_MAX_NAME: Final = 64
#: TTL of every record, seconds. Shorter than DNS-SD's 75 min for PTR/SRV/TXT so that a server
#: killed without goodbye packets leaves the clients' lists within two minutes.
_TTL_S: Final = 120
#: How long the browser waits for a found instance's SRV/TXT/A records (usually already cached:
#: they travel with the announcement), milliseconds.
_LOOKUP_TIMEOUT_MS: Final = 2000
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


# -- pure parts -------------------------------------------------------------------------------


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


def _host_label(hostname: str) -> str:
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


# -- adapters -----------------------------------------------------------------------------------


def _import_zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError as exc:  # pragma: no cover - a dependency; missing only in odd installs
        raise DiscoveryUnavailable(f"python-zeroconf is not installed ({exc})") from None
    return zeroconf


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot open the multicast sockets: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, OSError) else text


def _open_zeroconf(zc_mod: Any, interfaces: Sequence[str] | None) -> Any:
    """A ``Zeroconf`` on ``interfaces`` (None: all), IPv4 unless an IPv6 address is named."""
    try:
        if interfaces is None:
            return zc_mod.Zeroconf(
                interfaces=zc_mod.InterfaceChoice.All, ip_version=zc_mod.IPVersion.V4Only
            )
        return zc_mod.Zeroconf(interfaces=list(interfaces))
    except Exception as exc:  # zeroconf raises OSError, RuntimeError, ...: all mean "not here"
        raise DiscoveryUnavailable(_reason(exc)) from exc


def machine_addresses() -> list[str]:
    """This machine's interface addresses (IPv4 and IPv6, as text), via ifaddr (a zeroconf
    dependency); [] when it is not available."""
    try:
        import ifaddr
    except ImportError:  # pragma: no cover
        return []
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            value = ip.ip
            out.append(value if isinstance(value, str) else str(value[0]))
    return out


class Announcer:
    """Announces one server on the LAN. ``start`` blocks (~1.5 s of DNS-SD probing): call it
    from a worker thread, not from an event loop. ``close`` sends goodbyes (~0.5 s).

    Thread safety: ``start`` and ``close`` may be called from different threads; ``close``
    waits for a ``start`` in progress.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zc: Any = None
        self._closed = False
        #: The registered instance name (zeroconf may have renamed it), once started.
        self.service: str | None = None
        self.plan: AnnouncePlan | None = None

    def start(self, name: str, port: int, pin: str, *, host: str = "0.0.0.0") -> None:  # noqa: S104
        """Register ``name`` at ``port`` with ``pin``, for a server listening on ``host``.

        Raises:
            DiscoveryUnavailable: zeroconf is missing, multicast does not work, or the
                registration failed; the message says why.
            ValueError: a malformed pin (our misuse).
        """
        properties = txt_properties(name, pin)
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, not {port}")
        with self._lock:
            if self._closed or self._zc is not None:
                raise RuntimeError("an Announcer starts once")
            try:
                plan = announce_plan(host, machine_addresses())
            except ValueError as exc:
                raise DiscoveryUnavailable(str(exc)) from None
            zc_mod = _import_zeroconf()
            zc = _open_zeroconf(zc_mod, plan.interfaces)
            label = _host_label(socket.gethostname())
            try:
                info = zc_mod.ServiceInfo(
                    SERVICE_TYPE,
                    f"{instance_name(name, label, port)}.{SERVICE_TYPE}",
                    port=port,
                    properties=properties,
                    # Our own host record: the machine's "<hostname>.local." may belong to
                    # avahi or Bonjour, and two of our servers must not collide on it.
                    server=f"{label}-vc{port}.local.",
                    host_ttl=_TTL_S,
                    other_ttl=_TTL_S,
                    parsed_addresses=list(plan.addresses),
                )
                zc.register_service(info, allow_name_change=True)
            except Exception as exc:
                _close_quietly(zc)
                raise DiscoveryUnavailable(_reason(exc)) from exc
            self._zc = zc
            self.plan = plan
            self.service = str(info.name)
        log.info(
            "announced on the LAN service=%r addresses=%s%s",
            self.service,
            ",".join(plan.addresses),
            " (loopback only: other machines cannot connect)" if plan.local_only else "",
        )

    def close(self) -> None:
        """Withdraw the announcement (goodbye packets) and close the sockets; idempotent."""
        with self._lock:
            self._closed = True
            zc, self._zc = self._zc, None
        if zc is not None:
            _close_quietly(zc)
            log.info("LAN announcement withdrawn")


def _close_quietly(zc: Any) -> None:
    try:
        zc.close()  # unregisters every service first (goodbye packets)
    except Exception as exc:  # closing must never cost the caller its own shutdown
        log.warning("closing zeroconf failed: %s", _reason(exc))


ServerCallback = Callable[[DiscoveredServer], None]


class LanBrowser:
    """Browses the LAN for servers.

    ``on_found(server)`` runs for every new or changed announcement, ``on_removed(server)``
    (the last version seen) when one goes away — both **on zeroconf's browser thread**. A
    callback that raises is logged and does not stop the browser.
    """

    def __init__(
        self,
        on_found: ServerCallback,
        on_removed: ServerCallback,
        *,
        interfaces: Sequence[str] | None = None,
    ) -> None:
        self._on_found = on_found
        self._on_removed = on_removed
        self._interfaces = None if interfaces is None else tuple(interfaces)
        self._lock = threading.Lock()
        self._servers: dict[str, DiscoveredServer] = {}
        self._zc: Any = None
        self._browser: Any = None
        self._closed = False

    def start(self) -> None:
        """Open the sockets and start browsing.

        Raises:
            DiscoveryUnavailable: zeroconf is missing or multicast does not work here.
        """
        zc_mod = _import_zeroconf()
        with self._lock:
            if self._closed or self._zc is not None:
                raise RuntimeError("a LanBrowser starts once")
            zc = _open_zeroconf(zc_mod, self._interfaces)
            try:
                self._browser = zc_mod.ServiceBrowser(
                    zc, SERVICE_TYPE, handlers=[self._on_state_change]
                )
            except Exception as exc:
                _close_quietly(zc)
                raise DiscoveryUnavailable(_reason(exc)) from exc
            self._zc = zc
        log.debug("browsing the LAN for %s", SERVICE_TYPE)

    def servers(self) -> tuple[DiscoveredServer, ...]:
        """The servers seen now (any thread)."""
        with self._lock:
            return tuple(self._servers.values())

    def close(self) -> None:
        """Stop browsing; no callback runs after this returns. Idempotent."""
        with self._lock:
            self._closed = True
            zc, browser = self._zc, self._browser
            self._zc = self._browser = None
        if browser is not None:
            try:
                browser.cancel()  # joins the browser thread (at most one lookup timeout)
            except Exception as exc:
                log.warning("stopping the LAN browser failed: %s", _reason(exc))
        if zc is not None:
            _close_quietly(zc)

    # Runs on zeroconf's browser thread; zeroconf passes these by keyword.
    def _on_state_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: Any
    ) -> None:
        try:
            if state_change.name == "Removed":
                with self._lock:
                    gone = self._servers.pop(name, None)
                    closed = self._closed
                if gone is not None and not closed:
                    self._on_removed(gone)
                return
            info = zeroconf.get_service_info(service_type, name, timeout=_LOOKUP_TIMEOUT_MS)
            if info is None:
                log.debug("no records for %r", name)
                return
            found = parse_service(
                name,
                info.parsed_addresses(),
                info.port,
                info.properties or {},
                info.server,
            )
            if found is None:
                log.debug("unusable announcement %r", name)
                return
            with self._lock:
                if self._closed or self._servers.get(name) == found:
                    return
                self._servers[name] = found
            self._on_found(found)
        except Exception:  # a bad announcement or callback must not end the browser thread
            log.exception("LAN discovery: handling %r failed", name)
