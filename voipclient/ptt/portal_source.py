"""Global hotkeys through the XDG desktop portal ``org.freedesktop.portal.GlobalShortcuts``.

The sanctioned way to get global shortcuts on Wayland (KDE Plasma 5.27+, GNOME 48+, Hyprland):
the application does not see keys at all. It creates a portal *session*, asks the desktop to
bind one *shortcut* per push-to-talk binding (``BindShortcuts``: the desktop may show a dialog
where the user confirms or changes the keys), and then receives ``Activated`` / ``Deactivated``
signals naming the shortcut while the user holds it.

**Delivery.** The router matches chords from pressed keys, so this source turns a shortcut back
into the keys of its binding's chord: ``Activated(id)`` → a press of every key of the chord
(modifiers first, so a completed chord engages the larger binding only), ``Deactivated(id)`` →
their releases. Keys are reference counted (:class:`HeldKeys`): two active shortcuts sharing
``ctrl`` release it only when the last one ends. The keys the desktop actually uses can differ
from the chord (the user may pick another trigger in the dialog); the router still sees the
binding's own chord, so the binding engages. Signals from anything but the portal's owner, or
for another session, are ignored.

**Protocol** (xdg-desktop-portal ``data/org.freedesktop.portal.*.xml``): portal calls answer with
a ``Request`` object path and the result arrives later in that object's ``Response(u, a{sv})``
signal (0 = success, 1 = the user cancelled, 2 = ended otherwise). Since xdg-desktop-portal 0.9
the path is predictable (``/org/freedesktop/portal/desktop/request/SENDER/TOKEN`` with our
``handle_token``), so the match rule for every Response to us is added once, at start, before
any call: a Response that comes before the method's reply is not lost. A session can bind
shortcuts once; new bindings after start therefore close the session (``Session.Close``) and
create a new one. Stable shortcut ids (derived from the chord, :func:`shortcut_id`) let the
desktop remember the user's keys across sessions. Version 2 of the interface adds
``ConfigureShortcuts`` (:meth:`PortalSource.configure_shortcuts` opens the desktop's own
settings for our shortcuts). The ``preferred_trigger`` follows the XDG shortcuts specification
(modifiers ``CTRL``, ``SHIFT``, ``ALT``, ``LOGO`` and one xkbcommon keysym name, joined by
``+``: :func:`preferred_trigger`); mouse buttons have no trigger there (the user picks one).

**Why jeepney, not QtDBus.** The source runs on its own hotkey thread like the other sources
(ARCHITECTURE: the hotkey thread feeds the router); QtDBus delivers signals through a Qt event
loop, i.e. the GUI thread (a busy GUI thread would delay push-to-talk) or a QThread of our own
with a per-thread connection, and PySide6 cannot easily marshal ``a(sa{sv})`` (a list of
structs) for ``BindShortcuts``. jeepney is pure Python, already installed with ``keyring`` on
Linux, and its protocol layer is sans-IO (``Authenticator``, ``Parser``, ``Message``): this
module owns the socket (:class:`_DBusLink`), so every wait has a deadline (``available()``
never hangs, not even on a bus that accepts and then says nothing) and ``stop()`` wakes the
blocked thread through a pipe at once. The source also works without a QApplication (the bot,
tests). jeepney is imported lazily, inside :meth:`PortalSource.available` / ``start``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from voipclient.ptt.keys import parse_chord
from voipclient.ptt.router import Binding
from voipclient.ptt.sources import InputCallback, InputEvent

__all__ = [
    "HeldKeys",
    "PortalShortcut",
    "PortalSource",
    "chord_order",
    "plan_shortcuts",
    "preferred_trigger",
    "request_path",
    "response_reason",
    "sender_path_element",
    "session_path",
    "shortcut_id",
    "shortcuts_from_bindings",
]

log = logging.getLogger("voipclient.ptt.portal")

PORTAL_BUS_NAME: Final = "org.freedesktop.portal.Desktop"
PORTAL_PATH: Final = "/org/freedesktop/portal/desktop"
SHORTCUTS_IFACE: Final = "org.freedesktop.portal.GlobalShortcuts"
REQUEST_IFACE: Final = "org.freedesktop.portal.Request"
SESSION_IFACE: Final = "org.freedesktop.portal.Session"
REGISTRY_IFACE: Final = "org.freedesktop.host.portal.Registry"

NEEDS: Final = "needs KDE Plasma 5.27+, GNOME 48+ or Hyprland"

# -- pure helpers: names, triggers, ids, paths -------------------------------------------------

_MODIFIER_ORDER = ("ctrl", "shift", "alt", "alt_gr", "super")
_MODIFIER_TOKENS = {"ctrl": "CTRL", "shift": "SHIFT", "alt": "ALT", "super": "LOGO"}

# Canonical input name → xkbcommon keysym name (xkbcommon-keysyms.h without ``XKB_KEY_``).
_KEYSYMS: dict[str, str] = {
    **{c: c for c in "abcdefghijklmnopqrstuvwxyz0123456789"},
    **{f"f{i}": f"F{i}" for i in range(1, 25)},
    **{f"kp_{i}": f"KP_{i}" for i in range(10)},
    "kp_add": "KP_Add",
    "kp_subtract": "KP_Subtract",
    "kp_multiply": "KP_Multiply",
    "kp_divide": "KP_Divide",
    "kp_decimal": "KP_Decimal",
    "kp_enter": "KP_Enter",
    "space": "space",
    "enter": "Return",
    "tab": "Tab",
    "esc": "Escape",
    "backspace": "BackSpace",
    "delete": "Delete",
    "insert": "Insert",
    "home": "Home",
    "end": "End",
    "page_up": "Page_Up",
    "page_down": "Page_Down",
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    "caps_lock": "Caps_Lock",
    "num_lock": "Num_Lock",
    "scroll_lock": "Scroll_Lock",
    "print_screen": "Print",
    "pause": "Pause",
    "menu": "Menu",
    "alt_gr": "ISO_Level3_Shift",
    "grave": "grave",
    "minus": "minus",
    "equal": "equal",
    "bracket_left": "bracketleft",
    "bracket_right": "bracketright",
    "backslash": "backslash",
    "semicolon": "semicolon",
    "apostrophe": "apostrophe",
    "comma": "comma",
    "period": "period",
    "slash": "slash",
    "less": "less",
    "media_play_pause": "XF86AudioPlay",
    "media_next": "XF86AudioNext",
    "media_previous": "XF86AudioPrev",
    "media_stop": "XF86AudioStop",
    "volume_up": "XF86AudioRaiseVolume",
    "volume_down": "XF86AudioLowerVolume",
    "volume_mute": "XF86AudioMute",
}

# A chord of one modifier key alone: the key itself is the trigger ("Control_R").
_MODIFIER_KEYSYMS = {
    "ctrl": "Control_L",
    "ctrl_l": "Control_L",
    "ctrl_r": "Control_R",
    "shift": "Shift_L",
    "shift_l": "Shift_L",
    "shift_r": "Shift_R",
    "alt": "Alt_L",
    "alt_l": "Alt_L",
    "alt_r": "Alt_R",
    "super": "Super_L",
    "super_l": "Super_L",
    "super_r": "Super_R",
}


def _modifier(name: str) -> str | None:
    """``ctrl_l`` → ``ctrl``; None for a key that is not one of the four modifiers."""
    base = name.removesuffix("_l").removesuffix("_r")
    return base if base in _MODIFIER_TOKENS else None


def chord_order(chord: Iterable[str]) -> list[str]:
    """Modifiers first (ctrl, shift, alt, alt_gr, super), then the rest alphabetically: the order
    in which a shortcut's keys are pressed (releases go the other way)."""
    rank = {m: i for i, m in enumerate(_MODIFIER_ORDER)}

    def key(name: str) -> tuple[int, str]:
        base = "alt_gr" if name == "alt_gr" else (_modifier(name) or name)
        return (rank.get(base, len(rank)), name)

    return sorted(chord, key=key)


