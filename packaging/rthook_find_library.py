"""PyInstaller runtime hook: ``ctypes.util.find_library`` looks inside the bundle first.

sounddevice (PortAudio) and opuslib-next (libopus) load their C libraries by name through
``ctypes.util.find_library``, which only searches the system. Inside a bundle that would pick the
machine's copy, or fail on a machine without one ("PortAudio library not found"). This hook makes
the bundled copies win; outside a bundle it changes nothing.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys

_BASE = getattr(sys, "_MEIPASS", None)
_system_find_library = ctypes.util.find_library


def _patterns(name: str) -> list[str]:
    if sys.platform == "win32":
        return [f"{name}.dll", f"lib{name}.dll", f"lib{name}-*.dll", f"lib{name}*.dll"]
    if sys.platform == "darwin":
        return [f"lib{name}.dylib", f"lib{name}.*.dylib"]
    return [f"lib{name}.so", f"lib{name}.so.*"]


def _bundled(name: str) -> str | None:
    if _BASE is None:
        return None
    for directory in (_BASE, *sorted(glob.glob(os.path.join(_BASE, "*")))):
        if not os.path.isdir(directory):
            continue
        for pattern in _patterns(name):
            found = sorted(glob.glob(os.path.join(directory, pattern)))
            if found:
                return found[0]
    return None


def find_library(name: str) -> str | None:
    return _bundled(name) or _system_find_library(name)


ctypes.util.find_library = find_library
