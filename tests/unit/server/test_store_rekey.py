"""A schema-1 store (bindings keyed by ``casefold()``) is re-keyed to account keys on open."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from voipclient.names import name_key
from voipclient.server.store import DB_FILE, SCHEMA_VERSION, Store

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
KEY_C = bytes(range(2, 34))

_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE name_bindings (
    name TEXT PRIMARY KEY,
    ik_pub BLOB NOT NULL CHECK (length(ik_pub) = 32)
);
CREATE TABLE bans (
    ik_pub BLOB PRIMARY KEY CHECK (length(ik_pub) = 32),
    label TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
"""


def old_store(data_dir: Path, rows: list[tuple[str, bytes]]) -> None:
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.executescript(_SCHEMA_1)
    conn.executemany("INSERT INTO name_bindings (name, ik_pub) VALUES (?, ?)", rows)
    conn.commit()
    conn.close()


def test_schema_1_bindings_are_rekeyed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_store(
        tmp_path,
        [
            ("alice", KEY_A),
            ("bob", KEY_B),
            ("b0b", KEY_C),  # bound later by someone else: looks like bob, bob keeps the key
            ("b0b0", KEY_B),
            ("b\u043eb0", KEY_C),  # mixed scripts: can never log in again, dropped
            ("eve\u200b", KEY_C),  # invisible character: dropped
            ("jose\u0301", KEY_A),  # casefold() of a decomposed name: composed, then keyed
        ],
    )
    with caplog.at_level(logging.WARNING, logger="voipclient.server.store"):
        s = Store.open(tmp_path)
    try:
        assert s.load_bindings() == {
            name_key("alice"): KEY_A,
            name_key("bob"): KEY_B,
            name_key("bobo"): KEY_B,
            name_key("jos\u00e9"): KEY_A,
        }
        dropped = [r.getMessage() for r in caplog.records]
        assert len(dropped) == 3
        assert "'b0b'" in dropped[0] and "looks like" in dropped[0]
        assert "U+043E CYRILLIC SMALL LETTER O" in dropped[1]
        assert "U+200B ZERO WIDTH SPACE" in dropped[2]
        # Look-ups by any spelling of the name meet the re-keyed rows.
        assert not s.add_binding("ALICE", KEY_C)
        assert s.remove_binding("B0B")
        assert name_key("bob") not in s.load_bindings()
    finally:
        s.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voipclient.server.store"):
        s = Store.open(tmp_path)  # schema 2 now: nothing is re-keyed again
    try:
        assert caplog.records == []
        assert len(s.load_bindings()) == 3
        conn = sqlite3.connect(tmp_path / DB_FILE)
        try:
            [(version,)] = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        finally:
            conn.close()
        assert version == str(SCHEMA_VERSION) == "2"
    finally:
        s.close()
