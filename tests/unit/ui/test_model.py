"""The window's pure model: rows from roster events, talking marks, trust, bindings by name."""

from __future__ import annotations

from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net.roster import ChannelView, Roster, RosterSnapshot, UserView
from voipclient.ui.model import (
    ClientModel,
    binding_conflict,
    binding_warnings,
    checked_hotkeys,
    chord_overlap,
    find_conflicts,
    hotkey_rule,
    with_binding,
)
from voipclient.ui.prefs import BindingPref, Preferences, ServerPrefs

LOBBY, GAMES, SQUAD, AFK = 1, 2, 3, 4
ME, BOB, EVE = 10, 11, 12


def roster(*, bob_muted: bool = False) -> RosterSnapshot:
    r = Roster()
    r.add_channel(ChannelView(LOBBY, None, "Lobby"))
    r.add_channel(ChannelView(GAMES, LOBBY, "Games", description="play"))
    r.add_channel(ChannelView(SQUAD, GAMES, "Squad"))
    r.add_channel(ChannelView(AFK, LOBBY, "AFK", password_protected=True))
    r.add_user(UserView(ME, "me", b"\x01" * 32), {LOBBY: True, GAMES: True})
    r.add_user(UserView(BOB, "Bob", b"\x02" * 32, muted=bob_muted), {LOBBY: True, GAMES: True})
    r.add_user(UserView(EVE, "eve", b"\x03" * 32), {SQUAD: False})
    return r.snapshot()


def view_of(snap: RosterSnapshot, trust: dict[int, str] | None = None) -> e2ee.MemberView:
    """A fake of the E2E layer's member view: every roster member as a key holder."""
    trust = trust or {}
    channels = {
        ch: tuple(
            e2ee.KeyHolder(
                sid,
                snap.users[sid].name,
                snap.users[sid].ik_pub,
                "me" if sid == ME else trust.get(sid, "tofu"),
                snap.may_speak(sid, ch),
                True,
            )
            for sid in sorted(snap.members(ch), key=lambda s: (s != ME, snap.users[s].name))
        )
        for ch in snap.channels
    }
    return e2ee.MemberView(ME, channels, {GAMES: "12345 67890 12345 67890"})


def logged_in() -> ClientModel:
    model = ClientModel()
    snap = roster()
    assert model.apply(ev.LoggedIn(ME, b"\x00" * 32, 0, snap))
    assert model.apply(e2ee.MembersChanged(view_of(snap)))
    return model


def test_rows_are_in_tree_order_with_depth_and_membership() -> None:
    rows = logged_in().rows()
    assert [(r.name, r.depth) for r in rows] == [
        ("Lobby", 0),
        ("AFK", 1),
        ("Games", 1),
        ("Squad", 2),
    ]
    games = next(r for r in rows if r.id == GAMES)
    assert games.joined and games.may_speak and games.description == "play"
    assert [m.name for m in games.members] == ["me", "Bob"]  # me first
    assert games.members[0].is_me and games.members[0].trust == "verified"
    squad = next(r for r in rows if r.id == SQUAD)
    assert not squad.joined
    assert squad.members[0].name == "eve" and not squad.members[0].may_speak
    assert next(r for r in rows if r.id == AFK).password_protected


def test_roster_change_and_unrelated_events() -> None:
    model = logged_in()
    before = model.rows()
    assert not model.apply(ev.PingStats(1, 1, 1, 1, 1, 1, 0, None, None))
    assert model.rows() is before  # cached while nothing changes
    assert model.apply(ev.RosterChanged(roster(bob_muted=True)))
    bob = next(m for m in model.row(GAMES).members if m.name == "Bob")  # type: ignore[union-attr]
    assert bob.muted
    assert not model.apply(ev.RosterChanged(roster(bob_muted=True)))


def test_talking_marks_member_and_channel() -> None:
    model = logged_in()
    assert model.set_talking({(BOB, GAMES)})
    assert not model.set_talking([(BOB, GAMES)])
    games = model.row(GAMES)
    assert games is not None and games.talking
    assert [m.talking for m in games.members] == [False, True]
    assert not model.row(LOBBY).talking  # type: ignore[union-attr]
    assert model.set_talking(())
    assert not model.row(GAMES).talking  # type: ignore[union-attr]


