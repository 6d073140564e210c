"""Property tests for the crypto core's remaining codecs: the TOFU store, the key file and the
safety-number QR payload. Round trips hold, and arbitrary bytes raise only the declared errors."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.crypto import fingerprint
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import (
    FILE_MAGIC,
    KeystoreCorrupt,
    WrongPassphrase,
)
from voipclient.crypto.tofu import TofuStore, TofuStoreCorrupt, TrustStatus
from voipclient.storage.keystore import EncryptedFileStore

names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
keys = st.binary(min_size=32, max_size=32)


@given(st.lists(st.tuples(names, names, keys, st.booleans()), max_size=8))
def test_tofu_store_round_trips(entries: list[tuple[str, str, bytes, bool]]) -> None:
    store = TofuStore()
    for pin, account, ik, verified in entries:
        status = store.observe(pin, account, ik, 1_000)
        if verified and status is TrustStatus.NEW:
            store.mark_verified(pin, account, ik, 2_000)
    again = TofuStore.from_bytes(store.to_bytes())
    assert again.to_bytes() == store.to_bytes()
    for pin, account, _, _ in entries:
        assert again.get(pin, account) == store.get(pin, account)


@given(st.binary(max_size=512))
def test_tofu_store_from_arbitrary_bytes_raises_only_corrupt(data: bytes) -> None:
    with contextlib.suppress(TofuStoreCorrupt):
        TofuStore.from_bytes(data)


@given(st.one_of(st.binary(max_size=200), st.binary(max_size=81).map(lambda b: FILE_MAGIC + b)))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_key_file_from_arbitrary_bytes_raises_only_keystore_errors(
    tmp_path: Path, data: bytes
) -> None:
    store = EncryptedFileStore(tmp_path, "passphrase", scrypt_log2_n=10)
    try:
        store.decode("server", "account", data)
    except (KeystoreCorrupt, WrongPassphrase):
        pass
    else:
        raise AssertionError("arbitrary bytes opened as a key file")


@given(st.binary(max_size=100))
def test_scanned_qr_from_arbitrary_bytes(data: bytes) -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    with contextlib.suppress(fingerprint.ScannedCodeInvalid):
        assert fingerprint.verify_scanned(data, a, "ann", b, "bob") is False
