"""Issue 12: the relay can neither add, hide nor disguise who holds your keys.

Every test puts real clients (ClientSession + SecureSession + TOFU) behind
:class:`~tests.adversarial.relay.MaliciousRelay`, an honest ServerCore with a scripted man in the
middle, and plays one attack. Each must end in one of:

* a refusal with a visible alarm: the victim closes with ROSTER_INCONSISTENT (and tells the relay
  with a fatal Error), or the E2E layer raises KeyRejected / KeyHolderAlarm;
* or a member view that shows exactly who holds the victim's keys, with their true names, keys
  and trust (a ghost the relay adds is drawn, logged as a KeyHolderNotice and changes the
  channel privacy code).

And always (``relay.assert_invariant()``): no KeyDist of a victim ever named a sender id that was
not drawn as a member at that moment, ``key_sent_to`` never exceeds the drawn members, and every
drawn member carries the (name, identity key) its real owner has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
import pytest

from tests.adversarial.relay import LOBBY, Ghost, MaliciousRelay, Script, Victim
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import messages as m

pytestmark = pytest.mark.timeout(60)

A, B, C = 2, 3, 4
ROSTER_INCONSISTENT = m.ErrorCode.ROSTER_INCONSISTENT


@pytest.fixture
def relay() -> MaliciousRelay:
    """alice, bob and carol logged in through the relay; alice and bob are members of A."""
    r = MaliciousRelay()
    for name in ("alice", "bob", "carol"):
        r.login(name)
    r.join(r.victims["alice"], A)
    r.join(r.victims["bob"], A)
    r.advance(1.0)  # past join coalescing: every key of A has gone out
    r.assert_invariant()
    return r


def people(r: MaliciousRelay) -> tuple[Victim, Victim, Victim]:
    v = r.victims
    return v["alice"], v["bob"], v["carol"]


def assert_refused(victim: Victim) -> None:
    """The victim closed with ROSTER_INCONSISTENT and told the relay so with a fatal Error."""
    closed = victim.roster_inconsistent()
    assert closed is not None, (
        f"{victim.name} did not close with ROSTER_INCONSISTENT; close events: "
        f"{victim.control_of(ev.ConnectionClosed)}"
    )
    assert victim.closed
    assert [e.code for e in victim.fatal_errors_sent()] == [ROSTER_INCONSISTENT]


def assert_never_keyed(r: MaliciousRelay, victim: Victim, *ghosts: Ghost) -> None:
    """No KeyDist of ``victim`` named a ghost, and no ghost can open anything it sent."""
    for g in ghosts:
        assert victim.keydists_to(g.sender_id) == [], f"{victim.name} sent keys to {g.name!r}"
        assert g.loot(victim) == []
        for sent in victim.secure.key_sent_to.values():
            assert g.sender_id not in sent
    r.assert_invariant()


def drawn_views(victim: Victim) -> list[e2ee.MemberView]:
    return [e.view for e in victim.of(e2ee.MembersChanged)]


# -- 1. the invisible eavesdropper ---------------------------------------------------------------


@pytest.mark.parametrize("key_in_join", [False, True], ids=["key-in-update", "key-in-join"])
def test_invisible_eavesdropper_joined_then_hidden_in_one_read_is_refused(
    relay: MaliciousRelay, key_in_join: bool
) -> None:
    """Attack: in one TCP read, ``user_joined`` seats a ghost in A (alice's channel), then
    ``user_updated`` publishes its real session key with ``channels=()``, so the E2E layer would
    seal alice's key to it while the member list no longer draws it.
    Defence: a user_updated may not change memberships: alice closes (ROSTER_INCONSISTENT), and
    no KeyDist of hers ever names the ghost."""
    alice, bob, _ = people(relay)
    ghost = relay.ghost("ghost")
    joined = m.UserJoined(user=ghost.info((LOBBY, A), with_key=key_in_join))
    relay.inject(alice, joined, ghost.updated(()))
    assert_refused(alice)
    assert_never_keyed(relay, alice, ghost)
    # bob was not lied to: the ghost is nowhere in his view.
    assert ghost.sender_id not in bob.drawn(A)


def test_ghost_joined_then_hidden_in_a_later_read_is_refused(relay: MaliciousRelay) -> None:
    """Attack: the same lie spread over two reads: the ghost joins (drawn), and in a later read
    a ``user_updated`` with its session key drops its memberships.
    Defence: refused like the one-read version; the ghost was drawn while it was a member."""
    alice, _, _ = people(relay)
    ghost = relay.ghost("ghost")
    relay.inject(alice, ghost.joined((LOBBY, A)))
    assert ghost.sender_id in alice.drawn(A)
    assert [n.change for n in alice.notices(A) if n.holders[0].sender_id == ghost.sender_id] == [
        "joined"
    ]
    relay.inject(alice, ghost.updated(()))
    assert_refused(alice)
    assert_never_keyed(relay, alice, ghost)


# -- 2. a ghost disguised as a verified friend ----------------------------------------------------


@pytest.mark.parametrize("one_read", [False, True], ids=["two-reads", "one-read"])
@pytest.mark.parametrize("change", ["name-and-key", "name", "key"])
def test_ghost_renamed_into_a_verified_friend_is_refused(
    relay: MaliciousRelay, one_read: bool, change: str
) -> None:
    """Attack: alice verified bob's key. Bob goes offline; a ghost joins as ``mallory`` and a
    ``user_updated`` renames it ``bob`` and/or swaps in bob's real identity key, hoping alice's
    list shows a verified bob while the keys go to mallory's session key.
    Defence: name and identity key are fixed for a session: alice closes (ROSTER_INCONSISTENT);
    no view of hers ever drew the ghost as bob or with bob's key, and it never got a key."""
    alice, bob, _ = people(relay)
    assert relay.verify(alice, bob.sid, bob.ik_pub)
    assert alice.holder(A, bob.sid).trust == "verified"  # type: ignore[union-attr]
    relay.quit(bob)
    assert bob.sid not in alice.drawn(A)
    ghost = relay.ghost("mallory")
    renamed = ghost.info(
        (LOBBY, A),
        name="mallory" if change == "key" else "bob",
        ik_pub=bob.ik_pub if change != "name" else ghost.ik_pub,
    )
    if one_read:
        relay.inject(alice, ghost.joined((LOBBY, A)), m.UserUpdated(user=renamed))
    else:
        relay.inject(alice, ghost.joined((LOBBY, A)))
        relay.inject(alice, m.UserUpdated(user=renamed))
    assert_refused(alice)
    for view in drawn_views(alice):
        h = view.holder(ghost.sender_id)
        assert h is None or (h.name, h.ik_pub, h.trust) == ("mallory", ghost.ik_pub, "tofu")
    assert_never_keyed(relay, alice, ghost)


# -- 3. hiding a real member -----------------------------------------------------------------------


def _rewrite_next_update_of(target: Victim, channels: tuple[int, ...]) -> Script:
    """A script: the next user_updated about ``target`` loses ``target``'s memberships."""

    def script(victim: Victim, msg: m.Message) -> Sequence[m.Message] | None:
        if isinstance(msg, m.UserUpdated) and msg.user.sender_id == target.sid:
            victim.script = None
            lie = victim.wire_user(target.sid, channels=channels).channels
            return [m.UserUpdated(user=msgspec.structs.replace(msg.user, channels=lie))]
        return None

    return script


def test_hiding_a_member_with_a_user_updated_is_refused(relay: MaliciousRelay) -> None:
    """Attack: bob mutes himself; the relay rewrites the honest ``user_updated`` alice gets so
    bob has no channel A any more: alice's list stops drawing bob, who keeps alice's key (and the
    E2E layer would keep sending him new ones).
    Defence: memberships change only through membership/user_joined/user_left: alice closes
    (ROSTER_INCONSISTENT); bob was drawn in A in every view while he held her key."""
    alice, bob, _ = people(relay)
    assert bob.sid in alice.secure.key_sent_to[A]
    alice.script = _rewrite_next_update_of(bob, (LOBBY,))
    batches = len(alice.batches)
    bob.client.set_self_state(muted=True, deafened=False)
    relay.settle()
    assert_refused(alice)
    # Every view alice drew while her connection was open had bob in A (the views emitted
    # with the close itself are a separate matter: test_closing_raises_no_false_alarm).
    open_views = [
        e.view
        for control, out in alice.batches[batches:]
        if not any(isinstance(c, ev.ConnectionClosed) for c in control)
        for e in out
        if isinstance(e, e2ee.MembersChanged)
    ]
    assert all(bob.sid in {h.sender_id for h in v.members(A)} for v in open_views)
    relay.assert_invariant()


def test_membership_then_contradicting_user_updated_is_refused(relay: MaliciousRelay) -> None:
    """Attack: in one read, a ``membership`` puts bob into channel B, then a ``user_updated``
    claims bob's channels are the Lobby and A only (two stories about who is in B).
    Defence: the user_updated changes memberships: alice closes (ROSTER_INCONSISTENT)."""
    alice, bob, _ = people(relay)
    relay.join(alice, B)
    record = alice.wire_user(bob.sid, channels=(LOBBY, A))
    relay.inject(
        alice,
        m.MembershipChanged(sender_id=bob.sid, channel_id=B, joined=True),
        m.UserUpdated(user=record),
    )
    assert_refused(alice)
    relay.assert_invariant()


def test_user_updated_revoking_may_speak_is_refused(relay: MaliciousRelay) -> None:
    """Attack: a ``user_updated`` flips bob's may_speak in A (a membership change in disguise).
    Defence: refused like any other membership change by user_updated."""
    alice, bob, _ = people(relay)
    record = alice.wire_user(bob.sid, channels=(LOBBY, (A, False)))
    relay.inject(alice, m.UserUpdated(user=record))
    assert_refused(alice)
    relay.assert_invariant()


# -- 4. look-alike names ---------------------------------------------------------------------------


LOOK_ALIKES = {
    "zero-width-space": "bob\u200b",
    "cyrillic-o": "b\u043eb",
    "bidi-override": "bob\u202e",
    "decomposed-jose": "jose\u0301",
    "cyrillic-capitals": "\u0412\u041e\u0412",  # Cyrillic VE O VE: NFC, one script
    "greek-capitals": "\u0392\u039f\u0392",  # Greek BETA OMICRON BETA
    "upper-case": "BOB",
    "soft-hyphen": "b\u00adob",
    "word-joiner": "bo\u2060b",
}


@pytest.mark.parametrize("name", list(LOOK_ALIKES.values()), ids=list(LOOK_ALIKES))
def test_look_alike_name_beside_the_real_user_is_refused(name: str) -> None:
    """Attack: next to the real ``bob`` (and the real ``josé``), the relay seats a ghost whose
    name renders the same: invisible characters, a bidi override, a Cyrillic/Greek homoglyph,
    another case, or the decomposed spelling of josé. The ghost is in A with a real session key.
    Defence: check_name refuses invalid names, and names are unique by confusable skeleton
    (name_key): alice closes (ROSTER_INCONSISTENT) and the ghost never gets a key."""
    relay = MaliciousRelay()
    alice = relay.login("alice")
    bob = relay.login("bob")
    jose = relay.login("jos\u00e9")
    for v in (alice, bob, jose):
        relay.join(v, A)
    relay.advance(1.0)
    ghost = relay.ghost(name)
    relay.inject(alice, ghost.joined((LOBBY, A)), ghost.updated((LOBBY, A)))
    assert_refused(alice)
    assert_never_keyed(relay, alice, ghost)


@pytest.mark.parametrize("name", ["bob\u200b", "b\u043eb", "bob\u202e", "jose\u0301"])
def test_invalid_name_is_refused_even_without_a_real_namesake(name: str) -> None:
    """Attack: an invalid name (invisible, mixed-script, bidi, not NFC) with nobody to imitate.
    Defence: check_name alone refuses it (ROSTER_INCONSISTENT)."""
    relay = MaliciousRelay()
    alice = relay.login("alice")
    relay.join(alice, A)
    ghost = relay.ghost(name)
    relay.inject(alice, ghost.joined((LOBBY, A)))
    assert_refused(alice)
    assert_never_keyed(relay, alice, ghost)


def test_look_alike_in_the_login_roster_is_refused() -> None:
    """Attack: the look-alike is already in the roster alice gets at login (login_ok).
    Defence: the login roster is checked like any user_joined: alice never becomes READY."""
    relay = MaliciousRelay()
    bob = relay.login("bob")
    relay.join(bob, A)
    ghost = relay.ghost("b\u043eb")

    def script(victim: Victim, msg: m.Message) -> Sequence[m.Message] | None:
        if isinstance(msg, m.LoginOk):
            victim.script = None
            users = (*msg.users, ghost.info((LOBBY, A)))
            return [msgspec.structs.replace(msg, users=users)]
        return None

    alice = relay.login("alice", settle=False)
    alice.script = script
    relay.settle()
    assert_refused(alice)
    assert not alice.control_of(ev.LoggedIn)
    assert_never_keyed(relay, alice, ghost)


# -- 5. replaying an old roster --------------------------------------------------------------------


def test_replayed_user_joined_of_a_departed_user_is_refused(relay: MaliciousRelay) -> None:
    """Attack: carol (who held A's keys) quits; the relay replays her old ``user_joined`` and
    ``user_updated`` (same sender id, her real, still-unexpired session certificate) to bring her
    back into alice's A, hoping alice seals the next generation to a dead session it still
    has the certificate of.
    Defence: sender ids are never reused within a connection: alice closes (ROSTER_INCONSISTENT)
    and sends carol nothing after she left."""
    alice, _, carol = people(relay)
    relay.join(carol, A)
    relay.advance(1.0)
    carol_sid = carol.sid
    old_join = next(
        x
        for read in alice.reads
        for x in read
        if isinstance(x, m.UserJoined) and x.user.sender_id == carol_sid
    )
    old_record = alice.wire_user(carol_sid)
    assert A in {mb.channel_id for mb in old_record.channels} and old_record.skc is not None
    relay.quit(carol)
    assert carol_sid not in alice.drawn(A)
    sent_before = len(alice.keydists)
    relay.inject(alice, old_join, m.UserUpdated(user=old_record))
    assert_refused(alice)
    assert not [k for k in alice.keydists[sent_before:] if carol_sid in k.recipients]
    relay.assert_invariant()


@pytest.mark.parametrize("what", ["login_ok", "roster_page"])
def test_replayed_login_roster_is_refused(relay: MaliciousRelay, what: str) -> None:
    """Attack: once alice is READY, the relay re-sends her login roster (the old login_ok, or a
    roster_page built from it) to restore members that have left since (carol quits first).
    Defence: a login roster after login is an unexpected message: alice closes with a protocol
    error, and carol is never drawn or keyed again."""
    alice, _, carol = people(relay)
    relay.join(carol, A)
    relay.advance(1.0)
    carol_sid = carol.sid
    login_ok = next(x for read in alice.reads for x in read if isinstance(x, m.LoginOk))
    relay.quit(carol)
    sent_before = len(alice.keydists)
    replay: m.Message = (
        login_ok if what == "login_ok" else m.RosterPage(users=login_ok.users, more=False)
    )
    relay.inject(alice, replay)
    closed = alice.control_of(ev.ConnectionClosed)
    assert closed and closed[0].reason is ev.CloseReason.PROTOCOL_ERROR
    assert closed[0].code in (m.ErrorCode.UNEXPECTED_MESSAGE, ROSTER_INCONSISTENT)
    assert alice.fatal_errors_sent()
    assert not [k for k in alice.keydists[sent_before:] if carol_sid in k.recipients]
    relay.assert_invariant()


# -- 6. different rosters for different users ------------------------------------------------------


def test_ghost_shown_to_one_user_only_changes_her_privacy_code(relay: MaliciousRelay) -> None:
    """Attack: the relay shows a ghost in A to alice only (a consistent lie: user_joined into A,
    then its session key). Alice's E2E layer may seal keys to it: it is a member as far as she
    can tell. Defence: it cannot hide: alice's list draws it (new, unverified key), her A
    conversation gets a lasting "joined" line, and the channel privacy codes of alice and bob,
    equal under an honest relay, now differ."""
    alice, bob, carol = people(relay)
    relay.join(carol, A)
    relay.advance(1.0)
    honest = {v.name: v.secure.privacy_code(A) for v in (alice, bob, carol)}
    assert honest["alice"] is not None and len(set(honest.values())) == 1
    assert alice.view().codes[A] == honest["alice"]

    ghost = relay.ghost("mallory")
    relay.inject(alice, ghost.joined((LOBBY, A)), ghost.updated((LOBBY, A)))
    relay.advance(1.0)
    assert not alice.closed
    h = alice.holder(A, ghost.sender_id)
    assert h is not None and (h.name, h.ik_pub) == ("mallory", ghost.ik_pub)
    assert h.trust == "tofu" and h.new_key and h.has_session_key
    joined = [
        n for n in alice.notices(A, "joined") if ghost.sender_id in {x.sender_id for x in n.holders}
    ]
    assert joined and joined[0].holders[0].trust == "tofu"
    assert alice.secure.privacy_code(A) != honest["alice"]
    assert bob.secure.privacy_code(A) == carol.secure.privacy_code(A) == honest["bob"]
    assert alice.secure.privacy_code(A) != bob.secure.privacy_code(A)
    # Whatever the ghost got, alice sent to a member she draws.
    assert ghost.sender_id in alice.drawn(A)
    relay.assert_invariant()


def test_honest_relay_gives_equal_privacy_codes_in_every_channel(relay: MaliciousRelay) -> None:
    """Control: with an honest relay every member of a channel computes the same code, and a
    channel's code changes when its membership does."""
    alice, bob, carol = people(relay)
    before = alice.secure.privacy_code(A)
    relay.join(carol, A, B)
    relay.join(alice, B)
    relay.advance(1.0)
    assert (
        alice.secure.privacy_code(A) == bob.secure.privacy_code(A) == carol.secure.privacy_code(A)
    )
    assert alice.secure.privacy_code(B) == carol.secure.privacy_code(B)
    assert alice.secure.privacy_code(A) != before
    assert bob.secure.privacy_code(B) is None  # not a member
    relay.assert_invariant()


# -- 7. dropping and reordering KeyDists -----------------------------------------------------------


def _kd_from(sender: Victim, channel_id: int) -> Callable[[m.Message], bool]:
    """Picks the KeyDist deliveries from ``sender`` for ``channel_id``."""
    return lambda x: (
        isinstance(x, m.KeyDistDelivery)
        and x.sender_id == sender.sid
        and x.channel_id == channel_id
    )


def test_older_keydist_delivered_after_a_newer_one_is_rejected_as_rollback(
    relay: MaliciousRelay,
) -> None:
    """Attack: the relay holds back bob's KeyDist of generation g1 for alice, lets g2 through,
    then delivers g1 late, hoping alice goes back to a key a removed member (carol) had.
    Defence: (gen, step) must grow per sender and channel: g1 is a KeyRejected (rollback),
    alice keeps g2, and voice opens only under bob's current key."""
    alice, bob, carol = people(relay)
    relay.join(carol, A)
    relay.advance(1.0)
    is_bob_a = _kd_from(bob, A)
    alice.script = lambda v, x: relay.hold(v, x) if is_bob_a(x) else None
    relay.leave(carol, A)  # bob: new generation g1 for alice
    assert len(alice.held) == 1
    g1 = bob.secure.scheduler.state(A).gen  # type: ignore[union-attr]
    alice.script = None
    relay.join(carol, A)
    relay.advance(1.0)
    relay.leave(carol, A)  # bob: g2, delivered at once
    g2 = bob.secure.scheduler.state(A).gen  # type: ignore[union-attr]
    assert g2 > g1
    accepted = [
        e for e in alice.of(e2ee.KeyAccepted) if e.sender_id == bob.sid and e.channel_id == A
    ]
    assert accepted[-1].gen == g2
    relay.release(alice)
    rejected = [
        e for e in alice.of(e2ee.KeyRejected) if e.sender_id == bob.sid and e.channel_id == A
    ]
    assert rejected and "not newer" in rejected[-1].reason
    assert [
        e.gen for e in alice.of(e2ee.KeyAccepted) if e.sender_id == bob.sid and e.channel_id == A
    ][-1] == g2
    (datagram,) = relay.seal(bob, [A], b"\x00\x00\x00\x01after rollback")
    frame = relay.hear(alice, datagram)
    assert frame is not None and frame.sender_id == bob.sid and frame.payload.endswith(b"rollback")
    relay.assert_invariant()


def test_dropped_keydists_mean_silence_never_a_foreign_key(relay: MaliciousRelay) -> None:
    """Attack: the relay drops every KeyDist bob sends alice in B, and offers its own ghost's
    genuine KeyDist and voice for B instead (the ghost is not a member anywhere alice can see).
    Defence: alice hears nothing in B until a KeyDist from bob, a drawn member, arrives; the
    ghost's key is rejected (unknown sender) and its voice never opens."""
    alice, bob, _ = people(relay)
    is_bob_b = _kd_from(bob, B)
    alice.script = lambda v, x: [] if is_bob_b(x) else None
    relay.join(alice, B)
    relay.join(bob, B)
    relay.advance(1.0)
    assert not [
        e for e in alice.of(e2ee.KeyAccepted) if e.sender_id == bob.sid and e.channel_id == B
    ]
    (datagram,) = relay.seal(bob, [B], b"\x00\x00\x00\x01dropped")
    assert relay.hear(alice, datagram) is None

    ghost = relay.ghost("ghost")
    sk_pub = alice.client.roster.users[alice.sid].sk_pub
    assert sk_pub is not None
    delivery, ghost_voice = ghost.speak(
        B, alice, sk_pub, b"\x00\x00\x00\x01ghost talk", relay.now, relay.wall_ms()
    )
    relay.inject(alice, delivery)
    assert [e for e in alice.of(e2ee.KeyRejected) if e.sender_id == ghost.sender_id]
    assert not [e for e in alice.of(e2ee.KeyAccepted) if e.sender_id == ghost.sender_id]
    assert relay.hear(alice, ghost_voice) is None

    alice.script = None
    relay.join(relay.victims["carol"], B)
    relay.advance(1.0)
    relay.leave(relay.victims["carol"], B)  # bob: a new generation, delivered this time
    (datagram,) = relay.seal(bob, [B], b"\x00\x00\x00\x02now")
    frame = relay.hear(alice, datagram)
    assert frame is not None and frame.sender_id == bob.sid
    members_ever = {bob.sid, relay.victims["carol"].sid}
    assert {e.sender_id for e in alice.of(e2ee.KeyAccepted) if e.channel_id == B} <= members_ever
    assert {f.sender_id for f in alice.heard if f.channel_id == B} == {bob.sid}
    relay.assert_invariant()


# -- 8. a user re-announced with another identity key ----------------------------------------------


@pytest.mark.parametrize("verified", [False, True], ids=["tofu", "verified"])
def test_reannounced_user_with_another_identity_key(relay: MaliciousRelay, verified: bool) -> None:
    """Attack: bob leaves; a new session named ``bob`` with a different identity key (the relay's)
    joins A with a valid session key of its own: a server swapping bob's key.
    Defence: TOFU. Alice's list draws the new bob as "changed" (keys still flow, with the
    warning) or, if alice had verified bob, "blocked": then no key is sealed to it. Either way
    a lasting "joined" line carries that trust."""
    alice, bob, _ = people(relay)
    if verified:
        assert relay.verify(alice, bob.sid, bob.ik_pub)
    relay.quit(bob)
    impostor = relay.ghost("bob")
    relay.inject(alice, impostor.joined((LOBBY, A)), impostor.updated((LOBBY, A)))
    relay.advance(1.0)
    assert not alice.closed
    expected = "blocked" if verified else "changed"
    h = alice.holder(A, impostor.sender_id)
    assert h is not None and (h.name, h.ik_pub, h.trust) == ("bob", impostor.ik_pub, expected)
    joined = [
        n
        for n in alice.notices(A, "joined")
        if impostor.sender_id in {x.sender_id for x in n.holders}
    ]
    assert joined and all(x.trust == expected for x in joined[-1].holders)
    trust = [e for e in alice.of(e2ee.PeerTrust) if e.sender_id == impostor.sender_id]
    assert trust and trust[0].status.name.startswith("CHANGED")
    if verified:
        assert impostor.sender_id not in alice.secure.key_sent_to.get(A, set())
        assert_never_keyed(relay, alice, impostor)
        # ...and no key from it is accepted either.
        sk_pub = alice.client.roster.users[alice.sid].sk_pub
        assert sk_pub is not None
        delivery, voice = impostor.speak(
            A, alice, sk_pub, b"\x00\x00\x00\x01hi", relay.now, relay.wall_ms()
        )
        relay.inject(alice, delivery)
        assert [e for e in alice.of(e2ee.KeyRejected) if e.sender_id == impostor.sender_id]
        assert relay.hear(alice, voice) is None
    else:
        assert impostor.sender_id in alice.drawn(A)
    relay.assert_invariant()


# -- 9. a ghost that comes and goes within one read ------------------------------------------------


def test_ghost_joining_and_leaving_within_one_read_leaves_a_trace(relay: MaliciousRelay) -> None:
    """Attack: in one read a ghost joins A, publishes its session key and leaves again, hoping to
    collect a catch-up key without ever being drawn.
    Defence: nothing is sealed to it (keys go out after the read, to who is drawn then), and the
    conversation keeps a "joined" and a "left" line for it."""
    alice, _, _ = people(relay)
    ghost = relay.ghost("ghost")
    relay.inject(alice, ghost.joined((LOBBY, A)), ghost.updated((LOBBY, A)), ghost.left())
    assert not alice.closed
    changes = [
        n.change for n in alice.notices(A) if ghost.sender_id in {h.sender_id for h in n.holders}
    ]
    assert changes == ["joined", "left"]
    assert ghost.sender_id not in alice.drawn(A)
    assert_never_keyed(relay, alice, ghost)


def test_honest_quick_join_and_leave_raises_no_alarm(relay: MaliciousRelay) -> None:
    """Control for the above: a real user who joins A and quits before alice reads (the relay
    only coalesces the frames, as TCP may) leaves the same trace and raises no KeyHolderAlarm:
    an alarm must mean a bug or an attack, never a race an honest server produces."""
    alice, _, _ = people(relay)

    def coalesce(victim: Victim, msg: m.Message) -> Sequence[m.Message] | None:
        relay.hold(victim, msg)
        if isinstance(msg, m.UserLeft):
            victim.script = None
            held, victim.held = victim.held, []
            return held
        return []

    dave = relay.login("dave")
    alice.script = coalesce
    relay.join(dave, A)
    relay.quit(dave)
    assert alice.script is None
    changes = [n.change for n in alice.notices(A) if dave.sid in {h.sender_id for h in n.holders}]
    assert changes == ["joined", "left"]
    assert alice.of(e2ee.KeyHolderAlarm) == []
    relay.assert_invariant()


# -- 10. attacks of our own ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alice", "Alice", "\u0430lice"], ids=["same", "case", "cyrillic-a"]
)
def test_user_joined_with_the_victims_own_name_is_refused(relay: MaliciousRelay, name: str) -> None:
    """Attack: a ghost named like alice herself joins her channel (so "alice" appears twice and
    a message or a verification may go to the wrong one).
    Defence: names are unique by skeleton, the victim's own included: ROSTER_INCONSISTENT."""
    alice, _, _ = people(relay)
    ghost = relay.ghost(name)
    relay.inject(alice, ghost.joined((LOBBY, A)), ghost.updated((LOBBY, A)))
    assert_refused(alice)
    assert_never_keyed(relay, alice, ghost)


