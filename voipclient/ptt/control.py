"""Local control socket and the ``voipclient ptt`` command (stream decks, scripts, Wayland).

Transport:

* **Unix** (Linux, macOS): a Unix domain socket at ``$XDG_RUNTIME_DIR/voipclient-ptt.sock``
  (without ``XDG_RUNTIME_DIR``: ``$TMPDIR/voipclient-$UID/ptt.sock`` in a directory of mode 0700
  that must belong to us), mode 0600. ``VOIPCLIENT_PTT_SOCKET`` overrides the path. A stale socket
  left by a crashed client is replaced; a live one (another instance answers) is an error.
* **TCP** (Windows, where ``AF_UNIX`` permissions are not dependable): ``127.0.0.1`` on an
  ephemeral port; the port and a random 256-bit token are written to
  ``%LOCALAPPDATA%\\voipclient\\ptt-control.txt`` (``PORT TOKEN``; the profile directory is
  private to the user). The first line of a connection must be ``auth TOKEN``; a wrong token
  closes the connection. ``VOIPCLIENT_PTT_TOKEN_FILE`` overrides the path.

Protocol: UTF-8 lines of at most 2048 bytes; each request line gets one reply line, ``ok ...`` or
``error MESSAGE``. Commands: ``press CHANNEL``, ``release CHANNEL``, ``toggle CHANNEL`` (a
channel name or id; reply ``ok wanted=2,5``) and ``status`` (reply ``ok {json}``). The handler is
:meth:`voipclient.ptt.service.PttService.handle_command`; the app also answers ``open LINK`` (an
invite link handed over by a second start, ``voipclient voipclient://...``).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import os
import secrets
import socket
import socketserver
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "ControlServer",
    "NotRunningError",
    "default_socket_path",
    "default_token_file",
    "ptt_cli",
    "send_command",
]

MAX_LINE = 2048  # bytes per request line (the longest invite link: a 253-byte host and a
# channel name of 64 emoji, percent-encoded, fits)
Transport = Literal["unix", "tcp"]


class NotRunningError(OSError):
    """No client is listening on the control socket."""


def default_socket_path() -> Path:
    """Where the Unix control socket lives (see the module docstring)."""
    override = os.environ.get("VOIPCLIENT_PTT_SOCKET")
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "voipclient-ptt.sock"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"voipclient-{uid}" / "ptt.sock"


def default_token_file() -> Path:
    """Where the TCP transport's ``PORT TOKEN`` file lives."""
    override = os.environ.get("VOIPCLIENT_PTT_TOKEN_FILE")
    if override:
        return Path(override)
    base = os.environ.get("LOCALAPPDATA") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "voipclient" / "ptt-control.txt"


def default_transport() -> Transport:
    return "tcp" if sys.platform == "win32" else "unix"


def _private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):
        st = path.stat()
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise PermissionError(f"{path} must belong to us and have mode 0700")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        srv = self.server
        with srv.lock:
            srv.connections.add(self.connection)
        try:
            if srv.token is not None:
                first = self.rfile.readline(MAX_LINE + 1).decode("utf-8", "replace").strip()
                verb, _, token = first.partition(" ")
                if verb != "auth" or not hmac.compare_digest(token.encode(), srv.token.encode()):
                    self.wfile.write(b"error bad token\n")
                    return
                self.wfile.write(b"ok\n")
            while True:
                raw = self.rfile.readline(MAX_LINE + 1)
                if not raw:
                    return
                if len(raw) > MAX_LINE:
                    self.wfile.write(b"error line too long\n")
                    return
                reply = srv.command_handler(raw.decode("utf-8", "replace"))
                self.wfile.write(reply.replace("\n", " ").encode() + b"\n")
        except OSError:
            return
        finally:
            with srv.lock:
                srv.connections.discard(self.connection)


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    block_on_close = False
    command_handler: Callable[[str], str]
    token: str | None
    lock: threading.Lock
    connections: set[socket.socket]


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class _TcpServer(_Server, socketserver.TCPServer):
    allow_reuse_address = False


