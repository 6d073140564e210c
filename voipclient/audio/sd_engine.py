"""An :class:`~voipclient.audio.engine.AudioEngine` on a real device via sounddevice (PortAudio).

Two separate streams, one per direction (so one direction can fail, fall back or be disabled
without touching the other): an ``InputStream`` whose callback copies the microphone into
``capture`` and an ``OutputStream`` whose callback fills the device buffer from ``playback``
(zero-filled on underrun). Format: 48 kHz int16, ``blocksize = frame_samples``; the microphone
mono, the playback ring interleaved stereo (played as is on a device with two or more channels,
folded down to (L + R) / 2 on a mono one).

Real-time rules (ARCHITECTURE "Threads and mailboxes"): the callbacks only slice-copy between the
preallocated rings and add to plain int counters. No locks, logging, Qt or events there; the
sounddevice wrapper itself allocates a small numpy header and a ``CallbackFlags`` per call, which
we cannot avoid without dropping to raw CFFI.

Device trouble is found by :meth:`SoundDeviceEngine.poll` ``(now)``, which the owner calls every
100-500 ms from its own thread: a stream that finished or aborted (PortAudio calls our
``finished_callback``, e.g. when the sound server goes away), or a stall (no callback for
``stall_timeout`` s). Recovery: reopen the same device; if that fails, the device vanished or the
failing stream never produced a callback, fall back to the system default device (event
``"fallback"``); with no working device at all, report ``"lost"`` and retry every
``retry_interval`` s until one opens (``"recovered"``). The rings are never replaced: the
workers keep their references across all of this.

PortAudio takes its device list once, at ``Pa_Initialize``: a device plugged in or removed later
is not seen until PortAudio is terminated and initialized again. ``Pa_Terminate`` closes every
open stream of the process, so :func:`refresh_devices` does it only while no stream opened by
this module is open (counted in ``_open_streams``); recovery closes the failed streams first and
then refreshes if it can. ``sounddevice`` is imported only here, and lazily, so that a machine
without the PortAudio library gets an :class:`~voipclient.errors.AudioDeviceError`, not an
ImportError, and the pure device-matching code below is importable without it.

Threading: construct, ``start``, ``stop``, ``poll``, ``close`` from one owner thread.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import numpy as np
import numpy.typing as npt

from voipclient.audio import pulse
from voipclient.audio.engine import (
    FRAME_SAMPLES,
    OUTPUT_CHANNELS,
    RING_SAMPLES,
    SAMPLE_RATE,
    DeviceEvent,
    EngineStats,
    EventCallback,
)
from voipclient.audio.ring import SampleRing
from voipclient.errors import AudioDeviceError

Kind = Literal["input", "output"]
DeviceSpec = int | str | None
"""None = the system default, an int = a PortAudio device index, a str = part of a device name."""
Latency = Literal["low", "high"] | float
"""PortAudio's suggested latency: the device's low/high default, or seconds."""

CHANNELS: Final = 1
STALL_TIMEOUT: Final = 1.0  # s without a callback, once a stream has had time to start
# s a freshly opened stream may take to start calling back. Real devices start within ~50 ms, but
# a PulseAudio null sink that was idle keeps its 2 s idle latency until its next wake-up, so the
# first callbacks can come ~2 s after the stream started.
START_TIMEOUT: Final = 5.0
RETRY_INTERVAL: Final = 3.0  # s between attempts to open any device while none works

_HINT = "connect a {what} or start PulseAudio/PipeWire"
_WHAT: Final[dict[Kind, str]] = {"input": "microphone", "output": "headset or speakers"}

# Streams this module has opened and not closed yet, process-wide, because PortAudio is
# process-wide: refresh_devices() must not terminate PortAudio under any of them.
_open_streams = 0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One PortAudio device as the settings UI and the device matching see it."""

    index: int
    """PortAudio device index; valid until the device list is refreshed."""
    name: str
    """PortAudio's device name (ALSA PCM name on Linux, e.g. ``"pulse"``, ``"default"``)."""
    hostapi: str
    """Host API name, e.g. ``"ALSA"``, ``"WASAPI"``, ``"Core Audio"``."""
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    """Hz."""
    is_default_input: bool
    is_default_output: bool
    pulse_name: str | None = None
    """A PulseAudio/PipeWire sink or source reached through PortAudio's ``pulse`` device
    (:mod:`voipclient.audio.pulse`); ``name`` is then its description."""

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def is_default(self, kind: Kind) -> bool:
        return self.is_default_input if kind == "input" else self.is_default_output

    def label(self) -> str:
        return f"[{self.index}] {self.name} ({self.hostapi})"


