"""Source adapters without their platform libraries: name mapping, availability, the fake."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from voipclient.ptt.evdev_source import EvdevSource, evdev_key_name
from voipclient.ptt.keys import KEY_NAMES, UnknownInputName, canonical_input
from voipclient.ptt.pynput_source import PynputSource, button_name, key_name
from voipclient.ptt.qt_shortcuts import qt_button_name, qt_key_name
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService
from voipclient.ptt.sources import (
    FakeSource,
    HotkeySource,
    InputEvent,
    choose_source,
    session_kind,
    source_order,
)


class Key(enum.Enum):  # stands in for pynput.keyboard.Key
    f13 = 1
    ctrl_l = 2
    cmd = 3
    media_volume_up = 4


class Button(enum.Enum):  # stands in for pynput.mouse.Button
    left = 1
    middle = 2
    x1 = 3
    x2 = 4
    button8 = 8
    button9 = 9
    button10 = 10
    scroll_up = 11
    unknown = 0


def kc(char: str | None = None, vk: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(char=char, vk=vk)


@pytest.mark.parametrize(
    ("key", "platform", "name"),
    [
        (Key.f13, "linux", "f13"),
        (Key.ctrl_l, "linux", "ctrl_l"),
        (Key.cmd, "darwin", "super"),
        (Key.media_volume_up, "linux", "volume_up"),
        (kc("T", 0x54), "linux", "t"),
        (kc("!", 0x21), "linux", "1"),
        (kc("\x14"), "win32", "t"),
        (kc(None, 0x1008FF81), "linux", "f13"),  # XF86Tools
        (kc("1", 0xFFB1), "linux", "kp_1"),
        (kc("5", 0x65), "win32", "kp_5"),
        (kc(None, 0x7C), "win32", "f13"),
        (kc(None, 0x54), "win32", "t"),
        (kc(",", 0x2C), "linux", "comma"),
        (kc(None, 0x1234), "linux", "key_0x1234"),
    ],
)
def test_pynput_key_names(key: object, platform: str, name: str) -> None:
    assert key_name(key, platform) == name


@pytest.mark.parametrize(
    ("button", "name"),
    [
        (Button.left, "mouse_left"),
        (Button.middle, "mouse_middle"),
        (Button.x1, "mouse4"),
        (Button.x2, "mouse5"),
        (Button.button8, "mouse4"),
        (Button.button9, "mouse5"),
        (Button.button10, "mouse6"),
        (Button.scroll_up, None),
        (Button.unknown, "mouse_unknown"),
    ],
)
def test_pynput_button_names(button: object, name: str | None) -> None:
    assert button_name(button) == name


def test_every_normalized_name_is_in_the_vocabulary() -> None:
    produced = [
        key_name(Key.f13),
        key_name(kc(None, 0xFFAB)),
        button_name(Button.button9),
        qt_key_name("Key_F13"),
        qt_key_name("Key_Tools"),
        qt_key_name("Key_Plus", keypad=True),
        qt_key_name("Key_Control", native_virtual_key=0xFFE4, platform="linux"),
        qt_button_name(0x08),
        qt_button_name(0x10),
        qt_button_name(0x04),
        evdev_key_name("KEY_F13"),
        evdev_key_name(["BTN_LEFT", "BTN_MOUSE"]),
        evdev_key_name("BTN_SIDE"),
        evdev_key_name("KEY_KPPLUS"),
    ]
    assert produced[0] == "f13" and produced[6] == "ctrl_r" and produced[7] == "mouse4"
    assert produced[8] == "mouse5" and produced[9] == "mouse_middle"
    assert produced[-2] == "mouse4"
    assert set(produced) <= KEY_NAMES


def test_qt_names() -> None:
    assert qt_key_name("Key_T") == "t"
    assert qt_key_name("Key_5", keypad=True) == "kp_5"
    assert qt_key_name("Key_Control", platform="darwin") == "super"
    assert qt_key_name("Key_Meta", platform="darwin") == "ctrl"
    assert qt_key_name("Key_Control", platform="win32") == "ctrl"
    assert qt_key_name("Key_Hyper_L") == "key_key_hyper_l"
    assert qt_button_name(0x03) == "mouse_unknown"


def test_evdev_unknown_code() -> None:
    assert evdev_key_name("KEY_PROG1", 148) == "key_evdev_148"


def test_aliases() -> None:
    assert canonical_input(" Control ") == "ctrl"
    assert canonical_input("XF86Tools") == "f13"
    assert canonical_input("mouse_back") == "mouse4"
    with pytest.raises(UnknownInputName):
        canonical_input("hyper")


def test_pynput_unavailable_without_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    ok, reason = PynputSource().available()
    assert not ok and "DISPLAY" in reason
    with pytest.raises(RuntimeError, match="DISPLAY"):
        PynputSource().start(lambda ev: None)


def test_pynput_on_wayland_needs_xwayland_and_says_what_it_sees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    ok, reason = PynputSource().available()
    assert not ok and "without XWayland" in reason
    monkeypatch.setenv("DISPLAY", ":0")  # XWayland runs: its windows' keys are seen
    monkeypatch.setitem(sys.modules, "pynput", object())  # importable without a real display
    ok, reason = PynputSource().available()
    assert ok and "XWayland windows only" in reason


@pytest.mark.parametrize(
    ("environ", "platform", "kind", "order"),
    [
        (
            {"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"},
            "linux",
            "wayland",
            ("portal", "evdev", "pynput", "qt"),
        ),
        ({"WAYLAND_DISPLAY": "wayland-1"}, "linux", "wayland", ("portal", "evdev", "pynput", "qt")),
        (
            {"XDG_SESSION_TYPE": "x11", "DISPLAY": ":0"},
            "linux",
            "x11",
            ("pynput", "portal", "evdev", "qt"),
        ),
        ({}, "linux", "headless", ("pynput", "portal", "evdev", "qt")),
        ({"DISPLAY": ":0"}, "win32", "other", ("pynput", "qt")),
        ({}, "darwin", "other", ("pynput", "qt")),
    ],
)
def test_the_source_order_follows_the_session(
    environ: dict[str, str], platform: str, kind: str, order: tuple[str, ...]
) -> None:
    assert session_kind(environ, platform) == kind
    assert source_order(kind) == order


def test_evdev_availability_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    ok, reason = EvdevSource(str(tmp_path / "nope")).available()
    assert not ok and "does not exist" in reason
    ok, reason = EvdevSource(str(tmp_path)).available()
    assert not ok and "no input devices" in reason
    dev = tmp_path / "event0"
    dev.write_bytes(b"")
    monkeypatch.setattr("os.access", lambda path, mode: False)
    ok, reason = EvdevSource(str(tmp_path)).available()
    assert not ok and "'input' group" in reason


def test_evdev_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    (tmp_path / "event0").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "evdev", None)  # import evdev → ImportError
    ok, reason = EvdevSource(str(tmp_path)).available()
    assert not ok and "pip install evdev" in reason


def test_fake_source_and_choose() -> None:
    broken = FakeSource(ok=False, reason="no display")
    fake = FakeSource()
    assert isinstance(fake, HotkeySource)
    chosen, skipped = choose_source([broken, fake])
    assert chosen is fake and skipped == [("fake", "no display")]
    assert choose_source([broken]) == (None, [("fake", "no display")])


def test_service_with_fake_source_and_commands() -> None:
    clock = iter(float(i) for i in range(100))
    service = PttService(
        PttRouter([Binding.parse("squad", "f13", [2])], hot_mic=1, mode="continuous"),
        clock=lambda: next(clock),
    )
    seen: list[object] = []
    service.add_listener(seen.append)
    fake = FakeSource()
    service.attach(fake)
    fake.emit("f13", True, 5.0)
    assert service.wanted() == {1, 2}
    fake.emit("f13", True, 5.03)  # auto-repeat
    assert len(seen) == 1
    assert service.handle_command("press 7") == "ok wanted=1,2,7"
    assert service.handle_command("toggle x").startswith("error unknown channel")
    assert service.handle_command("").startswith("error")
    assert service.handle_command("press").startswith("error press needs")
    status = json.loads(service.handle_command("status")[3:])
    assert status == {
        "control": [7],
        "engaged": ["squad"],
        "held": ["f13"],
        "hot_mic": 1,
        "hot_mic_open": True,
        "latched": [],
        "mode": "continuous",
        "wanted": [1, 2, 7],
        "talking_to": ["1", "2", "7"],  # no names without a channel_name look-up
    }
    service.close()
    assert fake.stopped == 1 and service.wanted() == {1}
    assert [type(e).__name__ for e in seen] == ["WantedChanged"] * 3
    assert InputEvent("f13", True, 1.0).pressed


def test_a_control_press_can_always_be_released_by_the_name_it_was_pressed_with() -> None:
    """The channel is renamed, or the roster is empty while reconnecting: ``release General``
    still ends the press made as ``press General`` (a stuck open mic is the worst outcome)."""
    channels = {2: "General"}

    def resolve(text: str) -> int:
        from voipclient.net.roster import find_channel

        return find_channel(text, channels.items())

    service = PttService(PttRouter(), resolve_channel=resolve)
    assert service.handle_command("press General") == "ok wanted=2"
    channels.clear()  # reconnecting: no channels known
    assert service.handle_command("press Other").startswith("error no channel 'Other'")
    assert service.handle_command("release general") == "ok wanted="
    assert service.handle_command("release General").startswith("error")  # nothing pressed
    channels[2] = "General"
    assert service.handle_command("toggle General") == "ok wanted=2"
    channels[2] = "Squad"  # renamed while pressed
    assert service.handle_command("toggle GENERAL") == "ok wanted="
    service.close()


@pytest.mark.parametrize(
    ("status", "label"),
    [
        ("pynput: global hotkeys through pynput", "⌨ global keys"),
        (
            "pynput: through XWayland: keys pressed in XWayland windows only (most games) "
            "(not used: portal: no portal; evdev: not in the 'input' group)",
            "⌨ keys in XWayland windows",
        ),
        ("portal: desktop portal bound 2 of 2 shortcut(s): …", "⌨ desktop shortcuts"),
        (
            "portal: the dialog was cancelled: push-to-talk keys are not bound",
            "⌨ desktop shortcuts not bound",
        ),
        ("evdev: reading /dev/input", "⌨ global keys (evdev)"),
        ("qt: in-window shortcuts (not used: pynput: no X display)", "⌨ in-window only"),
        ("push-to-talk keys unavailable (pynput: no display)", "⌨ no push-to-talk keys"),
    ],
)
def test_the_status_bar_names_the_live_source(status: str, label: str) -> None:
    from voipclient.ui.model import hotkeys_summary

    assert hotkeys_summary(status) == label