class ControlServer:
    """Serves the control protocol on its own thread until :meth:`stop`."""

    def __init__(
        self,
        handler: Callable[[str], str],
        *,
        transport: Transport | None = None,
        path: Path | str | None = None,
        token_file: Path | str | None = None,
    ) -> None:
        self._handler = handler
        self.transport: Transport = transport or default_transport()
        self.path = Path(path) if path is not None else default_socket_path()
        self.token_file = Path(token_file) if token_file is not None else default_token_file()
        self.port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """For logs: the socket path, or ``127.0.0.1:PORT``."""
        return str(self.path) if self.transport == "unix" else f"127.0.0.1:{self.port}"

    def _bind_unix(self) -> _Server:
        if self.path.parent != Path(os.environ.get("XDG_RUNTIME_DIR", "\0")):
            _private_dir(self.path.parent)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # stale: nobody listens
            else:
                raise FileExistsError(f"another voipclient is listening on {self.path}")
            finally:
                probe.close()
        old = os.umask(0o177)  # the socket file is born 0600 (no window with wider mode)
        try:
            server = _UnixServer(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        return server

    def _bind_tcp(self) -> _Server:
        server = _TcpServer(("127.0.0.1", 0), _Handler)
        self.port = int(server.server_address[1])
        token = secrets.token_hex(32)
        server.token = token
        _private_dir(self.token_file.parent)
        tmp = self.token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.port} {token}\n")
        os.replace(tmp, self.token_file)
        return server

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("control server already started")
        server = self._bind_unix() if self.transport == "unix" else self._bind_tcp()
        server.command_handler = self._handler
        if self.transport == "unix":
            server.token = None
        server.lock = threading.Lock()
        server.connections = set()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="ptt-control"
        )
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close open connections, remove the socket or token file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with server.lock:
            for conn in list(server.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        target = self.path if self.transport == "unix" else self.token_file
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def _readline(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def send_command(
    line: str,
    *,
    transport: Transport | None = None,
    path: Path | str | None = None,
    token_file: Path | str | None = None,
    timeout: float = 2.0,
) -> str:
    """Send one command line, return the reply line. Raises :class:`NotRunningError` when no
    client listens."""
    transport = transport or default_transport()
    if transport == "unix":
        where = Path(path) if path is not None else default_socket_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(where))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise NotRunningError(
                f"voipclient is not running (no control socket at {where})"
            ) from exc
    else:
        tf = Path(token_file) if token_file is not None else default_token_file()
        try:
            port_text, token = tf.read_text().split()
        except (FileNotFoundError, ValueError) as exc:
            raise NotRunningError(f"voipclient is not running (no token file at {tf})") from exc
        try:
            sock = socket.create_connection(("127.0.0.1", int(port_text)), timeout=timeout)
        except ConnectionRefusedError as exc:
            raise NotRunningError(
                f"voipclient is not running (nothing on port {port_text})"
            ) from exc
        sock.sendall(f"auth {token}\n".encode())
        reply = _readline(sock)
        if reply != "ok":
            sock.close()
            return reply or "error authentication failed"
    with sock:
        sock.sendall(line.strip().encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        return _readline(sock)


def ptt_cli(argv: Sequence[str] | None = None) -> int:
    """``voipclient ptt press|release|toggle CHANNEL`` / ``voipclient ptt status``.

    Exit status: 0 ok, 1 the client refused (unknown channel ...), 2 usage, 3 not running.
    """
    parser = argparse.ArgumentParser(
        prog="voipclient ptt",
        description="Push-to-talk through the running voipclient's local control socket.",
    )
    parser.add_argument("--socket", help="control socket path (default: %(default)s)", default=None)
    parser.add_argument("--token-file", help="TCP transport token file (Windows)", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    for verb, text in (
        ("press", "start talking to CHANNEL (until release)"),
        ("release", "stop talking to CHANNEL"),
        ("toggle", "start or stop talking to CHANNEL"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("channel", help="channel name or id")
    sub.add_parser("status", help="print the push-to-talk state as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    line = "status" if args.command == "status" else f"{args.command} {args.channel}"
    try:
        reply = send_command(line, path=args.socket, token_file=args.token_file)
    except NotRunningError as exc:
        print(f"voipclient ptt: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"voipclient ptt: control socket error: {exc}", file=sys.stderr)
        return 3
    if reply.startswith("ok"):
        body = reply[2:].strip()
        if body:
            print(body)
        return 0
    print(f"voipclient ptt: {reply.removeprefix('error ').strip()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(ptt_cli())
