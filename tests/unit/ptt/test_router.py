"""The push-to-talk router, pure, with a fake clock (plain floats)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.audio.voice import TransmitGate
from voipclient.errors import LocalProtocolError
from voipclient.ptt.events import Cause, WantedChanged
from voipclient.ptt.router import (
    NOBODY,
    Binding,
    Mode,
    PttConfigError,
    PttRouter,
    Route,
    load_bindings,
)

F13 = Binding.parse("squad", "f13", [2])
MOUSE4 = Binding.parse("command", "mouse4", [3])
CHORD = Binding.parse("all", "ctrl+shift+t", [4, 5])
LATCH = Binding.parse("radio", "f14", [6], latching=True)


def router(*bindings: Binding, **kw: object) -> PttRouter:
    return PttRouter(bindings or (F13, MOUSE4, CHORD, LATCH), **kw)  # type: ignore[arg-type]


def test_idle_wants_nothing() -> None:
    assert router().wanted(0.0) == frozenset()


def test_press_and_release_one_key_returns_events_with_timestamps() -> None:
    r = router()
    (ev,) = r.press("f13", 1.25)
    assert ev == WantedChanged(frozenset(), frozenset({2}), Cause.PRESS, 1.25, "f13")
    assert ev.started == {2} and ev.stopped == frozenset()
    assert r.wanted(1.3) == {2}
    (ev,) = r.release("f13", 2.5)
    assert (ev.before, ev.after, ev.cause, ev.at, ev.trigger) == (
        frozenset({2}),
        frozenset(),
        Cause.RELEASE,
        2.5,
        "f13",
    )
    assert ev.stopped == {2}


def test_two_held_bindings_transmit_to_the_union() -> None:
    r = router()
    r.press("f13", 0.0)
    (ev,) = r.press("mouse4", 0.1)
    assert ev.after == {2, 3}
    (ev,) = r.release("f13", 0.2)
    assert ev.after == {3}


def test_overlapping_channels_release_keeps_the_shared_one() -> None:
    a = Binding.parse("a", "f13", [1, 2])
    b = Binding.parse("b", "f15", [2, 3])
    r = router(a, b)
    r.press("f13", 0)
    r.press("f15", 0)
    assert r.wanted(0) == {1, 2, 3}
    (ev,) = r.release("f13", 1)
    assert ev.after == {2, 3}


def test_auto_repeat_is_ignored() -> None:
    r = router()
    assert r.press("f13", 0.0)
    assert r.press("f13", 0.03) == []
    assert r.press("F13", 0.06) == []
    (ev,) = r.release("f13", 0.5)
    assert ev.after == frozenset()
    assert r.release("f13", 0.6) == []  # a release of a key that is up


def test_chord_needs_all_keys_in_any_order() -> None:
    r = router()
    assert r.press("t", 0) == []
    assert r.press("shift_l", 0) == []
    (ev,) = r.press("ctrl_r", 0.5)  # "ctrl" in the binding matches either side
    assert ev.after == {4, 5} and ev.trigger == "ctrl_r"
    (ev,) = r.release("shift_l", 1)
    assert ev.after == frozenset()
    assert r.press("shift_r", 1.1)[0].after == {4, 5}


def test_chord_order_variants_parse_to_the_same_binding() -> None:
    a = Binding.parse("x", "Ctrl+Shift+T", [1])
    b = Binding.parse("x", ["t", "SHIFT", "control"], [1])
    assert a == b
    assert a.describe() == "ctrl+shift+t"


def test_sided_binding_needs_that_side() -> None:
    r = router(Binding.parse("left", "ctrl_l+f13", [1]))
    r.press("f13", 0)
    assert r.press("ctrl_r", 0) == []
    assert r.press("ctrl_l", 0)[0].after == {1}


def test_both_sides_held_release_one_keeps_the_chord() -> None:
    r = router(Binding.parse("c", "ctrl+f13", [1]))
    r.press("ctrl_l", 0)
    r.press("ctrl_r", 0)
    r.press("f13", 0)
    assert r.release("ctrl_l", 1) == []
    assert r.wanted(1) == {1}


def test_larger_chord_shadows_its_subset() -> None:
    t = Binding.parse("t", "t", [1])
    ct = Binding.parse("ct", "ctrl+t", [2])
    r = router(t, ct)
    r.press("ctrl_l", 0)
    (ev,) = r.press("t", 0)
    assert ev.after == {2}
    # Letting go of ctrl does not start t's binding (a release never engages a chord).
    (ev,) = r.release("ctrl_l", 1)
    assert ev.after == frozenset()
    r.release("t", 2)
    assert r.press("t", 3)[0].after == {1}
    # Engaging the larger chord disengages the engaged subset.
    (ev,) = r.press("ctrl", 4)
    assert ev.after == {2}


def test_latching_binding_toggles_on_press_and_ignores_release() -> None:
    r = router()
    (ev,) = r.press("f14", 0)
    assert (ev.after, ev.cause) == ({6}, Cause.LATCH)
    assert r.release("f14", 0.1) == []
    (ev,) = r.press("f14", 0.2)
    assert (ev.after, ev.cause) == (frozenset(), Cause.LATCH)
    assert r.state().latched == frozenset()


def test_latching_auto_repeat_does_not_toggle() -> None:
    r = router()
    r.press("f14", 0)
    for i in range(10):
        assert r.press("f14", 0.03 * i) == []
    assert r.wanted(1) == {6}


def test_latch_plus_held_key_union() -> None:
    r = router()
    r.press("f14", 0)
    r.release("f14", 0)
    (ev,) = r.press("f13", 1)
    assert ev.after == {2, 6}
    (ev,) = r.release("f13", 2)
    assert ev.after == {6}


def test_modes_and_hot_mic() -> None:
    r = router(hot_mic=9)
    assert r.wanted(0) == frozenset()  # ptt: the hot mic is off
    (ev,) = r.set_mode("continuous", 1)
    assert (ev.after, ev.cause, ev.trigger) == ({9}, Cause.MODE, "continuous")
    r.press("f13", 2)
    assert r.wanted(2) == {2, 9}
    (ev,) = r.set_mode(Mode.VOICE_ACTIVATION, 3)
    assert ev.after == {2}
    (ev,) = r.set_vad(True, 3.02)
    assert (ev.after, ev.cause, ev.at) == ({2, 9}, Cause.VAD, 3.02)
    assert r.set_vad(True, 3.04) == []  # no change, no event
    (ev,) = r.set_vad(False, 4)
    assert ev.after == {2}
    r.set_vad(True, 5)
    (ev,) = r.set_mode("ptt", 6)
    assert ev.after == {2}
    assert r.state().vad_speech is True and not r.state().hot_mic_open


def test_vad_without_hot_mic_changes_nothing() -> None:
    r = router(mode="voice_activation")
    assert r.set_vad(True, 0) == []


def test_hot_mic_changes() -> None:
    r = router(mode="continuous", hot_mic=9)
    (ev,) = r.set_hot_mic(8, 1)
    assert (ev.before, ev.after, ev.cause, ev.trigger) == ({9}, {8}, Cause.HOT_MIC, "8")
    (ev,) = r.set_hot_mic(None, 2)
    assert ev.after == frozenset() and ev.trigger is None


def test_control_commands() -> None:
    r = router()
    (ev,) = r.control_press(7, 0)
    assert (ev.after, ev.cause, ev.trigger) == ({7}, Cause.CONTROL, "press 7")
    assert r.control_press(7, 0) == []
    r.control_toggle(8, 1)
    assert r.wanted(1) == {7, 8}
    r.control_toggle(8, 2)
    r.control_release(7, 3)
    assert r.wanted(3) == frozenset()
    with pytest.raises(PttConfigError):
        r.control_press(-1, 4)


def test_release_all_keeps_hot_mic() -> None:
    r = router(mode="continuous", hot_mic=1)
    r.press("f13", 0)
    r.press("f14", 0)
    r.control_press(7, 0)
    (ev,) = r.release_all(1)
    assert (ev.after, ev.cause) == ({1}, Cause.RELEASE_ALL)
    state = r.state()
    assert not (state.held_inputs or state.engaged or state.latched or state.control_channels)


def test_set_bindings_drops_engagement_and_needs_a_new_press() -> None:
    r = router()
    r.press("f13", 0)
    (ev,) = r.set_bindings([Binding.parse("new", "f13", [3])], 1)
    assert (ev.after, ev.cause) == (frozenset(), Cause.BINDINGS)
    assert r.press("f13", 1.1) == []  # still down: auto-repeat
    r.release("f13", 1.2)
    assert r.press("f13", 1.3)[0].after == {3}


def test_unbound_and_unknown_inputs_are_harmless() -> None:
    r = router()
    assert r.press("key_0x1008ff2f", 0) == []
    assert r.press("q", 0) == []
    assert r.state().held_inputs == {"key_0x1008ff2f", "q"}


def test_state_snapshot() -> None:
    r = router(mode="continuous", hot_mic=1)
    r.press("f13", 0)
    s = r.state()
    assert s.mode is Mode.CONTINUOUS and s.hot_mic == 1 and s.hot_mic_open
    assert s.engaged == {"squad"} and s.wanted == {1, 2} and s.held_inputs == {"f13"}
    assert s.bindings == r.bindings
    with pytest.raises(AttributeError):
        s.wanted = frozenset()  # type: ignore[misc]


def test_time_must_be_finite() -> None:
    with pytest.raises(LocalProtocolError):
        router().press("f13", float("nan"))


# -- configuration errors -----------------------------------------------------------------------


def test_unknown_key_names_the_binding() -> None:
    with pytest.raises(PttConfigError, match=r"binding 'squad'.*'f25'") as info:
        Binding.parse("squad", "ctrl+f25", [1])
    assert info.value.binding == "squad"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "keys": "f13"}, "exactly one of"),
        ({"name": "a", "keys": "f13", "channels": []}, "no channels"),
        ({"name": "a", "keys": "f13", "channels": [-1]}, "channel must be"),
        ({"name": "a", "keys": "f13", "channels": [True]}, "channel must be"),
        ({"name": "a", "keys": "", "channels": [1]}, "empty key name"),
        ({"name": "a", "keys": "ctrl++t", "channels": [1]}, "empty key name"),
        ({"name": "a", "keys": "t+T", "channels": [1]}, "listed twice"),
        ({"name": "a", "keys": "f13", "channels": [1], "latch": True}, "unknown option"),
        ({"name": "a", "keys": "f13", "channels": [1], "latching": "yes"}, "latching must"),
        ({"name": "a", "keys": "f13", "channels": ["Lobby"]}, "unknown channel 'Lobby'"),
        ({"name": "a", "channels": [1]}, "no keys"),
    ],
)
def test_config_errors_name_the_binding(entry: dict[str, object], message: str) -> None:
    with pytest.raises(PttConfigError, match=message) as info:
        load_bindings([entry])
    assert info.value.binding == "a"
    assert str(info.value).startswith("binding 'a': ")


def test_duplicate_names_and_chords() -> None:
    with pytest.raises(PttConfigError, match="binding 'a': the name is used twice"):
        load_bindings([{"name": "a", "keys": "f13", "channel": 1}] * 2)
    with pytest.raises(PttConfigError, match="binding 'b': same keys as binding 'a'"):
        load_bindings(
            [
                {"name": "a", "keys": "ctrl+t", "channel": 1},
                {"name": "b", "keys": "T+Control", "channel": 2},
            ]
        )


def test_load_bindings_resolves_names_and_defaults() -> None:
    names = {"Squad": 2, "Command": 3}
    (a, b) = load_bindings(
        [
            {"keys": "mouse_back", "channels": ["Squad", 3]},
            {"name": "cmd", "keys": ["f13"], "channel": "Command", "latching": True},
        ],
        resolve=names.get,
    )
    assert a == Binding("binding 1", frozenset({"mouse4"}), frozenset({2, 3}), False)
    assert b == Binding("cmd", frozenset({"f13"}), frozenset({3}), True)


def test_bad_mode_is_a_config_error() -> None:
    with pytest.raises(PttConfigError, match="unknown mode 'loud'"):
        PttRouter(mode="loud")


# -- properties ---------------------------------------------------------------------------------

INPUTS = ["f13", "f14", "f15", "ctrl_l", "ctrl_r", "shift_l", "t", "mouse4", "mouse5", "q"]
CHORDS = ["f13", "f14", "ctrl+t", "ctrl+shift+t", "mouse4", "mouse5", "t", "shift+f15"]


@st.composite
def configs(draw: st.DrawFn) -> tuple[list[Binding], int | None, Mode]:
    chords = draw(st.lists(st.sampled_from(CHORDS), unique=True, max_size=6))
    bindings = [
        Binding.parse(
            f"b{i}",
            chord,
            draw(st.frozensets(st.integers(0, 6), min_size=1, max_size=3)),
            latching=draw(st.booleans()),
        )
        for i, chord in enumerate(chords)
    ]
    hot = draw(st.none() | st.integers(0, 9))
    return bindings, hot, draw(st.sampled_from(list(Mode)))


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("press"), st.sampled_from(INPUTS)),
        st.tuples(st.just("release"), st.sampled_from(INPUTS)),
        st.tuples(st.just("vad"), st.booleans()),
        st.tuples(st.just("mode"), st.sampled_from(list(Mode))),
    ),
    max_size=40,
)


def _hot_only(r: PttRouter) -> frozenset[int]:
    s = r.state()
    return frozenset({s.hot_mic}) if s.hot_mic_open and s.hot_mic is not None else frozenset()


@settings(max_examples=300, deadline=None)
@given(configs(), ACTIONS)
def test_wanted_is_within_configured_channels_and_events_chain(
    config: tuple[list[Binding], int | None, Mode], actions: list[tuple[str, object]]
) -> None:
    bindings, hot, mode = config
    r = PttRouter(bindings, mode=mode, hot_mic=hot)
    configured = r.configured_channels
    wanted = r.wanted(0)
    for i, (kind, arg) in enumerate(actions):
        now = i * 0.02
        if kind == "press":
            events = r.press(str(arg), now)
        elif kind == "release":
            events = r.release(str(arg), now)
        elif kind == "vad":
            events = r.set_vad(bool(arg), now)
        else:
            events = r.set_mode(arg, now)  # type: ignore[arg-type]
        for ev in events:
            assert ev.before == wanted and ev.after != ev.before and ev.at == now
            wanted = ev.after
        assert r.wanted(now) == wanted
        assert wanted <= configured
    # Releasing every held input returns to the hot mic alone once latches are off.
    for name in sorted(r.state().held_inputs):
        r.release(name, 10.0)
    assert not r.state().engaged
    r.release_all(11.0)
    assert r.wanted(11.0) == _hot_only(r)


@settings(max_examples=200, deadline=None)
@given(configs(), ACTIONS)
def test_without_latching_releasing_each_key_returns_to_hot_mic_only(
    config: tuple[list[Binding], int | None, Mode], actions: list[tuple[str, object]]
) -> None:
    bindings, hot, mode = config
    plain = [Binding(b.name, b.chord, b.channels, False) for b in bindings]
    r = PttRouter(plain, mode=mode, hot_mic=hot)
    for i, (kind, arg) in enumerate(actions):
        if kind == "press":
            r.press(str(arg), i)
        elif kind == "release":
            r.release(str(arg), i)
        elif kind == "vad":
            r.set_vad(bool(arg), i)
    for name in sorted(r.state().held_inputs):
        r.release(name, 100)
    assert r.wanted(100) == _hot_only(r)


# --- voice activation: the speech decision is one of the router's inputs -----------------------


def test_voice_activation_route_answers_for_both_speech_decisions() -> None:
    r = router(hot_mic=7)
    assert r.route() == NOBODY  # ptt mode: the hot mic is off
    assert r.set_mode("voice_activation", 1) == []  # silent: nobody hears more than before...
    assert r.route() == Route(frozenset(), frozenset({7}))  # ...but a speech frame would
    assert r.route().voice_activated == {7}
    r.press("f13", 2)
    route = r.route()
    assert (route.always, route.speaking) == ({2}, {2, 7})  # keys do not wait for speech
    assert route.wanted(False) == {2} and route.wanted(True) == {2, 7}
    assert route.wanted(True) is route.speaking  # the capture worker allocates nothing
    r.set_mode("continuous", 3)
    assert r.route() == Route(frozenset({2, 7}), frozenset({2, 7}))
    assert r.route().voice_activated == frozenset()


def test_speech_starts_and_stops_the_hot_mic() -> None:
    r = router(mode="voice_activation", hot_mic=7)
    route = r.route()
    (ev,) = r.set_vad(True, 1.0)
    assert (ev.started, ev.cause, ev.at) == ({7}, Cause.VAD, 1.0)
    assert r.state().hot_mic_open and r.state().vad_speech
    assert r.set_vad(True, 1.02) == []  # every frame says so again: nothing new
    (ev,) = r.set_vad(False, 2.0)
    assert (ev.stopped, ev.after) == ({7}, frozenset())
    assert r.route() is route  # the speech decision never changes the route itself
    r.press("f13", 3.0)
    (ev,) = r.set_vad(True, 3.1)  # speech while a key is held adds the hot mic...
    assert (ev.before, ev.after) == ({2}, {2, 7})
    (ev,) = r.release("f13", 3.2)  # ...and letting go of the key keeps it
    assert ev.after == {7}
    assert r.wanted(3.2) == r.route().wanted(True)


def test_the_router_adds_no_release_delay_the_gate_does() -> None:
    """The tail after speech (and after a key) comes from TransmitGate, once: the router's set
    changes on the frame the speech decision flips; the gate keeps the channel for release_ms,
    bridges a shorter pause without a new start, and ends with one VOICE_LAST."""
    r = router(mode="voice_activation", hot_mic=7)
    gate = TransmitGate(release_ms=100)
    speech = [True] * 10 + [False] * 3 + [True] * 10 + [False] * 20  # 60 ms pause, then the end
    starts, endings, sent_to_7 = 0, [], []
    for k, is_speech in enumerate(speech):
        now = k * 0.02
        wanted = r.route().wanted(is_speech)
        assert wanted == ({7} if is_speech else frozenset())  # no hangover in the router
        d = gate.update(wanted, now)
        starts += d.started
        if d.ending:
            endings.append((k, d.ending))
        if 7 in d.targets:
            sent_to_7.append(k)
    assert starts == 1  # the 60 ms pause is bridged by the 100 ms release delay
    assert sent_to_7 == list(range(0, 23 + 5))  # 5 frames (100 ms) after the last speech
    assert endings == [(28, (7,))]  # then one VOICE_LAST


def test_hot_mic_changes_under_voice_activation() -> None:
    r = router(mode="voice_activation", hot_mic=7)
    r.set_vad(True, 1)
    (ev,) = r.set_hot_mic(8, 2)  # while speaking: 7 stops, 8 starts at once
    assert (ev.stopped, ev.started, ev.cause, ev.trigger) == ({7}, {8}, Cause.HOT_MIC, "8")
    r.set_vad(False, 3)
    assert r.set_hot_mic(9, 4) == []  # while silent: nothing changes now...
    assert r.route().speaking == {9}  # ...the next speech frame goes to 9
    assert r.set_hot_mic(None, 5) == [] and r.route() == NOBODY
    assert r.set_vad(True, 6) == []  # no hot mic: speech alone reaches nobody
    (ev,) = r.set_hot_mic([3, 4], 7)  # the bot: its --talk channels are the hot mic
    assert (ev.after, ev.trigger) == ({3, 4}, "3,4")
    assert r.hot_mic == 3 and r.hot_mics == {3, 4} and r.configured_channels >= {3, 4}


def test_mute_silences_every_input_and_unmute_brings_back_what_is_still_on() -> None:
    r = router(mode="voice_activation", hot_mic=7)
    r.press("f13", 0)
    r.set_vad(True, 0.5)
    (ev,) = r.set_muted(True, 1)
    assert (ev.before, ev.after, ev.cause, ev.trigger) == ({2, 7}, frozenset(), Cause.MUTE, "on")
    assert r.route() == NOBODY and r.route().wanted(True) == frozenset()
    assert r.press("mouse4", 2) == [] and r.control_press(5, 2) == []  # tracked, not heard
    assert r.set_vad(False, 3) == [] and r.set_vad(True, 3.5) == []
    assert r.set_mode("continuous", 4) == [] and r.set_hot_mic(8, 4) == []
    state = r.state()
    assert state.muted and not state.hot_mic_open and state.wanted == frozenset()
    assert state.engaged == {"squad", "command"}
    r.release("f13", 5)  # let go while muted: stays let go
    (ev,) = r.set_muted(False, 6)
    assert (ev.after, ev.cause, ev.trigger) == ({3, 5, 8}, Cause.MUTE, "off")
    assert r.set_muted(False, 7) == []


@settings(max_examples=300, deadline=None)
@given(
    configs(),
    st.lists(
        st.one_of(
            st.tuples(st.just("press"), st.sampled_from(INPUTS)),
            st.tuples(st.just("release"), st.sampled_from(INPUTS)),
            st.tuples(st.just("vad"), st.booleans()),
            st.tuples(st.just("mode"), st.sampled_from(list(Mode))),
            st.tuples(st.just("mute"), st.booleans()),
            st.tuples(st.just("hot"), st.none() | st.integers(0, 9)),
        ),
        max_size=40,
    ),
)
def test_wanted_is_always_the_route_applied_to_the_last_speech_decision(
    config: tuple[list[Binding], int | None, Mode], actions: list[tuple[str, object]]
) -> None:
    bindings, hot, mode = config
    r = PttRouter(bindings, mode=mode, hot_mic=hot)
    for i, (kind, arg) in enumerate(actions):
        now = i * 0.02
        if kind == "press":
            r.press(str(arg), now)
        elif kind == "release":
            r.release(str(arg), now)
        elif kind == "vad":
            r.set_vad(bool(arg), now)
        elif kind == "mode":
            r.set_mode(arg, now)  # type: ignore[arg-type]
        elif kind == "mute":
            r.set_muted(bool(arg), now)
        else:
            r.set_hot_mic(arg, now)  # type: ignore[arg-type]
        s, route = r.state(), r.route()
        assert r.wanted(now) == route.wanted(s.vad_speech) == s.wanted
        assert route.always <= route.speaking and s.route is route
        assert route.voice_activated <= s.hot_mics
        if s.muted:
            assert route == NOBODY
        elif s.mode is not Mode.VOICE_ACTIVATION:
            assert route.voice_activated == frozenset()
