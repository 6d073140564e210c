"""The audio host process: what it adds to the voice path's latency, and how fast audio resumes
when it dies.

Real PortAudio on the PulseAudio null sink (run inside scripts/with-test-env.sh).

1. **Added latency.** The same device, 20 ms frames, once in this process
   (``SoundDeviceEngine``, the worker woken through a ``threading.Event`` from the callback) and
   once in the audio host (``HostEngine``: shared-memory rings, the worker woken through the
   host's wake pipe, exactly as the app's workers are). For every frame the input callback
   publishes, the delay until a worker thread waiting like the app's capture worker has read it
   (capture); for every frame the output callback takes, the delay until the worker has written
   the next one (playback refill). The audio host's added mouth-to-ear latency is the difference
   of the two medians, capture plus playback.
2. **Idle streams.** With both streams stopped (push-to-talk idle, nothing heard), the time
   from "wanted" (a press; voice arriving) to the first input callback's publish and the first
   output callback's read.
3. **Restart.** SIGKILL the host ``KILLS`` times; for each, the time from the kill until the new
   host's input callback has published a frame and its output callback has taken one.

Ends with one JSON line for run_all.py.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from voipclient.audio import shm
from voipclient.audio.host_engine import QUICK_DEATH_S, AudioHost, HostEngine
from voipclient.audio.ring import SampleRing
from voipclient.audio.sd_engine import SoundDeviceEngine
from voipclient.audio.workers import _FrameThread

WINDOW_S = float(os.environ.get("VOIPCLIENT_HOST_BENCH_S", "15"))
KILLS = int(os.environ.get("VOIPCLIENT_HOST_KILLS", "10"))
N = 960
TARGET_ADDED_MS = 1.0
TARGET_RESUME_S = 1.0


class Worker:
    """Waits on the engine's rings the way the app's capture and playback workers do, and
    records for each frame how long after the callback's stamp it was handled."""

    def __init__(
        self, engine: Any, capture_stamp: Callable[[], int], playback_stamp: Callable[[], int]
    ) -> None:
        self.engine = engine
        self.capture_delays: list[float] = []
        self.refill_delays: list[float] = []
        self._stamps = (capture_stamp, playback_stamp)
        self._frame = np.zeros(N, dtype=np.int16)
        self._silence = np.zeros(N, dtype=np.int16)
        self.cap = _FrameThread(
            "bench-capture", self._capture, getattr(engine, "capture_wake_fd", None)
        )
        self.play = _FrameThread(
            "bench-playback", self._playback, getattr(engine, "playback_wake_fd", None)
        )

    def _capture(self) -> None:
        ring, thread, stamp = self.engine.capture, self.cap, self._stamps[0]
        wake = thread.wake.set
        if not hasattr(self.engine, "capture_wake_fd"):
            ring.on_write = lambda: wake() if ring.available >= N else None
        while not thread.stopping.is_set():
            if ring.available < N:
                thread.sleep_until(lambda: ring.available >= N, 0.04)
                continue
            ring.read_into(self._frame)
            if ring.available < N:  # the newest frame: its publish was stamped
                self.capture_delays.append((time.monotonic_ns() - stamp()) / 1e6)

    def _playback(self) -> None:
        ring, thread, stamp = self.engine.playback, self.play, self._stamps[1]
        wake = thread.wake.set
        if not hasattr(self.engine, "playback_wake_fd"):
            ring.on_read = lambda: wake() if ring.available < N else None
        while not thread.stopping.is_set():
            if ring.available >= N:
                thread.sleep_until(lambda: ring.available < N, 0.04)
                continue
            ring.write(self._silence)
            last = stamp()
            if last:
                self.refill_delays.append((time.monotonic_ns() - last) / 1e6)

    def run(self, seconds: float) -> None:
        self.cap.start()
        self.play.start()
        time.sleep(seconds)
        self.cap.stop()
        self.play.stop()


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values[50:])  # the first second: streams settling
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 3),
        "p99_ms": round(values[int(0.99 * (len(values) - 1))], 3),
        "max_ms": round(values[-1], 3),
    }


def in_process() -> tuple[dict[str, float], dict[str, float]]:
    stamps = {"capture": 0, "playback": 0}

    capture, playback = SampleRing(48_000), SampleRing(48_000)
    engine = SoundDeviceEngine(frame_samples=N, rings=(capture, playback))
    # stamp in the callbacks, as the host does (wrapping the ring methods the callbacks call)
    write, read_into = capture.write, playback.read_into

    # Stamped just before the publish (the ring's hook wakes the worker inside it); the host
    # stamps just after, so if anything this favours the in-process engine by one copy.
    def stamped_write(samples: Any) -> int:
        stamps["capture"] = time.monotonic_ns()
        return write(samples)

    def stamped_read(out: Any) -> int:
        stamps["playback"] = time.monotonic_ns()
        return read_into(out)

    capture.write = stamped_write  # type: ignore[method-assign]
    playback.read_into = stamped_read  # type: ignore[method-assign]
    engine.start()
    worker = Worker(engine, lambda: stamps["capture"], lambda: stamps["playback"])
    try:
        worker.run(WINDOW_S)
    finally:
        engine.close()
    return summary(worker.capture_delays), summary(worker.refill_delays)


