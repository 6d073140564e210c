"""server.toml: a complete good file, every kind of bad file (each error names its line), the
CLI's merge order and its error exit."""

from __future__ import annotations

import base64
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from voipclient.server import __main__ as cli
from voipclient.server.config import (
    PASSWORD_ENV,
    ConfigError,
    LimitSettings,
    PasswordHash,
    Settings,
    hash_password,
    load_config,
    parse_config,
    password_from_environment,
)
from voipclient.server.control import LOBBY_ID, ServerConfig
from voipclient.server.relay import RelayLimits

ADMIN = base64.b64encode(bytes(range(32))).decode()
FAST_HASH = hash_password("sesame", log2_n=10)

GOOD = f"""
# A complete configuration.
[server]
name = "Friday night"
host = "0.0.0.0"
port = 7000
password = "letmein"
data_dir = "state"
stats_interval = 30
log_level = "WARNING"
max_memberships = 4

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[limits]
max_sessions = 50
max_sessions_per_ip = 5
max_handshakes = 10
handshake_timeout = 5
login_timeout = 8.5
idle_timeout = 40
rate_per_s = 10
rate_burst = 20
relay_bytes_per_s = 500000
relay_bytes_burst = 2000000
tunnel_rate_per_s = 60
tunnel_burst = 30
max_frame_size = 131072
voice_packets_per_s = 80
voice_burst = 40
voice_max_datagram = 1000
bind_challenge_lifetime = 3
binds_per_s = 1
bind_burst = 3
channel_password_checks_per_s = 5

[lobby]
name = "Hall"
description = "Say hi"
speakers = ["host"]

[[channels]]
name = "Games"
description = "All games"

[[channels]]
name = "Raid"
parent = "Games"
password = "{FAST_HASH}"
max_members = 10
speakers = ["ann", "Bob"]

[admins]
keys = ["{ADMIN}"]
"""


