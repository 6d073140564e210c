"""Per-session hybrid KEM key (SK) and the session certificate (SKC), PROTOCOL §1.

* **SK** is a fresh HPKE key pair per connection, KEM ``MLKEM768_X25519`` (hybrid post-quantum),
  held in RAM only. Its public bytes are ``ML-KEM-768 public key (1184) ‖ X25519 public key (32)``
  = 1216 bytes. ``sk_id = SHA-256(SK public bytes)[:8]`` names it in KeyDist envelopes.
* **SKC** binds an SK to an account and a server-assigned ``sender_id`` with the identity key (IK).
  Byte layout (all integers big-endian)::

      off  len   field
      0    1     ver = 0x01
      1    2     a = length of the account id in UTF-8 bytes (1..256)
      3    a     account id (UTF-8)
      3+a  4     sender_id
      7+a  1216  SK public bytes
      1223+a 8   not_after_ms (Unix time, ms; the certificate is valid while now_ms <= not_after_ms)
      1231+a 64  Ed25519 signature by IK over  b"vc1 skc" ‖ bytes[0 : 1231+a]

HPKE suite for every envelope: ``MLKEM768_X25519 / HKDF_SHA256 / AES_256_GCM`` (RFC 9180 base mode).
A seal of a 64-byte plaintext is 1200 bytes (1120-byte encapsulated key ‖ 64 ‖ 16-byte tag).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Final, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from voipclient.crypto.identity import SIGNATURE_LEN, SigningKey, verify_signature
from voipclient.errors import LocalProtocolError, RemoteProtocolError

MLKEM768_PUBLIC_LEN: Final = 1184  # bytes (FIPS 203 encapsulation key)
X25519_PUBLIC_LEN: Final = 32  # bytes
SK_PUBLIC_LEN: Final = MLKEM768_PUBLIC_LEN + X25519_PUBLIC_LEN  # 1216 bytes
SK_ID_LEN: Final = 8  # bytes
HPKE_ENC_LEN: Final = 1120  # bytes: MLKEM768_X25519 encapsulated key (1088 + 32)
HPKE_TAG_LEN: Final = 16  # bytes: AES-256-GCM tag
HPKE_SUITE: Final = hpke.Suite(
    hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
)

SKC_VERSION: Final = 1
SKC_LABEL: Final = b"vc1 skc"
MAX_ACCOUNT_LEN: Final = 256  # bytes of UTF-8
_SKC_FIXED_LEN: Final = 1 + 2 + 4 + SK_PUBLIC_LEN + 8 + SIGNATURE_LEN  # everything but the account
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")

# A fixed, public scalar used only to reject X25519 public keys of small order (their shared
# secret with any clamped scalar is all zeros, which HPKE refuses). It protects nothing.
_PROBE_SCALAR: Final = bytes(range(1, 33))


def hpke_ciphertext_len(plaintext_len: int) -> int:
    """Length of :func:`hpke_seal` output for a plaintext of ``plaintext_len`` bytes."""
    return HPKE_ENC_LEN + plaintext_len + HPKE_TAG_LEN


def sk_id(sk_public: bytes) -> bytes:
    """``SHA-256(SK public bytes)[:8]``: the name of a session key in KeyDist envelopes."""
    return hashlib.sha256(sk_public).digest()[:SK_ID_LEN]


class InvalidSessionKey(RemoteProtocolError):
    """A peer's SK public bytes are not a usable MLKEM768_X25519 public key."""


def parse_session_public_key(sk_public: bytes) -> hpke.MLKEM768X25519PublicKey:
    """Parse 1216 SK public bytes; raises :class:`InvalidSessionKey` (never anything else)."""
    if not isinstance(sk_public, bytes | bytearray) or len(sk_public) != SK_PUBLIC_LEN:
        raise InvalidSessionKey(f"an SK public key is {SK_PUBLIC_LEN} bytes", field="sk_pub")
    raw = bytes(sk_public)
    try:
        kem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_LEN])
        x_pub = x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_LEN:])
        # Small-order X25519 points make every HPKE seal fail: refuse them up front.
        x25519.X25519PrivateKey.from_private_bytes(_PROBE_SCALAR).exchange(x_pub)
    except (ValueError, TypeError):
        raise InvalidSessionKey("invalid SK public key", field="sk_pub") from None
    return hpke.MLKEM768X25519PublicKey(kem_pub, x_pub)