def wait_opened(engine: HostEngine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not engine.opened:
        if time.monotonic() > deadline:
            raise SystemExit("audio host did not open the devices")
        engine.poll(time.monotonic())
        time.sleep(0.01)


def in_host(host: AudioHost) -> tuple[dict[str, float], dict[str, float]]:
    engine = HostEngine(host, None, None, frame_samples=N)
    engine.start()
    wait_opened(engine)
    block = host.block
    worker = Worker(
        engine,
        lambda: block[shm.Slot.CAPTURE_STAMP_NS],
        lambda: block[shm.Slot.PLAYBACK_STAMP_NS],
    )
    worker.run(WINDOW_S)
    return summary(worker.capture_delays), summary(worker.refill_delays)


def restarts(host: AudioHost) -> list[float]:
    engine = HostEngine(host, None, None, frame_samples=N)
    engine.start()
    wait_opened(engine)
    silence = np.zeros(48_000, dtype=np.int16)
    out: list[float] = []
    stop = threading.Event()

    def keep_moving() -> None:  # the app's workers: drain the mic, feed the speakers
        while not stop.is_set():
            engine.capture.discard()
            engine.playback.write(silence[: engine.playback.free])
            time.sleep(0.005)

    mover = threading.Thread(target=keep_moving, daemon=True)
    mover.start()
    try:
        for _ in range(KILLS):
            # A host that dies within QUICK_DEATH_S of its start, again and again, is a crash
            # loop and is restarted after a growing pause; these kills are single deaths.
            time.sleep(QUICK_DEATH_S + 1.0)
            killed = time.monotonic_ns()
            host.kill(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (
                host.block[shm.Slot.CAPTURE_STAMP_NS] <= killed
                or host.block[shm.Slot.PLAYBACK_STAMP_NS] <= killed
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("audio did not resume within 10 s of a kill")
                time.sleep(0.001)
            back = max(
                host.block[shm.Slot.CAPTURE_STAMP_NS], host.block[shm.Slot.PLAYBACK_STAMP_NS]
            )
            out.append((back - killed) / 1e9)
    finally:
        stop.set()
        mover.join()
    return out


def resumes(host: AudioHost, times: int = 20) -> tuple[list[float], list[float]]:
    """Idle streams start again: from ``want_input(True)`` (a push-to-talk press) to the first
    input callback's publish, and from ``want_output(True)`` (voice arrived) to the first output
    callback's read, in ms."""
    engine = HostEngine(host, None, None, frame_samples=N)
    engine.start()
    wait_opened(engine)
    block = host.block
    silence = np.zeros(48_000, dtype=np.int16)
    mic: list[float] = []
    speakers: list[float] = []
    for _ in range(times):
        engine.want_input(False)
        engine.want_output(False)
        deadline = time.monotonic() + 5
        while not (block[shm.Slot.INPUT_PAUSED] and block[shm.Slot.OUTPUT_PAUSED]):
            if time.monotonic() > deadline:
                raise SystemExit("the host did not pause the streams")
            time.sleep(0.005)
        time.sleep(0.3)
        engine.capture.discard()
        engine.playback.write(silence[: engine.playback.free])
        pressed = time.monotonic_ns()
        engine.want_input(True)
        engine.want_output(True)
        deadline = time.monotonic() + 5
        while (
            block[shm.Slot.CAPTURE_STAMP_NS] < pressed
            or block[shm.Slot.PLAYBACK_STAMP_NS] < pressed
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the host did not start the streams again")
            engine.capture.discard()
            time.sleep(0.001)
        mic.append((block[shm.Slot.CAPTURE_STAMP_NS] - pressed) / 1e6)
        speakers.append((block[shm.Slot.PLAYBACK_STAMP_NS] - pressed) / 1e6)
    engine.stop()
    return mic, speakers


def main() -> int:
    local_capture, local_refill = in_process()
    host = AudioHost()
    try:
        host_capture, host_refill = in_host(host)
        mic_resume, speakers_resume = resumes(host)
        resume = restarts(host)
    finally:
        host.close()
    added = (host_capture["p50_ms"] - local_capture["p50_ms"]) + (
        host_refill["p50_ms"] - local_refill["p50_ms"]
    )
    print(f"capture delivery (callback → worker), in-process: {local_capture}")
    print(f"capture delivery (callback → worker), audio host: {host_capture}")
    print(f"playback refill (callback → worker), in-process: {local_refill}")
    print(f"playback refill (callback → worker), audio host: {host_refill}")
    print(f"added mouth-to-ear latency (medians): {added:.3f} ms (target ≤ {TARGET_ADDED_MS} ms)")
    print(
        f"resume after SIGKILL ({len(resume)} kills): median {statistics.median(resume) * 1000:.0f}"
        f" ms, max {max(resume) * 1000:.0f} ms (target < {TARGET_RESUME_S * 1000:.0f} ms)"
    )
    print(
        f"idle streams started again ({len(mic_resume)} times): first input callback after "
        f"{statistics.median(mic_resume):.1f} ms (max {max(mic_resume):.1f}), first output "
        f"callback after {statistics.median(speakers_resume):.1f} ms "
        f"(max {max(speakers_resume):.1f})"
    )
    result = {
        "benchmark": "audio_host",
        "window_s": WINDOW_S,
        "in_process_capture": local_capture,
        "host_capture": host_capture,
        "in_process_refill": local_refill,
        "host_refill": host_refill,
        "added_latency_ms": round(added, 3),
        "target_added_latency_ms": TARGET_ADDED_MS,
        "press_to_first_input_ms_p50": round(statistics.median(mic_resume), 1),
        "press_to_first_input_ms_max": round(max(mic_resume), 1),
        "voice_to_first_output_ms_p50": round(statistics.median(speakers_resume), 1),
        "voice_to_first_output_ms_max": round(max(speakers_resume), 1),
        "kills": len(resume),
        "resume_median_ms": round(statistics.median(resume) * 1000),
        "resume_max_ms": round(max(resume) * 1000),
        "target_resume_ms": TARGET_RESUME_S * 1000,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
