"""The portal source's pure parts: triggers, shortcut ids, paths, the per-key reference count,
and what the router makes of the keys a shortcut reports. No bus, no jeepney needed."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from voipclient.ptt import portal_source
from voipclient.ptt.keys import KEY_NAMES
from voipclient.ptt.portal_source import (
    HeldKeys,
    PortalSource,
    chord_order,
    plan_shortcuts,
    preferred_trigger,
    request_path,
    response_reason,
    session_path,
    shortcut_id,
    shortcuts_from_bindings,
)
from voipclient.ptt.router import Binding, PttRouter

# The XDG shortcuts specification: modifiers CTRL, ALT, SHIFT, NUM, LOGO and one xkbcommon
# keysym name (alphanumerics and underscore), joined by "+".
XDG_TRIGGER = re.compile(r"^((CTRL|ALT|SHIFT|NUM|LOGO)\+)*[A-Za-z0-9_]+$")


@pytest.mark.parametrize(
    ("chord", "trigger"),
    [
        ({"ctrl", "shift", "f13"}, "CTRL+SHIFT+F13"),
        ({"f13"}, "F13"),
        ({"ctrl_l", "t"}, "CTRL+t"),
        ({"super", "alt", "space"}, "ALT+LOGO+space"),
        ({"shift_r", "kp_add"}, "SHIFT+KP_Add"),
        ({"ctrl", "ctrl_r", "1"}, "CTRL+1"),  # both sides: one CTRL
        ({"enter"}, "Return"),
        ({"page_up"}, "Page_Up"),
        ({"bracket_left"}, "bracketleft"),
        ({"volume_mute"}, "XF86AudioMute"),
        ({"ctrl_r"}, "Control_R"),  # one modifier alone: the key itself
        ({"super"}, "Super_L"),
        ({"shift", "alt_gr"}, "SHIFT+ISO_Level3_Shift"),
        ({"mouse4"}, None),  # the specification has keyboard triggers only
        ({"ctrl", "mouse5"}, None),
        ({"a", "b"}, None),  # two non-modifier keys
        ({"ctrl", "shift"}, None),  # several modifiers alone
    ],
)
def test_preferred_trigger(chord: set[str], trigger: str | None) -> None:
    assert preferred_trigger(chord) == trigger
    if trigger is not None:
        assert XDG_TRIGGER.match(trigger)


def test_every_keyboard_key_has_a_trigger_in_the_xdg_format() -> None:
    for name in sorted(KEY_NAMES):
        trigger = preferred_trigger({name})
        if name.startswith("mouse"):
            assert trigger is None, name
        else:
            assert trigger is not None, name
            assert XDG_TRIGGER.match(trigger), (name, trigger)


def test_shortcut_id_is_stable_and_tells_chords_apart() -> None:
    assert shortcut_id({"f13", "shift", "ctrl"}) == "ptt-ctrl-shift-f13"
    assert shortcut_id(["ctrl", "shift", "f13"]) == shortcut_id(frozenset({"f13", "ctrl", "shift"}))
    assert shortcut_id({"ctrl_l", "t"}) == "ptt-ctrl_l-t"
    assert shortcut_id({"ctrl", "t"}) != shortcut_id({"ctrl_l", "t"})
    assert shortcut_id({"mouse4"}) == "ptt-mouse4"
    for name in KEY_NAMES:
        assert re.fullmatch(r"ptt-[a-z0-9_-]+", shortcut_id({name}))
    with pytest.raises(ValueError, match="at least one key"):
        shortcut_id(set())


def test_chord_order_puts_modifiers_first() -> None:
    assert chord_order({"t", "super_l", "alt", "shift", "ctrl_r", "alt_gr"}) == [
        "ctrl_r",
        "shift",
        "alt",
        "alt_gr",
        "super_l",
        "t",
    ]
    assert chord_order({"b", "a", "f13"}) == ["a", "b", "f13"]


def test_request_and_session_paths_follow_the_portal_rule() -> None:
    assert request_path(":1.42", "voipclient_ab") == (
        "/org/freedesktop/portal/desktop/request/1_42/voipclient_ab"
    )
    assert session_path(":1.7", "tok") == "/org/freedesktop/portal/desktop/session/1_7/tok"


def test_response_reasons() -> None:
    assert response_reason(0) == "accepted"
    assert "cancelled by the user" in response_reason(1)
    assert "response 2" in response_reason(2)
    assert "unknown response 9" in response_reason(9)


def test_plan_canonicalizes_and_rejects_duplicates() -> None:
    plan = plan_shortcuts([("Push-to-talk: A", ["Control", "F13"]), ("", ["mouse_back"])])
    assert [(s.id, s.description, s.chord, s.trigger) for s in plan] == [
        ("ptt-ctrl-f13", "Push-to-talk: A", frozenset({"ctrl", "f13"}), "CTRL+F13"),
        ("ptt-mouse4", "Push-to-talk: mouse4", frozenset({"mouse4"}), None),
    ]
    with pytest.raises(ValueError, match="same keys"):
        plan_shortcuts([("one", {"f13"}), ("two", {"F13"})])
    with pytest.raises(ValueError, match="unknown key"):
        plan_shortcuts([("bad", {"hyper"})])
    with pytest.raises(ValueError):
        plan_shortcuts([("empty", set())])
    assert plan_shortcuts([]) == ()


def test_shortcuts_from_bindings() -> None:
    bindings = [
        Binding.parse("Squad A", "ctrl+shift+f13", [2]),
        Binding.parse("radio", "f14", [3], latching=True),
    ]
    assert shortcuts_from_bindings(bindings) == [
        ("Push-to-talk: Squad A", frozenset({"ctrl", "shift", "f13"})),
        ("Toggle talking: radio", frozenset({"f14"})),
    ]


def test_held_keys_press_modifiers_first_and_release_in_reverse() -> None:
    keys = HeldKeys()
    assert keys.activate("a", {"f13", "shift", "ctrl"}) == [
        ("ctrl", True),
        ("shift", True),
        ("f13", True),
    ]
    assert keys.active == {"a"}
    assert keys.held == {"ctrl", "shift", "f13"}
    assert keys.deactivate("a") == [("f13", False), ("shift", False), ("ctrl", False)]
    assert keys.held == frozenset()


def test_held_keys_count_a_shared_key() -> None:
    keys = HeldKeys()
    assert keys.activate("a", {"ctrl", "f13"}) == [("ctrl", True), ("f13", True)]
    assert keys.activate("b", {"ctrl", "f14"}) == [("f14", True)]  # ctrl is down already
    assert keys.deactivate("a") == [("f13", False)]  # b still holds ctrl
    assert keys.held == {"ctrl", "f14"}
    assert keys.deactivate("b") == [("f14", False), ("ctrl", False)]


def test_held_keys_ignore_repeats_and_strays() -> None:
    keys = HeldKeys()
    assert keys.deactivate("never") == []
    assert keys.activate("a", {"f13"}) == [("f13", True)]
    assert keys.activate("a", {"f13"}) == []  # a repeated Activated (key repeat)
    assert keys.deactivate("a") == [("f13", False)]
    assert keys.deactivate("a") == []


def test_held_keys_release_all() -> None:
    keys = HeldKeys()
    keys.activate("a", {"ctrl", "f13"})
    keys.activate("b", {"ctrl", "f14"})
    out = keys.release_all()
    assert sorted(out) == [("ctrl", False), ("f13", False), ("f14", False)]
    assert out[-1] == ("ctrl", False)
    assert keys.active == frozenset() and keys.held == frozenset()
    assert keys.release_all() == []


def _feed(router: PttRouter, transitions: list[tuple[str, bool]], now: float) -> None:
    for name, pressed in transitions:
        if pressed:
            router.press(name, now)
        else:
            router.release(name, now)


def test_router_engages_only_the_larger_chord_a_shortcut_reports() -> None:
    """Modifiers go down first, so the last key completes T and Ctrl+T at once and the router
    engages Ctrl+T only (its subset rule)."""
    router = PttRouter([Binding.parse("t", "t", [1]), Binding.parse("ctrl t", "ctrl+t", [2])])
    keys = HeldKeys()
    _feed(router, keys.activate("ptt-ctrl-t", {"ctrl", "t"}), 1.0)
    assert router.wanted(1.0) == {2}
    _feed(router, keys.deactivate("ptt-ctrl-t"), 2.0)
    assert router.wanted(2.0) == frozenset()


def test_router_with_two_shortcuts_sharing_ctrl() -> None:
    router = PttRouter([Binding.parse("a", "ctrl+f13", [2]), Binding.parse("b", "ctrl+f14", [3])])
    keys = HeldKeys()
    _feed(router, keys.activate("a", {"ctrl", "f13"}), 1.0)
    _feed(router, keys.activate("b", {"ctrl", "f14"}), 1.1)
    assert router.wanted(1.1) == {2, 3}
    _feed(router, keys.deactivate("a"), 1.2)
    assert router.wanted(1.2) == {3}  # ctrl is still held for b
    _feed(router, keys.deactivate("b"), 1.3)
    assert router.wanted(1.3) == frozenset()


def test_parse_bound_drops_malformed_entries() -> None:
    results = {
        "shortcuts": (
            "a(sa{sv})",
            [
                ("ok", {"trigger_description": ("s", "Ctrl+F13")}),
                ("no-trigger", {}),
                ("wrong-type", {"trigger_description": ("u", 7)}),
                "garbage",
                (1, {}),
            ],
        )
    }
    assert portal_source._parse_bound(results) == {
        "ok": "Ctrl+F13",
        "no-trigger": "",
        "wrong-type": "",
    }
    assert portal_source._parse_bound({"shortcuts": ("s", "nonsense")}) == {}
    assert portal_source._parse_bound({}) == {}


def test_no_session_bus_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    source = PortalSource()
    ok, reason = source.available()
    if sys.platform in ("win32", "darwin"):
        assert not ok
        return
    assert (ok, reason) == (False, "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)")
    with pytest.raises(RuntimeError, match="no D-Bus session bus"):
        source.start(lambda _e: None)
    source.stop()  # never started: nothing to do


def test_set_bindings_before_start_only_records() -> None:
    source = PortalSource(bus_address="unix:path=/nonexistent")
    source.set_bindings([("Push-to-talk: A", frozenset({"f13"}))])
    assert [s.id for s in source.shortcuts] == ["ptt-f13"]
    assert source.status == "1 shortcut(s) to bind when started"
    assert not source.wait_settled(0)
    with pytest.raises(ValueError):
        source.set_bindings([("bad", frozenset({"hyper"}))])
    assert [s.id for s in source.shortcuts] == ["ptt-f13"]  # a bad call changes nothing


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="no desktop portal there")
def test_module_imports_without_jeepney() -> None:
    """Like the other sources, the platform library is imported only in available()/start()."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["jeepney"] = None  # unimportable
        from voipclient.ptt.portal_source import PortalSource, preferred_trigger
        assert preferred_trigger({"f13"}) == "F13"
        source = PortalSource(bus_address="unix:path=/nonexistent")
        ok, reason = source.available()
        assert not ok and "jeepney" in reason, reason
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
