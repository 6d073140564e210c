"""``voipclient-server`` / ``python -m voipclient.server``: the relay server's composition root.

Start order (each step logged): arguments → configuration (file, then environment, then the
command line) → data directory → TLS identity (created on first start) → store → sockets and
cores → the start line on stdout → (with ``--announce``) the LAN announcement, in the background
→ serve until SIGINT/SIGTERM → ServerShutdown to every client → LAN goodbyes → close. Exit
status: 0 after a clean stop, 2 for a usage or configuration error, 1 when the server cannot start
(port taken, unreadable key, ...). Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voipclient import __version__
from voipclient.errors import LocalProtocolError
from voipclient.server.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOG_LEVELS,
    PASSWORD_ENV,
    ConfigError,
    Settings,
    hash_password,
    load_config,
    password_from_environment,
)
from voipclient.storage.atomic import user_data_dir

if TYPE_CHECKING:
    from voipclient.lan import Announcer

log = logging.getLogger("voipclient.server")

APP_DIR = "voipclient-server"


def default_data_dir() -> Path:
    """The platform's per-user data directory for the server."""
    return user_data_dir(APP_DIR)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voipclient-server",
        description="The voipclient relay server: TLS control and UDP voice on one port number.",
    )
    p.add_argument("--version", action="version", version=f"voipclient-server {__version__}")
    p.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument(
        "--port",
        type=int,
        help=f"TCP and UDP port (default {DEFAULT_PORT}); 0 picks a free one for both",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="server.toml")
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"certificate, key and database (default {default_data_dir()})",
    )
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME",
        help="add a channel under the Lobby (repeatable)",
    )
    p.add_argument(
        "--stats-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between JSON stats lines on stdout (0: none; default 60)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    p.add_argument(
        "--announce",
        action="store_true",
        default=None,
        help="advertise the server on the LAN (mDNS/DNS-SD) so clients list it; off by default",
    )
    p.add_argument(
        "--hash-password",
        action="store_true",
        help="read a channel password (prompt, or one line on stdin) and print its hash",
    )
    ops = p.add_argument_group(
        "operator commands (edit the store in --data-dir and exit; a running server applies a "
        "ban within a second)"
    )
    ops.add_argument("--ban", metavar="NAME|KEY", help="ban a user name's key, or a base64 key")
    ops.add_argument("--reason", default="", help="reason recorded with --ban")
    ops.add_argument("--unban", metavar="NAME|KEY", help="lift a ban")
    ops.add_argument("--list-bans", action="store_true", help="print the bans")
    ops.add_argument(
        "--forget-name",
        metavar="NAME",
        help="release a user name's key binding (after a user lost their identity key)",
    )
    return p


def _operator_command(args: argparse.Namespace, data_dir: Path) -> int:
    """--ban / --unban / --list-bans / --forget-name against the store."""
    import base64
    import binascii

    from voipclient.names import name_key
    from voipclient.server.store import Store, StoreError

    try:
        store = Store.open(data_dir)
    except (StoreError, OSError) as exc:
        print(f"voipclient-server: {exc}", file=sys.stderr)
        return 1
    try:
        bindings = store.load_bindings()

        def resolve(target: str) -> tuple[bytes, str] | None:
            # Bindings are keyed by account key: "BOB" or a look-alike finds the key of "bob".
            bound = bindings.get(name_key(target))
            if bound is not None:
                return bound, target
            try:
                raw = base64.b64decode(target, validate=True)
            except binascii.Error:
                return None
            if len(raw) != 32:
                return None
            names = [n for n, k in bindings.items() if k == raw]
            return raw, names[0] if names else ""

        if args.list_bans:
            for ban in store.bans():
                shown_key = base64.b64encode(ban.ik_pub).decode()
                print(f"{shown_key} {ban.label or '-'} {ban.reason}".rstrip())
            return 0
        if args.forget_name is not None:
            if not store.remove_binding(args.forget_name):
                print(f"voipclient-server: no binding for {args.forget_name!r}", file=sys.stderr)
                return 1
            print(f"released name {args.forget_name!r}")
            return 0
        target = args.ban if args.ban is not None else args.unban
        found = resolve(target)
        if found is None:
            print(
                f"voipclient-server: {target!r} is neither a known user name nor a base64 key",
                file=sys.stderr,
            )
            return 1
        key, label = found
        shown = base64.b64encode(key).decode()
        if args.ban is not None:
            store.ban(key, label=label, reason=args.reason)
            print(f"banned {shown} {label}".rstrip())
            return 0
        if not store.unban(key):
            print(f"voipclient-server: {target!r} is not banned", file=sys.stderr)
            return 1
        print(f"unbanned {shown} {label}".rstrip())
        return 0
    finally:
        store.close()


