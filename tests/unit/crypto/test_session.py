"""Session KEM key (hybrid ML-KEM-768 + X25519 HPKE) and the session certificate (SKC)."""

from __future__ import annotations

import contextlib
import hashlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.crypto.identity import IdentityKey, verify_signature
from voipclient.crypto.session import (
    SK_PUBLIC_LEN,
    HpkeOpenFailed,
    InvalidSessionKey,
    SessionCertificate,
    SessionCertificateRejected,
    SessionKemKey,
    SkcRejectReason,
    hpke_seal,
    parse_session_public_key,
    sk_id,
)
from voipclient.errors import LocalProtocolError, RemoteProtocolError

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def sk() -> SessionKemKey:
    return SessionKemKey.generate()


def test_public_bytes_and_sk_id(sk: SessionKemKey) -> None:
    pub = sk.public_bytes()
    assert len(pub) == SK_PUBLIC_LEN == 1216
    assert sk.sk_id == hashlib.sha256(pub).digest()[:8] == sk_id(pub)
    parse_session_public_key(pub)


def test_seal_open_round_trip(sk: SessionKemKey) -> None:
    ct = hpke_seal(sk.public_bytes(), b"s" * 64, b"info")
    assert len(ct) == 1200
    assert sk.open(ct, b"info") == b"s" * 64
    with pytest.raises(HpkeOpenFailed):
        sk.open(ct, b"other info")
    with pytest.raises(HpkeOpenFailed):
        sk.open(ct[:-1] + bytes([ct[-1] ^ 1]), b"info")
    with pytest.raises(HpkeOpenFailed):
        sk.open(b"", b"info")
    with pytest.raises(HpkeOpenFailed):
        SessionKemKey.generate().open(ct, b"info")


def test_wipe() -> None:
    key = SessionKemKey.generate()
    ct = hpke_seal(key.public_bytes(), b"x", b"i")
    key.wipe()
    key.wipe()  # idempotent
    assert key.wiped
    assert len(key.public_bytes()) == SK_PUBLIC_LEN  # public part stays usable as a name
    with pytest.raises(LocalProtocolError):
        key.open(ct, b"i")
    assert "wiped" in repr(key)


def test_repr_and_pickle(sk: SessionKemKey) -> None:
    assert repr(sk) == f"SessionKemKey(sk_id={sk.sk_id.hex()}, live)"
    with pytest.raises(TypeError):
        pickle.dumps(sk)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00" * 1215,
        b"\xff" * 1216,  # ML-KEM coefficients out of range
        # a valid ML-KEM key with a small-order X25519 point
        None,
    ],
)
def test_invalid_public_keys(sk: SessionKemKey, bad: bytes | None) -> None:
    if bad is None:
        bad = sk.public_bytes()[:1184] + b"\x00" * 32
    with pytest.raises(InvalidSessionKey):
        parse_session_public_key(bad)
    with pytest.raises(InvalidSessionKey):
        hpke_seal(bad, b"x", b"i")


# -- session certificate -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ik() -> IdentityKey:
    return IdentityKey.generate()


@pytest.fixture(scope="module")
def skc(ik: IdentityKey, sk: SessionKemKey) -> SessionCertificate:
    return SessionCertificate.build(ik, "alice", 42, sk.public_bytes(), NOW + 3_600_000)


def test_skc_layout_and_round_trip(ik: IdentityKey, skc: SessionCertificate) -> None:
    raw = skc.to_bytes()
    acct = b"alice"
    assert raw[0] == 1
    assert raw[1:3] == len(acct).to_bytes(2, "big")
    assert raw[3:8] == acct
    assert raw[8:12] == (42).to_bytes(4, "big")
    assert raw[12 : 12 + 1216] == skc.sk_pub
    assert raw[1228:1236] == (NOW + 3_600_000).to_bytes(8, "big")
    assert len(raw) == 1236 + 64
    assert verify_signature(ik.public_bytes(), raw[-64:], b"vc1 skc" + raw[:-64])
    again = SessionCertificate.from_bytes(raw)
    assert again == skc
    assert again.sk_id == sk_id(skc.sk_pub)


