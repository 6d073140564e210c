"""FileEngine: WAV round trip, realtime frame scheduling, bad input formats."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from voipclient.audio.engine import AudioEngine, DeviceEvent
from voipclient.audio.file_engine import FileEngine
from voipclient.errors import LocalProtocolError

FRAME = 960


def write_wav(
    path: Path, samples: np.ndarray, *, rate: int = 48_000, channels: int = 1, width: int = 2
) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


def ramp(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 37 % 65536 - 32768).astype("<i2")


def test_round_trip_capture_and_playback(tmp_path: Path) -> None:
    samples = ramp(FRAME * 3 + 100)  # a partial last frame
    src = write_wav(tmp_path / "in.wav", samples)
    dst = tmp_path / "out.wav"
    events: list[DeviceEvent] = []
    engine = FileEngine(src, dst, realtime=False, on_event=events.append)
    as_protocol: AudioEngine = engine
    assert as_protocol.sample_rate == 48_000
    engine.start()

    captured = np.zeros(len(samples), dtype=np.int16)
    for _ in range(4):
        engine.step()
    assert engine.input_exhausted
    assert engine.capture.read_into(captured) == len(samples)
    assert captured.tobytes() == samples.tobytes()
    assert "eof" in [e.kind for e in events]

    # Play what was captured: the output WAV must hold exactly those bytes.
    played = ramp(FRAME * 3)
    engine.playback.write(played)
    for _ in range(3):
        engine.step()
    engine.close()
    engine.close()  # idempotent

    with wave.open(str(dst), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48_000, 1, 2)
        out = wav.readframes(wav.getnframes())
    # The first 4 steps played silence (nothing queued: underrun), then the 3 frames.
    assert out == bytes(FRAME * 4 * 2) + played.tobytes()
    stats = engine.stats()
    assert stats.frames_in == 4
    assert stats.frames_out == 7
    assert stats.underruns == FRAME * 4
    assert stats.overruns == 0


def test_realtime_tick_moves_frames_due(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "in.wav", ramp(FRAME * 100))
    engine = FileEngine(src, None, realtime=True)
    engine.start(now=1000.0)
    assert engine.tick(1000.0) == 0
    assert engine.tick(1000.019) == 0
    assert engine.tick(1000.02) == 1
    assert engine.tick(1000.1) == 4  # 5 due in total
    assert engine.tick(1000.1) == 0
    assert engine.tick(1001.0) == 45  # 50 due after 1 s
    assert engine.capture.available == FRAME * 50
    assert engine.stats().frames_in == 50
    assert engine.stats().frames_out == 50


def test_realtime_schedule_starts_at_first_tick(tmp_path: Path) -> None:
    engine = FileEngine(None, None)
    engine.start()
    assert engine.tick(5.0) == 0
    assert engine.tick(5.2) == 10
    assert engine.capture.available == 0  # no input: the microphone is silent
    assert engine.stats().frames_out == 10


def test_tick_does_nothing_when_stopped_and_step_misuse(tmp_path: Path) -> None:
    engine = FileEngine(None, None, realtime=True)
    assert engine.tick(10.0) == 0
    with pytest.raises(LocalProtocolError):
        engine.step()
    fast = FileEngine(None, None, realtime=False)
    with pytest.raises(LocalProtocolError):
        fast.step()
    fast.start()
    assert fast.tick(0.0) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 44_100}, "44100 Hz"),
        ({"channels": 2}, "2 channels"),
        ({"width": 1}, "8 bits"),
    ],
)
def test_bad_wav_format(tmp_path: Path, kwargs: dict[str, int], match: str) -> None:
    path = write_wav(tmp_path / "bad.wav", np.zeros(FRAME * 2, dtype=np.int16), **kwargs)
    with pytest.raises(ValueError, match=match):
        FileEngine(path, None)


def test_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "junk.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        FileEngine(path, None)