def test_user_left_for_the_victim_itself_is_refused(relay: MaliciousRelay) -> None:
    """Attack: a ``user_left`` naming alice's own sender id (her client would think she left
    every channel while the server keeps her in them).
    Defence: ROSTER_INCONSISTENT."""
    alice, _, _ = people(relay)
    relay.inject(alice, m.UserLeft(sender_id=alice.sid))
    assert_refused(alice)
    relay.assert_invariant()


def test_user_joined_reusing_a_live_sender_id_is_refused(relay: MaliciousRelay) -> None:
    """Attack: a ghost announced with bob's sender id (current, not departed) and its own name
    and key, to overwrite bob's record.
    Defence: ROSTER_INCONSISTENT (a sender id already seen)."""
    alice, bob, _ = people(relay)
    ghost = relay.ghost("mallory", sender_id=bob.sid)
    sent_before = len(alice.keydists)
    relay.inject(alice, ghost.joined((LOBBY, A)), ghost.updated((LOBBY, A)))
    assert_refused(alice)
    assert alice.keydists[sent_before:] == []
    assert ghost.loot(alice) == []  # bob's earlier keys were sealed to bob's SK, not the ghost's
    relay.assert_invariant()


def test_keydist_relabelled_to_another_sender_or_channel_is_rejected(relay: MaliciousRelay) -> None:
    """Attack: the relay re-labels bob's KeyDist for A as coming from carol (also in A), and
    another as being for channel B, so alice would attribute bob's key to the wrong member or
    room.
    Defence: the signed header must match the routing: KeyRejected, nothing accepted for carol
    or for B from these blobs."""
    alice, bob, carol = people(relay)
    relay.join(carol, A, B)
    relay.join(alice, B)
    relay.join(bob, B)
    relay.advance(1.0)
    is_bob_a = _kd_from(bob, A)
    alice.script = lambda v, x: relay.hold(v, x) if is_bob_a(x) else None
    relay.leave(carol, A)  # bob rotates A for alice: held
    relay.join(carol, A)
    relay.advance(1.0)
    relay.leave(carol, A)  # and again: held
    alice.script = None
    first, second = alice.held
    alice.held = []
    assert isinstance(first, m.KeyDistDelivery) and isinstance(second, m.KeyDistDelivery)
    accepted_before = len(alice.of(e2ee.KeyAccepted))
    relay.inject(
        alice,
        m.KeyDistDelivery(sender_id=carol.sid, channel_id=A, blob=first.blob),
        m.KeyDistDelivery(sender_id=bob.sid, channel_id=B, blob=second.blob),
    )
    assert alice.of(e2ee.KeyAccepted)[accepted_before:] == []
    rejected = alice.of(e2ee.KeyRejected)[-2:]
    assert [(e.sender_id, e.channel_id) for e in rejected] == [(carol.sid, A), (bob.sid, B)]
    relay.assert_invariant()


