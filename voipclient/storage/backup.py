"""Key backup files: export an identity key with its server's verified marks, import them again.

The adapter around :mod:`voipclient.crypto.backup` (the format and the merge rules): it reads
the key from the store :func:`~voipclient.storage.accounts.open_identity` would use, the
peers' pins from the app's :class:`~voipclient.crypto.tofu.TofuStore` / ``peer-keys.json``
(:class:`~voipclient.storage.trust.TofuFile`) and the server's pin from ``server-pins.json``
(:class:`~voipclient.storage.trust.PinFile`), and writes the file atomically with mode 0600.

The arguments are the objects the app's controller already has::

    export_identity(path, bookmark.key, username, passphrase,
                    keyring_store=self._keyring, key_dir=self.data_dir / "keys",
                    ask_passphrase=..., tofu=self._tofu, tofu_file=self._tofu_file,
                    pin_file=PinFile(self.data_dir / "server-pins.json"))
    import_identity(path, passphrase, <the same keywords>, replace=False)

Both run scrypt (and may talk to the keyring over D-Bus): call them off the GUI thread, with
``ask_passphrase`` answering from the GUI as for ``open_identity``, and one identity operation at
a time (the controller's identity lock). ``tofu`` is merged in place and is not thread-safe:
import while no connection uses it (disconnected), so the merge is not lost or raced.

Importing stores the key where ``open_identity`` will look for it: in the OS keyring when one is
available, else in a key file encrypted with a passphrase asked through ``ask_passphrase``
(``creating=True``); never in plaintext. A different key already stored for the same server and
account is not replaced unless ``replace=True`` (:class:`IdentityExists` says so); a replaced key
file is kept aside (``<name>.replaced-<local time>``), a replaced keyring entry is overwritten.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voipclient import __version__
from voipclient.crypto.backup import (
    HEADER_LEN,
    MAX_BODY_LEN,
    BackupCorrupt,
    BackupError,
    IdentityBackup,
    MergeOutcome,
    PeerConflict,
    check_backup_passphrase,
    decode_backup,
    encode_backup,
    merge_peers,
)
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import DEFAULT_LOG2_N, KeystoreError, check_names
from voipclient.crypto.tofu import TofuStore
from voipclient.net.pins import PinStoreCorrupt, server_key
from voipclient.storage.accounts import (
    DEFAULT_ATTEMPTS,
    AskPassphrase,
    PassphraseCancelled,
    PassphraseRequest,
    StoreKind,
    key_file_path,
    open_identity,
)
from voipclient.storage.atomic import atomic_write
from voipclient.storage.keystore import EncryptedFileStore, KeyringStore
from voipclient.storage.trust import PinFile, TofuFile

__all__ = [
    "ExportResult",
    "IdentityExists",
    "ImportResult",
    "KeyAction",
    "NoIdentityKey",
    "export_identity",
    "import_identity",
    "read_backup",
]


class NoIdentityKey(BackupError):
    """There is no identity key for the server and account on this machine to export."""


class IdentityExists(BackupError):
    """Another identity key is stored for the backup's server and account (``replace=True``
    replaces it)."""


class KeyAction(enum.Enum):
    #: No key was stored for the pair: the backup's key is now.
    STORED = "stored"
    #: The same key was already stored: nothing written.
    UNCHANGED = "unchanged"
    #: ``replace=True``: the backup's key replaced the one stored.
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    server: str
    account: str
    #: Where the key was read from.
    kind: StoreKind
    #: The server pin the peers' pins belong to (None: none known, so no peers' pins).
    server_pin: str | None
    #: Peers' pins in the backup, and how many of them are verified.
    peers: int
    verified: int
    #: "" or, for the UI, what could not be included and why.
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ImportResult:
    server: str
    account: str
    key: KeyAction
    #: Where the key is stored now; ``key_file`` for StoreKind.FILE.
    kind: StoreKind
    key_file: Path | None
    #: A replaced key file, kept aside (never read by the app).
    old_key_kept_as: Path | None
    #: The backup's server pin; added to the pin file when it had none for the server.
    server_pin: str | None
    server_pin_added: bool
    #: The pin this machine already has for the server, when it is another one (kept: the
    #: backup's verified marks then apply only when the server presents the backup's pin).
    server_pin_conflict: str | None
    #: Peers newly pinned, peers verified because of the backup, peers pinned here to another
    #: key (kept; not imported).
    peers_added: int
    verified_imported: int
    conflicts: tuple[PeerConflict, ...]
    #: When and by which version the backup was made.
    created_ms: int
    software_version: str
    #: "" or, for the UI, what could not be done and why (the key itself was imported).
    problem: str = ""


# -- reading the stored key ------------------------------------------------------------------------


class _NoKeyring(KeyringStore):
    """Hands ``open_identity`` no keyring: it then only opens an existing key file (a file that
    vanished meanwhile leads to a "new key file" question, which :func:`_existing_only`
    declines, so no key is ever made while reading)."""

    def is_available(self) -> bool:
        return False


def _existing_only(ask: AskPassphrase) -> AskPassphrase:
    def _ask(request: PassphraseRequest) -> str | None:
        return None if request.creating else ask(request)

    return _ask


@dataclass(frozen=True, slots=True)
class _Found:
    key: IdentityKey
    kind: StoreKind
    path: Path | None


def _stored_key(
    server: str,
    account: str,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    attempts: int,
) -> _Found | None:
    """The key ``open_identity`` would return, without ever making one; None when there is none.
    A key file is opened with its passphrase asked through ``ask_passphrase``."""
    path = key_file_path(key_dir, server, account)
    if path.exists():
        try:
            opened = open_identity(
                server,
                account,
                keyring_store=_NoKeyring(keyring_store.service),
                key_dir=key_dir,
                ask_passphrase=_existing_only(ask_passphrase),
                attempts=attempts,
            )
        except PassphraseCancelled:
            if path.exists():
                raise
            raise KeystoreError(f"the key file {path} disappeared while reading it") from None
        return _Found(opened.key, opened.kind, opened.path)
    if keyring_store.is_available():
        key = keyring_store.load(server, account)
        return None if key is None else _Found(key, StoreKind.KEYRING, None)
    return None


def _pin_key(server: str) -> str:
    """``server`` as the pin file keys it (host lower-cased, IPv6 in brackets)."""
    host, sep, port = server.rpartition(":")
    try:
        return server_key(host, int(port)) if sep else server
    except ValueError:
        return server


# -- export ----------------------------------------------------------------------------------------


def export_identity(
    path: str | os.PathLike[str],
    server: str,
    account: str,
    passphrase: str,
    *,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    tofu: TofuStore | None = None,
    tofu_file: TofuFile | None = None,
    pin_file: PinFile | None = None,
    server_pin: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    scrypt_log2_n: int = DEFAULT_LOG2_N,
    clock: Callable[[], float] = time.time,
) -> ExportResult:
    """Write the backup of ``account``'s identity key on ``server`` (``host:port``) to ``path``
    (atomically, mode 0600), protected by ``passphrase``.

    The peers' pins are those of ``server_pin`` (default: the pin ``pin_file`` holds for the
    server), taken from ``tofu`` (the app's store) or else read from ``tofu_file``.

    Raises:
        PassphraseTooShort: ``passphrase`` is too short for a backup (checked first).
        NoIdentityKey: no key is stored for the pair (none is made).
        WrongPassphrase, PassphraseCancelled: the key file could not be opened.
        KeyringUnavailable, KeystoreError: the stored key could not be read.
        BackupError: the file could not be written.
    """
    check_backup_passphrase(passphrase)
    check_names(server, account)
    found = _stored_key(server, account, keyring_store, key_dir, ask_passphrase, attempts)
    if found is None:
        raise NoIdentityKey(
            f"there is no identity key for {account}@{server} on this machine: log in to the "
            "server once to make one, or import a backup"
        )
    problems: list[str] = []
    if server_pin is None and pin_file is not None:
        try:
            server_pin = pin_file.load().get(_pin_key(server))
        except PinStoreCorrupt as exc:
            problems.append(f"The verified marks were not included: {exc}")
    if tofu is None:
        tofu = TofuStore()
        if tofu_file is not None and server_pin is not None:
            loaded = tofu_file.load()
            tofu = loaded.store
            if loaded.problem:
                problems.append(loaded.problem)
    backup = IdentityBackup.of(
        server,
        account,
        found.key,
        server_pin=server_pin,
        tofu=tofu,
        created_ms=int(clock() * 1000),
        software_version=__version__,
    )
    data = encode_backup(backup, passphrase, scrypt_log2_n=scrypt_log2_n)
    target = Path(path)
    try:
        atomic_write(target, data)
    except OSError as exc:
        raise BackupError(f"cannot write the backup to {target}: {exc.strerror or exc}") from exc
    return ExportResult(
        target,
        server,
        account,
        found.kind,
        server_pin,
        len(backup.peers),
        backup.verified_count,
        " ".join(problems),
    )


# -- import ----------------------------------------------------------------------------------------


def read_backup(path: str | os.PathLike[str], passphrase: str) -> IdentityBackup:
    """Read and open the backup at ``path`` (what :func:`import_identity` would import).

    Raises:
        WrongPassphrase, BackupCorrupt, BackupTruncated, BackupTooNew: see ``decode_backup``.
        BackupError: the file cannot be read.
    """
    source = Path(path)
    limit = HEADER_LEN + MAX_BODY_LEN
    try:
        with source.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise BackupCorrupt(f"{source} is too large to be a voipclient key backup")
    return decode_backup(data, passphrase, source=f"backup file {source}")


def import_identity(
    path: str | os.PathLike[str],
    passphrase: str,
    *,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    tofu_file: TofuFile,
    tofu: TofuStore | None = None,
    pin_file: PinFile | None = None,
    replace: bool = False,
    attempts: int = DEFAULT_ATTEMPTS,
    scrypt_log2_n: int = DEFAULT_LOG2_N,
    clock: Callable[[], float] = time.time,
) -> ImportResult:
    """Restore the backup at ``path``: its key (see the module doc for where it goes and when
    an existing key is replaced), its server pin when ``pin_file`` has none for the server, and
    its peers' pins merged into ``tofu`` (the app's store; else ``tofu_file``'s) and saved to
    ``tofu_file`` (:func:`~voipclient.crypto.backup.merge_peers`: local pins of another key are
    kept and reported).

    Raises:
        WrongPassphrase, BackupCorrupt, BackupTruncated, BackupTooNew, BackupError: the backup.
        IdentityExists: another key is stored for the pair and ``replace`` is False.
        PassphraseCancelled: no keyring, and no passphrase was given for the new key file (or
            for opening the existing one to compare).
        KeyringUnavailable, KeystoreError: the key could not be read or stored.
    """
    backup = read_backup(path, passphrase)
    server, account = backup.server, backup.account
    stored = _store_key(
        backup.identity,
        server,
        account,
        keyring_store=keyring_store,
        key_dir=key_dir,
        ask_passphrase=ask_passphrase,
        replace=replace,
        attempts=attempts,
        scrypt_log2_n=scrypt_log2_n,
        clock=clock,
    )
    problems: list[str] = []
    outcome = MergeOutcome(0, 0, ())
    if backup.server_pin is not None:
        if tofu is None:
            loaded = tofu_file.load()
            tofu = loaded.store
            if loaded.problem:
                problems.append(loaded.problem)
        outcome = merge_peers(tofu, backup.server_pin, backup.peers)
        if outcome.added or outcome.verified:
            try:
                tofu_file.save(tofu)
            except OSError as exc:
                problems.append(
                    f"The verified marks could not be saved to {tofu_file.path}: "
                    f"{exc.strerror or exc}."
                )
            if not tofu_file.writable:
                problems.append(
                    f"The verified marks were not saved: {tofu_file.path} could not be read "
                    "and is left untouched."
                )
    pin_added, pin_conflict = False, None
    if pin_file is not None and backup.server_pin is not None:
        try:
            pins = pin_file.load()
            current = pins.get(_pin_key(server))
            if current is None:
                pins.approve(_pin_key(server), backup.server_pin, int(clock() * 1000))
                pin_file.save(pins)
                pin_added = True
            elif current != backup.server_pin:
                pin_conflict = current
        except (PinStoreCorrupt, OSError, ValueError) as exc:
            problems.append(f"The server's key pin was not restored: {exc}.")
    return ImportResult(
        server,
        account,
        stored.action,
        stored.kind,
        stored.key_file,
        stored.kept_as,
        backup.server_pin,
        pin_added,
        pin_conflict,
        outcome.added,
        outcome.verified,
        outcome.conflicts,
        backup.created_ms,
        backup.software_version,
        " ".join(problems),
    )


@dataclass(frozen=True, slots=True)
class _Stored:
    action: KeyAction
    kind: StoreKind
    key_file: Path | None
    kept_as: Path | None


def _store_key(
    key: IdentityKey,
    server: str,
    account: str,
    *,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    replace: bool,
    attempts: int,
    scrypt_log2_n: int,
    clock: Callable[[], float],
) -> _Stored:
    path = key_file_path(key_dir, server, account)
    # With replace=True an existing key file is not opened (its passphrase may be what was lost).
    found = None
    if not (replace and path.exists()):
        found = _stored_key(server, account, keyring_store, key_dir, ask_passphrase, attempts)
    if found is not None and found.key.public_bytes() == key.public_bytes():
        return _Stored(KeyAction.UNCHANGED, found.kind, found.path, None)
    if found is not None and not replace:
        where = f"in the key file {found.path}" if found.path else "in the OS keyring"
        raise IdentityExists(
            f"{account}@{server} already has a different identity key on this machine ({where}, "
            f"public key {found.key.public_bytes()[:8].hex()}…; the backup's is "
            f"{key.public_bytes()[:8].hex()}…). The server accepts the name only with the key it "
            "knows: import again with replace=True (replace the existing key) only if the "
            "backup's key is the one to keep; export the existing key first if unsure."
        )
    action = KeyAction.REPLACED if found is not None or path.exists() else KeyAction.STORED
    kept_as: Path | None = None
    if keyring_store.is_available():
        keyring_store.save(server, account, key)
        if path.exists():  # open_identity reads a key file first: it would hide the new key
            kept_as = _move_aside(path, clock)
        return _Stored(action, StoreKind.KEYRING, None, kept_as)
    new_passphrase = ask_passphrase(PassphraseRequest(server, account, path, True, 1))
    if not new_passphrase:
        raise PassphraseCancelled(
            f"no OS keyring is available and no passphrase was given for the key file, so the "
            f"identity key of {account}@{server} was not imported (it is never written in "
            "plaintext)"
        )
    store = EncryptedFileStore(key_dir, new_passphrase, scrypt_log2_n=scrypt_log2_n)
    if path.exists():
        kept_as = _move_aside(path, clock)
    try:
        store.save(server, account, key)
    except BaseException:
        if kept_as is not None:
            kept_as.replace(path)
        raise
    return _Stored(action, StoreKind.FILE, path, kept_as)


def _move_aside(path: Path, clock: Callable[[], float]) -> Path:
    """Rename a replaced key file to ``<name>.replaced-<local time>[-n]`` (still encrypted;
    ``open_identity`` never reads it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    try:
        path.replace(aside)
    except OSError as exc:
        raise KeystoreError(f"cannot move the replaced key file {path} aside: {exc}") from exc
    return aside
