"""Issue 17 through the real app on a stereo sink: channels told apart by ear.

bob (the real app) listens on ``vstereo``, a stereo PulseAudio null sink (headphones), with
channel A placed hard left, B hard right, and A his priority channel. Two talker bots (real
processes, real relay) send a 440 Hz tone into A and a 660 Hz tone into B; the test records the
sink's monitor in stereo with ``parecord`` and measures, at the sink:

* placement: each side carries its own channel's tone at least 20 dB above the other's;
* ducking: when A starts talking, B (on the right) drops by 12 ± 1 dB within 50 ms;
* cues: keying A plays A's start cue (its own notes) on the left only, keying B plays B's on the
  right only, each recognised by its frequency.
"""

from __future__ import annotations

import math
import subprocess
import wave
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from voipclient.audio.cues import NOTE_MS, VOICES, voice_for

from ..conftest import A, B, ServerProcess, Starter, start_bot
from .conftest import AppFactory, connect, join_by_double_click, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(150)]

RATE = 48_000
SINK = "vstereo"
SINK_NAME = "Stereo-Headphones-Test"  # its description: the name the app lists it under
WINDOW = RATE // 100  # 10 ms analysis windows


def tone_wav(path: Path, hz: float, seconds: float, silence_s: float = 0.0) -> Path:
    t = np.arange(round(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * hz * t)
    pcm = np.concatenate([np.zeros(round(silence_s * RATE)), tone])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.round(pcm * 32767).astype(np.int16).tobytes())
    return path


def talker(server: ServerProcess, name: str, channel: str, play: Path) -> subprocess.Popen[str]:
    return start_bot(
        server,
        name,
        "--no-highpass",
        "--noise-suppression",
        "off",
        "--join",
        channel,
        "--talk",
        channel,
        "--play",
        str(play),
    )


