"""Key backup: one identity key and its server's verified marks in a passphrase-encrypted file.

The server binds a user name to its identity key (PROTOCOL §1), so losing the key loses the
name. A backup carries the key of one (server ``host:port``, account) to another machine (or
past a reinstall), together with the peers' pinned keys of that server (the "verified" marks the
user set by comparing safety numbers), so neither the name nor the verifications are lost.

Pure (bytes in, bytes out). The adapter that reads the key from the stores and writes the file
is :mod:`voipclient.storage.backup`. The crypto is the key file's (:mod:`.keystore`): scrypt with
the same defaults and bounds, AES-256-GCM, the passphrase NFC-normalised.

File layout (``.vc1backup``)::

    off  len  field
    0    5    magic b"VC1BK"
    5    1    version = 1          (a newer one is refused with BackupTooNew)
    6    1    kdf = 1 (scrypt)
    7    1    log2(N)   (default 17: N = 131072)
    8    1    r         (default 8)
    9    1    p         (default 1)
    10   16   salt (random)
    26   12   nonce (random)
    38   4    n = length of the ciphertext and tag (u32 big-endian), 50 .. 8 MiB
    42   16   passphrase check = scrypt output bytes 32..47        -- bytes[0:58] are the header
    58   n    AES-256-GCM(key = scrypt output bytes 0..31, nonce,
                          plaintext, aad = the whole header) ‖ 16-byte tag

    scrypt output = scrypt(NFC(passphrase) UTF-8, salt, N, r, p, 48 bytes)
    plaintext     = 32-byte Ed25519 private key ‖ UTF-8 JSON:
        {"server": "host:port", "account": str, "server_pin": "sha256/..." | null,
         "created_ms": int, "software_version": str,
         "peers": <a voipclient-tofu document (TofuStore.to_bytes) holding only the entries
                   of server_pin>}

Reading checks, before any scrypt work, the magic, the version, the scrypt parameters (the key
file's bounds: log2 N 10..20, r 1..16, p 1..4, memory <= 256 MiB, so a crafted file cannot make
us allocate unbounded memory) and the length (a truncated file says so). The passphrase check
tells a wrong passphrase (:class:`~.keystore.WrongPassphrase`) from a damaged or modified file
(:class:`BackupCorrupt`); it lets an attacker test guesses no faster than the GCM tag already
would, and scrypt's output blocks are independent, so it says nothing about the AES key. The
header is the AAD: changing any byte of it, or of the body, is detected.

A backup is written with a passphrase of at least :data:`MIN_PASSPHRASE_LEN` characters.

The peers' pins are per server *pin* (the TLS key the client pinned for ``host:port``), as
:class:`~.tofu.TofuStore` keys them; :func:`merge_peers` adds them to a store without ever
replacing a pin the store already has for another key (that is a :class:`PeerConflict`).
"""

from __future__ import annotations

import hmac
import json
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voipclient.crypto.identity import PRIVATE_KEY_LEN, IdentityKey
from voipclient.crypto.keystore import (
    DEFAULT_LOG2_N,
    DEFAULT_P,
    DEFAULT_R,
    KDF_SCRYPT,
    MAX_LOG2_N,
    MIN_LOG2_N,
    NONCE_LEN,
    SALT_LEN,
    KeystoreCorrupt,
    KeystoreError,
    WrongPassphrase,
    check_names,
    derive_passphrase_key,
    passphrase_bytes,
    scrypt_params_ok,
)
from voipclient.crypto.tofu import PinnedKey, TofuStore, TrustLevel
from voipclient.errors import LocalProtocolError

__all__ = [
    "BACKUP_MAGIC",
    "BACKUP_SUFFIX",
    "BACKUP_VERSION",
    "MIN_PASSPHRASE_LEN",
    "BackupCorrupt",
    "BackupError",
    "BackupTooNew",
    "BackupTruncated",
    "IdentityBackup",
    "MergeOutcome",
    "PassphraseTooShort",
    "PeerConflict",
    "check_backup_passphrase",
    "decode_backup",
    "encode_backup",
    "merge_peers",
    "peers_of_server",
    "suggested_file_name",
]

