"""Where this device keeps its identity keys (PROTOCOL §1): the OS keyring, or a passphrase file.

The format and the rules live here (pure); the stores that touch the keyring and the file
system are adapters in :mod:`voipclient.storage.keystore` (the only module that imports
``keyring``, lazily).

* ``KeyringStore`` -- service ``"voipclient"``, user name ``ik:<account>@<server>`` (both
  percent-encoded, so the pair is unambiguous), secret ``"vc1-ed25519:" + base64(private key)``.
  Without a usable backend (keyring's ``fail`` backend, ``NoKeyringError``/``KeyringError``)
  it raises :class:`KeyringUnavailable`; it also refuses ``keyrings.alt`` backends, which keep
  secrets in plaintext files.
* ``EncryptedFileStore`` (its format: :class:`KeyFileCodec`) -- one file per (server,
  account), named ``ik-<first 32 hex digits of SHA-256(u16 len ‖ server ‖ account)>.vc1key``,
  mode 0600, written atomically (temporary file, fsync, rename). Layout::

      off  len  field
      0    5    magic b"VC1IK"
      5    1    version = 1
      6    1    kdf = 1 (scrypt)
      7    1    log2(N)   (default 17: N = 131072)
      8    1    r         (default 8)
      9    1    p         (default 1)
      10   16   salt (random)
      26   12   nonce (random)              -- bytes[0:38] are the header
      38   48   AES-256-GCM(key = scrypt(NFC(passphrase) UTF-8, salt, N, r, p, 32 bytes),
                            nonce, plaintext = 32-byte Ed25519 private key,
                            aad = header ‖ u16 len ‖ server ‖ u16 len ‖ account) ‖ 16-byte tag

  scrypt N=2^17, r=8, p=1 (OWASP's minimum; 128 MiB, ~0.4 s here) once per start. A lower N
  only through the explicit ``scrypt_log2_n`` argument (tests). Reading accepts what the header
  says within bounds (log2 N 10..20, r 1..16, p 1..4, memory <= 256 MiB) so a crafted file
  cannot make us allocate unbounded memory. The server and account are in the AAD, so a file
  copied over another account's name does not open.

Nothing here falls back silently: :func:`load_or_create_identity` uses exactly the store it is
given, and the caller asks the user before choosing the file store.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from voipclient.crypto.identity import PRIVATE_KEY_LEN, IdentityKey
from voipclient.errors import LocalProtocolError

FILE_MAGIC: Final = b"VC1IK"
FILE_VERSION: Final = 1
KDF_SCRYPT: Final = 1
DEFAULT_LOG2_N: Final = 17  # scrypt N = 2**17
DEFAULT_R: Final = 8
DEFAULT_P: Final = 1
MIN_LOG2_N: Final = 10  # tests only, through the explicit constructor argument
MAX_LOG2_N: Final = 20
MAX_SCRYPT_MEMORY: Final = 256 * 1024 * 1024  # bytes (scrypt needs 128 * r * N)
SALT_LEN: Final = 16
NONCE_LEN: Final = 12
HEADER_LEN: Final = len(FILE_MAGIC) + 5 + SALT_LEN + NONCE_LEN  # 38 bytes
FILE_LEN: Final = HEADER_LEN + PRIVATE_KEY_LEN + 16  # 86 bytes
FILE_SUFFIX: Final = ".vc1key"


class KeystoreError(Exception):
    """The identity key could not be loaded or stored; the message says what to do."""


class KeyringUnavailable(KeystoreError):
    """No usable OS keyring (headless session, no Secret Service, locked, plaintext backend)."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not open the key file (or the file was modified)."""


class KeystoreCorrupt(KeystoreError):
    """A stored key is not in a format we know."""


class IdentityStore(Protocol):
    """Where identity keys live; one per (server, account)."""

    def load(self, server: str, account: str) -> IdentityKey | None:
        """The stored key, or ``None`` if there is none yet."""
        ...

    def save(self, server: str, account: str, key: IdentityKey) -> None:
        """Store (or replace) the key."""
        ...


def load_or_create_identity(store: IdentityStore, server: str, account: str) -> IdentityKey:
    """The identity key for (server, account), created and stored at first login."""
    key = store.load(server, account)
    if key is None:
        key = IdentityKey.generate()
        store.save(server, account, key)
    return key


def check_names(server: str, account: str) -> None:
    if not isinstance(server, str) or not server or not isinstance(account, str) or not account:
        raise LocalProtocolError("server and account must be non-empty strings")


