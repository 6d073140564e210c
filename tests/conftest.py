"""Suite-wide fixtures.

Tests under ``tests/integration`` use the real parts `make test` starts (PulseAudio null
sinks, Xvfb, a Secret Service). Run outside that environment they fail with a message saying how
to run them; they never skip silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# As the app does (voipclient/__init__.py), before a plugin may load numpy: one OpenBLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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


# --- qtbot.wait without a connection per call ----------------------------------------------------
#
# pytest-qt's ``qtbot.wait(ms)`` (and so ``waitUntil``, which waits 10 ms per poll) builds a
# QTimer and a QEventLoop, connects them, and disconnects them when they are collected: a
# disconnect on the GUI thread every 10 ms of every UI test. PySide 6.11 calls back into Python
# (``disconnectNotify``) from inside ``QObject::disconnect`` with Qt's signal lock held, and its
# ``connect`` on another thread holds the GIL while it waits for that lock: when the app's
# connection thread connects a new socket's signal at that moment (it does, at every login), the
# two threads deadlock and no test timeout can fire (seen once in a fresh-clone run, with both
# stacks: the GUI thread in ``PyGILState_Ensure`` under ``QObject::disconnect``, the connection
# thread in ``QBasicMutex::lockInternal`` under ``QObject::connectImpl``). One loop and one
# timer, connected once for the session, remove the test harness's side of it.
_original_wait = None
_waiter: object | None = None


def _install_reused_wait() -> None:
    global _original_wait
    try:
        from pytestqt.qtbot import QtBot
    except ImportError:  # pragma: no cover - pytest-qt is a test dependency
        return
    if _original_wait is not None:
        return
    _original_wait = QtBot.wait

    def wait(self: object, ms: int) -> None:
        global _waiter
        from PySide6.QtCore import QCoreApplication, QEventLoop, QThread, QTimer

        app = QCoreApplication.instance()
        if app is None or QThread.currentThread() is not app.thread():
            _original_wait(self, ms)  # type: ignore[misc]
            return
        if _waiter is None:
            loop, timer = QEventLoop(), QTimer()
            timer.setSingleShot(True)
            timer.timeout.connect(loop.quit)
            _waiter = [loop, timer, False]
        state = _waiter
        assert isinstance(state, list)
        loop, timer, busy = state
        if busy:  # a wait inside a wait (a slot that waits): the original, nested
            _original_wait(self, ms)  # type: ignore[misc]
            return
        state[2] = True
        try:
            timer.start(max(0, int(ms)))
            loop.exec()
        finally:
            timer.stop()
            state[2] = False

    QtBot.wait = wait  # type: ignore[method-assign]


_install_reused_wait()
