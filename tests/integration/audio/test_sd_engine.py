"""SoundDeviceEngine on real PortAudio devices: PulseAudio null sinks seen through ALSA.

PortAudio 19.6 (Debian) has no PulseAudio host API: it lists ALSA PCMs, here only ``pulse`` and
``default``. The fixtures define one ALSA PCM per null sink / monitor source (``type pulse``) in
the private ``$XDG_CONFIG_HOME/alsa/asoundrc`` so that devices can be chosen by name and index,
and re-read PortAudio's device list. A PulseAudio null sink that was idle starts calling back up
to ~2 s after a stream starts (its idle latency is 2 s), so every wait below allows for that.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from voipclient.audio.engine import AudioEngine, DeviceEvent
from voipclient.audio.sd_engine import SoundDeviceEngine, list_devices, refresh_devices
from voipclient.errors import AudioDeviceError

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

RATE = 48_000  # Hz
FRAME = 960  # samples: 20 ms
FLOW_TIMEOUT = 8.0  # s for a fresh stream on an idle null sink to start calling back


def pactl(*args: str) -> str:
    return subprocess.run(
        ["pactl", *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()


def asoundrc() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "alsa" / "asoundrc"


def write_pcms(pcms: dict[str, str], server: str | None = None) -> None:
    """Append ALSA PCMs (name -> PulseAudio sink/source) and re-read PortAudio's device list."""
    path = asoundrc()
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = f' server "{server}";' if server else ""
    with path.open("a") as f:
        for name, device in pcms.items():
            f.write(f'pcm.{name} {{ type pulse;{srv} device "{device}" }}\n')
    assert refresh_devices(), "a stream of an earlier test was left open"


@pytest.fixture
def null_sink_pcms() -> Iterator[None]:
    write_pcms(
        {
            "voip_vsink": "vsink",
            "voip_vsink_monitor": "vsink.monitor",
            "voip_vsink2": "vsink2",
            "voip_vsink2_monitor": "vsink2.monitor",
        }
    )
    yield
    asoundrc().unlink(missing_ok=True)
    refresh_devices()


@contextlib.contextmanager
def vtmp_sink() -> Iterator[dict[str, str]]:
    """A null sink ``vtmp`` reached through its own PulseAudio socket.

    Unloading that socket's module disconnects exactly the clients on it, like a sound server or
    a USB device going away, without touching the rest of the test environment.
    """
    socket = f"{os.environ['XDG_RUNTIME_DIR']}/vtmp-{os.getpid()}"
    modules = {
        "sink": pactl(
            "load-module", "module-null-sink", "sink_name=vtmp", "rate=48000", "channels=1"
        ),
        "native": pactl("load-module", "module-native-protocol-unix", f"socket={socket}"),
    }
    write_pcms({"voip_vtmp": "vtmp", "voip_vtmp_monitor": "vtmp.monitor"}, f"unix:{socket}")
    info = {"socket": socket, **modules}
    try:
        yield info
    finally:
        for key in ("native", "sink"):
            subprocess.run(
                ["pactl", "unload-module", info[key]],
                check=False,
                capture_output=True,
                timeout=10,
            )
        asoundrc().unlink(missing_ok=True)
        refresh_devices()


@pytest.fixture
def vtmp() -> Iterator[dict[str, str]]:
    with vtmp_sink() as info:
        yield info


def wait_until(
    engine: SoundDeviceEngine, done: Callable[[], bool], timeout: float, what: str
) -> list[DeviceEvent]:
    """Poll the engine every 50 ms until ``done()``; return the events seen meanwhile."""
    events: list[DeviceEvent] = []
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; {events}")
        events += engine.poll(time.monotonic())
        time.sleep(0.05)
    return events


def wait_flowing(engine: SoundDeviceEngine, frames: int = 10) -> None:
    in0, out0 = engine.frames_in, engine.frames_out
    want_in = engine.input_device is not None
    want_out = engine.output_device is not None
    events = wait_until(
        engine,
        lambda: (
            (not want_in or engine.frames_in - in0 >= frames)
            and (not want_out or engine.frames_out - out0 >= frames)
        ),
        FLOW_TIMEOUT,
        "callbacks",
    )
    assert events == [], events


