"""``voipclient-server`` / ``python -m voipclient.server``: the relay server's composition root.

Start order (each step logged): arguments → configuration (file, then environment, then the
command line) → data directory → TLS identity (created on first start) → store → sockets and
cores → the start line on stdout → the invite link in the log → (with ``--announce``) the LAN
announcement, in the background → serve until SIGINT/SIGTERM → ServerShutdown to every client →
LAN goodbyes → close. Exit status: 0 after a clean stop, 2 for a usage or configuration error, 1
when the server cannot start (port taken, unreadable key, ...). Errors are one line on stderr, no
traceback.

One-shot commands run instead of the server and exit: ``--hash-password``, the operator commands
on the store (``--ban`` ...) and ``--invite``, which prints the invite link
(:mod:`voipclient.net.invite`) for this configuration and data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voipclient import __version__
from voipclient.errors import LocalProtocolError
from voipclient.net.invite import Invite, InviteError, format_invite, normalize_host
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
from voipclient.server.workers import default_workers
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
        "--workers",
        type=int,
        metavar="N",
        help="UDP forwarding processes behind the one port (Linux; default: the number of "
        f"cores, {default_workers()} here; 1 forwards in the server process itself)",
    )
    p.add_argument("--relay-worker", metavar="FDS", help=argparse.SUPPRESS)
    p.add_argument(
        "--cluster",
        metavar="URL",
        help="join a cluster of nodes through this NATS server (nats://HOST:PORT, JetStream on)",
    )
    p.add_argument(
        "--node-id",
        metavar="NAME",
        help="this node's name in the cluster (default: the host name)",
    )
    p.add_argument(
        "--udp-send",
        choices=("native", "sendmmsg", "sendto"),
        help="how the relay sends voice copies: sendmmsg batches filled by the native fan-out "
        "(the default; Linux, where it is built), sendmmsg batches filled by Python, or one "
        "sendto per copy (the last two for comparisons)",
    )
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
    inv = p.add_argument_group(
        "invite links (the server also logs its link at start, with these options applied)"
    )
    inv.add_argument(
        "--invite",
        action="store_true",
        help="print the invite link (voipclient://HOST:PORT/?pin=...) for friends and exit; "
        "creates the TLS key if this data directory has none yet, as a start would",
    )
    inv.add_argument(
        "--public-host",
        metavar="HOST",
        help="the name or address friends reach this server at (default: --host, or this "
        "machine's address when --host is 0.0.0.0 or ::)",
    )
    inv.add_argument(
        "--invite-channel",
        metavar="NAME",
        help="a channel the link asks the client to join (one of the configured channels)",
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
    cluster = args.cluster if (args.ban or args.unban) else None
    try:
        bindings = store.load_bindings()
        if cluster is not None:
            # A cluster's bans and name bindings are shared: act on those (every node).
            from voipclient.server.cluster import ClusterError

            try:
                for name, ik in asyncio.run(_in_cluster(cluster, "names")).items():
                    bindings.setdefault(name, ik)
            except ClusterError as exc:
                print(f"voipclient-server: {exc}", file=sys.stderr)
                return 1

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
            if cluster is not None:
                asyncio.run(_in_cluster(cluster, "ban", key, args.reason))
            print(f"banned {shown} {label}".rstrip() + (" on every node" if cluster else ""))
            return 0
        unbanned = store.unban(key)
        if cluster is not None:
            unbanned = bool(asyncio.run(_in_cluster(cluster, "unban", key))) or unbanned
        if not unbanned:
            print(f"voipclient-server: {target!r} is not banned", file=sys.stderr)
            return 1
        print(f"unbanned {shown} {label}".rstrip())
        return 0
    finally:
        store.close()


async def _in_cluster(url: str, what: str, key: bytes = b"", reason: str = "") -> Any:
    """One operator action on a cluster's shared records: ``names`` (the name bindings),
    ``ban`` or ``unban`` of ``key``. Raises ClusterError when NATS cannot be reached."""
    from voipclient.server.cluster import ClusterLink

    link = ClusterLink(url, f"operator{os.getpid()}", "")
    await link.connect(claim_slot=False)
    try:
        if what == "names":
            return dict(link.names)
        if what == "ban":
            await link.ban(key, reason)
            return True
        return await link.unban(key)
    finally:
        await link.stop()


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
    workers = args.workers if args.workers is not None else default_workers()
    if not 1 <= workers <= 256:
        raise ConfigError("--workers must be 1..256")
    settings = replace(settings, workers=workers)
    if args.cluster is not None:
        if not args.cluster.startswith(("nats://", "tls://")):
            raise ConfigError("--cluster must be a nats:// or tls:// URL")
        node = args.node_id or socket.gethostname().split(".")[0] or "node"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", node):
            raise ConfigError("--node-id: 1-64 letters, digits, '-' or '_'")
        settings = replace(
            settings, cluster=args.cluster, node_id=node, public_host=args.public_host
        )
    elif args.node_id is not None:
        raise ConfigError("--node-id needs --cluster")
    if args.udp_send is not None:
        settings = replace(settings, udp_send=args.udp_send)
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


async def _serve(
    settings: Settings,
    data_dir: Path,
    public_host: str | None = None,
    invite_channel: str | None = None,
) -> int:
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
    from voipclient.server.cluster import ClusterError

    server = RelayServer(settings, identity, store)
    try:
        try:
            await server.start()
        except ClusterError as exc:
            print(f"voipclient-server: {exc}", file=sys.stderr)
            return 1
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
        # (to a thread: finding the machine's address may ask the resolver)
        await asyncio.to_thread(
            _log_invite, settings, server.port, identity.pin, public_host, invite_channel
        )
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


# -- invite links --------------------------------------------------------------------------------

#: Listening on these means every interface: the link needs one of the machine's addresses.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - compared, not bound
#: Documentation addresses (RFC 5737, RFC 3849): a UDP socket "connected" to one tells which
#: source address the machine would use for the internet; connect() on UDP sends nothing.
_PROBE_TARGETS = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))
_BOTH: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)


def local_address(families: tuple[int, ...] = _BOTH) -> str | None:
    """This machine's first non-loopback address (the one its default route uses), or None.

    No packet is sent: ``connect`` on a UDP socket only picks the route and source address.
    Without a default route, the addresses of the machine's host name are tried."""
    for family, target in _PROBE_TARGETS:
        if family not in families:
            continue
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                found = _usable(probe.getsockname()[0])
        except OSError:
            continue
        if found is not None:
            return found
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _, _, _, sockaddr in infos:
        if family in families:
            found = _usable(str(sockaddr[0]))
            if found is not None:
                return found
    return None


