"""The Qt binding we ship does not corrupt the interpreter: PySide6 6.12.0 returned True from
``Signal.emit()`` without a reference, so every emit lowered True's refcount until the process
aborted ("bool_dealloc: deallocating True or False"). pyproject excludes it; this test fails on
any binding with that bug."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    changed = Signal(str)


def test_signal_emit_keeps_the_refcount_of_true(qtbot: object) -> None:
    emitter = _Emitter()
    received: list[str] = []
    emitter.changed.connect(received.append)
    before = sys.getrefcount(True)
    for _ in range(1000):
        emitter.changed.emit("x")
    assert len(received) == 1000
    assert sys.getrefcount(True) >= before - 10  # a leak of one per emit would be -1000
