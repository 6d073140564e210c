"""Sender-key rotation policy (PROTOCOL §2), with a fake clock and a deterministic key source."""

from __future__ import annotations

import itertools

import pytest

from voipclient.crypto.hop import HopMac
from voipclient.crypto.media import (
    HEADER_STRUCT,
    PTYPE_VOICE,
    STEP_INTERVAL_PACKETS,
    DropReason,
    VoiceReceiver,
)
from voipclient.crypto.rotation import (
    GENERATION_LIFETIME_S,
    JOIN_COALESCE_S,
    KeyAction,
    NewGeneration,
    RotationReason,
    SenderKeyScheduler,
    StepAdvanced,
    StepForJoiners,
)
from voipclient.errors import LocalProtocolError

ME = 42
CH = 7
K_S2C = bytes(range(32))
S2C = HopMac(K_S2C)


def counter_keys() -> SenderKeyScheduler:
    """A scheduler whose n-th key is 64 bytes of n: distinct and recognisable."""
    counter = itertools.count(1)
    return SenderKeyScheduler(ME, random_bytes=lambda n: bytes([next(counter)]) * n)


def opened(members: tuple[int, ...] = (1, 2, 3)) -> SenderKeyScheduler:
    sched = counter_keys()
    sched.open_channel(CH, (ME, *members), 0.0)
    sched.take_actions()
    return sched


def header(datagram: bytes) -> tuple[int, ...]:
    """(ptype, step, channel, sender, gen, ctr) of a sealed datagram."""
    return tuple(HEADER_STRUCT.unpack_from(datagram)[1:])


def gen_step_ctr(datagram: bytes) -> tuple[int, int, int]:
    _ptype, step, _ch, _snd, gen, ctr = header(datagram)
    return gen, step, ctr


def test_open_channel_starts_a_generation_for_the_members() -> None:
    sched = counter_keys()
    sched.open_channel(CH, [3, ME, 1, 2], 5.0)
    (action,) = sched.take_actions()
    assert action == NewGeneration(
        channel_id=CH,
        sender_id=ME,
        gen=0,
        step=0,
        base_key=b"\x01" * 64,
        recipients=(1, 2, 3),  # sorted, never me
        reason=RotationReason.CHANNEL_OPENED,
        created_at=5.0,
    )
    assert action.kind == 1
    assert sched.take_actions() == []
    with pytest.raises(LocalProtocolError):
        sched.open_channel(CH, [], 6.0)


def test_actions_never_show_keys_in_repr() -> None:
    sched = counter_keys()
    sched.open_channel(CH, [1], 0.0)
    (action,) = sched.take_actions()
    assert (b"\x01" * 64).hex() not in repr(action) and "base_key" not in repr(action)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("member_left", RotationReason.MEMBER_LEFT),
        ("member_kicked", RotationReason.MEMBER_KICKED),
        ("member_timed_out", RotationReason.MEMBER_TIMED_OUT),
    ],
)
def test_leave_makes_a_new_generation_for_the_remaining_members(
    event: str, reason: RotationReason
) -> None:
    sched = opened()
    first = sched.seal(CH, PTYPE_VOICE, b"a", 1.0)
    getattr(sched, event)(CH, 2, 2.0)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration)
    assert (action.gen, action.step, action.recipients, action.reason) == (1, 0, (1, 3), reason)
    assert action.base_key == b"\x02" * 64
    # No ack: the very next datagram already uses the new generation.
    assert gen_step_ctr(first) == (0, 0, 0)
    assert gen_step_ctr(sched.seal(CH, PTYPE_VOICE, b"b", 2.0)) == (1, 0, 0)


def test_leave_of_a_non_member_changes_nothing() -> None:
    sched = opened()
    sched.member_left(CH, 99, 1.0)
    sched.member_left(CH + 1, 1, 1.0)  # a channel I don't transmit to
    assert sched.take_actions() == []
    assert sched.state(CH).gen == 0


def test_join_while_silent_sends_the_current_step_at_once() -> None:
    sched = opened()
    sched.member_joined(CH, 4, 1.0)
    (action,) = sched.take_actions()
    assert isinstance(action, StepForJoiners)
    assert (action.gen, action.step, action.joiners, action.kind) == (0, 0, (4,), 2)
    assert action.base_key == b"\x01" * 64
    assert sched.next_deadline() is None


def test_join_while_talking_steps_and_catches_up_the_joiner() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"before", 1.0)
    sched.member_joined(CH, 4, 1.0)
    assert sched.take_actions() == []  # waits for joins to coalesce
    assert sched.next_deadline() == 1.0 + JOIN_COALESCE_S
    sched.tick(1.4)
    assert sched.take_actions() == []
    sched.tick(1.5)
    (action,) = sched.take_actions()
    assert isinstance(action, StepForJoiners)
    assert (action.gen, action.step, action.recipients) == (0, 1, (4,))
    assert gen_step_ctr(sched.seal(CH, PTYPE_VOICE, b"after", 1.6)) == (0, 1, 1)
    assert sched.state(CH).members == frozenset({1, 2, 3, 4})


