"""KeyDist: a sender's base key ``S`` for one (channel, gen, step), sealed to each recipient's SK.

PROTOCOL §2. One KeyDist message (a *batch*) has this layout (integers big-endian)::

    off     len    field
    0       1      ver = 0x01
    1       1      kind: 1 new generation, 2 catch-up for a joiner
    2       4      channel_id
    6       4      sender_id
    10      4      gen
    14      2      step
    16      8      created_ms                      -- bytes[0:24] are the "fixed part"
    24      32     commitment = SHA-256("vc1 commit" ‖ channel u32 ‖ sender u32 ‖ gen u32 ‖
                                        step u16 ‖ S)
    56      32     text signing public key of this generation (Ed25519)
    88      2      n = number of recipients in this batch (1..)
    90      44·n   recipient table, per recipient:
                     recipient_id u32 ‖ sk_id (8) ‖ env_hash = SHA-256(that recipient's envelope)
    B=90+44n 64    signature = Ed25519(IK of sender, "vc1 keydist" ‖ bytes[0:B])   -- body = [0:B]
    B+64    2      m = number of envelopes carried (1..n)
    B+66    1202·m carried envelopes, indexes strictly increasing:
                     index u16 (row in the recipient table) ‖ HPKE ciphertext (1200)

Envelope (1200 bytes) = ``HPKE.Seal(SK pub of recipient, info = "vc1 keydist" ‖ fixed part ‖
recipient_id u32 ‖ sk_id ‖ commitment, pt = S)``, suite MLKEM768_X25519 / HKDF_SHA256 / AES_256_GCM.

Why the table of envelope hashes: the relay delivers each envelope only to its recipient
(:func:`split_for_recipients` keeps the signed body and the one envelope, 156 + 44·n + 1202
bytes) while every recipient still verifies one signature over the whole batch, including every
other recipient's (recipient_id, sk_id, envelope hash) and the single commitment.

Batching: :func:`build_keydists` puts at most ``(max_bytes - 156) // 1246`` recipients in one
message (48 for the default 60,000 bytes, under a 64 KiB control frame), and never more than
:data:`MAX_RECIPIENTS`; each batch is a complete, separately signed message with the same fixed
part and commitment.

Bounds: every message has 1 ≤ n ≤ :data:`MAX_RECIPIENTS` (64, the most recipients one control
message may name) table rows. What a client sends the relay is a *full batch*, m = n
(:func:`split_batch` checks it); only the relay's per-recipient parts carry m = 1 < n. A table
bigger than the envelopes it comes with would be pure amplification: the relay copies the
whole table into every recipient's part.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hpke

from voipclient.crypto.identity import SIGNATURE_LEN, SigningKey, verify_signature
from voipclient.crypto.session import (
    SK_ID_LEN,
    HpkeOpenFailed,
    SessionCertificate,
    SessionKemKey,
    hpke_ciphertext_len,
    hpke_seal,
    parse_session_public_key,
    sk_id,
)
from voipclient.crypto.sframe import BASE_KEY_LEN
from voipclient.errors import LocalProtocolError, RemoteProtocolError

VERSION: Final = 1
LABEL: Final = b"vc1 keydist"
COMMIT_LABEL: Final = b"vc1 commit"
FIXED_LEN: Final = 24  # bytes: ver, kind, channel, sender, gen, step, created_ms
COMMITMENT_LEN: Final = 32  # bytes: SHA-256
TEXT_KEY_LEN: Final = 32  # bytes: Ed25519 public key
TABLE_OFFSET: Final = FIXED_LEN + COMMITMENT_LEN + TEXT_KEY_LEN + 2  # 90
ENTRY_LEN: Final = 4 + SK_ID_LEN + 32  # 44 bytes: recipient_id, sk_id, env_hash
ENVELOPE_LEN: Final = hpke_ciphertext_len(BASE_KEY_LEN)  # 1200 bytes
CARRIED_LEN: Final = 2 + ENVELOPE_LEN  # 1202 bytes: index u16 ‖ envelope
OVERHEAD: Final = TABLE_OFFSET + SIGNATURE_LEN + 2  # 156 bytes around table and envelopes
PER_RECIPIENT: Final = ENTRY_LEN + CARRIED_LEN  # 1246 bytes in a full batch
DEFAULT_MAX_BYTES: Final = 60_000  # one control frame must stay under 64 KiB
MAX_U16: Final = 0xFFFF
#: Most rows a recipient table may have (= ``voipclient.net.messages.MAX_RECIPIENTS``, the most
#: recipients one KeyDist control message may name).
MAX_RECIPIENTS: Final = 64

_FIXED: Final = struct.Struct(">BBIIIHQ")
_ENTRY_HEAD: Final = struct.Struct(">I8s")
_U16: Final = struct.Struct(">H")


class KeyDistKind(enum.IntEnum):
    NEW_GENERATION = 1
    CATCH_UP = 2


class KeyDistRejectReason(enum.Enum):
    """Why :func:`open_keydist` refused a message, in the order the rules are checked."""

    UNKNOWN_SENDER = "sender unknown or blocked by TOFU"
    MALFORMED = "malformed message"
    UNSUPPORTED_VERSION = "unsupported version"
    BAD_SIGNATURE = "signature does not verify"
    NOT_FOR_ME = "no envelope for my sender_id"
    STALE_SK_ID = "envelope is for another (old) session key of mine"
    ROLLBACK = "(gen, step) is not newer than the last accepted"
    HPKE_FAILED = "envelope does not open"
    COMMITMENT_MISMATCH = "base key does not match the commitment"


class KeyDistRejected(RemoteProtocolError):
    """A KeyDist message was refused; ``reason`` says which accept rule failed."""

    def __init__(self, reason: KeyDistRejectReason, detail: str = "") -> None:
        text = f"KeyDist rejected: {reason.value}" + (f" ({detail})" if detail else "")
        super().__init__(text, field="keydist")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KeyDistRecipient:
    """One recipient: its server-assigned sender_id and its SK public bytes (1216)."""

    recipient_id: int
    sk_pub: bytes

    @classmethod
    def from_certificate(cls, skc: SessionCertificate) -> KeyDistRecipient:
        """From a *verified* session certificate."""
        return cls(skc.sender_id, skc.sk_pub)


@dataclass(frozen=True, slots=True)
class KeyDistHeader:
    """The cleartext routing part of a KeyDist message (nothing here is verified)."""

    kind: int
    channel_id: int
    sender_id: int
    gen: int
    step: int
    created_ms: int
    recipients: tuple[int, ...]  # recipient_ids of the table, in order


@dataclass(frozen=True, slots=True)
class AcceptedKey:
    """A base key accepted from a KeyDist. ``base_key`` is ``S`` at ``step`` (hidden in repr)."""

    channel_id: int
    sender_id: int
    gen: int
    step: int
    base_key: bytes = field(repr=False)
    text_signing_pub: bytes
    kind: KeyDistKind
    created_ms: int
    commitment: bytes


def commitment(channel_id: int, sender_id: int, gen: int, step: int, base_key: bytes) -> bytes:
    """``SHA-256("vc1 commit" ‖ channel u32 ‖ sender u32 ‖ gen u32 ‖ step u16 ‖ S)``."""
    return hashlib.sha256(
        COMMIT_LABEL + struct.pack(">IIIH", channel_id, sender_id, gen, step) + base_key
    ).digest()


def envelope_info(fixed: bytes, recipient_id: int, recipient_sk_id: bytes, commit: bytes) -> bytes:
    """HPKE info: ``"vc1 keydist" ‖ fixed part ‖ recipient_id u32 ‖ sk_id ‖ commitment``."""
    return LABEL + fixed + recipient_id.to_bytes(4, "big") + recipient_sk_id + commit


def batch_size(max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """How many recipients fit in one full message of at most ``max_bytes``."""
    return (max_bytes - OVERHEAD) // PER_RECIPIENT


def message_size(n: int, carried: int | None = None) -> int:
    """Size of a message with ``n`` table rows carrying ``carried`` (default ``n``) envelopes."""
    m = n if carried is None else carried
    return OVERHEAD + ENTRY_LEN * n + CARRIED_LEN * m


def _check_int(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise LocalProtocolError(f"{name} must be a u{bits}, got {value!r}")


def build_keydists(
    ik: SigningKey,
    *,
    kind: KeyDistKind,
    channel_id: int,
    sender_id: int,
    gen: int,
    step: int,
    created_ms: int,
    base_key: bytes,
    text_signing_pub: bytes,
    recipients: Iterable[KeyDistRecipient],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[bytes]:
    """Seal ``base_key`` (S at ``step``) to every recipient; one signed message per batch.

    Returns ``[]`` for no recipients. Our own bad arguments raise :class:`LocalProtocolError`;
    a recipient SK that cannot be sealed to raises
    :class:`~voipclient.crypto.session.InvalidSessionKey` naming the recipient (verify
    certificates with :class:`SessionCertificate` first and this cannot happen).
    """
    try:
        kind = KeyDistKind(kind)
    except ValueError:
        raise LocalProtocolError(f"kind must be 1 or 2, got {kind!r}") from None
    _check_int("channel_id", channel_id, 32)
    _check_int("sender_id", sender_id, 32)
    _check_int("gen", gen, 32)
    _check_int("step", step, 16)
    _check_int("created_ms", created_ms, 64)
    if not isinstance(base_key, bytes) or len(base_key) != BASE_KEY_LEN:
        raise LocalProtocolError(f"base_key must be {BASE_KEY_LEN} bytes")
    if not isinstance(text_signing_pub, bytes) or len(text_signing_pub) != TEXT_KEY_LEN:
        raise LocalProtocolError(f"text_signing_pub must be {TEXT_KEY_LEN} bytes")
    per_batch = min(batch_size(max_bytes), MAX_RECIPIENTS)
    if per_batch < 1:
        raise LocalProtocolError(f"max_bytes={max_bytes} cannot hold one recipient")
    rcpts = list(recipients)
    seen: set[int] = set()
    for r in rcpts:
        _check_int("recipient_id", r.recipient_id, 32)
        if r.recipient_id in seen:
            raise LocalProtocolError(f"recipient {r.recipient_id} listed twice")
        seen.add(r.recipient_id)

    fixed = _FIXED.pack(VERSION, kind, channel_id, sender_id, gen, step, created_ms)
    commit = commitment(channel_id, sender_id, gen, step, base_key)
    head = fixed + commit + text_signing_pub
    out: list[bytes] = []
    for start in range(0, len(rcpts), per_batch):
        batch = rcpts[start : start + per_batch]
        table = bytearray()
        carried = bytearray()
        for index, r in enumerate(batch):
            try:
                pub: hpke.MLKEM768X25519PublicKey = parse_session_public_key(r.sk_pub)
                rid = sk_id(r.sk_pub)
                env = hpke_seal(pub, base_key, envelope_info(fixed, r.recipient_id, rid, commit))
            except RemoteProtocolError as exc:
                raise type(exc)(
                    f"recipient {r.recipient_id}: {exc.message}", field="recipient_id"
                ) from None
            table += _ENTRY_HEAD.pack(r.recipient_id, rid) + hashlib.sha256(env).digest()
            carried += _U16.pack(index) + env
        body = head + _U16.pack(len(batch)) + bytes(table)
        signature = ik.sign(LABEL + body)
        out.append(body + signature + _U16.pack(len(batch)) + bytes(carried))
    return out


@dataclass(frozen=True, slots=True)
class _Parsed:
    fixed: bytes
    kind: int
    channel_id: int
    sender_id: int
    gen: int
    step: int
    created_ms: int
    commitment: bytes
    text_signing_pub: bytes
    entries: tuple[tuple[int, bytes, bytes], ...]  # (recipient_id, sk_id, env_hash)
    body: bytes
    signature: bytes
    envelopes: Mapping[int, bytes]  # table index -> envelope


def _parse(blob: bytes) -> _Parsed:
    """Structural parse; raises only :class:`KeyDistRejected` (MALFORMED/UNSUPPORTED_VERSION)."""
    bad = KeyDistRejectReason.MALFORMED
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise KeyDistRejected(bad, "not bytes")
    data = bytes(blob)
    if len(data) < TABLE_OFFSET:
        raise KeyDistRejected(bad, "too short")
    ver, kind, channel, sender, gen, step, created = _FIXED.unpack_from(data, 0)
    if ver != VERSION:
        raise KeyDistRejected(KeyDistRejectReason.UNSUPPORTED_VERSION, f"ver={ver}")
    if kind not in (KeyDistKind.NEW_GENERATION, KeyDistKind.CATCH_UP):
        raise KeyDistRejected(bad, f"kind={kind}")
    (n,) = _U16.unpack_from(data, TABLE_OFFSET - 2)
    body_end = TABLE_OFFSET + ENTRY_LEN * n
    if not 1 <= n <= MAX_RECIPIENTS or len(data) < body_end + SIGNATURE_LEN + 2:
        raise KeyDistRejected(bad, "bad recipient count")
    (m,) = _U16.unpack_from(data, body_end + SIGNATURE_LEN)
    if not 1 <= m <= n or len(data) != message_size(n, m):
        raise KeyDistRejected(bad, "bad length")
    entries: list[tuple[int, bytes, bytes]] = []
    ids: set[int] = set()
    for i in range(n):
        off = TABLE_OFFSET + ENTRY_LEN * i
        rid, skid = _ENTRY_HEAD.unpack_from(data, off)
        if rid in ids:
            raise KeyDistRejected(bad, f"recipient {rid} listed twice")
        ids.add(rid)
        entries.append((rid, skid, data[off + 4 + SK_ID_LEN : off + ENTRY_LEN]))
    envelopes: dict[int, bytes] = {}
    off = body_end + SIGNATURE_LEN + 2
    last = -1
    for _ in range(m):
        (index,) = _U16.unpack_from(data, off)
        if not last < index < n:
            raise KeyDistRejected(bad, "envelope indexes must increase and be < n")
        last = index
        envelopes[index] = data[off + 2 : off + CARRIED_LEN]
        off += CARRIED_LEN
    return _Parsed(
        fixed=data[:FIXED_LEN],
        kind=kind,
        channel_id=channel,
        sender_id=sender,
        gen=gen,
        step=step,
        created_ms=created,
        commitment=data[FIXED_LEN : FIXED_LEN + COMMITMENT_LEN],
        text_signing_pub=data[FIXED_LEN + COMMITMENT_LEN : TABLE_OFFSET - 2],
        entries=tuple(entries),
        body=data[:body_end],
        signature=data[body_end : body_end + SIGNATURE_LEN],
        envelopes=envelopes,
    )


def parse_keydist_header(blob: bytes) -> KeyDistHeader:
    """Cheap cleartext parse (no signature check, no decryption): for routing and for looking
    up the sender's IK and last accepted (gen, step). Raises only :class:`KeyDistRejected`."""
    return _header(_parse(blob))


