"""Hop keys and the 10-byte hop MAC (PROTOCOL §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.crypto.hop import HOP_MAC_LEN, HopMac, derive_hop_keys
from voipclient.errors import LocalProtocolError

VECTORS = json.loads((Path(__file__).parents[2] / "data" / "vc1-datagram-vectors.json").read_text())
DATAGRAMS = [
    bytes.fromhex(VECTORS[name])
    for name in ("pkt_step0_ctr0", "pkt_step0_ctr1", "pkt_step1_ctr2_last")
]
K_C2S, K_S2C = derive_hop_keys(bytes.fromhex(VECTORS["hop_secret"]))


def test_hop_keys_reproduce_the_vectors() -> None:
    assert K_C2S.hex() == VECTORS["k_c2s"]
    assert K_S2C.hex() == VECTORS["k_s2c"]


@pytest.mark.parametrize("datagram", DATAGRAMS, ids=["ctr0", "ctr1", "ctr2-last"])
def test_vector_datagrams_carry_the_c2s_mac(datagram: bytes) -> None:
    # The vectors are datagrams as the *client sends them*: MACed under K_c2s, not K_s2c.
    assert HopMac(K_C2S).verify(datagram)
    assert not HopMac(K_S2C).verify(datagram)
    assert HopMac(K_C2S).append(datagram[:-HOP_MAC_LEN]) == datagram


def test_s2c_mac_is_refused_where_c2s_is_expected() -> None:
    # A listener reflecting what the relay sent it back at the relay must fail.
    body = DATAGRAMS[0][:-HOP_MAC_LEN]
    reflected = HopMac(K_S2C).append(body)
    assert not HopMac(K_C2S).verify(reflected)
    assert HopMac(K_S2C).verify(reflected)


def test_mac_is_ten_bytes_of_hmac_sha256() -> None:
    import hashlib
    import hmac

    data = b"x" * 77
    expected = hmac.new(K_C2S, data, hashlib.sha256).digest()[:10]
    mac = HopMac(K_C2S)
    assert mac.mac(data) == expected
    assert mac.mac(memoryview(data)) == expected
    assert mac.append(data) == data + expected
    # The pre-keyed context is copied per call: repeated calls agree.
    assert mac.mac(data) == mac.mac(data)


def test_every_bit_flip_fails_verification() -> None:
    mac = HopMac(K_C2S)
    datagram = DATAGRAMS[2]
    for bit in range(len(datagram) * 8):
        flipped = bytearray(datagram)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not mac.verify(bytes(flipped)), bit


def test_truncated_and_empty_inputs_fail_without_raising() -> None:
    mac = HopMac(K_C2S)
    assert not mac.verify(b"")
    assert not mac.verify(b"\x00" * (HOP_MAC_LEN - 1))
    # Exactly 10 bytes: the MAC of the empty string.
    assert mac.verify(mac.append(b""))


@given(st.binary(max_size=1300))
def test_verify_never_raises(data: bytes) -> None:
    assert HopMac(K_S2C).verify(data) is False or len(data) >= HOP_MAC_LEN


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_hop_secret_must_be_32_bytes(length: int) -> None:
    with pytest.raises(LocalProtocolError):
        derive_hop_keys(b"\x01" * length)


def test_hop_key_must_be_32_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        HopMac(b"short")


def test_repr_hides_the_key() -> None:
    assert K_C2S.hex() not in repr(HopMac(K_C2S))
