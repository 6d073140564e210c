"""Linux evdev hotkeys: reads ``/dev/input/event*`` directly (works under Wayland).

Wayland compositors do not let clients see keys pressed in other windows, and pynput through
XWayland only sees keys typed into X11 windows. Reading the input devices works everywhere, but
needs read access to ``/dev/input/event*`` (usually membership in the ``input`` group, which also
lets the user's programs read every keystroke: the settings page says so).

Optional: the ``evdev`` package is imported inside :meth:`EvdevSource.available` /
:meth:`EvdevSource.start`; without it ``available()`` says how to get it. Devices are read, never
grabbed (other programs still get the keys). Devices plugged in after :meth:`EvdevSource.start`
are not seen until the source is restarted. Key repeat (value 2) is dropped.

Names follow the X11 numbering, so a binding works the same with either source: BTN_SIDE →
``mouse4``, BTN_EXTRA → ``mouse5``, BTN_FORWARD → ``mouse6``, BTN_BACK → ``mouse7``,
BTN_TASK → ``mouse8``.
"""

from __future__ import annotations

import glob
import os
import selectors
import string
import sys
import threading
import time
from typing import Any

from voipclient.ptt.sources import InputCallback, InputEvent

__all__ = ["EvdevSource", "evdev_key_name"]

_EVDEV_NAMES: dict[str, str] = {
    **{f"KEY_{c}": c.lower() for c in string.ascii_uppercase},
    **{f"KEY_{d}": d for d in string.digits},
    **{f"KEY_F{i}": f"f{i}" for i in range(1, 25)},
    **{f"KEY_KP{d}": f"kp_{d}" for d in string.digits},
    "KEY_KPPLUS": "kp_add",
    "KEY_KPMINUS": "kp_subtract",
    "KEY_KPASTERISK": "kp_multiply",
    "KEY_KPSLASH": "kp_divide",
    "KEY_KPDOT": "kp_decimal",
    "KEY_KPENTER": "kp_enter",
    "KEY_LEFTCTRL": "ctrl_l",
    "KEY_RIGHTCTRL": "ctrl_r",
    "KEY_LEFTSHIFT": "shift_l",
    "KEY_RIGHTSHIFT": "shift_r",
    "KEY_LEFTALT": "alt_l",
    "KEY_RIGHTALT": "alt_r",
    "KEY_LEFTMETA": "super_l",
    "KEY_RIGHTMETA": "super_r",
    "KEY_SPACE": "space",
    "KEY_ENTER": "enter",
    "KEY_TAB": "tab",
    "KEY_ESC": "esc",
    "KEY_BACKSPACE": "backspace",
    "KEY_DELETE": "delete",
    "KEY_INSERT": "insert",
    "KEY_HOME": "home",
    "KEY_END": "end",
    "KEY_PAGEUP": "page_up",
    "KEY_PAGEDOWN": "page_down",
    "KEY_UP": "up",
    "KEY_DOWN": "down",
    "KEY_LEFT": "left",
    "KEY_RIGHT": "right",
    "KEY_CAPSLOCK": "caps_lock",
    "KEY_NUMLOCK": "num_lock",
    "KEY_SCROLLLOCK": "scroll_lock",
    "KEY_SYSRQ": "print_screen",
    "KEY_PRINT": "print_screen",
    "KEY_PAUSE": "pause",
    "KEY_COMPOSE": "menu",
    "KEY_MENU": "menu",
    "KEY_GRAVE": "grave",
    "KEY_MINUS": "minus",
    "KEY_EQUAL": "equal",
    "KEY_LEFTBRACE": "bracket_left",
    "KEY_RIGHTBRACE": "bracket_right",
    "KEY_BACKSLASH": "backslash",
    "KEY_SEMICOLON": "semicolon",
    "KEY_APOSTROPHE": "apostrophe",
    "KEY_COMMA": "comma",
    "KEY_DOT": "period",
    "KEY_SLASH": "slash",
    "KEY_102ND": "less",
    "KEY_PLAYPAUSE": "media_play_pause",
    "KEY_NEXTSONG": "media_next",
    "KEY_PREVIOUSSONG": "media_previous",
    "KEY_STOPCD": "media_stop",
    "KEY_VOLUMEUP": "volume_up",
    "KEY_VOLUMEDOWN": "volume_down",
    "KEY_MUTE": "volume_mute",
    "BTN_LEFT": "mouse_left",
    "BTN_RIGHT": "mouse_right",
    "BTN_MIDDLE": "mouse_middle",
    "BTN_SIDE": "mouse4",
    "BTN_EXTRA": "mouse5",
    "BTN_FORWARD": "mouse6",
    "BTN_BACK": "mouse7",
    "BTN_TASK": "mouse8",
}

