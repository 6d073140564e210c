"""The voice pipeline: transmit gate, sender (encode once + redundancy), playback (jitter buffer →
decoder → mixer), with named fake codecs for the logic and real libopus for the sound."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.mixer import Mixer
from voipclient.audio.opus import OpusDecoder, OpusEncoder
from voipclient.audio.payload import decode_payload
from voipclient.audio.redundancy import LEVEL_CLEAN, RedundancyLevel
from voipclient.audio.voice import TransmitGate, VoicePlayback, VoiceSender

from ...audio_similarity import segment_similarity

N = 960
T = 0.020
DATA = Path(__file__).parents[2] / "data"


class FakeEncoder:
    """'Encodes' a frame as its first sample (as 2 bytes): lets tests read which frame played."""

    frame_samples = N

    def __init__(self) -> None:
        self.loss_percent = 0

    def set_loss_percent(self, percent: int) -> None:
        self.loss_percent = percent

    def encode(self, pcm: np.ndarray) -> bytes:
        return int(pcm[0]).to_bytes(2, "big", signed=True)


class FakeDecoder:
    """Turns a fake packet back into a constant frame; FEC and concealment are marked values."""

    FEC = -1000
    CONCEAL = -2000

    def decode(self, packet: bytes) -> np.ndarray:
        return np.full(N, int.from_bytes(packet, "big", signed=True), dtype=np.int16)

    def decode_fec(self, next_packet: bytes) -> np.ndarray:
        return np.full(N, self.FEC, dtype=np.int16)

    def conceal(self) -> np.ndarray:
        return np.full(N, self.CONCEAL, dtype=np.int16)


def frame(value: int) -> np.ndarray:
    return np.full(N, value, dtype=np.int16)


# --- gate -------------------------------------------------------------------------------------


def test_gate_release_delay_then_voice_last_per_channel() -> None:
    gate = TransmitGate(release_ms=200)
    d = gate.update({1, 2}, 0.0)
    assert d.targets == (1, 2) and d.started and not d.stopped
    d = gate.update({1}, 0.02)  # channel 2 released: keeps going for 200 ms
    assert d.targets == (1, 2) and d.ending == ()
    t = 0.02
    while True:
        t += T
        d = gate.update({1}, t)
        if d.ending:
            break
    assert d.ending == (2,) and d.targets == (1,)
    assert t == pytest.approx(0.22, abs=1e-6)  # 200 ms after the release
    t += T
    assert gate.update(set(), t).targets == (1,)  # now channel 1 released
    while not (d := gate.update(set(), t := t + T)).stopped:
        pass
    assert d.ending == (1,) and d.targets == () and d.stopped
    assert not gate.update(set(), t + T).sending


def test_gate_repress_within_release_keeps_stream_going() -> None:
    gate = TransmitGate(release_ms=200)
    gate.update({3}, 0.0)
    gate.update(set(), 0.02)
    d = gate.update({3}, 0.1)  # pressed again before the release ran out
    assert d.targets == (3,) and not d.started and d.ending == ()
    for k in range(6, 30):
        d = gate.update({3}, k * T)
        assert d.targets == (3,) and not d.ending


def test_gate_zero_release_ends_on_the_next_frame() -> None:
    gate = TransmitGate(release_ms=0)
    gate.update({1}, 0.0)
    d = gate.update(set(), 0.02)
    assert d.ending == (1,) and d.stopped


# --- sender ------------------------------------------------------------------------------------


def test_sender_encodes_once_with_copies_spaced_as_the_level_says() -> None:
    enc = FakeEncoder()
    sender = VoiceSender(enc, first_frame_no=(1 << 32) - 3)  # wraps during the test
    sender.set_level(RedundancyLevel(12, (2, 4)))
    assert enc.loss_percent == 12
    payloads = [decode_payload(sender.encode(frame(k))) for k in range(8)]
    assert all(p is not None for p in payloads)
    p7 = payloads[7]
    assert p7 is not None and p7.frame_no == 4
    assert [(d, int.from_bytes(b, "big")) for d, b in p7.redundant] == [(2, 5), (4, 3)]
    assert payloads[0] is not None and payloads[0].redundant == ()  # no history yet
    sender.set_level(LEVEL_CLEAN)
    assert enc.loss_percent == 0
    p = decode_payload(sender.encode(frame(9)))
    assert p is not None and p.redundant == ()


def test_sender_skip_keeps_audio_time_and_never_copies_unsent_frames() -> None:
    sender = VoiceSender(FakeEncoder())
    sender.set_level(RedundancyLevel(10, (2,)))
    sender.encode(frame(1))  # frame 0
    sender.skip()  # frame 1 not sent
    p = decode_payload(sender.encode(frame(3)))  # frame 2: its copy 2 back is frame 0
    assert p is not None and p.frame_no == 2 and len(p.redundant) == 1
    p = decode_payload(sender.encode(frame(4)))  # frame 3: 2 back is frame 1, never sent
    assert p is not None and p.redundant == ()


# --- playback (fakes) ----------------------------------------------------------------------------


def make_playback() -> tuple[VoicePlayback, Mixer]:
    mixer = Mixer()
    return VoicePlayback(mixer, FakeDecoder), mixer


def run_stream(
    playback: VoicePlayback,
    payloads: list[tuple[int, int, bytes]],
    frames: int,
    lost: set[int] = frozenset(),  # type: ignore[assignment]
) -> list[int]:
    """(sender, channel, payload) for frame k arrive at k*T + 5 ms; return the first sample of
    every output frame."""
    out = np.zeros(N, dtype=np.int16)
    firsts = []
    by_frame: dict[int, list[tuple[int, int, bytes]]] = {}
    for k, item in enumerate(payloads):
        by_frame.setdefault(k // max(1, len(payloads) // frames), []).append(item)
    for k in range(frames + 10):
        now = k * T + 0.013
        for sender_id, channel_id, payload in by_frame.get(k, []):
            if k not in lost:
                playback.push(sender_id, channel_id, payload, False, now - 0.008)
        playback.render_into(out, now)
        firsts.append(int(out[0]))
    return firsts


def test_playback_two_speakers_in_two_channels_are_mixed() -> None:
    playback, _ = make_playback()
    a, b = VoiceSender(FakeEncoder()), VoiceSender(FakeEncoder())
    items = []
    for _k in range(50):
        items.append((1, 10, a.encode(frame(100))))
        items.append((2, 20, b.encode(frame(1000))))
    firsts = run_stream(playback, items, 50)
    assert 1100 in firsts  # both audible at once (summed)
    assert playback.speakers == {1, 2}


def test_same_speaker_in_two_channels_plays_once_and_muting_one_channel_keeps_the_other() -> None:
    playback, mixer = make_playback()
    a = VoiceSender(FakeEncoder())
    items = []
    for _ in range(50):
        payload = a.encode(frame(300))
        items.append((1, 10, payload))
        items.append((1, 20, payload))  # the relay delivers it once per shared channel
    firsts = run_stream(playback, items, 50)
    assert max(firsts) == 300  # never doubled
    (stream,) = playback.stats().streams
    assert stream.jitter.duplicate == 50
    mixer.set_channel_muted(10, True)
    items = [(1, c, p) for p in (a.encode(frame(300)) for _ in range(30)) for c in (10, 20)]
    assert 300 in run_stream(playback, items, 30)
    mixer.set_channel_muted(20, True)
    items = [(1, c, p) for p in (a.encode(frame(300)) for _ in range(30)) for c in (10, 20)]
    before = playback.stats().streams[0].skipped
    assert set(run_stream(playback, items, 30)) == {0}
    assert playback.stats().streams[0].skipped > before  # not decoded at all


def test_locally_muted_speaker_is_not_decoded() -> None:
    playback, mixer = make_playback()
    mixer.set_user_muted(1, True)
    a = VoiceSender(FakeEncoder())
    firsts = run_stream(playback, [(1, 10, a.encode(frame(300))) for _ in range(40)], 40)
    assert set(firsts) == {0}
    (stream,) = playback.stats().streams
    assert stream.decoded == 0 and stream.skipped >= 39


def test_copies_rebuild_a_burst_that_fec_alone_cannot() -> None:
    playback, _ = make_playback()
    a = VoiceSender(FakeEncoder())
    a.set_level(RedundancyLevel(0, (2, 4)))
    items = [(1, 10, a.encode(frame(k + 1))) for k in range(100)]
    firsts = run_stream(playback, items, 100, lost={7, 20, 21, 22, 60, 61, 62})
    # The first losses grow the delay (concealment in place while waiting for the copies);
    # after that a burst of 3 plays as itself, in order, with no FEC and no concealment.
    window = firsts[firsts.index(60) : firsts.index(65) + 1]
    assert window == [60, 61, 62, 63, 64, 65]
    assert 21 in firsts and 22 in firsts and 23 in firsts
    (stream,) = playback.stats().streams
    assert stream.redundancy_depth == 4
    assert stream.jitter.recovered >= 3


def test_malformed_payload_is_dropped_and_counted() -> None:
    playback, _ = make_playback()
    assert playback.push(1, 10, b"\x00\x01", False, 0.0) is False
    assert playback.malformed == 1 and playback.speakers == frozenset()


def test_loss_reports_per_speaker() -> None:
    playback, _ = make_playback()
    a = VoiceSender(FakeEncoder())
    items = [(5, 10, a.encode(frame(7))) for _ in range(150)]
    lost = {k for k in range(150) if k % 10 == 3}
    out = np.zeros(N, dtype=np.int16)
    reports = []
    for k, (s, c, p) in enumerate(items):
        now = k * T
        if k not in lost:
            playback.push(s, c, p, False, now)
        playback.render_into(out, now)
        reports += playback.loss_reports(now)
    assert reports and all(r.sender_id == 5 for r in reports)
    assert reports[-1].loss == pytest.approx(0.1, abs=0.02)


# --- real Opus ---------------------------------------------------------------------------------


def _through(level: RedundancyLevel, loss: float, seed: int, seconds: float = 3.0) -> float:
    """Speech through sender → random loss → playback with real libopus; similarity with the
    source over the last 2 s (after the jitter buffer has settled on its delay)."""
    speech = read_wav_mono16(DATA / "speech-0-48k.wav")[: int(48000 * seconds)]
    sender = VoiceSender(OpusEncoder())
    sender.set_level(level)
    playback = VoicePlayback(Mixer(), OpusDecoder)
    rng = random.Random(seed)
    out = np.zeros(N, dtype=np.int16)
    rendered = []
    frames = len(speech) // N
    for k in range(frames + 15):
        now = k * T
        if k < frames:
            payload = sender.encode(speech[k * N : (k + 1) * N])
            if rng.random() >= loss:
                playback.push(1, 1, payload, False, now + 0.002)
        playback.render_into(out, now + 0.005)
        rendered.append(out.copy())
    got = np.concatenate(rendered).astype(np.float64)
    src = speech[: frames * N].astype(np.float64)
    tail = len(src) - 2 * 48000
    return segment_similarity(src[tail:], got[tail:], slack=16 * N)


def test_real_opus_speech_survives_the_pipeline() -> None:
    assert _through(LEVEL_CLEAN, 0.0, 1) > 0.9


def test_real_opus_redundancy_beats_plain_under_loss() -> None:
    clean = _through(LEVEL_CLEAN, 0.0, 2, seconds=8)
    plain = _through(LEVEL_CLEAN, 0.2, 2, seconds=8)
    fec = _through(RedundancyLevel(20, ()), 0.2, 2, seconds=8)
    protected = _through(RedundancyLevel(0, (1, 2, 4)), 0.2, 2, seconds=8)
    assert protected > fec + 0.03 and protected > plain + 0.05
    assert protected > clean - 0.05  # near loss-free at 20 % random loss
