"""The vc1 voice datagram: vectors, sealing, the client receive path and PROTOCOL §6 negative tests.

Negative tests compare a snapshot of the receiver's keys and replay windows before and after, and
check that exactly the expected drop counter moved by one.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.crypto import sframe
from voipclient.crypto.hop import HOP_MAC_LEN, HopMac, derive_hop_keys
from voipclient.crypto.media import (
    BUFFER_MAX_PACKETS,
    BUFFER_MAX_TOTAL,
    CTR_LIMIT,
    HEADER_STRUCT,
    MAX_DATAGRAM_LEN,
    MAX_PAYLOAD_LEN,
    MIN_DATAGRAM_LEN,
    PTYPE_VOICE,
    PTYPE_VOICE_LAST,
    STEP_INTERVAL_PACKETS,
    STEP_LIMIT,
    DropReason,
    SenderKey,
    VoiceFrame,
    VoiceHeader,
    VoiceReceiver,
    kid,
    parse_header,
)
from voipclient.errors import LocalProtocolError

VECTORS = json.loads((Path(__file__).parents[2] / "data" / "vc1-datagram-vectors.json").read_text())
CH, SND, GEN = VECTORS["channel_id"], VECTORS["sender_id"], VECTORS["gen"]
S0 = bytes.fromhex(VECTORS["base_key_step0"])
S1 = bytes.fromhex(VECTORS["base_key_step1"])
OPUS = bytes.fromhex(VECTORS["opus"])
PKT0 = bytes.fromhex(VECTORS["pkt_step0_ctr0"])
PKT1 = bytes.fromhex(VECTORS["pkt_step0_ctr1"])
PKT2 = bytes.fromhex(VECTORS["pkt_step1_ctr2_last"])
K_C2S, K_S2C = derive_hop_keys(bytes.fromhex(VECTORS["hop_secret"]))
C2S = HopMac(K_C2S)
S2C = HopMac(K_S2C)
OTHER_KEY = bytes(range(100, 164))


# --- helpers ----------------------------------------------------------------------------------


def forward(datagram: bytes) -> bytes:
    """What the relay does: keep bytes[0:36+n], replace the c2s MAC by the listener's s2c MAC."""
    return S2C.append(datagram[:-HOP_MAC_LEN])


def send(sender: SenderKey, payload: bytes = OPUS, ptype: int = PTYPE_VOICE) -> bytes:
    """A datagram as the listener receives it."""
    return S2C.append(sender.seal(ptype, payload))


def new_sender(gen: int = GEN, base: bytes = S0, ch: int = CH, snd: int = SND) -> SenderKey:
    sender = SenderKey(ch, snd)
    sender.new_generation(gen, base)
    return sender


def new_receiver(*keys: tuple[int, int, int, int, bytes]) -> VoiceReceiver:
    receiver = VoiceReceiver(K_S2C)
    for ch, snd, gen, step, base in keys or ((CH, SND, GEN, 0, S0),):
        receiver.add_key(ch, snd, gen, step, base, 0.0)
    return receiver


def key_state(receiver: VoiceReceiver) -> dict[tuple[int, int], Any]:
    """Keys, steps, expiries and replay windows per speaker (buffers excluded)."""
    return {
        (i.channel_id, i.sender_id): (i.current_gen, i.gens) for i in receiver.key_info() if i.gens
    }


def full_state(receiver: VoiceReceiver) -> tuple[Any, ...]:
    return receiver.key_info(), receiver.buffered, receiver.delivered


def assert_dropped(
    receiver: VoiceReceiver, datagram: bytes, now: float, reason: DropReason
) -> None:
    """``datagram`` is dropped for ``reason`` and leaves keys, windows and counters unchanged."""
    before = full_state(receiver)
    drops = receiver.drop_counts()
    assert receiver.receive(datagram, now) is None
    assert full_state(receiver) == before
    drops[reason] += 1
    assert receiver.drop_counts() == drops


def rewrite(datagram: bytes, **fields: int) -> bytes:
    """Change header fields of a received datagram and recompute the s2c MAC (a lying relay)."""
    header = VoiceHeader._make(HEADER_STRUCT.unpack_from(datagram))._replace(**fields)
    return S2C.append(HEADER_STRUCT.pack(*header) + datagram[20:-HOP_MAC_LEN])


# --- vectors ----------------------------------------------------------------------------------


