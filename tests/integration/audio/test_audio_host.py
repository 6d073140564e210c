"""The audio host process on its own (real PortAudio on the PulseAudio null sink): it opens what
it can and says what failed, it is replaced when it aborts, and close() leaves nothing behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from voipclient.audio import shm
from voipclient.audio.engine import DeviceEvent
from voipclient.audio.host_engine import AudioHost, HostEngine

from .test_sd_engine import asoundrc, pactl, vtmp_sink, write_pcms

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[AudioHost]:
    h = AudioHost(log_dir=tmp_path / "logs")
    yield h
    h.close()


def pump(engine: HostEngine, until: Callable[[], bool], timeout: float = 10.0) -> list[DeviceEvent]:
    """Be the app's workers and GUI timer: drain the microphone, keep the speakers fed, collect
    the engine's events, until ``until()`` holds."""
    events: list[DeviceEvent] = []
    silence = np.zeros(engine.playback.capacity, dtype=np.int16)
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; events so far: {events}"
        engine.capture.discard()
        engine.playback.write(silence[: engine.playback.free])
        events += engine.poll(time.monotonic())
        time.sleep(0.01)
    return events + engine.poll(time.monotonic())


def test_devices_open_in_the_host_and_samples_flow_both_ways(host: AudioHost) -> None:
    engine = HostEngine(host, None, None, frame_samples=960)
    engine.start()
    events = pump(engine, lambda: engine.opened)
    assert any(e.kind == "opened" for e in events)
    assert engine.input_device and engine.output_device and engine.failures == {}
    start = host.block[shm.Slot.CAPTURE_WRITTEN], host.block[shm.Slot.PLAYBACK_READ]
    pump(
        engine,
        lambda: (
            host.block[shm.Slot.CAPTURE_WRITTEN] > start[0] + 48_000 // 2
            and host.block[shm.Slot.PLAYBACK_READ] > start[1] + 48_000 // 2
        ),
    )
    assert host.devices and any(d.max_input_channels for d in host.devices)
    stats = engine.stats()
    assert stats.frames_in > 0 and stats.frames_out > 0


def test_a_missing_microphone_is_reported_and_the_speakers_still_open(host: AudioHost) -> None:
    engine = HostEngine(host, "No Such Microphone 9000", None, frame_samples=960)
    engine.start()
    pump(engine, lambda: engine.opened)
    assert engine.input_device is None and engine.output_device
    assert "No Such Microphone 9000" in engine.failures["microphone and speakers"]
    before = host.block[shm.Slot.PLAYBACK_READ]
    pump(engine, lambda: host.block[shm.Slot.PLAYBACK_READ] > before + 9600)


def test_an_abort_inside_the_host_is_survived(host: AudioHost) -> None:
    engine = HostEngine(host, None, None, frame_samples=960)
    engine.start()
    pump(engine, lambda: engine.opened)
    first = host.pid
    aborted = time.monotonic_ns()
    host.kill(signal.SIGABRT)  # what PortAudio's assertion does
    events = pump(
        engine,
        lambda: host.restarts == 1 and host.block[shm.Slot.CAPTURE_STAMP_NS] > aborted,
    )
    assert host.pid != first
    restarted = [e for e in events if e.kind == "host_restarted"]
    assert restarted and "SIGABRT" in restarted[0].message
    assert "crashed inside the sound library" in host.last_exit
    # the same devices again, from the replayed request
    pump(engine, lambda: engine.opened and engine.input_device is not None)
    log = (Path(host._log_dir or ".") / "audio-host.log").read_text()
    assert "Fatal Python error: Aborted" in log  # faulthandler's dump went to the host's log


def test_close_ends_the_host_and_leaves_no_process(tmp_path: Path) -> None:
    h = AudioHost(log_dir=tmp_path)
    engine = HostEngine(h, None, None, frame_samples=960)
    engine.start()
    pump(engine, lambda: engine.opened)
    pid = h.pid
    h.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert h.restarts == 0  # an orderly end is not a crash


def test_the_sound_server_dropping_us_ends_on_the_default_devices_with_audio_flowing(
    tmp_path: Path,
) -> None:
    """The sound server drops our connection (its socket's module is unloaded, like a USB device
    or a sound server going away). Reopening a stream right then sometimes ends in a C abort()
    inside PortAudio: that is why the devices live in the audio host. Either the host falls back
    in place, or it dies and its successor opens the defaults; both ways audio flows again on
    the default devices and the app is told."""
    with vtmp_sink() as vtmp:
        host = AudioHost(log_dir=tmp_path)
        try:
            engine = HostEngine(host, "voip_vtmp_monitor", "voip_vtmp", frame_samples=960)
            engine.start()
            pump(engine, lambda: engine.opened)
            assert (engine.input_device, engine.output_device) == ("voip_vtmp_monitor", "voip_vtmp")
            pactl("unload-module", vtmp["native"])  # the sound server drops us
            events = pump(
                engine,
                lambda: (engine.input_device, engine.output_device) == ("default", "default"),
                timeout=20.0,
            )
            kinds = [e.kind for e in events]
            assert "fallback" in kinds, events
            if host.restarts:  # PortAudio aborted: the successor said why, and fell back
                assert "host_restarted" in kinds and "crashed" in host.last_exit, events
            moved = host.block[shm.Slot.CAPTURE_WRITTEN], host.block[shm.Slot.PLAYBACK_READ]
            pump(
                engine,
                lambda: (
                    host.block[shm.Slot.CAPTURE_WRITTEN] > moved[0] + 25 * 960
                    and host.block[shm.Slot.PLAYBACK_READ] > moved[1] + 25 * 960
                ),
            )
        finally:
            host.close()


def test_a_host_restarted_without_the_chosen_device_returns_to_it_when_it_is_back(
    tmp_path: Path,
) -> None:
    """The host dies while the chosen speakers are gone (they may be why it died): its successor
    opens the defaults, and when the speakers are listed again (a fresh PortAudio probe) it
    opens them, with a fresh device list of its own."""
    module = pactl("load-module", "module-null-sink", "sink_name=vret", "rate=48000", "channels=1")
    host = AudioHost(log_dir=tmp_path)
    try:
        write_pcms({"voip_vret": "vret"})
        engine = HostEngine(host, None, "voip_vret", frame_samples=960)
        engine.start()
        pump(engine, lambda: engine.opened and engine.output_device == "voip_vret")
        asoundrc().unlink()  # the device leaves the list ...
        host.kill(signal.SIGKILL)  # ... and the host dies
        events = pump(engine, lambda: host.restarts == 1 and engine.output_device == "default")
        assert "fallback" in [e.kind for e in events], events
        assert engine.failures == {}  # nothing failed for good: it waits for the device
        write_pcms({"voip_vret": "vret"})  # plugged in again
        events = pump(engine, lambda: engine.output_device == "voip_vret", timeout=20.0)
        assert "returned" in [e.kind for e in events], events
        before = host.block[shm.Slot.PLAYBACK_READ]
        pump(engine, lambda: host.block[shm.Slot.PLAYBACK_READ] > before + 9600)
    finally:
        host.close()
        asoundrc().unlink(missing_ok=True)
        pactl("unload-module", module)
