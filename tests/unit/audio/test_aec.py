"""Echo cancellation: the far-end mailbox, when it is on, AEC3 on a simulated room, the linear
Kalman canceller in double talk and the hand-over between the two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import signal

from voipclient.audio.aec import (
    HANDBACK_BLOCKS,
    HANDOVER_BLOCKS,
    MAX_BACKLOG_FRAMES,
    MAX_LATE_FRAMES,
    MAX_OWED_FRAMES,
    RING_FRAMES,
    EchoCanceller,
    FarEnd,
    aec3_latency,
    wants_echo_cancellation,
)
from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.linear_aec import DOUBLE_TALK_MAX_BLOCKS, LinearCanceller

DATA = Path(__file__).parents[2] / "data"
N = 960
RATE = 48_000


@pytest.mark.parametrize(
    ("mode", "device", "on"),
    [
        ("auto", None, True),  # the system default: we cannot tell, so on
        ("auto", "Built-in Audio Analog Stereo", True),
        ("auto", "Jabra Evolve 65 Headset", False),
        ("auto", "WH-1000XM4 Headphones", False),
        ("auto", "AirPods Pro", False),
        ("auto", "Galaxy Buds2", False),
        ("on", "Jabra Evolve 65 Headset", True),
        ("off", "Built-in Audio Analog Stereo", False),
    ],
)
def test_auto_is_on_unless_the_output_is_a_headset(mode: str, device: str | None, on: bool) -> None:
    assert wants_echo_cancellation(mode, device) is on


def test_the_far_end_is_the_played_frame_folded_to_mono() -> None:
    far = FarEnd(N)
    stereo = np.zeros(2 * N, dtype=np.int16)
    stereo[0::2], stereo[1::2] = 1000, -200  # left, right
    far.put(stereo, 2)
    out = np.ones(N, dtype=np.int16)
    for _ in range(MAX_LATE_FRAMES):
        far.take_into(out)  # the jitter room, taken at the start
        assert not out.any()
    far.take_into(out)
    assert (out == 400).all()
    for _ in range(MAX_OWED_FRAMES + 1):
        far.take_into(out)  # nothing more was played: silence (a pause, nothing owed)
        assert not out.any()
    mono = np.arange(N, dtype=np.int16)
    far.put(mono, 1)
    far.take_into(out)
    np.testing.assert_array_equal(out, mono)


def test_silence_beyond_the_rings_room_is_not_written() -> None:
    """A long underrun (the playback worker stalled for seconds) puts only what the ring holds:
    the rest would be dropped as a backlog anyway, and writing it costs the playback thread."""
    far = FarEnd(N)
    room = RING_FRAMES * N - MAX_LATE_FRAMES * N  # the jitter room's silence is in already
    far.put_silence(10 * RING_FRAMES * N)
    assert far.underrun_silence == room and far.overrun == 0


def test_a_backlog_is_dropped_so_the_far_end_is_never_late() -> None:
    far = FarEnd(N)
    for k in range(MAX_BACKLOG_FRAMES + 3):
        far.put(np.full(N, k, dtype=np.int16), 1)
    out = np.zeros(N, dtype=np.int16)
    far.take_into(out)
    assert (out == 3).all()  # the oldest (the room's silence, frames 0-2) dropped ...
    assert far.dropped == (MAX_LATE_FRAMES + 3) * N  # ... the newest four kept


def test_a_late_capture_side_keeps_its_far_frames_and_a_lost_one_is_realigned() -> None:
    """The capture worker stalls for five frames (a CPU hog) while the playback worker keeps
    putting: the microphone frames wait in the capture ring, and each takes its own far frame
    when the worker catches up, so nothing is dropped and the far end stays two frames behind
    (dropping moved it 20 ms against its echo right after the linear filter took over). With
    nothing waiting (the microphone frames were lost), the same backlog is dropped."""
    for lost in (False, True):
        far = FarEnd(N)
        out = np.zeros(N, dtype=np.int16)
        taken: list[int] = []
        waiting = 0  # microphone frames captured but not yet taken
        for step in range(40):
            far.put(np.full(N, step + 1, dtype=np.int16), 1)
            waiting += 1
            if 10 <= step < 15:
                continue  # the capture worker stalls
            while waiting:
                waiting -= 1
                far.take_into(out, 0 if lost else waiting)
                taken.append(int(out[0]))
                if lost:  # the stalled frames never reached the worker: one take for all
                    waiting = 0
        if not lost:
            assert far.dropped == 0
            assert taken == [0, 0, *range(1, 39)]  # two behind, every frame in order
        else:
            assert far.dropped == 4 * N  # 8 queued, 4 kept: the oldest 4 (9-12) dropped
            assert taken[:10] == [0, 0, *range(1, 9)]
            assert taken[10:12] == [13, 14]


def test_the_far_end_starts_two_frames_behind_and_late_frames_never_move_it() -> None:
    """The jitter room (two frames) is taken at the start, so the far end never moves against
    its echo while AEC3 converges (taken at the first late frames, a move 1.0 s in cost AEC3
    another 1.4 s in the app beside a CPU hog). The playback worker then stalls twice for
    three frames while the capture worker keeps taking: the backlog covers two, the third
    take gives silence and that frame is skipped when it comes, so the far end stays exactly
    two frames behind (later, it would reach the canceller after its echo)."""
    far = FarEnd(N)
    out = np.zeros(N, dtype=np.int16)
    taken = []
    put = 0
    for step in range(60):
        if not (10 <= step < 13 or 30 <= step < 33):  # the playback worker stalls ...
            while put <= step:
                far.put(np.full(N, put + 1, dtype=np.int16), 1)  # ... and then catches up
                put += 1
        far.take_into(out)
        taken.append(int(out[0]))
    assert MAX_LATE_FRAMES == 2
    assert taken[:2] == [0, 0]  # the room: silence first
    behind = [k - 1 for k in range(60)]  # take k gets frame k - 1, put two steps before
    assert taken[2:12] == behind[2:12]
    assert taken[12] == 0  # the stall outlasted the room by one take: silence ...
    assert taken[13:32] == behind[13:32]  # ... and its frame (11) skipped: still k - 1
    assert taken[32] == 0
    assert taken[33:] == behind[33:]
    assert far.starved == 2 and far.skipped == 2 * N and far.dropped == 0


def speech(name: str) -> npt.NDArray[np.float64]:
    return read_wav_mono16(DATA / name).astype(np.float64)


def make_room(seed: int, gain_db: float = -6.0) -> npt.NDArray[np.float64]:
    """40 ms of travel, then 250 ms of reverberation (RT60), at ``gain_db``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.3 * RATE)) / RATE
    room = rng.standard_normal(len(t)) * np.exp(-6.9 * t / 0.25)
    room[: int(0.04 * RATE)] = 0
    return np.asarray(room * 10 ** (gain_db / 20) / np.sqrt(np.sum(room**2)))