def scrypt_params_ok(log2_n: int, r: int, p: int) -> bool:
    """The scrypt parameters we accept, also when a file says them (bounded memory)."""
    return (
        MIN_LOG2_N <= log2_n <= MAX_LOG2_N
        and 1 <= r <= 16
        and 1 <= p <= 4
        and 128 * r * (1 << log2_n) <= MAX_SCRYPT_MEMORY
    )


def passphrase_bytes(passphrase: str) -> bytes:
    """What scrypt is given: the passphrase NFC-normalised (so the same passphrase typed through
    different input methods derives the same key), UTF-8."""
    if not isinstance(passphrase, str) or not passphrase:
        raise LocalProtocolError("the passphrase must be a non-empty string")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def derive_passphrase_key(
    passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int = 32
) -> bytes:
    """scrypt(passphrase, salt, N = 2**log2_n, r, p) -> ``length`` bytes; the parameters must
    pass :func:`scrypt_params_ok` (checked by the caller, before it trusts a file's header)."""
    return Scrypt(salt=salt, length=length, n=1 << log2_n, r=r, p=p).derive(passphrase)


def _lp(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


class KeyFileCodec:
    """The key file format: scrypt + AES-256-GCM around one identity key (pure: bytes in, out)."""

    __slots__ = ("_log2_n", "_passphrase")

    def __init__(self, passphrase: str, *, scrypt_log2_n: int = DEFAULT_LOG2_N) -> None:
        self._passphrase = passphrase_bytes(passphrase)
        if not scrypt_params_ok(scrypt_log2_n, DEFAULT_R, DEFAULT_P):
            raise LocalProtocolError(
                f"scrypt_log2_n must be {MIN_LOG2_N}..{MAX_LOG2_N} (default {DEFAULT_LOG2_N})"
            )
        self._log2_n = scrypt_log2_n

    @property
    def scrypt_log2_n(self) -> int:
        return self._log2_n

    @staticmethod
    def file_name(server: str, account: str) -> str:
        """``ik-<first 32 hex digits of SHA-256(u16 len ‖ server ‖ account)>.vc1key``."""
        check_names(server, account)
        digest = hashlib.sha256(_lp(server.encode()) + account.encode()).hexdigest()
        return f"ik-{digest[:32]}{FILE_SUFFIX}"

    def _derive(self, salt: bytes, log2_n: int, r: int, p: int) -> AESGCM:
        return AESGCM(derive_passphrase_key(self._passphrase, salt, log2_n, r, p))

    @staticmethod
    def _aad(header: bytes, server: str, account: str) -> bytes:
        return header + _lp(server.encode()) + _lp(account.encode())

    def encode(self, server: str, account: str, key: IdentityKey) -> bytes:
        """The file contents for ``key`` (fresh salt and nonce every time)."""
        check_names(server, account)
        salt = secrets.token_bytes(SALT_LEN)
        nonce = secrets.token_bytes(NONCE_LEN)
        header = (
            FILE_MAGIC
            + bytes([FILE_VERSION, KDF_SCRYPT, self._log2_n, DEFAULT_R, DEFAULT_P])
            + salt
            + nonce
        )
        aead = self._derive(salt, self._log2_n, DEFAULT_R, DEFAULT_P)
        return header + aead.encrypt(nonce, key.private_bytes(), self._aad(header, server, account))

    def decode(
        self, server: str, account: str, data: bytes, *, source: str = "key file"
    ) -> IdentityKey:
        """Inverse of :meth:`encode`."""
        if len(data) != FILE_LEN or not data.startswith(FILE_MAGIC):
            raise KeystoreCorrupt(f"{source} is not a voipclient identity key file")
        version, kdf, log2_n, r, p = data[len(FILE_MAGIC) : len(FILE_MAGIC) + 5]
        if version != FILE_VERSION or kdf != KDF_SCRYPT:
            raise KeystoreCorrupt(f"{source}: unsupported version {version} / kdf {kdf}")
        if not scrypt_params_ok(log2_n, r, p):
            raise KeystoreCorrupt(f"{source}: scrypt parameters out of range")
        header = data[:HEADER_LEN]
        salt = header[10 : 10 + SALT_LEN]
        nonce = header[10 + SALT_LEN :]
        aead = self._derive(salt, log2_n, r, p)
        try:
            raw = aead.decrypt(nonce, data[HEADER_LEN:], self._aad(header, server, account))
        except InvalidTag:
            raise WrongPassphrase(
                f"wrong passphrase for {source} (or the file was modified or belongs to another "
                "account)"
            ) from None
        return IdentityKey.from_private_bytes(raw)

    def __repr__(self) -> str:
        return f"KeyFileCodec(scrypt_log2_n={self._log2_n})"
