"""A server never reached fails at once with the reason and what to check (no endless
"Reconnecting (attempt 7)"), and Disconnect is there while connecting and cancels retrying."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from voipclient.ui.prefs import Bookmark

from .conftest import AppFactory

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts and then says nothing (a TLS handshake that never ends)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    yield int(srv.getsockname()[1])
    srv.close()


def test_a_wrong_port_fails_at_once_with_what_to_check(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("typo")
    port = _closed_port()
    app.connect_to(Bookmark("typo", "127.0.0.1", port))
    qtbot.waitUntil(lambda: app.controller.state == "unreachable", timeout=10_000)
    text = app.window.banner.text()
    assert text.startswith("Could not connect to typo:") and "refused" in text.lower()
    assert f"Nothing is listening on port {port} of 127.0.0.1" in text
    assert "Reconnecting" not in text
    assert app.window.state_label.text() == "Could not connect"
    assert not app.window.disconnect_action.isEnabled()  # nothing left to cancel


def test_an_unknown_host_name_says_so(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("dns")
    app.connect_to(Bookmark("dns", "no-such-host.invalid", 64738))
    qtbot.waitUntil(lambda: app.controller.state == "unreachable", timeout=20_000)
    assert "No computer is called no-such-host.invalid" in app.window.banner.text()


def test_disconnect_is_available_while_connecting_and_stops_it(
    qtbot: Any, make_app: AppFactory, silent_listener: int
) -> None:
    app = make_app("impatient")
    app.connect_to(Bookmark("slow", "127.0.0.1", silent_listener))
    qtbot.waitUntil(lambda: app.controller.state == "connecting", timeout=10_000)
    action = app.window.disconnect_action
    assert action.isEnabled()
    action.trigger()
    qtbot.waitUntil(lambda: app.controller.state == "closed", timeout=10_000)
    assert not action.isEnabled()