def preferred_trigger(chord: Iterable[str]) -> str | None:
    """The chord in the XDG shortcuts format (``CTRL+SHIFT+F13``), or None when the format cannot
    say it: mouse buttons, two non-modifier keys, several modifiers alone. The desktop treats the
    trigger as a suggestion; with None the user picks the key in the desktop's dialog."""
    names = list(chord)
    mods = [n for n in names if _modifier(n) is not None]
    keys = [n for n in names if _modifier(n) is None]
    if len(keys) == 1:
        keysym = _KEYSYMS.get(keys[0])
        if keysym is None:
            return None
        tokens = {_MODIFIER_TOKENS[m] for n in mods if (m := _modifier(n)) is not None}
        ordered = [_MODIFIER_TOKENS[m] for m in ("ctrl", "shift", "alt", "super")]
        return "+".join([*(t for t in ordered if t in tokens), keysym])
    if not keys and len(mods) == 1:
        return _MODIFIER_KEYSYMS[mods[0]]
    return None


def shortcut_id(chord: Iterable[str]) -> str:
    """A stable id for the chord's shortcut (``ptt-ctrl-shift-f13``): the desktop remembers the
    user's choice of keys by it, across sessions and restarts."""
    ordered = chord_order(chord)
    if not ordered:
        raise ValueError("a shortcut needs at least one key")
    return "ptt-" + "-".join(ordered)


def sender_path_element(unique_name: str) -> str:
    """``:1.42`` → ``1_42`` (the SENDER element of request and session paths)."""
    return unique_name.removeprefix(":").replace(".", "_")


def request_path(unique_name: str, token: str) -> str:
    """The path the portal gives the Request of a call made with ``handle_token=token``."""
    return f"{PORTAL_PATH}/request/{sender_path_element(unique_name)}/{token}"


def session_path(unique_name: str, token: str) -> str:
    """The path of a session created with ``session_handle_token=token``."""
    return f"{PORTAL_PATH}/session/{sender_path_element(unique_name)}/{token}"


def response_reason(code: int) -> str:
    """A Request's response code in words (the portal's Request documentation)."""
    if code == 0:
        return "accepted"
    if code == 1:
        return "cancelled by the user"
    if code == 2:
        return "ended by the desktop without an answer (response 2)"
    return f"failed with an unknown response {code}"