def test_vector_key_schedule() -> None:
    assert sframe.ratchet(S0) == S1
    key, salt = sframe.derive_key_salt(kid(CH, SND), S0)
    assert key.hex() == VECTORS["key_step0"]
    assert salt.hex() == VECTORS["salt_step0"]
    assert sframe.nonce(salt, 1).hex() == VECTORS["nonce_ctr1_step0"]
    assert kid(CH, SND) == 7 << 32 | 42


def test_vector_datagrams_seal_byte_for_byte() -> None:
    # The vector datagrams carry the hop MAC under K_c2s (as the client sends them).
    sender = new_sender()
    assert C2S.append(sender.seal(PTYPE_VOICE, OPUS)) == PKT0
    assert C2S.append(sender.seal(PTYPE_VOICE, OPUS)) == PKT1
    sender.advance_step()
    assert sender.base_key == S1
    assert (sender.gen, sender.step, sender.ctr) == (GEN, 1, 2)
    assert C2S.append(sender.seal(PTYPE_VOICE_LAST, OPUS)) == PKT2


def test_vector_datagrams_open_after_the_relay() -> None:
    receiver = new_receiver()
    frames = [receiver.receive(forward(p), 0.1) for p in (PKT0, PKT1, PKT2)]
    assert frames == [
        VoiceFrame(CH, SND, GEN, 0, 0, False, OPUS),
        VoiceFrame(CH, SND, GEN, 0, 1, False, OPUS),
        VoiceFrame(CH, SND, GEN, 1, 2, True, OPUS),
    ]
    assert receiver.delivered == 3
    assert not any(receiver.drop_counts().values())


def test_the_c2s_vector_itself_is_refused_by_a_listener() -> None:
    # A listener verifies K_s2c: a datagram still carrying the sender's c2s MAC did not come
    # from the relay.
    assert_dropped(new_receiver(), PKT0, 0.1, DropReason.BAD_HOP_MAC)


def test_parse_header() -> None:
    header = parse_header(PKT2)
    assert header == VoiceHeader(1, PTYPE_VOICE_LAST, 1, CH, SND, GEN, 2)
    assert header is not None and header.kid == kid(CH, SND)
    assert parse_header(PKT0[:45]) is None
    assert parse_header(PKT0 + bytes(1200)) is None
    assert parse_header(b"\x02" + PKT0[1:]) is None
    hop_control = parse_header(PKT0[:1] + b"\x10" + PKT0[2:])
    assert hop_control is not None and hop_control.ptype == 0x10


# --- sealing ----------------------------------------------------------------------------------


def test_ctr_runs_across_steps_and_restarts_per_generation() -> None:
    sender = new_sender()
    for _ in range(3):
        sender.seal(PTYPE_VOICE, b"")
    sender.advance_step()
    assert sender.ctr == 3 and sender.packets_in_step == 0
    assert HEADER_STRUCT.unpack_from(sender.seal(PTYPE_VOICE, b""))[6] == 3
    sender.new_generation(GEN + 1, OTHER_KEY)
    assert (sender.gen, sender.step, sender.ctr) == (GEN + 1, 0, 0)


def test_sealing_fails_at_ctr_2_to_the_32() -> None:
    sender = new_sender()
    sender._ctr = CTR_LIMIT - 1  # skip 4 billion packets
    assert sender.rotation_needed
    last = sender.seal(PTYPE_VOICE, b"last")
    assert HEADER_STRUCT.unpack_from(last)[6] == 0xFFFFFFFF
    with pytest.raises(LocalProtocolError):
        sender.seal(PTYPE_VOICE, b"one too many")
    assert sender.ctr == CTR_LIMIT  # the failed seal burned nothing and wrapped nothing
    with pytest.raises(LocalProtocolError):
        sender.seal(PTYPE_VOICE, b"")
    sender.new_generation(GEN + 1, OTHER_KEY)  # the only way on
    sender.seal(PTYPE_VOICE, b"")


def test_step_overflow_is_refused() -> None:
    sender = new_sender()
    sender._step = STEP_LIMIT - 2  # skip 65534 ratchets
    assert sender.rotation_needed
    sender.advance_step()
    assert sender.step == 0xFFFF
    with pytest.raises(LocalProtocolError):
        sender.advance_step()
    assert sender.step == 0xFFFF


