"""Device matching of the sounddevice engine on a fake device list (no PortAudio involved)."""

from __future__ import annotations

import pytest

from voipclient.audio.sd_engine import (
    DeviceInfo,
    find_by_name,
    no_device_message,
    select_device,
)
from voipclient.errors import AudioDeviceError


def fake_device(
    index: int,
    name: str,
    *,
    ins: int = 2,
    outs: int = 2,
    def_in: bool = False,
    def_out: bool = False,
) -> DeviceInfo:
    return DeviceInfo(index, name, "FakeAPI", ins, outs, 48_000.0, def_in, def_out)


FAKE_DEVICES = [
    fake_device(0, "HDA Intel PCH: ALC257 Analog (hw:0,0)"),
    fake_device(1, "USB Headset Mic", outs=0),
    fake_device(2, "USB Headset", ins=0),
    fake_device(3, "pulse"),
    fake_device(4, "pulse monitor", outs=0),
    fake_device(5, "default", def_in=True, def_out=True),
]


def test_none_picks_the_default_device() -> None:
    assert select_device(FAKE_DEVICES, None, "input").index == 5
    assert select_device(FAKE_DEVICES, None, "output").index == 5


def test_none_without_a_marked_default_picks_the_first_candidate() -> None:
    devices = [fake_device(0, "a", ins=0), fake_device(1, "b")]
    assert select_device(devices, None, "input").name == "b"


def test_index_selects_that_device_if_it_has_channels_for_the_direction() -> None:
    assert select_device(FAKE_DEVICES, 2, "output").name == "USB Headset"
    with pytest.raises(AudioDeviceError, match="no input device with index 2"):
        select_device(FAKE_DEVICES, 2, "input")  # an output-only device


def test_name_matches_a_case_insensitive_substring_of_one_device() -> None:
    assert select_device(FAKE_DEVICES, "alc257", "input").index == 0
    assert select_device(FAKE_DEVICES, "headset", "output").index == 2  # the mic has no outputs
    assert select_device(FAKE_DEVICES, "HEADSET", "input").index == 1


def test_an_exact_name_wins_over_longer_names_containing_it() -> None:
    assert select_device(FAKE_DEVICES, "Pulse", "input").index == 3


def test_an_ambiguous_name_lists_the_devices_it_matches() -> None:
    devices = [*FAKE_DEVICES, fake_device(6, "USB Headset Mic 2", outs=0)]
    with pytest.raises(AudioDeviceError, match="ambiguous") as info:
        select_device(devices, "usb", "input")
    assert "[1] USB Headset Mic (FakeAPI)" in str(info.value)
    assert "[6] USB Headset Mic 2 (FakeAPI)" in str(info.value)
    assert "pulse" not in str(info.value)


def test_an_unknown_name_lists_the_candidates_of_that_direction() -> None:
    with pytest.raises(AudioDeviceError, match="no output device matches 'speakers'") as info:
        select_device(FAKE_DEVICES, "speakers", "output")
    message = str(info.value)
    assert "[2] USB Headset (FakeAPI)" in message
    assert "USB Headset Mic" not in message  # input-only: not a candidate for output


def test_no_devices_at_all_says_what_to_do() -> None:
    with pytest.raises(AudioDeviceError) as info:
        select_device([], None, "input")
    assert str(info.value) == no_device_message("input", 0)
    assert "no audio input device found (PortAudio sees 0 devices" in str(info.value)
    assert "connect a microphone or start PulseAudio/PipeWire" in str(info.value)
    assert "1 device," in no_device_message("output", 1)


def test_find_by_name_is_exact_and_per_direction() -> None:
    assert find_by_name(FAKE_DEVICES, "pulse", "input") == FAKE_DEVICES[3]
    assert find_by_name(FAKE_DEVICES, "Pulse", "input") is None
    assert find_by_name(FAKE_DEVICES, "USB Headset Mic", "output") is None