def test_members_identity_and_trust_come_from_the_e2e_view_only() -> None:
    model = logged_in()
    snap = roster()
    assert model.apply(e2ee.MembersChanged(view_of(snap, {BOB: "changed"})))
    bob = next(m for m in model.row(GAMES).members if m.name == "Bob")  # type: ignore[union-attr]
    assert bob.trust == "changed" and bob.ik_pub == b"\x02" * 32
    assert model.trust_of(BOB) == "changed" and [h.name for h in model.flagged()] == ["Bob"]
    assert not model.apply(e2ee.MembersChanged(view_of(snap, {BOB: "changed"})))
    assert model.row(GAMES).privacy_code == "12345 67890 12345 67890"  # type: ignore[union-attr]
    # A roster member the E2E layer does not hold is not drawn (and gets no key).
    view = view_of(snap)
    assert model.apply(
        e2ee.MembersChanged(
            e2ee.MemberView(ME, {**view.channels, GAMES: view.channels[GAMES][:1]}, view.codes)
        )
    )
    assert [m.name for m in model.row(GAMES).members] == ["me"]  # type: ignore[union-attr]


def test_bindings_resolve_channel_names_and_report_unknown_ones() -> None:
    model = logged_in()
    prefs = ServerPrefs(
        bindings=(
            BindingPref("f13", ("games",)),
            BindingPref("ctrl+f14", ("Games", "Squad")),
            BindingPref("f15", ("Gone",)),
        ),
        hot_mic="Games",
        channel_volumes={"Games": 0.5},
        user_muted=frozenset({"Bob"}),
    )
    assert model.set_server_prefs(prefs)
    bindings, problems = model.bindings()
    assert [(sorted(b.chord), sorted(b.channels)) for b in bindings] == [
        (["f13"], [GAMES]),
        (["ctrl", "f14"], [GAMES, SQUAD]),
    ]
    assert problems == ["f15: no channel named Gone here"]
    games = model.row(GAMES)
    assert games is not None
    assert games.ptt_keys == ("f13", "ctrl+f14") and games.hot_mic and games.volume == 0.5
    assert next(m for m in games.members if m.name == "Bob").local_muted
    assert model.row(SQUAD).ptt_keys == ()  # type: ignore[union-attr]  # not a member: no keys shown
    assert model.hot_mic_channel() == GAMES


def test_with_binding_replaces_only_the_channels_own_key() -> None:
    prefs = ServerPrefs(
        bindings=(BindingPref("f13", ("Games",)), BindingPref("ctrl+f14", ("Games", "Squad")))
    )
    changed = with_binding(prefs, "games", "mouse4")
    assert changed.bindings == (
        BindingPref("ctrl+f14", ("Games", "Squad")),
        BindingPref("mouse4", ("games",)),
    )
    # Clear takes the channel out of every key that talks to it (so the button is never dead)
    cleared = with_binding(changed, "Games", None)
    assert cleared.bindings == (BindingPref("ctrl+f14", ("Squad",)),)
    assert with_binding(cleared, "squad", None).bindings == ()


def test_reset_forgets_the_session() -> None:
    model = logged_in()
    model.set_talking({(BOB, GAMES)})
    assert model.reset()
    assert model.rows() == () and model.me is None and model.talking == frozenset()
    assert model.view == e2ee.MemberView()
    assert not model.reset()


def test_lookups() -> None:
    model = logged_in()
    assert model.channel_id("SQUAD") == SQUAD and model.channel_id("nope") is None
    assert model.channel_name(AFK) == "AFK" and model.user_name(BOB) == "Bob"
    assert model.my_name == "me"
    assert model.joined() == ((LOBBY, "Lobby"), (GAMES, "Games"))
    assert model.member_names(GAMES) == ("Bob", "me")


def test_the_same_chord_twice_is_reported_not_raised() -> None:
    model = logged_in()
    model.set_server_prefs(
        ServerPrefs(bindings=(BindingPref("f13", ("Games",)), BindingPref("F13", ("Squad",))))
    )
    bindings, problems = model.bindings()
    assert [sorted(b.channels) for b in bindings] == [[GAMES]]  # the first one wins
    assert problems == ["F13: the same keys as f13 → Games; only the first is used"]