def test_rotation_and_step_flags() -> None:
    sender = new_sender()
    assert not sender.rotation_needed and not sender.step_due
    sender._ctr = STEP_INTERVAL_PACKETS
    assert sender.step_due
    sender.advance_step()
    assert not sender.step_due
    assert not SenderKey(1, 2).rotation_needed  # no key, nothing to rotate


def test_seal_misuse_raises() -> None:
    with pytest.raises(LocalProtocolError):
        SenderKey(1, 2).seal(PTYPE_VOICE, b"")  # no key yet
    with pytest.raises(LocalProtocolError):
        SenderKey(1, 2).advance_step()
    sender = new_sender()
    for ptype in (0x00, 0x03, 0x10):
        with pytest.raises(LocalProtocolError):
            sender.seal(ptype, b"")
    with pytest.raises(LocalProtocolError):
        sender.seal(PTYPE_VOICE, bytes(MAX_PAYLOAD_LEN + 1))
    assert sender.ctr == 0
    with pytest.raises(LocalProtocolError):
        sender.new_generation(GEN, OTHER_KEY)  # not newer
    with pytest.raises(LocalProtocolError):
        sender.new_generation(GEN + 1, b"short")
    with pytest.raises(LocalProtocolError):
        sender.new_generation(1 << 32, OTHER_KEY)
    with pytest.raises(LocalProtocolError):
        SenderKey(1 << 32, 1)


def test_repr_hides_the_key() -> None:
    assert S0.hex() not in repr(new_sender())


def test_100k_seals_across_steps_and_generations_never_repeat_a_key_nonce_pair() -> None:
    rng = random.Random(9605)
    sender = SenderKey(CH, SND)
    seen: set[tuple[bytes, bytes]] = set()
    key = salt = b""
    gen = 0
    for i in range(100_000):
        if i % 25_000 == 0:
            gen += 1
            sender.new_generation(gen, rng.randbytes(64))
            key, salt = sframe.derive_key_salt(kid(CH, SND), sender.base_key)
        elif i % 1_000 == 0:
            sender.advance_step()
            key, salt = sframe.derive_key_salt(kid(CH, SND), sender.base_key)
        ctr = HEADER_STRUCT.unpack_from(sender.seal(PTYPE_VOICE, b""))[6]
        seen.add((key, sframe.nonce(salt, ctr)))
    assert len(seen) == 100_000
    assert (sender.gen, sender.step) == (4, 24)


# --- receiving: happy paths ---------------------------------------------------------------------


def test_smallest_and_largest_datagrams_open() -> None:
    sender, receiver = new_sender(), new_receiver()
    empty = send(sender, b"")
    full = send(sender, bytes(range(256)) * 4 + bytes(MAX_PAYLOAD_LEN - 1024))
    assert len(empty) == MIN_DATAGRAM_LEN and len(full) == MAX_DATAGRAM_LEN
    assert receiver.receive(empty, 0.0) == VoiceFrame(CH, SND, GEN, 0, 0, False, b"")
    frame = receiver.receive(full, 0.0)
    assert frame is not None and len(frame.payload) == MAX_PAYLOAD_LEN


def test_reordering_within_the_window() -> None:
    sender, receiver = new_sender(), new_receiver()
    datagrams = [send(sender, i.to_bytes(4, "big")) for i in range(128)]
    random.Random(1).shuffle(datagrams)
    frames = [receiver.receive(d, 0.0) for d in datagrams]
    assert sorted(f.ctr for f in frames if f is not None) == list(range(128))
    for d in datagrams[:5]:
        assert_dropped(receiver, d, 0.0, DropReason.REPLAY)


def test_lazy_ratchet_forward_caches_and_keeps_intermediate_steps() -> None:
    sender, receiver = new_sender(), new_receiver()
    at_step = {}
    for step in range(4):
        at_step[step] = send(sender)
        if step < 3:
            sender.advance_step()
    frame = receiver.receive(at_step[3], 1.0)  # three ratchets ahead of the KeyDist's step 0
    assert frame is not None and frame.step == 3
    (info,) = receiver.key_info()
    (g,) = info.gens
    assert g.current_step == 3
    assert g.steps == (0, 1, 2, 3)
    assert g.cached_steps == (3,)  # AEAD objects only where a datagram opened
    assert g.step_expiry == ((0, 11.0), (1, 11.0), (2, 11.0))
    # Late datagrams of older steps still open within the 10 s.
    assert receiver.receive(at_step[1], 2.0) is not None
    assert receiver.receive(at_step[0], 2.0) is not None
    assert receiver.key_info()[0].gens[0].cached_steps == (0, 1, 3)