@dataclass(frozen=True, slots=True)
class PortalShortcut:
    """One shortcut as asked of the portal."""

    #: Stable id from the chord (:func:`shortcut_id`).
    id: str
    #: What the desktop's dialog shows ("Push-to-talk: Squad A").
    description: str
    #: Canonical input names the router sees while the shortcut is active.
    chord: frozenset[str]
    #: ``preferred_trigger`` in the XDG shortcuts format, or None (the user picks).
    trigger: str | None


def plan_shortcuts(bindings: Sequence[tuple[str, Iterable[str]]]) -> tuple[PortalShortcut, ...]:
    """``(description, chord)`` pairs → the shortcuts to bind, in order. Names are made canonical;
    an empty or unknown key, or two bindings with the same chord, is a ValueError."""
    out: list[PortalShortcut] = []
    seen: dict[str, str] = {}
    for description, keys in bindings:
        chord = parse_chord(tuple(keys))
        sid = shortcut_id(chord)
        text = description.strip() or "Push-to-talk: " + "+".join(chord_order(chord))
        if sid in seen:
            raise ValueError(f"{text!r} has the same keys as {seen[sid]!r}")
        seen[sid] = text
        out.append(PortalShortcut(sid, text, chord, preferred_trigger(chord)))
    return tuple(out)


def shortcuts_from_bindings(
    bindings: Iterable[Binding], channel_name: Callable[[int], str | None] | None = None
) -> list[tuple[str, frozenset[str]]]:
    """The router's bindings as :meth:`PortalSource.set_bindings` takes them. With
    ``channel_name`` the description names the channels the key talks to (what the desktop's
    dialog shows the user), else the binding's own name."""
    out: list[tuple[str, frozenset[str]]] = []
    for b in bindings:
        verb = "Toggle talking" if b.latching else "Push-to-talk"
        names = [channel_name(c) for c in sorted(b.channels)] if channel_name else []
        what = ", ".join(n for n in names if n) or b.name
        out.append((f"{verb}: {what}", b.chord))
    return out


class HeldKeys:
    """Which keys the active shortcuts hold down, counted per key (pure; one owner thread).

    :meth:`activate` and :meth:`deactivate` return the ``(name, pressed)`` transitions to report:
    a key goes down with the first active shortcut that has it and up with the last. A repeated
    Activated for an active shortcut, or a Deactivated for an inactive one, changes nothing.
    """

    def __init__(self) -> None:
        self._active: dict[str, frozenset[str]] = {}
        self._count: dict[str, int] = {}

    @property
    def active(self) -> frozenset[str]:
        """Ids of the shortcuts active now."""
        return frozenset(self._active)

    @property
    def held(self) -> frozenset[str]:
        """Keys down now."""
        return frozenset(self._count)

    def activate(self, sid: str, chord: Iterable[str]) -> list[tuple[str, bool]]:
        if sid in self._active:
            return []
        keys = frozenset(chord)
        self._active[sid] = keys
        out: list[tuple[str, bool]] = []
        for name in chord_order(keys):
            before = self._count.get(name, 0)
            self._count[name] = before + 1
            if before == 0:
                out.append((name, True))
        return out

    def deactivate(self, sid: str) -> list[tuple[str, bool]]:
        keys = self._active.pop(sid, None)
        if keys is None:
            return []
        out: list[tuple[str, bool]] = []
        for name in reversed(chord_order(keys)):
            left = self._count[name] - 1
            if left:
                self._count[name] = left
            else:
                del self._count[name]
                out.append((name, False))
        return out

    def release_all(self) -> list[tuple[str, bool]]:
        """Every active shortcut ends (the session closed), the latest first."""
        out: list[tuple[str, bool]] = []
        for sid in reversed(list(self._active)):
            out.extend(self.deactivate(sid))
        return out


# -- D-Bus plumbing ------------------------------------------------------------------------------


class PortalCallError(Exception):
    """The portal (or the bus) answered a call with a D-Bus error."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message


class _Woken(Exception):
    """A receive was interrupted by :meth:`_DBusLink.wake`."""


class _Stopped(Exception):
    """The source is stopping: unwind the thread."""


def session_bus_address() -> str | None:
    """``$DBUS_SESSION_BUS_ADDRESS``, else the systemd user bus socket if it exists."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "").strip()
    if address:
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return "unix:path=" + os.path.join(runtime, "bus")
    return None


