"""Hop-control datagrams (PROTOCOL §3 ptypes 0x10-0x1F, our design): layout, MACs, parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.crypto.hop import HOP_MAC_LEN, HopMac, derive_hop_keys
from voipclient.crypto.media import HEADER_STRUCT, MIN_DATAGRAM_LEN, parse_header
from voipclient.crypto.replay import ReplayWindow
from voipclient.errors import LocalProtocolError
from voipclient.net.hopctl import (
    C2S_PTYPES,
    HOP_CONTROL_LEN,
    HOP_PTYPES,
    PTYPE_BIND,
    PTYPE_BIND_CONFIRM,
    PTYPE_BIND_OK,
    PTYPE_CHALLENGE,
    PTYPE_PING,
    PTYPE_PONG,
    S2C_PTYPES,
    HopControl,
    decode_ping,
    decode_pong,
    encode_bind,
    encode_bind_confirm,
    encode_bind_ok,
    encode_challenge,
    encode_hop_control,
    encode_ping,
    encode_pong,
    open_hop_control,
    parse_hop_control,
)

K_C2S, K_S2C = derive_hop_keys(bytes(range(0x64, 0x84)))
C2S, S2C = HopMac(K_C2S), HopMac(K_S2C)
CHALLENGE = bytes(range(0xA0, 0xB0))
SID = 42


def all_kinds() -> list[tuple[bytes, int, HopMac]]:
    return [
        (encode_bind(C2S, SID, 0), PTYPE_BIND, C2S),
        (encode_challenge(S2C, SID, 1, CHALLENGE), PTYPE_CHALLENGE, S2C),
        (encode_bind_confirm(C2S, SID, 2, CHALLENGE), PTYPE_BIND_CONFIRM, C2S),
        (encode_bind_ok(S2C, SID, 3), PTYPE_BIND_OK, S2C),
        (encode_ping(C2S, SID, 4, 123_456_789_000), PTYPE_PING, C2S),
        (encode_pong(S2C, SID, 5, 123_456_789_000, 77), PTYPE_PONG, S2C),
    ]


def test_ptype_numbers_and_directions() -> None:
    assert (PTYPE_BIND, PTYPE_CHALLENGE, PTYPE_BIND_CONFIRM) == (0x10, 0x11, 0x12)
    assert (PTYPE_BIND_OK, PTYPE_PING, PTYPE_PONG) == (0x13, 0x14, 0x15)
    assert sorted(C2S_PTYPES) == [0x10, 0x12, 0x14]
    assert sorted(S2C_PTYPES) == [0x11, 0x13, 0x15]
    assert HOP_PTYPES == C2S_PTYPES | S2C_PTYPES


@pytest.mark.parametrize("index", range(6))
def test_layout_is_the_voice_header_then_16_bytes_then_the_mac(index: int) -> None:
    datagram, ptype, mac = all_kinds()[index]
    # Exactly 46 bytes, the smallest voice datagram: a reply is never larger than its request.
    assert len(datagram) == HOP_CONTROL_LEN == MIN_DATAGRAM_LEN == 46
    assert HEADER_STRUCT.unpack_from(datagram) == (1, ptype, 0, 0, SID, 0, index)
    header = parse_header(datagram)  # the voice parser routes it too
    assert header is not None and header.ptype == ptype and header.sender_id == SID
    assert mac.verify(datagram)
    assert datagram[-HOP_MAC_LEN:] == mac.mac(datagram[:36])
    other = S2C if mac is C2S else C2S
    assert not other.verify(datagram)  # a reflected datagram never verifies
    parsed = parse_hop_control(datagram)
    assert parsed == HopControl(ptype, SID, index, datagram[20:36])


def test_bodies() -> None:
    kinds = {ptype: datagram[20:36] for datagram, ptype, _ in all_kinds()}
    assert kinds[PTYPE_BIND] == bytes(16)
    assert kinds[PTYPE_BIND_OK] == bytes(16)
    assert kinds[PTYPE_CHALLENGE] == CHALLENGE
    assert kinds[PTYPE_BIND_CONFIRM] == CHALLENGE
    t = (123_456_789_000).to_bytes(8, "big")
    assert kinds[PTYPE_PING] == t + bytes(8)
    assert kinds[PTYPE_PONG] == t + (77).to_bytes(4, "big") + bytes(4)
    assert decode_ping(kinds[PTYPE_PING]) == 123_456_789_000
    assert decode_pong(kinds[PTYPE_PONG]) == (123_456_789_000, 77)


def test_pong_count_wraps_mod_2_32() -> None:
    body = encode_pong(S2C, SID, 0, 0, (1 << 32) + 5)[20:36]
    assert decode_pong(body) == (0, 5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_hop_control(C2S, 0x01, SID, 0, bytes(16)),  # voice ptype
        lambda: encode_hop_control(C2S, 0x16, SID, 0, bytes(16)),  # unassigned
        lambda: encode_hop_control(C2S, PTYPE_BIND, SID, 0, bytes(15)),
        lambda: encode_bind(C2S, SID, 1 << 32),
        lambda: encode_bind(C2S, SID, -1),
        lambda: encode_bind(C2S, 1 << 32, 0),
        lambda: encode_challenge(S2C, SID, 0, bytes(8)),
        lambda: encode_bind_confirm(C2S, SID, 0, bytes(17)),
        lambda: encode_ping(C2S, SID, 0, -1),
        lambda: encode_ping(C2S, SID, 0, 1 << 64),
        lambda: encode_pong(S2C, SID, 0, 1 << 64, 0),
        lambda: encode_pong(S2C, SID, 0, 0, -1),
    ],
)
def test_encoders_refuse_our_own_misuse(call: object) -> None:
    with pytest.raises(LocalProtocolError):
        call()  # type: ignore[operator]


def _remac(prefix: bytes, mac: HopMac = C2S) -> bytes:
    return mac.append(prefix)


@pytest.mark.parametrize(
    "datagram",
    [
        encode_bind(C2S, SID, 0)[:-1],  # 45 bytes
        encode_bind(C2S, SID, 0) + b"\x00",  # 47 bytes
        _remac(HEADER_STRUCT.pack(2, PTYPE_BIND, 0, 0, SID, 0, 0) + bytes(16)),  # version
        _remac(HEADER_STRUCT.pack(1, 0x01, 0, 0, SID, 0, 0) + bytes(16)),  # voice ptype
        _remac(HEADER_STRUCT.pack(1, 0x16, 0, 0, SID, 0, 0) + bytes(16)),  # unassigned
        _remac(HEADER_STRUCT.pack(1, 0x1F, 0, 0, SID, 0, 0) + bytes(16)),  # unassigned
        _remac(HEADER_STRUCT.pack(1, PTYPE_BIND, 1, 0, SID, 0, 0) + bytes(16)),  # step
        _remac(HEADER_STRUCT.pack(1, PTYPE_BIND, 0, 7, SID, 0, 0) + bytes(16)),  # channel
        _remac(HEADER_STRUCT.pack(1, PTYPE_BIND, 0, 0, SID, 3, 0) + bytes(16)),  # gen
        _remac(HEADER_STRUCT.pack(1, PTYPE_BIND, 0, 0, SID, 0, 0) + b"\x01" + bytes(15)),
        _remac(HEADER_STRUCT.pack(1, PTYPE_BIND_OK, 0, 0, SID, 0, 0) + bytes(15) + b"\x01"),
        _remac(HEADER_STRUCT.pack(1, PTYPE_PING, 0, 0, SID, 0, 0) + bytes(15) + b"\x01"),
        _remac(HEADER_STRUCT.pack(1, PTYPE_PONG, 0, 0, SID, 0, 0) + bytes(12) + b"\x01" + bytes(3)),
    ],
    ids=[
        "short",
        "long",
        "version",
        "voice-ptype",
        "ptype-0x16",
        "ptype-0x1f",
        "step",
        "channel",
        "gen",
        "bind-body",
        "bind-ok-body",
        "ping-reserved",
        "pong-reserved",
    ],
)
def test_parse_refuses_malformed(datagram: bytes) -> None:
    assert parse_hop_control(datagram) is None


def test_parse_keeps_reserved_free_parts() -> None:
    ping = _remac(HEADER_STRUCT.pack(1, PTYPE_PING, 0, 0, SID, 0, 9) + b"\xff" * 8 + bytes(8))
    assert parse_hop_control(ping) == HopControl(PTYPE_PING, SID, 9, b"\xff" * 8 + bytes(8))
    pong = _remac(HEADER_STRUCT.pack(1, PTYPE_PONG, 0, 0, SID, 0, 9) + b"\xff" * 12 + bytes(4))
    assert decode_pong(parse_hop_control(pong).body) == (2**64 - 1, 2**32 - 1)  # type: ignore[union-attr]


def test_open_hop_control_checks_mac_direction_and_replay() -> None:
    window = ReplayWindow()
    challenge = encode_challenge(S2C, SID, 0, CHALLENGE)
    # The client opens s2c datagrams with K_s2c only, and only the s2c ptypes.
    assert open_hop_control(challenge, C2S, window, ptypes=S2C_PTYPES) is None
    assert window.top == -1  # nothing moved
    bind_reflected = encode_bind(S2C, SID, 1)  # an s2c-MACed c2s ptype
    assert open_hop_control(bind_reflected, S2C, window, ptypes=S2C_PTYPES) is None
    assert window.top == -1
    opened = open_hop_control(challenge, S2C, window, ptypes=S2C_PTYPES)
    assert opened == HopControl(PTYPE_CHALLENGE, SID, 0, CHALLENGE)
    assert window.top == 0
    assert open_hop_control(challenge, S2C, window, ptypes=S2C_PTYPES) is None  # replay
    flipped = bytearray(encode_bind_ok(S2C, SID, 1))
    flipped[25] ^= 1
    assert open_hop_control(bytes(flipped), S2C, window) is None
    assert window.top == 0
    assert open_hop_control(encode_bind_ok(S2C, SID, 1), S2C, window) is not None
    assert open_hop_control(b"", S2C, window) is None


@given(st.binary(max_size=100))
def test_parse_never_raises(data: bytes) -> None:
    parsed = parse_hop_control(data)
    if parsed is not None:
        assert len(data) == 46 and parsed.ptype in HOP_PTYPES


@given(
    sid=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**32 - 1),
    t=st.integers(0, 2**64 - 1),
    n=st.integers(0, 2**32 - 1),
    challenge=st.binary(min_size=16, max_size=16),
)
def test_round_trip(sid: int, seq: int, t: int, n: int, challenge: bytes) -> None:
    ping = parse_hop_control(encode_ping(C2S, sid, seq, t))
    assert ping is not None and (ping.sender_id, ping.seq, decode_ping(ping.body)) == (sid, seq, t)
    pong = parse_hop_control(encode_pong(S2C, sid, seq, t, n))
    assert pong is not None and decode_pong(pong.body) == (t, n)
    confirm = parse_hop_control(encode_bind_confirm(C2S, sid, seq, challenge))
    assert confirm == HopControl(PTYPE_BIND_CONFIRM, sid, seq, challenge)
