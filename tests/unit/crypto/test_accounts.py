"""open_identity: keyring first (a fake in-memory backend), else a passphrase file; no plaintext."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors
import pytest

from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import (
    KeyringUnavailable,
    WrongPassphrase,
)
from voipclient.errors import LocalProtocolError
from voipclient.storage.accounts import (
    OpenedIdentity,
    PassphraseCancelled,
    PassphraseRequest,
    StoreKind,
    key_file_path,
    open_identity,
)
from voipclient.storage.keystore import EncryptedFileStore, KeyringStore

SERVER, ACCOUNT = "voice.example.org:64738", "alice"
FAST = 10  # scrypt log2(N), tests only


class FakeMemoryKeyring(keyring.backend.KeyringBackend):
    """A fake: a keyring backend that keeps secrets in a dict."""

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
    """A fake: a keyring that refuses every access (the user did not unlock it)."""

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("locked")


for _fake in (FakeMemoryKeyring, FakeLockedKeyring):
    keyring.backend.KeyringBackend._classes.discard(_fake)


@pytest.fixture
def use_backend() -> Iterator[Callable[[keyring.backend.KeyringBackend], None]]:
    previous = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(previous)


class Asker:
    """Answers passphrase questions from a list; records the questions."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.asked: list[PassphraseRequest] = []

    def __call__(self, request: PassphraseRequest) -> str | None:
        self.asked.append(request)
        return self.answers.pop(0)


def open_(tmp_path: Path, ask: Asker, **kw: object) -> OpenedIdentity:
    return open_identity(
        SERVER,
        ACCOUNT,
        keyring_store=KeyringStore(),
        key_dir=tmp_path,
        ask_passphrase=ask,
        scrypt_log2_n=FAST,
        **kw,  # type: ignore[arg-type]
    )


def test_keyring_backend_holds_the_key_and_no_passphrase_is_asked(
    tmp_path: Path, use_backend: Callable[[keyring.backend.KeyringBackend], None]
) -> None:
    fake = FakeMemoryKeyring()
    use_backend(fake)
    ask = Asker()
    first = open_(tmp_path, ask)
    assert first.kind is StoreKind.KEYRING and first.created and first.path is None
    again = open_(tmp_path, ask)
    assert not again.created and again.key.public_bytes() == first.key.public_bytes()
    assert ask.asked == [] and list(tmp_path.iterdir()) == []
    assert len(fake.secrets) == 1


def test_locked_keyring_is_an_error_not_a_new_file_identity(
    tmp_path: Path, use_backend: Callable[[keyring.backend.KeyringBackend], None]
) -> None:
    use_backend(FakeLockedKeyring())
    with pytest.raises(KeyringUnavailable, match="locked"):
        open_(tmp_path, Asker())
    assert list(tmp_path.iterdir()) == []


def test_no_backend_asks_for_a_passphrase_and_creates_an_encrypted_file(
    tmp_path: Path, use_backend: Callable[[keyring.backend.KeyringBackend], None]
) -> None:
    use_backend(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    ask = Asker("correct horse")
    made = open_(tmp_path, ask)
    assert made.kind is StoreKind.FILE and made.created
    assert made.path == key_file_path(tmp_path, SERVER, ACCOUNT) and made.path.exists()
    assert ask.asked == [
        PassphraseRequest(SERVER, ACCOUNT, made.path, creating=True, attempt=1, error=None)
    ]
    assert made.key.private_bytes() not in made.path.read_bytes()
    # next start: the file is used again, the passphrase opens it
    ask2 = Asker("correct horse")
    opened = open_(tmp_path, ask2)
    assert opened.kind is StoreKind.FILE and not opened.created
    assert opened.key.public_bytes() == made.key.public_bytes()
    assert ask2.asked[0].creating is False


def test_wrong_passphrase_is_asked_again_then_refused(
    tmp_path: Path, use_backend: Callable[[keyring.backend.KeyringBackend], None]
) -> None:
    use_backend(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    key = IdentityKey.generate()
    EncryptedFileStore(tmp_path, "right", scrypt_log2_n=FAST).save(SERVER, ACCOUNT, key)
    before = key_file_path(tmp_path, SERVER, ACCOUNT).read_bytes()
    ask = Asker("wrong", "right")
    got = open_(tmp_path, ask)
    assert got.key.public_bytes() == key.public_bytes()
    assert [(r.attempt, r.error) for r in ask.asked] == [
        (1, None),
        (2, "wrong passphrase, try again"),
    ]
    with pytest.raises(WrongPassphrase, match=r"2 attempts.*no new key was made"):
        open_(tmp_path, Asker("no", "nope"), attempts=2)
    assert key_file_path(tmp_path, SERVER, ACCOUNT).read_bytes() == before


def test_existing_file_wins_over_an_available_keyring(
    tmp_path: Path, use_backend: Callable[[keyring.backend.KeyringBackend], None]
) -> None:
    fake = FakeMemoryKeyring()
    use_backend(fake)
    key = IdentityKey.generate()
    EncryptedFileStore(tmp_path, "pw", scrypt_log2_n=FAST).save(SERVER, ACCOUNT, key)
    got = open_(tmp_path, Asker("pw"))
    assert got.kind is StoreKind.FILE and got.key.public_bytes() == key.public_bytes()
    assert fake.secrets == {}


@pytest.mark.parametrize("answer", [None, ""])
def test_cancelled_passphrase_never_stores_plaintext(
    tmp_path: Path,
    use_backend: Callable[[keyring.backend.KeyringBackend], None],
    answer: str | None,
) -> None:
    use_backend(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    with pytest.raises(PassphraseCancelled, match="never written in plaintext"):
        open_(tmp_path, Asker(answer))
    assert list(tmp_path.iterdir()) == []


def test_attempts_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError):
        open_(tmp_path, Asker(), attempts=0)