class _DBusLink:
    """One D-Bus connection on our own socket, driven with jeepney's sans-IO layer.

    Every blocking step takes a deadline (``time.monotonic()`` seconds; None waits forever) and
    :meth:`wake` makes a blocked :meth:`receive` raise :class:`_Woken` from another thread. One
    thread receives; :meth:`send` may be called from any thread.
    """

    def __init__(self, sock: socket.socket) -> None:
        from jeepney import Parser

        self._sock = sock
        self._parser: Any = Parser()
        self._serials = itertools.count(1)
        self._send_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, "bus")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.unique_name = ""

    @classmethod
    def open(cls, address: str, deadline: float) -> _DBusLink:
        """Connect, authenticate (EXTERNAL) and say Hello, all before ``deadline``."""
        from jeepney.auth import BEGIN, Authenticator
        from jeepney.bus import get_connectable_addresses
        from jeepney.bus_messages import message_bus

        target = next(get_connectable_addresses(address))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(target)
            auth = Authenticator()
            for data in auth:
                sock.settimeout(_remaining(deadline))
                sock.sendall(data)
                sock.settimeout(_remaining(deadline))
                chunk = sock.recv(1024)
                if not chunk:
                    raise ConnectionResetError("the bus closed the connection during sign-in")
                auth.feed(chunk)
            sock.settimeout(_remaining(deadline))
            sock.sendall(BEGIN)
            sock.settimeout(None)
        except TimeoutError:
            sock.close()
            raise TimeoutError("the bus did not finish the sign-in in time") from None
        except BaseException:
            sock.close()
            raise
        link = cls(sock)
        try:
            reply = link.call(message_bus.Hello(), deadline)
            link.unique_name = str(reply.body[0])
        except BaseException:
            link.close()
            raise
        return link

    def send(self, message: Any) -> int:
        """Send ``message``; returns its serial."""
        with self._send_lock:
            serial = next(self._serials)
            self._sock.sendall(message.serialise(serial=serial))
        return serial

    def receive(self, deadline: float | None) -> Any:
        """The next message. Raises TimeoutError at ``deadline``, :class:`_Woken` when woken,
        ConnectionResetError when the bus goes away."""
        while True:
            message = self._parser.get_next_message()
            if message is not None:
                return message
            timeout = None if deadline is None else _remaining(deadline)
            ready = self._selector.select(timeout)
            if not ready:
                raise TimeoutError
            for key, _ in ready:
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                    raise _Woken
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError("the D-Bus connection was closed")
            self._parser.add_data(data)

    def call(self, message: Any, deadline: float, on_other: Any = None) -> Any:
        """Send a method call and wait for its reply (other messages go to ``on_other``).
        A D-Bus error reply raises :class:`PortalCallError`."""

        serial = self.send(message)
        while True:
            reply = self.receive(deadline)
            if _answers(reply, serial):
                return reply
            if on_other is not None:
                on_other(reply)

    def wake(self) -> None:
        with self._wake_lock:
            if not self._closed:
                os.write(self._wake_w, b"w")

    def close(self) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            self._selector.close()
            self._sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