class HpkeOpenFailed(RemoteProtocolError):
    """An HPKE ciphertext did not open (wrong key, wrong info, or tampered)."""


def hpke_seal(
    recipient: bytes | hpke.MLKEM768X25519PublicKey, plaintext: bytes, info: bytes
) -> bytes:
    """HPKE base-mode seal to a recipient SK: ``enc (1120) ‖ AES-256-GCM ciphertext ‖ tag``.

    ``recipient`` is either the 1216 public bytes or an already parsed public key.
    """
    pub = (
        parse_session_public_key(recipient)
        if isinstance(recipient, bytes | bytearray)
        else recipient
    )
    try:
        return HPKE_SUITE.encrypt(plaintext, pub, info=info)
    except ValueError:
        raise InvalidSessionKey("HPKE seal to this SK failed", field="sk_pub") from None


class SessionKemKey:
    """This session's SK private key. RAM only; call :meth:`wipe` at disconnect.

    Python cannot overwrite memory it does not own: :meth:`wipe` drops every reference to the
    private key objects so OpenSSL frees (and, for its own key structures, cleanses) them once
    the last reference is gone. Callers must not keep other references.
    """

    __slots__ = ("_components", "_kem", "_public", "_sk_id")

    def __init__(
        self, mlkem_key: mlkem.MLKEM768PrivateKey, x25519_key: x25519.X25519PrivateKey
    ) -> None:
        self._kem: hpke.MLKEM768X25519PrivateKey | None = hpke.MLKEM768X25519PrivateKey(
            mlkem_key, x25519_key
        )
        self._public = (
            mlkem_key.public_key().public_bytes_raw() + x25519_key.public_key().public_bytes_raw()
        )
        self._sk_id = sk_id(self._public)
        # The component keys are kept so the pair can be re-wrapped (the hpke wrapper has no
        # accessors); wipe() drops them too.
        self._components: tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey] | None = (
            mlkem_key,
            x25519_key,
        )

    @classmethod
    def generate(cls) -> Self:
        """A fresh hybrid key pair from the OS random generator."""
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        """``ML-KEM-768 public key (1184) ‖ X25519 public key (32)`` = 1216 bytes."""
        return self._public

    @property
    def sk_id(self) -> bytes:
        """``SHA-256(public_bytes())[:8]``."""
        return self._sk_id

    @property
    def wiped(self) -> bool:
        return self._kem is None

    def open(self, ciphertext: bytes, info: bytes) -> bytes:
        """HPKE base-mode open. Raises :class:`HpkeOpenFailed` if it does not open."""
        kem = self._kem
        if kem is None:
            raise LocalProtocolError("the session key was wiped")
        try:
            return HPKE_SUITE.decrypt(ciphertext, kem, info=info)
        except (InvalidTag, ValueError, TypeError):
            raise HpkeOpenFailed("HPKE envelope does not open") from None

    def wipe(self) -> None:
        """Drop the private key references (see the class docstring). Idempotent."""
        self._kem = None
        self._components = None

    def __repr__(self) -> str:
        state = "wiped" if self._kem is None else "live"
        return f"SessionKemKey(sk_id={self._sk_id.hex()}, {state})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SessionKemKey must not be pickled")


class SkcRejectReason(enum.Enum):
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported version"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"
    MISMATCH = "account or sender_id differ from the roster"


class SessionCertificateRejected(RemoteProtocolError):
    """A peer's session certificate is malformed, forged, expired or mislabelled."""

    def __init__(self, reason: SkcRejectReason, detail: str = "") -> None:
        text = f"session certificate rejected: {reason.value}" + (f" ({detail})" if detail else "")
        super().__init__(text, field="skc")
        self.reason = reason