def test_relay_moving_the_victim_into_a_ghosts_channel_is_visible(relay: MaliciousRelay) -> None:
    """Attack: the relay makes a ghost (with a real session key) a member of channel C, then
    sends alice a ``membership`` that moves her into C, where she never asked to go: her E2E
    layer opens a sender key for C and seals it to the ghost.
    Defence: not refusable (an admin may move users), but not hidden: a "present" line in C
    names the ghost as a key holder, the list draws it, and keys go only to drawn members."""
    alice, _, _ = people(relay)
    ghost = relay.ghost("lurker")
    relay.inject(
        alice,
        ghost.joined((LOBBY, C)),
        ghost.updated((LOBBY, C)),
        m.MembershipChanged(sender_id=alice.sid, channel_id=C, joined=True),
    )
    relay.advance(1.0)
    assert not alice.closed
    present = alice.notices(C, "present")
    assert present and ghost.sender_id in {h.sender_id for h in present[-1].holders}
    assert alice.drawn(C) == {alice.sid, ghost.sender_id}
    assert C in alice.view().codes
    relay.assert_invariant()


def test_ghost_wearing_a_stolen_certificate_gets_no_key(relay: MaliciousRelay) -> None:
    """Attack: a ghost ``mallory`` presented with bob's identity key and bob's real session key
    and certificate (copied from the roster), hoping alice seals keys to an SK the relay can
    swap later, or shows mallory with bob's safety number.
    Defence: the certificate binds account and sender id: it is rejected (KeyRejected), the
    ghost is drawn without a session key, and no KeyDist names it."""
    alice, bob, _ = people(relay)
    bob_record = alice.wire_user(bob.sid)
    ghost = relay.ghost("mallory", claims=("mallory", bob.ik_pub))
    stolen = m.UserInfo(
        sender_id=ghost.sender_id,
        name="mallory",
        ik_pub=bob.ik_pub,
        channels=(m.Membership(channel_id=LOBBY), m.Membership(channel_id=A)),
    )
    with_key = m.UserInfo(
        sender_id=ghost.sender_id,
        name="mallory",
        ik_pub=bob.ik_pub,
        sk_pub=bob_record.sk_pub,
        skc=bob_record.skc,
        channels=stolen.channels,
    )
    relay.inject(alice, m.UserJoined(user=stolen), m.UserUpdated(user=with_key))
    relay.advance(1.0)
    assert [e for e in alice.of(e2ee.KeyRejected) if e.sender_id == ghost.sender_id]
    h = alice.holder(A, ghost.sender_id)  # drawn, visibly, as what the relay claims, keyless
    assert h is not None and (h.name, h.ik_pub, h.has_session_key) == ("mallory", bob.ik_pub, False)
    assert_never_keyed(relay, alice, ghost)