BACKUP_MAGIC: Final = b"VC1BK"
BACKUP_VERSION: Final = 1
BACKUP_SUFFIX: Final = ".vc1backup"
MIN_PASSPHRASE_LEN: Final = 8  # characters (code points after NFC), checked when writing
CHECK_LEN: Final = 16  # bytes of scrypt output stored to recognise a wrong passphrase
TAG_LEN: Final = 16
HEADER_LEN: Final = len(BACKUP_MAGIC) + 5 + SALT_LEN + NONCE_LEN + 4 + CHECK_LEN  # 58 bytes
MIN_BODY_LEN: Final = PRIVATE_KEY_LEN + 2 + TAG_LEN  # the key and "{}"
MAX_BODY_LEN: Final = 8 * 1024 * 1024  # some ten thousand peers' pins fit many times over
_SALT_AT: Final = len(BACKUP_MAGIC) + 5
_NONCE_AT: Final = _SALT_AT + SALT_LEN
_LEN_AT: Final = _NONCE_AT + NONCE_LEN
_CHECK_AT: Final = _LEN_AT + 4


class BackupError(KeystoreError):
    """The key backup could not be written or read; the message says why and what to do."""


class BackupCorrupt(BackupError, KeystoreCorrupt):
    """Not a key backup, or a damaged or modified one."""


class BackupTruncated(BackupCorrupt):
    """The file ends early (an interrupted copy or download)."""


class BackupTooNew(BackupError):
    """The backup was written by a newer voipclient in a format this one does not know."""


class PassphraseTooShort(BackupError):
    """A backup passphrase must have at least :data:`MIN_PASSPHRASE_LEN` characters."""


def check_backup_passphrase(passphrase: str) -> None:
    """Raise :class:`PassphraseTooShort` unless ``passphrase`` may protect a new backup (the UI
    can call it while the user types)."""
    if not isinstance(passphrase, str):
        raise LocalProtocolError("the passphrase must be a string")
    n = len(unicodedata.normalize("NFC", passphrase))
    if n < MIN_PASSPHRASE_LEN:
        raise PassphraseTooShort(
            f"a backup passphrase needs at least {MIN_PASSPHRASE_LEN} characters (this one has "
            f"{n}): anyone who gets the file can try passphrases offline"
        )


# -- the peers' pins of one server ---------------------------------------------------------------


def peers_of_server(store: TofuStore, server_pin: str) -> tuple[tuple[str, PinnedKey], ...]:
    """The (account, pin) entries ``store`` holds for ``server_pin``, sorted by account."""
    # TofuStore offers no iteration: its own serialisation names the entries.
    doc = json.loads(store.to_bytes())
    out: list[tuple[str, PinnedKey]] = []
    for entry in doc["entries"]:
        if entry["server_pin"] == server_pin:
            pin = store.get(server_pin, entry["account"])
            assert pin is not None
            out.append((entry["account"], pin))
    return tuple(sorted(out, key=lambda item: item[0]))


def _add_pin(store: TofuStore, server_pin: str, account: str, pin: PinnedKey) -> None:
    """Give ``store`` (which has no pin for the pair) ``pin``, through its own operations, so a
    pin read from a file is re-established as the store would have made it."""
    store.observe(server_pin, account, pin.ik_pub, pin.first_seen_ms)
    if pin.level is TrustLevel.VERIFIED:
        store.mark_verified(server_pin, account, pin.ik_pub, pin.first_seen_ms)
    _add_warning(store, server_pin, account, pin)


def _store_of(server_pin: str, peers: Sequence[tuple[str, PinnedKey]]) -> TofuStore:
    store = TofuStore()
    for account, pin in peers:
        _add_pin(store, server_pin, account, pin)
    return store


def _add_warning(store: TofuStore, server_pin: str, account: str, pin: PinnedKey) -> None:
    """The pending key change of ``pin`` (a key seen instead of the pinned one), if any."""
    if pin.changed_to is not None and pin.changed_to != pin.ik_pub:
        seen = pin.first_seen_ms if pin.changed_seen_ms is None else pin.changed_seen_ms
        store.observe(server_pin, account, pin.changed_to, seen)


