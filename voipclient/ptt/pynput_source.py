"""Global hotkeys through pynput: keyboard and mouse listeners (X11, Windows, macOS).

pynput is imported inside :meth:`PynputSource.available` / :meth:`PynputSource.start` only:
without ``DISPLAY`` even ``import pynput`` raises ImportError on Linux. The listeners run on
pynput's own threads and call the callback there; the timestamp is ``time.monotonic()`` taken at
the top of pynput's callback.

Normalization (pure functions, tested without pynput): pynput ``Key`` members by name (``cmd`` →
``super``), ``KeyCode`` by character (lower case; shifted US punctuation back to its key, control
characters from Ctrl+letter back to the letter) or by virtual key (X11 keysyms and Windows VK
codes for the keypad, letters, digits, F13..F24 and XF86Tools → ``f13``); mouse ``Button``
``left/right/middle``, ``x1/x2`` (Windows) and ``button8/button9`` (X11) → ``mouse4/mouse5``.
Scroll "buttons" are not buttons and are dropped.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from voipclient.ptt.sources import InputCallback, InputEvent

__all__ = ["PynputSource", "button_name", "key_name"]

_KEY_RENAMES = {
    "cmd": "super",
    "cmd_l": "super_l",
    "cmd_r": "super_r",
    "media_volume_up": "volume_up",
    "media_volume_down": "volume_down",
    "media_volume_mute": "volume_mute",
}

_CHAR_NAMES = {
    " ": "space",
    "`": "grave",
    "-": "minus",
    "=": "equal",
    "[": "bracket_left",
    "]": "bracket_right",
    "\\": "backslash",
    ";": "semicolon",
    "'": "apostrophe",
    ",": "comma",
    ".": "period",
    "/": "slash",
    "<": "less",
    # shifted US layout characters → the key that makes them
    "~": "grave",
    "!": "1",
    "@": "2",
    "#": "3",
    "$": "4",
    "%": "5",
    "^": "6",
    "&": "7",
    "*": "8",
    "(": "9",
    ")": "0",
    "_": "minus",
    "+": "equal",
    "{": "bracket_left",
    "}": "bracket_right",
    "|": "backslash",
    ":": "semicolon",
    '"': "apostrophe",
    ">": "less",
    "?": "slash",
}

# X11 keysyms (KeyCode.vk on the xorg backend).
_X11_VK = {
    **{0xFFB0 + i: f"kp_{i}" for i in range(10)},
    0xFFAB: "kp_add",
    0xFFAD: "kp_subtract",
    0xFFAA: "kp_multiply",
    0xFFAF: "kp_divide",
    0xFFAE: "kp_decimal",
    0xFF8D: "kp_enter",
    **{0xFFBE + i: f"f{i + 1}" for i in range(24)},  # XK_F1 .. XK_F24
    0x1008FF81: "f13",  # XF86Tools: what real keyboards send for F13
}

# Windows virtual-key codes.
_WIN_VK = {
    **{0x60 + i: f"kp_{i}" for i in range(10)},
    0x6B: "kp_add",
    0x6D: "kp_subtract",
    0x6A: "kp_multiply",
    0x6F: "kp_divide",
    0x6E: "kp_decimal",
    **{0x70 + i: f"f{i + 1}" for i in range(24)},  # VK_F1 .. VK_F24
    **{0x41 + i: chr(ord("a") + i) for i in range(26)},
    **{0x30 + i: str(i) for i in range(10)},
}


def key_name(key: Any, platform: str = sys.platform) -> str:
    """The normalized name of a pynput ``Key`` or ``KeyCode`` (duck-typed, no pynput import)."""
    enum_name = getattr(key, "name", None)
    if isinstance(enum_name, str) and not hasattr(key, "char"):
        return _KEY_RENAMES.get(enum_name, enum_name)
    vk = getattr(key, "vk", None)
    char = getattr(key, "char", None)
    table = _WIN_VK if platform == "win32" else _X11_VK
    # The keypad first: with Num Lock its char is a digit, but it is not the digit key.
    if isinstance(vk, int) and vk in table:
        return table[vk]
    if isinstance(char, str) and len(char) == 1:
        if ord(char) < 32 and 1 <= ord(char) <= 26:  # Ctrl+letter on some platforms
            return chr(ord(char) + 96)
        lower = char.lower()
        if "a" <= lower <= "z" or "0" <= lower <= "9":
            return lower
        if char in _CHAR_NAMES:
            return _CHAR_NAMES[char]
    if isinstance(vk, int):
        return f"key_{vk:#x}"
    return f"key_{char!r}" if char else "key_unknown"


def button_name(button: Any) -> str | None:
    """The normalized name of a pynput mouse ``Button``; None for scroll "buttons"."""
    name = getattr(button, "name", None)
    if not isinstance(name, str):
        return "mouse_unknown"
    if name in ("left", "right", "middle"):
        return f"mouse_{name}"
    if name in ("x1", "x2"):
        return f"mouse{3 + int(name[1])}"
    if name.startswith("scroll_"):
        return None
    if name.startswith("button") and name[6:].isdigit():
        number = int(name[6:])  # X11 button numbers: 8 = back, 9 = forward
        return f"mouse{number - 4}" if number >= 8 else None
    return "mouse_unknown"


class PynputSource:
    """Keyboard + mouse listeners. ``keyboard`` / ``mouse`` switch either off."""

    name = "pynput"

    def __init__(self, *, keyboard: bool = True, mouse: bool = True) -> None:
        self._want_keyboard = keyboard
        self._want_mouse = mouse
        self._listeners: list[Any] = []
        self.stopped_listeners: list[Any] = []

    def available(self) -> tuple[bool, str]:
        wayland = False
        if sys.platform.startswith("linux"):
            wayland = bool(
                os.environ.get("XDG_SESSION_TYPE") == "wayland" or os.environ.get("WAYLAND_DISPLAY")
            )
            if not os.environ.get("DISPLAY"):
                if wayland:
                    return False, "Wayland session without XWayland (DISPLAY is not set)"
                return False, "no X display (DISPLAY is not set)"
        try:
            import pynput  # noqa: F401
        except ImportError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return False, f"pynput cannot load: {first}"
        if wayland:
            # XWayland's X server sees the keys its own windows get: a game under Wine or
            # Proton is one, a native Wayland window (the desktop, a browser) is not
            return True, "through XWayland: keys pressed in XWayland windows only (most games)"
        return True, "global hotkeys through pynput"

    def start(self, callback: InputCallback) -> None:
        if self._listeners:
            raise RuntimeError("pynput source already started")
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(reason)
        from pynput import keyboard, mouse

        def on_press(key: Any) -> None:
            at = time.monotonic()
            if key is not None:
                callback(InputEvent(key_name(key), True, at))

        def on_release(key: Any) -> None:
            at = time.monotonic()
            if key is not None:
                callback(InputEvent(key_name(key), False, at))

        def on_click(_x: int, _y: int, button: Any, pressed: bool) -> None:
            at = time.monotonic()
            name = button_name(button)
            if name is not None:
                callback(InputEvent(name, pressed, at))

        try:
            if self._want_keyboard:
                kl = keyboard.Listener(on_press=on_press, on_release=on_release)
                kl.daemon = True
                self._listeners.append(kl)
                kl.start()
            if self._want_mouse:
                ml = mouse.Listener(on_click=on_click)
                ml.daemon = True
                self._listeners.append(ml)
                ml.start()
            for listener in self._listeners:
                listener.wait()
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both listeners and join their threads (normally within milliseconds)."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.stop()
        _unblock_xrecord(listeners)
        for listener in listeners:
            if listener.is_alive():
                listener.join(5.0)
        self.stopped_listeners = listeners  # for tests: check that the threads are gone


def _unblock_xrecord(listeners: list[Any]) -> None:
    """Work around pynput's X11 stop (1.8.x): it sends ``record_disable_context`` on the connection
    that is blocked in ``record_enable_context`` and never flushes it, so the listener thread only
    ends at the next input event (seen: 6 s per listener, forever on an idle machine). Disabling
    the contexts from a connection of our own, synced, ends them at once."""
    contexts = [ctx for lst in listeners if (ctx := getattr(lst, "_context", None)) is not None]
    if not contexts or not sys.platform.startswith("linux"):
        return
    try:
        import Xlib.display

        display = Xlib.display.Display()
    except Exception:
        return
    try:
        for ctx in contexts:
            display.record_disable_context(ctx)
        display.sync()
    except Exception:  # noqa: S110 -- the context may already be gone
        pass
    finally:
        display.close()
