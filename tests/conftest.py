"""Suite-wide fixtures.

Tests under ``tests/integration`` use the real parts `make test` starts (PulseAudio null
sinks, Xvfb, a Secret Service). Run outside that environment they fail with a message saying how
to run them; they never skip silently.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def real_env() -> None:
    """Require the environment started by ``scripts/with-test-env.sh`` (``make test``)."""
    if os.environ.get("VOIPCLIENT_TEST_ENV") != "1":
        pytest.fail(
            "this test needs the real audio device, X display and Secret Service that `make test` "
            "starts; run it with: scripts/with-test-env.sh .venv/bin/pytest ..."
        )