def test_two_joins_within_500_ms_coalesce_into_one_step() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"x", 1.0)
    sched.member_joined(CH, 4, 1.0)
    sched.seal(CH, PTYPE_VOICE, b"x", 1.2)
    sched.member_joined(CH, 5, 1.3)
    sched.tick(1.5)
    (action,) = sched.take_actions()
    assert isinstance(action, StepForJoiners)
    assert (action.step, action.joiners) == (1, (4, 5))
    # A join after the window gets its own step.
    sched.seal(CH, PTYPE_VOICE, b"x", 1.6)
    sched.member_joined(CH, 6, 1.7)
    sched.tick(2.2)
    (action,) = sched.take_actions()
    assert isinstance(action, StepForJoiners)
    assert (action.step, action.joiners) == (2, (6,))


def test_a_due_join_step_happens_before_the_next_seal() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"x", 1.0)
    sched.member_joined(CH, 4, 1.0)
    datagram = sched.seal(CH, PTYPE_VOICE, b"x", 1.5)  # no tick came: seal applies it
    assert gen_step_ctr(datagram) == (0, 1, 1)
    assert [type(a) for a in sched.take_actions()] == [StepForJoiners]


def test_the_joiner_cannot_open_what_was_sent_before_it_joined() -> None:
    sched = opened()
    before = sched.seal(CH, PTYPE_VOICE, b"secret", 1.0)
    sched.member_joined(CH, 4, 1.1)
    sched.tick(1.6)
    (action,) = sched.take_actions()
    assert isinstance(action, StepForJoiners)
    after = sched.seal(CH, PTYPE_VOICE, b"hello", 1.7)
    joiner = VoiceReceiver(K_S2C)
    joiner.add_key(
        action.channel_id, action.sender_id, action.gen, action.step, action.base_key, 1.7
    )
    frame = joiner.receive(S2C.append(after), 1.8)
    assert frame is not None and frame.payload == b"hello"
    assert joiner.receive(S2C.append(before), 1.8) is None
    assert joiner.drop_counts()[DropReason.STEP_OUT_OF_RANGE] == 1


def test_existing_members_follow_the_join_step_without_a_message() -> None:
    sched = counter_keys()
    sched.open_channel(CH, [1], 0.0)
    (first,) = sched.take_actions()
    assert isinstance(first, NewGeneration)
    member = VoiceReceiver(K_S2C)
    member.add_key(CH, ME, first.gen, first.step, first.base_key, 0.0)
    assert member.receive(S2C.append(sched.seal(CH, PTYPE_VOICE, b"a", 1.0)), 1.0) is not None
    sched.member_joined(CH, 4, 1.0)
    sched.tick(2.0)
    assert [a.recipients for a in sched.take_actions() if isinstance(a, StepForJoiners)] == [(4,)]
    frame = member.receive(S2C.append(sched.seal(CH, PTYPE_VOICE, b"b", 2.0)), 2.0)
    assert frame is not None and frame.step == 1  # lazy ratchet


def test_a_pending_joiner_that_leaves_triggers_a_generation_not_a_step() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"x", 1.0)
    sched.member_joined(CH, 4, 1.0)
    sched.member_left(CH, 4, 1.2)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration) and action.recipients == (1, 2, 3)
    sched.tick(2.0)
    assert sched.take_actions() == []
    assert sched.state(CH).pending_joiners == frozenset()


def test_a_leave_while_joins_are_pending_covers_the_joiners_with_kind_1() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"x", 1.0)
    sched.member_joined(CH, 4, 1.0)
    sched.member_left(CH, 1, 1.1)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration) and action.recipients == (2, 3, 4)
    assert sched.next_deadline() is None


def test_duplicate_and_self_joins_are_ignored() -> None:
    sched = opened()
    sched.member_joined(CH, 2, 1.0)
    sched.member_joined(CH, ME, 1.0)
    sched.member_joined(CH + 1, 9, 1.0)
    assert sched.take_actions() == []


def test_reconnect_always_makes_a_new_generation() -> None:
    sched = opened()
    sched.open_channel(CH + 1, [5], 0.0)
    sched.take_actions()
    sched.seal(CH, PTYPE_VOICE, b"x", 1.0)
    sched.reconnected(2.0)
    raw = sched.take_actions()
    actions = [a for a in raw if isinstance(a, NewGeneration)]
    assert len(actions) == len(raw)
    assert [(a.channel_id, a.gen, a.recipients, a.reason) for a in actions] == [
        (CH, 1, (1, 2, 3), RotationReason.RECONNECTED),
        (CH + 1, 1, (5,), RotationReason.RECONNECTED),
    ]
    assert gen_step_ctr(sched.seal(CH, PTYPE_VOICE, b"x", 2.0)) == (1, 0, 0)