def test_aec3_removes_the_echo_of_a_simulated_room() -> None:
    """Far-end speech through a room (40 ms delay, 250 ms reverberation, -6 dB): after 2 s the
    canceller's output holds at least 25 dB less echo than the microphone."""
    far = speech("speech-0-48k.wav")[: 5 * RATE]
    mic = signal.fftconvolve(far, make_room(1))[: len(far)]
    aec = EchoCanceller()
    out = np.zeros(len(far))
    for i in range(0, len(far) - N + 1, N):
        near = np.round(mic[i : i + N]).astype(np.int16)
        out[i : i + N] = aec.process(near, np.round(far[i : i + N]).astype(np.int16))
    settled = slice(2 * RATE, len(far))
    erle = 10 * np.log10(np.mean(mic[settled] ** 2) / np.mean(out[settled] ** 2))
    print(f"\nERLE {erle:.1f} dB")
    assert erle >= 25
    assert aec.frames == len(far) // N


def run_linear(
    lin: LinearCanceller, mic: npt.NDArray[np.float64], far: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    out = np.zeros(len(mic))
    b = lin.block
    for i in range(0, len(mic) - b + 1, b):
        lin.process(mic[i : i + b], far[i : i + b], out[i : i + b])
    return out


def double_talk(lin: LinearCanceller) -> tuple[float, float]:
    """Run ``lin`` on 26.8 s of far end alone through a room (-12 dB), then 5.4 s of the near
    end talking over it at full level; (ERLE over the 5 s before, echo removed in double talk)."""
    far0, near_all = speech("speech-0-48k.wav"), speech("speech-1-48k.wav")
    n = min(len(far0), len(near_all))
    half = n // 2
    far = np.concatenate([far0[:n], near_all[:half], far0[:n], far0[half:n]])
    dt0 = len(far) - (n - half)
    echo = signal.fftconvolve(far, make_room(1, -12.0))[: len(far)]
    near = np.zeros(len(far))
    near[dt0:] = near_all[half:n]
    out = run_linear(lin, echo + near, far)
    before = slice(dt0 - 5 * RATE, dt0)
    erle = 10 * np.log10(np.mean(echo[before] ** 2) / np.mean(out[before] ** 2))
    residual = out[dt0:] - near[dt0:]
    dt_erle = 10 * np.log10(np.mean(echo[dt0:] ** 2) / np.mean(residual**2))
    return float(erle), float(dt_erle)


def test_the_linear_canceller_leaves_the_near_end_alone_in_double_talk() -> None:
    """Converged on the far end alone, then the near end talks over it at full level: the
    output filter keeps the echo path (>= 20 dB removed) while the adapting one is disturbed, so
    the output is the near end (what is left differs from it by the residual echo only); the
    detector sees the double talk."""
    lin = LinearCanceller()
    erle, dt_erle = double_talk(lin)
    print(f"\nERLE {erle:.1f} dB (estimate {lin.erle_db:.1f}), in double talk {dt_erle:.1f} dB")
    assert erle >= 25
    assert lin.double_talk_blocks > 100  # the near end was detected
    assert dt_erle >= 20  # with one filter it falls to ~1 dB: the control below


def test_a_single_filter_loses_the_echo_path_in_double_talk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control for the test above: the same run with the output filter following the
    adapting one on every block (one filter, no foreground) loses the echo path in double talk."""
    from voipclient.audio import linear_aec

    monkeypatch.setattr(linear_aec, "COPY_MARGIN", float("inf"))
    _, dt_erle = double_talk(LinearCanceller())
    print(f"\nin double talk {dt_erle:.1f} dB")
    assert dt_erle < 15


def test_the_canceller_hands_over_to_the_linear_filter_and_back_when_the_room_changes() -> None:
    """The product's canceller: AEC3 while the linear filter converges, the linear filter once it
    removes 25 dB, and AEC3 again (echo still removed) within seconds of the echo path changing
    (the laptop moved)."""
    far0 = speech("speech-0-48k.wav")
    far = np.concatenate([far0, far0, far0, far0])
    cut = 2 * len(far0)
    echo = np.concatenate(
        [
            signal.fftconvolve(far[:cut], make_room(1))[:cut],
            signal.fftconvolve(far[cut:], make_room(7))[: len(far) - cut],
        ]
    )
    aec = EchoCanceller()
    out = np.zeros(len(far))
    active = np.zeros(len(far) // N, dtype=bool)
    for k, i in enumerate(range(0, len(far) - N + 1, N)):
        out[i : i + N] = aec.process(
            np.round(echo[i : i + N]).astype(np.int16), np.round(far[i : i + N]).astype(np.int16)
        )
        active[k] = aec.linear_active
    first = int(np.argmax(active))
    assert active[first] and first * N < cut  # handed over before the room changed
    after = active[cut // N :]
    back = int(np.argmin(after))
    assert not after[back]  # handed back to AEC3 ...
    assert back * N / RATE < 3 + HANDBACK_BLOCKS / 100  # ... within seconds
    assert aec.handovers >= 2
    late = slice(cut + 5 * RATE, len(far))
    erle = 10 * np.log10(np.mean(echo[late] ** 2) / np.mean(out[late] ** 2))
    took, gave = first * N / RATE, back * N / RATE
    print(f"\nhanded over at {took:.1f} s, back {gave:.1f} s after the change")
    assert erle >= 20  # echo removed in the new room throughout (AEC3, then the refit filter)


def test_a_hold_without_end_is_measured_again() -> None:
    """What looks like double talk for longer than DOUBLE_TALK_MAX_BLOCKS (5 s) without a
    break is measured again: an echo path the output no longer matches must not keep a good
    estimate frozen (the hand-over back to AEC3 waits on it)."""
    b = 480
    rng = np.random.default_rng(5)
    lin = LinearCanceller(block=b)
    h = rng.normal(0, 1, 1500) * np.exp(-np.arange(1500) / 300)
    h *= 0.5 / np.sqrt(h @ h)
    blocks = 700 + DOUBLE_TALK_MAX_BLOCKS + 200
    far = rng.normal(0, 3000, b * blocks)
    echo = np.convolve(far, h)[: len(far)]
    out = np.zeros(b)
    for k in range(blocks):
        near = echo[k * b : (k + 1) * b].copy()
        if k >= 700:  # a near end over the echo from here on, never pausing
            near += rng.normal(0, 1500, b)
        lin.process(near, far[k * b : (k + 1) * b], out)
        if k == 700 + DOUBLE_TALK_MAX_BLOCKS // 2:
            held_erle = lin.erle_db
            assert lin.hold > 0 and held_erle > 28  # held out: the estimate stays as it was
    assert lin.erle_db < 10 < held_erle  # measured again: the echo is no longer removed


class FakeHeldLinear:
    """FAKE linear canceller: a good estimate (40 dB) that it measures only when told to, as
    the real one holds its estimate out in double talk (or when the output no longer matches
    the echo path, which looks the same to it). Its output is the microphone."""

    erle_db = 40.0

    def __init__(self) -> None:
        self.measured_blocks = 0
        self.measuring = False

    def process(self, near: np.ndarray, far: np.ndarray, out: np.ndarray) -> None:
        out[:] = near
        self.measured_blocks += self.measuring


def test_a_held_estimate_never_hands_the_microphone_over() -> None:
    """A hand-over needs 250 ms of blocks that measured the estimate: held blocks (a frozen,
    possibly stale estimate) neither count nor reset. Once handed over on a stale 28.2 dB, the
    app sent the echo on with 0.8 dB removed."""
    aec = EchoCanceller()
    fake = FakeHeldLinear()
    aec.linear = fake  # type: ignore[assignment]
    rng = np.random.default_rng(3)
    frame = (rng.normal(0, 3000, N)).astype(np.int16)
    for _ in range(100):  # 2 s of held blocks at 40 dB
        aec.process(frame, frame)
    assert not aec.linear_active
    fake.measuring = True
    frames = 0
    while not aec.linear_active:
        aec.process(frame, frame)
        frames += 1
    blocks_per_frame = N // (RATE // 100)
    assert frames == -(-HANDOVER_BLOCKS // blocks_per_frame)  # 250 ms of measured blocks
    assert aec.handovers == 1


def test_the_linear_output_lines_up_with_aec3s_sample_for_sample() -> None:
    """AEC3 delays the microphone by its band-split filters; the linear output is delayed by the
    same amount, measured, so a hand-over does not jump in time."""
    latency = aec3_latency(RATE)
    assert 0 < latency < N  # 430 samples (9 ms) with pywebrtc-audio 0.2
    mic = np.round(np.random.default_rng(3).standard_normal(40 * N) * 3000).astype(np.int16)
    silent = np.zeros(N, dtype=np.int16)
    aec = EchoCanceller()
    out = np.zeros(len(mic))
    for i in range(0, len(mic), N):
        if i == 20 * N:
            aec.linear_active = True  # the second half from the linear filter (no far end:
            # the microphone itself), within the second it keeps it without an estimate
        out[i : i + N] = aec.process(mic[i : i + N], silent)
    x = mic.astype(np.float64)
    for start in (10 * N, 30 * N):  # AEC3's half, the linear filter's half
        seg = out[start : start + 8 * N]
        lags = [float(seg @ x[start - d : start - d + len(seg)]) for d in range(N)]
        assert int(np.argmax(lags)) == latency
