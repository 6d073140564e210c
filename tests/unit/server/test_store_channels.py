"""The store's administrators' channels and granted administrators, and how the adapter merges
stored channels with the configured ones at start (``app.admin_channels``, ``seed_records``)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from voipclient.server.app import admin_channels, seed_records
from voipclient.server.config import Settings, hash_password, parse_config
from voipclient.server.control import FIRST_ADMIN_CHANNEL_ID, LOBBY_ID, ServerConfig, ServerCore
from voipclient.server.store import DB_FILE, Store, StoredChannel

NEW = FIRST_ADMIN_CHANNEL_ID
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    yield s
    s.close()


def test_channels_are_saved_updated_deleted_and_survive_a_reopen(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    assert s.channels() == [] and s.next_channel_id() == 0
    hashed = hash_password("pw", log2_n=10)
    vault = StoredChannel(NEW, None, "games", "Vault", "d", hashed, 3, ("ann", "Bob"))
    s.save_channel(vault)
    s.save_channel(StoredChannel(NEW + 1, NEW, None, "Inner"))
    assert s.next_channel_id() == NEW + 2
    # An update that keeps the stored password hash.
    s.save_channel(StoredChannel(NEW, LOBBY_ID, None, "Vault 2"), keep_password=True)
    s.close()
    s = Store.open(tmp_path)
    [first, second] = s.channels()
    assert first == StoredChannel(NEW, LOBBY_ID, None, "Vault 2", "", hashed, 0, None)
    assert second == StoredChannel(NEW + 1, NEW, None, "Inner")
    s.save_channel(StoredChannel(NEW, LOBBY_ID, None, "Vault 2"))  # password removed
    assert s.channels()[0].password_hash is None
    assert s.delete_channel(NEW + 1) and not s.delete_channel(NEW + 1)
    assert s.next_channel_id() == NEW + 2  # a deleted id is not handed out again
    assert "pw" not in repr(first)
    s.close()


def test_a_stored_channel_names_one_parent() -> None:
    with pytest.raises(ValueError):
        StoredChannel(NEW, None, None, "x")
    with pytest.raises(ValueError):
        StoredChannel(NEW, 1, "a", "x")


def test_the_database_checks_its_rows(store: Store, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILE)
    try:
        for row in ((1, 1, None, "lobby twin"), (NEW, None, None, "no parent")):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(
                    "INSERT INTO channels (id, parent, parent_name, name, created_ms)"
                    " VALUES (?, ?, ?, ?, 0)",
                    row,
                )
    finally:
        conn.close()


def test_seeding_happens_once(store: Store) -> None:
    seeds = [StoredChannel(NEW, LOBBY_ID, None, "General")]
    assert store.seed_channels(seeds)
    store.delete_channel(NEW)  # an administrator deleted it
    assert not store.seed_channels(seeds)
    assert store.channels() == []


def test_granted_admins(store: Store, tmp_path: Path) -> None:
    assert store.admins() == []
    assert store.add_admin(KEY_A, "ann", "first user")
    assert not store.add_admin(KEY_A, "ann again")
    store.add_admin(KEY_B)
    assert [(a.ik_pub, a.label, a.reason) for a in store.admins()] == [
        (KEY_A, "ann", "first user"),
        (KEY_B, "", ""),
    ]
    with pytest.raises(ValueError):
        store.add_admin(b"short")
    again = Store.open(tmp_path)
    assert [a.ik_pub for a in again.admins()] == [KEY_A, KEY_B]
    again.close()


# -- merging with the configuration ---------------------------------------------------------------

CONFIG = """
[[channels]]
name = "Games"

