"""Identity keys in a real OS keyring: gnome-keyring's Secret Service started by `make test`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from voipclient.crypto.keystore import load_or_create_identity
from voipclient.storage.keystore import KeyringStore

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(30)]


def test_identity_survives_in_the_real_keyring_and_is_per_account() -> None:
    store = KeyringStore(service="voipclient-test")
    server, account = "127.0.0.1:64738", "ann"
    try:
        assert store.is_available()
        first = load_or_create_identity(store, server, account)
        again = load_or_create_identity(store, server, account)
        assert again.public_bytes() == first.public_bytes()
        other = load_or_create_identity(store, server, "bob")
        assert other.public_bytes() != first.public_bytes()
        # A second process (a restarted app) reads the same key back from the keyring.
        script = textwrap.dedent(
            f"""
            from voipclient.storage.keystore import KeyringStore
            key = KeyringStore(service="voipclient-test").load({server!r}, {account!r})
            print(key.public_bytes().hex())
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=True
        )
        assert out.stdout.strip() == first.public_bytes().hex()
    finally:
        store.delete(server, account)
        store.delete(server, "bob")
    assert store.load(server, account) is None
