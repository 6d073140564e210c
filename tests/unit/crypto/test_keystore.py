"""Identity key storage: OS keyring (with an in-memory fake backend) and the encrypted file."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors
import pytest

from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import (
    DEFAULT_LOG2_N,
    FILE_LEN,
    KeyringUnavailable,
    KeystoreCorrupt,
    WrongPassphrase,
    load_or_create_identity,
)
from voipclient.errors import LocalProtocolError
from voipclient.storage.keystore import EncryptedFileStore, KeyringStore

SERVER, ACCOUNT = "voice.example.org:64738", "alice"
FAST = 10  # scrypt log2(N) for tests only


class FakeMemoryKeyring(keyring.backend.KeyringBackend):
    """A real keyring backend that keeps secrets in a dict (test double)."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.secrets.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError(username)


class FakeLockedKeyring(FakeMemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError("locked")


class FakePlaintextKeyring(FakeMemoryKeyring):
    """Looks like a keyrings.alt backend, which writes secrets in plaintext."""


FakePlaintextKeyring.__module__ = "keyrings.alt.file"

# keyring registers every backend subclass as a candidate for its default backend; keep these
# test doubles out of that registry so no other test (or keyring.get_keyring()) ever picks them.
for _fake in (FakeMemoryKeyring, FakeLockedKeyring, FakePlaintextKeyring):
    keyring.backend.KeyringBackend._classes.discard(_fake)


UseBackend = Callable[[keyring.backend.KeyringBackend], None]


@pytest.fixture
def use_backend() -> Iterator[UseBackend]:
    previous = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(previous)


def test_keyring_round_trip(use_backend: UseBackend) -> None:
    fake = FakeMemoryKeyring()
    use_backend(fake)
    store = KeyringStore()
    assert store.is_available()
    assert store.load(SERVER, ACCOUNT) is None
    key = load_or_create_identity(store, SERVER, ACCOUNT)
    again = load_or_create_identity(store, SERVER, ACCOUNT)
    assert again.public_bytes() == key.public_bytes()
    (service, user), secret = next(iter(fake.secrets.items()))
    assert service == "voipclient"
    assert user == "ik:alice@voice.example.org%3A64738"
    assert secret == "vc1-ed25519:" + base64.b64encode(key.private_bytes()).decode()
    # per (server, account)
    other = load_or_create_identity(store, SERVER, "bob")
    assert other.public_bytes() != key.public_bytes()
    assert len(fake.secrets) == 2
    store.delete(SERVER, "bob")
    store.delete(SERVER, "bob")
    assert store.load(SERVER, "bob") is None


def test_username_is_unambiguous() -> None:
    assert KeyringStore.username("b", "a@c") != KeyringStore.username("c", "a@b")


def test_keyring_fail_backend_raises_keyring_unavailable(use_backend: UseBackend) -> None:
    use_backend(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    store = KeyringStore()
    assert not store.is_available()
    with pytest.raises(KeyringUnavailable, match="passphrase-protected key file"):
        store.load(SERVER, ACCOUNT)
    with pytest.raises(KeyringUnavailable):
        store.save(SERVER, ACCOUNT, IdentityKey.generate())
    with pytest.raises(KeyringUnavailable):
        load_or_create_identity(store, SERVER, ACCOUNT)


def test_keyring_errors_become_keyring_unavailable(use_backend: UseBackend) -> None:
    use_backend(FakeLockedKeyring())
    store = KeyringStore()
    with pytest.raises(KeyringUnavailable, match="locked"):
        store.load(SERVER, ACCOUNT)
    with pytest.raises(KeyringUnavailable, match="locked"):
        store.save(SERVER, ACCOUNT, IdentityKey.generate())


def test_plaintext_keyring_backend_is_refused(use_backend: UseBackend) -> None:
    fake = FakePlaintextKeyring()
    use_backend(fake)
    with pytest.raises(KeyringUnavailable, match="plaintext"):
        KeyringStore().save(SERVER, ACCOUNT, IdentityKey.generate())
    assert fake.secrets == {}


@pytest.mark.parametrize("secret", ["garbage", "vc1-ed25519:!!!", "vc1-ed25519:AAAA"])
def test_corrupt_keyring_entry(use_backend: UseBackend, secret: str) -> None:
    fake = FakeMemoryKeyring()
    use_backend(fake)
    fake.secrets[("voipclient", KeyringStore.username(SERVER, ACCOUNT))] = secret
    with pytest.raises(KeystoreCorrupt):
        KeyringStore().load(SERVER, ACCOUNT)


# -- encrypted file ------------------------------------------------------------------------------


def test_file_round_trip_mode_and_no_plaintext(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    store = EncryptedFileStore(directory, "correct horse", scrypt_log2_n=FAST)
    assert store.load(SERVER, ACCOUNT) is None
    key = load_or_create_identity(store, SERVER, ACCOUNT)
    path = store.path_for(SERVER, ACCOUNT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [p.name for p in directory.iterdir()] == [path.name]  # no temp file left over
    data = path.read_bytes()
    assert len(data) == FILE_LEN
    secret = key.private_bytes()
    for form in (secret, secret.hex().encode(), base64.b64encode(secret), secret[:16], secret[16:]):
        assert form not in data
    again = EncryptedFileStore(directory, "correct horse", scrypt_log2_n=FAST).load(SERVER, ACCOUNT)
    assert again is not None and again.public_bytes() == key.public_bytes()
    assert load_or_create_identity(store, SERVER, ACCOUNT).public_bytes() == key.public_bytes()
    assert data[7] == FAST  # parameters recorded in the header


def test_wrong_passphrase_refused(tmp_path: Path) -> None:
    EncryptedFileStore(tmp_path, "right", scrypt_log2_n=FAST).save(
        SERVER, ACCOUNT, IdentityKey.generate()
    )
    with pytest.raises(WrongPassphrase):
        EncryptedFileStore(tmp_path, "wrong", scrypt_log2_n=FAST).load(SERVER, ACCOUNT)
    with pytest.raises(WrongPassphrase):  # must not silently create a new key either
        load_or_create_identity(
            EncryptedFileStore(tmp_path, "wrong", scrypt_log2_n=FAST), SERVER, ACCOUNT
        )


def test_passphrase_is_nfc_normalised(tmp_path: Path) -> None:
    key = IdentityKey.generate()
    EncryptedFileStore(tmp_path, "caf\u00e9", scrypt_log2_n=FAST).save(SERVER, ACCOUNT, key)
    got = EncryptedFileStore(tmp_path, "cafe\u0301", scrypt_log2_n=FAST).load(SERVER, ACCOUNT)
    assert got is not None and got.public_bytes() == key.public_bytes()


@pytest.mark.parametrize("offset", [10, 25, 26, 37, 38, 60, FILE_LEN - 1])
def test_tampered_file_refused(tmp_path: Path, offset: int) -> None:
    store = EncryptedFileStore(tmp_path, "pw", scrypt_log2_n=FAST)
    store.save(SERVER, ACCOUNT, IdentityKey.generate())
    path = store.path_for(SERVER, ACCOUNT)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WrongPassphrase):
        store.load(SERVER, ACCOUNT)


def test_file_of_another_account_refused(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, "pw", scrypt_log2_n=FAST)
    store.save(SERVER, "mallory", IdentityKey.generate())
    store.path_for(SERVER, ACCOUNT).write_bytes(store.path_for(SERVER, "mallory").read_bytes())
    with pytest.raises(WrongPassphrase):
        store.load(SERVER, ACCOUNT)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: d + b"\x00",
        lambda d: b"XXXXX" + d[5:],
        lambda d: d[:5] + b"\x02" + d[6:],  # version
        lambda d: d[:6] + b"\x02" + d[7:],  # kdf
        lambda d: d[:7] + b"\x09" + d[8:],  # log2 N too small
        lambda d: d[:7] + b"\x1f" + d[8:],  # log2 N too large (memory bomb)
        lambda d: d[:8] + b"\x00" + d[9:],  # r = 0
        lambda d: b"",
    ],
)
def test_malformed_file(tmp_path: Path, mutate: object) -> None:
    store = EncryptedFileStore(tmp_path, "pw", scrypt_log2_n=FAST)
    store.save(SERVER, ACCOUNT, IdentityKey.generate())
    path = store.path_for(SERVER, ACCOUNT)
    path.write_bytes(mutate(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(KeystoreCorrupt):
        store.load(SERVER, ACCOUNT)


def test_overwrite_is_atomic_and_keeps_mode(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, "pw", scrypt_log2_n=FAST)
    store.save(SERVER, ACCOUNT, IdentityKey.generate())
    second = IdentityKey.generate()
    os.chmod(store.path_for(SERVER, ACCOUNT), 0o644)
    store.save(SERVER, ACCOUNT, second)
    assert stat.S_IMODE(store.path_for(SERVER, ACCOUNT).stat().st_mode) == 0o600
    loaded = store.load(SERVER, ACCOUNT)
    assert loaded is not None and loaded.public_bytes() == second.public_bytes()
    assert len(list(tmp_path.iterdir())) == 1


def test_scrypt_parameters() -> None:
    assert DEFAULT_LOG2_N == 17
    with pytest.raises(LocalProtocolError):
        EncryptedFileStore("/nonexistent", "pw", scrypt_log2_n=9)
    with pytest.raises(LocalProtocolError):
        EncryptedFileStore("/nonexistent", "pw", scrypt_log2_n=21)
    with pytest.raises(LocalProtocolError):
        EncryptedFileStore("/nonexistent", "")
    store = EncryptedFileStore("/nonexistent", "hunter2")
    assert "hunter2" not in repr(store)


def test_only_keystore_imports_keyring() -> None:
    code = (
        "import sys; sys.modules['keyring'] = None\n"
        "import voipclient.crypto.identity, voipclient.crypto.session, voipclient.crypto.keydist\n"
        "import voipclient.crypto.text, voipclient.crypto.tofu, voipclient.crypto.fingerprint\n"
        "import voipclient.crypto.keystore\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
