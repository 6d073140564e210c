"""Crash and hang evidence: the rotating log, the exception hooks, the hang watchdog,
faulthandler dumps of a process that dies in C, and the redaction of key-shaped text."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voipclient import diagnostics
from voipclient.diagnostics import Diagnostics, install, redact

pytestmark = pytest.mark.timeout(60)


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def diag(tmp_path: Path) -> Iterator[Diagnostics]:
    assert diagnostics.installed() is None
    d = install(tmp_path / "logs", hang_after=0.3)
    try:
        yield d
    finally:
        d.close()
    assert diagnostics.installed() is None


def logged(d: Diagnostics) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return d.log_file.read_text("utf-8")


def test_the_log_is_private_and_install_is_once_per_process(diag: Diagnostics) -> None:
    assert diag.log_dir.stat().st_mode & 0o777 == 0o700
    assert install(diag.log_dir.parent / "elsewhere") is diag
    logging.getLogger("voipclient.test").info("hello from the test")
    assert "voipclient.test INFO hello from the test" in logged(diag)


def test_an_exception_in_a_thread_is_logged_with_its_traceback(
    diag: Diagnostics, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_on: list[object] = []
    monkeypatch.setitem(diag._previous, "threading", handed_on.append)

    def boom() -> None:
        raise RuntimeError("the capture thread fell over")

    worker = threading.Thread(target=boom, name="capture")
    worker.start()
    worker.join()
    text = logged(diag)
    assert "unhandled exception in thread 'capture'" in text
    assert "RuntimeError: the capture thread fell over" in text and "in boom" in text
    assert diag.unhandled == 1 and len(handed_on) == 1  # and still handed on
    assert any("the capture thread" in line or "capture" in line for line in diag.last_errors())


def test_an_exception_in_a_slot_goes_through_excepthook(
    diag: Diagnostics, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_on: list[object] = []
    monkeypatch.setitem(diag._previous, "excepthook", lambda *a: handed_on.append(a))
    try:
        raise ValueError("a slot raised")
    except ValueError:
        sys.excepthook(*sys.exc_info())  # what PySide6 does with an exception out of a slot
    assert "ValueError: a slot raised" in logged(diag)
    assert diag.unhandled == 1 and len(handed_on) == 1


def test_a_stalled_gui_thread_leaves_every_stack_in_the_log(diag: Diagnostics) -> None:
    diag.heartbeat()
    wait_for(lambda: diag.hangs == 1)  # nobody beats: 0.3 s later the watchdog reports
    text = logged(diag)  # counted only once written
    assert "the window has not responded" in text
    assert "--- thread 'MainThread'" in text and "wait_for" in text  # where it was stuck
    diag.heartbeat()
    wait_for(lambda: "the window responds again" in logged(diag))
    assert diag.hangs == 1  # one stall, one report


def test_key_shaped_text_is_masked_but_pins_stay_readable(diag: Diagnostics) -> None:
    key = "ab" * 32
    b64 = base64.b64encode(bytes(range(32))).decode()
    pin = "sha256/" + "Zm9v" * 10 + "YmE="
    assert redact(f"key {key} end") == "key <64 hex digits hidden> end"
    assert redact(f"x {b64} y") == "x <44 base64 characters hidden> y"
    assert redact(pin) == pin
    path = "/tmp/pytest-of-root/pytest-140/test_a_stalled_gui_thread_leaves_every_stack0/logs"
    assert redact(path) == path
    assert redact(f"key={b64}") == "key=<44 base64 characters hidden>"
    assert redact("/" + b64[1:]) == "<44 base64 characters hidden>"  # a key may start with /
    assert redact(repr(bytes(range(200, 232)))) == "<bytes hidden>"  # repr of raw key bytes
    logging.getLogger("voipclient.test").error("oops %s and %s", key, pin)
    try:
        raise KeyError(key)
    except KeyError:
        logging.getLogger("voipclient.test").exception("failed")
    text = logged(diag)
    assert key not in text and "<64 hex digits hidden>" in text and pin in text
    assert all(key not in line for line in diag.last_errors())


def test_the_redaction_filter_never_raises_on_a_malformed_record() -> None:
    """A log call with too few arguments is the handler's to report ("--- Logging error ---");
    the redaction filter, which runs before any handler catches anything, must not raise."""
    record = logging.LogRecord(
        "voipclient.test", logging.INFO, __file__, 1, "%s and %s", ("x",), None
    )
    assert diagnostics._Redact().filter(record) is True


def test_sigusr1_logs_where_python_memory_grew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    monkeypatch.setenv(diagnostics.TRACEMALLOC_ENV, "1")
    d = install(tmp_path / "logs", hang_after=0.3)
    try:
        d.heartbeat()
        os.kill(os.getpid(), signal.SIGUSR1)  # the baseline
        wait_for(lambda: "tracemalloc: baseline taken" in logged(d))
        kept = [bytearray(1000) for _ in range(2000)]  # ~2 MB that stays
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: "tracemalloc: growth since the baseline" in logged(d))
        assert "test_diagnostics.py" in logged(d).split("growth since the baseline")[1]
        assert len(kept) == 2000
    finally:
        d.close()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None) or callable(
        signal.getsignal(signal.SIGUSR1)
    )


CRASH = textwrap.dedent(
    """
    import os, sys, threading
    from pathlib import Path
    from voipclient.diagnostics import install

    install(Path(sys.argv[1]))
    threading.Thread(target=lambda: threading.Event().wait(), name="idle", daemon=True).start()
    if sys.argv[2] == "abort":
        os.abort()  # what a C library's assert does (PortAudio, libopus)
    import ctypes
    ctypes.string_at(0)  # a segfault
    """
)


@pytest.mark.parametrize("how", ["abort", "segfault"])
def test_a_process_that_dies_in_c_leaves_a_crash_dump(tmp_path: Path, how: str) -> None:
    logs = tmp_path / "logs"
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(logs), how],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode < 0  # killed by the signal
    dump = (logs / "crash.log").read_text()
    assert "Fatal Python error" in dump
    assert "Aborted" in dump if how == "abort" else "Segmentation fault" in dump
    assert "Current thread" in dump and "Thread 0x" in dump  # every thread's stack
    assert "<string>" in dump  # down to the line that crashed
