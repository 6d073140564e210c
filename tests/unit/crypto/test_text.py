"""Text chat (PROTOCOL §4): round trips, padding, signatures, tctr ordering, no state change."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.crypto import sframe
from voipclient.crypto.identity import IdentityKey, SigningKey, verify_signature
from voipclient.crypto.keydist import KeyDistKind, KeyDistRecipient, build_keydists, open_keydist
from voipclient.crypto.session import SessionKemKey
from voipclient.crypto.text import (
    MAX_TEXT_BYTES,
    TextOpener,
    TextRejected,
    TextRejectReason,
    TextSealer,
    pad,
    text_secret,
    unpad,
)
from voipclient.errors import LocalProtocolError, RemoteProtocolError

T = TextRejectReason
CH, SND, GEN = 7, 42, 3
S0 = bytes(range(64))


@pytest.fixture
def sign_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def sealer(sign_key: SigningKey) -> TextSealer:
    return TextSealer(CH, SND, GEN, 0, S0, sign_key)


def opener_for(key: SigningKey) -> TextOpener:
    """An opener holding (CH, SND, GEN) at step 0 with ``key`` as the text signing key."""
    o = TextOpener()
    o.add_key(
        channel_id=CH,
        sender_id=SND,
        gen=GEN,
        step=0,
        base_key=S0,
        text_signing_pub=key.public_bytes(),
    )
    return o


@pytest.fixture
def opener(sign_key: SigningKey) -> TextOpener:
    return opener_for(sign_key)


def reject(opener: TextOpener, data: bytes, *reasons: TextRejectReason) -> None:
    with pytest.raises(TextRejected) as exc:
        opener.open(data)
    assert isinstance(exc.value, RemoteProtocolError)
    if reasons:
        assert exc.value.reason in reasons, exc.value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hi",
        "héllo wörld",
        "🎧🎮 日本語テキスト",
        "a\x00",
        "€" * 10,
        "x" * 31,
        "x" * 32,
        "x" * 33,
        "x" * 63,
        "x" * 64,
        "x" * MAX_TEXT_BYTES,
        "é" * (MAX_TEXT_BYTES // 2),
        "\x80",
    ],
)
def test_round_trip(sealer: TextSealer, opener: TextOpener, text: str) -> None:
    msg = sealer.seal(text, 1_700_000_000_123)
    raw_len = len(text.encode())
    padded = (raw_len // 32 + 1) * 32
    assert len(msg) == 28 + padded + 16 + 64
    got = opener.open(msg)
    assert (got.channel_id, got.sender_id, got.sent_ms, got.text) == (
        CH,
        SND,
        1_700_000_000_123,
        text,
    )
    assert (got.gen, got.step, got.tctr) == (GEN, 0, 0)


def test_too_long_is_local_error(sealer: TextSealer) -> None:
    with pytest.raises(LocalProtocolError):
        sealer.seal("x" * (MAX_TEXT_BYTES + 1), 0)
    with pytest.raises(LocalProtocolError):
        sealer.seal("é" * (MAX_TEXT_BYTES // 2) + "x", 0)
    with pytest.raises(LocalProtocolError):
        sealer.seal("\udc80", 0)
    with pytest.raises(LocalProtocolError):
        sealer.seal("ok", -1)
    assert sealer.next_tctr == 0  # nothing was consumed


def test_independent_decryption_matches_protocol(sealer: TextSealer, sign_key: SigningKey) -> None:
    """Re-derive every value from PROTOCOL §4 by hand with sframe and AESGCM."""
    sealer.seal("first", 1)
    msg = sealer.seal("hello", 0x0102030405060708)
    header = msg[:28]
    assert header == struct.pack(">BBHIIIIQ", 1, 0x20, 0, CH, SND, GEN, 1, 0x0102030405060708)
    s_text = sframe.hkdf_expand(sframe.hkdf_extract(b"", S0), b"vc1 text", 64)
    assert s_text == text_secret(S0)
    key, salt = sframe.derive_key_salt(CH << 32 | SND, s_text)
    nonce = (int.from_bytes(salt, "big") ^ 1).to_bytes(12, "big")
    padded = AESGCM(key).decrypt(nonce, msg[28:-64], header)
    assert padded == b"hello\x80" + bytes(26)
    assert verify_signature(sign_key.public_bytes(), msg[-64:], b"vc1 text" + msg[:-64])


# -- padding -------------------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_pad_unpad_property(data: bytes) -> None:
    p = pad(data)
    assert len(p) % 32 == 0 and len(data) < len(p) <= len(data) + 32
    assert unpad(p) == data


@pytest.mark.parametrize(
    "bad",
    [b"", bytes(32), b"a" * 32, b"a\x80" + b"\x01" + bytes(29), b"\x80" + bytes(63), b"a" * 31],
)
def test_unpad_rejects(bad: bytes) -> None:
    assert unpad(bad) is None


def test_bad_padding_inside_valid_aead_and_signature(
    sign_key: SigningKey, opener: TextOpener
) -> None:
    """A sender (holding both keys) that pads wrongly is rejected without state change."""
    key, salt = sframe.derive_key_salt(CH << 32 | SND, text_secret(S0))
    for padded, reason in [
        (b"abc" + bytes(29), T.BAD_PADDING),
        (b"\xff\x80" + bytes(30), T.BAD_UTF8),
    ]:
        header = struct.pack(">BBHIIIIQ", 1, 0x20, 0, CH, SND, GEN, 0, 5)
        body = header + AESGCM(key).encrypt(sframe.nonce(salt, 0), padded, header)
        reject(opener, body + sign_key.sign(b"vc1 text" + body), reason)
    ok = TextSealer(CH, SND, GEN, 0, S0, sign_key).seal("fine", 1)
    assert opener.open(ok).text == "fine"


# -- rejections leave state unchanged ----------------------------------------------------------


def test_bad_signature(sealer: TextSealer, opener: TextOpener) -> None:
    msg = sealer.seal("hello", 1)
    for off in (-64, -33, -1):
        bad = bytearray(msg)
        bad[off] ^= 0x01
        reject(opener, bytes(bad), T.BAD_SIGNATURE)
    assert opener.open(msg).text == "hello"


def test_forgery_by_a_member_holding_the_base_key(sealer: TextSealer, opener: TextOpener) -> None:
    """Every member has S (so the AEAD opens) but not the sender's text signing key."""
    forger = TextSealer(CH, SND, GEN, 0, S0, SigningKey.generate(), tctr=100)
    reject(opener, forger.seal("I am SND", 1), T.BAD_SIGNATURE)
    assert opener.open(sealer.seal("real", 2)).tctr == 0