def _header(p: _Parsed) -> KeyDistHeader:
    return KeyDistHeader(
        kind=p.kind,
        channel_id=p.channel_id,
        sender_id=p.sender_id,
        gen=p.gen,
        step=p.step,
        created_ms=p.created_ms,
        recipients=tuple(e[0] for e in p.entries),
    )


def recipients_of(blob: bytes) -> tuple[int, ...]:
    """The recipient_ids whose envelopes this message carries (what a relay routes on)."""
    p = _parse(blob)
    return tuple(p.entries[i][0] for i in p.envelopes)


def split_for_recipients(blob: bytes) -> dict[int, bytes]:
    """Relay side: one message per carried envelope, holding the signed body and only that
    recipient's envelope, so each envelope goes only to its recipient. Raises only
    :class:`KeyDistRejected` (MALFORMED); the relay does not verify the signature.

    This accepts any well-formed message; a relay takes what a client sends through
    :func:`split_batch`, which also insists on a full batch."""
    return _split(_parse(blob))


def split_batch(blob: bytes) -> tuple[KeyDistHeader, dict[int, bytes]]:
    """Relay side, for what a client sends: the header and :func:`split_for_recipients`'s
    parts of a *full batch* — one envelope carried for every table row (m = n, so at most
    :data:`MAX_RECIPIENTS`). Anything else raises :class:`KeyDistRejected` (MALFORMED): a
    table longer than the envelopes carried would be copied whole into every part, so a
    sender could make the relay send many times what it received."""
    p = _parse(blob)
    if len(p.envelopes) != len(p.entries):
        raise KeyDistRejected(
            KeyDistRejectReason.MALFORMED,
            f"a batch must carry every envelope ({len(p.envelopes)} of {len(p.entries)})",
        )
    return _header(p), _split(p)


