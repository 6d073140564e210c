"""The identity key is opened off the GUI thread: Disconnect (or a newer connect) while it is
still being opened cancels that connection, and two look-ups never run at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication

from voipclient.ui import controller as controller_module
from voipclient.ui.prefs import Bookmark

from ..conftest import Starter
from .conftest import AppFactory

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


def test_disconnect_while_the_key_is_opened_cancels_the_connection(
    qtbot: Any, make_app: AppFactory, start_server: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server()
    app = make_app("alice")
    ctl = app.controller
    release = threading.Event()
    running: list[int] = []
    at_once: list[int] = []
    real = controller_module.open_identity

    def slow_open_identity(*args: Any, **kwargs: Any) -> Any:
        running.append(1)
        at_once.append(len(running))
        release.wait(10)  # a slow keyring, or a passphrase being typed
        try:
            return real(*args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(controller_module, "open_identity", slow_open_identity)
    answers: list[int] = []  # the identity answers that reached the GUI thread
    ctl._identity_opened.connect(lambda attempt, _result: answers.append(attempt))
    app.connect_to(Bookmark("test", server.host, server.port), pin=server.pin)
    qtbot.waitUntil(lambda: bool(at_once), timeout=5_000)  # the look-up is under way
    ctl.disconnect_server()  # the user changed their mind
    app.connect_to(Bookmark("test", server.host, server.port), pin=server.pin)  # and back
    ctl.disconnect_server()  # and not after all
    release.set()
    # The first look-up ends and its answer reaches the GUI, which drops it; the second one,
    # superseded while it waited its turn, gives none. No connection was started.
    qtbot.waitUntil(
        lambda: not any(t.name == "identity" for t in threading.enumerate()), timeout=10_000
    )
    QCoreApplication.processEvents()  # whatever they emitted has been delivered
    assert len(answers) == 1
    assert ctl.conn is None and ctl.state != "ready"
    assert max(at_once) == 1  # never two look-ups at once
    app.connect_to(Bookmark("test", server.host, server.port), pin=server.pin)
    qtbot.waitUntil(lambda: ctl.state == "ready", timeout=15_000)  # a real connect still works
    assert len(answers) == 2
