"""Ed25519 signing keys: the long-term identity key (IK) and per-generation text signing keys.

PROTOCOL §1: one Ed25519 identity key per (server, account) on this device. It signs session
certificates (:mod:`voipclient.crypto.session`) and KeyDist messages
(:mod:`voipclient.crypto.keydist`). The same class backs the per-generation text signing key of
PROTOCOL §4 (:mod:`voipclient.crypto.text`).

Private key bytes never appear in ``repr`` or ``str``; only :mod:`voipclient.crypto.keystore` asks
for them (:meth:`SigningKey.private_bytes`) to store them encrypted.
"""

from __future__ import annotations

from typing import Final, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from voipclient.errors import LocalProtocolError

PUBLIC_KEY_LEN: Final = 32  # bytes: raw Ed25519 public key (RFC 8032)
PRIVATE_KEY_LEN: Final = 32  # bytes: raw Ed25519 private key seed (RFC 8032)
SIGNATURE_LEN: Final = 64  # bytes: Ed25519 signature


class SigningKey:
    """An Ed25519 private key. ``repr`` shows only a prefix of the public key."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise LocalProtocolError("SigningKey needs an Ed25519PrivateKey")
        self._private = private_key
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Self:
        """A fresh key from the OS random generator."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Self:
        """Load a 32-byte raw private key (as returned by :meth:`private_bytes`)."""
        if not isinstance(data, bytes | bytearray) or len(data) != PRIVATE_KEY_LEN:
            raise LocalProtocolError(f"an Ed25519 private key is {PRIVATE_KEY_LEN} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def private_bytes(self) -> bytes:
        """The 32-byte raw private key. Only for the keystore, which encrypts it at rest."""
        return self._private.private_bytes_raw()

    def public_bytes(self) -> bytes:
        """The 32-byte raw public key."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message``."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(public={self._public[:8].hex()}…)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would put the private key into whatever the pickle is written to.
        raise TypeError(f"{type(self).__name__} must not be pickled")


class IdentityKey(SigningKey):
    """The long-term identity key (IK) of this device for one (server, account)."""

    __slots__ = ()


def load_public_key(public_bytes: bytes) -> Ed25519PublicKey | None:
    """Parse a 32-byte raw Ed25519 public key; ``None`` if it is not one."""
    if not isinstance(public_bytes, bytes | bytearray) or len(public_bytes) != PUBLIC_KEY_LEN:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(public_bytes))
    except (ValueError, TypeError):
        return None


def verify_with(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Verify with an already parsed key. Never raises."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_LEN:
        return False
    if not isinstance(message, bytes | bytearray | memoryview):
        return False
    try:
        public_key.verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_signature(public_bytes: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_bytes``.

    Never raises: a malformed key or signature (wrong length, wrong type) is simply ``False``.
    """
    key = load_public_key(public_bytes)
    if key is None:
        return False
    return verify_with(key, signature, message)