def test_tampered_header_and_ciphertext(sealer: TextSealer, opener: TextOpener) -> None:
    msg = sealer.seal("hello world", 1)
    for off in range(len(msg) - 64):
        bad = bytearray(msg)
        bad[off] ^= 0x01
        reject(opener, bytes(bad))
    assert opener.open(msg).text == "hello world"


def test_relay_relabels_channel_or_sender(sign_key: SigningKey, sealer: TextSealer) -> None:
    o = TextOpener()
    for ch, snd in [(CH, SND), (CH + 1, SND), (CH, SND + 1)]:
        o.add_key(
            channel_id=ch,
            sender_id=snd,
            gen=GEN,
            step=0,
            base_key=S0,
            text_signing_pub=sign_key.public_bytes(),
        )
    msg = sealer.seal("hi", 1)
    relabel_ch = msg[:4] + struct.pack(">I", CH + 1) + msg[8:]
    relabel_snd = msg[:8] + struct.pack(">I", SND + 1) + msg[12:]
    reject(o, relabel_ch, T.BAD_CIPHERTEXT)
    reject(o, relabel_snd, T.BAD_CIPHERTEXT)
    assert o.open(msg).text == "hi"


def test_replay_and_reorder(sealer: TextSealer, opener: TextOpener) -> None:
    m0, m1, m2 = (sealer.seal(t, i) for i, t in enumerate(["a", "b", "c"]))
    assert opener.open(m0).text == "a"
    reject(opener, m0, T.REPLAY)  # exact replay
    assert opener.open(m2).text == "c"
    reject(opener, m1, T.REPLAY)  # reordered (older tctr after a newer one)
    reject(opener, m2, T.REPLAY)
    assert opener.open(sealer.seal("d", 9)).tctr == 3


