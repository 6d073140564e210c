"""Normalized input names: the one vocabulary shared by bindings and every hotkey source.

A name is lower case ASCII. Keys: ``a``..``z``, ``0``..``9``, ``f1``..``f24``, the modifiers with
and without a side (``ctrl`` / ``ctrl_l`` / ``ctrl_r``, ``shift``, ``alt``, ``alt_gr``,
``super``), navigation and editing keys, punctuation by name (``minus``, ``comma``, ...), the
keypad (``kp_0``..``kp_9``, ``kp_add``, ...) and media keys. Mouse buttons: ``mouse_left``,
``mouse_right``, ``mouse_middle``, and the side buttons ``mouse4`` (back) and ``mouse5``
(forward), then ``mouse6``..``mouse20`` for gaming mice with more buttons.

Sources report the most precise name they know (``ctrl_l`` rather than ``ctrl``). A binding that
says ``ctrl`` matches either side (:data:`SIDES`); a binding that says ``ctrl_l`` needs the left
key. :func:`parse_chord` accepts aliases people type (``control``, ``escape``, ``win``,
``mouse_back``, ``xf86tools`` ...) and returns canonical names only.

Pure: no platform imports.
"""

from __future__ import annotations

import string

__all__ = [
    "ALIASES",
    "KEY_NAMES",
    "SIDES",
    "UnknownInputName",
    "canonical_input",
    "parse_chord",
]

_MODIFIERS = ("ctrl", "shift", "alt", "super")

#: A side-less modifier name → the sided names that satisfy it in a binding.
SIDES: dict[str, frozenset[str]] = {m: frozenset({m, f"{m}_l", f"{m}_r"}) for m in _MODIFIERS}

_NAMED_KEYS = (
    # editing and navigation
    "space", "enter", "tab", "esc", "backspace", "delete", "insert", "home", "end",
    "page_up", "page_down", "up", "down", "left", "right",
    # locks and system keys
    "caps_lock", "num_lock", "scroll_lock", "print_screen", "pause", "menu", "alt_gr",
    # punctuation (US layout positions; shifted characters map back to these)
    "grave", "minus", "equal", "bracket_left", "bracket_right", "backslash", "semicolon",
    "apostrophe", "comma", "period", "slash", "less",
    # keypad
    *(f"kp_{i}" for i in range(10)),
    "kp_add", "kp_subtract", "kp_multiply", "kp_divide", "kp_decimal", "kp_enter",
    # media
    "media_play_pause", "media_next", "media_previous", "media_stop", "volume_up",
    "volume_down", "volume_mute",
)  # fmt: skip

_MOUSE = ("mouse_left", "mouse_right", "mouse_middle", *(f"mouse{i}" for i in range(4, 21)))

#: Every canonical input name.
KEY_NAMES: frozenset[str] = frozenset(
    (
        *string.ascii_lowercase,
        *string.digits,
        *(f"f{i}" for i in range(1, 25)),
        *(name for group in SIDES.values() for name in group),
        *_NAMED_KEYS,
        *_MOUSE,
    )
)

#: What people type (or what some platform calls a key) → the canonical name.
ALIASES: dict[str, str] = {
    "control": "ctrl",
    "control_l": "ctrl_l",
    "control_r": "ctrl_r",
    "lctrl": "ctrl_l",
    "rctrl": "ctrl_r",
    "lshift": "shift_l",
    "rshift": "shift_r",
    "lalt": "alt_l",
    "ralt": "alt_r",
    "option": "alt",
    "altgr": "alt_gr",
    "win": "super",
    "windows": "super",
    "cmd": "super",
    "command": "super",
    "meta": "super",
    "cmd_l": "super_l",
    "cmd_r": "super_r",
    "escape": "esc",
    "return": "enter",
    "del": "delete",
    "ins": "insert",
    "pgup": "page_up",
    "pageup": "page_up",
    "pgdn": "page_down",
    "pagedown": "page_down",
    "printscreen": "print_screen",
    "print": "print_screen",
    "capslock": "caps_lock",
    "backquote": "grave",
    "plus": "equal",
    "xf86tools": "f13",  # real keyboards send XF86Tools for F13 on X11
    "mouse1": "mouse_left",
    "mouse2": "mouse_right",
    "mouse3": "mouse_middle",
    "middle": "mouse_middle",
    "mouse_back": "mouse4",
    "mouse_forward": "mouse5",
    "xbutton1": "mouse4",
    "xbutton2": "mouse5",
    "x1": "mouse4",
    "x2": "mouse5",
}


class UnknownInputName(ValueError):
    """A name that is neither a canonical input name nor an alias of one."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown key or button name {name!r}")
        self.name = name


def canonical_input(name: str) -> str:
    """The canonical form of one input name (case and surrounding spaces ignored)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in KEY_NAMES:
        raise UnknownInputName(name.strip())
    return key


def parse_chord(chord: str | list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    """``"Ctrl+Shift+T"`` (or a sequence of names) → ``frozenset({"ctrl", "shift", "t"})``.

    Order does not matter. An empty chord, or a name listed twice, is an error (ValueError).
    """
    parts = [p for p in chord.split("+")] if isinstance(chord, str) else list(chord)
    if not parts or any(not p.strip() for p in parts):
        raise ValueError(f"empty key name in chord {chord!r}")
    names = [canonical_input(p) for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"a key is listed twice in chord {chord!r}")
    return frozenset(names)
