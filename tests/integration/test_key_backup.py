"""Key backup end to end: export an identity key and its verified marks from one machine's stores,
import them into a fresh one. The keyring is the real Secret Service `make test` starts (two
keyring services stand for two machines); the key files are real files, and keyring's ``fail``
backend is the real "no keyring" path."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pytest

from tests.integration import test_accounts_keyring
from voipclient.crypto.backup import BACKUP_MAGIC, BackupError, BackupTruncated, PassphraseTooShort
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import WrongPassphrase
from voipclient.crypto.tofu import PinnedKey, TofuStore, TrustLevel
from voipclient.net.pins import PinStore
from voipclient.storage.accounts import (
    AskPassphrase,
    PassphraseCancelled,
    PassphraseRequest,
    StoreKind,
    key_file_path,
    open_identity,
)
from voipclient.storage.backup import (
    ExportResult,
    IdentityExists,
    ImportResult,
    KeyAction,
    NoIdentityKey,
    export_identity,
    import_identity,
)
from voipclient.storage.keystore import EncryptedFileStore, KeyringStore
from voipclient.storage.trust import PinFile, TofuFile

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

FAST = 10  # scrypt log2(N) for the backup and the key files of these tests
SERVER = "127.0.0.1:64738"
PIN = "sha256/" + base64.b64encode(b"\x05" * 32).decode()
OTHER_PIN = "sha256/" + base64.b64encode(b"\x06" * 32).decode()
BOB, CAROL, MALLORY = b"\x0b" * 32, b"\x0c" * 32, b"\x0d" * 32
BACKUP_PASS = "a long backup passphrase"


def refuse(_request: PassphraseRequest) -> str | None:
    raise AssertionError("no passphrase may be asked while the key is in the keyring")


def answer(value: str | None, asked: list[PassphraseRequest]) -> AskPassphrase:
    def _ask(request: PassphraseRequest) -> str | None:
        asked.append(request)
        return value

    return _ask


class Stores(TypedDict):
    keyring_store: KeyringStore
    key_dir: Path
    ask_passphrase: AskPassphrase
    tofu_file: TofuFile
    pin_file: PinFile
    scrypt_log2_n: int


@dataclass
class Machine:
    """One installation: its keyring (a service of the real Secret Service) and data folder,
    with the stores built as the app's controller builds them."""

    keyring: KeyringStore
    data_dir: Path

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def tofu_file(self) -> TofuFile:
        return TofuFile(self.data_dir / "peer-keys.json")

    @property
    def pin_file(self) -> PinFile:
        return PinFile(self.data_dir / "server-pins.json")

    def stores(self, ask: AskPassphrase) -> Stores:
        """The stores as the app's controller builds them."""
        return Stores(
            keyring_store=self.keyring,
            key_dir=self.key_dir,
            ask_passphrase=ask,
            tofu_file=self.tofu_file,
            pin_file=self.pin_file,
            scrypt_log2_n=FAST,
        )

    def export(
        self,
        path: Path,
        account: str,
        passphrase: str = BACKUP_PASS,
        ask: AskPassphrase = refuse,
        **kwargs: Any,
    ) -> ExportResult:
        return export_identity(path, SERVER, account, passphrase, **self.stores(ask), **kwargs)

    def restore(
        self,
        path: Path,
        passphrase: str = BACKUP_PASS,
        ask: AskPassphrase = refuse,
        **kwargs: Any,
    ) -> ImportResult:
        return import_identity(path, passphrase, **self.stores(ask), **kwargs)

    def open(self, account: str, ask: AskPassphrase = refuse) -> IdentityKey:
        """What the app does at login; must find the key, never make one."""
        opened = open_identity(
            SERVER, account, keyring_store=self.keyring, key_dir=self.key_dir, ask_passphrase=ask
        )
        assert not opened.created
        return opened.key


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[tuple[Machine, Machine]]:
    old = Machine(KeyringStore("voipclient-test-backup-old"), tmp_path / "old")
    new = Machine(KeyringStore("voipclient-test-backup-new"), tmp_path / "new")
    yield old, new
    for m in (old, new):
        if m.keyring.is_available():
            for account in ("ann", "bea"):
                m.keyring.delete(SERVER, account)


def the_old_machines_trust(old: Machine) -> None:
    """The old machine approved the server's pin, verified bob, has carol on first use, and
    pins of another server."""
    pins = PinStore()
    pins.approve(SERVER, PIN, 1)
    old.pin_file.save(pins)
    tofu = TofuStore()
    tofu.observe(PIN, "bob", BOB, 100)
    tofu.mark_verified(PIN, "bob", BOB, 200)
    tofu.observe(PIN, "carol", CAROL, 300)
    tofu.observe(OTHER_PIN, "dan", BOB, 400)
    tofu.mark_verified(OTHER_PIN, "dan", BOB, 500)
    old.tofu_file.save(tofu)