[[channels]]
name = "Music"
"""


def ids(settings: Settings, stored: list[StoredChannel]) -> dict[int, tuple[int | None, str]]:
    return {c.id: (c.parent, c.name) for c in admin_channels(settings, stored)}


def test_configured_parents_are_found_by_name_whatever_their_order() -> None:
    stored = [
        StoredChannel(NEW, None, "games", "Raid"),
        StoredChannel(NEW + 1, NEW, None, "Raid chat"),
        StoredChannel(NEW + 2, LOBBY_ID, None, "Top"),
    ]
    settings = parse_config(CONFIG)  # Games 2, Music 3
    assert ids(settings, stored) == {
        NEW: (2, "Raid"),
        NEW + 1: (NEW, "Raid chat"),
        NEW + 2: (1, "Top"),
    }
    reordered = parse_config('[[channels]]\nname = "Music"\n[[channels]]\nname = "games"\n')
    assert ids(reordered, stored)[NEW] == (3, "Raid")
    ServerCore(
        reordered.server_config(udp_port=0), admin_channels=admin_channels(reordered, stored)
    )


def test_what_no_longer_fits_is_moved_or_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stored = [
        StoredChannel(NEW, None, "games", "Orphan"),  # Games is gone from the file
        StoredChannel(2, LOBBY_ID, None, "Clash"),  # a configured id (9,998 channels...)
        StoredChannel(NEW + 2, NEW + 3, None, "Loop a"),  # a damaged file: a cycle
        StoredChannel(NEW + 3, NEW + 2, None, "Loop b"),
        StoredChannel(NEW + 4, LOBBY_ID, None, " bad name"),  # not within the schema
        StoredChannel(NEW + 5, NEW + 4, None, "Bad kid"),
    ]
    settings = parse_config('[[channels]]\nname = "Music"\n')
    got = ids(settings, stored)
    assert got[NEW] == (LOBBY_ID, "Orphan")
    assert 2 not in got and NEW + 4 not in got
    assert {got[NEW + 2][0], got[NEW + 3][0]} == {LOBBY_ID, NEW + 2}
    assert got[NEW + 5] == (LOBBY_ID, "Bad kid")
    made = admin_channels(settings, stored)
    ServerCore(settings.server_config(udp_port=0), admin_channels=made)  # a valid tree
    text = caplog.text
    assert "parent is gone" in text and "id is taken" in text and "parent cycle" in text


def test_passwords_are_verified_from_the_hash_and_a_bad_hash_locks() -> None:
    stored = [
        StoredChannel(NEW, LOBBY_ID, None, "Good", password_hash=hash_password("pw", log2_n=10)),
        StoredChannel(NEW + 1, LOBBY_ID, None, "Bad", password_hash="plaintext"),
    ]
    wrapped: list[object] = []

    def wrap(h: object) -> object:
        wrapped.append(h)
        return h

    good, bad = admin_channels(Settings(), stored, wrap)  # type: ignore[arg-type]
    assert len(wrapped) == 1
    assert callable(good.password) and good.password("pw") and not good.password("nope")
    assert callable(bad.password) and not bad.password("plaintext")


def test_seed_records_number_seeds_and_resolve_parents() -> None:
    settings = parse_config(CONFIG).with_seed_channels(["General", "AFK"])
    records = seed_records(settings, NEW + 5)
    assert [(r.id, r.parent, r.parent_name, r.name) for r in records] == [
        (NEW + 5, LOBBY_ID, None, "General"),
        (NEW + 6, LOBBY_ID, None, "AFK"),
    ]
    with pytest.raises(Exception, match="exists already"):
        settings.with_seed_channels(["games"])


def test_admin_first_user_and_seeds_in_the_settings() -> None:
    s = parse_config("[admins]\nfirst_user = true\n")
    assert s.admin_first_user
    assert s.server_config(udp_port=0).admin_first_user
    assert not parse_config("").admin_first_user
    with pytest.raises(Exception, match="true or false"):
        parse_config('[admins]\nfirst_user = "yes"\n')
    assert ServerConfig().admin_first_user is False


def test_one_channel_from_the_cluster_keeps_a_parent_the_node_already_has() -> None:
    """A cluster node adds channels one at a time (``known``: the ids it has): a parent made
    earlier is kept; an unknown one is still the Lobby."""
    settings = parse_config(CONFIG)
    child = [StoredChannel(NEW + 5, NEW, None, "Raid chat")]
    assert [c.parent for c in admin_channels(settings, child, known={1, 2, 3, NEW})] == [NEW]
    assert [c.parent for c in admin_channels(settings, child, known={1, 2, 3})] == [LOBBY_ID]


def test_the_cluster_flag_survives_a_reopen(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    assert not s.joined_cluster()
    s.mark_joined_cluster()
    s.close()
    s = Store.open(tmp_path)
    assert s.joined_cluster()
    s.close()