def _split(p: _Parsed) -> dict[int, bytes]:
    signed = p.body + p.signature + _U16.pack(1)
    return {
        p.entries[i][0]: signed + _U16.pack(i) + envelope for i, envelope in p.envelopes.items()
    }


def open_keydist(
    blob: bytes,
    *,
    sender_ik_pub: bytes | None,
    my_sender_id: int,
    my_session_key: SessionKemKey,
    last_accepted: tuple[int, int] | None,
    now_ms: int,
) -> AcceptedKey:
    """Accept a KeyDist or raise :class:`KeyDistRejected`, checking PROTOCOL §2 in order:

    1. the sender is known and not TOFU-blocked (``sender_ik_pub`` is its IK, ``None`` if not);
    2. the message is well formed and the IK signature verifies;
    3. a table row names my sender_id (else NOT_FOR_ME) with my current sk_id (else
       STALE_SK_ID), its envelope is carried and matches the signed envelope hash;
    4. (gen, step) is strictly newer than ``last_accepted`` from this sender in this channel
       (look it up with :func:`parse_keydist_header` first);
    5. HPKE opens; 6. the opened S matches the commitment.

    ``now_ms`` is reserved for freshness policy; ``created_ms`` is returned, not judged.
    """
    del now_ms  # accepted for API stability; rollback protection does not need a clock
    if sender_ik_pub is None:
        raise KeyDistRejected(KeyDistRejectReason.UNKNOWN_SENDER)
    if my_session_key.wiped:
        raise LocalProtocolError("open_keydist needs a live session key")
    p = _parse(blob)
    if not verify_signature(sender_ik_pub, p.signature, LABEL + p.body):
        raise KeyDistRejected(KeyDistRejectReason.BAD_SIGNATURE)

    mine = [(i, e) for i, e in enumerate(p.entries) if e[0] == my_sender_id]
    if not mine:
        raise KeyDistRejected(KeyDistRejectReason.NOT_FOR_ME)
    index, (_, entry_sk_id, env_hash) = mine[0]
    if entry_sk_id != my_session_key.sk_id:
        raise KeyDistRejected(KeyDistRejectReason.STALE_SK_ID, entry_sk_id.hex())
    envelope = p.envelopes.get(index)
    if envelope is None:
        raise KeyDistRejected(KeyDistRejectReason.NOT_FOR_ME, "my envelope is not carried")
    if hashlib.sha256(envelope).digest() != env_hash:
        raise KeyDistRejected(KeyDistRejectReason.BAD_SIGNATURE, "envelope differs from signed")

    if last_accepted is not None and (p.gen, p.step) <= tuple(last_accepted):
        raise KeyDistRejected(
            KeyDistRejectReason.ROLLBACK, f"({p.gen}, {p.step}) <= {tuple(last_accepted)}"
        )

    info = envelope_info(p.fixed, my_sender_id, entry_sk_id, p.commitment)
    try:
        base_key = my_session_key.open(envelope, info)
    except HpkeOpenFailed:
        raise KeyDistRejected(KeyDistRejectReason.HPKE_FAILED) from None
    if len(base_key) != BASE_KEY_LEN or (
        commitment(p.channel_id, p.sender_id, p.gen, p.step, base_key) != p.commitment
    ):
        raise KeyDistRejected(KeyDistRejectReason.COMMITMENT_MISMATCH)
    return AcceptedKey(
        channel_id=p.channel_id,
        sender_id=p.sender_id,
        gen=p.gen,
        step=p.step,
        base_key=base_key,
        text_signing_pub=p.text_signing_pub,
        kind=KeyDistKind(p.kind),
        created_ms=p.created_ms,
        commitment=p.commitment,
    )
