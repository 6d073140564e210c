"""Loss-adaptive redundancy end to end: a lossy proxy between the talker and a real relay; the
listener's loss reports travel over the control channel and the talker adds copies, which the
listener uses. Also the 10 ms low-latency mode through the relay. Bots run in-process here so the
test can read their state."""

from __future__ import annotations

import asyncio
import json
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.netem import Impairment, LossyProxy
from voipclient.audio.cues import CueKind, cue
from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.redundancy import COPY_BITRATE
from voipclient.bot import BotOptions, VoiceBot, listen_while_talking

from ...audio_similarity import segment_similarity, similarity
from ..audio.test_realtime import may_raise_directly
from ..conftest import ServerProcess, Starter

SPEECH = Path(__file__).parents[2] / "data" / "speech-0-48k.wav"
RATE = 48_000

pytestmark = pytest.mark.timeout(60)


async def talk(
    server: ServerProcess,
    tmp_path: Path,
    *,
    impairment: Impairment | None = None,
    frame_ms: int = 20,
    seconds: float = 6.0,
    path_memory: Path | None = None,
    listener_impairment: Impairment | None = None,
    suffix: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    common: dict[str, Any] = {"host": server.host, "port": server.port, "pin": server.pin}
    proxy = None
    udp_addr = None
    listener_udp = None
    if impairment is not None:
        proxy = LossyProxy(impairment, seed=3)
        udp_addr = await proxy.start((server.host, server.port))
    if listener_impairment is not None:  # on the listener's side (a bottleneck going down)
        proxy = LossyProxy(listener_impairment, seed=3)
        listener_udp = await proxy.start((server.host, server.port))
    listener = VoiceBot(
        BotOptions(
            **common,
            name="listener" + suffix,
            join=["A"],
            talk=[],
            record=tmp_path / "heard.wav",
            seconds=seconds + 30,  # a bound only: it stops when the talker is done
            frame_ms=frame_ms,
            highpass=False,
            udp_addr=listener_udp,
        )
    )
    talker = VoiceBot(
        BotOptions(
            **common,
            name="talker" + suffix,
            join=["A"],
            talk=["A"],
            play=SPEECH,
            seconds=seconds,
            frame_ms=frame_ms,
            udp_addr=udp_addr,
            start_delay_s=0.5,
            highpass=False,
            path_memory=path_memory,
        )
    )

    try:
        heard, said = await listen_while_talking(listener, talker)
    finally:
        if proxy is not None:
            proxy.close()
    if proxy is not None:
        said["proxy_dropped_ctrs"] = list(proxy.dropped_ctrs)
    return heard, said


def double_losses(ctrs: list[int]) -> int:
    """Frames lost together with the packet after them (which carried their copy)."""
    lost = set(ctrs)
    return sum(1 for c in lost if c + 1 in lost)


def test_loss_reports_raise_redundancy_and_the_copies_rebuild_the_speech(
    start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    heard, said = asyncio.run(talk(server, tmp_path, impairment=Impairment(loss=0.2)))
    assert heard["loss_reports_sent"] >= 2
    assert said["loss_reports_received"] >= 2
    levels = said["redundancy_level_changes"]
    assert levels and levels[-1]["distances"], levels  # copies switched on by the reports
    assert levels[-1]["extra_bps"] > 0
    (stream,) = heard["streams"]
    assert stream["recovered_from_copies"] > 20
    assert stream["redundancy_depth"] >= 2
    # With 20 % of the talker's datagrams lost, the last 2 s (after the level rose) sound as sent
    recording = read_wav_mono16(tmp_path / "heard.wav")
    source = read_wav_mono16(SPEECH)[: RATE * 6]
    _, lag = similarity(source[: RATE * 2], recording)
    tail = segment_similarity(
        source[RATE * 4 :], recording, start=round(lag * RATE) + RATE * 4, slack=RATE // 5
    )
    assert tail > 0.85, tail


def test_clean_path_drops_the_cold_start_protection_within_3_s(
    start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    heard, said = asyncio.run(talk(server, tmp_path, seconds=5.0))
    assert said["loss_reports_received"] >= 2  # fast reports at the start of the stream
    levels = said["redundancy_level_changes"]
    # a new session starts with one compact copy, and drops it once reports say "clean"
    assert levels[0]["distances"] == [1] and levels[0]["copy_bitrate"] == COPY_BITRATE
    assert levels[-1]["distances"] == [] and levels[-1]["hint"] == 0
    assert levels[-1]["t"] - levels[0]["t"] < 3.0, levels
    (stream,) = heard["streams"]
    assert stream["recovered_from_copies"] == 0  # nothing lost, nothing to rebuild
    assert said["payload_bits_per_s"] < 42_000  # 34.8 kb/s clean + the light start


def test_lossy_path_is_protected_from_the_first_second(
    start_server: Starter, tmp_path: Path
) -> None:
    """10 % loss from the first frame: copies are there before any report, the first report
    comes within a second, and the path learned is remembered for the next session."""
    server = start_server()
    memory = tmp_path / "paths.json"
    heard, said = asyncio.run(
        talk(server, tmp_path, impairment=Impairment(loss=0.1), seconds=5.0, path_memory=memory)
    )
    levels = said["redundancy_level_changes"]
    assert levels[0]["distances"] == [1]  # protected before anybody reported
    raised = [lv for lv in levels if len(lv["distances"]) >= 2]
    assert raised and raised[0]["t"] - levels[0]["t"] < 1.5, levels  # fast first reports
    (stream,) = heard["streams"]
    assert stream["recovered_from_copies"] > 10
    assert stream["redundancy_depth"] <= 3  # a wait of at most 40-60 ms for copies
    # compact copies: well under the 2x of the clean bitrate that full ones cost
    assert said["payload_bits_per_s"] < 2 * 34_800
    # From the first frame every lost frame had a copy behind it: none waited for the next
    # packet's lower-quality FEC (milestone 1's policy, unprotected until its first 2 s report,
    # rebuilt 8 of them that way in the same run; measured: 22-23 copies, 0 FEC, 4 concealed at
    # the stream's start and end, over 3 runs each). PESQ-WB of the first 3 s is in make bench.
    # The one exception is a frame lost together with the packet after it (its copy went with
    # it) while copies were one frame deep: whether the first report raised the depth before
    # such a pair depends on timing (a loaded machine delays the report), so those may use FEC.
    pairs = double_losses(said["proxy_dropped_ctrs"])
    assert stream["fec_recovered"] <= pairs, (stream, said["proxy_dropped_ctrs"])
    # the next session to this server starts where this one ended
    remembered = json.loads(memory.read_text())[f"{server.host}:{server.port}"]["level"]
    assert len(remembered["distances"]) >= 2
    _, said2 = asyncio.run(
        talk(
            server,
            tmp_path,
            impairment=Impairment(loss=0.1),
            seconds=2.0,
            path_memory=memory,
            suffix="2",
        )
    )
    assert said2["redundancy_level_changes"][0]["distances"] == remembered["distances"]


def test_a_bottleneck_makes_the_talker_back_off(start_server: Starter, tmp_path: Path) -> None:
    """64 kb/s (IPv4 bytes, a token bucket as nftables' limit rate) with 2 % random loss on the
    listener's side: the clean stream is 64.4 kb/s on the wire, any copy drowns. The talker finds
    that its own bits raise the loss and caps its rate instead of escalating."""
    server = start_server()
    neck = Impairment(down_rate_bps=64_000, down_loss=0.02)
    heard, said = asyncio.run(talk(server, tmp_path, listener_impairment=neck, seconds=10.0))
    assert said["congestion_events"] >= 1, said["redundancy_level_changes"]
    last = said["redundancy_level_changes"][-1]
    # settled without copies (they do not fit), at a primary bitrate the link carries
    assert last["distances"] == [], last
    assert heard["streams"]
    # what the listener heard over the last seconds: the loss is back near the link's own 2 %
    recording = read_wav_mono16(tmp_path / "heard.wav")
    source = read_wav_mono16(SPEECH)[: RATE * 10]
    _, lag = similarity(source[: RATE * 2], recording)
    tail = segment_similarity(
        source[RATE * 6 : RATE * 9],
        recording,
        start=round(lag * RATE) + RATE * 6,
        slack=RATE // 5,
    )
    assert tail > 0.7, tail


def test_ten_ms_frames_through_the_relay(start_server: Starter, tmp_path: Path) -> None:
    server = start_server()
    heard, said = asyncio.run(talk(server, tmp_path, frame_ms=10, seconds=4.0))
    assert said["frame_ms"] == 10 and said["frames_sent"] >= 300  # 100 frames per second
    (stream,) = heard["streams"]
    assert stream["played"] >= 300
    recording = read_wav_mono16(tmp_path / "heard.wav")
    source = read_wav_mono16(SPEECH)[: RATE * 3]
    _, lag = similarity(source, recording)
    assert segment_similarity(source, recording, start=round(lag * RATE)) > 0.85
    # both bots moved audio at real-time priority (a CPU hog beside the test must not make
    # their 10 ms frames late), and the test's thread is back to normal afterwards
    if may_raise_directly():
        assert said["scheduling"] == heard["scheduling"]
        assert heard["scheduling"].startswith("real-time (SCHED_RR")
    else:
        assert heard["scheduling"], "the bot says how it ran (and why not real-time)"
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_voice_activation_sends_only_speech_and_plays_cues(
    start_server: Starter, tmp_path: Path
) -> None:
    """The hot-mic path: the VAD opens the transmit gate for speech only (plus the release
    delay), each transmission ends with VOICE_LAST, and the talker hears its own start/stop
    cues."""
    speech = read_wav_mono16(SPEECH)
    silence = np.zeros(RATE, dtype=np.int16)
    mic = np.concatenate(
        [silence, speech[: 2 * RATE], silence, silence, speech[2 * RATE : 4 * RATE], silence]
    )
    mic_wav = tmp_path / "mic.wav"
    with wave.open(str(mic_wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(mic.astype("<i2").tobytes())
    server = start_server()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        common: dict[str, Any] = {"host": server.host, "port": server.port, "pin": server.pin}
        listener = VoiceBot(
            BotOptions(**common, name="listener", join=["A"], talk=[], seconds=40.0)
        )
        talker = VoiceBot(
            BotOptions(
                **common,
                name="talker",
                join=["A"],
                talk=["A"],
                play=mic_wav,
                record=tmp_path / "own.wav",
                voice_activation=True,
                cues=True,
                start_delay_s=0.5,
            )
        )

        heard, said = await listen_while_talking(listener, talker)
        return heard, said

    heard, said = asyncio.run(scenario())
    total_frames = len(mic) // 960
    speech_frames = 4 * 50
    assert speech_frames * 0.8 < said["frames_sent"] < total_frames * 0.8  # silence not sent
    assert said["cues_played"] == 4  # start, stop, start, stop
    (stream,) = heard["streams"]
    assert stream["played"] >= speech_frames * 0.8
    own = read_wav_mono16(tmp_path / "own.wav")
    start_cue = cue(CueKind.START)
    # the first start cue is in the talker's own output, unaltered, when the speech began
    # (1 s into the microphone); the second one plays ~4 s later, so look at the first 3 s
    score, at = similarity(start_cue, own[: 3 * RATE])
    assert score > 0.9
    assert 0.7 < at < 1.6
    score2, at2 = similarity(start_cue, own[3 * RATE :])
    assert score2 > 0.9 and at2 > 0.5  # and the second start, after the silence
