"""Capture and playback workers: the per-frame steps (driven directly) and the threads (on the
device-less NullEngine / a WAV engine), with a named fake for the connection's send slot. Who
hears the capture worker is decided by a real push-to-talk router behind its PttService."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import numpy as np

from voipclient.audio.aec import FarEnd
from voipclient.audio.cues import CueKind
from voipclient.audio.dsp import CaptureProcessor, CaptureSettings
from voipclient.audio.engine import NullEngine
from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.mixer import Mixer
from voipclient.audio.opus import OpusDecoder, OpusEncoder
from voipclient.audio.payload import decode_payload
from voipclient.audio.voice import TransmitGate, VoicePlayback, VoiceSender
from voipclient.audio.workers import CaptureWorker, PlaybackWorker
from voipclient.crypto.media import VoiceFrame
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService
from voipclient.ptt.sources import InputEvent

N = 960
SPEECH = read_wav_mono16(Path(__file__).parents[2] / "data" / "speech-0-48k.wav")


class FakeConnection:
    """Records what the capture worker hands to the connection's send_voice slot."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[int, ...], tuple[int, ...], bytes]] = []

    def send(self, targets: object, ending: object, payload: bytes) -> None:
        self.sent.append((tuple(targets), tuple(ending), payload))  # type: ignore[arg-type]


def capture_worker(
    conn: FakeConnection, ptt: PttService, engine: NullEngine | None = None, route: Any = None
) -> CaptureWorker:
    """A capture worker on ``engine`` (default: a NullEngine) whose route is the service's, or
    ``route`` when given."""
    return CaptureWorker(
        engine or NullEngine(),
        CaptureProcessor(CaptureSettings(noise_suppression="off", agc=False)),
        VoiceSender(OpusEncoder()),
        TransmitGate(release_ms=100),
        conn.send,
        route=route or ptt.route,
    )


def keys_service() -> PttService:
    """A router with one key per channel: f2 → 2, f3 → 3, f4 → 4."""
    return PttService(PttRouter([Binding.parse(f"k{c}", f"f{c}", [c]) for c in (2, 3, 4)]))


def test_capture_sends_only_to_the_wanted_channels_and_ends_each() -> None:
    conn = FakeConnection()
    ptt = keys_service()
    w = capture_worker(conn, ptt)
    t = 0.0
    for k in range(10):  # nobody wants our voice: nothing sent, frame numbers still advance
        w.process_frame(SPEECH[k * N : (k + 1) * N], t)
        t += 0.02
    assert conn.sent == [] and w.sender.frame_no == 10
    ptt.on_input(InputEvent("f2", True, t))  # two push-to-talk keys held
    ptt.on_input(InputEvent("f3", True, t))
    for k in range(10, 20):
        w.process_frame(SPEECH[k * N : (k + 1) * N], t)
        t += 0.02
    assert all(targets == (2, 3) for targets, _, _ in conn.sent)
    # a start cue for each channel keyed (each plays in that channel's voice)
    assert list(w.cues) == [(CueKind.START, 2), (CueKind.START, 3)] and w.speaking
    w.cues.clear()
    ptt.release_all(t)
    for k in range(20, 30):
        w.process_frame(SPEECH[k * N : (k + 1) * N], t)
        t += 0.02
    endings = [ending for _, ending, _ in conn.sent if ending]
    assert endings == [(2, 3)]  # one VOICE_LAST each, after the 100 ms release
    assert list(w.cues) == [(CueKind.STOP, 2), (CueKind.STOP, 3)] and not w.speaking
    payloads = [decode_payload(p) for _, _, p in conn.sent]
    assert all(p is not None for p in payloads)
    assert [p.frame_no for p in payloads if p] == list(range(10, 10 + len(payloads)))


def test_voice_activated_channel_sends_speech_not_silence() -> None:
    conn = FakeConnection()
    w = capture_worker(conn, PttService(PttRouter(mode="voice_activation", hot_mic=7)))
    silence = np.zeros(N, dtype=np.int16)
    for k in range(50):
        w.process_frame(silence, k * 0.02)
    assert conn.sent == []
    for k in range(50, 100):
        w.process_frame(SPEECH[(k + 20) * N : (k + 21) * N], k * 0.02)
    assert conn.sent and {targets for targets, _, _ in conn.sent} == {(7,)}