def test_old_steps_are_forgotten_10_s_after_a_newer_one() -> None:
    sender, receiver = new_sender(), new_receiver()
    old = [send(sender) for _ in range(3)]
    sender.advance_step()
    assert receiver.receive(send(sender), 5.0) is not None  # step 1 accepted at t = 5
    assert receiver.receive(old[0], 14.999) is not None
    assert receiver.next_deadline() == 15.0
    receiver.expire(15.0)
    assert receiver.key_info()[0].gens[0].steps == (1,)
    assert_dropped(receiver, old[1], 15.0, DropReason.STEP_OUT_OF_RANGE)
    assert receiver.next_deadline() is None


def test_a_newer_step_from_a_keydist_fills_gaps_by_ratchet() -> None:
    sender, receiver = new_sender(), new_receiver()
    datagrams = {}
    for step in range(6):
        datagrams[step] = send(sender)
        if step < 5:
            sender.advance_step()
    assert receiver.add_key(CH, SND, GEN, 5, sender.base_key, 2.0) == []
    assert receiver.key_info()[0].gens[0].steps == (0, 5)
    assert receiver.receive(datagrams[2], 3.0) is not None  # ratcheted from step 0's base
    g = receiver.key_info()[0].gens[0]
    assert g.steps == (0, 1, 2, 5)
    assert dict(g.step_expiry) == {0: 12.0, 1: 12.0, 2: 12.0}  # never longer than their source
    assert receiver.receive(datagrams[5], 3.0) is not None


def test_add_key_ignores_keys_that_are_not_newer() -> None:
    receiver = new_receiver((CH, SND, GEN, 2, S1))
    before = full_state(receiver)
    assert receiver.add_key(CH, SND, GEN, 1, S0, 1.0) == []
    assert receiver.add_key(CH, SND, GEN, 2, S0, 1.0) == []
    assert receiver.add_key(CH, SND, GEN - 1, 9, S0, 1.0) == []
    assert full_state(receiver) == before


def test_add_key_misuse_raises() -> None:
    receiver = VoiceReceiver(S2C)
    with pytest.raises(LocalProtocolError):
        receiver.add_key(CH, SND, GEN, 0, b"short", 0.0)
    with pytest.raises(LocalProtocolError):
        receiver.add_key(CH, SND, GEN, 1 << 16, S0, 0.0)
    with pytest.raises(LocalProtocolError):
        receiver.add_key(CH, 1 << 32, GEN, 0, S0, 0.0)
    with pytest.raises(LocalProtocolError):
        VoiceReceiver(K_S2C, window_size=32)


def test_voice_frame_is_frozen() -> None:
    frame = new_receiver().receive(forward(PKT0), 0.0)
    assert frame is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.ctr = 5  # type: ignore[misc]


def test_set_hop_switches_the_s2c_key() -> None:
    receiver = new_receiver()
    other_c2s, other_s2c = derive_hop_keys(bytes(32))
    receiver.set_hop(other_s2c)
    assert_dropped(receiver, forward(PKT0), 0.0, DropReason.BAD_HOP_MAC)
    assert receiver.receive(HopMac(other_s2c).append(PKT0[:-HOP_MAC_LEN]), 0.0) is not None
    assert other_c2s != other_s2c


# --- buffering of unknown generations -----------------------------------------------------------


def test_unknown_generation_is_buffered_and_released_by_add_key() -> None:
    sender, receiver = new_sender(), VoiceReceiver(S2C)
    datagrams = [send(sender, bytes([i])) for i in range(3)]
    for i, d in enumerate(datagrams):
        assert receiver.receive(d, 0.1 * i) is None
    assert receiver.buffered == 3 and receiver.next_deadline() == 1.0
    frames = receiver.add_key(CH, SND, GEN, 0, S0, 0.5)
    assert [f.payload for f in frames] == [b"\x00", b"\x01", b"\x02"]
    assert receiver.buffered == 0 and receiver.delivered == 3
    assert_dropped(receiver, datagrams[0], 0.6, DropReason.REPLAY)


