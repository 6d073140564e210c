"""A FAKE ``org.freedesktop.portal.Desktop`` (GlobalShortcuts only) and a private bus to run it on.

This is a test double, not xdg-desktop-portal: it implements just enough of the portal's
GlobalShortcuts interface (version property, ``CreateSession``, ``BindShortcuts``,
``ConfigureShortcuts`` in version 2, ``Request.Close``, ``Session.Close``, the host
``Registry.Register``) for :class:`voipclient.ptt.portal_source.PortalSource`, records every
call, and lets the test emit ``Activated`` / ``Deactivated`` / ``Session.Closed`` on demand. It
answers like the real portal does: each call returns a Request path built from the caller's
unique name and ``handle_token``, then emits ``Response`` to the caller (unicast), the session
handle as type ``s`` (the real portal's historical type). Options make it answer "cancelled",
hold the bind "dialog" open until the test answers, send the Response before the method reply,
or not answer at all.

It always runs on a PRIVATE bus (:func:`private_bus`): a ``dbus-daemon`` the test starts with a
minimal configuration of its own (no service activation, so no real portal or keyring is ever
started on it) and kills at teardown. It never touches the user's session bus.

Its literals (names, paths, signatures) are written out here on purpose rather than imported
from the code under test, so a typo there cannot agree with itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageType, new_error, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.threading import DBusConnection, ReceiveStopped, open_dbus_connection

BUS_NAME = "org.freedesktop.portal.Desktop"
DESKTOP_PATH = "/org/freedesktop/portal/desktop"
GS = "org.freedesktop.portal.GlobalShortcuts"
REQUEST = "org.freedesktop.portal.Request"
SESSION = "org.freedesktop.portal.Session"
REGISTRY = "org.freedesktop.host.portal.Registry"
PROPS = "org.freedesktop.DBus.Properties"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


# -- the private bus ----------------------------------------------------------------------------


@dataclass
class PrivateBus:
    """A ``dbus-daemon`` of the test's own."""

    address: str
    pid: int
    folder: str

    def stop(self) -> None:
        """SIGTERM, wait for the daemon to be gone (SIGKILL after 5 s), remove its folder."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (new) parent to reap it is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def private_bus() -> Iterator[PrivateBus]:
    """Start ``dbus-daemon --fork`` with a minimal session configuration in a short temporary
    folder (Unix socket paths are limited to ~100 bytes); kill it afterwards."""
    folder = tempfile.mkdtemp(prefix="vcbus-")
    config = os.path.join(folder, "bus.conf")
    with open(config, "w") as f:
        f.write(_BUS_CONFIG.format(dir=folder))
    proc = subprocess.Popen(
        [
            "dbus-daemon",
            f"--config-file={config}",
            "--fork",
            "--print-address=1",
            "--print-pid=1",
            "--nopidfile",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + 10.0
    try:
        while len(lines) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            lines.extend(x.decode().strip() for x in done if x.strip())
        proc.stdout.close()
        proc.wait(10)
    except BaseException:
        proc.kill()
        proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if len(lines) < 2:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"dbus-daemon did not print its address and pid: {lines!r}")
    bus = PrivateBus(address=lines[0], pid=int(lines[1]), folder=folder)
    try:
        yield bus
    finally:
        bus.stop()


def own_name(address: str, name: str) -> DBusConnection:
    """A connection to the bus at ``address`` that owns ``name`` (for a fake service)."""
    conn = open_dbus_connection(bus=address)
    serial = 1_000_000
    conn.send(message_bus.RequestName(name, 4), serial=serial)  # 4: do not queue
    deadline = time.monotonic() + 5.0
    while True:
        msg = conn.receive(timeout=max(0.0, deadline - time.monotonic()))
        if msg.header.fields.get(HeaderFields.reply_serial) == serial:
            assert msg.body == (1,), f"could not own {name}: {msg.body!r}"
            return conn


def leave_bus(conn: DBusConnection, thread: threading.Thread | None) -> None:
    """Stop a fake service's serving ``thread`` and close its connection (the name goes with
    it), including the wake pipe jeepney's threading connection keeps."""
    conn.interrupt()
    if thread is not None:
        thread.join(5.0)
        assert not thread.is_alive()
    conn.close()
    for fd in (getattr(conn, "_stop_r", None), getattr(conn, "_stop_w", None)):
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the fake portal ----------------------------------------------------------------------------


