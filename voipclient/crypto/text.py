"""End-to-end text chat, PROTOCOL §4.

Keys: ``S_text = HKDF-Expand(HKDF-Extract("", S at step), "vc1 text", 64)`` (SHA-512), then
``(key, salt) = derive_key_salt(KID = channel_id << 32 | sender_id, S_text)`` (RFC 9605, suite
0x0005). Nonce = ``salt XOR tctr``.

Message layout (integers big-endian)::

    off   len  field
    0     1    ver = 0x01
    1     1    type = 0x20 (text)
    2     2    step
    4     4    channel_id
    8     4    sender_id
    12    4    gen
    16    4    tctr
    20    8    sent_ms                  -- bytes[0:28] are the AAD
    28    p    AES-256-GCM ciphertext of the padded UTF-8 text (p = 32·k, 32 <= p <= 4032)
    28+p  16   GCM tag
    44+p  64   Ed25519 signature by the generation's text signing key over
               "vc1 text" ‖ bytes[0 : 44+p]

Padding (ISO/IEC 7816-4 style): ``text ‖ 0x80 ‖ 0x00 * z`` with the smallest ``z >= 0`` that makes
the length a multiple of 32. Removal: strip trailing zero bytes, the last remaining byte must be
0x80 and is removed; anything else is rejected. Unambiguous for any text (even one ending in
NUL), and a text of 31 bytes pads to 32, one of 32 bytes to 64.

Ordering: ``tctr`` counts per (channel, sender, gen) and keeps counting across steps (like the
voice ``ctr``), so (key, nonce) never repeats. Receivers accept a message only when
``(gen, tctr)`` is strictly greater than the last accepted from that (channel, sender): replays
and reordering are rejected; a rejected message changes no state.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voipclient.crypto.identity import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    SigningKey,
    load_public_key,
    verify_with,
)
from voipclient.crypto.sframe import (
    BASE_KEY_LEN,
    TAG_LEN,
    derive_key_salt,
    hkdf_expand,
    hkdf_extract,
    nonce,
    ratchet,
)
from voipclient.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from voipclient.crypto.keydist import AcceptedKey

VERSION: Final = 1
TYPE_TEXT: Final = 0x20
TEXT_LABEL: Final = b"vc1 text"
HEADER_LEN: Final = 28  # bytes of AAD header
PAD_BLOCK: Final = 32  # bytes: padded plaintext is a multiple of this
PAD_MARKER: Final = 0x80
MAX_TEXT_BYTES: Final = 4000  # UTF-8 bytes of one message
MAX_PADDED: Final = (MAX_TEXT_BYTES // PAD_BLOCK + 1) * PAD_BLOCK  # 4032 bytes
MIN_MESSAGE_LEN: Final = HEADER_LEN + PAD_BLOCK + TAG_LEN + SIGNATURE_LEN  # 140 bytes
MAX_MESSAGE_LEN: Final = HEADER_LEN + MAX_PADDED + TAG_LEN + SIGNATURE_LEN  # 4140 bytes
MAX_STEP_JUMP: Final = 16  # steps a receiver ratchets forward on its own (as for voice)
MAX_TCTR: Final = (1 << 32) - 1

_HEADER: Final = struct.Struct(">BBHIIIIQ")


def text_secret(base_key: bytes) -> bytes:
    """``S_text = HKDF-Expand(HKDF-Extract("", S), "vc1 text", 64)`` with SHA-512."""
    return hkdf_expand(hkdf_extract(b"", base_key), TEXT_LABEL, 64)


def kid(channel_id: int, sender_id: int) -> int:
    return channel_id << 32 | sender_id


def pad(data: bytes) -> bytes:
    """``data ‖ 0x80 ‖ 0x00…`` up to the next multiple of 32 bytes (always adds >= 1 byte)."""
    total = (len(data) // PAD_BLOCK + 1) * PAD_BLOCK
    return data + b"\x80" + bytes(total - len(data) - 1)


def unpad(padded: bytes) -> bytes | None:
    """Inverse of :func:`pad`; ``None`` if the padding is invalid."""
    if not padded or len(padded) % PAD_BLOCK:
        return None
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != PAD_MARKER or len(padded) - len(stripped) >= PAD_BLOCK:
        return None
    return stripped[:-1]


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A text message that passed every check."""

    channel_id: int
    sender_id: int
    sent_ms: int  # sender's clock, Unix ms: display only, not trusted
    text: str
    gen: int
    step: int
    tctr: int