def test_good_file_every_key(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(GOOD)
    s = load_config(path)
    assert (s.server_name, s.host, s.port, s.password) == (
        "Friday night",
        "0.0.0.0",
        7000,
        "letmein",
    )
    assert s.data_dir == tmp_path / "state"  # relative to the file
    assert (s.stats_interval, s.log_level, s.max_memberships) == (30.0, "warning", 4)
    assert (s.tls_cert, s.tls_key) == (tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem")
    assert s.limits == LimitSettings(
        max_sessions=50,
        max_sessions_per_ip=5,
        max_handshakes=10,
        handshake_timeout=5.0,
        login_timeout=8.5,
        idle_timeout=40.0,
        rate_per_s=10.0,
        rate_burst=20,
        relay_bytes_per_s=500000.0,
        relay_bytes_burst=2000000,
        tunnel_rate_per_s=60.0,
        tunnel_burst=30,
        max_frame_size=131072,
        voice_packets_per_s=80.0,
        voice_burst=40,
        voice_max_datagram=1000,
        bind_challenge_lifetime=3.0,
        binds_per_s=1.0,
        bind_burst=3,
        channel_password_checks_per_s=5.0,
    )
    assert (s.lobby.name, s.lobby.description, s.lobby.speakers) == ("Hall", "Say hi", ("host",))
    tables = [i for i, text in enumerate(GOOD.splitlines(), start=1) if text == "[[channels]]"]
    assert [(c.name, c.parent, c.line) for c in s.channels] == [
        ("Games", "Hall", tables[0]),
        ("Raid", "Games", tables[1]),
    ]
    assert s.admins == (bytes(range(32)),)

    core = s.server_config(udp_port=7000)
    assert core.server_name == "Friday night" and core.password == "letmein"
    assert core.lobby.name == "Hall" and core.lobby.speakers == frozenset({"host"})
    games, raid = core.channels
    assert (games.id, games.parent, raid.id, raid.parent) == (2, LOBBY_ID, 3, 2)
    assert raid.max_members == 10 and raid.speakers == frozenset({"ann", "Bob"})
    assert callable(raid.password) and raid.password("sesame") and not raid.password("open")
    assert (core.max_sessions, core.login_timeout, core.idle_timeout) == (50, 8.5, 40.0)
    assert (core.rate_per_s, core.rate_burst, core.max_frame_size) == (10.0, 20, 131072)
    assert (core.relay_bytes_per_s, core.relay_bytes_burst) == (500000.0, 2000000)
    assert core.max_memberships == 4 and core.udp_port == 7000
    relay = s.limits.relay_limits()
    assert (relay.packets_per_s, relay.burst, relay.max_datagram) == (80.0, 40, 1000)
    assert (relay.challenge_lifetime_s, relay.binds_per_s, relay.bind_burst) == (3.0, 1.0, 3)


def test_empty_file_is_the_defaults() -> None:
    s = parse_config("")
    assert s == Settings()
    assert s.lobby.name == "Lobby" and s.channels == () and s.port == 64738


def test_channel_order_gives_ids_and_parents_may_come_later() -> None:
    s = parse_config(
        '[[channels]]\nname = "Child"\nparent = "Later"\n[[channels]]\nname = "Later"\n'
    )
    assert s.channel_ids() == {"lobby": 1, "child": 2, "later": 3}
    core = s.server_config(udp_port=0)
    assert [(c.id, c.parent) for c in core.channels] == [(2, 3), (3, 1)]


BAD: list[tuple[str, str, int]] = [
    # (file text, words the message must contain, line it must name)
    ('[server]\nport = "x"\n', "server.port: must be an integer", 2),
    ("[server]\nport = 70000\n", "must be 0..65535", 2),
    ("[server]\nport = true\n", "not a boolean", 2),
    ('[server]\nname = "ok"\nprot = 1\n', "server.prot: unknown key", 3),
    ("[server]\n\n[sever]\nport = 1\n", "sever: unknown table", 3),
    ('[server]\nlog_level = "loud"\n', "must be one of", 2),
    ('[server]\nname = "x" y\n', "TOML syntax error", 2),
    ("[server]\nport = 1\nport = 2\n", "TOML syntax error", 3),
    ("\n\n[limits]\nrate_per_s = 0\n", "limits.rate_per_s: must be > 0", 4),
    ("[limits]\nidle_timeout = -1\n", "must be > 0", 2),
    ("[limits]\nrelay_bytes_per_s = 0\n", "limits.relay_bytes_per_s: must be > 0", 2),
    ("[limits]\nrelay_bytes_burst = 0\n", "limits.relay_bytes_burst: must be 1..", 2),
    ("[limits]\nmax_frame_size = 1000\n", "must be 65536..", 2),
    ("[limits]\nvoice_max_datagram = 2000\n", "must be 46..1200", 2),
    ('[limits]\nlogin_timeout = "soon"\n', "must be a number", 2),
    ("[limits]\nlogin_timeout = nan\n", "finite", 2),
    ('[tls]\ncert = "c.pem"\n', "cert and key must be given together", 2),
    ('[lobby]\nname = " padded"\n', "lobby.name: invalid name: 1..64 characters", 2),
    ('[[channels]]\nname = "A"\n\n[[channels]]\ndescription = "no name"\n', "needs a name", 4),
    ('[[channels]]\nname = "A"\n[[channels]]\nname = "a"\n', "used twice", 4),
    ('[[channels]]\nname = "Lobby"\n', "used twice", 2),
    ('[[channels]]\nname = "A"\nparent = "Nowhere"\n', "unknown parent channel 'Nowhere'", 3),
    (
        '[[channels]]\nname = "A"\nparent = "B"\n[[channels]]\nname = "B"\nparent = "A"\n',
        "cycle",
        3,
    ),
    ('[[channels]]\nname = "A"\npassword = "plain"\n', "--hash-password", 3),
    ('[[channels]]\nname = "A"\nmax_members = -1\n', "max_members: must be 0..", 3),
    ('[[channels]]\nname = "A"\nspeakers = "ann"\n', "must be a list of strings", 3),
    ('[[channels]]\nname = "A"\nspeakers = ["ann", 3]\n', "must be a list of strings", 3),
    ('[[channels]]\nname = "A"\ncolour = "red"\n', "channels[0].colour: unknown key", 3),
    ('[[channels]]\nname = "A"\n[[channels]]\nname = "B"\nmax = 1\n', "channels[1].max", 5),
    ('[[channels]]\nname = "' + "x" * 65 + '"\n', "invalid name", 2),
    (
        '[[channels]]\nname = "A"\ndescription = "bell\\u0007"\n',
        "channels[0].description: invalid description",
        3,
    ),
    ('[admins]\nkeys = ["not base64!"]\n', "not a base64 Ed25519 public key", 2),
    ('[admins]\nkeys = ["AAAA"]\n', "32 bytes", 2),
    ("channels = 3\n", "array of tables", 1),
    ("server = 3\n", "must be a table", 1),
]


@pytest.mark.parametrize(("text", "words", "line"), BAD)
def test_bad_file_error_names_the_line(tmp_path: Path, text: str, words: str, line: int) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.line == line, str(err)
    assert words in str(err)
    assert str(err).startswith(f"{path.resolve()}, line {line}: ")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_bytes(b'[server]\nname = "ok"\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 3 and "UTF-8" in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Path("/nonexistent/server.toml"))


def test_password_hash_round_trip_and_bad_hashes() -> None:
    text = hash_password("correct horse", log2_n=10)
    assert text.startswith("scrypt$ln=10,r=8,p=1$")
    check = PasswordHash.parse(text)
    assert check("correct horse") and not check("correct horse ")
    assert "correct" not in repr(check) and check.salt.hex() not in repr(check)
    assert hash_password("x", log2_n=10) != hash_password("x", log2_n=10)  # salted
    for bad in ("", "scrypt$ln=9,r=8,p=1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "md5$abc"):
        with pytest.raises(ValueError):
            PasswordHash.parse(bad)
    with pytest.raises(ValueError, match="256 MiB"):
        PasswordHash.parse("scrypt$ln=20,r=16,p=1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==")


def test_environment_password_wins_over_the_file() -> None:
    s = parse_config('[server]\npassword = "file"\n')
    assert password_from_environment(s, {PASSWORD_ENV: "env"}).password == "env"
    assert password_from_environment(s, {PASSWORD_ENV: ""}).password == "file"
    assert password_from_environment(s, {}).password == "file"
    with pytest.raises(ConfigError):
        password_from_environment(s, {PASSWORD_ENV: "x" * 129})
    assert "file" not in repr(s)  # never in logs through a repr


def test_quick_channels_from_the_command_line() -> None:
    s = parse_config('[[channels]]\nname = "Games"\n').with_quick_channels(["A", "B"])
    assert [(c.name, c.parent) for c in s.channels] == [
        ("Games", "Lobby"),
        ("A", "Lobby"),
        ("B", "Lobby"),
    ]
    with pytest.raises(ConfigError, match="exists already"):
        s.with_quick_channels(["games"])
    with pytest.raises(ConfigError, match="--channel"):
        s.with_quick_channels([""])


def test_cli_merges_file_environment_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nport = 7000\nhost = "0.0.0.0"\npassword = "file"\n')
    monkeypatch.setenv(PASSWORD_ENV, "env")
    args = cli.build_parser().parse_args(
        ["--config", str(path), "--port", "0", "--channel", "X", "--stats-interval", "2"]
    )
    s = cli.resolve_settings(args)
    assert (s.host, s.port, s.password, s.stats_interval) == ("0.0.0.0", 0, "env", 2.0)
    assert [c.name for c in s.channels] == ["X"]


def test_cli_config_error_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "server.toml"
    path.write_text("[server]\n\n[limits]\nlogin_timeout = 0\n")
    assert cli.main(["--config", str(path), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("voipclient-server: config error: ")
    assert "line 4" in err and "limits.login_timeout" in err
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()  # nothing was created


def test_cli_hash_password_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("sesame\n"))
    assert cli.main(["--hash-password"]) == 0
    out = capsys.readouterr().out.strip()
    assert PasswordHash.parse(out)("sesame")


def test_limit_defaults_are_the_cores_defaults() -> None:
    """Each default is written once: what the control core (ServerConfig) and the relay
    (RelayLimits) also have, LimitSettings and Settings take from them. A server started
    without a [limits] table (or without a file) runs both cores with their own defaults, and
    the documented example of every key shows the defaults."""
    assert LimitSettings().relay_limits() == RelayLimits()
    assert Settings().server_config(udp_port=0) == ServerConfig()
    assert parse_config("") == Settings()
    assert parse_config("[limits]\n[server]\n").server_config(udp_port=0) == ServerConfig()
    docs = (Path(__file__).parents[3] / "docs" / "server.md").read_text(encoding="utf-8")
    example = re.search(r"```toml\n(\[server\].*?)```", docs, re.DOTALL)
    assert example is not None, "docs/server.md lost its example of every key"
    documented = tomllib.loads(example.group(1))
    assert documented["limits"] == dataclasses.asdict(LimitSettings())
    assert documented["server"]["max_memberships"] == Settings().max_memberships
