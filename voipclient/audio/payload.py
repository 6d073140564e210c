"""The voice payload: the plaintext inside one voice datagram (PROTOCOL §3), pure.

PROTOCOL §3 fixes only the first field (``frame_no``); the rest is this module's design. Big-endian
throughout, no padding::

    off  len  field
    0    4    frame_no   u32: the sender's own frame counter, one step per frame of audio, one
                         counter for all channels it sends to (so a listener hearing the speaker in
                         two channels plays each frame once, and DTX gaps keep their timing)
    4    1    flags      u8: bits 0-2 = number of redundant copies R (0..MAX_REDUNDANT);
                         bits 3-7 reserved, sent as 0, a payload with any of them set is rejected
    5    2    len        u16: length of the primary Opus packet (1..)
    7    len  primary    the Opus packet of frame ``frame_no``
    then R times (loss-adaptive redundancy: copies of earlier frames, e.g. 2 and 4 back so
    that a burst of up to 3 lost datagrams is still recovered):
         1    distance   u8: this copy is frame ``frame_no - distance`` (mod 2^32), 1..255;
                         distances strictly increase within one payload
         2    len        u16: length of the copy (1..)
         len  packet     the Opus packet of that earlier frame

The whole payload is at most :data:`~voipclient.crypto.media.MAX_PAYLOAD_LEN` (1154) bytes and is
consumed exactly: trailing bytes make it malformed. An Opus packet is never empty (RFC 6716 §3:
at least the TOC byte), so a zero length is malformed too.

:func:`decode_payload` reads a peer's bytes and never raises: anything malformed is ``None`` (the
caller counts it and drops the datagram). :func:`encode_payload` is for our own frames and raises
:class:`~voipclient.errors.LocalProtocolError` on misuse (too big, bad distances).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from voipclient.crypto.media import MAX_PAYLOAD_LEN
from voipclient.errors import LocalProtocolError

__all__ = [
    "FRAME_NO_MODULUS",
    "HEADER_LEN",
    "MAX_DISTANCE",
    "MAX_REDUNDANT",
    "REDUNDANT_OVERHEAD",
    "VoicePayload",
    "decode_payload",
    "encode_payload",
    "encode_payload_fitting",
    "payload_len",
]

FRAME_NO_MODULUS: Final = 1 << 32
MAX_REDUNDANT: Final = 4  # copies of earlier frames per payload (flags bits 0-2 could say 7)
MAX_DISTANCE: Final = 255  # frames back (u8): 5.1 s at 20 ms frames
_COUNT_MASK: Final = 0x07
_RESERVED_MASK: Final = 0xF8

#: frame_no u32, flags u8, primary length u16
_HEADER: Final = struct.Struct(">IBH")
#: distance u8, length u16
_REDUNDANT: Final = struct.Struct(">BH")
HEADER_LEN: Final = _HEADER.size  # 7 bytes before the primary packet
REDUNDANT_OVERHEAD: Final = _REDUNDANT.size  # 3 bytes before each redundant copy


@dataclass(frozen=True, slots=True)
class VoicePayload:
    """One decoded voice payload.

    Fields: ``frame_no`` (u32, the sender's frame counter), ``opus`` (the primary Opus packet, the
    frame ``frame_no``), ``redundant`` (``(distance, packet)`` pairs, distance strictly increasing
    in 1..255: ``packet`` is frame ``frame_no - distance`` mod 2^32).
    """

    frame_no: int
    opus: bytes
    redundant: tuple[tuple[int, bytes], ...] = ()

    def frame_no_back(self, distance: int) -> int:
        """The frame number ``distance`` frames before this one (wraps modulo 2^32)."""
        return (self.frame_no - distance) % FRAME_NO_MODULUS


def payload_len(opus: bytes, redundant: Sequence[tuple[int, bytes]] = ()) -> int:
    """The encoded size in bytes of a payload with these packets."""
    return HEADER_LEN + len(opus) + sum(REDUNDANT_OVERHEAD + len(packet) for _, packet in redundant)


def encode_payload(
    frame_no: int, opus: bytes, redundant: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """Encode one payload: frame ``frame_no``'s Opus packet plus copies of earlier frames.

    ``redundant`` holds ``(distance, packet)`` pairs with distances strictly increasing in 1..255.
    Raises :class:`LocalProtocolError` if a field is out of range or the result would exceed
    ``MAX_PAYLOAD_LEN`` (see :func:`encode_payload_fitting` to drop copies instead).
    """
    if not 0 <= frame_no < FRAME_NO_MODULUS:
        raise LocalProtocolError(f"frame_no {frame_no} is not a u32", field="frame_no")
    if not opus:
        raise LocalProtocolError("an Opus packet is never empty", field="opus")
    if len(redundant) > MAX_REDUNDANT:
        raise LocalProtocolError(
            f"{len(redundant)} redundant copies, at most {MAX_REDUNDANT}", field="redundant"
        )
    total = payload_len(opus, redundant)
    if total > MAX_PAYLOAD_LEN:
        raise LocalProtocolError(
            f"payload of {total} bytes exceeds {MAX_PAYLOAD_LEN}", field="payload"
        )
    parts = [_HEADER.pack(frame_no, len(redundant), len(opus)), opus]
    previous = 0
    for distance, packet in redundant:
        if not previous < distance <= MAX_DISTANCE:
            raise LocalProtocolError(
                f"distance {distance} must be in 1..{MAX_DISTANCE} and above {previous}",
                field="redundant",
            )
        if not packet:
            raise LocalProtocolError("an Opus packet is never empty", field="redundant")
        previous = distance
        parts.append(_REDUNDANT.pack(distance, len(packet)))
        parts.append(packet)
    return b"".join(parts)


def encode_payload_fitting(
    frame_no: int, opus: bytes, redundant: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """Like :func:`encode_payload`, but drops the farthest copies (then all) until it fits.

    The primary packet alone always fits when it is at most ``MAX_PAYLOAD_LEN - 7`` bytes; a
    larger one still raises.
    """
    kept = list(redundant[:MAX_REDUNDANT])
    while kept and payload_len(opus, kept) > MAX_PAYLOAD_LEN:
        kept.pop()
    return encode_payload(frame_no, opus, kept)


def decode_payload(data: bytes | bytearray | memoryview) -> VoicePayload | None:
    """Decode a peer's payload; ``None`` if it is malformed in any way. Never raises."""
    size = len(data)
    if not HEADER_LEN < size <= MAX_PAYLOAD_LEN:
        return None
    view = memoryview(data)
    frame_no, flags, length = _HEADER.unpack_from(view, 0)
    count = flags & _COUNT_MASK
    if flags & _RESERVED_MASK or count > MAX_REDUNDANT or length == 0:
        return None
    pos = HEADER_LEN + length
    if pos > size:
        return None
    opus = bytes(view[HEADER_LEN:pos])
    copies: list[tuple[int, bytes]] = []
    previous = 0
    for _ in range(count):
        if pos + REDUNDANT_OVERHEAD > size:
            return None
        distance, length = _REDUNDANT.unpack_from(view, pos)
        pos += REDUNDANT_OVERHEAD
        if distance <= previous or length == 0 or pos + length > size:
            return None
        copies.append((distance, bytes(view[pos : pos + length])))
        pos += length
        previous = distance
    if pos != size:
        return None
    return VoicePayload(frame_no, opus, tuple(copies))
