"""Speech quality through the whole product under packet loss, jitter and a bottleneck
(BENCHMARKS.md §1, issue 15).

Path: bot A's capture (WAV input, 80 Hz high-pass) → gate → Opus (+ the second encoder's compact
copies) → AES-GCM + hop MAC → UDP → **lossy proxy** → a real relay process → UDP → bot B's E2E
open → jitter buffer → decoder (copies, FEC, concealment) → mixer → WAV output. Loss reports go
from B to A over the relay's control channel and A's redundancy policy reacts, exactly as in use.

Each run is a **fresh session**: speech starts 0.2 s after the talker's audio does, so the first
seconds are scored too (no warm-up). The input is 4 utterances (the two speech samples cut in
halves at their quietest point), each aligned to the output by cross-correlation and scored with
PESQ-WB (P.862.2, 16 kHz); ``first 3 s`` scores the first 3 s of the first utterance alone,
``after 3 s`` the three utterances that start later. Every condition runs twice in the same run:
the product's policy (``adaptive``: compact copies, cold start, congestion control) and the
milestone-1 policy (``legacy``: full copies, nothing until the first 2 s report), beside plain
Opus 32 kb/s (concealment only) computed offline on the same loss model.

Loss models: random (Bernoulli) and bursty (Gilbert: mean burst 2 frames) on the talker's uplink.
Jitter: each voice datagram is delayed by a uniform random 0..J ms. Bottleneck: voice coming down
to the listener passes a token bucket of 64 kb/s counted on IPv4 bytes (as an nftables ``limit
rate`` rule) with 2 % random loss below it.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from netem import Impairment, LossModel, LossyProxy
from pesq import pesq
from pystoi import stoi
from scipy.signal import resample_poly

from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.opus import OpusDecoder, OpusEncoder
from voipclient.audio.redundancy import (
    COPY_BITRATE,
    LEVEL_DISTANCES,
    RedundancyLevel,
    bitrate_cost,
)
from voipclient.bot import BotOptions, VoiceBot, listen_while_talking

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
RATE = 48_000
N = 960
LEAD_S = 0.2  # s of silence before the first utterance (the session starts with speech)
GAP_S = 0.6
FIRST_S = 3.0
START_LINE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+) .* pin=(?P<pin>\S+)$")
WHEN = (
    "loss < 1 %",
    "1-3 % random loss (legacy only: FEC hint; adaptive: tier 2)",
    ">= 3 % loss, or bursty; adaptive: >= 1 %, and the cold start",
    ">= 8 %, or bursty and >= 3 %",
    ">= 15 % (bursty: 1,2,4), or bursty and >= 5 %",
)
POLICIES = ("adaptive", "legacy")


@dataclass(frozen=True)
class Condition:
    label: str
    loss: float
    burst: float  # mean burst length (1 = random)
    jitter_ms: float
    down_rate_bps: int = 0  # a bottleneck on the listener's side
    down_loss: float = 0.0

    @property
    def key(self) -> str:
        if not self.jitter_ms:
            return self.label
        return f"{self.label} + {self.jitter_ms:.0f} ms jitter"


CONDITIONS = [
    Condition("0% random", 0.0, 1.0, 0.0),
    Condition("5% random", 0.05, 1.0, 0.0),
    Condition("10% random", 0.10, 1.0, 0.0),
    Condition("20% random", 0.20, 1.0, 0.0),
    Condition("10% bursty", 0.10, 2.0, 0.0),
    Condition("20% bursty", 0.20, 2.0, 0.0),
    Condition("bottleneck 64 kb/s + 2% random", 0.0, 1.0, 0.0, 64_000, 0.02),
    Condition("10% random", 0.10, 1.0, 50.0),
]


# --- utterances ------------------------------------------------------------------------------


def utterances() -> list[np.ndarray]:
    """The two samples, each cut in two at the quietest 100 ms around its middle."""
    out = []
    for name in ("speech-0-48k.wav", "speech-1-48k.wav"):
        x = read_wav_mono16(DATA / name)
        win = RATE // 10
        mid = len(x) // 2
        lo, hi = mid - 2 * RATE, mid + 2 * RATE
        energy = [
            float(np.sum(x[i : i + win].astype(np.float64) ** 2)) for i in range(lo, hi, win // 4)
        ]
        cut = lo + int(np.argmin(energy)) * (win // 4) + win // 2
        out += [x[:cut], x[cut:]]
    return out


def build_input(utts: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """A short lead-in, then each utterance followed by a short gap; the utterance offsets."""
    parts = [np.zeros(int(LEAD_S * RATE), np.int16)]
    offsets = []
    pos = len(parts[0])
    for u in utts:
        offsets.append(pos)
        parts += [u, np.zeros(int(GAP_S * RATE), np.int16)]
        pos += len(u) + int(GAP_S * RATE)
    return np.concatenate(parts), offsets


def write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.astype("<i2").tobytes())


# --- scoring ------------------------------------------------------------------------------------


def to16k(x: np.ndarray) -> np.ndarray:
    return resample_poly(x.astype(np.float64), 1, 3)


def score(ref: np.ndarray, deg: np.ndarray) -> tuple[float, float]:
    r, d = to16k(ref), to16k(deg)
    n = min(len(r), len(d))
    return float(pesq(16000, r[:n], d[:n], "wb")), float(stoi(r[:n], d[:n], 16000))


def locate(utt: np.ndarray, recording: np.ndarray, lo: int, hi: int) -> int:
    """Where ``utt`` starts in ``recording`` (searching starts lo..hi), by cross-correlation."""
    lo = max(0, lo)
    seg = recording[lo : min(len(recording), hi + len(utt))].astype(np.float64)
    u = utt.astype(np.float64)
    n = len(seg) + len(u)
    corr = np.fft.irfft(np.fft.rfft(seg, n) * np.conj(np.fft.rfft(u, n)), n)[: max(1, hi - lo)]
    return lo + int(np.argmax(corr))


def score_recording(
    recording: np.ndarray, utts: list[np.ndarray], offsets: list[int]
) -> tuple[list[float], float]:
    """Each utterance's PESQ-WB, and that of the first 3 s of the first one alone."""
    scores = []
    first = 0.0
    # the first utterance may appear anywhere after its offset (connection + buffering delays)
    start = locate(utts[0], recording, offsets[0], offsets[0] + 6 * RATE)
    delay = start - offsets[0]
    for i, (utt, off) in enumerate(zip(utts, offsets, strict=True)):
        at = locate(utt, recording, off + delay - RATE // 4, off + delay + RATE // 2)
        deg = recording[at : at + len(utt)]
        if len(deg) < len(utt):
            deg = np.concatenate([deg, np.zeros(len(utt) - len(deg), np.int16)])
        scores.append(score(utt, deg)[0])
        if i == 0:
            n = int(FIRST_S * RATE)
            first = score(utt[:n], deg[:n])[0]
        delay = at - off
    return scores, first


# --- reference: plain Opus -----------------------------------------------------------------------


def plain_opus(utt: np.ndarray, model: LossModel, fec: bool) -> np.ndarray:
    enc = OpusEncoder()
    if fec:
        enc.set_loss_percent(round(model.loss * 100))
    dec = OpusDecoder()
    frames = len(utt) // N
    x = np.concatenate([utt[: frames * N], np.zeros(2 * N, np.int16)])
    packets = [enc.encode(x[k * N : (k + 1) * N]) for k in range(frames + 2)]
    lost = [model.drop() for _ in packets]
    out = []
    for k, packet in enumerate(packets):
        if not lost[k]:
            out.append(dec.decode(packet))
        elif fec and k + 1 < len(packets) and not lost[k + 1]:
            out.append(dec.decode_fec(packets[k + 1]))
        else:
            out.append(dec.conceal())
    y = np.concatenate(out)
    lookahead = enc.lookahead_samples
    return y[lookahead : lookahead + len(utt)]


def reference(cond: Condition, utts: list[np.ndarray]) -> float:
    """Plain Opus 32 kb/s with concealment over the same loss model (mean PESQ-WB)."""
    loss = cond.loss or cond.down_loss
    scores = [
        score(u, plain_opus(u, LossModel(loss, cond.burst, seed=1000 + i), fec=False))[0]
        for i, u in enumerate(utts)
    ]
    return statistics.mean(scores)


# --- the product ---------------------------------------------------------------------------------


async def run_condition(
    cond: Condition,
    policy: str,
    index: int,
    server: dict[str, Any],
    input_wav: Path,
    seconds: float,
    workdir: Path,
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any], LossyProxy]:
    proxy = LossyProxy(
        Impairment(
            cond.loss,
            cond.burst,
            cond.jitter_ms,
            down_rate_bps=cond.down_rate_bps,
            down_loss=cond.down_loss,
        ),
        seed=7 + CONDITIONS.index(cond),  # both policies meet the same losses
    )
    udp = await proxy.start((server["host"], server["port"]))
    bottleneck = bool(cond.down_rate_bps or cond.down_loss)
    channel = f"Q{index}"
    common = {"host": server["host"], "port": server["port"], "pin": server["pin"]}
    out_wav = workdir / f"out{index}.wav"
    listener = VoiceBot(
        BotOptions(
            **common,
            name=f"listener{index}",
            join=[channel],
            talk=[],
            record=out_wav,
            seconds=seconds + 30.0,  # a bound: it stops 0.5 s after the talker
            redundancy=policy,
            udp_addr=udp if bottleneck else None,
        )
    )
    talker = VoiceBot(
        BotOptions(
            **common,
            name=f"talker{index}",
            join=[channel],
            talk=[channel],
            play=input_wav,
            seconds=seconds,
            udp_addr=None if bottleneck else udp,
            start_delay_s=1.0,
            redundancy=policy,
        )
    )

    lstats, tstats = await listen_while_talking(listener, talker)
    proxy.close()
    return read_wav_mono16(out_wav), lstats, tstats, proxy