def test_binding_conflict_names_the_channel_that_has_the_keys() -> None:
    prefs = ServerPrefs(
        bindings=(BindingPref("f13", ("Games",)), BindingPref("ctrl+f14", ("Games", "Squad")))
    )
    assert binding_conflict(prefs, "Squad", "f13") == (
        "f13 is already the push-to-talk key of Games: remove it there first"
    )
    assert binding_conflict(prefs, "Games", "f13") is None  # replacing its own key
    assert binding_conflict(prefs, "AFK", "shift+ctrl+f14") is None
    assert binding_conflict(prefs, "AFK", "f14+ctrl") == (
        "f14+ctrl is already the push-to-talk key of Games, Squad: remove it there first"
    )
    assert binding_conflict(prefs, "AFK", "nosuchkey") is not None


def test_the_hotkey_rule_refuses_the_same_chord_and_warns_about_a_part() -> None:
    others = [BindingPref("ctrl+f13", ("Squad",)), BindingPref("mouse4", ("Games", "AFK"))]
    verdict = hotkey_rule(others, "F13+Ctrl")
    assert verdict.refusal is not None and "Squad" in verdict.refusal
    part = hotkey_rule(others, "f13")
    assert part.refusal is None
    assert part.warnings == (
        "f13 is part of ctrl+f13 (Squad): pressing ctrl+f13 key by key starts talking here first",
    )
    bigger = hotkey_rule(others, "shift+mouse4")
    assert (
        bigger.refusal is None
        and "mouse4 (Games, AFK) is part of shift+mouse4" in (bigger.warnings[0])
    )
    assert hotkey_rule(others, "f20").warnings == ()
    prefs = ServerPrefs(bindings=(BindingPref("f13", ("Squad",)),))
    assert binding_warnings(prefs, "Games", "ctrl+f13") == (
        "f13 (Squad) is part of ctrl+f13: pressing ctrl+f13 key by key starts talking to "
        "Squad first",
    )


def test_loaded_settings_keep_the_first_of_two_bindings_with_the_same_chord() -> None:
    server = ServerPrefs(
        bindings=(
            BindingPref("f13", ("Games",)),
            BindingPref("ctrl+f13", ("AFK",)),
            BindingPref("F13", ("Squad",)),
        )
    )
    prefs = Preferences(servers={"h:1": server})
    fixed, problems = checked_hotkeys(prefs)
    assert [b.channels for b in fixed.server("h:1").bindings] == [("Games",), ("AFK",)]
    assert problems == [
        "h:1: the key for Squad was not loaded: F13 is already the push-to-talk key of Games: "
        "remove it there first"
    ]
    assert checked_hotkeys(fixed) == (fixed, [])


def test_one_conflict_rule_for_the_dialog_the_channel_controls_and_the_router() -> None:
    """The settings dialog warns, the channel controls refuse and the router drops a duplicate
    by the same rule: only "same" keys are refused or dropped, a chord inside another is
    warned about and kept."""
    assert chord_overlap(frozenset({"f13"}), frozenset({"f13"})) == "same"
    assert chord_overlap(frozenset({"ctrl", "t"}), frozenset({"ctrl_l", "t"})) == "inside"
    assert chord_overlap(frozenset({"ctrl_l", "t"}), frozenset({"ctrl", "t"})) == "contains"
    assert chord_overlap(frozenset({"f13"}), frozenset({"f14"})) is None
    cases = [("f13", "F13"), ("ctrl+f14", "f14+ctrl"), ("ctrl+t", "ctrl_l+t"), ("f13", "f14")]
    cases += [("shift+f13", "ctrl+shift+f13"), ("ctrl_l+ctrl+t", "ctrl_l+t")]
    for old, new in cases:
        [kind] = [c.kind for c in find_conflicts([old, new])] or [None]
        prefs = ServerPrefs(bindings=(BindingPref(old, ("Games",)),))
        refused = binding_conflict(prefs, "Squad", new) is not None
        assert refused == (kind == "same"), (old, new, kind)
        model = logged_in()
        model.set_server_prefs(
            ServerPrefs(bindings=(BindingPref(old, ("Games",)), BindingPref(new, ("Squad",))))
        )
        bindings, problems = model.bindings()
        assert len(bindings) == (1 if kind == "same" else 2), (old, new)
        assert bool(problems) == (kind == "same")
