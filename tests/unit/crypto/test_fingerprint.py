"""Safety numbers: libsignal NumericFingerprint v1 vector, Ed25519 prefix, QR payload."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from voipclient.crypto import fingerprint as fp
from voipclient.crypto.identity import IdentityKey
from voipclient.errors import LocalProtocolError, RemoteProtocolError

VECTOR = json.loads((Path(__file__).parents[2] / "data" / "libsignal-fingerprint.json").read_text())


def test_libsignal_vector_reproduces() -> None:
    assert VECTOR["iterations"] == fp.ITERATIONS
    digits = fp.numeric_fingerprint(
        bytes.fromhex(VECTOR["local_key"]),
        VECTOR["local_id"].encode(),
        bytes.fromhex(VECTOR["remote_key"]),
        VECTOR["remote_id"].encode(),
    )
    assert digits == VECTOR["displayable"]
    # and from the other side
    assert (
        fp.numeric_fingerprint(
            bytes.fromhex(VECTOR["remote_key"]),
            VECTOR["remote_id"].encode(),
            bytes.fromhex(VECTOR["local_key"]),
            VECTOR["local_id"].encode(),
        )
        == VECTOR["displayable"]
    )


def test_safety_number_uses_ed25519_prefix_and_is_symmetric() -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    sn = fp.safety_number(a, "alice", b, "bob")
    assert len(sn) == 60 and sn.isdigit()
    assert sn == fp.safety_number(b, "bob", a, "alice")
    assert sn == fp.numeric_fingerprint(b"\xed" + a, b"alice", b"\xed" + b, b"bob")
    assert sn != fp.numeric_fingerprint(b"\x05" + a, b"alice", b"\x05" + b, b"bob")
    # a different key (ghost device / MITM) changes the number
    c = IdentityKey.generate().public_bytes()
    assert fp.safety_number(a, "alice", c, "bob") != sn


def test_format_groups_of_five() -> None:
    text = fp.format_safety_number(VECTOR["displayable"])
    groups = text.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 for g in groups)
    assert text.replace(" ", "") == VECTOR["displayable"]
    with pytest.raises(LocalProtocolError):
        fp.format_safety_number("123")


def test_bad_key_length_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        fp.safety_number(b"\x00" * 31, "a", b"\x00" * 32, "b")


def test_qr_payload_verifies_from_the_other_side() -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    shown_by_alice = fp.scannable_payload(a, "alice", b, "bob")
    assert len(shown_by_alice) == fp.QR_LEN == 70
    assert shown_by_alice.startswith(b"VC1SN\x01")
    # Bob scans Alice's screen: from his side, local = bob, remote = alice.
    assert fp.verify_scanned(shown_by_alice, b, "bob", a, "alice")
    # Bob sees a different "alice" key (MITM): mismatch.
    mitm = IdentityKey.generate().public_bytes()
    assert not fp.verify_scanned(shown_by_alice, b, "bob", mitm, "alice")
    # Scanning your own screen is not a match.
    assert not fp.verify_scanned(shown_by_alice, a, "alice", b, "bob")


@pytest.mark.parametrize("bad", [b"", b"VC1SN", b"VC1SN\x02" + bytes(64), b"XXXXX\x01" + bytes(64)])
def test_qr_garbage_is_rejected(bad: bytes) -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    with pytest.raises(RemoteProtocolError):
        fp.verify_scanned(bad, a, "alice", b, "bob")


# -- channel privacy code ------------------------------------------------------------------------
PRIVACY = json.loads((Path(__file__).parents[2] / "data" / "vc1-privacy-code.json").read_text())


def _privacy_code_from_the_spec(channel_id: int, holders: list[tuple[str, bytes]]) -> str:
    """docs/protocol.md "Channel privacy code", written out again from the text."""
    import hashlib

    rows = sorted({(a.encode(), b"\xed" + k) for a, k in holders})
    body = b"vc1 privacy code" + channel_id.to_bytes(4, "big") + len(rows).to_bytes(2, "big")
    for account, key in rows:
        body += len(account).to_bytes(2, "big") + account + key
    d = hashlib.sha512(body).digest()
    h = d
    for _ in range(5200):
        h = hashlib.sha512(h + d).digest()
    return " ".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 20, 5))


def test_privacy_code_vectors_reproduce() -> None:
    assert PRIVACY["iterations"] == fp.ITERATIONS
    for case in PRIVACY["cases"]:
        holders = [(a, bytes.fromhex(k)) for a, k in case["holders"]]
        assert fp.privacy_code(case["channel_id"], holders) == case["code"]
        assert _privacy_code_from_the_spec(case["channel_id"], holders) == case["code"]


def test_privacy_code_depends_on_channel_and_every_holder_not_on_order() -> None:
    a, b, g = (IdentityKey.generate().public_bytes() for _ in range(3))
    base = fp.privacy_code(7, [("ann", a), ("bob", b)])
    assert re.fullmatch(r"\d{5} \d{5} \d{5} \d{5}", base)
    assert fp.privacy_code(7, [("bob", b), ("ann", a)]) == base
    assert fp.privacy_code(7, [("ann", a), ("bob", b), ("bob", b)]) == base  # a set
    assert fp.privacy_code(8, [("ann", a), ("bob", b)]) != base
    assert fp.privacy_code(7, [("ann", a), ("bob", b), ("ghost", g)]) != base  # a ghost shows
    assert fp.privacy_code(7, [("ann", a), ("bob", g)]) != base  # a swapped key shows
    assert fp.privacy_code(7, [("ann", a), ("mallory", b)]) != base  # a renamed holder shows
    with pytest.raises(LocalProtocolError):
        fp.privacy_code(2**32, [("ann", a)])