def test_rejected_higher_tctr_does_not_advance(
    sealer: TextSealer, opener: TextOpener, sign_key: SigningKey
) -> None:
    ahead = TextSealer(CH, SND, GEN, 0, S0, sign_key, tctr=50).seal("ahead", 1)
    bad = ahead[:-1] + bytes([ahead[-1] ^ 1])
    reject(opener, bad, T.BAD_SIGNATURE)
    assert opener.open(sealer.seal("tctr 0 still fine", 2)).tctr == 0


def test_unknown_sender_or_generation(sealer: TextSealer, sign_key: SigningKey) -> None:
    msg = sealer.seal("x", 1)
    reject(TextOpener(), msg, T.UNKNOWN_KEY)
    o = TextOpener()
    o.add_key(
        channel_id=CH,
        sender_id=SND,
        gen=GEN + 1,
        step=0,
        base_key=S0,
        text_signing_pub=sign_key.public_bytes(),
    )
    reject(o, msg, T.UNKNOWN_KEY)
    o.remove_sender(CH, SND)
    reject(o, msg, T.UNKNOWN_KEY)


def test_steps_ratchet_lazily_and_tctr_continues(sign_key: SigningKey, opener: TextOpener) -> None:
    sealer = TextSealer(CH, SND, GEN, 0, S0, sign_key)
    m_step0 = sealer.seal("at step 0", 1)
    s = S0
    for _ in range(3):
        s = sframe.ratchet(s)
    sealer.set_step(3, s)
    m_step3 = sealer.seal("at step 3", 2)
    assert m_step3[2:4] == b"\x00\x03" and m_step3[16:20] == b"\x00\x00\x00\x01"
    assert opener.open(m_step3).step == 3  # receiver ratchets 0 -> 3 on its own
    reject(opener, m_step0, T.STEP_OUT_OF_RANGE, T.REPLAY)  # old step: key dropped
    with pytest.raises(LocalProtocolError):
        sealer.set_step(3, s)


def test_step_jump_over_16_rejected(sign_key: SigningKey, opener: TextOpener) -> None:
    s = S0
    for _ in range(17):
        s = sframe.ratchet(s)
    far = TextSealer(CH, SND, GEN, 17, s, sign_key).seal("far", 1)
    reject(opener, far, T.STEP_OUT_OF_RANGE)
    s16 = S0
    for _ in range(16):
        s16 = sframe.ratchet(s16)
    assert opener.open(TextSealer(CH, SND, GEN, 16, s16, sign_key).seal("ok", 1)).step == 16


def test_new_generation(sign_key: SigningKey, sealer: TextSealer, opener: TextOpener) -> None:
    old_late = sealer.seal("old gen, tctr 0", 1)
    old_later = sealer.seal("old gen, tctr 1", 1)
    assert opener.open(old_late).gen == GEN
    new_key, s_new = SigningKey.generate(), os.urandom(64)
    opener.add_key(
        channel_id=CH,
        sender_id=SND,
        gen=GEN + 1,
        step=0,
        base_key=s_new,
        text_signing_pub=new_key.public_bytes(),
    )
    new = TextSealer(CH, SND, GEN + 1, 0, s_new, new_key)
    assert opener.open(new.seal("new gen", 2)).gen == GEN + 1
    reject(opener, old_later, T.REPLAY)  # an older generation after a newer one
    # the old generation's signing key does not sign for the new one
    forged = TextSealer(CH, SND, GEN + 1, 0, s_new, sign_key, tctr=5).seal("forged", 3)
    reject(opener, forged, T.BAD_SIGNATURE)


def test_tctr_exhaustion(sign_key: SigningKey) -> None:
    sealer = TextSealer(CH, SND, GEN, 0, S0, sign_key, tctr=2**32 - 1)
    sealer.seal("last", 1)
    with pytest.raises(LocalProtocolError):
        sealer.seal("one too many", 1)