def test_signal(seconds: float = 0.5) -> npt.NDArray[np.int16]:
    """A 300-3000 Hz chirp with 10 ms fades: one unambiguous correlation peak."""
    t = np.arange(int(RATE * seconds)) / RATE
    f0, f1 = 300.0, 3000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.010)
    return (0.5 * 32767 * envelope * np.sin(phase)).astype(np.int16)


test_signal.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def record(engine: SoundDeviceEngine, seconds: float) -> npt.NDArray[np.int16]:
    chunks: list[npt.NDArray[np.int16]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n = engine.capture.available
        if n:
            chunk = np.zeros(n, dtype=np.int16)
            engine.capture.read_into(chunk)
            chunks.append(chunk)
        time.sleep(0.02)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def normalized_xcorr_peak(
    source: npt.NDArray[np.int16], recorded: npt.NDArray[np.int16]
) -> tuple[float, int]:
    """(peak of the normalized cross-correlation, lag in samples of ``source`` in ``recorded``)."""
    x = source.astype(np.float64)
    y = recorded.astype(np.float64)
    n = len(x)
    assert len(y) >= n, f"recorded only {len(y)} samples"
    size = 1 << int(np.ceil(np.log2(len(y) + n)))
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)
    corr = corr[: len(y) - n + 1]  # lags where x fits entirely inside y
    energy = np.concatenate(([0.0], np.cumsum(y * y)))
    window = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-9))
    ncc = corr / (np.linalg.norm(x) * window)
    lag = int(np.argmax(ncc))
    return float(ncc[lag]), lag


def play_and_capture(
    out: SoundDeviceEngine, inp: SoundDeviceEngine
) -> tuple[float, float, npt.NDArray[np.int16]]:
    """Play the test signal on ``out``, capture on ``inp``: (peak, delay in s, recording)."""
    wait_flowing(out)
    wait_flowing(inp)
    inp.capture.discard()
    signal = test_signal()
    # the playback ring holds interleaved stereo: the signal on both sides (a mono sink plays
    # their mean, the signal itself)
    both = np.repeat(signal, out.output_channels)
    assert out.playback.write(both) == len(both)
    recorded = record(inp, 1.5)
    peak, lag = normalized_xcorr_peak(signal, recorded)
    return peak, lag / RATE, recorded


def test_a_signal_played_on_vsink_comes_back_on_its_monitor(null_sink_pcms: None) -> None:
    out = SoundDeviceEngine(output_device=None, input_enabled=False, ring_samples=2 * RATE)
    inp = SoundDeviceEngine(input_device="voip_vsink_monitor", output_enabled=False)
    as_protocol: AudioEngine = out
    assert (as_protocol.sample_rate, as_protocol.frame_samples) == (RATE, FRAME)
    try:
        out.start()
        inp.start()
        assert out.output_device is not None and out.output_device.is_default_output
        peak, delay, _ = play_and_capture(out, inp)
    finally:
        out.close()
        inp.close()
    print(f"normalized cross-correlation peak {peak:.4f}, delay {delay * 1000:.0f} ms")
    assert peak > 0.8
    assert 0.0 <= delay < 1.0  # the playback ring + PortAudio/PulseAudio buffers: ~40-200 ms


def test_sound_server_devices_are_listed_and_opened_by_their_own_names() -> None:
    """No ALSA PCMs of ours: PortAudio alone sees only "pulse" and "default". The sinks and
    sources are listed by the server's descriptions, and choosing one plays there: a signal
    played on "Null Output (vsink2)" comes back on the monitor of vsink2, not of vsink."""
    assert refresh_devices()
    named = {d.name: d for d in list_devices() if d.pulse_name is not None}
    assert {"Null Output (vsink)", "Null Output (vsink2)"} <= set(named)
    assert "Monitor of Null Output (vsink2.monitor)" in named
    assert named["Null Output (vsink2)"].max_input_channels == 0
    out = SoundDeviceEngine(
        output_device="Null Output (vsink2)", input_enabled=False, ring_samples=2 * RATE
    )
    inp = SoundDeviceEngine(
        input_device="Monitor of Null Output (vsink2.monitor)", output_enabled=False
    )
    other = SoundDeviceEngine(
        input_device="Monitor of Null Output (vsink.monitor)", output_enabled=False
    )
    try:
        for engine in (out, inp, other):
            engine.start()
        assert out.output_device is not None and out.output_device.pulse_name == "vsink2"
        assert "PULSE_SINK" not in os.environ  # set only while the stream opened
        wait_flowing(other)
        other.capture.discard()
        peak, _, _ = play_and_capture(out, inp)
        assert peak > 0.8
        heard = record(other, 0.1)
        assert not np.any(heard), np.max(np.abs(heard))
    finally:
        for engine in (out, inp, other):
            engine.close()


