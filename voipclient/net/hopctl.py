"""Hop-control datagrams: UDP address validation and UDP liveness between a client and the relay.

PROTOCOL §3 reserves ptypes 0x10-0x1F for hop control and leaves the layout to us ("design"). We
reuse the voice datagram's 20-byte header, so one parser (length, version, sender id, hop MAC)
routes both kinds, and the fixed 16-byte body makes every hop-control datagram exactly
:data:`HOP_CONTROL_LEN` = 46 bytes (the minimum voice datagram). A reply is therefore never larger
than its request: the relay can't be used to amplify traffic towards a spoofed source address.

Layout (big-endian)::

    off  len  field
    0    1    ver = 0x01
    1    1    ptype (0x10..0x15, below)
    2    2    step = 0
    4    4    channel_id = 0
    8    4    sender_id (the session)
    12   4    gen = 0
    16   4    seq: per session and direction, counts from 0, replay-checked by the receiver
    20   16   body (per ptype, below)
    36   10   hop MAC: HMAC-SHA256(K_c2s or K_s2c, bytes[0:36])[:10]

    ptype  name          dir  body
    0x10   BIND          c2s  16 zero bytes
    0x11   CHALLENGE     s2c  16 random bytes
    0x12   BIND_CONFIRM  c2s  the challenge, echoed
    0x13   BIND_OK       s2c  16 zero bytes
    0x14   PING          c2s  client_time_ms u64 ‖ 8 zero bytes
    0x15   PONG          s2c  client_time_ms u64 (echoed) ‖ received u32 ‖ 4 zero bytes

``received`` (PONG) is the number of hop-MAC-valid UDP datagrams the relay got from the session,
modulo 2^32. A c2s datagram carries the MAC under K_c2s and an s2c one under K_s2c, so a datagram
reflected back at its sender never verifies.

Receivers verify the MAC first (:meth:`HopMac.verify`), then :func:`parse_hop_control`, then the
session's hop-control :class:`~voipclient.crypto.replay.ReplayWindow` on ``seq`` (separate from the
voice windows); :func:`open_hop_control` does the three in that order. Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from voipclient.crypto.hop import HOP_MAC_LEN, HopMac
from voipclient.crypto.media import HEADER_LEN, HEADER_STRUCT, VERSION
from voipclient.crypto.replay import ReplayWindow
from voipclient.errors import LocalProtocolError

PTYPE_BIND: Final = 0x10
PTYPE_CHALLENGE: Final = 0x11
PTYPE_BIND_CONFIRM: Final = 0x12
PTYPE_BIND_OK: Final = 0x13
PTYPE_PING: Final = 0x14
PTYPE_PONG: Final = 0x15

#: Sent by the client, MACed under K_c2s.
C2S_PTYPES: Final = frozenset((PTYPE_BIND, PTYPE_BIND_CONFIRM, PTYPE_PING))
#: Sent by the relay, MACed under K_s2c.
S2C_PTYPES: Final = frozenset((PTYPE_CHALLENGE, PTYPE_BIND_OK, PTYPE_PONG))
HOP_PTYPES: Final = C2S_PTYPES | S2C_PTYPES

HOP_BODY_LEN: Final = 16  # bytes
CHALLENGE_LEN: Final = HOP_BODY_LEN  # 16 random bytes
#: Every hop-control datagram, either direction: 20 + 16 + 10 = 46 bytes.
HOP_CONTROL_LEN: Final = HEADER_LEN + HOP_BODY_LEN + HOP_MAC_LEN
SEQ_LIMIT: Final = 1 << 32  # seq is a u32 and never wraps within a session
_U64_LIMIT: Final = 1 << 64

_ZERO_BODY: Final = bytes(HOP_BODY_LEN)
_PING_BODY: Final = struct.Struct(">Q8x")  # client_time_ms, 8 reserved zero bytes
_PONG_BODY: Final = struct.Struct(">QI4x")  # client_time_ms, received, 4 reserved zero bytes
_PING_RESERVED: Final = slice(8, 16)
_PONG_RESERVED: Final = slice(12, 16)


class HopControl(NamedTuple):
    """A parsed hop-control datagram (its MAC was verified by the caller)."""

    ptype: int  # one of HOP_PTYPES
    sender_id: int  # u32, the session
    seq: int  # u32, per session and direction
    body: bytes  # 16 bytes, meaning per ptype


def encode_hop_control(hop: HopMac, ptype: int, sender_id: int, seq: int, body: bytes) -> bytes:
    """Header ‖ 16-byte body ‖ hop MAC under ``hop`` (K_c2s for c2s ptypes, K_s2c for s2c).

    Raises :class:`LocalProtocolError` for an unknown ptype, a body that is not 16 bytes, or a
    sender id / seq outside u32.
    """
    if ptype not in HOP_PTYPES:
        raise LocalProtocolError(f"not a hop-control ptype: 0x{ptype:02x}", field="ptype")
    if len(body) != HOP_BODY_LEN:
        raise LocalProtocolError(f"hop-control body must be {HOP_BODY_LEN} bytes", field="body")
    if not 0 <= sender_id < SEQ_LIMIT:
        raise LocalProtocolError(f"sender_id {sender_id} does not fit in a u32", field="sender_id")
    if not 0 <= seq < SEQ_LIMIT:
        raise LocalProtocolError(f"seq {seq} does not fit in a u32", field="seq")
    return hop.append(HEADER_STRUCT.pack(VERSION, ptype, 0, 0, sender_id, 0, seq) + body)


def encode_bind(hop_c2s: HopMac, sender_id: int, seq: int) -> bytes:
    """BIND (client → relay): bind my session to the source address this arrives from."""
    return encode_hop_control(hop_c2s, PTYPE_BIND, sender_id, seq, _ZERO_BODY)


def encode_challenge(hop_s2c: HopMac, sender_id: int, seq: int, challenge: bytes) -> bytes:
    """CHALLENGE (relay → the BIND's source address): 16 fresh random bytes to echo."""
    if len(challenge) != CHALLENGE_LEN:
        raise LocalProtocolError(f"challenge must be {CHALLENGE_LEN} bytes", field="challenge")
    return encode_hop_control(hop_s2c, PTYPE_CHALLENGE, sender_id, seq, challenge)


def encode_bind_confirm(hop_c2s: HopMac, sender_id: int, seq: int, challenge: bytes) -> bytes:
    """BIND_CONFIRM (client → relay): echoes the challenge from the address being validated."""
    if len(challenge) != CHALLENGE_LEN:
        raise LocalProtocolError(f"challenge must be {CHALLENGE_LEN} bytes", field="challenge")
    return encode_hop_control(hop_c2s, PTYPE_BIND_CONFIRM, sender_id, seq, challenge)


def encode_bind_ok(hop_s2c: HopMac, sender_id: int, seq: int) -> bytes:
    """BIND_OK (relay → the newly validated address): UDP works in both directions."""
    return encode_hop_control(hop_s2c, PTYPE_BIND_OK, sender_id, seq, _ZERO_BODY)


def encode_ping(hop_c2s: HopMac, sender_id: int, seq: int, client_time_ms: int) -> bytes:
    """PING (client → relay, from its validated address): ``client_time_ms`` is a u64."""
    if not 0 <= client_time_ms < _U64_LIMIT:
        raise LocalProtocolError("client_time_ms does not fit in a u64", field="client_time_ms")
    return encode_hop_control(hop_c2s, PTYPE_PING, sender_id, seq, _PING_BODY.pack(client_time_ms))


def encode_pong(
    hop_s2c: HopMac, sender_id: int, seq: int, client_time_ms: int, received: int
) -> bytes:
    """PONG (relay → validated address): the PING's time echoed and ``received`` mod 2^32."""
    if not 0 <= client_time_ms < _U64_LIMIT:
        raise LocalProtocolError("client_time_ms does not fit in a u64", field="client_time_ms")
    if received < 0:
        raise LocalProtocolError("received must be >= 0", field="received")
    body = _PONG_BODY.pack(client_time_ms, received & 0xFFFFFFFF)
    return encode_hop_control(hop_s2c, PTYPE_PONG, sender_id, seq, body)


def parse_hop_control(datagram: bytes) -> HopControl | None:
    """Decode a hop-control datagram whose hop MAC the caller verified; ``None`` if malformed.

    Refuses (``None``): any length other than 46, ver != 1, a ptype outside 0x10..0x15, non-zero
    step/channel_id/gen, and non-zero reserved body bytes (BIND, BIND_OK: all 16; PING: the last
    8; PONG: the last 4). Never raises.
    """
    if len(datagram) != HOP_CONTROL_LEN:
        return None
    ver, ptype, step, channel_id, sender_id, gen, seq = HEADER_STRUCT.unpack_from(datagram)
    if ver != VERSION or ptype not in HOP_PTYPES or step or channel_id or gen:
        return None
    body = datagram[HEADER_LEN : HEADER_LEN + HOP_BODY_LEN]
    if ptype in (PTYPE_BIND, PTYPE_BIND_OK):
        if body != _ZERO_BODY:
            return None
    elif ptype == PTYPE_PING:
        if any(body[_PING_RESERVED]):
            return None
    elif ptype == PTYPE_PONG and any(body[_PONG_RESERVED]):
        return None
    return HopControl(ptype, sender_id, seq, body)


def decode_ping(body: bytes) -> int:
    """``client_time_ms`` of a PING body (as returned by :func:`parse_hop_control`)."""
    (client_time_ms,) = _PING_BODY.unpack(body)
    return int(client_time_ms)


def decode_pong(body: bytes) -> tuple[int, int]:
    """``(client_time_ms, received)`` of a PONG body."""
    client_time_ms, received = _PONG_BODY.unpack(body)
    return int(client_time_ms), int(received)


def open_hop_control(
    datagram: bytes, hop: HopMac, window: ReplayWindow, *, ptypes: frozenset[int] = HOP_PTYPES
) -> HopControl | None:
    """MAC under ``hop`` → :func:`parse_hop_control` → ``ptype in ptypes`` → seq new to ``window``.

    For a receiver that needs no per-reason counts (the client: pass its K_s2c, its s2c window and
    ``ptypes=S2C_PTYPES``). The window is updated only when everything passed. Never raises.
    """
    if len(datagram) != HOP_CONTROL_LEN or not hop.verify(datagram):
        return None
    msg = parse_hop_control(datagram)
    if msg is None or msg.ptype not in ptypes or not window.check(msg.seq):
        return None
    window.update(msg.seq)
    return msg
