"""The pure core imports and works with PySide6, sounddevice and pynput made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCKED = ("PySide6", "sounddevice", "pynput", "shiboken6", "opuslib_next", "opuslib")

SCRIPT = textwrap.dedent(
    f"""
    import importlib, pkgutil, sys

    BLOCKED = {BLOCKED!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{{name}} was importable")

    import voipclient.crypto, voipclient.net
    names = [
        "voipclient.errors",
        "voipclient.selfcheck",
        "voipclient.audio.jitter",
        "voipclient.audio.mixer",
        "voipclient.audio.payload",
        "voipclient.audio.ring",
        "voipclient.audio.engine",
        "voipclient.audio.file_engine",
        "voipclient.audio.redundancy",
        "voipclient.audio.voice",
        "voipclient.audio.workers",
        "voipclient.audio.dsp",
        "voipclient.audio.cues",
        "voipclient.server.relay",
        "voipclient.ptt.keys",
        "voipclient.ptt.events",
        "voipclient.ptt.router",
        "voipclient.ptt.sources",
        "voipclient.ptt.service",
        "voipclient.ptt.control",
        "voipclient.ui.mentions",
        "voipclient.ui.model",
        "voipclient.ui.prefs",
    ]
    for pkg in (voipclient.crypto, voipclient.net):
        # every module but the Qt adapters, which are named qt_*
        names += [
            m.name
            for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")
            if not m.name.rsplit(".", 1)[1].startswith("qt_")
        ]
    for name in names:
        importlib.import_module(name)
    from voipclient import selfcheck
    assert selfcheck.run(lambda line: None, selfcheck.CORE_CHECKS), "self-check failed"
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print(len(names))
    """
)


@pytest.mark.timeout(60)
def test_pure_core_needs_no_qt_audio_or_hotkeys() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert int(result.stdout.strip()) >= 20  # every module of crypto/ and net/ was imported
