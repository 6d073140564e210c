"""The server's SQLite store: name bindings and bans, nothing else, persisted across opens."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from voipclient.server.store import DB_FILE, Store, StoreError

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    yield s
    s.close()


def test_file_is_private_and_holds_only_its_tables(tmp_path: Path, store: Store) -> None:
    path = tmp_path / DB_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert tables == {"meta", "name_bindings", "bans", "channels", "admins"}


def test_bindings_persist_casefolded_and_first_binding_wins(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    assert s.add_binding("Ann", KEY_A)
    assert not s.add_binding("ANN", KEY_B)  # bound already: unchanged
    assert s.add_binding("bob", KEY_B)
    s.close()
    s = Store.open(tmp_path)
    assert s.load_bindings() == {"ann": KEY_A, "bob": KEY_B}
    assert s.remove_binding("ANN")
    assert not s.remove_binding("ann")
    assert s.load_bindings() == {"bob": KEY_B}
    s.close()


def test_bans(store: Store) -> None:
    assert not store.is_banned(KEY_A)
    store.ban(KEY_A, label="ann", reason="spam")
    assert store.is_banned(KEY_A) and not store.is_banned(KEY_B)
    [ban] = store.bans()
    assert (ban.ik_pub, ban.label, ban.reason) == (KEY_A, "ann", "spam")
    assert ban.created_ms > 0
    store.ban(KEY_A, label="ann", reason="again")  # replaces
    assert [b.reason for b in store.bans()] == ["again"]
    assert store.unban(KEY_A)
    assert not store.unban(KEY_A)
    assert store.bans() == []


def test_keys_must_be_32_bytes(store: Store) -> None:
    with pytest.raises(ValueError):
        store.add_binding("ann", b"short")
    with pytest.raises(ValueError):
        store.ban(b"short")


def test_unknown_schema_version_and_corrupt_file(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    s.close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / DB_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store.open(other)
