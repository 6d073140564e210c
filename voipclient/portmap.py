"""Opening the relay server's port on the user's home router (UPnP IGD port mapping).

"Host a server for friends" needs the relay's TCP (TLS control) and UDP (voice) port reachable
from the internet. Most home routers let a LAN host ask for that over UPnP: an *Internet Gateway
Device* (IGD) answers an SSDP search, describes itself in XML, and takes SOAP calls on its
``WANIPConnection`` (or ``WANPPPConnection``) service. This adapter does that with
`async-upnp-client <https://github.com/StevenLooman/async_upnp_client>`_:

1. find the router: an SSDP ``M-SEARCH`` for ``InternetGatewayDevice:1`` and ``:2`` (sent to the
   multicast group, or unicast to ``ssdp_address``), or an explicit description URL
   (``location=``, for tests and for users who know their router);
2. load its description and pick the connection service to use (a connected one first);
3. ``AddPortMapping`` for TCP and UDP: external port = internal port, internal client = this
   host's address on the router's side (:func:`lan_address`), a 24 h lease (retried with lease 0,
   "permanent", when the router answers 725 OnlyPermanentLeasesSupported, a common IGD:1 quirk);
4. ``GetExternalIPAddress``;
5. on :meth:`PortMapping.close`, ``DeletePortMapping`` for both.

The boundary is synchronous: :func:`open_ports`, :meth:`PortMapping.close` and
:meth:`PortMapping.renew` each run their own asyncio loop (the Qt app calls them on a worker
thread; each takes up to a few seconds). None of them raises for a network or router problem:
what went wrong is :attr:`PortMapResult.problem`, a sentence for the user. What needs no
socket (the sentences, the judgement of the external address) is in the pure
:mod:`voipclient.net.portmap` (the pure core may do no I/O: tests/unit/test_pure_core_imports.py).

Why the actions are called directly and not through ``IgdDevice.async_add_port_mapping`` (the
profile is still used to recognise an IGD): that wrapper sends ``NewRemoteHost`` as
``IPv4Address.exploded`` -- "0.0.0.0", which miniupnpd built with ``UPNP_STRICT`` refuses with
726 RemoteHostOnlySupportsWildcard (the wildcard is the empty string) -- and the lease as
``timedelta.seconds``, which is 0 for a 24 h ``timedelta(days=1)``: a permanent mapping asked for
silently. It also returns None, without an error, when the router lacks the action.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from voipclient.net.portmap import (
    CONFLICT,
    DEFAULT_DESCRIPTION,
    LEASE_SECONDS,
    NO_ROUTER,
    NO_SUCH_ENTRY,
    ONLY_PERMANENT_LEASES,
    PortMapResult,
    conflict_problem,
    fault_problem,
    is_public,
    judge_external_ip,
)

if TYPE_CHECKING:
    from async_upnp_client.client import UpnpDevice, UpnpService

__all__ = [
    "DEFAULT_DESCRIPTION",
    "LEASE_SECONDS",
    "PortMapResult",
    "PortMapping",
    "lan_address",
    "open_ports",
]

log = logging.getLogger("voipclient.portmap")

#: Each HTTP request to the router (description, SCPDs, SOAP calls), seconds. Routers are slow
#: (a FRITZ!Box takes about a second for AddPortMapping) but answer on the LAN or not at all.
_HTTP_TIMEOUT_S: Final = 5
#: How long discovery keeps listening after the first router answered (a second IGD on the LAN:
#: a mesh node, a modem in router mode), seconds.
_GRACE_S: Final = 0.3
#: SSDP MX (the devices' random answer delay, 1..5 s): 1 for a fast first answer; the search is
#: sent again after :data:`_RESEND_S` for a lost datagram.
_MX: Final = 1
_RESEND_S: Final = 1.0
_PROTOCOLS: Final = ("TCP", "UDP")

_IGD_TYPES: Final = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
)
#: Services that can map ports, in order of preference when both are connected.
_CONNECTION_SERVICES: Final = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
#: Where :func:`lan_address` looks when not told: TEST-NET-1 (RFC 5737), not routed specially by
#: any host, so the default route answers. No packet is sent.
_OUTSIDE: Final = "192.0.2.1"


_T = TypeVar("_T")


# --- the mapping ---------------------------------------------------------------------------------


class PortMapping:
    """Port mappings this host holds on a router; :meth:`close` deletes them.

    Made by :func:`open_ports` only. Its methods may be called from any thread (they take turns).
    """

    def __init__(
        self,
        service: UpnpService,
        *,
        port: int,
        internal_client: str,
        description: str,
        lease_seconds: int,
        gateway: str,
    ) -> None:
        self._service = service
        self.port: Final = port
        self.internal_client: Final = internal_client
        self.description: Final = description
        #: The lease granted, seconds (0: until deleted). Call :meth:`renew` before it runs out.
        self.lease_seconds = lease_seconds
        self.gateway: Final = gateway
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 5.0) -> None:
        """Delete both mappings (best effort: never raises; a second call does nothing).

        Gives up after ``timeout`` seconds (an app quitting must not hang on a router that
        stopped answering; the mapping then lapses with its lease). A mapping is only deleted
        while it still points at this host: after a lapsed lease the port may belong to another
        device by now.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True

            async def delete_all() -> None:
                await asyncio.wait_for(self._delete_all(), timeout=max(0.1, timeout))

            try:
                _run_sync(delete_all)
            except Exception:  # never raises: a router gone away keeps a mapping until its lease
                log.info("port mapping: close did not finish", exc_info=True)

    def renew(self) -> PortMapResult:
        """Ask for both mappings again (a fresh lease); never raises."""
        with self._lock:
            if self._closed:
                return PortMapResult(False, None, self.gateway, "The port mapping was closed.")
            try:
                return _run_sync(self._renew)
            except Exception as exc:  # _renew catches what the router does; this is the rest
                log.info("port mapping: renewal failed", exc_info=True)
                problem = _contact_problem(exc, _router(self.gateway))
                return PortMapResult(False, None, self.gateway, problem)

    def __enter__(self) -> PortMapping:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"lease={self.lease_seconds}s"
        return (
            f"<PortMapping {self.port} tcp+udp -> {self.internal_client} on {self.gateway} {state}>"
        )

    async def _delete_all(self) -> None:
        for protocol in _PROTOCOLS:
            try:
                holder = await _mapping_holder(self._service, self.port, protocol)
                if holder is not None and holder[0] != self.internal_client:
                    log.info(
                        "port mapping: %s/%s now points at %s; left alone",
                        self.port,
                        protocol,
                        holder[0],
                    )
                    continue
                await _delete(self._service, self.port, protocol)
                log.info("port mapping: deleted %s/%s", self.port, protocol)
            except Exception as exc:
                if _fault_code(exc) != NO_SUCH_ENTRY:
                    log.info("port mapping: deleting %s/%s failed: %s", self.port, protocol, exc)

    async def _renew(self) -> PortMapResult:
        try:
            outcome = await _map_both(
                self._service,
                port=self.port,
                internal_client=self.internal_client,
                description=self.description,
                lease=self.lease_seconds,
                undo=False,
            )
        except Exception as exc:
            log.debug("port mapping: renewal failed", exc_info=True)
            problem = _contact_problem(exc, _router(self.gateway))
            return PortMapResult(False, None, self.gateway, problem)
        if outcome.problem:
            return PortMapResult(False, None, self.gateway, outcome.problem)
        self.lease_seconds = outcome.lease
        external_ip, warning = await _external_ip(self._service)
        return PortMapResult(True, external_ip, self.gateway, "", warning, outcome.lease)


