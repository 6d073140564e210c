"""Suite-wide fixtures.

Tests under ``tests/integration`` use the real parts `make test` starts (PulseAudio null
sinks, Xvfb, a Secret Service). Run outside that environment they fail with a message saying how
to run them; they never skip silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def real_env() -> None:
    """Require the environment started by ``scripts/with-test-env.sh`` (``make test``)."""
    if os.environ.get("VOIPCLIENT_TEST_ENV") != "1":
        pytest.fail(
            "this test needs the real audio device, X display and Secret Service that `make test` "
            "starts; run it with: scripts/with-test-env.sh .venv/bin/pytest ..."
        )


@pytest.fixture(autouse=True)
def private_control_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every app a test starts listens for ``voipclient ptt`` on a socket of its own test, never
    on the user's (a short path: Unix socket paths are limited to about 100 bytes)."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="vcptt-")
    monkeypatch.setenv("VOIPCLIENT_PTT_SOCKET", os.path.join(folder, "ptt.sock"))
    monkeypatch.setenv("VOIPCLIENT_PTT_TOKEN_FILE", os.path.join(folder, "ptt-control.txt"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
