"""``voipclient --audio-host``: the child process that owns the sound devices.

PortAudio runs here and nowhere else in the desktop app, so that what goes wrong inside it (a C
``abort()`` when a stream is reopened right after the sound server dropped it, a driver that hangs
in a call) ends or freezes this process, not the app: the app's supervisor
(:mod:`voipclient.audio.host_engine`) sees it die or stop beating and starts another one, which
reopens the same devices on the same shared rings.

What it does:

* maps the shared block the app passed as a descriptor (:mod:`voipclient.audio.shm`) and runs a
  :class:`~voipclient.audio.sd_engine.SoundDeviceEngine` on its two rings: the input callback
  writes the capture ring, the output callback reads the playback ring; each callback then writes
  one byte to the app's wake pipe for that ring, so the app's worker sleeps on the device clock
  as it does with an in-process engine;
* every :data:`POLL_S` its main loop stamps the heartbeat, copies the device counters into the
  header, polls the engine (stream stopped or stalled → reopen / fall back / lost / recovered),
  and while a side runs on a fallback device probes a fresh PortAudio for the chosen one and
  switches back when it is listed again;
* reads commands from stdin and answers on stdout, one JSON object per line (nothing per frame):
  ``open`` (devices, frame size) → ``opened`` (which devices run, what failed), ``stop`` →
  ``stopped``, ``devices`` → ``devices``; device events go out as ``event``. EOF on stdin (the
  app quit or died) ends the process.

``voipclient --audio-host --list-devices`` prints the device list as JSON and exits: the probe.
Its log and any crash dump go to stderr, which the app points at ``audio-host.log`` in its log
folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from voipclient.audio import shm
from voipclient.audio.engine import DeviceEvent
from voipclient.audio.realtime import promote_thread
from voipclient.errors import AudioDeviceError

log = logging.getLogger("voipclient.audio.host")

ARG: Final = "--audio-host"
POLL_S: Final = 0.25  # main loop: heartbeat, counters, device watch
IDLE_POLL_S: Final = 0.5  # the same while both streams are paused (the app's hang limit is 2 s)
PROBE_INTERVAL_S: Final = 5.0  # while on a fallback device: how often to look for the chosen one
PROBE_TIMEOUT_S: Final = 10.0
PROBE_FORCED_S: Final = 60.0  # probe at least this often while away, file marks or not

#: (input wanted, output wanted) in the order they are tried, and what each is called in messages
ATTEMPTS: Final = ((True, True), (False, True), (True, False))


def sides_name(use_input: bool, use_output: bool) -> str:
    if use_input and use_output:
        return "microphone and speakers"
    return "microphone" if use_input else "speakers"


def host_argv() -> list[str]:
    """The command line that starts the host: the bundle's executable, or this interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable, ARG]
    return [sys.executable, "-m", "voipclient", ARG]


def device_dicts() -> list[dict[str, Any]]:
    from voipclient.audio.sd_engine import list_devices

    return [dataclasses.asdict(d) for d in list_devices()]


# -- the process ------------------------------------------------------------------------------


#: The sound server's client I/O threads, by name: libpulse's threaded main loop
#: ("threaded-ml", one per stream where PortAudio's ALSA backend goes through the pulse plugin,
#: to PulseAudio or to PipeWire's pulse server) carries every sample between PortAudio's callback
#: and the server. At normal priority a CPU hog can hold it off for tens of milliseconds, long
#: enough for the server to play silence or drop microphone samples where nothing of ours
#: counts them (and the echo canceller's far end no longer matches what was played), so it is
#: raised with the callbacks. PipeWire's own client threads raise themselves (its module-rt).
IO_THREAD_NAMES: Final = frozenset({"threaded-ml"})


def io_threads() -> dict[int, str]:
    """This process's threads named in :data:`IO_THREAD_NAMES`: thread id → name (Linux; none
    elsewhere)."""
    found: dict[int, str] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name in IO_THREAD_NAMES:
            found[int(task)] = name
    return found