def test_voice_activation_is_the_routers_decision_fed_by_the_workers_vad() -> None:
    """The worker supplies only the speech decision; the router (voice activation, hot mic 7,
    F2 → channel 2) decides who hears each frame, mute and hot-mic changes included, and the
    worker reads the router's slot while another thread holds the service's lock."""
    conn = FakeConnection()
    ptt = PttService(
        PttRouter([Binding.parse("k2", "f2", [2])], mode="voice_activation", hot_mic=7)
    )
    w = capture_worker(conn, ptt)  # release delay 100 ms = 5 frames
    silence = np.zeros(N, dtype=np.int16)
    t = 0.0

    def run(frames: int, speech: bool) -> list[tuple[tuple[int, ...], tuple[int, ...], bytes]]:
        nonlocal t
        start = len(conn.sent)
        for k in range(frames):
            w.process_frame(SPEECH[(k + 20) * N : (k + 21) * N] if speech else silence, t)
            t += 0.02
        return conn.sent[start:]

    def targets(sent: list[tuple[tuple[int, ...], tuple[int, ...], bytes]]) -> set[object]:
        return {s[0] for s in sent}

    def endings(sent: list[tuple[tuple[int, ...], tuple[int, ...], bytes]]) -> list[object]:
        return [s[1] for s in sent if s[1]]

    assert run(20, speech=False) == []  # silence, no key: nobody
    ptt.on_input(InputEvent("f2", True, t))
    assert targets(run(10, speech=False)) == {(2,)}  # a key does not wait for speech
    lock = ptt._lock  # the GUI thread stuck while holding it: audio must not need it
    lock.acquire()
    try:
        sent = run(30, speech=True)
    finally:
        lock.release()
    assert (2, 7) in targets(sent)  # speech adds the voice-activated hot mic
    ptt.on_input(InputEvent("f2", False, t))
    ptt.set_muted(True, t)  # mid-word: both end after the release delay, once each
    sent = run(20, speech=True)
    assert endings(sent) == [(2, 7)] and len(sent) == 6 and not w.speaking
    ptt.set_muted(False, t)
    assert targets(run(10, speech=True)) == {(7,)}  # unmuted: the hot mic is back by itself
    ptt.set_hot_mic(8, t)  # while speaking: 7 ends, 8 starts
    sent = run(10, speech=True)
    assert endings(sent) == [(7,)] and (8,) in targets(sent)
    sent = run(40, speech=False)  # the speech ends: VAD hangover + release delay, VOICE_LAST
    assert endings(sent) == [(8,)] and sent[-1][1] == (8,)
    assert 5 < len(sent) < 25 and not w.speaking
    assert run(10, speech=False) == []


def test_playback_thread_plays_what_the_inbox_brings_and_reports_loss() -> None:
    engine = NullEngine()
    inbox: collections.deque[VoiceFrame] = collections.deque()
    worker = PlaybackWorker(engine, VoicePlayback(Mixer(), OpusDecoder), inbox)
    sender = VoiceSender(OpusEncoder())
    worker.start()
    try:
        start = time.monotonic()
        for k in range(150):
            payload = sender.encode(SPEECH[k * N : (k + 1) * N])
            if k % 10 != 5:  # 10 % lost
                inbox.append(VoiceFrame(4, 9, 0, 0, k, False, payload))
            engine.tick(time.monotonic())  # the "device" takes what was rendered
            delay = start + (k + 1) * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        deadline = time.monotonic() + 3
        while not worker.reports and time.monotonic() < deadline:
            engine.tick(time.monotonic())
            time.sleep(0.02)
    finally:
        worker.stop()
    (stream,) = worker.playback.stats().streams
    assert stream.jitter.played >= 100
    assert worker.output_level.peak_dbfs > -60
    assert worker.reports and worker.reports[0].sender_id == 9
    assert 0.05 <= worker.reports[-1].loss <= 0.2