# --- public functions ----------------------------------------------------------------------------


def open_ports(
    port: int,
    *,
    location: str | None = None,
    timeout: float = 4.0,
    description: str = DEFAULT_DESCRIPTION,
    ssdp_address: tuple[str, int] | None = None,
) -> tuple[PortMapResult, PortMapping | None]:
    """Forward TCP and UDP ``port`` on the router to this host; never raises for network problems.

    ``location``: the router's description URL (``http://192.168.1.1:5000/rootDesc.xml``); no
    search then. Otherwise an SSDP search listens for up to ``timeout`` seconds, sent to the SSDP
    multicast group or, with ``ssdp_address``, unicast to that ``(host, port)`` (a router's
    address and 1900, or a test's fake). Returns the result and, when both protocols are mapped,
    the :class:`PortMapping` to close when the server stops (None otherwise: a half-made mapping
    is deleted before returning).

    Raises ValueError only for a port outside 1..65535 (a caller's mistake).
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, not {port}")
    return _run_sync(
        lambda: _open(
            port,
            location=location,
            timeout=timeout,
            description=description,
            ssdp_address=ssdp_address,
        )
    )


def lan_address(towards: str | None = None) -> str:
    """The local IPv4 address that routes to ``towards`` (a host or address; default: outwards).

    A UDP socket is "connected" to the destination, which only asks the routing table; no packet
    is sent. "127.0.0.1" when there is no route (no network).
    """
    target = towards or _OUTSIDE
    try:
        infos = socket.getaddrinfo(target, 9, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(infos[0][4])
            address = sock.getsockname()[0]
    except (OSError, IndexError, UnicodeError):
        return "127.0.0.1"
    return str(address)


# --- the asyncio part ----------------------------------------------------------------------------


def _run_sync(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``factory()`` on a new event loop: in this thread, or in a helper thread when this
    thread already runs a loop (``asyncio.run`` refuses to nest)."""

    async def main() -> _T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(main()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="portmap", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


@dataclass(frozen=True)
class _Gateway:
    service: UpnpService
    name: str
    host: str
    connected: bool | None
    external_ip: str | None


@dataclass(frozen=True)
class _Outcome:
    lease: int
    problem: str = ""


async def _open(
    port: int,
    *,
    location: str | None,
    timeout: float,
    description: str,
    ssdp_address: tuple[str, int] | None,
) -> tuple[PortMapResult, PortMapping | None]:
    try:
        import async_upnp_client  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a dependency; missing only in odd installs
        problem = f"UPnP support is not installed (async-upnp-client: {exc})."
        return PortMapResult(False, None, None, problem), None

    gateway_name: str | None = None
    try:
        if location is not None:
            locations = [location]
        else:
            locations, problem = await _search(timeout, ssdp_address)
            if not locations:
                return PortMapResult(False, None, None, problem), None
        gateway, problem = await _choose_gateway(locations)
        if gateway is None:
            return PortMapResult(False, None, None, problem), None
        gateway_name = gateway.name

        lan_ip = lan_address(gateway.host)
        if ipaddress.ip_address(lan_ip).is_loopback and not _is_loopback(gateway.host):
            problem = f"This computer has no network route to the router at {gateway.host}."
            return PortMapResult(False, None, gateway_name, problem), None

        external_ip, warning = judge_external_ip(gateway.external_ip, gateway.connected)
        outcome = await _map_both(
            gateway.service,
            port=port,
            internal_client=lan_ip,
            description=description,
            lease=LEASE_SECONDS,
        )
    except Exception as exc:
        problem = _contact_problem(exc, _router(gateway_name))
        log.info("port mapping failed: %s", problem)
        log.debug("port mapping failure", exc_info=True)
        return PortMapResult(False, None, gateway_name, problem), None

    if outcome.problem:
        return PortMapResult(False, external_ip, gateway_name, outcome.problem, warning), None
    log.info(
        "port mapping: %s tcp+udp -> %s on %s (lease %s s, external %s)",
        port,
        lan_ip,
        gateway_name,
        outcome.lease,
        gateway.external_ip,
    )
    mapping = PortMapping(
        gateway.service,
        port=port,
        internal_client=lan_ip,
        description=description,
        lease_seconds=outcome.lease,
        gateway=gateway.name,
    )
    result = PortMapResult(True, external_ip, gateway_name, "", warning, outcome.lease)
    return result, mapping


async def _search(timeout: float, ssdp_address: tuple[str, int] | None) -> tuple[list[str], str]:
    """SSDP search for IGDs: their description URLs (first answer first), or ([], a problem)."""
    from async_upnp_client.search import SsdpSearchListener
    from async_upnp_client.ssdp import SSDP_IP_V4, SSDP_PORT
    from async_upnp_client.utils import CaseInsensitiveDict

    loop = asyncio.get_running_loop()
    found: list[str] = []
    answered = asyncio.Event()
    connected = asyncio.Event()

    def on_response(headers: CaseInsensitiveDict) -> None:
        st = headers.get_lower("st", "")
        where = headers.get_lower("location", "")
        if st not in _IGD_TYPES or not where or where in found:
            return
        # Fetch only from the device that answered: the LOCATION is its to name, not any host's.
        if urllib.parse.urlparse(where).hostname != headers.get_lower("_host"):
            log.info("port mapping: ignored an IGD answer naming another host: %s", where)
            return
        found.append(where)
        answered.set()

    if ssdp_address is not None:
        host, port = ssdp_address
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
        except (OSError, UnicodeError) as exc:
            return [], f"Could not find the router {host} ({_reason(exc)})."
        target: tuple[str, int] = (str(infos[0][4][0]), int(infos[0][4][1]))
        source: tuple[str, int] = ("0.0.0.0", 0)  # noqa: S104 - an unbound client socket
    else:
        target = (SSDP_IP_V4, SSDP_PORT)
        # Multicast out of the interface that routes outwards (the router's side of the host).
        local = lan_address()
        source = (local if local != "127.0.0.1" else "0.0.0.0", 0)  # noqa: S104
    listener = SsdpSearchListener(
        callback=on_response,
        connect_callback=connected.set,
        loop=loop,
        source=source,
        target=target,
        timeout=_MX,
        search_target=_IGD_TYPES[0],
    )

    def send() -> None:
        for search_target in _IGD_TYPES:
            listener.search_target = search_target
            listener.async_search()

    try:
        await listener.async_start()
    except (OSError, ValueError) as exc:
        return [], f"Could not search the local network for a router ({_reason(exc)})."
    try:
        deadline = loop.time() + max(0.0, timeout)
        await asyncio.wait_for(connected.wait(), timeout=max(0.1, timeout))
        send()
        resend_at = loop.time() + _RESEND_S
        while not answered.is_set() and loop.time() < deadline:
            wait = min(deadline, resend_at) - loop.time()
            try:
                await asyncio.wait_for(answered.wait(), timeout=max(0.0, wait))
            except TimeoutError:
                if loop.time() >= resend_at:
                    send()
                    resend_at = deadline + 1.0  # once is enough
        if answered.is_set():
            await asyncio.sleep(max(0.0, min(_GRACE_S, deadline - loop.time())))
    except (OSError, TimeoutError) as exc:
        if not found:
            return [], f"Could not search the local network for a router ({_reason(exc)})."
    finally:
        listener.async_stop()
    if not found:
        return [], NO_ROUTER
    return found, ""


async def _choose_gateway(locations: Sequence[str]) -> tuple[_Gateway | None, str]:
    """Load every described device; the best connection service of the IGDs among them."""
    results = await asyncio.gather(*(_load_gateway(where) for where in locations))
    gateways = [g for g, _ in results if g is not None]
    if not gateways:
        return None, next(problem for _, problem in results if problem)

    def rank(gateway: _Gateway) -> tuple[int, int]:
        # connected first, then one with a public address (the outer router of a double NAT)
        connected = 0 if gateway.connected is not False else 1
        public = 0 if is_public(gateway.external_ip) else 1
        return connected, public

    return min(gateways, key=rank), ""


async def _load_gateway(location: str) -> tuple[_Gateway | None, str]:
    from async_upnp_client.aiohttp import AiohttpRequester
    from async_upnp_client.client_factory import UpnpFactory
    from async_upnp_client.profiles.igd import IgdDevice

    host = urllib.parse.urlparse(location).hostname or location
    try:
        # non_strict: routers' XML is often sloppy (Home Assistant reads them the same way)
        requester = AiohttpRequester(timeout=_HTTP_TIMEOUT_S)
        device = await UpnpFactory(requester, non_strict=True).async_create_device(location)
    except Exception as exc:
        log.info("port mapping: cannot load %s: %s", location, exc)
        return None, _contact_problem(exc, f"the router at {_netloc(location)}")

    root_name = device.friendly_name.strip()
    name = f"{root_name} at {host}" if root_name else host
    if not IgdDevice.is_profile_device(device):
        return None, (
            f"The device at {host} ({root_name or device.device_type}) is not an internet router."
        )
    services = _connection_services(device)
    if not services:
        return None, f"The router {name} does not offer port forwarding over UPnP."

    candidates: list[_Gateway] = []
    for service in services:
        connected = await _connected(service)
        external_ip = await _raw_external_ip(service)
        candidates.append(_Gateway(service, name, host, connected, external_ip))
        if connected and is_public(external_ip):
            break
    # A connected service first; among equals the preference order of _CONNECTION_SERVICES.
    best = min(candidates, key=lambda g: 0 if g.connected is not False else 1)
    return best, ""


def _connection_services(device: UpnpDevice) -> list[UpnpService]:
    found = [
        service
        for service in device.all_services
        if service.service_type in _CONNECTION_SERVICES and service.has_action("AddPortMapping")
    ]
    return sorted(found, key=lambda s: _CONNECTION_SERVICES.index(s.service_type))


async def _connected(service: UpnpService) -> bool | None:
    """GetStatusInfo's ConnectionStatus == "Connected"; None when the router does not say."""
    if not service.has_action("GetStatusInfo"):
        return None
    try:
        answer = await service.action("GetStatusInfo").async_call()
    except Exception as exc:
        log.debug("port mapping: GetStatusInfo failed: %s", exc)
        return None
    status = answer.get("NewConnectionStatus")
    return None if not status else str(status) == "Connected"


async def _raw_external_ip(service: UpnpService) -> str | None:
    if not service.has_action("GetExternalIPAddress"):
        return None
    try:
        answer = await service.action("GetExternalIPAddress").async_call()
    except Exception as exc:
        log.debug("port mapping: GetExternalIPAddress failed: %s", exc)
        return None
    value = answer.get("NewExternalIPAddress")
    return str(value).strip() if value else None


async def _external_ip(service: UpnpService) -> tuple[str | None, str]:
    return judge_external_ip(await _raw_external_ip(service), await _connected(service))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- SOAP calls ----------------------------------------------------------------------------------


async def _map_both(
    service: UpnpService,
    *,
    port: int,
    internal_client: str,
    description: str,
    lease: int,
    undo: bool = True,
) -> _Outcome:
    """Map TCP then UDP; on a failure the ones already made are deleted again (``undo``; a
    renewal leaves them: they were valid before it)."""
    mapped: list[str] = []
    for protocol in _PROTOCOLS:
        try:
            outcome = await _map_one(
                service,
                port=port,
                protocol=protocol,
                internal_client=internal_client,
                description=description,
                lease=lease,
            )
        except BaseException:
            if undo:
                await _undo(service, port, mapped)
            raise
        if outcome.problem:
            if undo:
                await _undo(service, port, mapped)
            return outcome
        lease = outcome.lease  # a router that refused a lease for TCP refuses it for UDP
        mapped.append(protocol)
    return _Outcome(lease)


async def _undo(service: UpnpService, port: int, protocols: Sequence[str]) -> None:
    for protocol in protocols:
        try:
            await _delete(service, port, protocol)
        except Exception as exc:
            log.info("port mapping: could not undo %s/%s: %s", port, protocol, exc)


async def _map_one(
    service: UpnpService,
    *,
    port: int,
    protocol: str,
    internal_client: str,
    description: str,
    lease: int,
) -> _Outcome:
    action = service.action("AddPortMapping")
    took_over = False
    while True:
        try:
            await action.async_call(
                NewRemoteHost="",  # the wildcard: any remote host
                NewExternalPort=port,
                NewProtocol=protocol,
                NewInternalPort=port,
                NewInternalClient=internal_client,
                NewEnabled=True,
                NewPortMappingDescription=description,
                NewLeaseDuration=lease,
            )
            return _Outcome(lease)
        except Exception as exc:
            code = _fault_code(exc)
            if code is None:
                raise
            if code == ONLY_PERMANENT_LEASES and lease != 0:
                log.info("port mapping: the router refuses a lease; asking for a permanent one")
                lease = 0
                continue
            if code == CONFLICT and not took_over:
                holder = await _mapping_holder(service, port, protocol)
                if holder is not None and holder == (internal_client, description):
                    # ours, from a run that did not delete it (a crash): take it over
                    await _delete(service, port, protocol)
                    took_over = True
                    continue
                return _Outcome(lease, conflict_problem(port, protocol, holder, internal_client))
            desc = str(getattr(exc, "error_desc", None) or "")
            return _Outcome(lease, fault_problem(code, desc, port, protocol))


async def _delete(service: UpnpService, port: int, protocol: str) -> None:
    await service.action("DeletePortMapping").async_call(
        NewRemoteHost="", NewExternalPort=port, NewProtocol=protocol
    )


async def _mapping_holder(service: UpnpService, port: int, protocol: str) -> tuple[str, str] | None:
    """(internal client, description) of the mapping of ``port``/``protocol``; None if unknown."""
    if not service.has_action("GetSpecificPortMappingEntry"):
        return None
    try:
        answer: Mapping[str, Any] = await service.action("GetSpecificPortMappingEntry").async_call(
            NewRemoteHost="", NewExternalPort=port, NewProtocol=protocol
        )
    except Exception as exc:
        log.debug("port mapping: GetSpecificPortMappingEntry failed: %s", exc)
        return None
    client = str(answer.get("NewInternalClient") or "").strip()
    return (client, str(answer.get("NewPortMappingDescription") or "")) if client else None


def _fault_code(exc: BaseException) -> int | None:
    """The UPnP error code of a SOAP fault (``UpnpActionError``), else None."""
    from async_upnp_client.exceptions import UpnpActionError

    if isinstance(exc, UpnpActionError):
        return exc.error_code if exc.error_code is not None else 0
    return None


def _contact_problem(exc: BaseException, who: str) -> str:
    """A sentence for an exception met while talking to ``who`` ("the router at ...")."""
    from async_upnp_client.exceptions import (
        UpnpConnectionError,
        UpnpContentError,
        UpnpResponseError,
    )

    subject = who[:1].upper() + who[1:]
    if isinstance(exc, UpnpConnectionError | OSError | TimeoutError):
        return f"{subject} did not answer ({_reason(exc)})."
    if isinstance(exc, UpnpResponseError):
        return f"{subject} answered with HTTP error {exc.status}."
    if isinstance(exc, UpnpContentError):
        return f"{subject} sent a description this program cannot read ({exc})."
    return f"Port forwarding failed while talking to {who} ({type(exc).__name__}: {exc})."


def _router(name: str | None) -> str:
    return f"the router {name}" if name else "the router"


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason: "connection refused", "timed out", ..."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return "timed out"
        os_error = getattr(current, "os_error", None)  # aiohttp's ClientConnectorError
        for candidate in (os_error, current):
            if isinstance(candidate, OSError) and (candidate.errno or candidate.strerror):
                # asyncio replaces strerror by "Connect call failed (...)"; errno keeps the cause
                # (a gaierror's errno is negative: its own strerror is the text)
                errno = candidate.errno
                text = os.strerror(errno) if errno and errno > 0 else candidate.strerror
                return str(text).lower()
        current = current.__cause__ or current.__context__
    return str(exc) or type(exc).__name__


def _netloc(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url