def test_reconnect_with_a_new_sender_id_and_fresh_membership() -> None:
    sched = opened()
    sched.open_channel(CH + 1, [5], 0.0)
    sched.take_actions()
    sched.reconnected(2.0, sender_id=77, members={CH: [1, 77], CH + 2: [8]})
    raw = sched.take_actions()
    actions = [a for a in raw if isinstance(a, NewGeneration)]
    assert len(actions) == len(raw)
    assert [(a.channel_id, a.sender_id, a.gen, a.recipients) for a in actions] == [
        (CH, 77, 1, (1,)),
        (CH + 2, 77, 0, (8,)),
    ]
    assert sched.channels() == (CH, CH + 2)
    assert header(sched.seal(CH, PTYPE_VOICE, b"x", 2.0))[3] == 77


def test_reopening_a_channel_continues_the_generation_numbers() -> None:
    sched = opened()
    sched.close_channel(CH)
    with pytest.raises(LocalProtocolError):
        sched.seal(CH, PTYPE_VOICE, b"x", 1.0)
    sched.open_channel(CH, [1], 1.0)
    (action,) = sched.take_actions()
    assert action.gen == 1


def test_a_step_every_2_to_the_16_packets() -> None:
    sched = opened()
    for _ in range(STEP_INTERVAL_PACKETS):
        sched.seal(CH, PTYPE_VOICE, b"", 1.0)
    assert sched.take_actions() == []
    assert gen_step_ctr(sched.seal(CH, PTYPE_VOICE, b"", 1.0)) == (0, 1, STEP_INTERVAL_PACKETS)
    (action,) = sched.take_actions()
    assert action == StepAdvanced(CH, ME, 0, 1, RotationReason.STEP_INTERVAL, 1.0)


def test_a_generation_every_60_minutes_of_sending() -> None:
    sched = opened()
    sched.tick(10_000.0)
    assert sched.take_actions() == []  # an unused generation does not age
    sched.seal(CH, PTYPE_VOICE, b"", 100.0)
    assert sched.next_deadline() == 100.0 + GENERATION_LIFETIME_S
    sched.seal(CH, PTYPE_VOICE, b"", 100.0 + GENERATION_LIFETIME_S - 0.01)
    assert sched.take_actions() == []
    datagram = sched.seal(CH, PTYPE_VOICE, b"", 100.0 + GENERATION_LIFETIME_S)
    assert gen_step_ctr(datagram) == (1, 0, 0)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration)
    assert (action.gen, action.reason) == (1, RotationReason.GENERATION_AGE)


def test_an_aged_generation_is_replaced_by_tick_before_the_next_ptt() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"", 0.0)
    deadline = sched.next_deadline()
    assert deadline == GENERATION_LIFETIME_S
    sched.tick(deadline)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration) and action.reason == RotationReason.GENERATION_AGE
    assert sched.next_deadline() is None  # the new generation ages from its first packet


def test_limits_force_a_new_generation_before_sealing() -> None:
    sched = opened()
    sched._channels[CH].key._ctr = (1 << 32) - 5  # skip 4 billion packets
    datagram = sched.seal(CH, PTYPE_VOICE, b"", 1.0)
    assert gen_step_ctr(datagram) == (1, 0, 0)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration) and action.reason == RotationReason.LIMIT


def test_a_join_with_no_step_left_becomes_a_new_generation() -> None:
    sched = opened()
    sched.seal(CH, PTYPE_VOICE, b"", 1.0)
    sched._channels[CH].key._step = 0xFFFF
    sched.member_joined(CH, 4, 1.0)
    sched.tick(2.0)
    (action,) = sched.take_actions()
    assert isinstance(action, NewGeneration) and action.recipients == (1, 2, 3, 4)


def test_state_snapshot_and_misuse() -> None:
    sched = opened()
    state = sched.state(CH)
    assert (state.gen, state.step, state.ctr, state.members) == (0, 0, 0, frozenset({1, 2, 3}))
    with pytest.raises(LocalProtocolError):
        sched.state(CH + 1)
    with pytest.raises(LocalProtocolError):
        SenderKeyScheduler(1 << 32)
    with pytest.raises(LocalProtocolError):
        sched.reconnected(0.0, sender_id=-1)


def test_key_actions_type_alias_covers_every_action() -> None:
    actions: list[KeyAction] = []
    sched = opened()
    sched.member_left(CH, 1, 0.0)
    actions += sched.take_actions()
    assert all(isinstance(a, NewGeneration | StepForJoiners | StepAdvanced) for a in actions)