def start_relay(workdir: Path, channels: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cmd = [sys.executable, "-m", "voipclient.server", "--port", "0", "--data-dir", str(workdir)]
    for i in range(channels):
        cmd += ["--channel", f"Q{i}"]
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "server.out"
    with out.open("wb") as fo:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = out.read_text()
        if "\n" in text:
            m = START_LINE.search(text.splitlines()[0])
            assert m is not None, text
            return proc, {"host": m["host"], "port": int(m["port"]), "pin": m["pin"]}
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("relay did not start")


async def run_all(workdir: Path) -> list[dict[str, Any]]:
    utts = utterances()
    signal_in, offsets = build_input(utts)
    input_wav = workdir / "input.wav"
    write_wav(input_wav, signal_in)
    seconds = len(signal_in) / RATE + 0.5
    runs = [(c, p) for c in CONDITIONS for p in POLICIES]
    proc, server = start_relay(workdir / "relay", len(runs))
    clean = reference(CONDITIONS[0], utts)  # plain Opus 32 kb/s on a clean path
    rows: list[dict[str, Any]] = []
    clean_kbps: dict[str, float] = {}
    try:
        # one talker/listener pair at a time: several pairs in one process add scheduling
        # jitter that a single client does not have
        for i, (cond, policy) in enumerate(runs):
            rec, lstats, tstats, proxy = await run_condition(
                cond, policy, i, server, input_wav, seconds, workdir
            )
            scores, first = score_recording(rec, utts, offsets)
            (stream,) = lstats["streams"] or [{}]
            levels = tstats["redundancy_level_changes"]
            kbps = tstats["payload_bits_per_s"] / 1000
            if cond.loss == 0 and not cond.down_rate_bps and not cond.jitter_ms:
                clean_kbps[policy] = kbps
            last_change = levels[-1]["t"] - levels[0]["t"] if levels else 0.0
            down = proxy.down_dropped + proxy.down_passed
            row = {
                "condition": cond.key,
                "policy": policy,
                "pesq_all": round(statistics.mean(scores), 2),
                "pesq_first3s": round(first, 2),
                "pesq_after3s": round(statistics.mean(scores[1:]), 2),
                "pesq_min": round(min(scores), 2),
                "opus_plc_pesq": round(reference(cond, utts), 2),
                "opus_clean_pesq": round(clean, 2),
                "talker_payload_kbps": round(kbps, 1),
                "x_clean_bitrate": round(kbps / clean_kbps[policy], 2)
                if policy in clean_kbps
                else None,
                "copy_kbps": round(tstats.get("copy_bits_per_s", 0) / 1000, 1),
                "final_level": _level_text(levels[-1]) if levels else "clean",
                "last_level_change_s": round(last_change, 2),
                "congestion_events": tstats.get("congestion_events", 0),
                "measured_loss_pct": round(
                    100
                    * (proxy.dropped + proxy.down_dropped)
                    / max(1, proxy.dropped + proxy.passed + down),
                    1,
                ),
                "bottleneck_delivered_kbps": round(proxy.down_bytes * 8 / 1000 / seconds, 1)
                if cond.down_rate_bps
                else None,
                "jb_delay_ms": stream.get("mean_delay_ms"),
                "jb_target_ms": stream.get("target_delay_ms"),
                "redundancy_depth": stream.get("redundancy_depth"),
                "recovered_from_copies": stream.get("recovered_from_copies"),
                "concealed": stream.get("concealed"),
            }
            rows.append(row)
            print(
                f"{row['condition']:<32} {policy:<8} PESQ all {row['pesq_all']:.2f} "
                f"first3s {row['pesq_first3s']:.2f} after {row['pesq_after3s']:.2f} | "
                f"Opus PLC {row['opus_plc_pesq']:.2f} clean {row['opus_clean_pesq']:.2f} | "
                f"{row['talker_payload_kbps']} kb/s (x{row['x_clean_bitrate']}) "
                f"{row['final_level']} cong {row['congestion_events']} "
                f"loss {row['measured_loss_pct']}% jb {row['jb_delay_ms']} ms",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def _level_text(change: dict[str, Any]) -> str:
    copies = ",".join(map(str, change["distances"]))
    if not copies:
        text = f"hint {change['hint']}" if change["hint"] else "clean"
    else:
        size = f"@{change['copy_bitrate'] // 1000}k" if change.get("copy_bitrate") else " full"
        text = f"copies {copies}{size}"
    if change.get("bitrate_cap"):
        text += f", primary {change['bitrate_cap'] // 1000}k"
    return text


def targets(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Issue 15's targets, held against plain Opus 32 kb/s clean in the same run."""
    by = {(r["condition"], r["policy"]): r for r in rows}
    a10, a20 = by["10% random", "adaptive"], by["20% random", "adaptive"]
    clean = a10["opus_clean_pesq"]
    neck = by["bottleneck 64 kb/s + 2% random", "adaptive"]
    a0 = by["0% random", "adaptive"]
    return {
        "10% random, from the first second: within 0.5 of plain clean": a10["pesq_all"]
        >= clean - 0.5,
        "10% random, after 3 s: within 0.3 of plain clean": a10["pesq_after3s"] >= clean - 0.3,
        "10% random: bitrate <= 2x clean": (a10["x_clean_bitrate"] or 99) <= 2.0,
        "20% random: bitrate <= 2.5x clean": (a20["x_clean_bitrate"] or 99) <= 2.5,
        "bottleneck 64 kb/s + 2%: PESQ >= 3.0": neck["pesq_all"] >= 3.0,
        "bottleneck: better than the legacy policy": neck["pesq_all"]
        > by["bottleneck 64 kb/s + 2% random", "legacy"]["pesq_all"],
        "clean path: clean from 3 s on": a0["final_level"] == "clean"
        and a0["last_level_change_s"] <= 3.0,
        "clean path: PESQ unchanged (within 0.1 of legacy)": a0["pesq_all"]
        >= by["0% random", "legacy"]["pesq_all"] - 0.1,
        "10% random: wait for copies <= 40 ms": (a10["redundancy_depth"] or 99) <= 2,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="voice-quality-") as tmp:
        rows = asyncio.run(run_all(Path(tmp)))
    met = targets(rows)
    costs = [
        {
            "tier": tier,
            "when": WHEN[tier],
            "loss_hint_pct": "measured loss" if tier == 1 else 0,
            "copies_of_frames_back": ",".join(map(str, d)) or "none",
            "compact_extra_kbps_at_32k_20ms": bitrate_cost(
                RedundancyLevel(0, d, COPY_BITRATE), 32_000, 20
            )
            / 1000,
            "full_extra_kbps_at_32k_20ms": bitrate_cost(RedundancyLevel(0, d), 32_000, 20) / 1000,
        }
        for tier, d in enumerate(LEVEL_DISTANCES)
    ]
    print(
        json.dumps(
            {
                "rows": rows,
                "redundancy_levels": costs,
                "targets_met": met,
                "all_targets_met": all(met.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
