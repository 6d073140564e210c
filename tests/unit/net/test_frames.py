"""Control framing: u32 length prefix, limits, arbitrary chunking, hostile input."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net.frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from voipclient.net.messages import ErrorCode


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_default_limit_is_64_kib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 65536
    assert len(encode_frame(b"x" * 65536)) == 65540
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"x" * 65537)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_encode_empty_is_local_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"")
    assert info.value.code == ErrorCode.FRAME_EMPTY


def test_configurable_limit() -> None:
    assert encode_frame(b"12345", max_size=5)
    with pytest.raises(LocalProtocolError):
        encode_frame(b"123456", max_size=5)
    dec = FrameDecoder(max_size=5)
    assert dec.feed(encode_frame(b"12345")) == [b"12345"]
    with pytest.raises(RemoteProtocolError):
        dec.feed(struct.pack(">I", 6))


def test_partial_and_coalesced() -> None:
    dec = FrameDecoder()
    wire = encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"three")
    assert dec.feed(wire[:2]) == []
    assert dec.feed(wire[2:9]) == [b"one"]
    assert dec.buffered == 2
    assert dec.feed(wire[9:]) == [b"two", b"three"]
    assert dec.buffered == 0


def test_oversize_rejected_from_header_alone() -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        dec.feed(struct.pack(">I", DEFAULT_MAX_FRAME_SIZE + 1))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert info.value.field == "length"
    # The stream is dead: later input raises again instead of resynchronising on garbage.
    with pytest.raises(RemoteProtocolError):
        dec.feed(encode_frame(b"ok"))


def test_zero_length_rejected() -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        dec.feed(encode_frame(b"a") + b"\x00\x00\x00\x00")
    assert info.value.code == ErrorCode.FRAME_EMPTY


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_round_trip_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    dec = FrameDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(wire[a:b])
    assert out == payloads
    assert dec.buffered == 0


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_bytes_raise_only_remote_errors(chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_size=1000)
    for chunk in chunks:
        try:
            for frame in dec.feed(chunk):
                assert 1 <= len(frame) <= 1000
        except RemoteProtocolError as exc:
            assert exc.code in (ErrorCode.FRAME_TOO_LARGE, ErrorCode.FRAME_EMPTY)
            return