@dataclass(frozen=True, slots=True)
class PeerConflict:
    """A backup's pin that was not imported: the local store pins another key for the peer."""

    account: str
    #: The key pinned here (kept).
    local_key: bytes
    local_verified: bool
    #: The key the backup pinned (not imported).
    backup_key: bytes
    backup_verified: bool


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """What :func:`merge_peers` did."""

    #: Peers the store had no pin for (now pinned as in the backup).
    added: int
    #: Peers that are verified now because of the backup (added verified, or the same key
    #: raised from ``tofu`` to verified).
    verified: int
    #: Peers pinned here to another key than in the backup: the local pin was kept.
    conflicts: tuple[PeerConflict, ...]


def merge_peers(
    store: TofuStore, server_pin: str, peers: Sequence[tuple[str, PinnedKey]]
) -> MergeOutcome:
    """Add ``peers`` (a backup's pins for ``server_pin``) to ``store``, in place.

    * no local pin: the backup's is added as it was (level, first seen, a pending key change);
    * the same key: a backup's "verified" raises a local ``tofu`` pin to verified (a key change
      seen here meanwhile then blocks that peer, as it would have there); otherwise unchanged;
    * another key: the local pin is kept and the pair is reported as a :class:`PeerConflict`.
    """
    added = verified = 0
    conflicts: list[PeerConflict] = []
    for account, pin in peers:
        local = store.get(server_pin, account)
        if local is None:
            _add_pin(store, server_pin, account, pin)
            added += 1
            verified += pin.level is TrustLevel.VERIFIED
        elif local.ik_pub != pin.ik_pub:
            conflicts.append(
                PeerConflict(
                    account,
                    local.ik_pub,
                    local.level is TrustLevel.VERIFIED,
                    pin.ik_pub,
                    pin.level is TrustLevel.VERIFIED,
                )
            )
        elif pin.level is TrustLevel.VERIFIED and local.level is not TrustLevel.VERIFIED:
            store.mark_verified(server_pin, account, local.ik_pub, local.first_seen_ms)
            _add_warning(store, server_pin, account, local)
            verified += 1
    return MergeOutcome(added, verified, tuple(conflicts))


# -- the backup ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityBackup:
    """What a backup file holds. ``repr`` never shows the private key."""

    #: ``host:port`` as the app keys its identity keys (the saved server's address).
    server: str
    account: str
    #: The 32-byte raw Ed25519 private key.
    private_key: bytes = field(repr=False)
    #: The server's TLS key pin the peers' pins belong to; None: no pins (none known).
    server_pin: str | None
    #: That server's peers' pins, sorted by account.
    peers: tuple[tuple[str, PinnedKey], ...]
    #: When the backup was made (Unix time, ms).
    created_ms: int
    #: The voipclient version that made it.
    software_version: str

    def __post_init__(self) -> None:
        check_names(self.server, self.account)
        IdentityKey.from_private_bytes(self.private_key)  # 32 bytes and a valid key
        if self.server_pin is not None and (
            not isinstance(self.server_pin, str) or not self.server_pin
        ):
            raise LocalProtocolError("server_pin must be a non-empty string or None")
        if self.server_pin is None and self.peers:
            raise LocalProtocolError("peers' pins need the server_pin they belong to")
        if not all(
            isinstance(account, str) and account and isinstance(pin, PinnedKey)
            for account, pin in self.peers
        ):
            raise LocalProtocolError("peers must be (account, PinnedKey) pairs")
        accounts = [account for account, _ in self.peers]
        if accounts != sorted(set(accounts)):
            raise LocalProtocolError("peers must be sorted by account, one pin each")
        created = self.created_ms
        if not isinstance(created, int) or isinstance(created, bool) or created < 0:
            raise LocalProtocolError("created_ms must be a non-negative int")
        if not isinstance(self.software_version, str):
            raise LocalProtocolError("software_version must be a string")

    @classmethod
    def of(
        cls,
        server: str,
        account: str,
        key: IdentityKey,
        *,
        server_pin: str | None,
        tofu: TofuStore,
        created_ms: int,
        software_version: str,
    ) -> IdentityBackup:
        """The backup of ``key`` with the pins ``tofu`` holds for ``server_pin``."""
        peers: tuple[tuple[str, PinnedKey], ...] = ()
        if server_pin is not None:
            # Through a fresh store: a hand-edited pin comes out as the store would have made
            # it, so what is written is exactly what is read back.
            clean = _store_of(server_pin, peers_of_server(tofu, server_pin))
            peers = peers_of_server(clean, server_pin)
        return cls(
            server, account, key.private_bytes(), server_pin, peers, created_ms, software_version
        )

    @property
    def identity(self) -> IdentityKey:
        return IdentityKey.from_private_bytes(self.private_key)

    @property
    def verified_count(self) -> int:
        return sum(pin.level is TrustLevel.VERIFIED for _, pin in self.peers)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("IdentityBackup holds a private key and must not be pickled")


