"""Speech quality through the whole product under packet loss and jitter (BENCHMARKS.md §1).

Path: bot A's capture (WAV input, 80 Hz high-pass) → gate → Opus → AES-GCM + hop MAC → UDP →
**lossy proxy** → a real relay process → UDP → bot B's E2E open → jitter buffer → decoder (copies,
FEC, concealment) → mixer → WAV output. Loss reports go from B to A over the relay's control
channel and A's redundancy policy reacts, exactly as in use.

Each condition sends a 3 s warm-up (so the first loss reports, every 2 s, have reached the
talker: in a conversation the path is known from earlier talk spurts), then 4 utterances (the two
speech samples cut in halves at their quietest point), each aligned to the output by
cross-correlation and scored with PESQ-WB (P.862.2, 16 kHz) and STOI. Reference columns: plain
Opus (48 kHz mono, 20 ms, 32 kb/s, VOIP) over the same loss model, with concealment only
(Mumble) and with in-band FEC (loss hint = loss), computed in the same run.

Loss models: random (Bernoulli) and bursty (Gilbert: mean burst 2 frames). Jitter: each voice
datagram is delayed by a uniform random 0..J ms (so datagrams are reordered too). Loss and jitter
apply to the talker → relay voice datagrams only (hop control passes untouched).
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
from voipclient.audio.redundancy import LEVEL_DISTANCES, RedundancyLevel, bitrate_cost
from voipclient.bot import BotOptions, VoiceBot

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
RATE = 48_000
N = 960
WARMUP_S = 3.0
GAP_S = 0.6
START_LINE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+) .* pin=(?P<pin>\S+)$")
WHEN = (
    "loss < 1 %",
    "1-3 % random loss",
    ">= 3 % loss, or bursty",
    ">= 8 %, or bursty and >= 3 %",
    ">= 15 %, or bursty and >= 5 %",
)
TARGETS = {"0% random": 4.0, "10% random": 3.6, "20% random": 3.2, "10% bursty": 3.0}


@dataclass(frozen=True)
class Condition:
    label: str
    loss: float
    burst: float  # mean burst length (1 = random)
    jitter_ms: float

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
    Condition("0% random", 0.0, 1.0, 20.0),
    Condition("0% random", 0.0, 1.0, 50.0),
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
    """Warm-up speech, then each utterance followed by a short gap; the utterance offsets."""
    warm = read_wav_mono16(DATA / "speech-1-48k.wav")[-int(WARMUP_S * RATE) :]
    parts = [warm, np.zeros(int(GAP_S * RATE), np.int16)]
    offsets = []
    pos = sum(len(p) for p in parts)
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
) -> list[tuple[float, float]]:
    """Find the warm-up's delay first, then each utterance near its expected place."""
    scores = []
    # the first utterance may appear anywhere after its offset (connection + buffering delays)
    start = locate(utts[0], recording, offsets[0], offsets[0] + 6 * RATE)
    delay = start - offsets[0]
    for utt, off in zip(utts, offsets, strict=True):
        at = locate(utt, recording, off + delay - RATE // 4, off + delay + RATE // 2)
        deg = recording[at : at + len(utt)]
        if len(deg) < len(utt):
            deg = np.concatenate([deg, np.zeros(len(utt) - len(deg), np.int16)])
        scores.append(score(utt, deg))
        delay = at - off
    return scores


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


def reference(cond: Condition, utts: list[np.ndarray]) -> dict[str, float]:
    res: dict[str, float] = {}
    for fec in (False, True):
        p, s = [], []
        for i, u in enumerate(utts):
            deg = plain_opus(u, LossModel(cond.loss, cond.burst, seed=1000 + i), fec)
            a, b = score(u, deg)
            p.append(a)
            s.append(b)
        tag = "fec" if fec else "plc"
        res[f"opus_{tag}_pesq"] = statistics.mean(p)
        res[f"opus_{tag}_stoi"] = statistics.mean(s)
    return res


# --- the product ---------------------------------------------------------------------------------


async def run_condition(
    cond: Condition,
    index: int,
    server: dict[str, Any],
    input_wav: Path,
    seconds: float,
    workdir: Path,
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any], LossyProxy]:
    proxy = LossyProxy(Impairment(cond.loss, cond.burst, cond.jitter_ms), seed=7 + index)
    udp = await proxy.start((server["host"], server["port"]))
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
            seconds=seconds + 2.0,
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
            udp_addr=udp,
            start_delay_s=1.0,
        )
    )

    async def go(bot: VoiceBot, delay: float) -> dict[str, Any]:
        await asyncio.sleep(delay)
        try:
            await bot.run()
        finally:
            stats = bot.stats_dict()
            await bot.close()
        return stats

    lstats, tstats = await asyncio.gather(go(listener, 0.0), go(talker, 0.3))
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