def _answers(reply: Any, serial: int) -> bool:
    """Whether ``reply`` answers the call ``serial``; a D-Bus error answer raises
    :class:`PortalCallError`."""
    from jeepney import HeaderFields, MessageType

    fields = reply.header.fields
    if fields.get(HeaderFields.reply_serial) != serial:
        return False
    if reply.header.message_type == MessageType.error:
        body = reply.body
        text = str(body[0]) if body and isinstance(body[0], str) else ""
        raise PortalCallError(str(fields.get(HeaderFields.error_name, "")), text)
    return True


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _variant(value: object) -> object:
    """The value of a jeepney variant ``(signature, value)``, or the value itself."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[1]
    return value


def _parse_bound(results: Mapping[str, object]) -> dict[str, str]:
    """A BindShortcuts Response's ``shortcuts`` → ``{id: trigger_description}`` (malformed
    entries dropped: the portal is a peer)."""
    out: dict[str, str] = {}
    entries = _variant(results.get("shortcuts", ("a(sa{sv})", [])))
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            continue
        props = entry[1] if isinstance(entry[1], dict) else {}
        trigger = _variant(props.get("trigger_description", ("s", "")))
        out[entry[0]] = trigger if isinstance(trigger, str) else ""
    return out


def _portal_error_reason(exc: PortalCallError) -> str:
    if exc.name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ):
        return (
            f"no desktop portal ({PORTAL_BUS_NAME}) on the session bus: install xdg-desktop-portal "
            f"and your desktop's portal backend ({NEEDS})"
        )
    return f"no portal GlobalShortcuts interface on the session bus ({NEEDS})"


def _check_version(link: _DBusLink, deadline: float) -> int:
    """The GlobalShortcuts ``version`` property (raises PortalCallError / TimeoutError)."""
    from jeepney import DBusAddress, Properties

    portal = DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS_NAME, interface=SHORTCUTS_IFACE)
    reply = link.call(Properties(portal).get("version"), deadline)
    version = _variant(reply.body[0]) if reply.body else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PortalCallError("voipclient.BadVersion", f"unusable version {version!r}")
    return version


# -- the source ----------------------------------------------------------------------------------


class PortalSource:
    """Push-to-talk keys bound through the desktop portal, reported on the ``ptt-portal`` thread.

    ``bus_address``: a D-Bus address (tests pass a private bus); default the session bus.
    ``timeout`` (s) bounds every step that does not wait for the user: connecting, the version
    check, each method call, closing at stop. ``app_id``: registered with
    ``org.freedesktop.host.portal.Registry`` (xdg-desktop-portal 1.19+) before any portal call,
    so the desktop can name the app and remember its keys (must match a ``.desktop`` file's
    basename); ignored by portals without that interface. ``parent_window``: the XDG window
    identifier for the dialog (``x11:<hex xid>`` / ``wayland:<handle>``), empty for none.
    """

    name = "portal"

    def __init__(
        self,
        *,
        bus_address: str | None = None,
        timeout: float = 2.0,
        app_id: str | None = None,
        parent_window: str = "",
    ) -> None:
        self._bus_address = bus_address
        self._timeout = timeout
        self._app_id = app_id
        self._parent_window = parent_window
        self._lock = threading.Lock()
        self._wanted: tuple[PortalShortcut, ...] = ()
        self._generation = 0
        self._settled = threading.Event()
        self._stopping = threading.Event()
        self._configure = threading.Event()
        self._status = "not started"
        self._thread: threading.Thread | None = None
        self._link: _DBusLink | None = None
        self._callback: InputCallback | None = None
        # Owned by the source thread once it runs:
        self._applied = -1
        self._owner = ""
        self._session: str | None = None
        self._session_shortcuts: dict[str, PortalShortcut] = {}
        self._responses: dict[str, tuple[int, dict[str, object]]] = {}
        self._keys = HeldKeys()
        #: Shortcut id → the trigger the desktop reports for it ("" if it did not say).
        self.bound: dict[str, str] = {}
        #: The portal's GlobalShortcuts version (after start).
        self.version: int | None = None
        #: For tests: the thread :meth:`stop` joined (check that it is gone).
        self.stopped_thread: threading.Thread | None = None
        #: Called with each new :attr:`status` (the desktop answers late: after a dialog, a
        #: portal restart), on the thread that changed it, mostly ``ptt-portal``. Must be quick
        #: (the app emits a queued Qt signal).
        self.on_status: Callable[[str], None] | None = None

    # -- reading ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """What is bound and what the desktop answered, in words, for the settings page."""
        return self._status

    @property
    def shortcuts(self) -> tuple[PortalShortcut, ...]:
        """The shortcuts asked for (the last :meth:`set_bindings`)."""
        return self._wanted

    @property
    def session_handle(self) -> str | None:
        """The portal session in use, if any."""
        return self._session

    def wait_settled(self, timeout: float) -> bool:
        """Wait until the desktop answered for the latest bindings (bound, refused, cancelled or
        failed: see :attr:`status`); False at ``timeout`` (s). The answer may wait for the user."""
        return self._settled.wait(timeout)

    # -- HotkeySource -------------------------------------------------------------------------

    def _address(self) -> tuple[str | None, str]:
        if sys.platform in ("win32", "darwin"):
            return None, "the desktop portal exists on Linux and BSD desktops only"
        address = self._bus_address or session_bus_address()
        if not address:
            return None, "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)"
        return address, ""

    def available(self) -> tuple[bool, str]:
        address, why = self._address()
        if address is None:
            return False, why
        try:
            import jeepney  # noqa: F401
        except ImportError:
            return False, "the 'jeepney' package is not installed (pip install jeepney)"
        deadline = time.monotonic() + self._timeout
        try:
            link = _DBusLink.open(address, deadline)
        except TimeoutError:
            return False, f"the D-Bus session bus did not answer within {self._timeout:g} s"
        except (OSError, RuntimeError, ValueError, PortalCallError) as exc:
            return False, f"cannot connect to the D-Bus session bus: {exc}"
        try:
            version = _check_version(link, deadline)
        except TimeoutError:
            return False, f"the desktop portal did not answer within {self._timeout:g} s"
        except PortalCallError as exc:
            return False, _portal_error_reason(exc)
        except OSError as exc:
            return False, f"the D-Bus session bus closed the connection: {exc}"
        finally:
            link.close()
        return True, f"global shortcuts through the desktop portal (GlobalShortcuts v{version})"

    def set_bindings(self, bindings: Sequence[tuple[str, Iterable[str]]]) -> None:
        """The shortcuts to bind: ``(description, chord)`` pairs, one portal shortcut each
        (:func:`shortcuts_from_bindings` makes them from the router's bindings). Before start they
        are bound at start; after it, a change closes the session and binds in a new one (a
        session binds once), which may show the desktop's dialog again. Unchanged bindings do
        nothing. Raises ValueError for a bad chord."""
        plan = plan_shortcuts(bindings)
        with self._lock:
            if plan == self._wanted:
                return
            self._wanted = plan
            self._generation += 1
            self._settled.clear()
            link = self._link
        if link is None:
            self._set_status(f"{len(plan)} shortcut(s) to bind when started")
        else:
            link.wake()

    def configure_shortcuts(self) -> bool:
        """Open the desktop's settings for our shortcuts (``ConfigureShortcuts``, portal version
        2+); changes come back as ShortcutsChanged (:attr:`status`). False when the portal is
        older or nothing is bound yet."""
        if self.version is None or self.version < 2 or self._link is None or not self.bound:
            return False
        self._configure.set()
        self._link.wake()
        return True

    def start(self, callback: InputCallback) -> None:
        """Connect, subscribe to the portal's signals and start the thread, which then binds the
        shortcuts (the desktop may ask the user first: see :meth:`wait_settled`). Raises
        RuntimeError when the portal cannot be used."""
        if self._thread is not None:
            raise RuntimeError("portal source already started")
        address, why = self._address()
        if address is None:
            raise RuntimeError(why)
        try:
            import jeepney  # noqa: F401
        except ImportError:
            raise RuntimeError("the 'jeepney' package is not installed") from None
        deadline = time.monotonic() + self._timeout
        try:
            link = _DBusLink.open(address, deadline)
        except (OSError, RuntimeError, ValueError, PortalCallError) as exc:
            raise RuntimeError(f"cannot connect to the D-Bus session bus: {exc}") from None
        try:
            self._prepare(link, deadline)
        except TimeoutError:
            link.close()
            raise RuntimeError(
                f"the desktop portal did not answer within {self._timeout:g} s"
            ) from None
        except PortalCallError as exc:
            link.close()
            raise RuntimeError(_portal_error_reason(exc)) from None
        except BaseException:
            link.close()
            raise
        self._stopping.clear()
        self._applied = -1
        self._callback = callback
        with self._lock:
            self._link = link
            self._settled.clear()  # a restart binds again: not settled until the desktop answers
        self._set_status(f"connected to the desktop portal (GlobalShortcuts v{self.version})")
        self._thread = threading.Thread(target=self._run, name="ptt-portal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the session, release the keys it held, close the connection and join the
        thread (within about ``timeout`` s). Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        if thread is threading.current_thread():  # from the callback: the thread ends by itself
            if self._link is not None:
                self._link.wake()
            return
        self._thread = None
        link = self._link
        if link is not None:
            link.wake()
        thread.join(self._timeout + 2.0)
        if thread.is_alive():  # pragma: no cover - every wait in the thread has a deadline
            log.warning("the portal thread did not end within %.1f s", self._timeout + 2.0)
        self.stopped_thread = thread
        with self._lock:
            self._link = None

    # -- the thread ---------------------------------------------------------------------------

    def _prepare(self, link: _DBusLink, deadline: float) -> None:
        """Register the app id, check the interface, find the portal's owner and subscribe to
        everything the portal can send us, before the first portal call."""
        from jeepney import DBusAddress, MatchRule, new_method_call
        from jeepney.bus_messages import message_bus

        if self._app_id:
            registry = DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS_NAME, interface=REGISTRY_IFACE)
            try:
                link.call(
                    new_method_call(registry, "Register", "sa{sv}", (self._app_id, {})), deadline
                )
            except (
                PortalCallError
            ) as exc:  # older portals have no registry: the app stays anonymous
                log.info("portal app registration as %r refused: %s", self._app_id, exc)
        self.version = _check_version(link, deadline)
        self._owner = str(link.call(message_bus.GetNameOwner(PORTAL_BUS_NAME), deadline).body[0])
        mine = sender_path_element(link.unique_name)
        rules = [
            MatchRule(type="signal", sender=PORTAL_BUS_NAME, interface=SHORTCUTS_IFACE),
            MatchRule(
                type="signal",
                sender=PORTAL_BUS_NAME,
                interface=REQUEST_IFACE,
                member="Response",
                path_namespace=f"{PORTAL_PATH}/request/{mine}",
            ),
            MatchRule(
                type="signal",
                sender=PORTAL_BUS_NAME,
                interface=SESSION_IFACE,
                member="Closed",
                path_namespace=f"{PORTAL_PATH}/session/{mine}",
            ),
        ]
        owner_rule = MatchRule(
            type="signal",
            sender="org.freedesktop.DBus",
            interface="org.freedesktop.DBus",
            member="NameOwnerChanged",
        )
        owner_rule.add_arg_condition(0, PORTAL_BUS_NAME)
        rules.append(owner_rule)
        for rule in rules:
            link.call(message_bus.AddMatch(rule), deadline)

    def _run(self) -> None:
        link = self._link
        assert link is not None
        try:
            while True:
                with self._lock:
                    generation, wanted = self._generation, self._wanted
                if generation != self._applied and self._owner:
                    self._apply(link, generation, wanted)
                    continue
                if self._configure.is_set():
                    self._configure.clear()
                    self._configure_now(link)
                message = self._receive(link, None)
                if message is not None:
                    self._dispatch(message)
        except _Stopped:
            pass
        except (OSError, TimeoutError) as exc:
            self._set_status(f"lost the connection to the desktop portal ({exc or 'closed'})")
            log.warning("portal connection lost: %s", exc or type(exc).__name__)
        except Exception:  # a bug: say so rather than die silently with keys held
            self._set_status("the desktop portal source failed (see the log)")
            log.exception("portal source thread failed")
        finally:
            self._end_session(link, "")
            link.close()

    def _receive(
        self, link: _DBusLink, deadline: float | None, *, interruptible: bool = True
    ) -> Any:
        """The next message, or None when woken for new bindings or a command. Raises
        :class:`_Stopped` when stopping, unless not ``interruptible`` (closing the session runs
        to its reply or its deadline)."""
        try:
            return link.receive(deadline)
        except _Woken:
            if interruptible and self._stopping.is_set():
                raise _Stopped from None
            return None

    def _call(self, link: _DBusLink, message: Any, *, interruptible: bool = True) -> Any:
        """A method call bounded by ``timeout``; other messages are dispatched meanwhile."""

        deadline = time.monotonic() + self._timeout
        serial = link.send(message)
        while True:
            reply = self._receive(link, deadline, interruptible=interruptible)
            if reply is None:
                continue
            if _answers(reply, serial):
                return reply
            self._dispatch(reply)

    def _set_status(self, text: str) -> None:
        with self._lock:
            self._status = text
        log.info("portal: %s", text)
        hook = self.on_status
        if hook is not None:
            try:
                hook(text)
            except Exception:
                log.exception("portal status hook failed")

    def _settle(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._settled.set()

    def _emit(self, transitions: list[tuple[str, bool]], at: float) -> None:
        callback = self._callback
        if callback is None:
            return
        for name, pressed in transitions:
            try:
                callback(InputEvent(name, pressed, at))
            except Exception:
                log.exception("push-to-talk callback failed for %s", name)

    def _end_session(self, link: _DBusLink, status: str) -> None:
        """Release what the session held and close it (best effort, bounded)."""
        self._emit(self._keys.release_all(), time.monotonic())
        session, self._session = self._session, None
        self._session_shortcuts = {}
        self.bound = {}
        if session is None:
            return
        from jeepney import DBusAddress, new_method_call

        target = DBusAddress(session, bus_name=PORTAL_BUS_NAME, interface=SESSION_IFACE)
        try:
            self._call(link, new_method_call(target, "Close"), interruptible=False)
        except (PortalCallError, TimeoutError, OSError) as exc:
            log.info("closing portal session %s: %s", session, exc)
        if status:
            self._set_status(status)

    def _await_response(
        self, link: _DBusLink, path: str, generation: int
    ) -> tuple[int, dict[str, object]] | None:
        """The Response of the request at ``path`` (however long the user takes), or None when
        newer bindings arrived first (the request is then closed)."""
        from jeepney import DBusAddress, MessageFlag, new_method_call

        while True:
            if path in self._responses:
                return self._responses.pop(path)
            with self._lock:
                current = self._generation
            if current != generation:
                target = DBusAddress(path, bus_name=PORTAL_BUS_NAME, interface=REQUEST_IFACE)
                close = new_method_call(target, "Close")
                close.header.flags |= MessageFlag.no_reply_expected
                link.send(close)
                return None
            message = self._receive(link, None)
            if message is not None:
                self._dispatch(message)

    def _apply(self, link: _DBusLink, generation: int, wanted: tuple[PortalShortcut, ...]) -> None:
        """Make the portal's session match ``wanted``: close the old session, create one, bind."""
        from jeepney import DBusAddress, new_method_call

        self._end_session(link, "")
        self._applied = generation
        self._responses.clear()
        if not wanted:
            self._set_status(
                f"connected to the desktop portal (GlobalShortcuts v{self.version}); "
                "no push-to-talk keys to bind"
            )
            self._settle(generation)
            return
        portal = DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS_NAME, interface=SHORTCUTS_IFACE)
        try:
            token = "voipclient_" + secrets.token_hex(8)
            options = {"handle_token": ("s", token), "session_handle_token": ("s", token)}
            path = self._request(
                link, new_method_call(portal, "CreateSession", "a{sv}", (options,)), token
            )
            answer = self._await_response(link, path, generation)
            if answer is None:
                return
            code, results = answer
            handle = _variant(results.get("session_handle"))
            if code != 0 or not isinstance(handle, str) or not handle:
                self._set_status(
                    "the desktop portal refused a global shortcuts session "
                    f"({response_reason(code)}): push-to-talk keys are not bound"
                )
                self._settle(generation)
                return
            self._session = handle
            self._session_shortcuts = {s.id: s for s in wanted}
            self._set_status(
                f"asking the desktop to bind {len(wanted)} shortcut(s); "
                "confirm them in its dialog if one opens"
            )
            shortcuts = [
                (
                    s.id,
                    {"description": ("s", s.description)}
                    | ({"preferred_trigger": ("s", s.trigger)} if s.trigger else {}),
                )
                for s in wanted
            ]
            token = "voipclient_" + secrets.token_hex(8)
            bind = new_method_call(
                portal,
                "BindShortcuts",
                "oa(sa{sv})sa{sv}",
                (handle, shortcuts, self._parent_window, {"handle_token": ("s", token)}),
            )
            path = self._request(link, bind, token)
            answer = self._await_response(link, path, generation)
            if answer is None:
                return
            code, results = answer
            if code != 0:
                self._end_session(link, "")
                self._set_status(
                    f"the desktop's shortcut dialog was {response_reason(code)}: push-to-talk "
                    "keys are not bound (change a binding or restart the app to be asked again)"
                )
                self._settle(generation)
                return
            if "shortcuts" in results:
                ours = self._session_shortcuts
                self.bound = {k: v for k, v in _parse_bound(results).items() if k in ours}
            else:  # a portal that does not list them: all bound, keys unknown
                self.bound = {s.id: "" for s in wanted}
            self._set_status(self._describe_bound(wanted))
            self._settle(generation)
        except PortalCallError as exc:
            self._end_session(link, "")
            self._set_status(f"the desktop portal refused the shortcuts: {exc}")
            self._settle(generation)
        except TimeoutError:
            self._end_session(link, "")
            self._set_status(f"the desktop portal did not answer within {self._timeout:g} s")
            self._settle(generation)

    def _request(self, link: _DBusLink, message: Any, token: str) -> str:
        """Make a portal call that answers with a Request; its path (the predictable one, whose
        Response we are subscribed to since start; an old portal's other path gets a rule now)."""
        from jeepney import MatchRule
        from jeepney.bus_messages import message_bus

        reply = self._call(link, message)
        path = str(reply.body[0])
        if path != request_path(link.unique_name, token):  # xdg-desktop-portal < 0.9
            rule = MatchRule(
                type="signal", sender=PORTAL_BUS_NAME, interface=REQUEST_IFACE, path=path
            )
            self._call(link, message_bus.AddMatch(rule))
        return path

    def _describe_bound(self, wanted: tuple[PortalShortcut, ...]) -> str:
        parts: list[str] = []
        missing: list[str] = []
        for s in wanted:
            if s.id in self.bound:
                trigger = self.bound[s.id] or (
                    f"{s.trigger} (suggested)" if s.trigger else "no key assigned yet"
                )
                parts.append(f"{s.description} = {trigger}")
            else:
                missing.append(s.description)
        text = f"desktop portal bound {len(parts)} of {len(wanted)} shortcut(s)"
        if parts:
            text += ": " + "; ".join(parts)
        if missing:
            text += " (not bound: " + "; ".join(missing) + ")"
        return text

    def _configure_now(self, link: _DBusLink) -> None:
        """Ask for the desktop's shortcut settings without waiting: xdg-desktop-portal replies
        only when its backend is done, which may be when the user closes the settings. The late
        reply is ignored by :meth:`_dispatch`; what the user changed arrives as
        ShortcutsChanged."""
        from jeepney import DBusAddress, new_method_call

        if self._session is None:
            return
        portal = DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS_NAME, interface=SHORTCUTS_IFACE)
        link.send(
            new_method_call(
                portal, "ConfigureShortcuts", "osa{sv}", (self._session, self._parent_window, {})
            )
        )

    def _dispatch(self, message: Any) -> None:
        """One message from the bus: shortcut signals, Responses, session and owner changes."""
        at = time.monotonic()
        from jeepney import HeaderFields, MessageType

        header = message.header
        if header.message_type != MessageType.signal:
            return
        fields = header.fields
        interface = fields.get(HeaderFields.interface)
        member = fields.get(HeaderFields.member)
        signature = fields.get(HeaderFields.signature, "")
        sender = fields.get(HeaderFields.sender)
        path = fields.get(HeaderFields.path, "")
        body = message.body
        if interface == "org.freedesktop.DBus" and member == "NameOwnerChanged":
            if sender == "org.freedesktop.DBus" and signature == "sss":
                self._owner_changed(body)
            return
        if sender != self._owner or not self._owner:
            return  # only the portal speaks for the portal
        if interface == SHORTCUTS_IFACE and member in ("Activated", "Deactivated"):
            if signature != "osta{sv}" or body[0] != self._session or self._session is None:
                return  # another session's (another app's, an old one of ours)
            sid = body[1]
            if member == "Activated":
                shortcut = self._session_shortcuts.get(sid)
                if shortcut is not None:
                    self._emit(self._keys.activate(sid, shortcut.chord), at)
            else:
                self._emit(self._keys.deactivate(sid), at)
        elif interface == REQUEST_IFACE and member == "Response":
            if signature == "ua{sv}":
                self._responses[path] = (int(body[0]), dict(body[1]))
        elif interface == SESSION_IFACE and member == "Closed":
            if path == self._session:
                self._emit(self._keys.release_all(), at)
                self._session = None
                self._session_shortcuts = {}
                self.bound = {}
                self._set_status(
                    "the desktop closed the global shortcuts session: push-to-talk keys are "
                    "not bound (change a binding or restart the app)"
                )
        elif (
            interface == SHORTCUTS_IFACE
            and member == "ShortcutsChanged"
            and signature == "oa(sa{sv})"
            and self._session
            and body[0] == self._session
        ):  # the user changed a key in the desktop's settings
            changed = _parse_bound({"shortcuts": body[1]})
            self.bound = {
                **self.bound,
                **{k: v for k, v in changed.items() if k in self._session_shortcuts},
            }
            self._set_status(self._describe_bound(tuple(self._session_shortcuts.values())))

    def _owner_changed(self, body: tuple[str, str, str]) -> None:
        name, _old, new = body
        if name != PORTAL_BUS_NAME:
            return
        if self._owner:  # the portal went away (crash, restart): its session went with it
            self._emit(self._keys.release_all(), time.monotonic())
            self._session = None
            self._session_shortcuts = {}
            self.bound = {}
        self._owner = new
        if new:
            self._applied = -1  # a new portal: bind again in a new session
            self._set_status("the desktop portal restarted; binding the shortcuts again")
        else:
            self._set_status("the desktop portal went away: push-to-talk keys are not bound")
