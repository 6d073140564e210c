"""Hotkey sources: one Protocol, one module per backend, and a fake for tests.

Backends (each imports its platform library lazily, inside ``available``/``start``):

* :mod:`voipclient.ptt.pynput_source` - global keyboard and mouse hooks (X11, Windows, macOS;
  on Wayland through XWayland, where it sees keys pressed in XWayland windows only);
* :mod:`voipclient.ptt.portal_source` - the XDG desktop portal's GlobalShortcuts (Wayland: KDE
  Plasma 5.27+, GNOME 48+, Hyprland), keys in every window without reading the keyboard;
* :mod:`voipclient.ptt.evdev_source` - Linux ``/dev/input`` (needs the ``input`` group);
* :mod:`voipclient.ptt.qt_shortcuts` - in-window only, the fallback when no global hook works.

Which is tried first depends on the session (:func:`source_order`): on X11 (and Windows,
macOS) pynput sees every key; on Wayland the portal does, evdev too where it may read the
devices, and pynput through XWayland only while an XWayland window (most games under Wine and
Proton) has focus, so it comes after them.

A source reports :class:`InputEvent` values (normalized names from :mod:`voipclient.ptt.keys`,
a ``time.monotonic()`` timestamp taken when the backend delivered the event) to one callback,
on the source's own thread (the Qt source: on the GUI thread). The callback must be quick: it
takes the router's lock and returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "FakeSource",
    "HotkeySource",
    "InputCallback",
    "InputEvent",
    "choose_source",
    "session_kind",
    "source_order",
]


@dataclass(frozen=True, slots=True)
class InputEvent:
    """One key or mouse button going down or up."""

    #: Normalized input name (``"f13"``, ``"ctrl_l"``, ``"mouse4"``); keys outside the vocabulary
    #: arrive as ``"key_0x…"`` / ``"mouse_unknown"`` and match no binding.
    name: str
    #: True for down, False for up.
    pressed: bool
    #: ``time.monotonic()`` (s) when the backend delivered the event to us.
    at: float


InputCallback = Callable[[InputEvent], None]


@runtime_checkable
class HotkeySource(Protocol):
    """A backend that reports key and button presses."""

    #: Short name for logs and the settings page ("pynput", "evdev", "qt").
    name: str

    def available(self) -> tuple[bool, str]:
        """Whether :meth:`start` can work here, and why not (or a short description if it can)."""
        ...

    def start(self, callback: InputCallback) -> None:
        """Begin reporting to ``callback``; returns once the hooks are live. Raises
        ``RuntimeError`` with the reason when the backend cannot start."""
        ...

    def stop(self) -> None:
        """Stop reporting and join the backend's threads. Idempotent."""
        ...


class FakeSource:
    """A source driven by the test: ``emit("f13", True, at)``."""

    name = "fake"

    def __init__(self, *, ok: bool = True, reason: str = "fake source") -> None:
        self._ok = ok
        self._reason = reason
        self._callback: InputCallback | None = None
        self.started = 0
        self.stopped = 0

    def available(self) -> tuple[bool, str]:
        return self._ok, self._reason

    def start(self, callback: InputCallback) -> None:
        if not self._ok:
            raise RuntimeError(self._reason)
        self._callback = callback
        self.started += 1

    def stop(self) -> None:
        self._callback = None
        self.stopped += 1

    def emit(self, name: str, pressed: bool, at: float) -> None:
        if self._callback is not None:
            self._callback(InputEvent(name, pressed, at))


def choose_source(
    candidates: Iterable[HotkeySource],
) -> tuple[HotkeySource | None, list[tuple[str, str]]]:
    """The first available source, and ``(name, reason)`` of each one skipped before it.

    The UI shows the reasons next to the in-window fallback ("global hotkeys unavailable: ...").
    """
    skipped: list[tuple[str, str]] = []
    for source in candidates:
        ok, reason = source.available()
        if ok:
            return source, skipped
        skipped.append((source.name, reason))
    return None, skipped


def session_kind(environ: Mapping[str, str], platform: str) -> str:
    """``"wayland"``, ``"x11"``, ``"headless"`` (Linux without a display) or ``"other"``."""
    if not platform.startswith("linux"):
        return "other"
    if environ.get("XDG_SESSION_TYPE") == "wayland" or environ.get("WAYLAND_DISPLAY"):
        return "wayland"
    if environ.get("DISPLAY"):
        return "x11"
    return "headless"


def source_order(kind: str) -> tuple[str, ...]:
    """The hotkey sources to try, best first, for a :func:`session_kind` (the in-window
    ``qt`` source last: it is always there while the window is)."""
    if kind == "wayland":
        return ("portal", "evdev", "pynput", "qt")
    if kind in ("x11", "headless"):
        return ("pynput", "portal", "evdev", "qt")
    return ("pynput", "qt")