def test_new_generation_of_a_known_sender_is_buffered_and_the_old_kept_10_s() -> None:
    sender, receiver = new_sender(), new_receiver()
    old = [send(sender) for _ in range(2)]
    sender.new_generation(GEN + 1, OTHER_KEY)
    new = send(sender)
    assert receiver.receive(new, 1.0) is None and receiver.buffered == 1  # KeyDist lost the race
    frames = receiver.add_key(CH, SND, GEN + 1, 0, OTHER_KEY, 1.2)
    assert [(f.gen, f.ctr) for f in frames] == [(GEN + 1, 0)]
    assert receiver.receive(old[0], 11.19) is not None  # old generation kept 10 s
    receiver.expire(11.2)
    assert [g.gen for g in receiver.key_info()[0].gens] == [GEN + 1]
    assert_dropped(receiver, old[1], 11.2, DropReason.OLD_GENERATION)


def test_buffer_holds_at_most_50_datagrams_per_speaker() -> None:
    sender, receiver = new_sender(), VoiceReceiver(S2C)
    for _ in range(BUFFER_MAX_PACKETS + 5):
        receiver.receive(send(sender), 0.0)
    assert receiver.buffered == 50
    assert receiver.drop_counts()[DropReason.BUFFER_FULL] == 5
    assert len(receiver.add_key(CH, SND, GEN, 0, S0, 0.5)) == 50


def test_buffer_holds_at_most_500_datagrams_in_all() -> None:
    receiver = VoiceReceiver(S2C)
    for snd in range(11):
        sender = new_sender(snd=snd)
        for _ in range(BUFFER_MAX_PACKETS):
            receiver.receive(send(sender), 0.0)
    assert receiver.buffered == BUFFER_MAX_TOTAL
    assert receiver.drop_counts()[DropReason.BUFFER_FULL] == 50


def test_buffered_datagrams_expire_after_1_s() -> None:
    sender, receiver = new_sender(), VoiceReceiver(S2C)
    receiver.receive(send(sender), 0.0)
    receiver.receive(send(sender), 0.5)
    # At t = 1.0 the first has waited its full second; the second still opens.
    frames = receiver.add_key(CH, SND, GEN, 0, S0, 1.0)
    assert [f.ctr for f in frames] == [1]
    assert receiver.drop_counts()[DropReason.BUFFER_EXPIRED] == 1


def test_buffered_datagrams_expire_without_a_key() -> None:
    sender, receiver = new_sender(), VoiceReceiver(S2C)
    receiver.receive(send(sender), 0.0)
    receiver.receive(forward(PKT0), 2.0)  # any later datagram runs the expiry; this one buffers
    assert receiver.drop_counts()[DropReason.BUFFER_EXPIRED] == 1
    assert receiver.buffered == 1
    receiver.expire(3.0)
    assert receiver.buffered == 0 and receiver.key_info() == ()


def test_buffer_keeps_newer_and_drops_superseded_generations() -> None:
    receiver = new_receiver()
    g5 = send(new_sender(gen=5, base=OTHER_KEY))
    receiver.receive(g5, 0.0)
    assert receiver.add_key(CH, SND, 4, 0, S1, 0.1) == []
    assert receiver.buffered == 1  # gen 5 still newer than gen 4: keep waiting
    assert receiver.add_key(CH, SND, 6, 0, S1, 0.2) == []
    assert receiver.buffered == 0
    assert receiver.drop_counts()[DropReason.OLD_GENERATION] == 1


def test_an_old_never_known_generation_is_dropped_not_buffered() -> None:
    receiver = new_receiver()
    assert_dropped(receiver, send(new_sender(gen=GEN - 1)), 0.0, DropReason.OLD_GENERATION)


def test_forget_sender_and_channel_discard_keys_and_buffers() -> None:
    receiver = new_receiver((CH, SND, GEN, 0, S0), (CH + 1, SND, GEN, 0, S0))
    receiver.receive(send(new_sender(snd=SND + 1)), 0.0)
    receiver.forget_channel(CH)
    assert [(i.channel_id, i.sender_id) for i in receiver.key_info()] == [(CH + 1, SND)]
    assert receiver.drop_counts()[DropReason.BUFFER_DISCARDED] == 1
    receiver.forget_sender(CH + 1, SND)
    assert receiver.key_info() == () and receiver.buffered == 0
    assert receiver.receive(send(new_sender(ch=CH + 1)), 0.0) is None  # unknown again: buffered
    assert receiver.buffered == 1


# --- PROTOCOL §6 negative tests -----------------------------------------------------------------