def test_local_misuse(sign_key: SigningKey) -> None:
    with pytest.raises(LocalProtocolError):
        TextSealer(CH, SND, GEN, 0, b"short", sign_key)
    with pytest.raises(LocalProtocolError):
        TextSealer(CH, SND, GEN, 1 << 16, S0, sign_key)
    o = TextOpener()
    with pytest.raises(LocalProtocolError):
        o.add_key(channel_id=CH, sender_id=SND, gen=GEN, step=0, base_key=S0, text_signing_pub=b"x")
    o.add_key(
        channel_id=CH,
        sender_id=SND,
        gen=GEN,
        step=5,
        base_key=S0,
        text_signing_pub=sign_key.public_bytes(),
    )
    # A lower step than the held one is ignored (a peer's stale KeyDist must not raise).
    assert not o.add_key(
        channel_id=CH,
        sender_id=SND,
        gen=GEN,
        step=4,
        base_key=S0,
        text_signing_pub=sign_key.public_bytes(),
    )
    assert S0.hex() not in repr(TextSealer(CH, SND, GEN, 0, S0, sign_key))


def test_fed_from_an_accepted_keydist() -> None:
    sender_ik, text_key, my_sk = (
        IdentityKey.generate(),
        SigningKey.generate(),
        SessionKemKey.generate(),
    )
    s = os.urandom(64)
    blob = build_keydists(
        sender_ik,
        kind=KeyDistKind.CATCH_UP,
        channel_id=CH,
        sender_id=SND,
        gen=GEN,
        step=2,
        created_ms=1,
        base_key=s,
        text_signing_pub=text_key.public_bytes(),
        recipients=[KeyDistRecipient(9, my_sk.public_bytes())],
    )[0]
    accepted = open_keydist(
        blob,
        sender_ik_pub=sender_ik.public_bytes(),
        my_sender_id=9,
        my_session_key=my_sk,
        last_accepted=None,
        now_ms=2,
    )
    o = TextOpener()
    o.add_accepted(accepted)
    msg = TextSealer(CH, SND, GEN, 2, s, text_key, tctr=7).seal("welcome", 3)
    assert o.open(msg).text == "welcome"
    # history from before the joiner's step is unreadable
    reject(
        o,
        TextSealer(CH, SND, GEN, 1, os.urandom(64), text_key, tctr=8).seal("old", 1),
        T.STEP_OUT_OF_RANGE,
    )


# -- fuzzing -------------------------------------------------------------------------------------

_KEY = SigningKey.generate()
_VALID = TextSealer(CH, SND, GEN, 0, S0, _KEY, tctr=10).seal("fuzz me", 1)


def _opener() -> TextOpener:
    return opener_for(_KEY)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(TextRejected):
        _opener().open(data)
    # with a valid-looking header so the later checks are reached too
    with contextlib.suppress(TextRejected):
        _opener().open(_VALID[:28] + data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutations_rejected_and_state_unchanged(data: st.DataObject) -> None:
    o = _opener()
    blob = bytearray(_VALID)
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob))) :]
    with pytest.raises(TextRejected):
        o.open(bytes(blob))
    assert o.open(_VALID).text == "fuzz me"


def test_superseded_generation_loses_s_at_once_and_expires_after_10_s(
    sign_key: SigningKey,
) -> None:
    o = TextOpener()
    pub = sign_key.public_bytes()
    old = TextSealer(CH, SND, GEN, 0, S0, sign_key)
    in_flight = old.seal("sent just before the rotation", 1)
    o.add_key(channel_id=CH, sender_id=SND, gen=GEN, step=0, base_key=S0, text_signing_pub=pub)
    s_new = bytes(range(64, 128))
    assert o.add_key(
        channel_id=CH,
        sender_id=SND,
        gen=GEN + 1,
        step=0,
        base_key=s_new,
        text_signing_pub=pub,
        now=100.0,
    )
    held = [st.keys.base_key for state in o._senders.values() for st in state.gens.values()]
    assert S0 not in held and s_new in held
    # An older generation arriving late is ignored.
    assert not o.add_key(
        channel_id=CH, sender_id=SND, gen=GEN - 1, step=0, base_key=S0, text_signing_pub=pub
    )
    o.expire(109.9)
    assert o.open(in_flight).text == "sent just before the rotation"  # within 10 s: still opens
    late = old.seal("after the retention", 2)
    o.expire(110.0)
    with pytest.raises(TextRejected):
        o.open(late)
