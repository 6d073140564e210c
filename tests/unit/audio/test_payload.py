"""The voice payload codec: layout, round trip, limits, and never raising on a peer's bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.audio.payload import (
    HEADER_LEN,
    MAX_REDUNDANT,
    REDUNDANT_OVERHEAD,
    VoicePayload,
    decode_payload,
    encode_payload,
    encode_payload_fitting,
    payload_len,
)
from voipclient.crypto.media import MAX_PAYLOAD_LEN
from voipclient.errors import LocalProtocolError

packets = st.binary(min_size=1, max_size=120)


@st.composite
def payloads(draw: st.DrawFn) -> VoicePayload:
    frame_no = draw(st.integers(0, 2**32 - 1))
    opus = draw(packets)
    distances = sorted(draw(st.sets(st.integers(1, 255), max_size=MAX_REDUNDANT)))
    redundant = tuple((d, draw(packets)) for d in distances)
    return VoicePayload(frame_no, opus, redundant)


@given(payloads())
def test_round_trip(p: VoicePayload) -> None:
    data = encode_payload(p.frame_no, p.opus, p.redundant)
    assert len(data) == payload_len(p.opus, p.redundant) <= MAX_PAYLOAD_LEN
    assert decode_payload(data) == p
    assert decode_payload(bytearray(data)) == p
    assert decode_payload(memoryview(data)) == p


@given(st.binary(max_size=MAX_PAYLOAD_LEN + 10))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    p = decode_payload(data)
    if p is not None:  # whatever decodes re-encodes to the same bytes (one canonical form)
        assert encode_payload(p.frame_no, p.opus, p.redundant) == data


@given(payloads(), st.data())
def test_every_truncation_and_extension_is_rejected(p: VoicePayload, data: st.DataObject) -> None:
    encoded = encode_payload(p.frame_no, p.opus, p.redundant)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert decode_payload(encoded[:cut]) is None
    assert decode_payload(encoded + data.draw(st.binary(min_size=1, max_size=8))) is None


def test_layout_is_as_documented() -> None:
    data = encode_payload(0x01020304, b"\xaa\xbb", [(2, b"\xcc"), (4, b"\xdd\xee")])
    assert data == (
        b"\x01\x02\x03\x04"  # frame_no
        b"\x02"  # flags: two redundant copies
        b"\x00\x02\xaa\xbb"  # primary
        b"\x02\x00\x01\xcc"  # 2 back
        b"\x04\x00\x02\xdd\xee"  # 4 back
    )
    p = decode_payload(data)
    assert p is not None
    assert p.frame_no_back(4) == 0x01020300
    assert VoicePayload(1, b"x").frame_no_back(2) == 2**32 - 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x01\x00\x00\x00",  # empty primary
        b"\x00\x00\x00\x01\x08\x00\x01\xaa",  # reserved flag bit
        b"\x00\x00\x00\x01\x05\x00\x01\xaa",  # more copies than MAX_REDUNDANT
        b"\x00\x00\x00\x01\x01\x00\x01\xaa\x00\x00\x01\xbb",  # distance 0
        b"\x00\x00\x00\x01\x02\x00\x01\xaa\x02\x00\x01\xbb\x02\x00\x01\xcc",  # distances repeat
        b"\x00\x00\x00\x01\x02\x00\x01\xaa\x04\x00\x01\xbb\x02\x00\x01\xcc",  # not increasing
        b"\x00\x00\x00\x01\x01\x00\x01\xaa\x02\x00\x00",  # empty copy
        b"\x00\x00\x00\x01\x00\xff\xff\xaa",  # length beyond the end
    ],
)
def test_malformed_is_none(data: bytes) -> None:
    assert decode_payload(data) is None


def test_size_limit() -> None:
    biggest = b"x" * (MAX_PAYLOAD_LEN - HEADER_LEN)
    assert len(encode_payload(7, biggest)) == MAX_PAYLOAD_LEN
    with pytest.raises(LocalProtocolError):
        encode_payload(7, biggest + b"x")
    over = struct.pack(">IBH", 7, 0, len(biggest) + 1) + biggest + b"x"
    assert decode_payload(over) is None


@pytest.mark.parametrize(
    ("frame_no", "opus", "redundant"),
    [
        (-1, b"x", ()),
        (2**32, b"x", ()),
        (1, b"", ()),
        (1, b"x", [(0, b"y")]),
        (1, b"x", [(256, b"y")]),
        (1, b"x", [(3, b"y"), (2, b"z")]),
        (1, b"x", [(2, b"")]),
        (1, b"x", [(d, b"y") for d in range(1, MAX_REDUNDANT + 2)]),
    ],
)
def test_encode_misuse_raises(
    frame_no: int, opus: bytes, redundant: list[tuple[int, bytes]]
) -> None:
    with pytest.raises(LocalProtocolError):
        encode_payload(frame_no, opus, redundant)


def test_fitting_drops_the_farthest_copies_first() -> None:
    opus = b"p" * 400
    copies = [(2, b"a" * 400), (4, b"b" * 400)]
    data = encode_payload_fitting(9, opus, copies)
    assert len(data) == HEADER_LEN + 400 + REDUNDANT_OVERHEAD + 400
    assert decode_payload(data) == VoicePayload(9, opus, ((2, b"a" * 400),))
    assert decode_payload(encode_payload_fitting(9, b"p" * 1100, copies)) == VoicePayload(
        9, b"p" * 1100
    )
