"""UI tests: a real X display (Xvfb from ``make test``) and QSettings kept in a temporary
directory, so no test reads or writes the user's real preferences."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from voipclient.ui.settings import use_settings_dir


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qsettings"
    path.mkdir()
    use_settings_dir(path)
    yield path
