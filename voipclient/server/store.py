"""What the server keeps on disk besides its certificate: name bindings, bans, the channels
administrators made and the administrators it made itself (SQLite).

* **Name bindings**: account key of a user name (``voipclient.names.name_key``: its confusable
  skeleton, casefolded) → the Ed25519 identity key that first logged in with it. Loaded into
  ``ServerCore.name_bindings`` at start, a row added when a new name binds, so nobody can take
  over a name across restarts. Schema 1 keyed rows by ``casefold()``; opening such a file
  re-keys them once (schema 2, :func:`_rekey_bindings`).
* **Bans**: identity keys refused at login, with an optional label and reason.
* **Channels** administrators made over the protocol (ChannelAdmin): loaded at start beside
  the configured ones (``server.toml``, ``--channel``), which stay the configuration's and are
  never written here. A parent that is a configured channel is recorded by its casefolded name
  (configured ids follow the file's order); the Lobby and administrators' channels by id.
  Passwords only as ``scrypt$...`` hashes. Ids are never reused (``next_channel_id``). A
  program that hosts the server can *seed* channels into an empty store once (the embedded
  local server's defaults), so that administrators may change them too.
* **Administrators** the server made itself (the first-user rule), with a label. Rows are never
  removed by the server, so the rule picks one identity per store, ever.

Nothing else: no voice, no text, no IP addresses, no session history. The file is created with
mode 0600 in the data directory. All calls are short synchronous statements on one connection,
made from the event loop thread (a binding is written once per new name, so this never weighs on
the relay's hot path).

The channel and administrator tables were added without a new schema version: they are new
tables (``CREATE TABLE IF NOT EXISTS`` on every open) and change nothing in the old ones, so an
older server can still open the file (it ignores them).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from voipclient.names import InvalidName, check_name, name_key

__all__ = ["DB_FILE", "Ban", "GrantedAdmin", "Store", "StoreError", "StoredChannel"]

log = logging.getLogger("voipclient.server.store")

DB_FILE: Final = "server.sqlite3"
#: 1: bindings keyed by ``casefold()``; 2: by ``names.name_key`` (a version 1 file is re-keyed).
SCHEMA_VERSION: Final = 2
_IK_LEN: Final = 32  # bytes, raw Ed25519 public key

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS name_bindings (
    name TEXT PRIMARY KEY,          -- account key: voipclient.names.name_key(user name)
    ik_pub BLOB NOT NULL CHECK (length(ik_pub) = 32)
);
CREATE TABLE IF NOT EXISTS bans (
    ik_pub BLOB PRIMARY KEY CHECK (length(ik_pub) = 32),
    label TEXT NOT NULL DEFAULT '', -- who it was, for the operator (a user name)
    reason TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY CHECK (id >= 2),
    parent INTEGER,                 -- 1 (the Lobby) or another row's id
    parent_name TEXT,               -- or a configured channel, by its casefolded name
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    password_hash TEXT,             -- scrypt$... (never a password); NULL: no password
    max_members INTEGER NOT NULL DEFAULT 0 CHECK (max_members >= 0),
    speakers TEXT,                  -- JSON array of names; NULL: every member may speak
    created_ms INTEGER NOT NULL,
    CHECK ((parent IS NULL) != (parent_name IS NULL))
);
CREATE TABLE IF NOT EXISTS admins (
    ik_pub BLOB PRIMARY KEY CHECK (length(ik_pub) = 32),
    label TEXT NOT NULL DEFAULT '', -- its user name when it was made one
    reason TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """The database cannot be opened or has a schema this version does not know."""


@dataclass(frozen=True)
class Ban:
    """One banned identity key."""

    ik_pub: bytes
    label: str
    reason: str
    created_ms: int


@dataclass(frozen=True)
class StoredChannel:
    """A channel an administrator made (or a seeded one)."""

    id: int
    #: The parent's id when it is the Lobby (1) or another stored channel, else None.
    parent: int | None
    #: The parent when it is a configured channel: its name, casefolded; else None.
    parent_name: str | None
    name: str
    description: str = ""
    #: ``scrypt$...`` (``config.hash_password``); None: no password.
    password_hash: str | None = field(default=None, repr=False)
    max_members: int = 0
    #: Names allowed to transmit; None: every member.
    speakers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.parent is None) == (self.parent_name is None):
            raise ValueError("a stored channel has a parent id or a parent name, not both")


@dataclass(frozen=True)
class GrantedAdmin:
    """An identity key the server made an administrator."""

    ik_pub: bytes
    label: str
    reason: str
    created_ms: int


class Store:
    """The server's SQLite database. Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path: Final = path

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        """Open (creating if needed) ``data_dir/server.sqlite3``."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / DB_FILE
        if not path.exists():
            # Create the file ourselves so it never exists with a wider mode.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        try:
            conn = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit txns
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif row[0] == "1":
                _rekey_bindings(conn, path)
            elif row[0] != str(SCHEMA_VERSION):
                conn.close()
                raise StoreError(
                    f"{path}: schema version {row[0]}, this server knows {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: {exc}") from None
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    # -- name bindings ---------------------------------------------------------------------------

    def load_bindings(self) -> dict[str, bytes]:
        """Every binding: account key (``names.name_key``) → identity key."""
        rows = self._conn.execute("SELECT name, ik_pub FROM name_bindings").fetchall()
        return {str(name): bytes(key) for name, key in rows}

    def add_binding(self, name: str, ik_pub: bytes) -> bool:
        """Bind the account key of ``name`` (``names.name_key``, computed here; a key passes
        unchanged) to ``ik_pub`` unless it is bound already. True when a row was added."""
        if len(ik_pub) != _IK_LEN:
            raise ValueError("an identity key is 32 bytes")
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO name_bindings (name, ik_pub) VALUES (?, ?)",
            (name_key(name), ik_pub),
        )
        return cur.rowcount == 1

    def remove_binding(self, name: str) -> bool:
        """Free a name and every look-alike of it (an operator action): the row of its account
        key. True when it was bound."""
        cur = self._conn.execute("DELETE FROM name_bindings WHERE name = ?", (name_key(name),))
        return cur.rowcount == 1

    # -- bans ------------------------------------------------------------------------------------

    def ban(self, ik_pub: bytes, label: str = "", reason: str = "") -> None:
        """Ban an identity key (replacing an earlier ban's label and reason)."""
        if len(ik_pub) != _IK_LEN:
            raise ValueError("an identity key is 32 bytes")
        self._conn.execute(
            "INSERT OR REPLACE INTO bans (ik_pub, label, reason, created_ms) VALUES (?, ?, ?, ?)",
            (ik_pub, label, reason, int(time.time() * 1000)),
        )

    def unban(self, ik_pub: bytes) -> bool:
        """Lift a ban. True when there was one."""
        cur = self._conn.execute("DELETE FROM bans WHERE ik_pub = ?", (ik_pub,))
        return cur.rowcount == 1

    def is_banned(self, ik_pub: bytes) -> bool:
        row = self._conn.execute("SELECT 1 FROM bans WHERE ik_pub = ?", (ik_pub,)).fetchone()
        return row is not None

    def bans(self) -> list[Ban]:
        rows = self._conn.execute(
            "SELECT ik_pub, label, reason, created_ms FROM bans ORDER BY created_ms"
        ).fetchall()
        return [Ban(bytes(k), str(lbl), str(r), int(t)) for k, lbl, r, t in rows]

    # -- channels ---------------------------------------------------------------------------------

    def channels(self) -> list[StoredChannel]:
        """Every stored channel, by id."""
        rows = self._conn.execute(
            "SELECT id, parent, parent_name, name, description, password_hash, max_members,"
            " speakers FROM channels ORDER BY id"
        ).fetchall()
        out = []
        for cid, parent, parent_name, name, desc, pw_hash, max_members, speakers in rows:
            names = None if speakers is None else tuple(str(n) for n in json.loads(speakers))
            out.append(
                StoredChannel(
                    id=int(cid),
                    parent=None if parent is None else int(parent),
                    parent_name=None if parent_name is None else str(parent_name),
                    name=str(name),
                    description=str(desc),
                    password_hash=None if pw_hash is None else str(pw_hash),
                    max_members=int(max_members),
                    speakers=names,
                )
            )
        return out

    def save_channel(self, channel: StoredChannel, *, keep_password: bool = False) -> None:
        """Insert or replace the record of ``channel.id``; ``keep_password``: leave the stored
        password hash as it is (``channel.password_hash`` is then ignored). Remembers the id
        as used (:meth:`next_channel_id`)."""
        speakers = None if channel.speakers is None else json.dumps(list(channel.speakers))
        now = int(time.time() * 1000)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT INTO channels (id, parent, parent_name, name, description,"
                " password_hash, max_members, speakers, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET parent = excluded.parent,"
                " parent_name = excluded.parent_name, name = excluded.name,"
                " description = excluded.description, max_members = excluded.max_members,"
                " speakers = excluded.speakers, password_hash = CASE WHEN ?"
                " THEN channels.password_hash ELSE excluded.password_hash END",
                (
                    channel.id,
                    channel.parent,
                    channel.parent_name,
                    channel.name,
                    channel.description,
                    channel.password_hash,
                    channel.max_members,
                    speakers,
                    now,
                    keep_password,
                ),
            )
            if channel.id >= self.next_channel_id():
                self._set_meta("next_channel_id", str(channel.id + 1))
        except sqlite3.DatabaseError:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def delete_channel(self, channel_id: int) -> bool:
        """Forget a stored channel. True when there was one."""
        cur = self._conn.execute("DELETE FROM channels WHERE id = ?", (channel_id,))
        return cur.rowcount == 1

    def next_channel_id(self) -> int:
        """One more than the highest channel id ever saved here (0 before the first)."""
        value = self._meta("next_channel_id")
        return int(value) if value is not None else 0

    def seed_channels(self, channels: list[StoredChannel]) -> bool:
        """Save ``channels`` unless this store was seeded before (then nothing happens; also
        when ``channels`` is empty, the store counts as seeded). True when they were saved."""
        if self._meta("channels_seeded") is not None:
            return False
        for channel in channels:
            self.save_channel(channel)
        self._set_meta("channels_seeded", "1")
        return True

    def joined_cluster(self) -> bool:
        """This data directory's server has been a cluster node (its channels are a mirror
        of the cluster's shared store since: never brought into it again)."""
        return self._meta("cluster_joined") is not None

    def mark_joined_cluster(self) -> None:
        self._set_meta("cluster_joined", "1")

    # -- administrators ---------------------------------------------------------------------------

    def add_admin(self, ik_pub: bytes, label: str = "", reason: str = "") -> bool:
        """Record ``ik_pub`` as an administrator the server made. True when it was new."""
        if len(ik_pub) != _IK_LEN:
            raise ValueError("an identity key is 32 bytes")
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO admins (ik_pub, label, reason, created_ms) VALUES (?, ?, ?, ?)",
            (ik_pub, label, reason, int(time.time() * 1000)),
        )
        return cur.rowcount == 1

    def admins(self) -> list[GrantedAdmin]:
        rows = self._conn.execute(
            "SELECT ik_pub, label, reason, created_ms FROM admins ORDER BY created_ms"
        ).fetchall()
        return [GrantedAdmin(bytes(k), str(lbl), str(r), int(t)) for k, lbl, r, t in rows]

    # -- meta -------------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _rekey_bindings(conn: sqlite3.Connection, path: Path) -> None:
    """Schema 1 → 2: re-key the bindings from ``casefold()`` to ``names.name_key``, in one
    transaction. A row whose name ``names.check_name`` now refuses (invisible or bidi characters,
    mixed scripts...) is dropped: nobody can log in with it any more, and its key could hold a
    real name's key ("bob" spelt with a Cyrillic U+043E has the key of "bob"). Where two rows
    meet on one key, the older (first bound) keeps it. Both are logged: a name becomes free."""
    rows = conn.execute("SELECT name, ik_pub FROM name_bindings ORDER BY rowid").fetchall()
    kept: dict[str, bytes] = {}
    for name, ik_pub in rows:
        legacy = str(name)
        try:
            # casefold() may have decomposed a letter; the name as sent was NFC
            key = check_name(unicodedata.normalize("NFC", legacy))
        except InvalidName as exc:
            log.warning("name binding dropped name=%r reason=%s", legacy, exc.reason)
            continue
        if key in kept:
            if kept[key] != bytes(ik_pub):
                log.warning("name binding dropped name=%r reason=looks like an older one", legacy)
            continue
        kept[key] = bytes(ik_pub)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM name_bindings")
        conn.executemany("INSERT INTO name_bindings (name, ik_pub) VALUES (?, ?)", kept.items())
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )
    except sqlite3.DatabaseError:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    log.info("name bindings re-keyed path=%s rows=%d kept=%d", path, len(rows), len(kept))
