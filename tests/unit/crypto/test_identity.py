"""Ed25519 identity / signing keys and the never-raising verifier."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.crypto.identity import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    IdentityKey,
    SigningKey,
    load_public_key,
    verify_signature,
)
from voipclient.errors import LocalProtocolError


def test_sign_and_verify() -> None:
    ik = IdentityKey.generate()
    sig = ik.sign(b"hello")
    assert len(ik.public_bytes()) == PUBLIC_KEY_LEN
    assert len(sig) == SIGNATURE_LEN
    assert verify_signature(ik.public_bytes(), sig, b"hello")
    assert not verify_signature(ik.public_bytes(), sig, b"hellO")
    assert not verify_signature(IdentityKey.generate().public_bytes(), sig, b"hello")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(ik.public_bytes(), flipped, b"hello")


def test_private_bytes_round_trip() -> None:
    ik = IdentityKey.generate()
    again = IdentityKey.from_private_bytes(ik.private_bytes())
    assert again.public_bytes() == ik.public_bytes()
    assert verify_signature(ik.public_bytes(), again.sign(b"m"), b"m")


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32])
def test_from_private_bytes_rejects_bad_length(bad: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        IdentityKey.from_private_bytes(bad)


def test_repr_hides_private_key() -> None:
    ik = IdentityKey.generate()
    secret_hex = ik.private_bytes().hex()
    for text in (repr(ik), str(ik), f"{ik}"):
        assert secret_hex not in text
        assert secret_hex[:16] not in text
    assert "IdentityKey" in repr(ik)


def test_not_picklable() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(SigningKey.generate())


@pytest.mark.parametrize(
    ("pub", "sig", "msg"),
    [
        (b"", b"\x00" * 64, b"m"),
        (b"\x00" * 31, b"\x00" * 64, b"m"),
        (b"\xff" * 32, b"\x00" * 64, b"m"),
        (b"\x00" * 32, b"", b"m"),
        (b"\x00" * 32, b"\x00" * 65, b"m"),
        ("not bytes", b"\x00" * 64, b"m"),
        (b"\x00" * 32, None, b"m"),
        (b"\x00" * 32, b"\x00" * 64, 5),
    ],
)
def test_verify_never_raises_on_malformed_input(pub: object, sig: object, msg: object) -> None:
    assert verify_signature(pub, sig, msg) is False  # type: ignore[arg-type]


def test_load_public_key() -> None:
    ik = IdentityKey.generate()
    assert load_public_key(ik.public_bytes()) is not None
    assert load_public_key(b"short") is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=70), st.binary(max_size=40))
def test_verify_arbitrary_bytes(pub: bytes, sig: bytes, msg: bytes) -> None:
    assert verify_signature(pub, sig, msg) in (True, False)
