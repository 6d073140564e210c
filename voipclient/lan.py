"""LAN discovery adapters over python-zeroconf (PROTOCOL: ``voipclient.net.discovery``).

Two adapters, each owning one ``zeroconf.Zeroconf`` (which runs its own asyncio loop in its own
thread when created outside a running loop, as here):

- :class:`Announcer` (the server) — ``start(name, port, pin)`` registers (blocking ~1.5 s:
  DNS-SD probes for a name conflict first), ``close()`` sends goodbye packets and closes the
  sockets.
- :class:`LanBrowser` (the client) — a ``ServiceBrowser``; every found, updated or removed
  server is reported as an immutable :class:`~voipclient.net.discovery.DiscoveredServer`
  through the callbacks, **on zeroconf's browser thread** (a Qt caller must cross to its GUI
  thread with a queued signal).

zeroconf is imported inside the methods: a missing package or a machine without multicast
(no interface, no route, a sandbox) raises :class:`~voipclient.net.discovery.DiscoveryUnavailable`
with a reason a user can read, never anything else. Everything that can be decided without
sockets is decided in :mod:`voipclient.net.discovery`.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from voipclient.net.discovery import (
    SERVICE_TYPE,
    AnnouncePlan,
    DiscoveredServer,
    DiscoveryUnavailable,
    announce_plan,
    host_label,
    instance_name,
    parse_service,
    txt_properties,
)

__all__ = ["Announcer", "LanBrowser", "machine_addresses"]

log = logging.getLogger("voipclient.lan")

#: TTL of every record, seconds. Shorter than DNS-SD's 75 min for PTR/SRV/TXT so that a server
#: killed without goodbye packets leaves the clients' lists within two minutes.
_TTL_S: Final = 120
#: How long the browser waits for a found instance's SRV/TXT/A records (usually already cached:
#: they travel with the announcement), milliseconds.
_LOOKUP_TIMEOUT_MS: Final = 2000


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
            label = host_label(socket.gethostname())
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