@pytest.mark.parametrize("how", ["quit", "refused-attack", "server-kick"])
def test_closing_raises_no_false_alarm(relay: MaliciousRelay, how: str) -> None:
    """Not an attack: the end of a connection (alice quits, alice refuses a lie, the server
    kicks her) must not raise KeyHolderAlarm ("the roster and the key holders disagree") nor
    draw a member view without the members she had: an alarm that fires on every disconnect
    teaches users to ignore the one that matters."""
    alice, _, _ = people(relay)
    batches = len(alice.batches)
    before = {ch: {h.sender_id for h in hs} for ch, hs in alice.view().channels.items()}
    if how == "quit":
        relay.quit(alice)
    elif how == "refused-attack":
        relay.inject(alice, m.UserLeft(sender_id=alice.sid))
        assert_refused(alice)
    else:
        relay.server.kick(alice.sid, "test")
        relay.settle()
    assert alice.closed
    after = [e for _, out in alice.batches[batches:] for e in out]
    assert [e for e in after if isinstance(e, e2ee.KeyHolderAlarm)] == []
    for e in after:
        if isinstance(e, e2ee.MembersChanged):
            for channel_id, holders in e.view.channels.items():
                drawn = {h.sender_id for h in holders}
                assert not drawn or drawn == before.get(channel_id, set()), (
                    f"after the close, channel {channel_id} is drawn with {sorted(drawn)}, "
                    f"before it was {sorted(before.get(channel_id, set()))}"
                )