def read_stereo(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, RATE, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    both = data.reshape(-1, 2).astype(np.float64) / 32768
    return both[:, 0], both[:, 1]


def levels_db(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """RMS per 10 ms window, dBFS."""
    n = len(x) // WINDOW
    ms = np.mean(x[: n * WINDOW].reshape(n, WINDOW) ** 2, axis=1)
    return np.asarray(10 * np.log10(np.maximum(ms, 1e-14)))


def band_db(x: npt.NDArray[np.float64], hz: float) -> float:
    """Level of the ``hz`` component of ``x`` (a Hann-windowed spectrum's peak near it)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = round(hz * len(x) / RATE)
    return float(20 * np.log10(spectrum[max(0, k - 2) : k + 3].max() + 1e-12))


def dominant_hz(x: npt.NDArray[np.float64]) -> float:
    size = 1 << 15
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), size))
    return float(np.argmax(spectrum) * RATE / size)


def onset(levels: npt.NDArray[np.float64], after: int = 0, above: float = -40.0) -> int:
    hits = np.nonzero(levels[after:] > above)[0]
    assert len(hits), f"nothing above {above} dBFS after window {after}"
    return after + int(hits[0])


def test_placement_ducking_and_cues_at_a_stereo_sink(
    qtbot: Any, make_app: AppFactory, start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    bob = make_app("bob")
    prefs = bob.controller.prefs
    bob.apply_prefs(replace(prefs, audio=replace(prefs.audio, output_device=SINK_NAME)))
    connect(qtbot, bob, server)
    for channel in (A, B):
        join_by_double_click(qtbot, bob, channel)
    ctl = bob.controller
    engine = ctl.pipeline.engine  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: engine.output_device == SINK_NAME, timeout=15_000)
    ctl.set_channel_pan(A, -1.0)
    ctl.set_channel_pan(B, 1.0)
    ctl.set_priority_channel(A)
    row_a, row_b = ctl.model.row(A), ctl.model.row(B)
    assert row_a is not None and row_b is not None
    assert (row_a.pan, row_a.priority, row_b.pan, row_b.priority) == (-1.0, True, 1.0, False)
    assert bob.window.controls.pan.findData(-1.0) >= 0

    recording = tmp_path / "heard.wav"
    recorder = subprocess.Popen(
        [
            "parecord",
            f"--device={SINK}.monitor",
            "--rate=48000",
            "--channels=2",
            "--format=s16le",
            "--file-format=wav",
            str(recording),
        ],
        stderr=subprocess.PIPE,
    )
    bots: list[subprocess.Popen[str]] = []
    try:
        qtbot.wait(500)
        # 1. the cues: key A, then B (the control socket's press/release, as a stream deck)
        for channel in (A, B):
            assert ctl.ptt.handle_command(f"press {channel}").startswith("ok")
            qtbot.wait(300)
            assert ctl.ptt.handle_command(f"release {channel}").startswith("ok")
            qtbot.wait(700)
        # 2. both channels talk; A (the priority channel) starts 3 s after B
        bots.append(talker(server, "bea", "B", tone_wav(tmp_path / "b.wav", 660, 9.0)))
        bots.append(talker(server, "abe", "A", tone_wav(tmp_path / "a.wav", 440, 3.0, 3.0)))
        qtbot.waitUntil(lambda: talking(bob, B, "bea"), timeout=20_000)
        qtbot.waitUntil(lambda: talking(bob, A, "abe"), timeout=20_000)
        qtbot.wait(6_500)  # the silence before A's tone, then 1.5 s of both
        for proc in bots:
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
    finally:
        for proc in bots:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        recorder.terminate()
        recorder.wait(10)
    left, right = read_stereo(recording)
    lev_l, lev_r = levels_db(left), levels_db(right)

    # -- cues: A's on the left only, in A's notes; B's on the right only, in B's notes -------
    note = RATE * NOTE_MS[0] // 1000
    cue_a = onset(lev_l) * WINDOW
    first_a = left[cue_a + RATE // 200 : cue_a + note - RATE // 200]
    assert dominant_hz(first_a) == pytest.approx(VOICES[voice_for(row_a.slot)][0], abs=8)
    assert float(np.abs(right[cue_a : cue_a + 2 * note]).max()) < 10 ** (-50 / 20)
    cue_b = onset(lev_r) * WINDOW
    assert cue_b > cue_a
    first_b = right[cue_b + RATE // 200 : cue_b + note - RATE // 200]
    assert dominant_hz(first_b) == pytest.approx(VOICES[voice_for(row_b.slot)][0], abs=8)
    assert float(np.abs(left[cue_b : cue_b + 2 * note]).max()) < 10 ** (-50 / 20)
    assert VOICES[voice_for(row_a.slot)][0] != VOICES[voice_for(row_b.slot)][0]

    # -- ducking: A's voice (left) arrives; B (right) drops 12 ± 1 dB within 50 ms ------------
    b_starts = onset(lev_r, after=cue_b // WINDOW + 50)  # past B's cues: B's tone
    a_starts = onset(lev_l, after=b_starts + 150)  # A's tone, after its 3 s of silence
    assert a_starts - b_starts > 150, "A's tone must come while B already talks"
    before = float(np.median(lev_r[a_starts - 100 : a_starts - 20]))
    ducked = float(np.median(lev_r[a_starts + 30 : a_starts + 130]))
    depth = before - ducked
    reached = onset(-lev_r, after=a_starts - 5, above=-(before - 11.0)) - a_starts
    print(f"\nduck depth {depth:.2f} dB, reached -11 dB {reached * 10} ms after A's onset")
    assert 11.0 <= depth <= 13.0
    assert reached * 10 <= 50

    # -- placement: with both talking, each side holds its own channel 20 dB above the other --
    both = slice((a_starts + 30) * WINDOW, (a_starts + 130) * WINDOW)
    left_gap = band_db(left[both], 440) - band_db(left[both], 660)
    right_gap = band_db(right[both], 660) - band_db(right[both], 440)
    print(f"left: A {left_gap:.1f} dB above B; right: B {right_gap:.1f} dB above A")
    assert left_gap >= 20 and right_gap >= 20
    assert math.isfinite(before) and before > -40  # B was really playing before A came
