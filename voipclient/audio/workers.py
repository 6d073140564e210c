"""The desktop client's audio threads: capture and playback workers around the pure pipeline.

Capture (one thread): engine capture ring → echo canceller (when on: the far end is what the
playback worker played, through a :class:`~voipclient.audio.aec.FarEnd` mailbox) →
CaptureProcessor (DSP, VAD) → the push-to-talk
router's :class:`~voipclient.ptt.router.Route`, read from its latest-value slot every frame, picks
the channels for this frame's speech decision (``route.wanted(is_speech)``: the router decides who
hears me, voice activation included; the worker only supplies the speech decision) →
TransmitGate (release delay, VOICE_LAST) → VoiceSender (Opus once) → ``send(targets, ending,
payload)`` (the connection seals once per channel on its own thread).

Playback (one thread): the connection's ``inbox`` (opened voice frames, a deque) → VoicePlayback
(jitter buffer per speaker, decoder, mixer) → cues → engine playback ring, one frame whenever the
ring holds less than a frame. The ring holds ``engine.output_channels`` interleaved channels (the
devices' engines: 2, stereo, for channel placement; the file and null engines: 1). Loss reports
go to the connection through ``reports`` (a deque).

Between threads only mailboxes: deques (atomic append/popleft in CPython) and plain attribute
stores of immutable values (latest-value slots). The workers never touch Qt and take no lock the
UI holds; they sleep until the next frame is due (the engine's clock is the device's).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from voipclient.audio.aec import EchoCanceller, FarEnd
from voipclient.audio.cues import CueKind, CuePlayer
from voipclient.audio.dsp import CaptureProcessor
from voipclient.audio.engine import AudioEngine
from voipclient.audio.mixer import Level
from voipclient.audio.realtime import Promotion, promote_current_thread
from voipclient.audio.redundancy import LossReport, RedundancyLevel
from voipclient.audio.voice import TransmitGate, VoicePlayback, VoiceSender
from voipclient.crypto.media import VoiceFrame
from voipclient.ptt.router import Route

log = logging.getLogger("voipclient.audio.workers")

#: A push-to-talk cue for playback: (start or stop, the channel keyed).
CueRequest = tuple[CueKind, int]
_CENTRE_VOICE: tuple[int, float] = (0, 0.0)
SendVoice = Callable[[Sequence[int], Sequence[int], bytes], None]
#: Reads the push-to-talk router's latest Route without a lock (``PttService.route``).
RouteSlot = Callable[[], Route]
#: A settings change for a worker's objects, run on the worker's thread between two frames (the
#: UI never touches the pipeline's objects directly).
Command = Callable[[], None]

TALKING_HOLD_S = 0.3  # a speaker counts as talking until this long after its last frame
#: With the audio host: after this long with nothing to capture (push-to-talk idle, nothing
#: transmitting, no meter shown) or nothing to play (silence, no cue), the worker tells the host
#: to stop that stream; it starts again on the next press or the next voice.
IDLE_PAUSE_S = 1.0
IDLE_SLEEP_S = 1.0  # a worker whose stream is paused sleeps this long between checks
TALKING_CHECK_FRAMES = 5  # the talking slot is recomputed every this many output frames


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (``top -H``, /proc, the idle benchmark); Linux only,
    best effort (15 bytes)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):
            pass


class FdWaker:
    """A wake-up flag that can also be woken by another process: ``set``/``clear``/``wait`` as a
    :class:`threading.Event`, on a pipe of its own, and ``wait`` also returns when ``extra_fd`` (the
    audio host's wake pipe) becomes readable. What was read from either pipe is drained."""

    def __init__(self, extra_fd: int) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._extra = extra_fd
        self._fds = (self._r, extra_fd)
        self._flag = False

    def set(self) -> None:
        if not self._flag:  # one byte per wake-up, not per caller
            self._flag = True
            try:  # noqa: SIM105 - per frame: no context-manager object
                os.write(self._w, b"\0")
            except OSError:
                pass  # full (a wake-up is pending anyway)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float) -> None:
        try:
            readable, _, _ = select.select(self._fds, (), (), timeout)
        except (OSError, ValueError):
            return  # closed under us: the thread is stopping
        for fd in readable:  # one read each: a few bytes at most wait between two turns
            try:  # noqa: SIM105 - per frame: no context-manager object
                os.read(fd, 4096)
            except OSError:
                pass

    def __del__(self) -> None:
        # Closed only when nobody can call set() any more (another thread may hold an old
        # pipeline's waker a moment after stop(): closing there could write into a reused fd).
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


class _FrameThread:
    """A daemon thread running one worker loop until ``stop()`` (which joins it). With
    ``wake_fd`` (a descriptor another process writes to when its ring moved: the audio host),
    the thread sleeps on that descriptor and its own pipe instead of a threading.Event."""

    def __init__(self, name: str, run: Callable[[], None], wake_fd: int | None = None) -> None:
        self.stopping = threading.Event()
        #: set by whatever the loop waits on (a ring's callback, arriving voice) and by stop()
        self.wake: threading.Event | FdWaker = (
            threading.Event() if wake_fd is None else FdWaker(wake_fd)
        )
        #: how this thread is scheduled (set when it starts: real-time when the system allows)
        self.promotion: Promotion | None = None
        self._run = run
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        self.promotion = promote_current_thread()
        self._run()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def sleep_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Sleep until ``wake`` is set (then re-check) unless ``ready()`` already holds. Clearing
        before the re-check means a wake-up between the two is never lost. ``timeout`` only
        covers a source that stopped (a device gone): the device clock wakes us otherwise."""
        wake = self.wake
        wake.clear()
        if ready() or self.stopping.is_set():
            return
        wake.wait(timeout)


class CaptureWorker:
    """Owns the capture side: processor, gate, sender. ``route`` reads the push-to-talk router's
    decision (``PttService.route``, lock-free); ``level`` is the slot the redundancy policy writes
    (any thread)."""

    def __init__(
        self,
        engine: AudioEngine,
        processor: CaptureProcessor,
        sender: VoiceSender,
        gate: TransmitGate,
        send: SendVoice,
        *,
        route: RouteSlot,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.processor = processor
        self.sender = sender
        self.gate = gate
        self._send = send
        self._clock = clock
        # The router's slot itself, not a copy the GUI re-points: a rebuilt pipeline, an unmute
        # or a key pressed during the rebuild need nobody to carry the current route over.
        self._route = route
        self.level: RedundancyLevel | None = None  # slot: the policy's latest level
        #: to playback: (kind, channel) for each channel we start or stop transmitting into
        self.cues: collections.deque[CueRequest] = collections.deque(maxlen=8)
        self.cues_enabled = True  # slot: the user's "play start/stop cues" setting
        self.input_level = Level(-float("inf"), -float("inf"))  # slot for the UI meter
        self.speaking = False  # slot: we are transmitting now
        self.speech_probability = 0.0  # slot for the UI's voice-activation meter
        self.talking_channels: frozenset[int] = frozenset()  # slot: where we transmit now
        self._talking_targets: tuple[int, ...] = ()
        self._cue_targets: tuple[int, ...] = ()
        #: echo cancellation (set through ``commands``): the canceller and the far-end mailbox
        #: the playback worker fills with what it plays
        self.aec: EchoCanceller | None = None
        self.far_end: FarEnd | None = None
        self._far = np.zeros(engine.frame_samples, dtype=np.int16)
        self.commands: collections.deque[Command] = collections.deque(maxlen=64)  # from the UI
        self.frames = 0
        #: slot: the UI shows the input meter (the settings dialog): keep the microphone running
        self.metering = False
        # The audio host's "microphone / speakers wanted" (absent for in-process engines).
        self._want_input: Callable[[bool], None] | None = getattr(engine, "want_input", None)
        self._want_output: Callable[[bool], None] | None = getattr(engine, "want_output", None)
        self._idle_frames = 0
        self._idle_after = max(1, round(IDLE_PAUSE_S * engine.sample_rate / engine.frame_samples))
        self._frame = np.zeros(engine.frame_samples, dtype=np.int16)
        #: playback ring samples per output frame (stereo rings interleave two per sample)
        self._out_frame = engine.frame_samples * getattr(engine, "output_channels", 1)
        self._thread = _FrameThread("capture", self._run, getattr(engine, "capture_wake_fd", None))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    @property
    def scheduling(self) -> str:
        """How the worker's thread is scheduled ("real-time (SCHED_RR priority 10)", ...)."""
        return str(self._thread.promotion or "not started")

    def _run(self) -> None:
        engine = self.engine
        n = engine.frame_samples
        period = n / engine.sample_rate
        ring, thread = engine.capture, self._thread
        wake = thread.wake.set
        name_os_thread("vc-capture")

        def ready() -> bool:
            return ring.available >= n

        def on_write() -> None:  # the input callback: wake us once a whole frame is there
            if ring.available >= n:
                wake()

        ring.on_write = on_write

        try:
            while not thread.stopping.is_set():
                if ring.available < n:
                    paused = self._idle_frames >= self._idle_after and self._want_input
                    thread.sleep_until(ready, IDLE_SLEEP_S if paused else 2 * period)
                    continue
                ring.read_into(self._frame)
                self.process_frame(self._frame, self._clock())
        finally:
            ring.on_write = None

    def process_frame(self, frame: np.ndarray, now: float) -> None:
        """One captured frame (also the entry point for tests driving it without a thread)."""
        while self.commands:
            self.commands.popleft()()
        level = self.level
        if level is not None and level != self.sender.level:
            self.sender.set_level(level)
        aec, far_end = self.aec, self.far_end
        if aec is not None and far_end is not None:
            # What the speakers were given, one frame. The far end is rightly ahead by the
            # microphone frames already waiting behind this one (each takes its far frame in
            # turn) and by the frames in the playback ring not played yet: no backlog to drop.
            n = len(self._far)
            engine = self.engine
            ahead = engine.capture.available // n + engine.playback.available // self._out_frame
            far_end.take_into(self._far, ahead)
            frame = aec.process(frame, self._far)
        result = self.processor.process(frame)
        self.input_level = result.level
        self.speech_probability = result.speech_probability
        # Who hears this frame is the router's decision; the speech decision is its per-frame
        # input, applied here (one attribute read, one of two stored frozensets: no allocation).
        decision = self.gate.update(self._route().wanted(result.is_speech), now)
        if decision.targets != self._cue_targets or decision.ending:
            self._cue(decision.targets, decision.ending)
        self._watch_idle(decision.sending)
        self.speaking = decision.sending and not decision.stopped
        targets = decision.targets if self.speaking else ()
        if targets != self._talking_targets:  # tuples: no allocation while nothing changes
            self._talking_targets = targets
            self.talking_channels = frozenset(targets)
        self.frames += 1
        if not decision.sending:
            self.sender.skip()
            return
        payload = self.sender.encode(result.frame)
        self._send(decision.targets, decision.ending, payload)

    def _cue(self, targets: tuple[int, ...], ending: tuple[int, ...]) -> None:
        """A start cue for each channel we began transmitting into, a stop cue for each one
        whose transmission ended (runs only on a frame where that changed)."""
        before, self._cue_targets = self._cue_targets, targets
        if not self.cues_enabled:
            return
        queued = len(self.cues)
        self.cues.extend((CueKind.START, c) for c in targets if c not in before)
        self.cues.extend((CueKind.STOP, c) for c in ending)
        if len(self.cues) != queued and self._want_output is not None:
            self._want_output(True)  # the cue needs the speakers

    def _watch_idle(self, sending: bool) -> None:
        """Tell the audio host to stop the microphone after IDLE_PAUSE_S of nothing to do. The
        push-to-talk router's route hook starts it again on a press (``want_input(True)``); the
        route is read again after the store, so a press in between is never lost."""
        want = self._want_input
        if want is None:
            return
        if sending or self.metering or self._route().speaking:
            self._idle_frames = 0
            return
        self._idle_frames += 1
        if self._idle_frames >= self._idle_after:
            want(False)
            if self._route().speaking or self.metering:
                want(True)
                self._idle_frames = 0


class PlaybackWorker:
    """Owns the playback side: VoicePlayback (jitter buffers, decoders, mixer) and the cues."""

    def __init__(
        self,
        engine: AudioEngine,
        playback: VoicePlayback,
        inbox: collections.deque[VoiceFrame],
        *,
        cues: collections.deque[CueRequest] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.playback = playback
        self.inbox = inbox
        self.cue_requests = cues if cues is not None else collections.deque(maxlen=8)
        self.cue_player = CuePlayer(engine.frame_samples)
        #: channel → (cue voice, pan): set by the UI through :attr:`commands`
        self.cue_voices: dict[int, tuple[int, float]] = {}
        #: slot: where each frame played also goes, for the echo canceller (None: off)
        self.far_end: FarEnd | None = None
        self.reports: collections.deque[LossReport] = collections.deque(maxlen=256)
        self.output_level = Level(-float("inf"), -float("inf"))  # slot for the UI meter
        #: slot: (sender, channel) pairs heard in the last TALKING_HOLD_S (a VOICE_LAST ends one)
        self.talking: frozenset[tuple[int, int]] = frozenset()
        self.commands: collections.deque[Command] = collections.deque(maxlen=64)  # from the UI
        self._heard: dict[tuple[int, int], float] = {}
        self._heard_changed = False
        self.frames = 0
        self._clock = clock
        self._want_output: Callable[[bool], None] | None = getattr(engine, "want_output", None)
        self._silent_frames = 0
        self._underruns_seen = engine.playback.underrun_samples
        self._idle_after = max(1, round(IDLE_PAUSE_S * engine.sample_rate / engine.frame_samples))
        #: samples per sample frame in the playback ring (2: interleaved stereo)
        self._channels = getattr(engine, "output_channels", 1)
        if playback.mixer.output_channels != self._channels:
            raise ValueError(
                f"the mixer makes {playback.mixer.output_channels}-channel frames, the engine "
                f"plays {self._channels}"
            )
        self._out = np.zeros(engine.frame_samples * self._channels, dtype=np.int16)
        self._thread = _FrameThread(
            "playback", self._run, getattr(engine, "playback_wake_fd", None)
        )

    @property
    def scheduling(self) -> str:
        """How the worker's thread is scheduled ("real-time (SCHED_RR priority 10)", ...)."""
        return str(self._thread.promotion or "not started")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _run(self) -> None:
        engine = self.engine
        n = engine.frame_samples * self._channels  # ring samples per output frame
        period = engine.frame_samples / engine.sample_rate
        ring, thread = engine.playback, self._thread
        wake = thread.wake.set
        inbox = self.inbox
        name_os_thread("vc-playback")

        def ready() -> bool:
            return bool(inbox) or ring.available < n

        def on_read() -> None:  # the output callback: wake us once a frame fits again
            if ring.available < n:
                wake()

        ring.on_read = on_read

        try:
            while not thread.stopping.is_set():
                self.drain(self._clock())
                if ring.available >= n:
                    # Until the device needs the next frame or voice arrives (``wake``, which
                    # the connection sets after each append: arrival times stay exact).
                    paused = self._silent_frames >= self._idle_after and self._want_output
                    thread.sleep_until(ready, IDLE_SLEEP_S if paused else 2 * period)
                    continue
                self.render(self._clock())
        finally:
            ring.on_read = None

    @property
    def wake(self) -> Callable[[], None]:
        """Call after appending to :attr:`inbox` (any thread): the worker takes it at once."""
        return self._thread.wake.set

    def drain(self, now: float) -> None:
        """Move opened voice frames from the connection into the jitter buffers."""
        inbox, playback, heard = self.inbox, self.playback, self._heard
        if inbox and self._silent_frames:
            self._silent_frames = 0
            if self._want_output is not None:
                self._want_output(True)  # voice: the speakers again (a no-op if they run)
        while inbox:
            frame = inbox.popleft()
            playback.push(frame.sender_id, frame.channel_id, frame.payload, frame.last, now)
            key = (frame.sender_id, frame.channel_id)
            if frame.last:
                if heard.pop(key, None) is not None:
                    self._heard_changed = True
            else:
                if key not in heard:
                    self._heard_changed = True
                heard[key] = now

    def render(self, now: float) -> None:
        """Mix one frame into the engine's playback ring."""
        while self.commands:
            self.commands.popleft()()
        while self.cue_requests:
            kind, channel = self.cue_requests.popleft()
            voice, pan = self.cue_voices.get(channel, _CENTRE_VOICE)
            self.cue_player.trigger(kind, voice, pan)
        self.playback.render_into(self._out, now)
        self.cue_player.mix_into(self._out, self._channels)
        ring = self.engine.playback
        # The device zero-fills a callback that finds the ring dry (we were late): that silence
        # was played after everything written so far, so it goes to the far end before this
        # frame, keeping the far end the exact sequence the speakers played.
        underruns = ring.underrun_samples
        dry = underruns - self._underruns_seen
        self._underruns_seen = underruns
        ring.write(self._out)
        far_end = self.far_end
        if far_end is not None:
            if dry > 0:
                far_end.put_silence(dry // self._channels)
            far_end.put(self._out, self._channels)
        if self._want_output is not None:
            self._watch_idle()
        self.output_level = self.playback.mixer.level
        self.frames += 1
        if self.frames % TALKING_CHECK_FRAMES == 0 or self._heard_changed:
            self._update_talking(now)
        self.reports.extend(self.playback.loss_reports(now))

    def _watch_idle(self) -> None:
        """Tell the audio host to stop the speakers after IDLE_PAUSE_S of digital silence with
        no cue due; voice in the inbox or a cue starts them again (drain, the capture worker)."""
        if self._out.any() or self.cue_player.active or self.cue_requests:
            self._silent_frames = 0
            return
        self._silent_frames += 1
        if self._silent_frames == self._idle_after and self._want_output is not None:
            self._want_output(False)
            if self.inbox or self.cue_requests:
                self._want_output(True)
                self._silent_frames = 0

    def _update_talking(self, now: float) -> None:
        heard = self._heard
        if not heard and not self._heard_changed:
            return  # nobody talking: nothing to scan, nothing to publish
        stale = [key for key, at in heard.items() if now - at > TALKING_HOLD_S]
        for key in stale:
            del heard[key]
        if stale or self._heard_changed:
            self._heard_changed = False
            self.talking = frozenset(heard)
