"""Issue 17 through the real app: echo cancellation for a player on speakers.

alice's app plays to ``vsink`` and records ``vsink.monitor``: her microphone hears everything
her speakers play, an echo path with no room at all (the harshest: the echo is as loud as the
playback). bob (a bot, a real process) talks into their channel; alice's app plays him and her
microphone (open: her hot mic in A) picks him up again. With echo cancellation off, that echo is
what alice sends back to bob; switched on in Settings, the canceller (fed with exactly what
alice's mixer played) removes it: the level after it drops by more than 25 dB within 2 s (AEC3),
and stays down when the linear filter has learnt the path and takes over.
"""

from __future__ import annotations

import math
import wave
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voipclient.audio.file_engine import read_wav_mono16

from ..conftest import A, Starter, start_bot
from .conftest import AppFactory, connect, join_by_double_click, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(150)]

DATA = Path(__file__).parents[2] / "data"


def long_speech(path: Path) -> Path:
    """Both speech samples, then the first again: 32 s of talk, long enough for the linear
    filter to learn the path and take over while bob is still talking."""
    pcm = [read_wav_mono16(DATA / f"speech-{k}-48k.wav") for k in (0, 1, 0)]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(np.concatenate(pcm).tobytes())
    return path


def mean_level(qtbot: Any, app: Any, seconds: float) -> float:
    """The mean power (dBFS) of the capture level after the echo canceller, sampled every
    20 ms for ``seconds``."""
    powers = []
    for _ in range(round(seconds / 0.02)):
        qtbot.wait(20)
        rms = app.controller.pipeline.capture.input_level.rms_dbfs
        powers.append(10 ** (rms / 10) if math.isfinite(rms) else 0.0)
    mean = sum(powers) / len(powers)
    return 10 * math.log10(mean) if mean > 0 else -math.inf


def test_the_echo_of_the_speakers_is_removed(
    qtbot: Any, make_app: AppFactory, start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    alice = make_app("alice")
    prefs = alice.controller.prefs
    alice.apply_prefs(
        replace(
            prefs,
            audio=replace(prefs.audio, echo_cancellation="off"),
            transmit=replace(prefs.transmit, mode="continuous"),
        )
    )
    connect(qtbot, alice, server)
    join_by_double_click(qtbot, alice, A)
    alice.controller.set_hot_mic(A)  # alice's microphone is open into A: what it hears, bob gets
    pipeline = alice.controller.pipeline
    assert pipeline is not None and not pipeline.echo_cancelling
    bob = start_bot(
        server,
        "bob",
        "--join",
        "A",
        "--talk",
        "A",
        "--play",
        str(long_speech(tmp_path / "long.wav")),
        "--seconds",
        "40",
    )
    try:
        qtbot.waitUntil(lambda: talking(alice, A, "bob"), timeout=20_000)
        qtbot.wait(500)
        echo = mean_level(qtbot, alice, 3.0)  # what alice's microphone hears of bob
        alice.apply_prefs(
            replace(
                alice.controller.prefs,
                audio=replace(alice.controller.prefs.audio, echo_cancellation="on"),
            )
        )
        assert pipeline.echo_cancelling and alice.controller.pipeline is pipeline
        qtbot.wait(2_000)  # the canceller converges
        assert talking(alice, A, "bob")
        left = mean_level(qtbot, alice, 3.0)
        capture = pipeline.capture
        assert capture.aec is not None and capture.aec.frames > 200
        aec = capture.aec
        # the linear filter learns the path and takes over (the near end natural in double talk)
        qtbot.waitUntil(lambda: aec.linear_active, timeout=25_000)
        linear_left = mean_level(qtbot, alice, 2.0)
        linear_erle = aec.linear.erle_db
        far = capture.far_end
        assert far is not None
        counts = (
            f"far end: starved {far.starved}, skipped {far.skipped}, dropped {far.dropped}, "
            f"overrun {far.overrun}, silence played for lack of frames {far.underrun_silence}"
        )
    finally:
        bob.kill()
        bob.wait(10)
    print(
        f"\necho at alice's microphone {echo:.1f} dBFS, after the canceller {left:.1f} dBFS, "
        f"after the linear filter took over {linear_left:.1f} dBFS (its estimate "
        f"{linear_erle:.1f} dB); {counts}"
    )
    assert echo > -45  # bob was really heard through the speakers
    assert echo - left >= 25
    assert echo - linear_left >= 25