def suggested_file_name(server: str, account: str) -> str:
    """``<account>@<server>.vc1backup``, with characters file systems refuse replaced by ``_``."""
    check_names(server, account)
    name = unicodedata.normalize("NFC", f"{account}@{server}")
    safe = "".join("_" if c in '<>:"/\\|?*' or not c.isprintable() else c for c in name)
    return (safe.strip(" .") or "identity") + BACKUP_SUFFIX


def _header(log2_n: int, r: int, p: int, salt: bytes, nonce: bytes, body_len: int) -> bytes:
    return (
        BACKUP_MAGIC
        + bytes([BACKUP_VERSION, KDF_SCRYPT, log2_n, r, p])
        + salt
        + nonce
        + body_len.to_bytes(4, "big")
    )


def encode_backup(
    backup: IdentityBackup, passphrase: str, *, scrypt_log2_n: int = DEFAULT_LOG2_N
) -> bytes:
    """The backup file's contents (fresh salt and nonce every time).

    Raises:
        PassphraseTooShort: fewer than :data:`MIN_PASSPHRASE_LEN` characters.
        LocalProtocolError: ``scrypt_log2_n`` out of range (a lower N is for tests).
    """
    check_backup_passphrase(passphrase)
    if not scrypt_params_ok(scrypt_log2_n, DEFAULT_R, DEFAULT_P):
        raise LocalProtocolError(
            f"scrypt_log2_n must be {MIN_LOG2_N}..{MAX_LOG2_N} (default {DEFAULT_LOG2_N})"
        )
    peers = _store_of(backup.server_pin or "", backup.peers)
    doc = {
        "server": backup.server,
        "account": backup.account,
        "server_pin": backup.server_pin,
        "created_ms": backup.created_ms,
        "software_version": backup.software_version,
        "peers": json.loads(peers.to_bytes()),
    }
    meta = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    plaintext = backup.private_key + meta
    body_len = len(plaintext) + TAG_LEN
    if body_len > MAX_BODY_LEN:
        raise BackupError(f"too many peers' pins for one backup ({len(backup.peers)})")
    salt = secrets.token_bytes(SALT_LEN)
    nonce = secrets.token_bytes(NONCE_LEN)
    derived = derive_passphrase_key(
        passphrase_bytes(passphrase), salt, scrypt_log2_n, DEFAULT_R, DEFAULT_P, 32 + CHECK_LEN
    )
    header = _header(scrypt_log2_n, DEFAULT_R, DEFAULT_P, salt, nonce, body_len) + derived[32:]
    return header + AESGCM(derived[:32]).encrypt(nonce, plaintext, header)


def decode_backup(data: bytes, passphrase: str, *, source: str = "backup file") -> IdentityBackup:
    """Inverse of :func:`encode_backup`; ``source`` names the file in messages.

    Raises:
        BackupTruncated: the file ends early.
        BackupTooNew: written by a newer voipclient.
        BackupCorrupt: not a backup, out-of-range parameters, or damaged or modified.
        WrongPassphrase: the passphrase does not open it.
    """
    data = bytes(data)
    _check_frame(data, source)
    log2_n, r, p = data[7:10]
    salt = data[_SALT_AT:_NONCE_AT]
    nonce = data[_NONCE_AT:_LEN_AT]
    header = data[:HEADER_LEN]
    derived = derive_passphrase_key(
        passphrase_bytes(passphrase), salt, log2_n, r, p, 32 + CHECK_LEN
    )
    if not hmac.compare_digest(derived[32:], data[_CHECK_AT:HEADER_LEN]):
        raise WrongPassphrase(f"wrong passphrase for the {source}")
    try:
        plaintext = AESGCM(derived[:32]).decrypt(nonce, data[HEADER_LEN:], header)
    except InvalidTag:
        raise BackupCorrupt(
            f"the {source} is damaged or was modified (the passphrase is right, but its "
            "contents do not match what was written)"
        ) from None
    return _parse_plaintext(plaintext, source)