class TextRejectReason(enum.Enum):
    MALFORMED = "malformed message"
    UNSUPPORTED = "unknown version or type"
    UNKNOWN_KEY = "no key for this (channel, sender, gen)"
    STEP_OUT_OF_RANGE = "step is older than the key held or too far ahead"
    REPLAY = "(gen, tctr) is not newer than the last accepted"
    BAD_CIPHERTEXT = "AEAD does not open"
    BAD_SIGNATURE = "signature does not verify"
    BAD_PADDING = "invalid padding"
    BAD_UTF8 = "text is not UTF-8"


class TextRejected(RemoteProtocolError):
    def __init__(self, reason: TextRejectReason, detail: str = "") -> None:
        text = f"text message rejected: {reason.value}" + (f" ({detail})" if detail else "")
        super().__init__(text, field="text")
        self.reason = reason


def _check_int(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise LocalProtocolError(f"{name} must be a u{bits}, got {value!r}")


@dataclass(slots=True)
class _StepKeys:
    step: int
    base_key: bytes = field(repr=False)
    aead: AESGCM = field(repr=False)
    salt: bytes = field(repr=False)


def _step_keys(channel_id: int, sender_id: int, step: int, base_key: bytes) -> _StepKeys:
    key, salt = derive_key_salt(kid(channel_id, sender_id), text_secret(base_key))
    return _StepKeys(step, base_key, AESGCM(key), salt)


class TextSealer:
    """Seals this member's text messages for one (channel, gen). Not thread-safe.

    ``tctr`` starts at ``tctr`` (0 for a new generation) and keeps counting across
    :meth:`set_step`. A new generation needs a new sealer (and a new signing key).
    """

    __slots__ = ("_channel", "_gen", "_keys", "_sender", "_signing", "_tctr")

    def __init__(
        self,
        channel_id: int,
        sender_id: int,
        gen: int,
        step: int,
        base_key: bytes,
        signing_key: SigningKey,
        *,
        tctr: int = 0,
    ) -> None:
        _check_int("channel_id", channel_id, 32)
        _check_int("sender_id", sender_id, 32)
        _check_int("gen", gen, 32)
        _check_int("step", step, 16)
        _check_int("tctr", tctr, 32)
        if not isinstance(base_key, bytes) or len(base_key) != BASE_KEY_LEN:
            raise LocalProtocolError(f"base_key must be {BASE_KEY_LEN} bytes")
        if not isinstance(signing_key, SigningKey):
            raise LocalProtocolError("signing_key must be a SigningKey")
        self._channel = channel_id
        self._sender = sender_id
        self._gen = gen
        self._signing = signing_key
        self._tctr = tctr
        self._keys = _step_keys(channel_id, sender_id, step, base_key)

    @property
    def next_tctr(self) -> int:
        return self._tctr

    @property
    def gen(self) -> int:
        return self._gen

    @property
    def step(self) -> int:
        return self._keys.step

    def set_step(self, step: int, base_key: bytes) -> None:
        """Switch to S at a later ``step`` of the same generation; ``tctr`` continues."""
        _check_int("step", step, 16)
        if step <= self._keys.step:
            raise LocalProtocolError(f"step {step} is not after {self._keys.step}")
        if not isinstance(base_key, bytes) or len(base_key) != BASE_KEY_LEN:
            raise LocalProtocolError(f"base_key must be {BASE_KEY_LEN} bytes")
        self._keys = _step_keys(self._channel, self._sender, step, base_key)

    def seal(self, text: str, sent_ms: int) -> bytes:
        """One message (see module docstring). Raises :class:`LocalProtocolError` if the text is
        longer than 4000 UTF-8 bytes, ``sent_ms`` is not a u64 or ``tctr`` is exhausted."""
        if not isinstance(text, str):
            raise LocalProtocolError("text must be a str")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError("text is not encodable as UTF-8") from None
        if len(raw) > MAX_TEXT_BYTES:
            raise LocalProtocolError(f"text is {len(raw)} UTF-8 bytes; limit {MAX_TEXT_BYTES}")
        _check_int("sent_ms", sent_ms, 64)
        if self._tctr > MAX_TCTR:
            raise LocalProtocolError("tctr exhausted: a new generation is needed")
        k = self._keys
        header = _HEADER.pack(
            VERSION, TYPE_TEXT, k.step, self._channel, self._sender, self._gen, self._tctr, sent_ms
        )
        sealed = header + k.aead.encrypt(nonce(k.salt, self._tctr), pad(raw), header)
        self._tctr += 1
        return sealed + self._signing.sign(TEXT_LABEL + sealed)

    def __repr__(self) -> str:
        return (
            f"TextSealer(channel={self._channel}, sender={self._sender}, gen={self._gen}, "
            f"step={self._keys.step}, tctr={self._tctr})"
        )


@dataclass(slots=True)
class _GenState:
    keys: _StepKeys
    verify_key: Ed25519PublicKey
    #: When a newer generation of the same sender superseded this one: it is dropped
    #: KEY_RETENTION_S later (and its S is dropped at once; only the step's AEAD key stays).
    expires_at: float | None = None


@dataclass(slots=True)
class _SenderState:
    gens: dict[int, _GenState]
    last: tuple[int, int] | None = None  # last accepted (gen, tctr)


#: Seconds a superseded generation's text key stays usable (as for voice, PROTOCOL §2).
KEY_RETENTION_S = 10.0


class TextOpener:
    """Opens text messages from other members. Not thread-safe.

    Keys come from accepted KeyDists (:meth:`add_key` / :meth:`add_accepted`). Per
    (channel, sender) it keeps the keys of the ``keep_generations`` newest generations, ratchets
    forward at most 16 steps on its own, and remembers the last accepted ``(gen, tctr)``. A
    generation superseded by a newer one loses its base key S at once (only the current step's
    AEAD key remains, for messages still in flight) and is forgotten :data:`KEY_RETENTION_S`
    later (:meth:`expire`).
    """

    __slots__ = ("_keep", "_senders")

    def __init__(self, *, keep_generations: int = 2) -> None:
        if keep_generations < 1:
            raise LocalProtocolError("keep_generations must be >= 1")
        self._keep = keep_generations
        self._senders: dict[tuple[int, int], _SenderState] = {}

    def add_key(
        self,
        *,
        channel_id: int,
        sender_id: int,
        gen: int,
        step: int,
        base_key: bytes,
        text_signing_pub: bytes,
        now: float = 0.0,
    ) -> bool:
        """Install S at ``step`` for (channel, sender, gen) and that generation's signing key.

        Returns False (and changes nothing) when the key is not newer than what is held: the
        opener may already have ratcheted past it (as ``media.VoiceReceiver`` does).
        ``now`` (seconds, monotonic) starts the retention of superseded generations.
        """
        _check_int("channel_id", channel_id, 32)
        _check_int("sender_id", sender_id, 32)
        _check_int("gen", gen, 32)
        _check_int("step", step, 16)
        if not isinstance(base_key, bytes) or len(base_key) != BASE_KEY_LEN:
            raise LocalProtocolError(f"base_key must be {BASE_KEY_LEN} bytes")
        verify_key = load_public_key(text_signing_pub)
        if verify_key is None or len(text_signing_pub) != PUBLIC_KEY_LEN:
            raise LocalProtocolError("text_signing_pub must be a 32-byte Ed25519 public key")
        state = self._senders.setdefault((channel_id, sender_id), _SenderState({}))
        current = state.gens.get(gen)
        if current is not None and step < current.keys.step:
            return False
        if state.gens and gen < max(state.gens) and current is None:
            return False  # an older generation than the newest held: never needed again
        state.gens[gen] = _GenState(_step_keys(channel_id, sender_id, step, base_key), verify_key)
        for old_gen, old in state.gens.items():
            if old_gen < gen and old.expires_at is None:
                old.expires_at = now + KEY_RETENTION_S
                old.keys = _StepKeys(old.keys.step, b"", old.keys.aead, old.keys.salt)
        for old_gen in sorted(state.gens)[: -self._keep]:
            del state.gens[old_gen]
        return True

    def expire(self, now: float) -> None:
        """Forget superseded generations whose retention ran out."""
        for state in self._senders.values():
            for gen in [g for g, st in state.gens.items() if st.expires_at is not None]:
                if state.gens[gen].expires_at <= now:  # type: ignore[operator]
                    del state.gens[gen]

    def clear(self) -> None:
        """Forget every key (disconnect)."""
        self._senders.clear()

    def add_accepted(self, key: AcceptedKey, now: float = 0.0) -> bool:
        """:meth:`add_key` from an :class:`~voipclient.crypto.keydist.AcceptedKey`."""
        return self.add_key(
            channel_id=key.channel_id,
            sender_id=key.sender_id,
            gen=key.gen,
            step=key.step,
            base_key=key.base_key,
            text_signing_pub=key.text_signing_pub,
            now=now,
        )

    def remove_sender(self, channel_id: int, sender_id: int) -> None:
        """Forget every key and counter of (channel, sender) (member left)."""
        self._senders.pop((channel_id, sender_id), None)

    def open(self, data: bytes) -> TextMessage:
        """Check and decrypt one message; raises :class:`TextRejected` (state unchanged)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TextRejected(TextRejectReason.MALFORMED, "not bytes")
        data = bytes(data)
        body_len = len(data) - HEADER_LEN - TAG_LEN - SIGNATURE_LEN
        if len(data) < HEADER_LEN:
            raise TextRejected(TextRejectReason.MALFORMED, "too short")
        ver, typ, step, channel, sender, gen, tctr, sent_ms = _HEADER.unpack_from(data)
        if ver != VERSION or typ != TYPE_TEXT:
            raise TextRejected(TextRejectReason.UNSUPPORTED, f"ver={ver} type=0x{typ:02x}")
        if not PAD_BLOCK <= body_len <= MAX_PADDED or body_len % PAD_BLOCK:
            raise TextRejected(TextRejectReason.MALFORMED, f"length {len(data)}")
        state = self._senders.get((channel, sender))
        gen_state = state.gens.get(gen) if state is not None else None
        if state is None or gen_state is None:
            raise TextRejected(TextRejectReason.UNKNOWN_KEY, f"({channel}, {sender}, {gen})")
        held = gen_state.keys
        if not held.step <= step <= held.step + MAX_STEP_JUMP:
            raise TextRejected(TextRejectReason.STEP_OUT_OF_RANGE, f"{step} vs {held.step}")
        if state.last is not None and (gen, tctr) <= state.last:
            raise TextRejected(TextRejectReason.REPLAY, f"({gen}, {tctr}) <= {state.last}")

        keys = held
        if step != held.step:
            if not held.base_key:  # superseded generation: its S is gone, no ratcheting
                raise TextRejected(TextRejectReason.STEP_OUT_OF_RANGE, "superseded generation")
            base = held.base_key
            for _ in range(step - held.step):
                base = ratchet(base)
            keys = _step_keys(channel, sender, step, base)
        signed_end = len(data) - SIGNATURE_LEN
        header = data[:HEADER_LEN]
        try:
            padded = keys.aead.decrypt(nonce(keys.salt, tctr), data[HEADER_LEN:signed_end], header)
        except InvalidTag:
            raise TextRejected(TextRejectReason.BAD_CIPHERTEXT) from None
        if not verify_with(gen_state.verify_key, data[signed_end:], TEXT_LABEL + data[:signed_end]):
            raise TextRejected(TextRejectReason.BAD_SIGNATURE)
        raw = unpad(padded)
        if raw is None:
            raise TextRejected(TextRejectReason.BAD_PADDING)
        if len(raw) > MAX_TEXT_BYTES:
            raise TextRejected(TextRejectReason.MALFORMED, f"text of {len(raw)} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TextRejected(TextRejectReason.BAD_UTF8) from None

        # Every check passed: only now change state.
        gen_state.keys = keys
        state.last = (gen, tctr)
        return TextMessage(channel, sender, sent_ms, text, gen, step, tctr)

    def __repr__(self) -> str:
        return f"TextOpener(senders={len(self._senders)})"