def test_keyring_key_and_verified_marks_move_to_a_fresh_machine(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    assert old.keyring.is_available(), "the Secret Service of the test environment is not there"
    key = open_identity(
        SERVER, "ann", keyring_store=old.keyring, key_dir=old.key_dir, ask_passphrase=refuse
    ).key
    the_old_machines_trust(old)
    path = tmp_path / "ann.vc1backup"

    exported = old.export(path, "ann", BACKUP_PASS)
    assert exported.kind is StoreKind.KEYRING and exported.server_pin == PIN
    assert (exported.peers, exported.verified, exported.problem) == (2, 1, "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert data.startswith(BACKUP_MAGIC) and key.private_bytes() not in data
    assert list(tmp_path.glob(".*")) == []  # no temporary file left

    # The new machine already met carol with another key (verified there): that pin stays.
    local = TofuStore()
    local.observe(PIN, "carol", MALLORY, 50)
    local.mark_verified(PIN, "carol", MALLORY, 60)
    new.tofu_file.save(local)

    restored = new.restore(path, BACKUP_PASS)
    assert restored.key is KeyAction.STORED and restored.kind is StoreKind.KEYRING
    assert (restored.server, restored.account) == (SERVER, "ann")
    assert restored.verified_imported == 1 and restored.peers_added == 1
    assert restored.server_pin_added and restored.server_pin_conflict is None
    [conflict] = restored.conflicts
    assert (conflict.account, conflict.local_key, conflict.backup_key) == ("carol", MALLORY, CAROL)
    assert restored.problem == ""

    # The app on the new machine logs in with the same key, asking nothing, making nothing.
    assert new.open("ann").private_bytes() == key.private_bytes()
    assert list(new.key_dir.glob("*")) == []  # in the keyring, no key file
    tofu = new.tofu_file.load().store
    assert tofu.get(PIN, "bob") == PinnedKey(BOB, 100, TrustLevel.VERIFIED)
    assert tofu.get(PIN, "carol") == PinnedKey(MALLORY, 50, TrustLevel.VERIFIED)  # local kept
    assert tofu.get(OTHER_PIN, "dan") is None  # only the backed-up server's pins
    assert new.pin_file.load().get(SERVER) == PIN

    # Another process (a restarted app) reads the same key from the real keyring.
    script = textwrap.dedent(
        f"""
        from voipclient.storage.keystore import KeyringStore
        key = KeyringStore({new.keyring.service!r}).load({SERVER!r}, "ann")
        print(key.public_bytes().hex())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == key.public_bytes().hex()

    again = new.restore(path, BACKUP_PASS)
    assert again.key is KeyAction.UNCHANGED
    assert (again.peers_added, again.verified_imported, again.server_pin_added) == (0, 0, False)


def test_import_refuses_to_replace_another_key_in_the_keyring(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    key = open_identity(
        SERVER, "ann", keyring_store=old.keyring, key_dir=old.key_dir, ask_passphrase=refuse
    ).key
    the_old_machines_trust(old)
    path = tmp_path / "ann.vc1backup"
    old.export(path, "ann", BACKUP_PASS)
    theirs = open_identity(
        SERVER, "ann", keyring_store=new.keyring, key_dir=new.key_dir, ask_passphrase=refuse
    ).key
    assert theirs.public_bytes() != key.public_bytes()

    with pytest.raises(IdentityExists, match=r"different identity key.*replace=True"):
        new.restore(path, BACKUP_PASS)
    assert new.open("ann").private_bytes() == theirs.private_bytes()  # untouched
    assert not new.tofu_file.path.exists() and not new.pin_file.path.exists()

    replaced = new.restore(path, replace=True)
    assert replaced.key is KeyAction.REPLACED and replaced.verified_imported == 1
    assert new.open("ann").private_bytes() == key.private_bytes()


def test_wrong_backup_passphrase_and_missing_key_change_nothing(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    path = tmp_path / "ann.vc1backup"
    with pytest.raises(NoIdentityKey, match="no identity key for ann@"):
        old.export(path, "ann", BACKUP_PASS)
    assert old.keyring.load(SERVER, "ann") is None and not path.exists()  # none was made
    with pytest.raises(PassphraseTooShort):
        old.export(path, "ann", "short")

    open_identity(
        SERVER, "ann", keyring_store=old.keyring, key_dir=old.key_dir, ask_passphrase=refuse
    )
    old.export(path, "ann", BACKUP_PASS)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        new.restore(path, BACKUP_PASS + "?")
    assert new.keyring.load(SERVER, "ann") is None


def test_a_key_file_on_a_machine_with_a_keyring_is_exported_and_lands_in_the_keyring(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    """open_identity reads an existing key file before the keyring: so does the export (asking
    that file's passphrase); the new machine has a keyring, so the key goes there."""
    old, new = machines
    key = IdentityKey.generate()
    EncryptedFileStore(old.key_dir, "key file pass", scrypt_log2_n=FAST).save(SERVER, "bea", key)
    asked: list[PassphraseRequest] = []
    path = tmp_path / "bea.vc1backup"
    exported = old.export(path, "bea", BACKUP_PASS, answer("key file pass", asked))
    assert exported.kind is StoreKind.FILE and exported.peers == 0 and exported.server_pin is None
    assert [(r.creating, r.path) for r in asked] == [
        (False, key_file_path(old.key_dir, SERVER, "bea"))
    ]
    assert old.keyring.load(SERVER, "bea") is None  # reading made no keyring key
    restored = new.restore(path, BACKUP_PASS)
    assert restored.kind is StoreKind.KEYRING and restored.server_pin is None
    assert new.open("bea").private_bytes() == key.private_bytes()


#: keyring's real "fail" backend for one test (the fixture of the open_identity tests)
no_keyring_backend = test_accounts_keyring.no_keyring_backend


@pytest.mark.usefixtures("no_keyring_backend")
def test_without_a_keyring_the_key_moves_between_passphrase_files(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    assert not old.keyring.is_available()
    asked: list[PassphraseRequest] = []
    key = open_identity(
        SERVER,
        "ann",
        keyring_store=old.keyring,
        key_dir=old.key_dir,
        ask_passphrase=answer("old key pass", asked),
        scrypt_log2_n=FAST,
    ).key
    the_old_machines_trust(old)
    path = tmp_path / "ann.vc1backup"
    with pytest.raises(WrongPassphrase):  # the key file's passphrase, asked as at login
        old.export(path, "ann", BACKUP_PASS, answer("nope", asked), attempts=2)
    assert [r.attempt for r in asked[-2:]] == [1, 2] and not path.exists()
    exported = old.export(path, "ann", BACKUP_PASS, answer("old key pass", asked))
    assert exported.kind is StoreKind.FILE and exported.verified == 1

    # No keyring on the new machine either: a new key file, with a passphrase asked for it.
    asked.clear()
    restored = new.restore(path, BACKUP_PASS, answer("new key pass", asked))
    new_file = key_file_path(new.key_dir, SERVER, "ann")
    assert restored.kind is StoreKind.FILE and restored.key_file == new_file
    assert [(r.creating, r.path) for r in asked] == [(True, new_file)]
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert key.private_bytes() not in new_file.read_bytes()
    assert new.open("ann", answer("new key pass", [])).private_bytes() == key.private_bytes()
    assert new.tofu_file.load().store.get(PIN, "bob") == PinnedKey(BOB, 100, TrustLevel.VERIFIED)

    # A cancelled passphrase stores nothing (never plaintext).
    other = Machine(new.keyring, tmp_path / "third")
    with pytest.raises(PassphraseCancelled, match="never written in plaintext"):
        other.restore(path, BACKUP_PASS, answer(None, []))
    assert not other.key_dir.exists() or list(other.key_dir.iterdir()) == []


@pytest.mark.usefixtures("no_keyring_backend")
def test_a_different_key_file_is_kept_unless_replaced_and_then_kept_aside(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    key = IdentityKey.generate()
    EncryptedFileStore(old.key_dir, "old key pass", scrypt_log2_n=FAST).save(SERVER, "ann", key)
    path = tmp_path / "ann.vc1backup"
    old.export(path, "ann", BACKUP_PASS, answer("old key pass", []))
    theirs = IdentityKey.generate()
    EncryptedFileStore(new.key_dir, "their pass", scrypt_log2_n=FAST).save(SERVER, "ann", theirs)
    new_file = key_file_path(new.key_dir, SERVER, "ann")

    with pytest.raises(IdentityExists, match="replace=True"):  # compared after opening it
        new.restore(path, BACKUP_PASS, answer("their pass", []))
    assert new.open("ann", answer("their pass", [])).private_bytes() == theirs.private_bytes()

    asked: list[PassphraseRequest] = []
    replaced = new.restore(path, BACKUP_PASS, answer("fresh pass", asked), replace=True)
    assert replaced.key is KeyAction.REPLACED and [r.creating for r in asked] == [True]
    assert new.open("ann", answer("fresh pass", [])).private_bytes() == key.private_bytes()
    kept = replaced.old_key_kept_as
    assert kept is not None and kept.parent == new_file.parent and kept != new_file
    old_key = EncryptedFileStore(new.key_dir, "their pass").decode(SERVER, "ann", kept.read_bytes())
    assert old_key.private_bytes() == theirs.private_bytes()  # still there, still encrypted


def test_damaged_files_and_unwritable_places_are_reported(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    open_identity(
        SERVER, "ann", keyring_store=old.keyring, key_dir=old.key_dir, ask_passphrase=refuse
    )
    with pytest.raises(BackupError, match="cannot write the backup"):
        old.export(tmp_path / "no such folder" / "ann.vc1backup", "ann")
    path = tmp_path / "ann.vc1backup"
    old.export(path, "ann")
    path.write_bytes(path.read_bytes()[:-1])  # an interrupted copy
    with pytest.raises(BackupTruncated, match="truncated"):
        new.restore(path)
    with pytest.raises(BackupError, match="cannot read"):
        new.restore(tmp_path / "missing.vc1backup")
    assert new.keyring.load(SERVER, "ann") is None and not new.data_dir.exists()