def test_every_bit_flip_in_header_ciphertext_or_tag_is_refused() -> None:
    receiver = new_receiver()
    assert receiver.receive(forward(PKT0), 0.0) is not None
    assert receiver.receive(forward(PKT1), 0.0) is not None
    target = forward(PKT2)  # step 1: flips of step bits also try the lazy ratchet
    keys_before = key_state(receiver)
    body_bits = (len(target) - HOP_MAC_LEN) * 8
    for bit in range(len(target) * 8):
        flipped = bytearray(target)
        flipped[bit // 8] ^= 1 << (bit % 8)
        # Raw flip: the hop MAC catches it. Then as a lying relay that re-MACs the flipped bytes.
        assert_dropped(receiver, bytes(flipped), 1.0, DropReason.BAD_HOP_MAC)
        if bit >= body_bits:
            continue
        drops, buffered = receiver.drop_counts(), receiver.buffered
        assert receiver.receive(forward(bytes(flipped)), 1.0) is None, bit
        assert key_state(receiver) == keys_before, bit
        moved = sum(receiver.drop_counts().values()) - sum(drops.values())
        assert moved + receiver.buffered - buffered == 1, bit  # dropped once, or left to wait
    counts = receiver.drop_counts()
    assert counts[DropReason.AEAD_FAILED] > 0 and counts[DropReason.UNKNOWN_VERSION] == 8
    assert receiver.delivered == 2
    assert receiver.receive(target, 1.0) is not None  # the genuine datagram still opens


def test_relabelled_channel_or_sender_fails_the_aead() -> None:
    # Every speaker here shares one S: the KID and the AAD alone must keep them apart.
    receiver = new_receiver(
        (CH, SND, GEN, 0, S0), (CH, SND + 1, GEN, 0, S0), (CH + 1, SND, GEN, 0, S0)
    )
    datagram = send(new_sender())
    assert_dropped(receiver, rewrite(datagram, sender_id=SND + 1), 0.0, DropReason.AEAD_FAILED)
    assert_dropped(receiver, rewrite(datagram, channel_id=CH + 1), 0.0, DropReason.AEAD_FAILED)
    # Relabelled to a speaker with no key yet: it waits, and fails once the key arrives.
    assert receiver.receive(rewrite(datagram, sender_id=SND + 2), 0.0) is None
    assert receiver.add_key(CH, SND + 2, GEN, 0, S0, 0.1) == []
    assert receiver.drop_counts()[DropReason.AEAD_FAILED] == 3
    assert receiver.receive(datagram, 0.2) is not None


def test_relabelled_gen_step_or_ctr_fails_the_aead() -> None:
    receiver = new_receiver()
    datagram = send(new_sender())
    assert_dropped(receiver, rewrite(datagram, step=1), 0.0, DropReason.AEAD_FAILED)
    assert_dropped(receiver, rewrite(datagram, ctr=1), 0.0, DropReason.AEAD_FAILED)
    assert_dropped(receiver, rewrite(datagram, ptype=PTYPE_VOICE_LAST), 0.0, DropReason.AEAD_FAILED)
    receiver.add_key(CH, SND, GEN + 1, 0, S0, 0.0)  # same S under the next generation
    assert_dropped(receiver, rewrite(datagram, gen=GEN + 1), 0.0, DropReason.AEAD_FAILED)


def test_exact_replay_and_replay_below_the_window() -> None:
    sender, receiver = new_sender(), new_receiver()
    datagrams = [send(sender) for _ in range(201)]
    for i in (*range(5), *range(6, 10), 200):
        assert receiver.receive(datagrams[i], 0.0) is not None
    assert_dropped(receiver, datagrams[200], 0.0, DropReason.REPLAY)  # exact replay
    assert_dropped(receiver, datagrams[9], 0.0, DropReason.REPLAY)  # replay, inside the window
    assert_dropped(receiver, datagrams[5], 0.0, DropReason.REPLAY)  # never seen, below the window
    assert receiver.receive(datagrams[150], 0.0) is not None  # inside the 128 window


def test_old_generation_after_10_s() -> None:
    sender, receiver = new_sender(), new_receiver()
    old = [send(sender) for _ in range(2)]
    receiver.add_key(CH, SND, GEN + 1, 0, OTHER_KEY, 1.0)
    assert receiver.next_deadline() == 11.0
    assert receiver.receive(old[0], 10.99) is not None
    receiver.expire(11.0)
    assert_dropped(receiver, old[1], 11.0, DropReason.OLD_GENERATION)


def test_step_jump_beyond_16_is_refused() -> None:
    sender, receiver = new_sender(), new_receiver()
    for _ in range(17):
        sender.advance_step()
    assert_dropped(receiver, send(sender), 0.0, DropReason.STEP_OUT_OF_RANGE)
    sender16 = new_sender()
    for _ in range(16):
        sender16.advance_step()
    frame = receiver.receive(send(sender16), 0.0)
    assert frame is not None and frame.step == 16


def test_a_forged_step_ahead_commits_no_derived_key() -> None:
    sender, receiver = new_sender(), new_receiver()
    for _ in range(3):
        sender.advance_step()
    forged = bytearray(send(sender))
    forged[30] ^= 0x40  # ciphertext
    assert_dropped(receiver, forward(bytes(forged)), 0.0, DropReason.AEAD_FAILED)
    assert receiver.key_info()[0].gens[0].steps == (0,)


@pytest.mark.parametrize("length", [0, 1, 19, 20, 45, 1201, 1500, 65507])
def test_bad_lengths_are_dropped(length: int) -> None:
    receiver = new_receiver()
    body = (PKT0[:-HOP_MAC_LEN] * 900)[: max(0, length - HOP_MAC_LEN)]
    datagram = S2C.append(body) if length >= HOP_MAC_LEN else bytes(length)
    assert len(datagram) == length
    assert_dropped(receiver, datagram, 0.0, DropReason.BAD_LENGTH)


@pytest.mark.parametrize("ver", [0x00, 0x02, 0xFF])
def test_unknown_version_is_dropped(ver: int) -> None:
    assert_dropped(new_receiver(), rewrite(forward(PKT0), ver=ver), 0.0, DropReason.UNKNOWN_VERSION)


@pytest.mark.parametrize("ptype", [0x00, 0x03, 0x10, 0x1F, 0xFF])
def test_unknown_ptype_is_dropped(ptype: int) -> None:
    datagram = rewrite(forward(PKT0), ptype=ptype)
    assert_dropped(new_receiver(), datagram, 0.0, DropReason.UNKNOWN_PTYPE)


def test_bad_hop_mac_is_dropped_before_anything_else() -> None:
    receiver = new_receiver()
    good = forward(PKT0)
    assert_dropped(receiver, good[:-1] + bytes([good[-1] ^ 1]), 0.0, DropReason.BAD_HOP_MAC)
    assert_dropped(receiver, good[:-HOP_MAC_LEN] + bytes(10), 0.0, DropReason.BAD_HOP_MAC)
    # A bad MAC on an unknown sender does not get buffered either.
    assert_dropped(receiver, send(new_sender(snd=99))[:-1] + b"\x00", 0.0, DropReason.BAD_HOP_MAC)


# --- nothing a peer sends may raise -------------------------------------------------------------


@given(st.binary(max_size=1300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    receiver = new_receiver()
    before = full_state(receiver)
    assert receiver.receive(data, 0.0) is None
    assert full_state(receiver) == before


@given(st.binary(min_size=MIN_DATAGRAM_LEN - HOP_MAC_LEN, max_size=1300))
def test_arbitrary_bytes_with_a_valid_hop_mac_never_raise(body: bytes) -> None:
    receiver = new_receiver()
    before = key_state(receiver)
    assert receiver.receive(S2C.append(body), 0.0) is None
    assert key_state(receiver) == before


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(
    ptype=st.sampled_from([PTYPE_VOICE, PTYPE_VOICE_LAST]),
    step=st.integers(0, 40),
    channel_id=st.sampled_from([CH, CH + 1]),
    sender_id=st.sampled_from([SND, SND + 1]),
    gen=st.integers(0, 6),
    ctr=st.integers(0, 0xFFFFFFFF),
    body=st.binary(min_size=16, max_size=200),
    now=st.floats(0.0, 30.0),
)
def test_well_formed_forgeries_never_open_or_raise(
    ptype: int,
    step: int,
    channel_id: int,
    sender_id: int,
    gen: int,
    ctr: int,
    body: bytes,
    now: float,
) -> None:
    receiver = new_receiver()
    receiver.add_key(CH, SND, GEN + 1, 2, S1, 0.0)  # an older gen still kept, a newer one current
    receiver.expire(now)
    before = key_state(receiver)
    header = HEADER_STRUCT.pack(1, ptype, step, channel_id, sender_id, gen, ctr)
    assert receiver.receive(S2C.append(header + body), now) is None
    assert key_state(receiver) == before
