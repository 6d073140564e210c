"""Issue 15 through the real app: a new session's first talk spurt is protected (compact copies
from the second encoder), the listener's fast reports take the protection off within 3 s on a
clean path, and what the session learned of the server's path is saved for the next one."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from PySide6.QtCore import QPoint, Qt

from voipclient.audio.redundancy import LEVEL_CLEAN, LEVEL_LIGHT

from ..conftest import B, Starter
from .conftest import AppFactory, channel_item, pair_in, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_cold_start_protection_then_clean_and_remembered(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice, bob = pair_in(qtbot, make_app, server, B)
    pipeline = alice.controller.pipeline
    assert pipeline is not None
    sender = pipeline.capture.sender
    # logged in, nothing heard from any listener yet: light protection is in force
    qtbot.waitUntil(lambda: LEVEL_LIGHT in (sender.level, pipeline.capture.level))
    prefs = alice.controller.prefs
    alice.apply_prefs(replace(prefs, transmit=replace(prefs.transmit, mode="continuous")))
    alice.window.tree.setCurrentItem(channel_item(alice, B))
    hot_mic = alice.window.controls.hot_mic
    qtbot.mouseClick(hot_mic, Qt.MouseButton.LeftButton, pos=QPoint(8, hot_mic.height() // 2))
    qtbot.waitUntil(lambda: talking(bob, B, "alice"), timeout=10_000)
    sender = alice.controller.pipeline.capture.sender  # type: ignore[union-attr]
    # the first frames carried compact copies made by the second encoder
    qtbot.waitUntil(lambda: sender.copy_bytes_out > 0, timeout=5_000)
    started = sender.frames_encoded
    # bob's fast reports (every 0.5 s at a stream's start) say the path is clean: off again
    qtbot.waitUntil(lambda: sender.level == LEVEL_CLEAN, timeout=5_000)
    assert sender.frames_encoded - started < 150  # within 3 s of talking
    copies = sender.copy_bytes_out
    qtbot.wait(1000)
    assert sender.copy_bytes_out == copies  # a clean path costs nothing more
    # a new bitrate in Settings reaches the connection's redundancy model
    prefs = alice.controller.prefs
    alice.apply_prefs(replace(prefs, audio=replace(prefs.audio, bitrate=24_000)))
    conn = alice.controller.conn
    assert conn is not None
    qtbot.waitUntil(lambda: conn.core.redundancy_policy.config.bitrate == 24_000, timeout=5_000)
    # leaving saves what was learned (nothing secret: a level per host:port)
    alice.controller.disconnect_server()
    path = alice.controller.data_dir / "voice-paths.json"
    qtbot.waitUntil(path.exists, timeout=5_000)
    saved = json.loads(path.read_text())[f"{server.host}:{server.port}"]
    assert saved["level"]["distances"] == [] and saved["level"]["bitrate_cap"] == 0