# Codes that make a device worth reading: any key of a keyboard or any mouse button.
_INTERESTING = frozenset(_EVDEV_NAMES)


def evdev_key_name(names: str | list[str] | tuple[str, ...], code: int = -1) -> str:
    """Normalized name from evdev's code name(s) (``ecodes.bytype[EV_KEY][code]`` is a name or a
    list of aliases such as ``["BTN_LEFT", "BTN_MOUSE"]``)."""
    for n in [names] if isinstance(names, str) else names:
        if n in _EVDEV_NAMES:
            return _EVDEV_NAMES[n]
    return f"key_evdev_{code}" if code >= 0 else "key_unknown"


class EvdevSource:
    """Reads every readable input device with keys or buttons, on one thread."""

    name = "evdev"

    def __init__(self, input_dir: str = "/dev/input") -> None:
        self._dir = input_dir
        self._thread: threading.Thread | None = None
        self._wake_w: int | None = None
        self._devices: list[Any] = []

    def _readable(self) -> tuple[list[str], str]:
        if not sys.platform.startswith("linux"):
            return [], "evdev exists on Linux only"
        if not os.path.isdir(self._dir):
            return [], f"{self._dir} does not exist"
        paths = sorted(glob.glob(os.path.join(self._dir, "event*")))
        if not paths:
            return [], f"no input devices in {self._dir}"
        readable = [p for p in paths if os.access(p, os.R_OK)]
        if not readable:
            return [], (
                f"no permission to read {self._dir}/event* (add the user to the 'input' group; "
                "note this lets programs read every keystroke)"
            )
        return readable, ""

    def available(self) -> tuple[bool, str]:
        paths, why = self._readable()
        if not paths:
            return False, why
        try:
            import evdev  # noqa: F401
        except ImportError:
            return False, "the optional 'evdev' package is not installed (pip install evdev)"
        return True, f"global hotkeys from {len(paths)} readable input device(s)"

    def _open_devices(self, paths: list[str]) -> list[Any]:
        import evdev

        key_type = evdev.ecodes.EV_KEY
        names_by_code = evdev.ecodes.bytype[key_type]
        devices: list[Any] = []
        for path in paths:
            try:
                device = evdev.InputDevice(path)
            except OSError:
                continue
            codes = device.capabilities().get(key_type, [])
            if any(
                evdev_key_name(names_by_code.get(c, ""), c) in _EVDEV_NAMES.values() for c in codes
            ):
                devices.append(device)
            else:
                device.close()
        return devices

    def start(self, callback: InputCallback) -> None:
        if self._thread is not None:
            raise RuntimeError("evdev source already started")
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(reason)
        import evdev

        paths, _ = self._readable()
        self._devices = self._open_devices(paths)
        if not self._devices:
            raise RuntimeError("no readable input device has keys or mouse buttons")
        key_type = evdev.ecodes.EV_KEY
        names_by_code = evdev.ecodes.bytype[key_type]
        wake_r, wake_w = os.pipe()
        self._wake_w = wake_w
        devices = list(self._devices)

        def run() -> None:
            with selectors.DefaultSelector() as sel:
                sel.register(wake_r, selectors.EVENT_READ, None)
                for device in devices:
                    sel.register(device.fd, selectors.EVENT_READ, device)
                while True:
                    for key, _ in sel.select():
                        device = key.data
                        if device is None:
                            os.close(wake_r)
                            return
                        try:
                            events = list(device.read())
                        except OSError:  # unplugged
                            sel.unregister(device.fd)
                            continue
                        at = time.monotonic()
                        for ev in events:
                            if ev.type != key_type or ev.value == 2:
                                continue
                            name = evdev_key_name(names_by_code.get(ev.code, ""), ev.code)
                            callback(InputEvent(name, ev.value == 1, at))

        self._thread = threading.Thread(target=run, name="ptt-evdev", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
            if thread is not None:
                thread.join(5.0)
            os.close(self._wake_w)
            self._wake_w = None
        for device in self._devices:
            device.close()
        self._devices = []