def _check_u32(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise LocalProtocolError(f"{name} must be a u32, got {value!r}")


@dataclass(frozen=True, slots=True)
class SessionCertificate:
    """``SKC``: the IK's signature binding (account, sender_id, SK public, not_after_ms)."""

    account: str
    sender_id: int
    sk_pub: bytes
    not_after_ms: int
    signature: bytes

    @classmethod
    def build(
        cls, ik: SigningKey, account: str, sender_id: int, sk_pub: bytes, not_after_ms: int
    ) -> SessionCertificate:
        """Sign a certificate for our own SK. Bad arguments raise :class:`LocalProtocolError`."""
        acct = _encode_account(account)
        _check_u32("sender_id", sender_id)
        if not isinstance(sk_pub, bytes) or len(sk_pub) != SK_PUBLIC_LEN:
            raise LocalProtocolError(f"sk_pub must be {SK_PUBLIC_LEN} bytes")
        if not isinstance(not_after_ms, int) or not 0 <= not_after_ms < 1 << 64:
            raise LocalProtocolError("not_after_ms must be a u64")
        unsigned = _unsigned_bytes(acct, sender_id, sk_pub, not_after_ms)
        return cls(account, sender_id, sk_pub, not_after_ms, ik.sign(SKC_LABEL + unsigned))

    def to_bytes(self) -> bytes:
        acct = _encode_account(self.account)
        return (
            _unsigned_bytes(acct, self.sender_id, self.sk_pub, self.not_after_ms) + self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionCertificate:
        """Parse (not verify) a certificate; raises :class:`SessionCertificateRejected`."""
        if not isinstance(data, bytes | bytearray) or len(data) < 3:
            raise SessionCertificateRejected(SkcRejectReason.MALFORMED, "too short")
        data = bytes(data)
        if data[0] != SKC_VERSION:
            raise SessionCertificateRejected(SkcRejectReason.UNSUPPORTED_VERSION, str(data[0]))
        alen = int.from_bytes(data[1:3], "big")
        if not 1 <= alen <= MAX_ACCOUNT_LEN or len(data) != _SKC_FIXED_LEN + alen:
            raise SessionCertificateRejected(SkcRejectReason.MALFORMED, "bad length")
        try:
            account = data[3 : 3 + alen].decode("utf-8")
        except UnicodeDecodeError:
            raise SessionCertificateRejected(
                SkcRejectReason.MALFORMED, "account is not UTF-8"
            ) from None
        off = 3 + alen
        (sender,) = _U32.unpack_from(data, off)
        off += 4
        pub = data[off : off + SK_PUBLIC_LEN]
        off += SK_PUBLIC_LEN
        (not_after,) = _U64.unpack_from(data, off)
        off += 8
        try:
            parse_session_public_key(pub)
        except InvalidSessionKey:
            raise SessionCertificateRejected(SkcRejectReason.MALFORMED, "invalid SK") from None
        return cls(account, sender, pub, not_after, data[off:])

    def signed_bytes(self) -> bytes:
        """``b"vc1 skc" ‖ everything before the signature``: what the IK signs."""
        acct = _encode_account(self.account)
        return SKC_LABEL + _unsigned_bytes(acct, self.sender_id, self.sk_pub, self.not_after_ms)

    @property
    def sk_id(self) -> bytes:
        return sk_id(self.sk_pub)

    def verify(
        self,
        ik_pub: bytes,
        now_ms: int,
        *,
        account: str | None = None,
        sender_id: int | None = None,
    ) -> None:
        """Check the IK signature and expiry (and, if given, the roster's account/sender_id).

        Raises :class:`SessionCertificateRejected` with the first failing reason.
        """
        try:
            signed = self.signed_bytes()
        except LocalProtocolError:
            raise SessionCertificateRejected(SkcRejectReason.MALFORMED) from None
        if not verify_signature(ik_pub, self.signature, signed):
            raise SessionCertificateRejected(SkcRejectReason.BAD_SIGNATURE)
        if now_ms > self.not_after_ms:
            raise SessionCertificateRejected(
                SkcRejectReason.EXPIRED, f"not_after_ms={self.not_after_ms} < now_ms={now_ms}"
            )
        if (account is not None and account != self.account) or (
            sender_id is not None and sender_id != self.sender_id
        ):
            raise SessionCertificateRejected(SkcRejectReason.MISMATCH)


def _encode_account(account: str) -> bytes:
    if not isinstance(account, str):
        raise LocalProtocolError("account must be a str")
    try:
        raw = account.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("account id is not encodable as UTF-8") from None
    if not 1 <= len(raw) <= MAX_ACCOUNT_LEN:
        raise LocalProtocolError(f"account id must be 1..{MAX_ACCOUNT_LEN} UTF-8 bytes")
    return raw


def _unsigned_bytes(acct: bytes, sender_id: int, sk_pub: bytes, not_after_ms: int) -> bytes:
    return (
        bytes([SKC_VERSION])
        + len(acct).to_bytes(2, "big")
        + acct
        + _U32.pack(sender_id)
        + sk_pub
        + _U64.pack(not_after_ms)
    )