def test_talking_channels_slot_and_cues_switch() -> None:
    conn = FakeConnection()
    ptt = keys_service()
    w = capture_worker(conn, ptt)
    w.cues_enabled = False  # the user switched the cues off
    w.commands.append(lambda: setattr(w.gate, "release_s", 0.0))  # a settings command
    ptt.on_input(InputEvent("f4", True, 0.0))
    w.process_frame(SPEECH[:N], 0.0)
    assert w.gate.release_s == 0.0  # commands run between frames, on the worker's thread
    assert w.talking_channels == frozenset({4}) and not w.cues
    ptt.on_input(InputEvent("f4", False, 0.01))
    for k in range(1, 4):
        w.process_frame(SPEECH[k * N : (k + 1) * N], k * 0.02)
    assert w.talking_channels == frozenset() and not w.cues


def test_playback_talking_slot_marks_speakers_per_channel_until_they_stop() -> None:
    n = N
    playback = VoicePlayback(Mixer(frame_samples=n), OpusDecoder)
    inbox: collections.deque[VoiceFrame] = collections.deque()
    w = PlaybackWorker(NullEngine(), playback, inbox)
    sender = VoiceSender(OpusEncoder())
    for k in range(3):
        payload = sender.encode(SPEECH[k * N : (k + 1) * N])
        inbox.append(VoiceFrame(5, 7, 0, 0, k, False, payload))
    w.drain(0.0)
    w.render(0.0)
    assert w.talking == frozenset({(7, 5)})  # (sender, channel)
    inbox.append(VoiceFrame(5, 7, 0, 0, 3, True, sender.encode(SPEECH[3 * N : 4 * N])))
    w.drain(0.02)
    w.render(0.02)
    assert w.talking == frozenset()  # VOICE_LAST ends it at once
    inbox.append(VoiceFrame(6, 8, 0, 0, 0, False, sender.encode(SPEECH[:N])))
    w.drain(0.04)
    w.render(0.04)
    assert w.talking == frozenset({(8, 6)})
    for k in range(1, 30):  # silence from then on: the mark goes after the 0.3 s hold
        w.render(0.04 + k * 0.02)
    assert w.talking == frozenset()


class FakeHostEngine(NullEngine):
    """A NullEngine that records the workers' "microphone / speakers wanted" calls, as the
    audio host's engine (HostEngine) receives them."""

    def __init__(self) -> None:
        super().__init__()
        self.input_wanted: list[bool] = []
        self.output_wanted: list[bool] = []

    def want_input(self, wanted: bool) -> None:
        if not self.input_wanted or self.input_wanted[-1] != wanted:
            self.input_wanted.append(wanted)

    def want_output(self, wanted: bool) -> None:
        if not self.output_wanted or self.output_wanted[-1] != wanted:
            self.output_wanted.append(wanted)


def test_capture_stops_the_microphone_after_a_second_of_nothing_to_send() -> None:
    engine = FakeHostEngine()
    ptt = keys_service()
    w = capture_worker(FakeConnection(), ptt, engine)
    silence = np.zeros(N, dtype=np.int16)
    t = 0.0
    for _ in range(49):  # 0.98 s of push-to-talk idle: still listening
        w.process_frame(silence, t)
        t += 0.02
    assert engine.input_wanted == []
    w.process_frame(silence, t)  # a second: stop it
    assert engine.input_wanted == [False]
    # the meter on screen keeps it (the UI sets the slot and wants it at once)
    w.metering = True
    for _ in range(60):
        w.process_frame(silence, t)
    assert engine.input_wanted == [False]  # nothing new from the worker while metering
    w.metering = False
    # a press: the service's route hook (the app's) wants it, the worker keeps it while it sends
    ptt.on_route = lambda route: engine.want_input(True) if route.speaking else None
    ptt.on_input(InputEvent("f2", True, t))
    assert engine.input_wanted == [False, True]
    assert w.cues == collections.deque() and engine.output_wanted == []
    for _ in range(100):
        w.process_frame(SPEECH[:N], t)
        t += 0.02
    assert engine.input_wanted == [False, True]
    assert engine.output_wanted == [True]  # the start cue needs the speakers
    ptt.on_input(InputEvent("f2", False, t))  # released: 0.1 s release delay, then 1 s idle
    for _ in range(5 + 49):
        w.process_frame(silence, t)
        t += 0.02
    assert engine.input_wanted == [False, True]
    for _ in range(2):
        w.process_frame(silence, t)
        t += 0.02
    assert engine.input_wanted == [False, True, False]