def test_skc_verify_ok(ik: IdentityKey, skc: SessionCertificate) -> None:
    skc.verify(ik.public_bytes(), NOW)
    skc.verify(ik.public_bytes(), NOW + 3_600_000)  # inclusive bound
    skc.verify(ik.public_bytes(), NOW, account="alice", sender_id=42)


def _reason(exc: pytest.ExceptionInfo[SessionCertificateRejected]) -> SkcRejectReason:
    return exc.value.reason


def test_skc_expired(ik: IdentityKey, skc: SessionCertificate) -> None:
    with pytest.raises(SessionCertificateRejected) as exc:
        skc.verify(ik.public_bytes(), NOW + 3_600_001)
    assert _reason(exc) is SkcRejectReason.EXPIRED


def test_skc_wrong_ik(skc: SessionCertificate) -> None:
    with pytest.raises(SessionCertificateRejected) as exc:
        skc.verify(IdentityKey.generate().public_bytes(), NOW)
    assert _reason(exc) is SkcRejectReason.BAD_SIGNATURE
    with pytest.raises(SessionCertificateRejected):
        skc.verify(b"garbage", NOW)


def test_skc_roster_mismatch(ik: IdentityKey, skc: SessionCertificate) -> None:
    for kwargs in ({"account": "mallory"}, {"sender_id": 43}):
        with pytest.raises(SessionCertificateRejected) as exc:
            skc.verify(ik.public_bytes(), NOW, **kwargs)
        assert _reason(exc) is SkcRejectReason.MISMATCH


@pytest.mark.parametrize("offset", [3, 7, 8, 11, 12, 600, 1227, 1228, 1235, 1236, 1299])
def test_skc_tampered(ik: IdentityKey, skc: SessionCertificate, offset: int) -> None:
    raw = bytearray(skc.to_bytes())
    raw[offset] ^= 0x01
    with pytest.raises(SessionCertificateRejected) as exc:
        SessionCertificate.from_bytes(bytes(raw)).verify(ik.public_bytes(), NOW)
    assert _reason(exc) in (SkcRejectReason.BAD_SIGNATURE, SkcRejectReason.MALFORMED)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r[:-1], SkcRejectReason.MALFORMED),
        (lambda r: r + b"\x00", SkcRejectReason.MALFORMED),
        (lambda r: b"\x02" + r[1:], SkcRejectReason.UNSUPPORTED_VERSION),
        (lambda r: r[:1] + b"\x00\x00" + r[3:], SkcRejectReason.MALFORMED),
        (lambda r: r[:3] + b"\xff" + r[4:], SkcRejectReason.MALFORMED),  # not UTF-8
        (lambda r: b"", SkcRejectReason.MALFORMED),
    ],
)
def test_skc_malformed(skc: SessionCertificate, mutate: object, reason: SkcRejectReason) -> None:
    with pytest.raises(SessionCertificateRejected) as exc:
        SessionCertificate.from_bytes(mutate(skc.to_bytes()))  # type: ignore[operator]
    assert _reason(exc) is reason


def test_skc_build_rejects_local_misuse(ik: IdentityKey, sk: SessionKemKey) -> None:
    pub = sk.public_bytes()
    for args in (
        ("", 1, pub, 1),
        ("a" * 257, 1, pub, 1),
        ("a", -1, pub, 1),
        ("a", 1 << 32, pub, 1),
        ("a", 1, pub[:-1], 1),
        ("a", 1, pub, -1),
        ("\udc80", 1, pub, 1),
    ):
        with pytest.raises(LocalProtocolError):
            SessionCertificate.build(ik, *args)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_skc_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        SessionCertificate.from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_skc_random_mutations(
    skc: SessionCertificate, ik: IdentityKey, data: st.DataObject
) -> None:
    raw = bytearray(skc.to_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SessionCertificateRejected):
        SessionCertificate.from_bytes(bytes(raw)).verify(ik.public_bytes(), NOW)
