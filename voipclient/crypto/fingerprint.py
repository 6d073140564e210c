"""Safety numbers: libsignal's NumericFingerprint v1 (PROTOCOL §1).

Per side: ``h = 0x0000 ‖ key ‖ id``; 5200 times ``h = SHA-512(h ‖ key)``; the first 30 bytes as six
5-byte big-endian chunks, each ``mod 100000`` as 5 digits → 30 digits. The two 30-digit halves
are sorted (as strings) and joined → 60 digits, shown in 12 groups of 5.

``key`` is the *serialised* public key: libsignal uses ``0x05 ‖ Curve25519 public key``. vc1
identity keys are Ed25519, serialised as :data:`ED25519_KEY_PREFIX` (``0xED``) ‖ 32-byte Ed25519
public key, so an Ed25519 key can never produce the same input as a Curve25519 key. ``id`` is
the account id in UTF-8.

QR payload (70 bytes, :func:`scannable_payload`), modelled on libsignal's scannable fingerprint::

    b"VC1SN" (5) ‖ version 0x01 (1) ‖ local side hash[:32] ‖ remote side hash[:32]

"local" is the device that shows the code. The scanning device checks with
:func:`verify_scanned` that the code's local half is its remote half and vice versa.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

from voipclient.crypto.identity import PUBLIC_KEY_LEN
from voipclient.errors import LocalProtocolError, RemoteProtocolError

ITERATIONS: Final = 5200
FINGERPRINT_VERSION: Final = b"\x00\x00"  # u16 version 0 (libsignal NumericFingerprint v1)
ED25519_KEY_PREFIX: Final = 0xED  # our type byte for Ed25519 keys (libsignal's DJB type is 0x05)
DIGITS_PER_SIDE: Final = 30
GROUP: Final = 5
QR_MAGIC: Final = b"VC1SN"
QR_VERSION: Final = 1
QR_HALF_LEN: Final = 32  # bytes of each side's hash in the QR payload
QR_LEN: Final = len(QR_MAGIC) + 1 + 2 * QR_HALF_LEN  # 70 bytes


def serialize_identity_key(ik_pub: bytes) -> bytes:
    """``0xED ‖ Ed25519 public key``: the key bytes fed to the fingerprint."""
    if not isinstance(ik_pub, bytes) or len(ik_pub) != PUBLIC_KEY_LEN:
        raise LocalProtocolError(f"an identity key is {PUBLIC_KEY_LEN} bytes")
    return bytes([ED25519_KEY_PREFIX]) + ik_pub


def fingerprint_hash(key: bytes, stable_id: bytes, iterations: int = ITERATIONS) -> bytes:
    """One side's 64-byte iterated SHA-512 (``key`` is already serialised, with its prefix)."""
    h = FINGERPRINT_VERSION + key + stable_id
    for _ in range(iterations):
        h = hashlib.sha512(h + key).digest()
    return h


def displayable_half(digest: bytes) -> str:
    """30 digits from the first 30 bytes of a side's hash."""
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def numeric_fingerprint(
    local_key: bytes,
    local_id: bytes,
    remote_key: bytes,
    remote_id: bytes,
    iterations: int = ITERATIONS,
) -> str:
    """libsignal NumericFingerprint v1 over already serialised keys and raw ids: 60 digits."""
    local = displayable_half(fingerprint_hash(local_key, local_id, iterations))
    remote = displayable_half(fingerprint_hash(remote_key, remote_id, iterations))
    return local + remote if local <= remote else remote + local


def _account_bytes(account: str) -> bytes:
    if not isinstance(account, str) or not account:
        raise LocalProtocolError("account id must be a non-empty str")
    return account.encode("utf-8")


def safety_number(local_key: bytes, local_id: str, remote_key: bytes, remote_id: str) -> str:
    """The 60-digit safety number of two vc1 identities (raw 32-byte Ed25519 keys, account ids).

    Symmetric: both sides compute the same digits.
    """
    return numeric_fingerprint(
        serialize_identity_key(local_key),
        _account_bytes(local_id),
        serialize_identity_key(remote_key),
        _account_bytes(remote_id),
    )