def _hash_password_command() -> int:
    if sys.stdin.isatty():
        first = getpass.getpass("Channel password: ")
        if first != getpass.getpass("Again: "):
            print("voipclient-server: the passwords differ", file=sys.stderr)
            return 2
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("voipclient-server: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def resolve_settings(args: argparse.Namespace) -> Settings:
    """File, then ``VOIPCLIENT_SERVER_PASSWORD``, then the command line."""
    settings = load_config(args.config) if args.config is not None else Settings()
    settings = password_from_environment(settings)
    if args.host is not None:
        settings = replace(settings, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port must be 0..65535")
        settings = replace(settings, port=args.port)
    if args.data_dir is not None:
        settings = replace(settings, data_dir=args.data_dir)
    if args.stats_interval is not None:
        if not args.stats_interval >= 0:
            raise ConfigError("--stats-interval must be >= 0")
        settings = replace(settings, stats_interval=args.stats_interval)
    if args.log_level is not None:
        settings = replace(settings, log_level=args.log_level)
    if args.announce:
        settings = replace(settings, announce=True)
    if args.channel:
        settings = settings.with_quick_channels(args.channel)
    # Catch what only the core's own validation knows (e.g. the lobby's ACL) before binding.
    try:
        settings.server_config(udp_port=0)
    except (LocalProtocolError, ValueError) as exc:
        raise ConfigError(str(getattr(exc, "message", exc)), path=settings.source) from None
    return settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _prepare_data_dir(path: Path) -> Path:
    path = path.expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


async def _serve(settings: Settings, data_dir: Path) -> int:
    from voipclient.server.app import RelayServer, format_start_line
    from voipclient.server.store import Store, StoreError
    from voipclient.server.tls import TlsError, load_or_create

    try:
        identity = load_or_create(data_dir, settings.tls_cert, settings.tls_key)
        store = Store.open(data_dir)
    except (TlsError, StoreError) as exc:
        print(f"voipclient-server: {exc}", file=sys.stderr)
        return 1
    log.info("tls identity cert=%s pin=%s", identity.cert_path, identity.pin)
    server = RelayServer(settings, identity, store)
    try:
        try:
            await server.start()
        except OSError as exc:
            print(
                f"voipclient-server: cannot listen on {settings.host}:{settings.port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        print(format_start_line(server.host, server.port, identity.pin), flush=True)
        announcing = (
            asyncio.create_task(
                _announce(settings.server_name, server.host, server.port, identity.pin)
            )
            if settings.announce
            else None
        )
        try:
            await server.serve_until(stop)
        finally:
            if announcing is not None:
                await _withdraw(announcing)
    finally:
        store.close()
    return 0


async def _announce(name: str, host: str, port: int, pin: str) -> Announcer | None:
    """Advertise the server on the LAN (after the start line: clients need not wait for it).

    zeroconf blocks while it probes (~1.5 s), so it runs in a worker thread with its own loop.
    Any failure (no multicast, a sandbox, zeroconf missing) is a warning, never fatal: the server
    works the same without it."""
    from voipclient.lan import Announcer
    from voipclient.net.discovery import DiscoveryUnavailable

    announcer = Announcer()
    try:
        await asyncio.to_thread(announcer.start, name, port, pin, host=host)
    except DiscoveryUnavailable as exc:
        log.warning("cannot announce the server on the LAN: %s", exc)
        return None
    return announcer


async def _withdraw(announcing: asyncio.Task[Announcer | None]) -> None:
    """Wait for the announcement to finish (or fail), then send the goodbyes."""
    try:
        announcer = await announcing
    except Exception as exc:  # never let the LAN announcement cost the shutdown
        log.warning("LAN announcement failed: %s", exc)
        return
    if announcer is not None:
        await asyncio.to_thread(announcer.close)


def _run(factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        log.info("event loop asyncio")
        return asyncio.run(factory())
    log.info("event loop uvloop %s", getattr(uvloop, "__version__", "?"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(factory())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.hash_password:
        return _hash_password_command()
    operator = args.ban or args.unban or args.list_bans or args.forget_name
    try:
        settings = resolve_settings(args)
    except ConfigError as exc:
        print(f"voipclient-server: config error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    data_dir = settings.data_dir if settings.data_dir is not None else default_data_dir()
    try:
        data_dir = _prepare_data_dir(data_dir)
    except OSError as exc:
        print(f"voipclient-server: data directory {data_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    if operator:
        return _operator_command(args, data_dir)
    if settings.password is not None:
        log.info("server password set (from %s or the config)", PASSWORD_ENV)
    log.info(
        "starting version=%s data_dir=%s host=%s port=%d channels=%d",
        __version__,
        data_dir,
        settings.host,
        settings.port,
        1 + len(settings.channels),
    )
    try:
        return _run(lambda: _serve(settings, data_dir))
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        return 130


if __name__ == "__main__":
    sys.exit(main())
