"""The adversarial tests reuse the real-server and desktop-app fixtures of the integration tests."""

from __future__ import annotations

from tests.integration.conftest import start_server
from tests.integration.ui.conftest import make_app

__all__ = ["make_app", "start_server"]
