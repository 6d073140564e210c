"""KeyDist (PROTOCOL §2): round trips, relay splitting, batching, and every accept rule."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.crypto import keydist as kd
from voipclient.crypto.identity import IdentityKey, SigningKey, verify_signature
from voipclient.crypto.keydist import (
    AcceptedKey,
    KeyDistKind,
    KeyDistRecipient,
    KeyDistRejected,
    KeyDistRejectReason,
    build_keydists,
    commitment,
    open_keydist,
    parse_keydist_header,
    recipients_of,
    split_batch,
    split_for_recipients,
)
from voipclient.crypto.session import (
    InvalidSessionKey,
    SessionCertificate,
    SessionKemKey,
    hpke_seal,
)
from voipclient.crypto.tofu import TofuStore
from voipclient.errors import LocalProtocolError, RemoteProtocolError

R = KeyDistRejectReason
CHANNEL, SENDER, GEN, STEP, CREATED = 7, 42, 3, 5, 1_700_000_000_000


@dataclass
class Member:
    sender_id: int
    sk: SessionKemKey

    @property
    def recipient(self) -> KeyDistRecipient:
        return KeyDistRecipient(self.sender_id, self.sk.public_bytes())


@pytest.fixture(scope="module")
def sender_ik() -> IdentityKey:
    return IdentityKey.generate()


@pytest.fixture(scope="module")
def text_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def members() -> list[Member]:
    return [Member(100 + i, SessionKemKey.generate()) for i in range(120)]


S = bytes(range(64))


def build(
    ik: SigningKey,
    text_key: SigningKey,
    rcpts: list[Member],
    *,
    gen: int = GEN,
    step: int = STEP,
    base_key: bytes = S,
    kind: KeyDistKind = KeyDistKind.NEW_GENERATION,
    max_bytes: int = kd.DEFAULT_MAX_BYTES,
) -> list[bytes]:
    return build_keydists(
        ik,
        kind=kind,
        channel_id=CHANNEL,
        sender_id=SENDER,
        gen=gen,
        step=step,
        created_ms=CREATED,
        base_key=base_key,
        text_signing_pub=text_key.public_bytes(),
        recipients=[m.recipient for m in rcpts],
        max_bytes=max_bytes,
    )


def open_as(
    blob: bytes,
    me: Member,
    ik_pub: bytes | None,
    last: tuple[int, int] | None = None,
    sk: SessionKemKey | None = None,
) -> AcceptedKey:
    return open_keydist(
        blob,
        sender_ik_pub=ik_pub,
        my_sender_id=me.sender_id,
        my_session_key=sk or me.sk,
        last_accepted=last,
        now_ms=CREATED + 10,
    )


def rejected(
    reason: KeyDistRejectReason, blob: bytes, me: Member, ik_pub: bytes | None, **kw: object
) -> None:
    with pytest.raises(KeyDistRejected) as exc:
        open_as(blob, me, ik_pub, **kw)  # type: ignore[arg-type]
    assert exc.value.reason is reason, exc.value
    assert isinstance(exc.value, RemoteProtocolError)


# -- a hand-written encoder, independent of build_keydists, for forged messages ----------------


def assemble(
    ik: SigningKey,
    rows: list[tuple[int, bytes, bytes]],
    *,
    base_key_for_commit: bytes = S,
    text_pub: bytes = b"\x11" * 32,
    gen: int = GEN,
    step: int = STEP,
    kind: int = 1,
    carried: list[int] | None = None,
) -> bytes:
    """rows: (recipient_id, sk_id, envelope). Signs exactly as PROTOCOL §2 / the module doc."""
    fixed = struct.pack(">BBIIIHQ", 1, kind, CHANNEL, SENDER, gen, step, CREATED)
    commit = commitment(CHANNEL, SENDER, gen, step, base_key_for_commit)
    body = fixed + commit + text_pub + struct.pack(">H", len(rows))
    for rid, skid, env in rows:
        body += struct.pack(">I", rid) + skid + hashlib.sha256(env).digest()
    idx = list(range(len(rows))) if carried is None else carried
    tail = struct.pack(">H", len(idx)) + b"".join(struct.pack(">H", i) + rows[i][2] for i in idx)
    return body + ik.sign(b"vc1 keydist" + body) + tail


def envelope(
    m: Member, payload: bytes, *, gen: int = GEN, step: int = STEP, commit_key: bytes = S
) -> bytes:
    fixed = struct.pack(">BBIIIHQ", 1, 1, CHANNEL, SENDER, gen, step, CREATED)
    info = kd.envelope_info(
        fixed, m.sender_id, m.sk.sk_id, commitment(CHANNEL, SENDER, gen, step, commit_key)
    )
    return hpke_seal(m.sk.public_bytes(), payload, info)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_round_trip(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member], n: int
) -> None:
    rcpts = members[:n]
    blobs = build(sender_ik, text_key, rcpts)
    assert len(blobs) == 1
    blob = blobs[0]
    assert len(blob) == kd.message_size(n) == 156 + 1246 * n
    assert recipients_of(blob) == tuple(m.sender_id for m in rcpts)
    for m in rcpts:
        got = open_as(blob, m, sender_ik.public_bytes())
        assert (got.channel_id, got.sender_id, got.gen, got.step) == (CHANNEL, SENDER, GEN, STEP)
        assert got.base_key == S
        assert got.text_signing_pub == text_key.public_bytes()
        assert got.kind is KeyDistKind.NEW_GENERATION
        assert got.created_ms == CREATED
        assert got.commitment == commitment(CHANNEL, SENDER, GEN, STEP, S)
        assert S.hex() not in repr(got)


def test_layout_matches_the_independent_encoder(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    blob = build(sender_ik, text_key, members[:3], kind=KeyDistKind.CATCH_UP)[0]
    assert blob[:24] == struct.pack(">BBIIIHQ", 1, 2, CHANNEL, SENDER, GEN, STEP, CREATED)
    assert (
        blob[24:56]
        == hashlib.sha256(
            b"vc1 commit" + struct.pack(">IIIH", CHANNEL, SENDER, GEN, STEP) + S
        ).digest()
    )
    assert blob[56:88] == text_key.public_bytes()
    assert blob[88:90] == b"\x00\x03"
    body_end = 90 + 44 * 3
    for i, m in enumerate(members[:3]):
        row = blob[90 + 44 * i : 90 + 44 * (i + 1)]
        assert row[:4] == m.sender_id.to_bytes(4, "big")
        assert row[4:12] == m.sk.sk_id
        env_off = body_end + 64 + 2 + 1202 * i
        assert blob[env_off : env_off + 2] == i.to_bytes(2, "big")
        assert row[12:] == hashlib.sha256(blob[env_off + 2 : env_off + 1202]).digest()
    assert verify_signature(
        sender_ik.public_bytes(), blob[body_end : body_end + 64], b"vc1 keydist" + blob[:body_end]
    )
    got = open_as(blob, members[1], sender_ik.public_bytes())
    assert got.kind is KeyDistKind.CATCH_UP


def test_relay_split_delivers_each_envelope_only_to_its_recipient(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    rcpts = members[:6]
    blob = build(sender_ik, text_key, rcpts)[0]
    parts = split_for_recipients(blob)
    assert set(parts) == {m.sender_id for m in rcpts}
    for m in rcpts:
        part = parts[m.sender_id]
        assert len(part) == kd.message_size(6, 1) == 156 + 44 * 6 + 1202
        assert recipients_of(part) == (m.sender_id,)
        assert open_as(part, m, sender_ik.public_bytes()).base_key == S
        other = next(o for o in rcpts if o is not m)
        rejected(R.NOT_FOR_ME, part, other, sender_ik.public_bytes())
    hdr = parse_keydist_header(parts[rcpts[0].sender_id])
    assert hdr.recipients == tuple(m.sender_id for m in rcpts)
    assert (hdr.channel_id, hdr.sender_id, hdr.gen, hdr.step, hdr.kind) == (
        CHANNEL,
        SENDER,
        GEN,
        STEP,
        1,
    )


def test_batching(sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]) -> None:
    assert kd.batch_size() == 48
    blobs = build(sender_ik, text_key, members[:100])
    assert [len(recipients_of(b)) for b in blobs] == [48, 48, 4]
    seen: list[int] = []
    for blob in blobs:
        assert len(blob) <= kd.DEFAULT_MAX_BYTES
        seen += recipients_of(blob)
    assert seen == [m.sender_id for m in members[:100]]
    # every batch verifies alone (open only that batch for a member it carries)
    for blob in blobs:
        first = next(m for m in members if m.sender_id == recipients_of(blob)[0])
        assert open_as(blob, first, sender_ik.public_bytes()).base_key == S
    # all batches carry the same commitment
    assert len({b[24:56] for b in blobs}) == 1


def test_batching_small_limit(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    blobs = build(sender_ik, text_key, members[:7], max_bytes=4000)
    assert [len(recipients_of(b)) for b in blobs] == [3, 3, 1]
    assert all(len(b) <= 4000 for b in blobs)
    with pytest.raises(LocalProtocolError):
        build(sender_ik, text_key, members[:1], max_bytes=1401)
    assert len(build(sender_ik, text_key, members[:1], max_bytes=1402)[0]) == 1402


def test_batches_never_exceed_max_recipients(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    assert kd.MAX_RECIPIENTS == 64
    blobs = build(sender_ik, text_key, members[:70], max_bytes=200_000)
    assert [len(recipients_of(b)) for b in blobs] == [64, 6]
    assert all(split_batch(b)[0].recipients == recipients_of(b) for b in blobs)


def test_split_batch_wants_a_full_batch_and_receivers_still_open_parts(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    me, other = members[0], members[1]
    ik_pub = sender_ik.public_bytes()
    blob = build(sender_ik, text_key, members[:3])[0]
    header, parts = split_batch(blob)
    assert header == parse_keydist_header(blob)
    assert parts == split_for_recipients(blob)
    # A part (m = 1 < n) is what a receiver gets: it opens, but a relay refuses to split it.
    part = parts[me.sender_id]
    assert open_as(part, me, ik_pub).base_key == S
    assert split_for_recipients(part) == {me.sender_id: part}
    with pytest.raises(KeyDistRejected) as exc:
        split_batch(part)
    assert exc.value.reason is R.MALFORMED and "every envelope (1 of 3)" in exc.value.message
    # A table with more rows than envelopes, signed by the real sender, is refused the same.
    rows = [(x.sender_id, x.sk.sk_id, envelope(x, S)) for x in (me, other)]
    rows.append((9_999, bytes(8), bytes(kd.ENVELOPE_LEN)))
    short = assemble(sender_ik, rows, carried=[0, 1])
    assert open_as(short, me, ik_pub).base_key == S
    with pytest.raises(KeyDistRejected):
        split_batch(short)


def test_table_longer_than_max_recipients_is_malformed(
    sender_ik: IdentityKey, members: list[Member]
) -> None:
    me = members[0]
    env = envelope(me, S)

    def rows(n: int) -> list[tuple[int, bytes, bytes]]:
        filler = [(10_000 + i, bytes(8), bytes(kd.ENVELOPE_LEN)) for i in range(n - 1)]
        return [(me.sender_id, me.sk.sk_id, env), *filler]

    ok = assemble(sender_ik, rows(64), carried=[0])
    assert len(parse_keydist_header(ok).recipients) == 64
    assert open_as(ok, me, sender_ik.public_bytes()).base_key == S
    too_long = assemble(sender_ik, rows(65), carried=[0])
    rejected(R.MALFORMED, too_long, me, sender_ik.public_bytes())
    for fn in (parse_keydist_header, split_for_recipients, split_batch):
        with pytest.raises(KeyDistRejected):
            fn(too_long)


def test_no_recipients(sender_ik: IdentityKey, text_key: SigningKey) -> None:
    assert build(sender_ik, text_key, []) == []


def test_local_misuse(sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]) -> None:
    with pytest.raises(LocalProtocolError):
        build(sender_ik, text_key, members[:1], base_key=b"short")
    with pytest.raises(LocalProtocolError):
        build(sender_ik, text_key, [members[0], members[0]])
    with pytest.raises(LocalProtocolError):
        build(sender_ik, text_key, members[:1], step=1 << 16)
    with pytest.raises(LocalProtocolError):
        build(sender_ik, text_key, members[:1], kind=3)  # type: ignore[arg-type]
    bad = KeyDistRecipient(9, members[0].sk.public_bytes()[:1184] + bytes(32))
    with pytest.raises(InvalidSessionKey, match="recipient 9"):
        build_keydists(
            sender_ik,
            kind=KeyDistKind.NEW_GENERATION,
            channel_id=1,
            sender_id=2,
            gen=3,
            step=0,
            created_ms=0,
            base_key=S,
            text_signing_pub=text_key.public_bytes(),
            recipients=[bad],
        )
    wiped = SessionKemKey.generate()
    blob = build(sender_ik, text_key, [Member(1, wiped)])[0]
    wiped.wipe()
    with pytest.raises(LocalProtocolError):
        open_as(blob, Member(1, wiped), sender_ik.public_bytes())


def test_recipient_from_certificate(sender_ik: IdentityKey, members: list[Member]) -> None:
    m = members[0]
    skc = SessionCertificate.build(sender_ik, "bob", m.sender_id, m.sk.public_bytes(), 10)
    assert KeyDistRecipient.from_certificate(skc) == m.recipient


# -- accept rules, in order -------------------------------------------------------------------


def test_rule1_unknown_or_tofu_blocked_sender(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    blob = build(sender_ik, text_key, members[:2])[0]
    rejected(R.UNKNOWN_SENDER, blob, members[0], None)
    # The caller maps a TOFU block to None: the sender's key changed after it was verified.
    tofu = TofuStore()
    old = IdentityKey.generate().public_bytes()
    tofu.mark_verified("pin", "sender", old, 1)
    tofu.observe("pin", "sender", sender_ik.public_bytes(), 2)
    ik_pub = (
        None
        if tofu.is_blocked("pin", "sender", sender_ik.public_bytes())
        else sender_ik.public_bytes()
    )
    rejected(R.UNKNOWN_SENDER, blob, members[0], ik_pub)


def test_rule2_signature(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    me = members[0]
    blob = build(sender_ik, text_key, members[:2])[0]
    ik_pub = sender_ik.public_bytes()
    # another IK (e.g. a member impersonating the sender)
    rejected(R.BAD_SIGNATURE, blob, me, IdentityKey.generate().public_bytes())
    body_end = 90 + 44 * 2
    structural = {0: R.UNSUPPORTED_VERSION, 1: R.MALFORMED, 88: R.MALFORMED, 89: R.MALFORMED}
    for off in range(body_end + 64):  # every bit position in body and signature (one bit each)
        for bit in (0x01, 0x80) if off % 7 == 0 else (0x04,):
            bad = bytearray(blob)
            bad[off] ^= bit
            with pytest.raises(KeyDistRejected) as exc:
                open_as(bytes(bad), me, ik_pub)
            if off in structural:
                assert exc.value.reason in (structural[off], R.BAD_SIGNATURE)
            else:
                assert exc.value.reason is R.BAD_SIGNATURE, off
    # a flipped bit in my envelope: it no longer matches the signed envelope hash
    env_off = body_end + 64 + 2 + 2
    for off in (env_off, env_off + 600, env_off + 1199):
        bad = bytearray(blob)
        bad[off] ^= 0x10
        rejected(R.BAD_SIGNATURE, bytes(bad), me, ik_pub)
    assert open_as(blob, me, ik_pub).base_key == S


def test_rule3_no_envelope_for_me(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    blob = build(sender_ik, text_key, members[:3])[0]
    rejected(R.NOT_FOR_ME, blob, members[5], sender_ik.public_bytes())
    # my row is in the signed table but the relay did not carry my envelope
    part = split_for_recipients(blob)[members[1].sender_id]
    rejected(R.NOT_FOR_ME, part, members[0], sender_ik.public_bytes())


def test_rule3_stale_sk_id(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    me = members[0]
    blob = build(sender_ik, text_key, members[:2])[0]
    rotated = SessionKemKey.generate()  # I reconnected / rotated my session key
    rejected(R.STALE_SK_ID, blob, me, sender_ik.public_bytes(), sk=rotated)


def test_rule4_rollback(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    me = members[0]
    blob = build(sender_ik, text_key, members[:1])[0]
    ik_pub = sender_ik.public_bytes()
    for last in [(GEN, STEP), (GEN, STEP + 1), (GEN + 1, 0), (1 << 32, 0)]:
        rejected(R.ROLLBACK, blob, me, ik_pub, last=last)
    for last in [(GEN, STEP - 1), (GEN - 1, 65535), (0, 0)]:
        assert open_as(blob, me, ik_pub, last=last).base_key == S
    # a replay of an old generation's KeyDist after a newer one was accepted
    newer = build(sender_ik, text_key, members[:1], gen=GEN + 1, step=0, base_key=os.urandom(64))[0]
    accepted = open_as(newer, me, ik_pub, last=(GEN, STEP))
    rejected(R.ROLLBACK, blob, me, ik_pub, last=(accepted.gen, accepted.step))


def test_rule5_hpke_failure(sender_ik: IdentityKey, members: list[Member]) -> None:
    me, other = members[0], members[1]
    ik_pub = sender_ik.public_bytes()
    # sealed to somebody else's key but labelled with my (recipient_id, sk_id)
    env = envelope(other, S)
    blob = assemble(sender_ik, [(me.sender_id, me.sk.sk_id, env)])
    rejected(R.HPKE_FAILED, blob, me, ik_pub)
    # sealed to me with a different info (another step than the header says)
    env = envelope(me, S, step=STEP + 1)
    rejected(R.HPKE_FAILED, assemble(sender_ik, [(me.sender_id, me.sk.sk_id, env)]), me, ik_pub)
    # random bytes of the right length
    rejected(
        R.HPKE_FAILED,
        assemble(sender_ik, [(me.sender_id, me.sk.sk_id, os.urandom(1200))]),
        me,
        ik_pub,
    )
    # the honest assembly of the same parts opens (the helper is right)
    good = assemble(sender_ik, [(me.sender_id, me.sk.sk_id, envelope(me, S))])
    assert open_as(good, me, ik_pub).base_key == S


def test_rule6_commitment_detects_two_keys_for_one_generation(
    sender_ik: IdentityKey, members: list[Member]
) -> None:
    """A malicious sender gives Alice S1 and Bob S2 for the same (channel, gen, step)."""
    alice, bob = members[0], members[1]
    ik_pub = sender_ik.public_bytes()
    s1, s2 = os.urandom(64), os.urandom(64)
    rows = [
        (alice.sender_id, alice.sk.sk_id, envelope(alice, s1, commit_key=s1)),
        (bob.sender_id, bob.sk.sk_id, envelope(bob, s2, commit_key=s1)),  # HPKE info is honest
    ]
    blob = assemble(sender_ik, rows, base_key_for_commit=s1)
    assert open_as(blob, alice, ik_pub).base_key == s1
    rejected(R.COMMITMENT_MISMATCH, blob, bob, ik_pub)
    # committing to S2 instead just moves the detection to Alice
    rows = [
        (alice.sender_id, alice.sk.sk_id, envelope(alice, s1, commit_key=s2)),
        (bob.sender_id, bob.sk.sk_id, envelope(bob, s2, commit_key=s2)),
    ]
    blob = assemble(sender_ik, rows, base_key_for_commit=s2)
    rejected(R.COMMITMENT_MISMATCH, blob, alice, ik_pub)
    assert open_as(blob, bob, ik_pub).base_key == s2
    # and the relay's per-recipient copies carry the same signed commitment
    parts = split_for_recipients(blob)
    assert parts[alice.sender_id][24:56] == parts[bob.sender_id][24:56]


def test_rules_are_checked_in_order(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    me = members[0]
    blob = build(sender_ik, text_key, members[:1])[0]
    bad_sig = blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]
    # unknown sender wins over a bad signature; a bad signature over a rollback
    rejected(R.UNKNOWN_SENDER, bad_sig, me, None)
    rejected(R.BAD_SIGNATURE, bad_sig, me, sender_ik.public_bytes(), last=(GEN + 9, 0))
    # stale sk_id wins over rollback
    rejected(
        R.STALE_SK_ID,
        blob,
        me,
        sender_ik.public_bytes(),
        last=(GEN + 9, 0),
        sk=SessionKemKey.generate(),
    )


# -- malformed structure ----------------------------------------------------------------------


def test_malformed_structures(
    sender_ik: IdentityKey, text_key: SigningKey, members: list[Member]
) -> None:
    me = members[0]
    ik_pub = sender_ik.public_bytes()
    blob = build(sender_ik, text_key, members[:2])[0]
    body_end = 90 + 88
    for bad in (
        b"",
        blob[:89],
        blob[:-1],
        blob + b"\x00",
        blob[: body_end + 64] + b"\x00\x00",  # m = 0
        blob[: body_end + 64] + b"\x00\x03" + blob[body_end + 66 :],  # m > n
        blob[: body_end + 66] + b"\x00\x01" + blob[body_end + 68 :],  # indexes 1, 1
    ):
        rejected(R.MALFORMED, bad, me, ik_pub)
        with pytest.raises(KeyDistRejected):
            recipients_of(bad)
    # a duplicate recipient in the signed table
    env = envelope(me, S)
    dup = assemble(sender_ik, [(me.sender_id, me.sk.sk_id, env), (me.sender_id, me.sk.sk_id, env)])
    rejected(R.MALFORMED, dup, me, ik_pub)
    rejected(
        R.MALFORMED, assemble(sender_ik, [(me.sender_id, me.sk.sk_id, env)], kind=3), me, ik_pub
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_raise_only_keydist_rejected(data: bytes) -> None:
    me = Member(1, _SK)
    for fn in (recipients_of, parse_keydist_header, split_for_recipients, split_batch):
        with contextlib.suppress(KeyDistRejected):
            fn(data)
    with pytest.raises(KeyDistRejected):
        open_as(data, me, _IK.public_bytes())
    with pytest.raises(KeyDistRejected):
        open_as(data, me, data[:32])


_SK = SessionKemKey.generate()
_IK = IdentityKey.generate()
_TK = SigningKey.generate()
_VALID = build_keydists(
    _IK,
    kind=KeyDistKind.NEW_GENERATION,
    channel_id=CHANNEL,
    sender_id=SENDER,
    gen=GEN,
    step=STEP,
    created_ms=CREATED,
    base_key=S,
    text_signing_pub=_TK.public_bytes(),
    recipients=[
        KeyDistRecipient(1, _SK.public_bytes()),
        KeyDistRecipient(2, SessionKemKey.generate().public_bytes()),
    ],
)[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_message_raises_only_keydist_rejected(data: st.DataObject) -> None:
    blob = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if action == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        got = open_keydist(
            bytes(blob),
            sender_ik_pub=_IK.public_bytes(),
            my_sender_id=1,
            my_session_key=_SK,
            last_accepted=None,
            now_ms=0,
        )
    except KeyDistRejected:
        return
    # Accepted only if nothing I rely on changed (flips that cancel out, or a byte of the
    # *other* recipient's envelope, which only that recipient checks against the signed hash).
    assert got.base_key == S
    assert recipients_of(bytes(blob)) == (1, 2)
