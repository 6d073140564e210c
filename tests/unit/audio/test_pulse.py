"""Parsing ``pactl --format=json list sinks|sources`` (the sound server's named devices)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voipclient.audio.pulse import PulseEndpoint, display_names, parse_endpoints

SOURCES = [
    {
        "name": "alsa_output.pci.analog-stereo.monitor",
        "description": "Monitor of Built-in Audio Analog Stereo",
        "sample_specification": "s16le 2ch 44100Hz",
        "monitor_source": "alsa_output.pci.analog-stereo",
    },
    {
        "name": "alsa_input.usb-Jabra_Evolve_65-00.mono-fallback",
        "description": "Jabra Evolve 65 Mono",
        "sample_specification": "s16le 1ch 16000Hz",
        "monitor_source": "n/a",
    },
    {"description": "no name: skipped"},
    "not an object",
]


def test_sources_are_named_by_their_descriptions_with_monitors_last() -> None:
    found = parse_endpoints("input", json.dumps(SOURCES))
    assert found == [
        PulseEndpoint(
            "input",
            "alsa_input.usb-Jabra_Evolve_65-00.mono-fallback",
            "Jabra Evolve 65 Mono",
            1,
            16_000,
            False,
        ),
        PulseEndpoint(
            "input",
            "alsa_output.pci.analog-stereo.monitor",
            "Monitor of Built-in Audio Analog Stereo",
            2,
            44_100,
            True,
        ),
    ]


def test_bad_output_gives_nothing_and_a_missing_description_uses_the_name() -> None:
    assert parse_endpoints("output", "pactl: connection refused") == []
    assert parse_endpoints("output", json.dumps({"not": "a list"})) == []
    (sink,) = parse_endpoints("output", json.dumps([{"name": "bluez_sink.00_11", "x": 1}]))
    assert sink.description == "bluez_sink.00_11" and (sink.channels, sink.rate) == (2, 48_000)


def test_two_devices_with_one_description_get_the_server_name_added() -> None:
    sinks = [
        PulseEndpoint("output", "a", "Headset", 2, 48_000),
        PulseEndpoint("output", "b", "Headset", 2, 48_000),
        PulseEndpoint("output", "c", "Speakers 🔊", 2, 48_000),
    ]
    assert display_names(sinks) == ["Headset (a)", "Headset (b)", "Speakers 🔊"]


def test_no_server_socket_means_no_pactl_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pactl would autospawn a PulseAudio daemon where none runs (one that outlives the app):
    without a server socket nothing is run."""
    from voipclient.audio import pulse

    monkeypatch.delenv("PULSE_SERVER", raising=False)
    monkeypatch.setenv("PULSE_RUNTIME_PATH", str(tmp_path))
    ran: list[object] = []
    monkeypatch.setattr(pulse.subprocess, "run", lambda *a, **k: ran.append(a))
    assert not pulse.server_running() and pulse.list_endpoints("output") == [] and ran == []
    (tmp_path / "native").touch()
    assert pulse.server_running()
    monkeypatch.delenv("PULSE_RUNTIME_PATH")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "none"))
    assert not pulse.server_running()
    monkeypatch.setenv("PULSE_SERVER", "unix:/somewhere")
    assert pulse.server_running()