@dataclass
class FakeSession:
    """A session the fake created."""

    path: str
    #: Unique name of the connection that created it.
    owner: str
    #: What BindShortcuts asked for: ``(id, {"description": ..., "preferred_trigger": ...})``
    #: with plain values; None until bound.
    shortcuts: list[tuple[str, dict[str, object]]] | None = None
    parent_window: str = ""
    closed: bool = False


@dataclass
class _PendingBind:
    request: str
    owner: str
    session: FakeSession


@dataclass
class FakeRecord:
    """Everything the fake was asked, in order."""

    #: ``(interface.member, path, sender)`` of every method call.
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    closed_requests: list[str] = field(default_factory=list)
    configure_calls: list[tuple[str, str]] = field(default_factory=list)
    registered: list[tuple[str, str]] = field(default_factory=list)


def _plain(value: object) -> object:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[1]
    return value


class FakePortal:
    """A FAKE GlobalShortcuts portal on ``address`` (see the module docstring).

    ``version``: the interface version (2 adds ConfigureShortcuts). ``global_shortcuts=False``:
    the name is owned but the interface is missing (a desktop without the backend).
    ``create_response`` / ``bind_response``: the Response codes (1 = cancelled by the user).
    ``hold_bind``: the bind "dialog" stays open until :meth:`answer_bind`. ``respond_early``:
    Response before the method's reply. ``mute``: answer nothing at all. ``list_bound``: include
    ``shortcuts`` in the bind Response (some portals may not).
    """

    def __init__(
        self,
        address: str,
        *,
        version: int = 1,
        global_shortcuts: bool = True,
        create_response: int = 0,
        bind_response: int = 0,
        hold_bind: bool = False,
        respond_early: bool = False,
        mute: bool = False,
        list_bound: bool = True,
    ) -> None:
        self.address = address
        self.version = version
        self.global_shortcuts = global_shortcuts
        self.create_response = create_response
        self.bind_response = bind_response
        self.hold_bind = hold_bind
        self.respond_early = respond_early
        self.mute = mute
        self.list_bound = list_bound
        self.record = FakeRecord()
        self.unique_name = ""
        self._cond = threading.Condition()
        self._pending: list[_PendingBind] = []
        self._conn: DBusConnection | None = None
        self._thread: threading.Thread | None = None
        self._tokens = 0

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> FakePortal:
        conn = own_name(self.address, BUS_NAME)
        self.unique_name = conn.unique_name
        self._conn = conn
        self._thread = threading.Thread(target=self._serve, name="fake-portal", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Leave the bus (the name goes with the connection) and join the thread."""
        conn, self._conn = self._conn, None
        if conn is not None:
            leave_bus(conn, self._thread)

    def __enter__(self) -> FakePortal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # -- what the test drives -------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[FakeRecord], bool], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.record), timeout)

    def latest_session(self) -> FakeSession:
        sessions = list(self.record.sessions.values())
        assert sessions, "no session was created"
        return sessions[-1]

    def bound_session(self, timeout: float = 5.0) -> FakeSession:
        """The latest session once it has bound shortcuts."""
        ok = self.wait_until(
            lambda r: any(s.shortcuts is not None for s in r.sessions.values()), timeout
        )
        assert ok, "nothing was bound"
        return [s for s in self.record.sessions.values() if s.shortcuts is not None][-1]

    def activate(self, shortcut_id: str, **how: Any) -> float:
        """Emit Activated; returns ``time.monotonic()`` taken just before sending."""
        return self._shortcut_signal("Activated", shortcut_id, **how)

    def deactivate(self, shortcut_id: str, **how: Any) -> float:
        return self._shortcut_signal("Deactivated", shortcut_id, **how)

    def _shortcut_signal(
        self,
        member: str,
        shortcut_id: str,
        *,
        session: str | None = None,
        destination: str | None = None,
        broadcast: bool = False,
    ) -> float:
        """``session``: default the latest bound one; ``destination``: default its owner;
        ``broadcast``: no destination at all."""
        known = self.bound_session() if session is None else self.record.sessions.get(session)
        path = session if session is not None else known.path if known else ""
        msg = new_signal(
            DBusAddress(DESKTOP_PATH, interface=GS),
            member,
            "osta{sv}",
            (path, shortcut_id, int(time.time() * 1000), {}),
        )
        if not broadcast:
            target = destination or (known.owner if known else None)
            assert target, "give a destination for a foreign session"
            msg.header.fields[HeaderFields.destination] = target
        conn = self._conn
        assert conn is not None
        t0 = time.monotonic()
        conn.send(msg)
        return t0

    def close_session(self, path: str) -> None:
        """The desktop ends a session: emit ``Session.Closed`` to its owner."""
        session = self.record.sessions[path]
        session.closed = True
        msg = new_signal(DBusAddress(path, interface=SESSION), "Closed", "a{sv}", ({},))
        msg.header.fields[HeaderFields.destination] = session.owner
        assert self._conn is not None
        self._conn.send(msg)

    def shortcuts_changed(self, path: str, triggers: dict[str, str]) -> None:
        """The user changed keys in the desktop's settings: emit ShortcutsChanged to the owner."""
        session = self.record.sessions[path]
        listed = [(sid, {"trigger_description": ("s", t)}) for sid, t in triggers.items()]
        msg = new_signal(
            DBusAddress(DESKTOP_PATH, interface=GS),
            "ShortcutsChanged",
            "oa(sa{sv})",
            (path, listed),
        )
        msg.header.fields[HeaderFields.destination] = session.owner
        assert self._conn is not None
        self._conn.send(msg)

    def answer_bind(self, code: int = 0, timeout: float = 5.0) -> None:
        """Answer the oldest bind held open by ``hold_bind``."""
        assert self.wait_until(lambda _r: bool(self._pending), timeout), "no bind is pending"
        with self._cond:
            pending = self._pending.pop(0)
        assert self._conn is not None
        self._respond(self._conn, pending.request, pending.owner, code, pending.session)

    # -- serving --------------------------------------------------------------------------------

    def _serve(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                msg = conn.receive()
            except (ReceiveStopped, OSError):
                return
            if msg.header.message_type != MessageType.method_call or self.mute:
                continue
            try:
                self._handle(conn, msg)
            except Exception as exc:  # a broken fake must show up as a failing call
                conn.send(new_error(msg, "org.freedesktop.DBus.Error.Failed", "s", (repr(exc),)))
            with self._cond:
                self._cond.notify_all()

    def _request_path(self, sender: str, options: dict[str, Any]) -> str:
        token = _plain(options.get("handle_token"))
        if not isinstance(token, str):
            self._tokens += 1
            token = f"fake{self._tokens}"
        return f"{DESKTOP_PATH}/request/{sender[1:].replace('.', '_')}/{token}"

    def _handle(self, conn: DBusConnection, msg: Any) -> None:
        fields = msg.header.fields
        iface = fields.get(HeaderFields.interface, "")
        member = fields.get(HeaderFields.member, "")
        path = fields.get(HeaderFields.path, "")
        sender = fields.get(HeaderFields.sender, "")
        with self._cond:
            self.record.calls.append((f"{iface}.{member}", path, sender))
        body = msg.body

        if iface == PROPS and member == "Get" and path == DESKTOP_PATH:
            wanted_iface, prop = body
            if wanted_iface == GS and self.global_shortcuts and prop == "version":
                conn.send(new_method_return(msg, "v", (("u", self.version),)))
            else:
                conn.send(
                    new_error(
                        msg,
                        "org.freedesktop.DBus.Error.InvalidArgs",
                        "s",
                        (f"No such interface “{wanted_iface}”",),
                    )
                )
            return
        if iface == REGISTRY and member == "Register":
            with self._cond:
                self.record.registered.append((sender, body[0]))
            conn.send(new_method_return(msg))
            return
        if iface == REQUEST and member == "Close":
            with self._cond:
                self.record.closed_requests.append(path)
                self._pending = [p for p in self._pending if p.request != path]
            conn.send(new_method_return(msg))
            return
        if iface == SESSION and member == "Close":
            session = self.record.sessions.get(path)
            if session is None or session.owner != sender:
                conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", "s", (path,)))
                return
            with self._cond:
                session.closed = True
            conn.send(new_method_return(msg))
            return
        if iface == GS and self.global_shortcuts and path == DESKTOP_PATH:
            if member == "CreateSession":
                self._create_session(conn, msg, sender, body[0])
                return
            if member == "BindShortcuts":
                self._bind(conn, msg, sender, body)
                return
            if member == "ConfigureShortcuts" and self.version >= 2:
                with self._cond:
                    self.record.configure_calls.append((body[0], body[1]))
                conn.send(new_method_return(msg))
                return
        conn.send(
            new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"{iface}.{member}",))
        )

    def _send_response(
        self, conn: DBusConnection, request: str, owner: str, code: int, results: dict[str, Any]
    ) -> None:
        signal_msg = new_signal(
            DBusAddress(request, interface=REQUEST), "Response", "ua{sv}", (code, results)
        )
        signal_msg.header.fields[HeaderFields.destination] = owner
        conn.send(signal_msg)

    def _create_session(
        self, conn: DBusConnection, msg: Any, sender: str, options: dict[str, Any]
    ) -> None:
        request = self._request_path(sender, options)
        token = _plain(options.get("session_handle_token"))
        if not isinstance(token, str):
            self._tokens += 1
            token = f"fakesession{self._tokens}"
        session_path = f"{DESKTOP_PATH}/session/{sender[1:].replace('.', '_')}/{token}"
        code = self.create_response
        if code == 0:
            with self._cond:
                self.record.sessions[session_path] = FakeSession(session_path, sender)
        results = {"session_handle": ("s", session_path)} if code == 0 else {}
        reply = new_method_return(msg, "o", (request,))
        if self.respond_early:
            self._send_response(conn, request, sender, code, results)
            conn.send(reply)
        else:
            conn.send(reply)
            self._send_response(conn, request, sender, code, results)

    def _bind(self, conn: DBusConnection, msg: Any, sender: str, body: tuple[Any, ...]) -> None:
        session_path, shortcuts, parent_window, options = body
        session = self.record.sessions.get(session_path)
        if session is None or session.owner != sender or session.closed:
            conn.send(new_error(msg, "org.freedesktop.portal.Error.NotFound", "s", ("no session",)))
            return
        if session.shortcuts is not None:
            conn.send(
                new_error(msg, "org.freedesktop.portal.Error.Failed", "s", ("already bound",))
            )
            return
        request = self._request_path(sender, options)
        with self._cond:
            session.shortcuts = [
                (sid, {k: _plain(v) for k, v in props.items()}) for sid, props in shortcuts
            ]
            session.parent_window = parent_window
        reply = new_method_return(msg, "o", (request,))
        if self.hold_bind:
            conn.send(reply)
            with self._cond:
                self._pending.append(_PendingBind(request, sender, session))
            return
        if self.respond_early:
            self._respond(conn, request, sender, self.bind_response, session)
            conn.send(reply)
        else:
            conn.send(reply)
            self._respond(conn, request, sender, self.bind_response, session)

    def _respond(
        self, conn: DBusConnection, request: str, owner: str, code: int, session: FakeSession
    ) -> None:
        results: dict[str, Any] = {}
        if code == 0 and self.list_bound:
            listed = [
                (
                    sid,
                    {
                        "description": ("s", str(props.get("description", ""))),
                        "trigger_description": ("s", str(props.get("preferred_trigger", ""))),
                    },
                )
                for sid, props in session.shortcuts or []
            ]
            results["shortcuts"] = ("a(sa{sv})", listed)
        self._send_response(conn, request, owner, code, results)
