"""CPU of one client's audio path, against bare Opus measured in the same run.

Receive: 10 speakers in 3 channels (4 + 3 + 3). Each speaker's speech is encoded beforehand by a
real ``VoiceSender`` (Opus, frame numbers, copies at the redundancy level) and sealed by a real
``SenderKey`` with the relay's s2c hop MAC; the timed loop is, per output frame, what the bot
does: ``VoiceReceiver.receive`` (hop MAC, replay window, AES-GCM) -> ``VoicePlayback.push``
(payload decode, loss meter, jitter buffer, copies) for each speaker, then
``VoicePlayback.render_into`` (jitter-buffer decision, Opus decode, mixer, limiter) and the write
into the playback ring, plus the loss-report check. Reference: bare ``OpusDecoder.decode`` of the
same 10 packets per frame.

Transmit: to 3 channels at once, per frame: capture ring read -> ``TransmitGate.update`` ->
``VoiceSender.encode`` (Opus once) -> ``SenderKeyScheduler.seal`` + c2s hop MAC per channel (what
``SecureSession.seal_voice`` does). Reference: bare ``OpusEncoder.encode`` of the same frames.

Both run as fast as possible over 10 s of audio; ``time.process_time`` per run, median of 5 runs.
% of one core at real time = CPU seconds / audio seconds. Per-stage figures come from
``perf_counter`` around each stage in the same loop (wall time, so they include a little noise).
Configurations: 20 ms and 10 ms frames, redundancy tier 0 (clean) and tier 4 (compact copies of
the frames 1, 2, 3 back from the second encoder at 16 kb/s, which the transmit side runs then).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from voipclient.audio.engine import RING_SAMPLES
from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.mixer import Mixer
from voipclient.audio.opus import OpusDecoder, OpusEncoder, copy_encoder_factory, frame_samples
from voipclient.audio.payload import decode_payload
from voipclient.audio.redundancy import COPY_BITRATE, LEVEL_CLEAN, LEVEL_DISTANCES, RedundancyLevel
from voipclient.audio.ring import SampleRing
from voipclient.audio.voice import TransmitGate, VoicePlayback, VoiceSender
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.media import PTYPE_VOICE, SenderKey, VoiceReceiver
from voipclient.crypto.rotation import SenderKeyScheduler

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
AUDIO_S = 10.0  # seconds of audio per run
RUNS = 5
SPEAKERS = 10
CHANNELS = (2, 3, 4)
TOP = RedundancyLevel(0, LEVEL_DISTANCES[-1], COPY_BITRATE)


def speech(seconds: float) -> np.ndarray:
    clips = [read_wav_mono16(DATA / f"speech-{i}-48k.wav") for i in (0, 1)]
    joined = np.concatenate(clips)
    reps = int(seconds * 48_000 * 2 // len(joined)) + 1
    return np.tile(joined, reps)


def frames_of(signal: np.ndarray, n: int, count: int, offset: int) -> list[np.ndarray]:
    return [signal[offset + k * n : offset + (k + 1) * n].copy() for k in range(count)]


def median_runs(fn: Any, ref: Any) -> tuple[float, float, float, dict[str, float]]:
    """``fn`` (which returns its stage wall times) and the reference ``ref``, alternated RUNS
    times: median CPU seconds of each, median of the per-pair ratios, median stage times."""
    cpu, refs, ratios, stages = [], [], [], []
    for _ in range(RUNS):
        t0 = time.process_time()
        stages.append(fn())
        t1 = time.process_time()
        ref()
        t2 = time.process_time()
        cpu.append(t1 - t0)
        refs.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    keys = stages[0].keys()
    return (
        statistics.median(cpu),
        statistics.median(refs),
        statistics.median(ratios),
        {k: statistics.median(s[k] for s in stages) for k in keys},
    )


# --- receive ------------------------------------------------------------------------------------


def receive_row(
    frame_ms: int, level: RedundancyLevel, pcm: np.ndarray, stereo: bool = False
) -> dict[str, Any]:
    """``stereo``: the desktop app's output (interleaved stereo, the three channels placed
    left / centre / right, the first one the priority channel ducking the others)."""
    n = frame_samples(frame_ms)
    width = 2 if stereo else 1
    count = int(AUDIO_S * 1000 / frame_ms)
    payloads: list[list[bytes]] = []
    for s in range(SPEAKERS):
        sender = VoiceSender(
            OpusEncoder(frame_ms=frame_ms),
            first_frame_no=1000 * s,
            copy_encoder=copy_encoder_factory(frame_ms),
        )
        sender.set_level(level)
        payloads.append([sender.encode(f) for f in frames_of(pcm, n, count, s * 33_600)])
    packets = [[decode_payload(p).opus for p in row] for row in payloads]  # type: ignore[union-attr]
    t = frame_ms / 1000.0
    sids = [100 + s for s in range(SPEAKERS)]
    chans = [CHANNELS[s % len(CHANNELS)] for s in range(SPEAKERS)]

    def run() -> dict[str, float]:
        _, k_s2c = derive_hop_keys(os.urandom(32))
        s2c = HopMac(k_s2c)
        receiver = VoiceReceiver(k_s2c)
        datagrams: list[list[bytes]] = [[] for _ in range(count)]
        for s in range(SPEAKERS):
            key = SenderKey(chans[s], sids[s])
            base = os.urandom(64)
            key.new_generation(1, base)
            receiver.add_key(chans[s], sids[s], 1, 0, base, 0.0)
            for k in range(count):
                datagrams[k].append(s2c.append(key.seal(PTYPE_VOICE, payloads[s][k])))
        mixer = Mixer(frame_samples=n, output_channels=width)
        if stereo:
            for channel, pan in zip(CHANNELS, (-1.0, 0.0, 1.0), strict=True):
                mixer.set_channel_pan(channel, pan)
            mixer.set_priority(CHANNELS[0])
        playback = VoicePlayback(mixer, lambda: OpusDecoder(frame_ms=frame_ms), frame_ms=frame_ms)
        ring = SampleRing(RING_SAMPLES)
        out = np.zeros(n * width, dtype=np.int16)
        device = np.zeros(n * width, dtype=np.int16)
        pc = time.perf_counter
        t_open = t_push = t_render = 0.0
        for k in range(count):
            now = 1.0 + k * t
            a = pc()
            frames = [receiver.receive(d, now) for d in datagrams[k]]
            b = pc()
            for f in frames:
                assert f is not None
                playback.push(f.sender_id, f.channel_id, f.payload, f.last, now)
            c = pc()
            playback.render_into(out, now)
            ring.write(out)
            playback.loss_reports(now)
            ring.read_into(device)  # the device callback's side
            d = pc()
            t_open += b - a
            t_push += c - b
            t_render += d - c
        played = sum(st.jitter.played for st in playback.stats().streams)
        assert played >= SPEAKERS * (count - 2), played
        return {"open": t_open, "push": t_push, "render": t_render}

    def reference() -> None:
        decoders = [OpusDecoder(frame_ms=frame_ms) for _ in range(SPEAKERS)]
        for k in range(count):
            for s in range(SPEAKERS):
                decoders[s].decode(packets[s][k])

    cpu, ref, ratio, stages = median_runs(run, reference)
    per_frame = 1e6 / count
    return {
        "path": "receive 10 speakers / 3 channels" + (", stereo placed" if stereo else ""),
        "frame_ms": frame_ms,
        "tier": level.tier,
        "payload_bytes": round(statistics.mean(len(p) for p in payloads[0][8:])),
        "core_pct": round(100 * cpu / AUDIO_S, 2),
        "us_per_frame": round(cpu * per_frame, 1),
        "ref_opus_core_pct": round(100 * ref / AUDIO_S, 2),
        "ref_opus_us_per_frame": round(ref * per_frame, 1),
        "ratio_to_ref": round(ratio, 2),
        "open_us": round(stages["open"] * per_frame, 1),
        "push_us": round(stages["push"] * per_frame, 1),
        "render_us": round(stages["render"] * per_frame, 1),
        "non_opus_us": round((ratio - 1) * ref * per_frame, 1),
    }


def mixer_us() -> dict[str, float]:
    """The mixer alone (10 decoded frames added, one mixed), µs per 20 ms frame, median of
    RUNS: mono (milestone 1), stereo with every channel centred, and stereo placed left /
    centre / right with a priority channel ducking the others."""
    n = 960
    rng = np.random.default_rng(7)
    frames = [rng.integers(-3000, 3000, n).astype(np.int16) for _ in range(SPEAKERS)]
    out: dict[str, float] = {}
    for name, width, placed in (
        ("mono", 1, False),
        ("stereo_centred", 2, False),
        ("stereo_placed_priority", 2, True),
    ):
        mixer = Mixer(frame_samples=n, output_channels=width)
        if placed:
            for channel, pan in zip(CHANNELS, (-1.0, 0.0, 1.0), strict=True):
                mixer.set_channel_pan(channel, pan)
            mixer.set_priority(CHANNELS[0])
        buf = np.zeros(n * width, dtype=np.int16)
        reps = 2000
        times = []
        for run in range(RUNS):
            t0 = time.perf_counter()
            for k in range(run * reps, (run + 1) * reps):  # frame numbers keep rising
                for s, pcm in enumerate(frames):
                    mixer.add(100 + s, CHANNELS[s % len(CHANNELS)], k, pcm)
                mixer.mix_into(buf)
            times.append((time.perf_counter() - t0) / reps * 1e6)
        assert mixer.stale == 0 and mixer.duplicates == 0
        out[name] = round(statistics.median(times), 1)
    return out


# --- transmit -----------------------------------------------------------------------------------


def transmit_row(frame_ms: int, level: RedundancyLevel, pcm: np.ndarray) -> dict[str, Any]:
    n = frame_samples(frame_ms)
    count = int(AUDIO_S * 1000 / frame_ms)
    frames = frames_of(pcm, n, count, 0)
    t = frame_ms / 1000.0
    talk = list(CHANNELS)

    def run() -> dict[str, float]:
        k_c2s, _ = derive_hop_keys(os.urandom(32))
        c2s = HopMac(k_c2s)
        scheduler = SenderKeyScheduler(42)
        for c in CHANNELS:
            scheduler.open_channel(c, {100, 101, 102}, 0.0)
        scheduler.take_actions()
        sender = VoiceSender(
            OpusEncoder(frame_ms=frame_ms), copy_encoder=copy_encoder_factory(frame_ms)
        )
        sender.set_level(level)
        gate = TransmitGate()
        ring = SampleRing(RING_SAMPLES)
        frame = np.zeros(n, dtype=np.int16)
        pc = time.perf_counter
        t_gate = t_encode = t_seal = 0.0
        sent = 0
        for k in range(count):
            now = 1.0 + k * t
            ring.write(frames[k])  # the device callback's side
            a = pc()
            ring.read_into(frame)
            decision = gate.update(talk, now)
            b = pc()
            payload = sender.encode(frame)
            c = pc()
            datagrams = [
                c2s.append(scheduler.seal(ch, PTYPE_VOICE, payload, now))
                for ch in decision.targets
                if scheduler.is_open(ch)
            ]
            scheduler.take_actions()
            d = pc()
            sent += len(datagrams)
            t_gate += b - a
            t_encode += c - b
            t_seal += d - c
        assert sent == count * len(CHANNELS)
        return {"gate": t_gate, "encode": t_encode, "seal": t_seal}

    def reference() -> None:
        enc = OpusEncoder(frame_ms=frame_ms)
        enc.set_loss_percent(level.loss_hint_percent)
        for f in frames:
            enc.encode(f)

    cpu, ref, ratio, stages = median_runs(run, reference)
    per_frame = 1e6 / count
    return {
        "path": "transmit to 3 channels",
        "frame_ms": frame_ms,
        "tier": level.tier,
        "payload_bytes": None,
        "core_pct": round(100 * cpu / AUDIO_S, 2),
        "us_per_frame": round(cpu * per_frame, 1),
        "ref_opus_core_pct": round(100 * ref / AUDIO_S, 2),
        "ref_opus_us_per_frame": round(ref * per_frame, 1),
        "ratio_to_ref": round(ratio, 2),
        "gate_ring_us": round(stages["gate"] * per_frame, 1),
        "encode_us": round(stages["encode"] * per_frame, 1),
        "seal_3x_us": round(stages["seal"] * per_frame, 1),
        "non_opus_us": round((ratio - 1) * ref * per_frame, 1),
    }


def main() -> dict[str, Any]:
    pcm = speech(AUDIO_S + 10)
    rows = []
    print(
        f"{'path':<34} {'frame':>5} {'tier':>4} {'core%':>6} {'µs/frame':>9} "
        f"{'opus ref%':>9} {'ratio':>6}  stages (µs/frame)"
    )
    for path in ("receive", "transmit"):
        for frame_ms in (20, 10):
            for level in (LEVEL_CLEAN, TOP):
                fn = receive_row if path == "receive" else transmit_row
                row = fn(frame_ms, level, pcm)
                rows.append(row)
                stages = {
                    k: v
                    for k, v in row.items()
                    if k.endswith("_us") and k not in {"us_per_frame", "ref_opus_us_per_frame"}
                }
                print(
                    f"{row['path']:<34} {frame_ms:>5} {level.tier:>4} {row['core_pct']:>6} "
                    f"{row['us_per_frame']:>9} {row['ref_opus_core_pct']:>9} "
                    f"{row['ratio_to_ref']:>6}  {stages}",
                    flush=True,
                )
    # the desktop app's output: stereo, channels placed, a priority channel ducking the others
    placed = receive_row(20, LEVEL_CLEAN, pcm, stereo=True)
    rows.append(placed)
    print(
        f"{placed['path']:<34} {20:>5} {0:>4} {placed['core_pct']:>6} "
        f"{placed['us_per_frame']:>9} {placed['ref_opus_core_pct']:>9} "
        f"{placed['ratio_to_ref']:>6}  render {placed['render_us']}",
        flush=True,
    )
    mixing = mixer_us()
    print(f"mixer alone, 10 speakers / 3 channels, µs per 20 ms frame: {mixing}")
    rx = next(r for r in rows if r["path"].startswith("receive") and r["frame_ms"] == 20)
    tx = next(r for r in rows if r["path"].startswith("transmit") and r["frame_ms"] == 20)
    figures: dict[str, Any] = {
        "receive_10x3_20ms_core_pct": rx["core_pct"],
        "receive_10x3_20ms_ratio_to_opus": rx["ratio_to_ref"],
        "transmit_3ch_20ms_core_pct": tx["core_pct"],
        "transmit_3ch_20ms_us_per_frame": tx["us_per_frame"],
        "transmit_3ch_20ms_ratio_to_opus": tx["ratio_to_ref"],
        "receive_target_core_pct": 15.0,
        "receive_10x3_20ms_stereo_core_pct": placed["core_pct"],
        "stereo_placement_added_core_pct": round(placed["core_pct"] - rx["core_pct"], 2),
        "mixer_us": mixing,
        "mixer_stereo_added_core_pct": round(
            (mixing["stereo_placed_priority"] - mixing["mono"]) / 20_000 * 100, 3
        ),
        "stereo_added_target_core_pct": 1.0,
        "rows": rows,
    }
    print(json.dumps({"benchmark": "client_cpu", **figures}))
    return figures


if __name__ == "__main__":
    main()
