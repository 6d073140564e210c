"""Which store holds an account's identity key, chosen without ever falling back to plaintext.

The identity key is per (server ``host:port``, account name) (PROTOCOL §1).
:func:`open_identity` picks the store and returns the key:

1. A passphrase-protected key file for the pair already exists → the user chose the file
   before: ask the passphrase (``creating=False``) and open it. A wrong passphrase is asked again
   (the request says why) up to ``attempts`` times, then refused with :class:`WrongPassphrase`.
2. Else an OS keyring backend exists → the key lives there (:class:`KeyringStore`), created at
   first login. Errors of an existing keyring (locked, refused) propagate: falling back to a new
   file key would silently give the user a second identity.
3. Else (keyring's ``fail`` backend, or only ``keyrings.alt`` plaintext backends) → ask for a
   passphrase for a new key file (``creating=True``; the UI asks twice). ``None`` from the
   callback (the user cancelled) raises :class:`PassphraseCancelled`: the key is never stored
   in plaintext and never silently kept only in memory.

An adapter (keyring, files); it imports ``keyring`` only through :mod:`keystore`, lazily.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import (
    DEFAULT_LOG2_N,
    KeystoreError,
    WrongPassphrase,
    load_or_create_identity,
)
from voipclient.errors import LocalProtocolError
from voipclient.storage.keystore import EncryptedFileStore, KeyringStore

__all__ = [
    "OpenedIdentity",
    "PassphraseCancelled",
    "PassphraseRequest",
    "StoreKind",
    "key_file_path",
    "open_identity",
]

DEFAULT_ATTEMPTS = 3


class PassphraseCancelled(KeystoreError):
    """No keyring, and the user gave no passphrase: the key is not stored (never plaintext)."""


class StoreKind(enum.Enum):
    KEYRING = "keyring"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class PassphraseRequest:
    """What the passphrase dialog shows."""

    server: str
    account: str
    #: The key file that the passphrase protects.
    path: Path
    #: True: a new key file (ask twice, explain that there is no OS keyring); False: open one.
    creating: bool
    #: 1 for the first question, 2 after one wrong passphrase, …
    attempt: int
    #: Why we ask again (the previous passphrase was wrong), else None.
    error: str | None = None


#: Returns the passphrase, or None when the user cancels.
AskPassphrase = Callable[[PassphraseRequest], str | None]


@dataclass(frozen=True, slots=True)
class OpenedIdentity:
    key: IdentityKey
    kind: StoreKind
    #: The key file (FILE only).
    path: Path | None
    #: The key was generated now (first login with this account on this server).
    created: bool


def key_file_path(directory: str | os.PathLike[str], server: str, account: str) -> Path:
    """Where :class:`EncryptedFileStore` keeps the key of (server, account) in ``directory``."""
    # path_for needs no passphrase; the constructor insists on one, so give it a placeholder
    # that is never used to derive anything.
    return EncryptedFileStore(directory, "-").path_for(server, account)


def open_identity(
    server: str,
    account: str,
    *,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    attempts: int = DEFAULT_ATTEMPTS,
    scrypt_log2_n: int = DEFAULT_LOG2_N,
) -> OpenedIdentity:
    """The identity key of ``account`` on ``server``, from the store chosen as described above.

    Raises:
        WrongPassphrase: ``attempts`` wrong passphrases for an existing key file.
        PassphraseCancelled: the user cancelled the passphrase question.
        KeyringUnavailable: the keyring exists but failed (locked, refused).
        KeystoreCorrupt, KeystoreError: an unreadable or malformed stored key.
    """
    if attempts < 1:
        raise LocalProtocolError("attempts must be >= 1")
    path = key_file_path(key_dir, server, account)
    if path.exists():
        return _open_file(server, account, path, key_dir, ask_passphrase, attempts, scrypt_log2_n)
    if keyring_store.is_available():
        existing = keyring_store.load(server, account)
        key = load_or_create_identity(keyring_store, server, account)
        return OpenedIdentity(key, StoreKind.KEYRING, None, created=existing is None)
    passphrase = ask_passphrase(PassphraseRequest(server, account, path, creating=True, attempt=1))
    if not passphrase:
        raise PassphraseCancelled(
            f"no OS keyring is available and no passphrase was given, so the identity key for "
            f"{account}@{server} was not stored (it is never written in plaintext); start a "
            "Secret Service provider or choose a passphrase"
        )
    store = EncryptedFileStore(key_dir, passphrase, scrypt_log2_n=scrypt_log2_n)
    key = IdentityKey.generate()
    store.save(server, account, key)
    return OpenedIdentity(key, StoreKind.FILE, path, created=True)


def _open_file(
    server: str,
    account: str,
    path: Path,
    key_dir: str | os.PathLike[str],
    ask: AskPassphrase,
    attempts: int,
    scrypt_log2_n: int,
) -> OpenedIdentity:
    error: str | None = None
    for attempt in range(1, attempts + 1):
        passphrase = ask(PassphraseRequest(server, account, path, False, attempt, error))
        if not passphrase:
            raise PassphraseCancelled(
                f"no passphrase given for the key file {path} of {account}@{server}"
            )
        store = EncryptedFileStore(key_dir, passphrase, scrypt_log2_n=scrypt_log2_n)
        try:
            key = store.load(server, account)
        except WrongPassphrase:
            error = "wrong passphrase, try again"
            continue
        if key is None:  # removed between the check and the read
            raise KeystoreError(f"the key file {path} disappeared while opening it")
        return OpenedIdentity(key, StoreKind.FILE, path, created=False)
    raise WrongPassphrase(
        f"wrong passphrase for the key file {path} of {account}@{server} ({attempts} attempts); "
        "the key was not opened and no new key was made"
    )