def test_devices_are_chosen_by_index_and_by_case_insensitive_name(null_sink_pcms: None) -> None:
    devices = {d.name: d for d in list_devices()}
    index = devices["voip_vsink2"].index
    out = SoundDeviceEngine(output_device=index, input_enabled=False)
    inp = SoundDeviceEngine(input_device="VOIP_VSINK2_MONITOR", output_enabled=False)
    other = SoundDeviceEngine(input_device="voip_vsink_monitor", output_enabled=False)
    try:
        for engine in (out, inp, other):
            engine.start()
        assert out.output_device is not None and out.output_device.name == "voip_vsink2"
        assert inp.input_device is not None and inp.input_device.name == "voip_vsink2_monitor"
        wait_flowing(other)
        other.capture.discard()
        peak, _, _ = play_and_capture(out, inp)
        assert peak > 0.8
        # The signal went to vsink2 only: the monitor of vsink heard nothing of it.
        heard = record(other, 0.1)
        assert not np.any(heard), np.max(np.abs(heard))
    finally:
        for engine in (out, inp, other):
            engine.close()


def test_unknown_and_ambiguous_names_raise_listing_the_candidates(null_sink_pcms: None) -> None:
    with pytest.raises(AudioDeviceError, match="no output device matches 'no such device'") as e:
        SoundDeviceEngine(output_device="no such device", input_enabled=False)
    for name in ("pulse", "default", "voip_vsink2_monitor"):
        assert name in str(e.value)
    with pytest.raises(AudioDeviceError, match="ambiguous") as e:
        SoundDeviceEngine(input_device="vsink2", output_enabled=False)
    assert "voip_vsink2 " in str(e.value)
    assert "voip_vsink2_monitor" in str(e.value)
    with pytest.raises(AudioDeviceError, match="no input device with index 999"):
        SoundDeviceEngine(input_device=999, output_enabled=False)


def test_callbacks_count_frames_and_underruns_and_play_zeros(null_sink_pcms: None) -> None:
    out = SoundDeviceEngine(output_device="voip_vsink2", input_enabled=False)
    # A small capture ring that nobody reads: it must overflow, and count it.
    inp = SoundDeviceEngine(
        input_device="voip_vsink2_monitor", output_enabled=False, ring_samples=5 * FRAME
    )
    try:
        out.start()
        inp.start()
        wait_flowing(out, frames=25)
        wait_flowing(inp, frames=25)
        inp.capture.discard()
        heard = record(inp, 0.5)
        in0 = inp.frames_in
        time.sleep(1.0)
        frames_per_s = inp.frames_in - in0
        time.sleep(0.2)  # let the unread ring fill up
        out_stats, in_stats = out.stats(), inp.stats()
    finally:
        out.close()
        inp.close()
    assert len(heard) >= RATE // 4
    assert not np.any(heard), "an empty playback ring must play silence"
    # Nothing was ever written: every sample played was a zero-filled underrun. (The callback
    # counts the underrun before the frame, so a snapshot can be one frame ahead.)
    assert out_stats.frames_out >= 25
    per_frame = FRAME * out.output_channels  # ring samples per frame: interleaved stereo
    assert (
        out_stats.frames_out * per_frame
        <= out_stats.underruns
        <= (out_stats.frames_out + 1) * per_frame
    )
    assert 30 <= frames_per_s <= 70  # 50 frames of 20 ms per second, give or take scheduling
    assert in_stats.overruns > 0
    assert inp.input_overflows >= 0 and out.output_underflows >= 0  # PortAudio's own flags


def test_unloading_the_sink_itself_moves_our_streams_silently(vtmp: dict[str, str]) -> None:
    """PulseAudio (16.x) moves the streams of a removed sink to the default sink: PortAudio sees
    nothing, so neither does the engine, and audio keeps flowing (documents the behaviour)."""
    engine = SoundDeviceEngine("voip_vtmp_monitor", "voip_vtmp")
    try:
        engine.start()
        wait_flowing(engine)
        pactl("unload-module", vtmp["sink"])
        in0 = engine.frames_in
        events = wait_until(engine, lambda: engine.frames_in - in0 >= 50, 5.0, "more frames")
        assert events == []
        assert engine.input_device is not None and engine.input_device.name == "voip_vtmp_monitor"
    finally:
        engine.close()


