"""``server.toml``: the relay server's configuration (stdlib ``tomllib``), validated up front.

Every key is documented in ``docs/server.md``. Errors are :class:`ConfigError` and name the line:
``tomllib`` syntax errors carry it, and for a semantic error (unknown key, wrong type, value out
of range, unknown parent channel, ...) :class:`_Locator` finds the line of the offending key or
table in the source text. Unknown keys and tables are errors, so a typo never silently falls back
to a default.

Channel passwords are stored as scrypt hash strings (``voipclient-server --hash-password``
makes one), never in clear text::

    scrypt$ln=14,r=8,p=1$<salt, base64>$<hash, base64>

The server password is compared by ``ServerCore`` itself and is therefore given in clear text
(``VOIPCLIENT_SERVER_PASSWORD`` in the environment, preferably, or ``server.password``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from voipclient.errors import LocalProtocolError
from voipclient.net import messages as m
from voipclient.server.control import LOBBY_ID, ChannelConfig, ServerConfig
from voipclient.server.relay import RelayLimits

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PASSWORD_ENV",
    "ChannelSettings",
    "ConfigError",
    "LimitSettings",
    "PasswordHash",
    "Settings",
    "hash_password",
    "load_config",
    "parse_config",
]

DEFAULT_HOST: Final = "127.0.0.1"
#: TCP (TLS control) and UDP (voice) share this number.
DEFAULT_PORT: Final = 64738
PASSWORD_ENV: Final = "VOIPCLIENT_SERVER_PASSWORD"  # noqa: S105 - a variable name
DEFAULT_STATS_INTERVAL: Final = 60.0  # seconds
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

#: scrypt cost for new channel password hashes: N = 2^14, r = 8 (16 MiB, ~40 ms here). A join
#: with a password runs this on the event loop, so it is moderate and the adapter throttles it.
SCRYPT_LOG2_N: Final = 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SCRYPT_DKLEN: Final = 32
_SCRYPT_RE: Final = re.compile(
    r"^scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$"
)

#: The cores' own defaults. A setting that a core also has takes its default from the core
#: (``ServerConfig`` for the control core, ``RelayLimits`` for the UDP relay), so each default
#: is written once; only the adapter's own limits (handshakes, per-IP sessions, password
#: checks) have their defaults here.
_CORE: Final = ServerConfig()
_RELAY: Final = RelayLimits()


class ConfigError(Exception):
    """A configuration problem; ``line`` is 1-based when known."""

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        where = str(path) if path is not None else "configuration"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {message}")


# -- channel password hashes ---------------------------------------------------------------------


@dataclass(frozen=True)
class PasswordHash:
    """A parsed ``scrypt$...`` string. Calling it verifies a password (constant-time compare)."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        match = _SCRYPT_RE.match(text)
        if match is None:
            raise ValueError(
                "not a password hash; store channel passwords as hashes made with "
                "`voipclient-server --hash-password`"
            )
        ln, r, p = (int(match.group(i)) for i in (1, 2, 3))
        if not (10 <= ln <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
            raise ValueError("scrypt parameters out of range (ln 10..20, r 1..16, p 1..4)")
        if 128 * r * (1 << ln) > 256 * 1024 * 1024:
            raise ValueError("scrypt parameters need more than 256 MiB")
        try:
            salt = base64.b64decode(match.group(4), validate=True)
            digest = base64.b64decode(match.group(5), validate=True)
        except binascii.Error:
            raise ValueError("bad base64 in the password hash") from None
        if len(salt) < 8 or len(digest) < 16:
            raise ValueError("password hash salt or digest too short")
        return cls(ln, r, p, salt, digest)

    def __call__(self, password: str) -> bool:
        derived = _scrypt(password, self.salt, self.log2_n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(derived, self.digest)

    def __repr__(self) -> str:
        return f"PasswordHash(scrypt ln={self.log2_n} r={self.r} p={self.p})"


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * r * n * p + 64 * 1024 * 1024,
        dklen=dklen,
    )


def hash_password(password: str, *, log2_n: int = SCRYPT_LOG2_N) -> str:
    """A ``scrypt$...`` string for a channel password (what ``--hash-password`` prints)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, log2_n, SCRYPT_R, SCRYPT_P, _SCRYPT_DKLEN)
    b64 = base64.b64encode
    return (
        f"scrypt$ln={log2_n},r={SCRYPT_R},p={SCRYPT_P}$"
        f"{b64(salt).decode('ascii')}${b64(digest).decode('ascii')}"
    )


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSettings:
    """One channel as configured (ids are assigned later, in file order)."""

    name: str
    #: Parent channel name; None only for the Lobby.
    parent: str | None = _CORE.lobby.name
    description: str = ""
    #: scrypt hash string; None: no password.
    password_hash: str | None = None
    #: 0: unlimited.
    max_members: int = 0
    #: Names allowed to transmit; None: every member.
    speakers: tuple[str, ...] | None = None
    #: Line of the channel's table in the config file (for error messages).
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LimitSettings:
    """``[limits]``: capacities, rates and timeouts (seconds, per second, bytes)."""

    max_sessions: int = _CORE.max_sessions
    max_sessions_per_ip: int = 16
    max_handshakes: int = 64
    handshake_timeout: float = 10.0
    login_timeout: float = _CORE.login_timeout
    idle_timeout: float = _CORE.idle_timeout
    rate_per_s: float = _CORE.rate_per_s
    rate_burst: int = _CORE.rate_burst
    relay_bytes_per_s: float = _CORE.relay_bytes_per_s
    relay_bytes_burst: int = _CORE.relay_bytes_burst
    tunnel_rate_per_s: float = _CORE.tunnel_rate_per_s
    tunnel_burst: int = _CORE.tunnel_burst
    max_frame_size: int = _CORE.max_frame_size
    voice_packets_per_s: float = _RELAY.packets_per_s
    voice_burst: int = _RELAY.burst
    voice_max_datagram: int = _RELAY.max_datagram
    bind_challenge_lifetime: float = _RELAY.challenge_lifetime_s
    binds_per_s: float = _RELAY.binds_per_s
    bind_burst: int = _RELAY.bind_burst
    channel_password_checks_per_s: float = 10.0

    def relay_limits(self) -> RelayLimits:
        return RelayLimits(
            packets_per_s=self.voice_packets_per_s,
            burst=self.voice_burst,
            max_datagram=self.voice_max_datagram,
            challenge_lifetime_s=self.bind_challenge_lifetime,
            binds_per_s=self.binds_per_s,
            bind_burst=self.bind_burst,
        )


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, after merging defaults, the file, environment and CLI."""

    server_name: str = _CORE.server_name
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    password: str | None = field(default=None, repr=False)
    data_dir: Path | None = None
    stats_interval: float = DEFAULT_STATS_INTERVAL
    log_level: str = "info"
    #: How the relay sends its copies (``--udp-send``): "native" (``sendmmsg`` batches whose
    #: MACs and iovecs are written by the native fan-out, ``_fanout.c``; "sendmmsg" where it is
    #: not built), "sendmmsg" (batches written by Python), "sendto" (one call per copy; also
    #: where the platform has no ``sendmmsg``). The last two are for comparisons.
    udp_send: str = "native"
    #: UDP forwarding processes (``--workers``): 1 forwards in this process; more start that
    #: many workers behind one port (Linux; ``voipclient.server.workers``).
    workers: int = 1
    #: ``--cluster``: the NATS server of a cluster of nodes (``nats://host:port``); None: alone.
    cluster: str | None = None
    #: ``--node-id``: this node's name in the cluster (letters, digits, ``-``, ``_``).
    node_id: str | None = None
    #: Where clients reach this node (``--public-host``), told to the other nodes.
    public_host: str | None = None
    max_memberships: int = _CORE.max_memberships
    #: Advertise the server on the LAN (mDNS/DNS-SD, ``voipclient.net.discovery``).
    announce: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    lobby: ChannelSettings = ChannelSettings(name=_CORE.lobby.name, parent=None)
    channels: tuple[ChannelSettings, ...] = ()
    limits: LimitSettings = LimitSettings()
    #: Identity keys (raw 32 bytes) of administrators.
    admins: tuple[bytes, ...] = ()
    #: ``[admins] first_user``: while the server has no administrator (no ``keys``, none made
    #: before), the first identity that logs in becomes one, recorded in the store.
    admin_first_user: bool = False
    #: Channels saved into the store as administrators' channels the first time a data
    #: directory is used (then the store owns them: administrators may change or delete them,
    #: and later starts do not add them again). The embedded local server's defaults.
    seed_channels: tuple[ChannelSettings, ...] = ()
    #: The file these came from, if any.
    source: Path | None = None

    def with_quick_channels(self, names: Sequence[str]) -> Settings:
        """Add ``--channel NAME`` channels (children of the Lobby), checked like file ones."""
        channels = list(self.channels)
        taken = {c.name.casefold() for c in (self.lobby, *channels)}
        for name in names:
            if name.casefold() in taken:
                raise ConfigError(f"--channel {name!r}: a channel with that name exists already")
            _check_channel(ChannelSettings(name=name), _cli_channel_error(name))
            taken.add(name.casefold())
            channels.append(ChannelSettings(name=name, parent=self.lobby.name))
        return replace(self, channels=tuple(channels))

    def with_seed_channels(self, names: Sequence[str]) -> Settings:
        """Seed channels (children of the Lobby) named ``names``, checked like ``--channel``
        ones (valid, unique among themselves and with the configured channels)."""
        seeds = list(self.seed_channels)
        taken = {c.name.casefold() for c in (self.lobby, *self.channels, *seeds)}
        for name in names:
            if name.casefold() in taken:
                raise ConfigError(f"channel {name!r}: a channel with that name exists already")
            _check_channel(ChannelSettings(name=name), _seed_channel_error(name))
            taken.add(name.casefold())
            seeds.append(ChannelSettings(name=name, parent=self.lobby.name))
        return replace(self, seed_channels=tuple(seeds))

    def channel_ids(self) -> dict[str, int]:
        """Casefolded channel name → id: the Lobby is 1, the others 2, 3, ... in file order."""
        ids = {self.lobby.name.casefold(): LOBBY_ID}
        for i, ch in enumerate(self.channels, start=2):
            ids[ch.name.casefold()] = i
        return ids

    def server_config(
        self,
        *,
        udp_port: int,
        verifier: Callable[[PasswordHash], Callable[[str], bool]] | None = None,
    ) -> ServerConfig:
        """The ``ServerCore`` configuration. ``verifier`` wraps each channel's password hash
        (the adapter throttles scrypt with it)."""
        ids = self.channel_ids()

        def password(ch: ChannelSettings) -> Callable[[str], bool] | None:
            if ch.password_hash is None:
                return None
            parsed = PasswordHash.parse(ch.password_hash)
            return verifier(parsed) if verifier is not None else parsed

        def speakers(ch: ChannelSettings) -> frozenset[str] | None:
            return None if ch.speakers is None else frozenset(ch.speakers)

        lobby = ChannelConfig(
            id=LOBBY_ID,
            name=self.lobby.name,
            parent=None,
            description=self.lobby.description,
            speakers=speakers(self.lobby),
        )
        channels = tuple(
            ChannelConfig(
                id=ids[ch.name.casefold()],
                name=ch.name,
                parent=ids[(ch.parent or self.lobby.name).casefold()],
                description=ch.description,
                password=password(ch),
                max_members=ch.max_members,
                speakers=speakers(ch),
            )
            for ch in self.channels
        )
        lim = self.limits
        return ServerConfig(
            server_name=self.server_name,
            password=self.password,
            lobby=lobby,
            channels=channels,
            udp_port=udp_port,
            max_memberships=self.max_memberships,
            max_sessions=lim.max_sessions,
            login_timeout=lim.login_timeout,
            idle_timeout=lim.idle_timeout,
            rate_per_s=lim.rate_per_s,
            rate_burst=lim.rate_burst,
            relay_bytes_per_s=lim.relay_bytes_per_s,
            relay_bytes_burst=lim.relay_bytes_burst,
            tunnel_rate_per_s=lim.tunnel_rate_per_s,
            tunnel_burst=lim.tunnel_burst,
            max_frame_size=lim.max_frame_size,
            admins=frozenset(self.admins),
            admin_first_user=self.admin_first_user,
        )


def _seed_channel_error(name: str) -> Callable[[str, str], ConfigError]:
    def error(message: str, _key: str) -> ConfigError:
        return ConfigError(f"channel {name!r}: {message}")

    return error


def _cli_channel_error(name: str) -> Callable[[str, str], ConfigError]:
    def error(message: str, _key: str) -> ConfigError:
        return ConfigError(f"--channel {name!r}: {message}")

    return error


# -- locating keys in the source text ------------------------------------------------------------

_HEADER_RE: Final = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_RE: Final = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*[=.]""")


def _unquote(part: str) -> str:
    part = part.strip()
    if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
        return part[1:-1]
    return part


class _Locator:
    """Lines of tables and keys in TOML source text (a best effort good enough for messages).

    Tables are identified by their dotted path, with the index for arrays of tables:
    ``("channels", 2)`` is the third ``[[channels]]``.
    """

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str | int, ...], int] = {}
        self.keys: dict[tuple[tuple[str | int, ...], str], int] = {}
        counts: dict[tuple[str, ...], int] = {}
        current: tuple[str | int, ...] = ()
        in_multiline: str | None = None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if in_multiline in line:
                    in_multiline = None
                continue
            header = _HEADER_RE.match(line)
            if header is not None:
                parts = tuple(_unquote(p) for p in header.group(2).split("."))
                if header.group(1) == "[[":
                    index = counts.get(parts, 0)
                    counts[parts] = index + 1
                    current = (*parts, index)
                else:
                    current = parts
                self.tables.setdefault(current, lineno)
                continue
            key = _KEY_RE.match(line)
            if key is not None:
                self.keys.setdefault((current, _unquote(key.group(1))), lineno)
                for quote in ('"""', "'''"):
                    if line.count(quote) == 1:
                        in_multiline = quote

    def line(self, table: tuple[str | int, ...], key: str | None = None) -> int | None:
        if key is not None:
            if (table, key) in self.keys:
                return self.keys[(table, key)]
            for sub in ((*table, key), (*table, key, 0)):  # the key names a (sub-)table
                if sub in self.tables:
                    return self.tables[sub]
        if table in self.tables:
            return self.tables[table]
        if len(table) == 1 and ((), table[0]) in self.keys:  # an inline table at the top level
            return self.keys[((), str(table[0]))]
        return None


# -- parsing -------------------------------------------------------------------------------------

_TOP_TABLES: Final = ("server", "tls", "limits", "lobby", "channels", "admins")
_SERVER_KEYS: Final = (
    "name",
    "host",
    "port",
    "password",
    "data_dir",
    "stats_interval",
    "log_level",
    "max_memberships",
    "announce",
)
_CHANNEL_KEYS: Final = ("name", "parent", "description", "password", "max_members", "speakers")
_LOBBY_KEYS: Final = ("name", "description", "speakers")


class _Reader:
    """Typed access to one table with errors that name the line."""

    def __init__(
        self,
        data: Mapping[str, Any],
        table: tuple[str | int, ...],
        locator: _Locator,
        path: Path | None,
    ) -> None:
        self.data = data
        self.table = table
        self.loc = locator
        self.path = path

    def error(self, message: str, key: str | None = None) -> ConfigError:
        name = _table_name(self.table)
        prefix = f"{name}.{key}" if key and name else (key or name or "top level")
        return ConfigError(
            f"{prefix}: {message}", path=self.path, line=self.loc.line(self.table, key)
        )

    def check_keys(self, allowed: Sequence[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(f"unknown key (allowed: {', '.join(allowed)})", key)

    def _get(self, key: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            return None
        # bool is an int subclass: a number key must not accept true/false.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(f"must be {what}, not a boolean", key)
        if not isinstance(value, kinds):
            raise self.error(f"must be {what}, not {type(value).__name__}", key)
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, (str,), "a string")
        return default if value is None else str(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false")
        return default if value is None else bool(value)

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self._get(key, (int,), "an integer")
        if value is None:
            return default
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.error(f"must be {bound}, got {value}", key)
        return int(value)

    def number(self, key: str, default: float, lo: float, *, strict: bool = True) -> float:
        value = self._get(key, (int, float), "a number")
        if value is None:
            return default
        if not math.isfinite(value):
            raise self.error("must be a finite number", key)
        if (strict and value <= lo) or (not strict and value < lo):
            raise self.error(f"must be {'>' if strict else '>='} {lo:g}, got {value}", key)
        return float(value)

    def string_list(self, key: str) -> tuple[str, ...] | None:
        value = self._get(key, (list,), "a list of strings")
        if value is None:
            return None
        for item in value:
            if not isinstance(item, str):
                raise self.error("must be a list of strings", key)
        return tuple(value)

    def sub(self, key: str) -> _Reader:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error("must be a table", key)
        return _Reader(value, (*self.table, key), self.loc, self.path)


def _table_name(table: tuple[str | int, ...]) -> str:
    out = ""
    for part in table:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_CHANNEL_FIELD_RULES: Final = {
    "name": "1..64 characters, no control characters, no space at either end",
    "description": f"at most {m.MAX_DESCRIPTION_LEN} characters, no control characters except "
    "tab and newline",
}


def _check_channel(ch: ChannelSettings, error: Callable[[str, str], ConfigError]) -> None:
    """Name and description within the protocol's bounds; ``error(message, key)``."""
    try:
        info = m.ChannelInfo(
            id=2,
            parent=LOBBY_ID,
            name=ch.name,
            description=ch.description,
            password_protected=ch.password_hash is not None,
            max_members=ch.max_members,
        )
        m.encode_checked(m.ChannelAdded(channel=info))
    except LocalProtocolError as exc:
        key = (exc.field or "").rsplit(".", 1)[-1]
        if key not in _CHANNEL_FIELD_RULES:
            key = "name"
        raise error(f"invalid {key}: {_CHANNEL_FIELD_RULES[key]}", key) from None


def parse_config(text: str, path: Path | None = None) -> Settings:
    """Parse and validate TOML text. Raises :class:`ConfigError` naming the line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = int(found.group(1)) if found else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise ConfigError(f"TOML syntax error: {msg}", path=path, line=line) from None
    loc = _Locator(text)
    top = _Reader(data, (), loc, path)
    for key, value in data.items():
        if key not in _TOP_TABLES:
            raise top.error(f"unknown table (allowed: {', '.join(_TOP_TABLES)})", key)
        if key != "channels" and not isinstance(value, dict):
            raise top.error("must be a table", key)
    base = path.parent if path is not None else Path.cwd()

    server = top.sub("server")
    server.check_keys(_SERVER_KEYS)
    log_level = (server.string("log_level", "info") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise server.error(f"must be one of {', '.join(LOG_LEVELS)}", "log_level")
    server_name = server.string("name", _CORE.server_name) or ""
    try:
        m.encode_checked(
            m.ServerHello(
                version=m.PROTOCOL_VERSION,
                challenge=bytes(32),
                server_name=server_name,
                limits=m.Limits(
                    max_frame_size=65536,
                    max_memberships=8,
                    rate_per_s=1.0,
                    rate_burst=1,
                    idle_timeout_ms=1,
                    tunnel_rate_per_s=1.0,
                ),
            )
        )
    except LocalProtocolError as exc:
        raise server.error(f"invalid server name: {exc.message}", "name") from None
    host = server.string("host", DEFAULT_HOST) or ""
    if not host:
        raise server.error("must not be empty", "host")
    data_dir = server.string("data_dir")
    password = server.string("password")
    if password is not None and len(password) > m.MAX_PASSWORD_LEN:
        raise server.error(f"at most {m.MAX_PASSWORD_LEN} characters", "password")

    tls = top.sub("tls")
    tls.check_keys(("cert", "key"))
    cert, key_file = tls.string("cert"), tls.string("key")
    if (cert is None) != (key_file is None):
        raise tls.error("cert and key must be given together", "cert" if cert else "key")

    limits = _parse_limits(top.sub("limits"))

    lobby_r = top.sub("lobby")
    lobby_r.check_keys(_LOBBY_KEYS)
    lobby = ChannelSettings(
        name=lobby_r.string("name", _CORE.lobby.name) or "",
        parent=None,
        description=lobby_r.string("description", "") or "",
        speakers=lobby_r.string_list("speakers"),
        line=loc.line(("lobby",)),
    )
    _check_channel(lobby, lobby_r.error)

    channels = _parse_channels(data.get("channels", []), top, loc, path, lobby)

    admins_r = top.sub("admins")
    admins_r.check_keys(("keys", "first_user"))
    admins: list[bytes] = []
    for item in admins_r.string_list("keys") or ():
        try:
            raw = base64.b64decode(item, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != m.ED25519_PUB_LEN:
            raise admins_r.error(
                f"{item!r} is not a base64 Ed25519 public key (32 bytes)", "keys"
            ) from None
        admins.append(raw)

    return Settings(
        server_name=server_name,
        host=host,
        port=server.integer("port", DEFAULT_PORT, 0, 65535),
        password=password,
        data_dir=(base / data_dir) if data_dir else None,
        stats_interval=server.number("stats_interval", DEFAULT_STATS_INTERVAL, 0.0, strict=False),
        log_level=log_level,
        max_memberships=server.integer(
            "max_memberships", _CORE.max_memberships, 1, m.MAX_MEMBERSHIPS
        ),
        announce=server.boolean("announce", False),
        tls_cert=(base / cert) if cert else None,
        tls_key=(base / key_file) if key_file else None,
        lobby=lobby,
        channels=channels,
        limits=limits,
        admins=tuple(admins),
        admin_first_user=admins_r.boolean("first_user", False),
        source=path,
    )


def _parse_limits(r: _Reader) -> LimitSettings:
    d = LimitSettings()
    r.check_keys(tuple(LimitSettings.__dataclass_fields__))
    lim = LimitSettings(
        max_sessions=r.integer("max_sessions", d.max_sessions, 1),
        max_sessions_per_ip=r.integer("max_sessions_per_ip", d.max_sessions_per_ip, 1),
        max_handshakes=r.integer("max_handshakes", d.max_handshakes, 1),
        handshake_timeout=r.number("handshake_timeout", d.handshake_timeout, 0.0),
        login_timeout=r.number("login_timeout", d.login_timeout, 0.0),
        idle_timeout=r.number("idle_timeout", d.idle_timeout, 0.0),
        rate_per_s=r.number("rate_per_s", d.rate_per_s, 0.0),
        rate_burst=r.integer("rate_burst", d.rate_burst, 1, m.U32_MAX),
        relay_bytes_per_s=r.number("relay_bytes_per_s", d.relay_bytes_per_s, 0.0),
        relay_bytes_burst=r.integer("relay_bytes_burst", d.relay_bytes_burst, 1, m.U64_MAX),
        tunnel_rate_per_s=r.number("tunnel_rate_per_s", d.tunnel_rate_per_s, 0.0),
        tunnel_burst=r.integer("tunnel_burst", d.tunnel_burst, 1),
        max_frame_size=r.integer("max_frame_size", d.max_frame_size, 65536, m.U32_MAX),
        voice_packets_per_s=r.number("voice_packets_per_s", d.voice_packets_per_s, 0.0),
        voice_burst=r.integer("voice_burst", d.voice_burst, 1),
        voice_max_datagram=r.integer("voice_max_datagram", d.voice_max_datagram, 46, 1200),
        bind_challenge_lifetime=r.number("bind_challenge_lifetime", d.bind_challenge_lifetime, 0.0),
        binds_per_s=r.number("binds_per_s", d.binds_per_s, 0.0),
        bind_burst=r.integer("bind_burst", d.bind_burst, 1),
        channel_password_checks_per_s=r.number(
            "channel_password_checks_per_s", d.channel_password_checks_per_s, 0.0
        ),
    )
    if lim.idle_timeout * 1000 > m.U32_MAX:
        raise r.error("too large", "idle_timeout")
    return lim


def _parse_channels(
    raw: object, top: _Reader, loc: _Locator, path: Path | None, lobby: ChannelSettings
) -> tuple[ChannelSettings, ...]:
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise top.error("must be an array of tables ([[channels]])", "channels")
    channels: list[ChannelSettings] = []
    readers: list[_Reader] = []
    seen = {lobby.name.casefold(): -1}
    for index, item in enumerate(raw):
        r = _Reader(item, ("channels", index), loc, path)
        r.check_keys(_CHANNEL_KEYS)
        name = r.string("name")
        if name is None:
            raise r.error("a channel needs a name")
        password = r.string("password")
        if password is not None:
            try:
                PasswordHash.parse(password)
            except ValueError as exc:
                raise r.error(str(exc), "password") from None
        ch = ChannelSettings(
            name=name,
            parent=r.string("parent", lobby.name),
            description=r.string("description", "") or "",
            password_hash=password,
            max_members=r.integer("max_members", 0, 0, m.U32_MAX),
            speakers=r.string_list("speakers"),
            line=loc.line(("channels", index)),
        )
        _check_channel(ch, r.error)
        if name.casefold() in seen:
            raise r.error(f"channel name {name!r} is used twice (names are unique)", "name")
        seen[name.casefold()] = index
        channels.append(ch)
        readers.append(r)
    # Parents: must exist; no cycles (walk up from each channel to the Lobby).
    parent_of = {c.name.casefold(): (c.parent or "").casefold() for c in channels}
    for ch, r in zip(channels, readers, strict=True):
        if (ch.parent or "").casefold() not in seen:
            raise r.error(f"unknown parent channel {ch.parent!r}", "parent")
    for ch, r in zip(channels, readers, strict=True):
        parent = (ch.parent or "").casefold()
        walked = {ch.name.casefold()}
        cursor = parent
        while cursor != lobby.name.casefold():
            if cursor in walked:
                raise r.error("the parent chain forms a cycle", "parent")
            walked.add(cursor)
            cursor = parent_of[cursor]
    return tuple(channels)


def load_config(path: Path) -> Settings:
    """Read and parse ``path`` (UTF-8). Raises :class:`ConfigError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", path=path, line=line) from None
    return parse_config(text, path.resolve())


def password_from_environment(settings: Settings, env: Mapping[str, str] = os.environ) -> Settings:
    """``VOIPCLIENT_SERVER_PASSWORD`` (if set and non-empty) overrides ``server.password``."""
    value = env.get(PASSWORD_ENV)
    if not value:
        return settings
    if len(value) > m.MAX_PASSWORD_LEN:
        raise ConfigError(f"{PASSWORD_ENV}: at most {m.MAX_PASSWORD_LEN} characters")
    return replace(settings, password=value)