def format_safety_number(digits: str) -> str:
    """``"30035 44776 …"``: 12 groups of 5 digits separated by spaces."""
    if len(digits) != 2 * DIGITS_PER_SIDE or not digits.isdigit():
        raise LocalProtocolError("a safety number is 60 digits")
    return " ".join(digits[i : i + GROUP] for i in range(0, len(digits), GROUP))


def scannable_payload(local_key: bytes, local_id: str, remote_key: bytes, remote_id: str) -> bytes:
    """The 70-byte QR payload shown by the *local* device (see module docstring)."""
    local = fingerprint_hash(serialize_identity_key(local_key), _account_bytes(local_id))
    remote = fingerprint_hash(serialize_identity_key(remote_key), _account_bytes(remote_id))
    return QR_MAGIC + bytes([QR_VERSION]) + local[:QR_HALF_LEN] + remote[:QR_HALF_LEN]


class ScannedCodeInvalid(RemoteProtocolError):
    """The scanned QR code is not a vc1 safety-number code."""


def verify_scanned(
    scanned: bytes, local_key: bytes, local_id: str, remote_key: bytes, remote_id: str
) -> bool:
    """True when ``scanned`` (shown by the remote device) matches our view of both keys.

    Raises :class:`ScannedCodeInvalid` if ``scanned`` is not a vc1 code at all.
    """
    if (
        not isinstance(scanned, bytes)
        or len(scanned) != QR_LEN
        or not scanned.startswith(QR_MAGIC)
        or scanned[len(QR_MAGIC)] != QR_VERSION
    ):
        raise ScannedCodeInvalid("not a vc1 safety-number code", field="qr")
    # The code was made on the other device, so its "local" half is our remote half.
    expected = scannable_payload(remote_key, remote_id, local_key, local_id)
    return hmac.compare_digest(scanned, expected)


# -- channel privacy code -----------------------------------------------------------------------
PRIVACY_CODE_LABEL: Final = b"vc1 privacy code"
PRIVACY_CODE_GROUPS: Final = 4  # 4 groups of 5 digits: 20 digits from 20 bytes of the hash


def privacy_code(
    channel_id: int, holders: Iterable[tuple[str, bytes]], iterations: int = ITERATIONS
) -> str:
    """The channel privacy code: 20 digits (4 groups of 5) that every member computes from the
    channel id and the set of (account id, identity key) of the channel's current key holders,
    itself included (docs/protocol.md, "Channel privacy code").

    Members who see the same key holders see the same code; a relay that shows two members
    different member lists cannot make their codes agree without a second preimage of the
    iterated hash (its own ghost keys are the only input it controls, and each try costs
    ``iterations`` SHA-512s). ``account`` is the account id as in safety numbers (the casefolded
    name).

    ``d = SHA-512("vc1 privacy code" ‖ channel u32 ‖ n u16 ‖ n * (u16 len ‖ account ‖ 0xED ‖
    ik))`` over the entries sorted by (account bytes, key); then ``h = d`` and ``iterations``
    times ``h = SHA-512(h ‖ d)``; the first 20 bytes as four 5-byte chunks mod 100000.
    """
    if not 0 <= channel_id <= 0xFFFF_FFFF:
        raise LocalProtocolError("channel id is a u32")
    entries = sorted({(_account_bytes(a), serialize_identity_key(k)) for a, k in holders})
    if len(entries) > 0xFFFF:
        raise LocalProtocolError("too many key holders")
    parts = [PRIVACY_CODE_LABEL, channel_id.to_bytes(4, "big"), len(entries).to_bytes(2, "big")]
    for account, key in entries:
        if len(account) > 0xFFFF:
            raise LocalProtocolError("account id too long")
        parts += [len(account).to_bytes(2, "big"), account, key]
    digest = hashlib.sha512(b"".join(parts)).digest()
    h = digest
    for _ in range(iterations):
        h = hashlib.sha512(h + digest).digest()
    groups = [
        f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}"
        for i in range(0, 5 * PRIVACY_CODE_GROUPS, 5)
    ]
    return " ".join(groups)
