"""RFC 9605 (SFrame) key schedule: the one place media and text keys are derived.

Pure functions over bytes. vc1 uses cipher suite 0x0005 (AES_256_GCM_SHA512_128); suite 0x0004
(AES_128_GCM_SHA256_128) is implemented too so the RFC's published vectors for both reproduce.
The header codec and :func:`encrypt` exist only to reproduce those vectors: the vc1 voice datagram
has its own fixed header (see :mod:`voipclient.crypto.media`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from voipclient.errors import LocalProtocolError

SUITE_AES_128_GCM_SHA256_128: Final = 0x0004
SUITE_AES_256_GCM_SHA512_128: Final = 0x0005
#: The suite vc1 uses for voice and text.
VC1_SUITE: Final = SUITE_AES_256_GCM_SHA512_128

KEY_LABEL: Final = b"SFrame 1.0 Secret key "
SALT_LABEL: Final = b"SFrame 1.0 Secret salt "
RATCHET_LABEL: Final = b"SFrame 1.0 Ratchet"
NONCE_LEN: Final = 12  # bytes (AEAD.Nn for both GCM suites)
TAG_LEN: Final = 16  # bytes: both suites use the full 128-bit GCM tag
BASE_KEY_LEN: Final = 64  # bytes: vc1 base keys S are 64 random bytes (SHA-512 output size)


@dataclass(frozen=True, slots=True)
class _Suite:
    hash_name: str
    key_len: int  # AEAD.Nk in bytes


_SUITES: Final[dict[int, _Suite]] = {
    SUITE_AES_128_GCM_SHA256_128: _Suite("sha256", 16),
    SUITE_AES_256_GCM_SHA512_128: _Suite("sha512", 32),
}


def _suite(suite: int) -> _Suite:
    try:
        return _SUITES[suite]
    except KeyError:
        raise LocalProtocolError(f"unsupported SFrame cipher suite 0x{suite:04x}") from None


def _hash(name: str) -> hashes.HashAlgorithm:
    return hashes.SHA256() if name == "sha256" else hashes.SHA512()


def hkdf_extract(salt: bytes, ikm: bytes, hash_name: str = "sha512") -> bytes:
    """RFC 5869 HKDF-Extract. An empty salt equals HashLen zero bytes (HMAC zero-pads keys)."""
    return hmac.new(salt, ikm, getattr(hashlib, hash_name)).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int, hash_name: str = "sha512") -> bytes:
    """RFC 5869 HKDF-Expand."""
    return HKDFExpand(_hash(hash_name), length, info).derive(prk)


def derive_key_salt(kid: int, base_key: bytes, suite: int = VC1_SUITE) -> tuple[bytes, bytes]:
    """RFC 9605 §4.4.2 ``derive_key_salt``: the AEAD key and salt for ``kid`` under ``base_key``."""
    s = _suite(suite)
    if not 0 <= kid < 1 << 64:
        raise LocalProtocolError(f"KID {kid} does not fit in 64 bits")
    secret = hkdf_extract(b"", base_key, s.hash_name)
    tail = kid.to_bytes(8, "big") + suite.to_bytes(2, "big")
    key = hkdf_expand(secret, KEY_LABEL + tail, s.key_len, s.hash_name)
    salt = hkdf_expand(secret, SALT_LABEL + tail, NONCE_LEN, s.hash_name)
    return key, salt


def ratchet(base_key: bytes) -> bytes:
    """RFC 9605 §5.1 ratchet step with SHA-512: ``S' = Expand(Extract("", S), label, 64)``."""
    return hkdf_expand(hkdf_extract(b"", base_key), RATCHET_LABEL, BASE_KEY_LEN)


def nonce(salt: bytes, ctr: int) -> bytes:
    """``salt XOR ctr`` with ctr left-padded to the nonce length (RFC 9605 §4.4.3)."""
    return (int.from_bytes(salt, "big") ^ ctr).to_bytes(NONCE_LEN, "big")


def _min_len(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


def encode_header(kid: int, ctr: int) -> bytes:
    """RFC 9605 §4.3 SFrame header: config byte, then the extended KID and CTR fields."""
    config = 0
    tail = b""
    if kid < 8:
        config |= kid << 4
    else:
        n = _min_len(kid)
        config |= 0x80 | ((n - 1) << 4)
        tail += kid.to_bytes(n, "big")
    if ctr < 8:
        config |= ctr
    else:
        n = _min_len(ctr)
        config |= 0x08 | (n - 1)
        tail += ctr.to_bytes(n, "big")
    return bytes([config]) + tail


def encrypt(
    kid: int, ctr: int, base_key: bytes, metadata: bytes, plaintext: bytes, suite: int
) -> bytes:
    """RFC 9605 §4.4.3 SFrame encryption: header ‖ AEAD(key, nonce, header ‖ metadata, pt)."""
    key, salt = derive_key_salt(kid, base_key, suite)
    header = encode_header(kid, ctr)
    return header + AESGCM(key).encrypt(nonce(salt, ctr), plaintext, header + metadata)