def _usable(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        return None
    return str(ip)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_local_network(host: str) -> bool:
    """An address the internet cannot reach: private (RFC 1918, ULA), shared (CGNAT, VPNs such
    as Tailscale), documentation ranges; not loopback (that has its own warning)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not ip.is_global and not ip.is_loopback


def invite_host(
    listen_host: str,
    port: int,
    public_host: str | None,
    detect: Callable[[tuple[int, ...]], str | None] = local_address,
) -> tuple[str, list[str]]:
    """The host for the invite link, and notes for the operator (one sentence each).

    ``--public-host`` if given; else the listening host unless it is a wildcard; else this
    machine's first non-loopback address (IPv4 only for ``0.0.0.0``). Raises
    :class:`InviteError` when there is no address to give."""
    notes: list[str] = []
    if _is_loopback(listen_host):
        notes.append(
            f"the server listens on {listen_host} only, so nobody else can connect: start it "
            "with --host 0.0.0.0 (or --host ::, or host = ... in the config file)"
        )
    if public_host is not None:
        return public_host, notes
    if listen_host.strip("[]") not in WILDCARD_HOSTS:
        host = listen_host
    else:
        families = (socket.AF_INET,) if listen_host == "0.0.0.0" else _BOTH  # noqa: S104
        found = detect(families)
        if found is None:
            raise InviteError(
                "cannot find an address of this machine that other machines could use; "
                "pass the address or name friends reach it at with --public-host"
            )
        host = found
    if _is_local_network(host):
        notes.append(
            f"{host} is this machine's address on its local network: friends outside it need "
            f"the public address (your router's, forwarding TCP and UDP port {port} here); "
            "pass it with --public-host"
        )
    elif host != listen_host:
        notes.append(
            f"{host} is this machine's own address; if friends reach it under a name or "
            "another address, pass that with --public-host"
        )
    return host, notes


def check_invite_options(
    settings: Settings, public_host: str | None, channel: str | None
) -> str | None:
    """Check ``--public-host`` and ``--invite-channel`` (usage errors, before anything starts);
    the channel as configured (its spelling there), or None."""
    if public_host is not None:
        try:
            normalize_host(public_host)
        except InviteError as exc:
            raise ConfigError(f"--public-host: {exc}") from None
    if channel is None:
        return None
    names = [c.name for c in (settings.lobby, *settings.channels)]
    matches = [n for n in names if n.casefold() == channel.casefold()]
    if not matches:
        raise ConfigError(
            f"--invite-channel {channel!r}: no such channel; the channels are "
            + ", ".join(repr(n) for n in names)
        )
    return matches[0]


def make_invite(
    settings: Settings,
    port: int,
    pin: str,
    public_host: str | None,
    channel: str | None,
    detect: Callable[[tuple[int, ...]], str | None] = local_address,
) -> tuple[str, list[str]]:
    """The invite link for a server listening as ``settings`` say on ``port``, and the notes
    for the operator (``channel`` as :func:`check_invite_options` returned it). Raises
    :class:`InviteError` when there is no host to give."""
    host, notes = invite_host(settings.host, port, public_host, detect)
    return format_invite(Invite(host, port, pin, channel)), notes


def _invite_command(
    settings: Settings, data_dir: Path, public_host: str | None, channel: str | None
) -> int:
    """--invite: print the link on stdout, notes on stderr."""
    from voipclient.server.tls import TlsError, load_or_create

    if settings.port == 0:
        print(
            "voipclient-server: the port is 0 (a free one picked at each start): an invite "
            "needs the port the server will have; pass --port",
            file=sys.stderr,
        )
        return 2
    try:
        identity = load_or_create(data_dir, settings.tls_cert, settings.tls_key)
    except TlsError as exc:
        print(f"voipclient-server: {exc}", file=sys.stderr)
        return 1
    try:
        link, notes = make_invite(settings, settings.port, identity.pin, public_host, channel)
    except InviteError as exc:
        print(f"voipclient-server: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"voipclient-server: note: {note}", file=sys.stderr)
    print(link, flush=True)
    return 0


def _log_invite(
    settings: Settings, port: int, pin: str, public_host: str | None, channel: str | None
) -> None:
    """The link in the log at start; a link that cannot be made costs only a log line."""
    try:
        link, notes = make_invite(settings, port, pin, public_host, channel)
    except InviteError as exc:
        log.warning("no invite link: %s", exc)
        return
    log.info("invite link=%s", link)
    for note in notes:
        log.info("invite note: %s", note)


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
    if args.relay_worker is not None:  # started by the server itself (--workers)
        from voipclient.server.workers import worker_main

        _setup_logging(args.log_level or "info")
        return worker_main(args.relay_worker)
    if args.hash_password:
        return _hash_password_command()
    operator = args.ban or args.unban or args.list_bans or args.forget_name
    try:
        settings = resolve_settings(args)
        invite_channel = check_invite_options(settings, args.public_host, args.invite_channel)
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
    if args.invite:
        return _invite_command(settings, data_dir, args.public_host, invite_channel)
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
        return _run(lambda: _serve(settings, data_dir, args.public_host, invite_channel))
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        return 130


if __name__ == "__main__":
    sys.exit(main())
