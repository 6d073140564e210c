"""Preferences survive a restart: one process saves every preference through the app's real
QSettings backend (INI file), a second, new process loads them and finds the same values.

Milestone 1 lost the nickname and "close to tray" this way: keys under ``general/`` are written
as ``[%General]`` and read back by a new process as ``General/...``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_SAVE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_prefs import full_prefs
    from voipclient.ui.prefs import save_preferences
    from voipclient.ui.settings import QSettingsBackend, use_settings_dir
    use_settings_dir(Path(sys.argv[1]))
    backend = QSettingsBackend()
    save_preferences(backend, full_prefs())
    backend.sync()
    """
)
_LOAD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_prefs import full_prefs
    from voipclient.ui.prefs import load_preferences
    from voipclient.ui.settings import QSettingsBackend, use_settings_dir
    use_settings_dir(Path(sys.argv[1]))
    prefs, problems = load_preferences(QSettingsBackend())
    assert problems == [], problems
    expected = full_prefs()
    for name in type(expected).__dataclass_fields__:
        if getattr(prefs, name) != getattr(expected, name):
            print("DIFFERS", name, getattr(prefs, name), getattr(expected, name))
    print("same" if prefs == expected else "different")
    """
)


def _run(script: str, settings: Path) -> str:
    unit_ui = Path(__file__).resolve().parents[2] / "unit" / "ui"
    result = subprocess.run(
        [sys.executable, "-c", script, str(settings), str(unit_ui)],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_every_preference_survives_a_restart(tmp_path: Path) -> None:
    _run(_SAVE, tmp_path)
    ini = next(tmp_path.rglob("*.ini")).read_text(encoding="utf-8")
    assert "%General" not in ini  # the group QSettings renames on the way back
    out = _run(_LOAD, tmp_path)
    assert out.strip().splitlines()[-1] == "same", out
