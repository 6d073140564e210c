"""The relay server inside another program: the desktop app's "start a local server".

:class:`EmbeddedServer` runs the same :class:`~voipclient.server.app.RelayServer` as
``voipclient-server`` on its own thread and asyncio loop (so it works in a PyInstaller bundle
where there is no ``python -m`` to spawn). It keeps its TLS identity and store in ``data_dir``, so
its pin stays the same from one start to the next, and it listens on loopback unless told
otherwise: a local server is private until the user decides to share it.

Its channels are the store's: ``channels`` are seeded into it the first time a data directory
is used, and after that administrators own them (create, rename, move, delete over the
protocol; the changes survive restarts). With ``first_user_admin`` (the default) the first
identity that logs in to a server without any administrator becomes its administrator, for good
(recorded in the store): on loopback that is the app's own user. A second user is not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from voipclient.errors import LocalProtocolError
from voipclient.server.config import ConfigError, Settings

log = logging.getLogger("voipclient.server.embedded")

DEFAULT_CHANNELS = ("General", "Squad A", "Squad B", "AFK")
START_TIMEOUT_S = 15.0


class EmbeddedServerError(RuntimeError):
    """The local server could not start; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class LocalAddress:
    host: str
    port: int
    pin: str


class EmbeddedServer:
    """``start()`` → :class:`LocalAddress` (blocks until listening); ``stop()`` shuts it down
    (clients get the shutdown notice)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        channels: tuple[str, ...] = DEFAULT_CHANNELS,
        server_name: str = "Local server",
        first_user_admin: bool = True,
        admin_keys: tuple[bytes, ...] = (),
    ) -> None:
        """``channels``: seeded into a new data directory only (see the module docstring).
        ``first_user_admin``: the first identity that logs in becomes the administrator.
        ``admin_keys``: raw Ed25519 identity keys that are administrators from the start (the
        app's own user's, say): then nobody else can be first, which matters when the server is
        shared before its owner ever logged in (the first-user rule then never applies)."""
        self.data_dir = data_dir
        try:
            self.settings = Settings(
                server_name=server_name,
                host=host,
                port=port,
                stats_interval=0,
                admin_first_user=first_user_admin,
                admins=tuple(admin_keys),
            )
            self.settings.server_config(udp_port=0)  # bad admin keys fail here, not later
            self.settings = self.settings.with_seed_channels(channels)
        except (ConfigError, LocalProtocolError) as exc:
            raise EmbeddedServerError(str(exc)) from None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self.address: LocalAddress | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LocalAddress:
        if self.address is not None and self.running:
            return self.address
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="local-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise EmbeddedServerError("the local server did not start within 15 s")
        if self._error is not None or self.address is None:
            raise EmbeddedServerError(self._error or "the local server stopped at once")
        return self.address

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(10.0)
        self._thread = None
        self.address = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # reported to start(); the app shows it
            log.exception("local server failed")
            self._error = f"the local server failed: {exc}"
            self._ready.set()

    async def _serve(self) -> None:
        from voipclient.server.app import RelayServer
        from voipclient.server.store import Store, StoreError
        from voipclient.server.tls import TlsError, load_or_create

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            identity = load_or_create(self.data_dir)
            store = Store.open(self.data_dir)
        except (OSError, TlsError, StoreError) as exc:
            self._error = f"cannot prepare the local server's data in {self.data_dir}: {exc}"
            self._ready.set()
            return
        server = RelayServer(self.settings, identity, store)
        try:
            try:
                await server.start()
            except OSError as exc:
                s = self.settings
                self._error = (
                    f"the local server cannot listen on {s.host}:{s.port}: {exc.strerror or exc}"
                )
                self._ready.set()
                return
            self.address = LocalAddress(server.host, server.port, identity.pin)
            log.info("local server listening on %s:%d", server.host, server.port)
            self._ready.set()
            await server.serve_until(self._stop)
        finally:
            store.close()
