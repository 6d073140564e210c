"""Two clients, each on its own PulseAudio null sink with real sounddevice (PortAudio) streams,
exchange speech through a real relay process.

Client A (``voipclient-bot`` process) captures from ``vsink.monitor``: the test plays speech into
``vsink`` with ``paplay``, so A's "microphone" hears it. Client B plays what it receives to
``vsink2``; the test records ``vsink2.monitor`` with ``parecord`` and correlates the recording
with the source. Each bot picks its sink the way any PulseAudio client can (``PULSE_SOURCE`` /
``PULSE_SINK`` for the ``pulse`` device), so the two never share a device.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from voipclient.audio.file_engine import read_wav_mono16

from ...audio_similarity import segment_similarity, similarity
from ..conftest import ServerProcess, Starter, start_bot

DATA = Path(__file__).parents[2] / "data"
SPEECH = DATA / "speech-0-48k.wav"
RATE = 48_000

pytestmark = pytest.mark.timeout(90)


def bot(server: ServerProcess, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return start_bot(server, name, "--no-highpass", *args, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return proc.returncode, err


def test_speech_played_into_one_client_comes_out_of_the_other(
    real_env: None, start_server: Starter, tmp_path: Path
) -> None:
    """Real devices on a shared machine: a load spike can make one device hiccup for a moment.
    The end-to-end match is measured twice at most: the first good run passes, two poor ones
    fail (each score is printed)."""
    scores = []
    for attempt in range(2):
        similar = play_through(start_server(), tmp_path / f"run{attempt}")
        scores.append(round(similar, 2))
        print(f"\nattempt {attempt + 1}: similarity {similar:.2f}")
        if similar > 0.7:
            return
    # (0.8-0.93 measured; unrelated speech scores ~0.2)
    pytest.fail(f"what B played does not match what A heard (scores {scores})")


def play_through(server: ServerProcess, tmp_path: Path) -> float:
    """Speech into A's device → relay → B's device; the similarity of what B's sink played."""
    tmp_path.mkdir()
    listener = bot(
        server,
        "listener",
        {"PULSE_SINK": "vsink2"},
        "--join",
        "A",
        "--output-device",
        "pulse",
        "--seconds",
        "9",
        "--stats-json",
        str(tmp_path / "listener.json"),
    )
    talker = bot(
        server,
        "talker",
        {"PULSE_SOURCE": "vsink.monitor"},
        "--join",
        "A",
        "--talk",
        "A",
        "--input-device",
        "pulse",
        "--seconds",
        "7",
        "--stats-json",
        str(tmp_path / "talker.json"),
    )
    recording = tmp_path / "heard.wav"
    recorder = subprocess.Popen(
        [
            "parecord",
            "--device=vsink2.monitor",
            "--rate=48000",
            "--channels=1",
            "--format=s16le",
            "--file-format=wav",
            str(recording),
        ]
    )
    try:
        time.sleep(3.0)  # both logged in, keys exchanged, streams open
        subprocess.run(
            ["paplay", "--device=vsink", str(SPEECH)], check=True, timeout=30
        )  # blocks for the length of the file (~10.7 s) — the talker stops at 7 s
    finally:
        rc_talker, err_talker = finish(talker)
        rc_listener, err_listener = finish(listener)
        recorder.terminate()
        recorder.wait(10)
    assert rc_talker == 0, err_talker
    assert rc_listener == 0, err_listener
    talker_stats = json.loads((tmp_path / "talker.json").read_text())
    listener_stats = json.loads((tmp_path / "listener.json").read_text())
    assert talker_stats["engine"]["frames_in"] > 200  # a real capture stream ran
    assert listener_stats["engine"]["frames_out"] > 200  # a real playback stream ran
    (stream,) = listener_stats["streams"]
    assert stream["name"] == "talker" and stream["played"] > 150
    heard = read_wav_mono16(recording)
    source = read_wav_mono16(SPEECH)[: RATE * 3]  # what surely went through within 7 s
    _, lag = similarity(source, heard)
    assert lag > 0.5, "the recording starts with silence before the speech arrives"
    return segment_similarity(source, heard, start=round(lag * RATE))