class _Host:
    def __init__(self, block: shm.SharedBlock, out: IO[str], wake_capture: int, wake_playback: int):
        self.block = block
        self.out = out
        self.engine: Any = None
        self.frame_samples = 960
        self.request: dict[str, Any] = {}
        self.on_defaults = False  # opened on the defaults because the chosen devices were gone
        self.next_probe = 0.0
        self.probe_mark: object = None
        self.probe_pending_mark: object = None
        self.probe_forced_at = 0.0
        self.probe: subprocess.Popen[str] | None = None
        self.probe_started = 0.0
        self._wake_capture = wake_capture
        self._wake_playback = wake_playback
        self.raised: dict[int, str] = {}  # callback threads raised so far: how
        capture, playback = block.capture, block.playback
        header = block.header
        stamp_ns, stamp_pos = shm.Slot.CAPTURE_STAMP_NS, shm.Slot.CAPTURE_STAMP_POS
        played_ns = shm.Slot.PLAYBACK_STAMP_NS
        written = shm.Slot.CAPTURE_WRITTEN
        monotonic_ns, write, poke = time.monotonic_ns, os.write, b"\0"

        # PortAudio's callback threads, after a publish: a stamp (the latency benchmark, the
        # restart test), and a byte into the app's wake pipe (non-blocking; a full pipe means
        # the app has a wake-up pending anyway).
        def captured() -> None:
            header[stamp_ns] = monotonic_ns()
            header[stamp_pos] = header[written]
            try:  # noqa: SIM105 - no context-manager object per callback
                write(wake_capture, poke)
            except OSError:
                pass

        def played() -> None:
            header[played_ns] = monotonic_ns()
            try:  # noqa: SIM105 - no context-manager object per callback
                write(wake_playback, poke)
            except OSError:
                pass

        capture.on_write = captured
        playback.on_read = played

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def event(self, event: DeviceEvent) -> None:
        log.info("device event %s: %s", event.kind, event.message)
        engine = self.engine
        self.send(
            {
                "op": "event",
                "kind": event.kind,
                "message": event.message,
                # the devices in use after it, so the app's view stays true
                "input": _name(engine.input_device) if engine is not None else None,
                "output": _name(engine.output_device) if engine is not None else None,
            }
        )

    # -- commands ----------------------------------------------------------------------------
    def handle(self, command: dict[str, Any], now: float) -> None:
        op = command.get("op")
        if op == "open":
            self.open(command, now)
        elif op == "stop":
            self.close_engine()
            self.send({"op": "stopped"})
        elif op == "devices":
            self.send({"op": "devices", "list": self.devices()})
        else:
            log.warning("unknown command %r", op)

    def open(self, command: dict[str, Any], now: float) -> None:
        from voipclient.audio.sd_engine import SoundDeviceEngine, refresh_devices

        self.close_engine()
        # nothing is open now: today's devices, not those at our start (if PortAudio is missing,
        # the engine below says so)
        with contextlib.suppress(AudioDeviceError):
            refresh_devices()
        self.request = command
        self.on_defaults = False
        self.frame_samples = int(command.get("frame_samples", 960))
        failures = self._open_engine(SoundDeviceEngine, command.get("input"), command.get("output"))
        chosen = command.get("input") is not None or command.get("output") is not None
        fell_back = False
        if failures and (command.get("replay") or command.get("returning")) and chosen:
            # A host started after a crash, whose devices went away meanwhile (a headset pulled
            # out may be what crashed it): the defaults, and back to the chosen ones later.
            self.close_engine()
            if not self._open_engine(SoundDeviceEngine, None, None):
                self.on_defaults = fell_back = True
                failures = {}
        engine = self.engine
        self.send(
            {
                "op": "opened",
                "attempt": command.get("attempt", 0),
                "input": _name(engine.input_device) if engine else None,
                "output": _name(engine.output_device) if engine else None,
                "failures": failures,
                "devices": self.devices(),
            }
        )
        self.apply_wants()
        if fell_back:
            self.event(
                DeviceEvent(
                    "fallback",
                    "the chosen audio devices are gone; now using the default devices until "
                    "they are back",
                )
            )
        elif command.get("returning"):
            self.event(DeviceEvent("returned", "the chosen audio devices are back; using them"))
        self.next_probe = now + PROBE_INTERVAL_S

    def _open_engine(
        self, engine_class: Any, input_device: Any, output_device: Any
    ) -> dict[str, str]:
        """Both sides, else output only, else input only; what failed, by the sides tried."""
        failures: dict[str, str] = {}
        for use_input, use_output in ATTEMPTS:
            try:
                engine = engine_class(
                    input_device=input_device,
                    output_device=output_device,
                    frame_samples=self.frame_samples,
                    input_enabled=use_input,
                    output_enabled=use_output,
                    rings=(self.block.capture, self.block.playback),
                    on_event=self.event,
                )
                engine.start()
            except AudioDeviceError as exc:
                failures[sides_name(use_input, use_output)] = str(exc)
                continue
            self.engine = engine
            break
        return failures

    def close_engine(self) -> None:
        if self.engine is not None:
            self.engine.on_event = None
            self.engine.close()
            self.engine = None

    def devices(self) -> list[dict[str, Any]]:
        try:
            return device_dicts()
        except AudioDeviceError as exc:
            log.warning("cannot list devices: %s", exc)
            return []

    # -- pausing what nobody needs -------------------------------------------------------------
    def apply_wants(self) -> None:
        """Start or stop each stream as the app's wanted flags say (push-to-talk idle and
        nobody talking: no callbacks, no wake-ups on either side)."""
        engine, block = self.engine, self.block
        if engine is None:
            return
        for kind, want, paused in (
            ("input", shm.Slot.WANT_INPUT, shm.Slot.INPUT_PAUSED),
            ("output", shm.Slot.WANT_OUTPUT, shm.Slot.OUTPUT_PAUSED),
        ):
            if engine.set_paused(kind, not block[want]):
                log.debug("%s %s", kind, "paused" if block[want] == 0 else "resumed")
            block[paused] = int(engine.is_paused(kind))

    def idle(self) -> bool:
        engine = self.engine
        return engine is None or (engine.is_paused("input") and engine.is_paused("output"))

    # -- the main loop's turn ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        block, engine = self.block, self.engine
        block[shm.Slot.HEARTBEAT_NS] = time.monotonic_ns()
        if engine is None:
            block.playback.discard()  # no output: keep the app's playback worker moving
            return
        block[shm.Slot.FRAMES_IN] = engine.frames_in
        block[shm.Slot.FRAMES_OUT] = engine.frames_out
        block[shm.Slot.INPUT_OVERFLOWS] = engine.input_overflows
        block[shm.Slot.OUTPUT_UNDERFLOWS] = engine.output_underflows
        engine.poll(now)
        self.raise_callback_threads()
        if engine.output_device is None:
            block.playback.discard()
        self.probe_done(now)
        if (self.on_defaults or engine.away_from_chosen()) and now >= self.next_probe:
            self.next_probe = now + PROBE_INTERVAL_S
            self.probe_for_chosen(now)
        if self.engine is not None:  # a stream reopened above starts running: pause it again
            self.apply_wants()

    def raise_callback_threads(self) -> None:
        """PortAudio's callback threads to real-time, each once (a reopened stream has a new
        one; the main thread, which opens streams, stays normal: PortAudio polls while a stream
        starts), and the sound server's client I/O threads with them (:func:`io_threads`).
        rtkit may make them real-time here: its CPU-time cap could end this process, which the
        app restarts. The app hears how (``scheduling``) for its diagnostics."""
        engine = self.engine
        if engine is None:
            return
        changed = False
        io = io_threads()
        threads = [
            ("input callback", engine.input_thread),
            ("output callback", engine.output_thread),
            *((f"sound server I/O ({name})", tid) for tid, name in io.items()),
        ]
        for what, tid in threads:
            if tid and tid not in self.raised:
                try:
                    promotion = str(promote_thread(tid, rtkit_realtime=True))
                except Exception as exc:  # never let this end the host
                    promotion = f"normal priority ({exc})"
                self.raised[tid] = f"{what}: {promotion}"
                log.info("%s thread %d: %s", what, tid, promotion)
                changed = True
        if changed:
            current = {engine.input_thread, engine.output_thread, *io}
            parts = [text for tid, text in self.raised.items() if tid in current]
            self.send({"op": "scheduling", "text": "; ".join(parts)})

    def probe_for_chosen(self, now: float) -> None:
        """PortAudio lists devices as they were when it started; a fresh process sees today's.
        The probe runs beside the main loop (its answer is read by :meth:`probe_done` on a later
        turn): the heartbeat and push-to-talk pokes never wait for it."""
        if self.probe is not None:
            return
        mark = _device_mark()
        if mark is not None and mark == self.probe_mark and now < self.probe_forced_at:
            return  # nothing changed in the OS's device list since the last probe
        try:
            self.probe = subprocess.Popen(  # noqa: S603 - our own executable, fixed arguments
                [*host_argv(), "--list-devices"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            log.warning("device probe not started: %s", exc)
            return
        self.probe_started = now
        self.probe_pending_mark = mark

    def probe_done(self, now: float) -> None:
        """Take the probe's answer if it is there; switch back when the chosen devices are."""
        probe = self.probe
        if probe is None:
            return
        if probe.poll() is None:
            if now - self.probe_started > PROBE_TIMEOUT_S:
                probe.kill()
                probe.communicate()
                self.probe = None
                log.warning("device probe took over %g s; killed", PROBE_TIMEOUT_S)
            return
        out, _ = probe.communicate()
        self.probe = None
        try:
            if probe.returncode != 0:
                raise ValueError(f"exit status {probe.returncode}")
            names = {d["name"] for d in json.loads(out)}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("device probe failed: %s", exc)
            return
        # Only a probe that answered settles the mark; a forced one comes every minute anyway
        # (a sound server's devices coming back show in no file we can watch).
        self.probe_mark = self.probe_pending_mark
        self.probe_forced_at = now + PROBE_FORCED_S
        if self.engine is None:
            return
        away = ("input", "output") if self.on_defaults else self.engine.away_from_chosen()
        wanted = [self.request.get(kind) for kind in away]

        def listed(spec: object) -> bool:
            return spec is None or any(str(spec).casefold() in n.casefold() for n in names)

        if not wanted or not all(listed(w) for w in wanted):
            return  # still gone: stay where we are, without a gap
        if self.on_defaults:
            self.open({**self.request, "replay": False, "returning": True}, now)
        else:
            self.engine.return_to_chosen(now)
            self.send({"op": "devices", "list": self.devices()})


def _portaudio_version() -> str:
    """PortAudio's version text for "Copy diagnostics", or why there is none."""
    from voipclient.audio.sd_engine import _sounddevice

    try:
        return str(_sounddevice().get_portaudio_version()[1])
    except AudioDeviceError as exc:
        return f"unavailable ({exc})"


def _name(device: Any) -> str | None:
    return None if device is None else str(device.name)


def _device_mark() -> object:
    """Something that changes when the OS's sound-device list may have changed, or None where
    there is nothing cheap to look at (then every probe runs)."""
    if not sys.platform.startswith("linux"):
        return None
    parts: list[object] = []
    try:
        parts.append(tuple(sorted(os.listdir("/dev/snd"))))
    except OSError:
        parts.append(None)
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for path in (
        Path.home() / ".asoundrc",
        config_home / "alsa" / "asoundrc",
        Path("/etc/asound.conf"),
    ):
        try:
            parts.append(path.stat().st_mtime_ns)
        except OSError:
            parts.append(None)
    return tuple(parts)


def serve(
    block: shm.SharedBlock,
    wake_capture: int,
    wake_playback: int,
    *,
    commands_in: IO[str],
    answers_out: IO[str],
    host_wake: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run the host until ``commands_in`` ends (the app quit or died). One thread: it sleeps in
    ``select`` on the commands, the app's wake pipe (``host_wake``: the wanted flags changed)
    and the next turn of the main loop."""
    host = _Host(block, answers_out, wake_capture, wake_playback)
    block[shm.Slot.HOST_PID] = os.getpid()
    commands = commands_in.fileno()
    os.set_blocking(commands, False)
    fds = [commands] if host_wake is None else [commands, host_wake]
    pending = b""
    host.tick(clock())
    host.send({"op": "ready", "pid": os.getpid(), "portaudio": _portaudio_version()})
    next_tick = clock()
    try:
        while True:
            now = clock()
            if now >= next_tick:
                host.tick(now)
                next_tick = now + (IDLE_POLL_S if host.idle() else POLL_S)
            readable, _, _ = select.select(fds, (), (), max(0.0, next_tick - clock()))
            if host_wake is not None and host_wake in readable:
                _drain(host_wake)
                host.apply_wants()
            if commands not in readable:
                continue
            try:
                chunk = os.read(commands, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return 0  # EOF: the app is gone
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    command = json.loads(line)
                except ValueError:
                    log.warning("unreadable command line dropped (%d bytes)", len(line))
                    continue
                if isinstance(command, dict):
                    host.handle(command, clock())
    finally:
        host.close_engine()
        if host.probe is not None:
            host.probe.kill()
            host.probe.communicate()


def _drain(fd: int) -> None:
    """One read: the pipe holds a few bytes between two turns (no second, failing read)."""
    with contextlib.suppress(OSError):
        os.read(fd, 4096)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voipclient --audio-host")
    parser.add_argument(ARG, action="store_true")
    parser.add_argument("--list-devices", action="store_true", help="print the devices as JSON")
    parser.add_argument("--shm-fd", type=int)
    parser.add_argument("--capture-wake-fd", type=int)
    parser.add_argument("--playback-wake-fd", type=int)
    parser.add_argument("--host-wake-fd", type=int, help="the app pokes it when it wants more")
    args = parser.parse_args(argv)
    if args.list_devices:
        try:
            print(json.dumps(device_dicts()))
        except AudioDeviceError as exc:
            print(f"voipclient --audio-host: {exc}", file=sys.stderr)
            return 1
        return 0
    if None in (args.shm_fd, args.capture_wake_fd, args.playback_wake_fd):
        parser.error("--shm-fd, --capture-wake-fd and --playback-wake-fd are needed")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s audio-host[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    faulthandler.enable(file=sys.stderr, all_threads=True)
    from voipclient.audio.workers import name_os_thread

    name_os_thread("vc-audio-host")
    for fd in (args.capture_wake_fd, args.playback_wake_fd, args.host_wake_fd):
        if fd is not None:
            os.set_blocking(fd, False)
    block = shm.attach(args.shm_fd)
    log.info("started (pid %d)", os.getpid())
    try:  # load PortAudio now, not inside the first open (the app times that open)
        from voipclient.audio.sd_engine import _sounddevice

        _sounddevice()
    except AudioDeviceError as exc:
        log.warning("%s", exc)
    try:
        return serve(
            block,
            args.capture_wake_fd,
            args.playback_wake_fd,
            commands_in=sys.stdin,
            answers_out=sys.stdout,
            host_wake=args.host_wake_fd,
        )
    finally:
        log.info("exiting")