# -- pure device matching (unit-tested with fake device lists) ---------------------------------


def no_device_message(kind: Kind, total_devices: int) -> str:
    """Why there is no ``kind`` device and what to do, for AudioDeviceError and the UI."""
    return (
        f"no audio {kind} device found (PortAudio sees {total_devices} device"
        f"{'' if total_devices == 1 else 's'}, none with {kind} channels); "
        + _HINT.format(what=_WHAT[kind])
    )


def _candidates_text(candidates: Sequence[DeviceInfo]) -> str:
    return ", ".join(d.label() for d in candidates) if candidates else "none"


def select_device(devices: Sequence[DeviceInfo], spec: DeviceSpec, kind: Kind) -> DeviceInfo:
    """The device ``spec`` names among ``devices`` for ``kind``; AudioDeviceError otherwise.

    Only devices with ``kind`` channels are candidates. ``None`` picks the default device (the
    first candidate if PortAudio marks none). A str matches case-insensitively: a device whose
    whole name equals it wins (so ``"pulse"`` is not ambiguous next to ``"pulse monitor"``);
    otherwise it must be a substring of exactly one device name. Errors list the candidates.
    """
    candidates = [d for d in devices if d.channels(kind) > 0]
    if spec is None:
        if not candidates:
            raise AudioDeviceError(no_device_message(kind, len(devices)))
        for d in candidates:
            if d.is_default(kind):
                return d
        return candidates[0]
    if isinstance(spec, int):
        for d in candidates:
            if d.index == spec:
                return d
        raise AudioDeviceError(
            f"no {kind} device with index {spec}; {kind} devices: {_candidates_text(candidates)}"
        )
    wanted = spec.casefold()
    exact = [d for d in candidates if d.name.casefold() == wanted]
    if len(exact) == 1:
        return exact[0]
    partial = exact or [d for d in candidates if wanted in d.name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise AudioDeviceError(
            f"no {kind} device matches {spec!r}; {kind} devices: {_candidates_text(candidates)}"
        )
    raise AudioDeviceError(
        f"{kind} device name {spec!r} is ambiguous, it matches: {_candidates_text(partial)}; "
        "use more of the name or the index"
    )


def find_by_name(devices: Sequence[DeviceInfo], name: str, kind: Kind) -> DeviceInfo | None:
    """The ``kind`` device called exactly ``name`` (the same device after a refresh), or None."""
    for d in devices:
        if d.name == name and d.channels(kind) > 0:
            return d
    return None


# -- the PortAudio boundary ---------------------------------------------------------------------


def _sounddevice() -> Any:
    """The sounddevice module (untyped: ``Any`` stops here), or AudioDeviceError."""
    try:
        return importlib.import_module("sounddevice")
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise AudioDeviceError(
            f"the PortAudio library is not available ({exc}); install libportaudio2 "
            "(Debian/Ubuntu) or portaudio, or use a build that bundles it"
        ) from exc


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio currently knows, with the system defaults marked."""
    sd = _sounddevice()
    default_in, default_out = (int(i) for i in sd.default.device)
    hostapis = [str(h["name"]) for h in sd.query_hostapis()]
    devices = [
        DeviceInfo(
            index=int(d["index"]),
            name=str(d["name"]),
            hostapi=hostapis[int(d["hostapi"])],
            max_input_channels=int(d["max_input_channels"]),
            max_output_channels=int(d["max_output_channels"]),
            default_samplerate=float(d["default_samplerate"]),
            is_default_input=int(d["index"]) == default_in,
            is_default_output=int(d["index"]) == default_out,
        )
        for d in sd.query_devices()
    ]
    return devices + sound_server_devices(devices)


def sound_server_devices(devices: Sequence[DeviceInfo]) -> list[DeviceInfo]:
    """The sound server's sinks and sources by their own names, each reached through
    PortAudio's ``pulse`` device (none when PortAudio has no such device or no server runs)."""
    via = next((d for d in devices if d.name == "pulse"), None)
    if via is None:
        return []
    out: list[DeviceInfo] = []
    for kind in ("input", "output"):
        endpoints = pulse.list_endpoints(kind)
        for e, label in zip(endpoints, pulse.display_names(endpoints), strict=True):
            out.append(
                DeviceInfo(
                    index=via.index,
                    name=label,
                    hostapi="PulseAudio",
                    max_input_channels=e.channels if kind == "input" else 0,
                    max_output_channels=e.channels if kind == "output" else 0,
                    default_samplerate=float(e.rate),
                    is_default_input=False,
                    is_default_output=False,
                    pulse_name=e.name,
                )
            )
    return out


def refresh_devices() -> bool:
    """Re-read PortAudio's device list (terminate + initialize); False if a stream is open.

    Only safe while no stream is open: ``Pa_Terminate`` would close them under their owners.
    """
    if _open_streams:
        return False
    sd = _sounddevice()
    # Private in sounddevice, but the only way to make PortAudio re-read its device list.
    sd._terminate()
    sd._initialize()
    return True


class _Side:
    """One direction: what was asked for, what is open, and what poll() needs to judge it."""

    def __init__(self, kind: Kind, requested: DeviceInfo) -> None:
        self.kind: Kind = kind
        self.requested = requested  # the device the user chose (resolved at construction)
        self.device: DeviceInfo | None = None  # the device of the current (or last) stream
        self.stream: Any = None
        self.finished = False  # set by PortAudio's finished_callback of the current stream
        self.generation = 0  # bumped per stream: a late finished_callback of an old one is ignored
        self.opened_at = 0.0  # poll clock (s) of the current stream's start, or of the first poll
        self.seen_frames = 0  # frame counter at the last poll that saw it change
        self.progress_at = 0.0  # poll clock (s) when the counter last changed
        # The current stream called back between two polls. Callbacks before the first poll do
        # not count: an output stream pre-fills its buffer with a few callbacks inside start(),
        # even on a device that then never plays.
        self.progressed = False
        self.clock_known = False  # opened_at/progress_at are set on the poll clock
        self.lost = False  # no device works; retry at next_retry
        self.next_retry = 0.0
        self.paused = False  # stopped on purpose (nothing to play or capture): not a failure
        self.channels = 1  # of the open stream (output: 2, or 1 on a mono device)


class SoundDeviceEngine:
    """PortAudio input and output streams feeding ``capture`` and draining ``playback``."""

    def __init__(
        self,
        input_device: DeviceSpec = None,
        output_device: DeviceSpec = None,
        *,
        frame_samples: int = FRAME_SAMPLES,
        ring_samples: int = RING_SAMPLES,
        on_event: EventCallback | None = None,
        latency: Latency = "low",
        input_enabled: bool = True,
        output_enabled: bool = True,
        stall_timeout: float = STALL_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
        rings: tuple[SampleRing, SampleRing] | None = None,
    ) -> None:
        """``rings`` = (capture, playback) to use instead of new ones (the audio host passes its
        shared-memory rings)."""
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, not {frame_samples}")
        if not (input_enabled or output_enabled):
            raise ValueError("an engine needs input, output or both enabled")
        self._sd = _sounddevice()
        self._frame_samples = frame_samples
        self._latency = latency
        self.stall_timeout = stall_timeout  # s
        self.start_timeout = start_timeout  # s
        self.retry_interval = retry_interval  # s
        if rings is None:
            rings = (SampleRing(ring_samples), SampleRing(ring_samples))
        self.capture, self.playback = rings
        #: The playback ring's format: interleaved stereo. A mono device gets the two sides
        #: folded down ((L + R) / 2) in the output callback.
        self.output_channels = OUTPUT_CHANNELS
        self._fold = np.zeros(2 * frame_samples, dtype=np.int16)
        self._fold_sum = np.zeros(frame_samples, dtype=np.int32)
        self.on_event = on_event
        # Written only by the callback threads (one writer each), read anywhere.
        self.frames_in = 0  # input callbacks (frames of frame_samples) since construction
        self.frames_out = 0  # output callbacks
        self.input_overflows = 0  # callbacks where PortAudio flagged input overflow
        self.output_underflows = 0  # callbacks where PortAudio flagged output underflow
        #: The callback threads' native ids (0 until a stream's first callback; back to 0 when it
        #: closes): the audio host raises them to real-time (:mod:`voipclient.audio.realtime`).
        self.input_thread = 0
        self.output_thread = 0
        self.running = False
        self._closed = False
        devices = list_devices()
        self._sides: list[_Side] = []
        self._input: _Side | None = None
        self._output: _Side | None = None
        if input_enabled:
            self._input = _Side("input", select_device(devices, input_device, "input"))
            self._sides.append(self._input)
        if output_enabled:
            self._output = _Side("output", select_device(devices, output_device, "output"))
            self._sides.append(self._output)

    # -- AudioEngine -------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    @property
    def input_device(self) -> DeviceInfo | None:
        """The device the input stream uses now (None: disabled, not started or lost)."""
        return self._current(self._input)

    @property
    def output_device(self) -> DeviceInfo | None:
        """The device the output stream uses now (None: disabled, not started or lost)."""
        return self._current(self._output)

    @staticmethod
    def _current(side: _Side | None) -> DeviceInfo | None:
        return side.device if side is not None and side.stream is not None else None

    def start(self) -> None:
        """Open and start the streams on the chosen devices; AudioDeviceError if one fails."""
        if self._closed:
            raise AudioDeviceError("SoundDeviceEngine.start() after close()")
        if self.running:
            return
        devices = list_devices()
        for side in self._sides:
            # Look the device up again by name: indices change when the list is refreshed.
            device = find_by_name(devices, side.requested.name, side.kind)
            if device is None:
                self._close_all()
                raise AudioDeviceError(
                    f"{side.kind} device {side.requested.name!r} is gone; "
                    f"{_HINT.format(what=_WHAT[side.kind])}, or pick another one in Settings"
                )
            error = self._open(side, device)
            if error is not None:
                self._close_all()
                raise AudioDeviceError(
                    f"cannot open {side.kind} device {device.label()}: {error}; pick another "
                    f"{side.kind} device in Settings or check that it is not in exclusive use"
                )
        self.running = True
        names = ", ".join(f"{s.kind} {s.requested.name!r}" for s in self._sides)
        self._emit("started", f"sounddevice engine: {names}")

    def stop(self) -> None:
        """Abort and close the streams (the rings keep their contents). Idempotent."""
        was_running = self.running
        self.running = False
        self._close_all()
        if was_running:
            self._emit("stopped", "sounddevice engine")

    def close(self) -> None:
        """Stop for good. Idempotent."""
        self.stop()
        self._closed = True

    def stats(self) -> EngineStats:
        return EngineStats(
            overruns=self.capture.overrun_samples,
            underruns=self.playback.underrun_samples,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- watching the device -----------------------------------------------------------------

    def poll(self, now: float) -> list[DeviceEvent]:
        """Check the streams, recover if needed; return the events (also passed to on_event).

        ``now`` is seconds on any monotonic clock, the same one on every call. Call every
        100-500 ms while running; it does nothing while stopped.
        """
        if not self.running:
            return []
        failed: list[tuple[_Side, str]] = []
        retry: list[_Side] = []
        for side in self._sides:
            if side.lost:
                if now >= side.next_retry:
                    retry.append(side)
                continue
            problem = self._check(side, now)
            if problem is not None:
                failed.append((side, problem))
        events: list[DeviceEvent] = []
        if failed or retry:
            for side, _ in failed:
                self._close_side(side)
            # Refresh only after closing the failed streams: it is impossible while any is open.
            refreshed = refresh_devices()
            devices = list_devices()
            events += [self._recover(s, why, devices, refreshed, now) for s, why in failed]
            events += [e for s in retry if (e := self._retry(s, devices, now)) is not None]
        for event in events:
            if self.on_event is not None:
                self.on_event(event)
        return events

    def set_paused(self, kind: Kind, paused: bool) -> bool:
        """Stop ``kind``'s stream while nothing needs it (the device stays open; no callbacks,
        no wake-ups) or start it again; True if that changed anything. A paused side is not
        watched for stalls. Starting again takes one device period (~20-40 ms to the first
        input callback on PulseAudio)."""
        side = self._input if kind == "input" else self._output
        if side is None or side.stream is None or side.paused == paused:
            return False
        if paused:
            side.paused = True
            side.stream.abort(ignore_errors=True)  # abort: stop() may wait on a stuck sink
            return True
        side.finished = False  # the abort's finished_callback was ours, not a failure
        side.clock_known = False  # judge it from the next poll on (progressed stays: the
        side.paused = False  # device worked before the pause, so a failure reopens it first)
        try:
            side.stream.start()
        except self._sd.PortAudioError:
            side.finished = True  # poll() recovers it like any stream that stopped
        return True

    def is_paused(self, kind: Kind) -> bool:
        side = self._input if kind == "input" else self._output
        return side is not None and side.paused

    def _check(self, side: _Side, now: float) -> str | None:
        """Why this side's stream is not working, or None if it is."""
        if side.paused:
            return None
        frames = self._frames(side.kind)
        if not side.clock_known:  # first poll since (re)opening: put the stream on poll's clock
            side.clock_known = True
            side.opened_at = side.progress_at = now
            side.seen_frames = frames
        if frames != side.seen_frames:
            side.seen_frames = frames
            side.progress_at = now
            side.progressed = True
        if side.finished or not side.stream.active:
            return "its stream stopped (device or sound server gone)"
        if (
            now - side.opened_at > self.start_timeout
            and now - side.progress_at > self.stall_timeout
        ):
            return f"no audio callback for {now - side.progress_at:.1f} s (device stalled)"
        return None

    def _frames(self, kind: Kind) -> int:
        return self.frames_in if kind == "input" else self.frames_out

    def _recover(
        self, side: _Side, why: str, devices: list[DeviceInfo], refreshed: bool, now: float
    ) -> DeviceEvent:
        old = side.device or side.requested
        what = f"{side.kind} device {old.name!r}"
        same = find_by_name(devices, old.name, side.kind)
        if same is None and refreshed:
            why += "; it vanished from the device list"
        # Reopen a device that worked (a transient failure). One that never called back since it
        # was opened is not worth a second try as is: go to the default instead.
        tried_same = same is not None and side.progressed
        if tried_same and same is not None and self._open(side, same) is None:
            return DeviceEvent("reopened", f"{what}: {why}; reopened it")
        default = self._default(devices, side.kind)
        worth_trying = default is not None and not (tried_same and default.name == old.name)
        if worth_trying and default is not None and self._open(side, default) is None:
            if default.name == old.name:
                return DeviceEvent("reopened", f"{what}: {why}; reopened it")
            return DeviceEvent(
                "fallback",
                f"{what}: {why}; now using the default {side.kind} device {default.name!r}",
            )
        side.lost = True
        side.next_retry = now + self.retry_interval
        return DeviceEvent(
            "lost",
            f"{what}: {why}; no {side.kind} device works: "
            f"{_HINT.format(what=_WHAT[side.kind])} (retrying every {self.retry_interval:g} s)",
        )

    def _retry(self, side: _Side, devices: list[DeviceInfo], now: float) -> DeviceEvent | None:
        """One more attempt for a lost side: the device asked for first, then the default."""
        wanted = find_by_name(devices, side.requested.name, side.kind)
        default = self._default(devices, side.kind)
        for device in (wanted, default):
            if device is not None and self._open(side, device) is None:
                side.lost = False
                return DeviceEvent(
                    "recovered", f"{side.kind} device {device.name!r} is working again"
                )
        side.next_retry = now + self.retry_interval
        return None

    @staticmethod
    def _default(devices: list[DeviceInfo], kind: Kind) -> DeviceInfo | None:
        try:
            return select_device(devices, None, kind)
        except AudioDeviceError:
            return None

    # -- back to the chosen device -------------------------------------------------------------

    def away_from_chosen(self) -> list[Kind]:
        """The sides running on another device than the one asked for (after a fallback), or
        lost: they should go back once the chosen device is listed again."""
        return [
            s.kind
            for s in self._sides
            if self.running
            and (s.lost or (s.device is not None and s.device.name != s.requested.name))
        ]

    def return_to_chosen(self, now: float) -> list[DeviceEvent]:
        """Reopen every side on the device asked for, now that it is listed again (a probe of a
        fresh PortAudio said so). PortAudio can re-read its device list only with no stream open,
        so both streams close for the moment of the switch; a side whose chosen device still
        fails goes back to what worked. Events are returned and passed to ``on_event``."""
        away = self.away_from_chosen()
        if not away:
            return []
        previous = {s.kind: s.device for s in self._sides}
        self._close_all()
        refresh_devices()
        devices = list_devices()
        events: list[DeviceEvent] = []
        for side in self._sides:
            wanted = find_by_name(devices, side.requested.name, side.kind)
            if side.kind in away and wanted is not None and self._open(side, wanted) is None:
                events.append(
                    DeviceEvent(
                        "returned",
                        f"{side.kind} device {wanted.name!r} is back; using it again",
                    )
                )
                continue
            before = previous[side.kind]
            again = find_by_name(devices, before.name, side.kind) if before else None
            fallback = again or self._default(devices, side.kind)
            if fallback is None or self._open(side, fallback) is not None:
                side.lost = True
                side.next_retry = now + self.retry_interval
        for event in events:
            if self.on_event is not None:
                self.on_event(event)
        return events

    # -- streams -----------------------------------------------------------------------------

    def _open(self, side: _Side, device: DeviceInfo) -> str | None:
        """Open and start ``side``'s stream on ``device``; None on success, else the error."""
        global _open_streams  # noqa: PLW0603 - PortAudio's stream set is process-wide
        self._close_side(side)
        side.generation += 1
        generation = side.generation

        def finished() -> None:  # PortAudio's thread; only a flag, and only for this stream
            if side.generation == generation:
                side.finished = True

        cls = self._sd.InputStream if side.kind == "input" else self._sd.OutputStream
        callback = self._input_callback if side.kind == "input" else self._output_callback
        # A named sink/source: libpulse reads PULSE_SINK/SOURCE when the stream is opened.
        var = pulse.ENV[side.kind]
        before = os.environ.get(var)
        if device.pulse_name is not None:
            os.environ[var] = device.pulse_name
        channels = CHANNELS
        if side.kind == "output":
            channels = OUTPUT_CHANNELS if device.max_output_channels >= OUTPUT_CHANNELS else 1
        try:
            stream = cls(
                device=device.index,
                samplerate=SAMPLE_RATE,
                channels=channels,
                dtype="int16",
                blocksize=self._frame_samples,
                latency=self._latency,
                callback=callback,
                finished_callback=finished,
            )
        except (self._sd.PortAudioError, ValueError) as exc:
            return str(exc)
        finally:
            if before is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = before
        _open_streams += 1
        side.stream = stream
        side.channels = channels
        side.device = device
        side.paused = False
        side.finished = False
        side.progressed = False
        side.clock_known = False
        try:
            stream.start()
        except self._sd.PortAudioError as exc:
            self._close_side(side)
            return str(exc)
        return None

    def _close_side(self, side: _Side) -> None:
        global _open_streams  # noqa: PLW0603 - see _open
        stream, side.stream = side.stream, None
        if stream is None:
            return
        if side is self._input:
            self.input_thread = 0
        if side is self._output:
            self.output_thread = 0
        side.generation += 1  # its finished_callback (called by abort) is no longer news
        # abort(), not stop(): stop() waits for queued output to play, which never happens on a
        # suspended or vanished sink (observed: stop() hung on a suspended PulseAudio sink).
        try:
            stream.abort(ignore_errors=True)
        finally:
            stream.close(ignore_errors=True)
            _open_streams -= 1

    def _close_all(self) -> None:
        for side in self._sides:
            self._close_side(side)
            side.lost = False

    # -- PortAudio callback threads: copy and count, nothing else ------------------------------

    def _input_callback(
        self, indata: npt.NDArray[np.int16], frames: int, time: Any, status: Any
    ) -> None:
        self.capture.write(indata[:, 0])  # a view of PortAudio's buffer; the ring copies
        self.frames_in += 1
        if not self.input_thread:  # once per stream
            self.input_thread = threading.get_native_id()
        if status and status.input_overflow:
            self.input_overflows += 1

    def _output_callback(
        self, outdata: npt.NDArray[np.int16], frames: int, time: Any, status: Any
    ) -> None:
        if outdata.shape[1] == OUTPUT_CHANNELS:
            self.playback.read_into(outdata.reshape(-1))  # fills it completely, zeros on underrun
        elif 2 * frames <= self._fold.shape[0]:  # a mono device: fold the two sides down
            both = self._fold[: 2 * frames]
            self.playback.read_into(both)
            total = self._fold_sum[:frames]
            np.add(both[0::2], both[1::2], out=total, dtype=np.int32)
            np.right_shift(total, 1, out=total)
            np.copyto(outdata[:, 0], total, casting="unsafe")
        else:  # never with a fixed blocksize; play silence rather than allocate here
            self.playback.discard(2 * frames)
            outdata.fill(0)
        self.frames_out += 1
        if not self.output_thread:  # once per stream
            self.output_thread = threading.get_native_id()
        if status and status.output_underflow:
            self.output_underflows += 1

    def _emit(self, kind: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(DeviceEvent(kind, message))
