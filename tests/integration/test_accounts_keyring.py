"""open_identity against the real Secret Service that `make test` starts, and the real no-backend
path (keyring's ``fail`` backend) asking for a passphrase and refusing a wrong one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest

from voipclient.crypto.keystore import WrongPassphrase
from voipclient.storage.accounts import (
    PassphraseRequest,
    StoreKind,
    open_identity,
)
from voipclient.storage.keystore import KeyringStore

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

SERVICE = "voipclient-test-accounts"
SERVER = "127.0.0.1:64738"


def refuse(_request: PassphraseRequest) -> str | None:
    raise AssertionError("a passphrase must not be asked while a keyring exists")


def test_identity_per_server_and_account_in_the_real_keyring(tmp_path: Path) -> None:
    store = KeyringStore(service=SERVICE)
    assert store.is_available(), "the Secret Service of the test environment is not reachable"
    try:
        first = open_identity(
            SERVER, "ann", keyring_store=store, key_dir=tmp_path, ask_passphrase=refuse
        )
        assert first.kind is StoreKind.KEYRING and first.created
        again = open_identity(
            SERVER, "ann", keyring_store=store, key_dir=tmp_path, ask_passphrase=refuse
        )
        assert not again.created and again.key.public_bytes() == first.key.public_bytes()
        other_server = open_identity(
            "127.0.0.1:1", "ann", keyring_store=store, key_dir=tmp_path, ask_passphrase=refuse
        )
        assert other_server.key.public_bytes() != first.key.public_bytes()
        assert list(tmp_path.iterdir()) == []
        # a restarted app (another process) gets the same key from the keyring
        script = textwrap.dedent(
            f"""
            from voipclient.storage.accounts import open_identity
            from voipclient.storage.keystore import KeyringStore
            got = open_identity({SERVER!r}, "ann", keyring_store=KeyringStore({SERVICE!r}),
                                key_dir={str(tmp_path)!r}, ask_passphrase=lambda r: None)
            print(got.key.public_bytes().hex(), got.kind.value)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.split() == [first.key.public_bytes().hex(), "keyring"]
    finally:
        store.delete(SERVER, "ann")
        store.delete("127.0.0.1:1", "ann")
    assert store.load(SERVER, "ann") is None


@pytest.fixture
def no_keyring_backend() -> Iterator[None]:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    yield
    keyring.set_keyring(previous)


@pytest.mark.usefixtures("no_keyring_backend")
def test_without_a_backend_the_passphrase_file_is_used_and_a_wrong_one_refused(
    tmp_path: Path,
) -> None:
    store = KeyringStore(service=SERVICE)
    assert not store.is_available()
    asked: list[PassphraseRequest] = []

    def ask(answer: str) -> Callable[[PassphraseRequest], str | None]:
        def _ask(request: PassphraseRequest) -> str | None:
            asked.append(request)
            return answer

        return _ask

    made = open_identity(
        SERVER,
        "bob",
        keyring_store=store,
        key_dir=tmp_path,
        ask_passphrase=ask("open sesame"),
        scrypt_log2_n=12,
    )
    assert made.kind is StoreKind.FILE and made.created and asked[-1].creating
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        open_identity(
            SERVER,
            "bob",
            keyring_store=store,
            key_dir=tmp_path,
            ask_passphrase=ask("open says me"),
            attempts=2,
        )
    assert [r.attempt for r in asked[-2:]] == [1, 2]
    again = open_identity(
        SERVER,
        "bob",
        keyring_store=store,
        key_dir=tmp_path,
        ask_passphrase=ask("open sesame"),
    )
    assert again.key.public_bytes() == made.key.public_bytes() and not again.created