async def run_all(workdir: Path, concurrency: int) -> list[dict[str, Any]]:
    utts = utterances()
    signal_in, offsets = build_input(utts)
    input_wav = workdir / "input.wav"
    write_wav(input_wav, signal_in)
    seconds = len(signal_in) / RATE + 0.5
    proc, server = start_relay(workdir / "relay", len(CONDITIONS))
    rows: list[dict[str, Any]] = []
    try:
        for start in range(0, len(CONDITIONS), concurrency):
            batch = list(enumerate(CONDITIONS))[start : start + concurrency]
            results = await asyncio.gather(
                *(run_condition(c, i, server, input_wav, seconds, workdir) for i, c in batch)
            )
            for (_i, cond), (rec, lstats, tstats, proxy) in zip(batch, results, strict=True):
                scores = score_recording(rec, utts, offsets)
                ref = reference(cond, utts)
                (stream,) = lstats["streams"] or [{}]
                levels = tstats["redundancy_level_changes"]
                row = {
                    "condition": cond.key,
                    "loss_pct": cond.loss * 100,
                    "burst": cond.burst,
                    "jitter_ms": cond.jitter_ms,
                    "measured_loss_pct": round(
                        100 * proxy.dropped / max(1, proxy.dropped + proxy.passed), 1
                    ),
                    "product_pesq": round(statistics.mean(s[0] for s in scores), 2),
                    "product_pesq_min": round(min(s[0] for s in scores), 2),
                    "product_stoi": round(statistics.mean(s[1] for s in scores), 3),
                    "opus_plc_pesq": round(ref["opus_plc_pesq"], 2),
                    "opus_fec_pesq": round(ref["opus_fec_pesq"], 2),
                    "opus_plc_stoi": round(ref["opus_plc_stoi"], 3),
                    "opus_fec_stoi": round(ref["opus_fec_stoi"], 3),
                    "target_pesq": TARGETS.get(cond.key),
                    "talker_payload_kbps": round(tstats["payload_bits_per_s"] / 1000, 1),
                    "final_copies": ",".join(map(str, levels[-1]["distances"])) if levels else "",
                    "jb_delay_ms": stream.get("current_delay_ms"),
                    "recovered_from_copies": stream.get("recovered_from_copies"),
                    "fec_recovered": stream.get("fec_recovered"),
                    "concealed": stream.get("concealed"),
                }
                rows.append(row)
                print(
                    f"{row['condition']:<28} PESQ {row['product_pesq']:.2f} "
                    f"(min {row['product_pesq_min']:.2f}) STOI {row['product_stoi']:.3f} | "
                    f"Opus PLC {row['opus_plc_pesq']:.2f} FEC {row['opus_fec_pesq']:.2f} | "
                    f"{row['talker_payload_kbps']} kb/s copies {row['final_copies']} "
                    f"jb {row['jb_delay_ms']} ms",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def main() -> None:
    # one talker/listener pair at a time by default: several pairs in one process add scheduling
    # jitter that a single client does not have
    concurrency = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with tempfile.TemporaryDirectory(prefix="voice-quality-") as tmp:
        rows = asyncio.run(run_all(Path(tmp), concurrency))
    met = {
        r["condition"]: r["product_pesq"] >= r["target_pesq"]
        for r in rows
        if r["target_pesq"] is not None
    }
    costs = [
        {
            "tier": tier,
            "when": WHEN[tier],
            "loss_hint_pct": "measured loss" if tier == 1 else 0,
            "copies_of_frames_back": ",".join(map(str, d)) or "none",
            "extra_kbps_at_32k_20ms": bitrate_cost(RedundancyLevel(0, d), 32_000, 20) / 1000,
            "extra_kbps_at_32k_10ms": bitrate_cost(RedundancyLevel(0, d), 32_000, 10) / 1000,
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