def test_capture_restarts_the_microphone_if_a_press_comes_as_it_stops() -> None:
    engine = FakeHostEngine()
    ptt = keys_service()

    def route() -> object:
        # The press lands right after the worker stored "not wanted", and the service has no
        # route hook here: only the worker's second look at the route can catch it.
        if engine.input_wanted == [False] and not ptt.route().speaking:
            ptt.on_input(InputEvent("f3", True, 1.0))
        return ptt.route()

    w = capture_worker(FakeConnection(), ptt, engine, route)
    for k in range(50):
        w.process_frame(np.zeros(N, dtype=np.int16), k * 0.02)
    assert engine.input_wanted == [False, True]  # the double check after the store saw it


def test_playback_stops_the_speakers_after_a_second_of_silence_and_voice_restarts_them() -> None:
    engine = FakeHostEngine()
    playback = VoicePlayback(Mixer(frame_samples=N), OpusDecoder)
    inbox: collections.deque[VoiceFrame] = collections.deque()
    w = PlaybackWorker(engine, playback, inbox)
    t = 0.0
    for _ in range(49):
        w.render(t)
        t += 0.02
    assert engine.output_wanted == []
    w.render(t)
    assert engine.output_wanted == [False]
    sender = VoiceSender(OpusEncoder())
    inbox.append(VoiceFrame(5, 7, 0, 0, 0, False, sender.encode(SPEECH[: 1 * N])))
    w.drain(t)
    assert engine.output_wanted == [False, True]
    for k in range(1, 40):  # someone talks: the speakers stay on
        inbox.append(VoiceFrame(5, 7, 0, 0, k, False, sender.encode(SPEECH[k * N : (k + 1) * N])))
        w.drain(t)
        w.render(t)
        t += 0.02
    assert engine.output_wanted == [False, True]
    w.cue_requests.append((CueKind.START, 7))  # a cue keeps them on while it plays
    for _ in range(120):
        w.render(t)
        t += 0.02
    assert engine.output_wanted == [False, True, False]


class FakeNumberedPlayback:
    """Stands in for VoicePlayback: frame k it renders is the number k in every sample, so the
    far end's order can be read off."""

    def __init__(self) -> None:
        self.mixer = Mixer(frame_samples=N)
        self.rendered = 0

    def render_into(self, out: Any, now: float) -> None:
        self.rendered += 1
        out.fill(self.rendered)

    def loss_reports(self, now: float) -> list[Any]:
        return []


def test_the_far_end_is_what_the_device_played_underruns_included() -> None:
    """The echo canceller's far end must be the sequence the speakers really played. When the
    playback worker is late (a CPU hog), the device zero-fills a callback that finds the ring
    dry: that silence was played, so it goes into the far end where it was played; otherwise
    every underrun moves the echo later against the far end for good (AEC3 lost the path in
    the app under a hog). Whether or not the capture side starved for far frames meanwhile."""
    engine = NullEngine()
    w = PlaybackWorker(engine, FakeNumberedPlayback(), collections.deque())  # type: ignore[arg-type]
    far = FarEnd(N)
    w.far_end = far
    device, taken = [], []
    out, mic_far = np.zeros(N, dtype=np.int16), np.zeros(N, dtype=np.int16)
    # per period: does the playback worker render, how many far frames does the capture take
    stalled = {1, 2, 8, 9, 14}  # the worker is late: the device plays silence
    for k in range(30):
        renders = 0 if k in stalled else 1
        takes = {6: 3, 11: 0}.get(k, 1)  # the capture side: early (6), late (11)
        for _ in range(renders):
            w.render(k * 0.02)
        engine.playback.read_into(out)  # the device's callback
        device.append(int(out[0]))
        for _ in range(takes):
            far.take_into(mic_far)
            taken.append(int(mic_far[0]))
    assert device == [1, 0, 0, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 0, 11, *range(12, 26)]
    # The far end starts two frames of silence behind (its jitter room) and stays exactly that
    # far behind what the device played through every underrun, whether the capture side
    # starved for far frames meanwhile (8, 9: it had taken its backlog early at 6) or not (1,
    # 2, 14: the room, or a backlog from being late at 11, covered it).
    offset = 2
    assert taken[:offset] == [0, 0]
    assert taken[offset:] == device[: len(taken) - offset]
    assert far.starved == 2  # at 8 and 9
    assert engine.playback.underrun_samples == 5 * N
    assert far.underrun_silence == 5 * N