def test_a_suspended_sink_is_a_stall_and_the_engine_moves_to_the_default(
    vtmp: dict[str, str],
) -> None:
    events: list[DeviceEvent] = []
    engine = SoundDeviceEngine(
        output_device="voip_vtmp", input_enabled=False, on_event=events.append, start_timeout=4.0
    )
    try:
        engine.start()
        wait_flowing(engine)
        events.clear()
        pactl("suspend-sink", "vtmp", "1")  # no more callbacks, the stream stays "active"
        wait_until(engine, lambda: any(e.kind == "fallback" for e in events), 15.0, "fallback")
        # First the stall, then a reopen of the same (still suspended) device, which never
        # calls back, so the engine moves to the default device.
        assert [e.kind for e in events] == ["reopened", "fallback"], events
        assert "no audio callback for" in events[0].message
        out0 = engine.frames_out
        wait_until(engine, lambda: engine.frames_out - out0 >= 25, FLOW_TIMEOUT, "frames")
    finally:
        engine.close()
        subprocess.run(
            ["pactl", "suspend-sink", "vtmp", "0"], check=False, capture_output=True, timeout=10
        )


NO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import os
    from voipclient.audio.sd_engine import SoundDeviceEngine, list_devices
    from voipclient.errors import AudioDeviceError
    print("devices:", len(list_devices()))
    try:
        SoundDeviceEngine()
    except AudioDeviceError as exc:
        print("error:", exc)
    else:
        print("no error")
    os._exit(0)  # only the lines above matter; skip the exit handlers
    """
)


def test_no_device_at_all_raises_a_helpful_audio_device_error(tmp_path: Path) -> None:
    """No sound card here (no /dev/snd) and, with PULSE_SERVER pointing nowhere, no sound server:
    PortAudio probes the system's ALSA PCMs, none opens, and it lists 0 devices. (An *empty* ALSA
    config would be no good: PortAudio 19.6 then fails an assert in BuildDeviceList and aborts.)"""
    env = {
        **os.environ,
        "PULSE_SERVER": "unix:/nonexistent",
        "XDG_CONFIG_HOME": str(tmp_path),  # none of the test PCMs of the other tests
    }
    result = subprocess.run(
        [sys.executable, "-c", NO_DEVICE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "devices: 0", result
    assert lines[1] == (
        "error: no audio input device found (PortAudio sees 0 devices, none with input "
        "channels); connect a microphone or start PulseAudio/PipeWire"
    ), result


def test_a_mono_device_plays_both_sides_folded_down() -> None:
    """The playback ring is stereo; a mono device ("Null Output (vsink2)": one channel) is
    opened with one channel and gets (L + R) / 2: a signal on the left alone comes out at half
    its amplitude (-6 dB), and nothing is lost."""
    out = SoundDeviceEngine(
        output_device="Null Output (vsink2)", input_enabled=False, ring_samples=2 * RATE
    )
    inp = SoundDeviceEngine(
        input_device="Monitor of Null Output (vsink2.monitor)", output_enabled=False
    )
    try:
        out.start()
        inp.start()
        assert out.output_device is not None and out.output_device.max_output_channels == 1
        wait_flowing(out)
        wait_flowing(inp)
        inp.capture.discard()
        signal = test_signal()
        left_only = np.zeros(2 * len(signal), dtype=np.int16)
        left_only[0::2] = signal
        assert out.playback.write(left_only) == len(left_only)
        recorded = record(inp, 1.5)
    finally:
        out.close()
        inp.close()
    peak, lag = normalized_xcorr_peak(signal, recorded)
    assert peak > 0.8
    heard = recorded[lag : lag + len(signal)].astype(np.float64)
    gain = float(np.dot(heard, signal) / np.dot(signal.astype(np.float64), signal))
    print(f"\nleft only on a mono device: gain {gain:.3f} ({20 * np.log10(gain):.1f} dB)")
    assert gain == pytest.approx(0.5, abs=0.03)