def _check_frame(data: bytes, source: str) -> None:
    """Everything that can be judged before the passphrase: magic, version, bounds, length."""
    if not data:
        raise BackupTruncated(f"the {source} is empty")
    if data[: len(BACKUP_MAGIC)] != BACKUP_MAGIC[: len(data)]:
        raise BackupCorrupt(f"the {source} is not a voipclient key backup")
    if len(data) <= len(BACKUP_MAGIC):
        raise BackupTruncated(f"the {source} is truncated ({len(data)} bytes)")
    version = data[len(BACKUP_MAGIC)]
    if version > BACKUP_VERSION:
        raise BackupTooNew(
            f"the {source} was written by a newer voipclient (backup format {version}; this one "
            f"reads format {BACKUP_VERSION}): update voipclient to restore it"
        )
    if version != BACKUP_VERSION:
        raise BackupCorrupt(f"the {source} has an unknown backup format {version}")
    if len(data) < HEADER_LEN:
        raise BackupTruncated(
            f"the {source} is truncated ({len(data)} bytes, less than its {HEADER_LEN}-byte header)"
        )
    kdf, log2_n, r, p = data[6:10]
    if kdf != KDF_SCRYPT:
        raise BackupCorrupt(f"the {source} names an unknown key derivation ({kdf})")
    if not scrypt_params_ok(log2_n, r, p):
        raise BackupCorrupt(
            f"the {source} asks for scrypt parameters out of range (log2 N {log2_n}, r {r}, "
            f"p {p}); it was not written by voipclient"
        )
    body_len = int.from_bytes(data[_LEN_AT:_CHECK_AT], "big")
    if not MIN_BODY_LEN <= body_len <= MAX_BODY_LEN:
        raise BackupCorrupt(f"the {source} states an impossible length ({body_len} bytes)")
    have = len(data) - HEADER_LEN
    if have < body_len:
        raise BackupTruncated(
            f"the {source} is truncated ({len(data)} of {HEADER_LEN + body_len} bytes): copy "
            "it again from where it was saved"
        )
    if have > body_len:
        raise BackupCorrupt(f"the {source} has {have - body_len} bytes too many at its end")


def _parse_plaintext(plaintext: bytes, source: str) -> IdentityBackup:
    """The authenticated contents; anything unexpected (a writer's bug) is BackupCorrupt."""

    def bad(what: str) -> BackupCorrupt:
        return BackupCorrupt(f"the {source} holds {what}")

    private_key, meta = plaintext[:PRIVATE_KEY_LEN], plaintext[PRIVATE_KEY_LEN:]
    try:
        doc = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("no readable contents") from None
    if not isinstance(doc, dict):
        raise bad("no readable contents")
    server, account, pin = doc.get("server"), doc.get("account"), doc.get("server_pin")
    created, version = doc.get("created_ms"), doc.get("software_version")
    if not isinstance(server, str) or not isinstance(account, str):
        raise bad("no server or account name")
    if pin is not None and not isinstance(pin, str):
        raise bad("an invalid server pin")
    if not isinstance(created, int) or not isinstance(version, str):
        raise bad("an invalid creation time or version")
    try:
        store = TofuStore.from_bytes(json.dumps(doc.get("peers")).encode("utf-8"))
    except LocalProtocolError as exc:
        raise bad(f"unreadable peers' keys ({exc})") from None
    peers = () if pin is None else peers_of_server(store, pin)
    if len(peers) != len(store):
        raise bad("peers' keys of another server")
    try:
        return IdentityBackup(server, account, private_key, pin, peers, created, version)
    except (LocalProtocolError, ValueError) as exc:
        raise bad(f"invalid contents ({exc})") from None
