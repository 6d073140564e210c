"""The app's side of the audio host: :class:`AudioHost` supervises ``voipclient --audio-host``,
and :class:`HostEngine` is the :class:`~voipclient.audio.engine.AudioEngine` the workers use.

The workers see the same thing as with an in-process engine: a capture ring to read and a
playback ring to fill (here :class:`~voipclient.audio.shm.SharedSampleRing` over the shared
block), plus a wake descriptor per ring that the host's callbacks write a byte to, so they sleep
on the device clock (``capture_wake_fd`` / ``playback_wake_fd``, read by the workers'
``FdWaker``). Nothing per frame crosses a pipe as data.

The supervisor thread (``audio-host``) starts the process, reads its answers (one JSON line per
message), and starts it again at once when it ends (an ``abort()`` inside PortAudio, SIGKILL) or
stops stamping its heartbeat for :data:`HANG_S` (a driver hung in a call; then it is killed
first). The new host maps the same block, so the rings, their positions and the workers carry on;
the supervisor replays the last ``open`` so the same devices come back. What happened reaches the
GUI thread as a :class:`~voipclient.audio.engine.DeviceEvent` (``"host_restarted"``) through the
engine's :meth:`HostEngine.poll`, which the controller calls on a timer: the GUI thread never
waits on the host or on PortAudio.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any, Final

from voipclient.audio import shm
from voipclient.audio.engine import (
    OUTPUT_CHANNELS,
    RING_SAMPLES,
    SAMPLE_RATE,
    DeviceEvent,
    EngineStats,
)
from voipclient.audio.host import host_argv
from voipclient.audio.ring import SampleRing
from voipclient.audio.sd_engine import DeviceInfo, DeviceSpec

log = logging.getLogger("voipclient.audio.host_engine")

HANG_S: Final = 2.0  # s without a heartbeat: the host is hung (its loop beats every 0.1 s)
START_GRACE_S: Final = 10.0  # s a new host may take to beat first (a cold start on a slow disk)
WATCH_S: Final = 0.25  # supervisor's check period while the host says nothing
QUICK_DEATH_S: Final = 1.0  # a host that dies sooner than this after its start ...
QUICK_DEATHS_FREE: Final = 3  # ... more than this many times in a row (a crash loop) ...
MAX_BACKOFF_S: Final = 5.0  # ... is restarted after a growing pause, up to this
LOG_FILE: Final = "audio-host.log"
LOG_MAX_BYTES: Final = 1_000_000


def supported() -> bool:
    """Whether this platform runs the audio host (POSIX: descriptors pass to the child)."""
    return os.name == "posix"


class AudioHost:
    """One supervised ``voipclient --audio-host`` process and the block it shares with us.

    Thread use: :meth:`open`, :meth:`stop_streams`, :meth:`close` from the GUI thread; the
    supervisor thread reads the process and fills :attr:`events`; the workers use the rings.
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        ring_samples: int = RING_SAMPLES,
        hang_s: float = HANG_S,
        argv: list[str] | None = None,
    ) -> None:
        self.block = shm.create(ring_samples)
        # (capture, playback): we read, the host writes; then (host): we write, the host reads
        self._wake = (os.pipe(), os.pipe(), os.pipe())
        for r, _w in self._wake[:2]:
            os.set_blocking(r, False)
        self._poke_host = self._wake[2][1]
        os.set_blocking(self._poke_host, False)
        self.block[shm.Slot.WANT_INPUT] = self.block[shm.Slot.WANT_OUTPUT] = 1
        self.capture_wake_fd = self._wake[0][0]
        self.playback_wake_fd = self._wake[1][0]
        self.hang_s = hang_s
        self._argv = argv or host_argv()
        self._log_dir = log_dir
        #: (what, payload) for the GUI thread: ("event", DeviceEvent) or ("opened", dict)
        self.events: collections.deque[tuple[str, Any]] = collections.deque(maxlen=256)
        #: the host's device list as of its last answer (the settings dialog shows it)
        self.devices: list[DeviceInfo] = []
        self.restarts = 0
        #: PortAudio's version as the host reported it ("" until it started)
        self.portaudio = ""
        #: how the host's callback threads are scheduled, as it reported it
        self.scheduling = ""
        self.last_exit = ""  # why the last host ended, in words
        self.pid = 0
        self._lock = threading.Lock()  # _proc and _request, between the GUI and supervisor
        self._proc: subprocess.Popen[str] | None = None
        self._request: dict[str, Any] | None = None
        self._request_sent = False  # some host got _request (a later one gets it as a replay)
        self._open_pending = False  # an open was sent and not answered yet
        self._attempt = 0
        self._stopping = threading.Event()
        self._counts_base = [0, 0, 0, 0]  # frames in/out, overflows, underflows of dead hosts
        self._thread = threading.Thread(target=self._supervise, name="audio-host", daemon=True)
        self._thread.start()

    # -- GUI thread ------------------------------------------------------------------------------
    def open(self, input_device: DeviceSpec, output_device: DeviceSpec, frame_samples: int) -> int:
        """Ask for the devices (kept and replayed after a restart); returns the attempt number
        the matching ``opened`` answer carries. Never waits."""
        with self._lock:
            self._attempt += 1
            self._request = {
                "op": "open",
                "attempt": self._attempt,
                "input": input_device,
                "output": output_device,
                "frame_samples": frame_samples,
            }
            # False if no host runs yet: the supervisor sends it as a first open, not a replay
            self._request_sent = self._send(self._request)
            self._open_pending = True  # PortAudio work: judged by START_GRACE_S, not hang_s
            return self._attempt

    @property
    def open_pending(self) -> bool:
        """An open was sent to the host and not answered yet (judged by START_GRACE_S)."""
        return self._open_pending

    def stop_streams(self) -> None:
        with self._lock:
            self._request = None
            self._send({"op": "stop"})

    def close(self, timeout: float = 3.0) -> None:
        """End the host (EOF on its stdin, then SIGKILL after ``timeout``) and the supervisor."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout)
        if self._thread.is_alive():  # still busy with a host: it may read the block; leave it
            log.error("audio host supervisor did not stop within %.0f s", timeout)
            return
        for r, w in self._wake:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.block.close()
        os.close(self.block.fd)

    def want(self, slot: shm.Slot, wanted: bool) -> None:
        """Say whether the microphone (``WANT_INPUT``) or the speakers (``WANT_OUTPUT``) are
        needed; the host starts or stops that stream at once. Any thread, lock-free, no
        allocation: a header store and, only on a change, one byte into the host's wake pipe."""
        value = 1 if wanted else 0
        header = self.block.header
        if header[slot] == value:
            return
        header[slot] = value
        try:  # noqa: SIM105 - called from audio threads: no context-manager object
            os.write(self._poke_host, b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway; closed: we are shutting down

    def stats(self) -> tuple[int, int, int, int]:
        """(frames in, frames out, input overflows, output underflows) over all hosts so far."""
        b, base = self.block, self._counts_base
        return (
            base[0] + b[shm.Slot.FRAMES_IN],
            base[1] + b[shm.Slot.FRAMES_OUT],
            base[2] + b[shm.Slot.INPUT_OVERFLOWS],
            base[3] + b[shm.Slot.OUTPUT_UNDERFLOWS],
        )

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the running host (tests, benchmarks); returns its pid (0: none)."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return 0
        os.kill(proc.pid, sig)
        return proc.pid

    # -- both threads ------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> bool:
        """Write one command line to the current host (under ``_lock``); False if none took it.
        A host that is gone is not an error: the supervisor starts another and replays
        ``_request``."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    # -- supervisor thread -------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[str]:
        fds = (self.block.fd, self._wake[0][1], self._wake[1][1], self._wake[2][0])
        argv = [
            *self._argv,
            "--shm-fd",
            str(fds[0]),
            "--capture-wake-fd",
            str(fds[1]),
            "--playback-wake-fd",
            str(fds[2]),
            "--host-wake-fd",
            str(fds[3]),
        ]
        stderr = self._open_log()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own executable, fixed arguments
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                pass_fds=fds,
                text=True,
                bufsize=1,
                # Not in the terminal's process group: Ctrl-C or Ctrl-Z there is for the app
                # (the host ends on EOF when the app does).
                start_new_session=True,
            )
        finally:
            if stderr is not None:
                stderr.close()
        self.pid = proc.pid
        return proc

    def _open_log(self) -> IO[bytes] | None:
        if self._log_dir is None:
            return None
        path = self._log_dir / LOG_FILE
        try:
            self._log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > LOG_MAX_BYTES:
                path.replace(path.with_suffix(".log.1"))
            return path.open("ab")
        except OSError as exc:
            log.warning("audio host log %s unusable (%s); its output goes to ours", path, exc)
            return None

    def _supervise(self) -> None:
        from voipclient.audio.workers import name_os_thread

        name_os_thread("vc-audio-sup")
        quick_deaths = 0
        while not self._stopping.is_set():
            try:
                proc = self._spawn()
            except OSError as exc:
                self.last_exit = f"it could not be started: {exc}"
                self.events.append(
                    ("event", DeviceEvent("host_failed", f"audio process: {self.last_exit}"))
                )
                log.error("audio host: %s", self.last_exit)
                self._stopping.wait(MAX_BACKOFF_S)
                continue
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():  # close() ran while we were starting it
                    _end(proc)
                    break
                self._proc = proc
                if self._request is not None:  # the devices the user had: same ones again
                    self._send({**self._request, "replay": self._request_sent})
                    self._request_sent = True
                    self._open_pending = True
            self._watch(proc, started)
            code = proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
            with self._lock:
                self._proc = None
                frames = self.stats()
                self._counts_base = list(frames)
                for slot in (
                    shm.Slot.FRAMES_IN,
                    shm.Slot.FRAMES_OUT,
                    shm.Slot.INPUT_OVERFLOWS,
                    shm.Slot.OUTPUT_UNDERFLOWS,
                ):
                    self.block[slot] = 0
            if self._stopping.is_set():
                break
            self.restarts += 1
            self.last_exit = _exit_words(code, self._hung)
            message = f"The audio process {self.last_exit}; restarted it"
            log.warning("%s (restart %d, pid %d)", message, self.restarts, proc.pid)
            self.events.append(("event", DeviceEvent("host_restarted", message)))
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            if quick_deaths > QUICK_DEATHS_FREE:  # a crash loop: do not spin on it
                self._stopping.wait(
                    min(MAX_BACKOFF_S, 0.25 * 2 ** (quick_deaths - QUICK_DEATHS_FREE - 1))
                )

    _hung = False

    def _watch(self, proc: subprocess.Popen[str], started: float) -> None:
        """Read the host's answers until it ends; kill it if its heartbeat stops."""
        self._hung = False
        out = proc.stdout
        assert out is not None
        fd = out.fileno()
        os.set_blocking(fd, False)
        pending = b""
        while True:
            try:
                readable, _, _ = select.select((fd,), (), (), WATCH_S)
            except (OSError, ValueError):
                return
            if readable:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return  # EOF: the host ended
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._answer(line)
                continue
            try:
                beat = self.block[shm.Slot.HEARTBEAT_NS] / 1e9
            except ValueError:  # the block was released: we are shutting down
                return
            now = time.monotonic()
            # Opening devices (PortAudio's own calls) may take a while on a cold or loaded
            # machine: only a host that is idle or running is held to hang_s.
            slow_ok = beat < started or self._open_pending
            grace = START_GRACE_S if slow_ok else self.hang_s
            if now - max(beat, started) > grace and proc.poll() is None:
                self._hung = True
                log.error(
                    "audio host pid %d stopped beating for %.1f s: killing it",
                    proc.pid,
                    now - max(beat, started),
                )
                proc.kill()

    def _answer(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            log.warning("audio host said something unreadable (%d bytes)", len(line))
            return
        if "devices" in message or op == "devices":
            found = message.get("devices", message.get("list", []))
            try:
                self.devices = [DeviceInfo(**d) for d in found]
            except TypeError:
                log.warning("audio host sent a device list of another shape")
        if op == "ready":
            self.portaudio = str(message.get("portaudio", ""))
        elif op == "scheduling":
            self.scheduling = str(message.get("text", ""))
        if op == "opened":
            self._open_pending = False
            self.events.append(("opened", message))
        elif op == "event":
            event = DeviceEvent(str(message.get("kind")), str(message.get("message")))
            self.events.append(("event", (event, message.get("input"), message.get("output"))))


def _end(proc: subprocess.Popen[str]) -> None:
    """End a host nobody will use: EOF, then SIGKILL if it does not go."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
    try:
        proc.wait(2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _exit_words(code: int, hung: bool) -> str:
    if hung:
        return "stopped responding (a sound driver hung) and was ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = "crashed inside the sound library" if -code == signal.SIGABRT else "was killed"
        return f"{what} ({name})"
    return f"exited with status {code}"


class HostEngine:
    """An :class:`~voipclient.audio.engine.AudioEngine` whose devices live in the audio host.

    ``start`` asks the host for the devices and returns at once; the outcome arrives later as a
    ``"opened"`` :class:`DeviceEvent` from :meth:`poll` (then :attr:`input_device`,
    :attr:`output_device` and :attr:`failures` say what works). Other device events
    (reopened, fallback, lost, recovered, returned, host_restarted) come the same way.
    """

    def __init__(
        self,
        host: AudioHost,
        input_device: DeviceSpec,
        output_device: DeviceSpec,
        *,
        frame_samples: int,
    ) -> None:
        self.host = host
        self.capture: SampleRing = host.block.capture
        self.playback: SampleRing = host.block.playback
        self.output_channels = OUTPUT_CHANNELS  # the host's device engine plays stereo frames
        self.capture_wake_fd = host.capture_wake_fd
        self.playback_wake_fd = host.playback_wake_fd
        self.on_event: Any = None
        self._spec = (input_device, output_device)
        self._frame_samples = frame_samples
        self._attempt = -1
        #: names of the devices running now (None: that side does not work, or not yet known)
        self.input_device: str | None = None
        self.output_device: str | None = None
        #: what failed at the last open, by the sides tried ("microphone and speakers", ...)
        self.failures: dict[str, str] = {}
        self.opened = False  # the host answered our open

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    def want_input(self, wanted: bool) -> None:
        """Whether anything needs the microphone now (see :meth:`AudioHost.want`)."""
        self.host.want(shm.Slot.WANT_INPUT, wanted)

    def want_output(self, wanted: bool) -> None:
        """Whether anything needs the speakers now (see :meth:`AudioHost.want`)."""
        self.host.want(shm.Slot.WANT_OUTPUT, wanted)

    def start(self) -> None:
        self.capture.discard()  # what an earlier pipeline left unread is stale
        self.want_input(True)  # a new pipeline starts listening; its workers pause what idles
        self.want_output(True)
        self._attempt = self.host.open(self._spec[0], self._spec[1], self._frame_samples)

    def stop(self) -> None:
        if self._attempt >= 0:
            self.host.stop_streams()
            self._attempt = -1

    def poll(self, now: float) -> list[DeviceEvent]:
        """GUI thread: pass on what the host said since the last call."""
        del now
        out: list[DeviceEvent] = []
        events = self.host.events
        while events:
            what, payload = events.popleft()
            if what == "opened":
                if payload.get("attempt") != self._attempt:
                    continue  # the answer to an earlier engine's open
                self.input_device = payload.get("input")
                self.output_device = payload.get("output")
                self.failures = dict(payload.get("failures") or {})
                self.opened = True
                event = DeviceEvent("opened", _opened_words(self.input_device, self.output_device))
            elif isinstance(payload, tuple):  # a device event, with the devices in use after it
                event, self.input_device, self.output_device = payload
            else:
                event = payload  # the supervisor's own (host_restarted, host_failed)
            out.append(event)
            if self.on_event is not None:
                self.on_event(event)
        return out

    def stats(self) -> EngineStats:
        frames_in, frames_out, _, _ = self.host.stats()
        return EngineStats(
            overruns=self.capture.overrun_samples,
            underruns=self.playback.underrun_samples,
            frames_in=frames_in,
            frames_out=frames_out,
        )


def _opened_words(input_device: str | None, output_device: str | None) -> str:
    parts = []
    if input_device:
        parts.append(f"microphone {input_device!r}")
    if output_device:
        parts.append(f"speakers {output_device!r}")
    return "audio devices open: " + (", ".join(parts) if parts else "none")
