"""``voipclient-server --invite`` as a real process, the invite link a started server logs, and
the deployment files (Dockerfile, systemd unit, URL-handler registrations) checked against the
real command line, dependencies and link scheme, so they cannot silently rot."""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib.metadata as md
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from voipclient.net.invite import SCHEME, Invite, InviteError, parse_invite
from voipclient.net.pins import pin_of_der_certificate
from voipclient.server.__main__ import build_parser, invite_host, local_address, resolve_settings
from voipclient.server.config import Settings

from ..conftest import Starter

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "packaging" / "voipclient-server.service"
DESKTOP = ROOT / "packaging" / "voipclient.desktop"
REG = ROOT / "packaging" / "windows-url-handler.reg"
SPEC = ROOT / "voipclient.spec"
CHANNEL = "Games night 🎮"


def server_cli(*args: str | Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VOIPCLIENT_SERVER_PASSWORD", None)
    return subprocess.run(
        [sys.executable, "-m", "voipclient.server", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def invite_of(result: subprocess.CompletedProcess[str]) -> Invite:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"--invite must print exactly the link: {result.stdout!r}"
    return parse_invite(lines[0])


def served_pin(host: str, port: int) -> str:
    """The pin of the key the server presents in a real TLS handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return pin_of_der_certificate(der)


# -- --invite ----------------------------------------------------------------------------------


def test_invite_names_the_key_the_server_then_serves(start_server: Starter, tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = server_cli(
        "--invite",
        "--data-dir",
        data,
        "--host",
        "127.0.0.1",
        "--port",
        "40123",
        "--channel",
        CHANNEL,
        "--invite-channel",
        CHANNEL.upper(),  # matched like channel names are, written as configured
    )
    invite = invite_of(result)
    assert invite == Invite("127.0.0.1", 40123, invite.pin, CHANNEL)
    # the key was created, as the first start would have
    assert (data / "server-key.pem").stat().st_mode & 0o777 == 0o600
    assert (data / "server-cert.pem").is_file()
    # on loopback only: the operator is told that nobody else can connect
    assert "listens on 127.0.0.1 only" in result.stderr and "--host 0.0.0.0" in result.stderr
    # a second run gives the same link (the key is kept, not re-created)
    again = server_cli(
        "--invite", "--data-dir", data, "--port", "40123", "--channel", CHANNEL,
        "--invite-channel", CHANNEL,
    )  # fmt: skip
    assert invite_of(again) == invite

    server = start_server(data_dir=data, channels=(CHANNEL,))
    assert server.pin == invite.pin
    assert served_pin(server.host, server.port) == invite.pin

    # the started server logs its own link: the port it really has, the same pin
    deadline = time.monotonic() + 10
    while "invite link=" not in server.stderr_text():
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.05)
    logged = re.search(r"invite link=(\S+)", server.stderr_text())
    assert logged is not None
    assert parse_invite(logged[1]) == Invite("127.0.0.1", server.port, invite.pin)


def test_invite_channel_is_logged_at_start_too(start_server: Starter) -> None:
    server = start_server("--public-host", "Voice.Example.org", "--invite-channel", "a")
    deadline = time.monotonic() + 10
    while "invite link=" not in server.stderr_text():
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.05)
    logged = re.search(r"invite link=(\S+)", server.stderr_text())
    assert logged is not None
    assert parse_invite(logged[1]) == Invite("voice.example.org", server.port, server.pin, "A")


def test_wildcard_host_names_an_address_of_this_machine(tmp_path: Path) -> None:
    result = server_cli("--invite", "--data-dir", tmp_path / "d", "--host", "0.0.0.0")
    if result.returncode == 1:  # a machine without any network: the error says what to do
        assert "--public-host" in result.stderr and not result.stdout
        pytest.skip("this machine has no non-loopback address")
    invite = invite_of(result)
    address = ipaddress.ip_address(invite.host)
    assert address.version == 4  # 0.0.0.0 listens on IPv4 only
    assert not (address.is_loopback or address.is_unspecified or address.is_link_local)
    assert invite.port == 64738
    assert "--public-host" in result.stderr  # which address this is, and how to give another


@pytest.mark.parametrize(
    ("public_host", "expected_host", "in_link"),
    [
        ("Voice.Example.ORG", "voice.example.org", "voipclient://voice.example.org:5000/"),
        ("2001:db8::5", "2001:db8::5", "voipclient://[2001:db8::5]:5000/"),
        ("[2001:DB8::5]", "2001:db8::5", "voipclient://[2001:db8::5]:5000/"),
        ("Bücher.example", "xn--bcher-kva.example", "voipclient://xn--bcher-kva.example:5000/"),
    ],
)
def test_public_host_is_what_friends_get(
    tmp_path: Path, public_host: str, expected_host: str, in_link: str
) -> None:
    result = server_cli(
        "--invite", "--data-dir", tmp_path / "d", "--host", "::", "--port", "5000",
        "--public-host", public_host,
    )  # fmt: skip
    assert result.stdout.startswith(in_link)
    assert invite_of(result).host == expected_host
    assert "note" not in result.stderr  # a public host needs no explanation


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--invite-channel", "Nope"), "--invite-channel 'Nope': no such channel"),
        (("--public-host", "two words"), "--public-host: the host 'two words' contains a space"),
        (("--public-host", "a@b"), "--public-host"),
        (("--port", "0"), "an invite needs the port the server will have; pass --port"),
    ],
)
def test_invite_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    data = tmp_path / "d"
    result = server_cli("--invite", "--data-dir", data, "--channel", "Games", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not result.stdout
    assert "Traceback" not in result.stderr
    assert not (data / "server-key.pem").exists()  # refused before anything was created


def test_a_bad_invite_channel_stops_a_start_too(tmp_path: Path) -> None:
    result = server_cli("--data-dir", tmp_path / "d", "--port", "0", "--invite-channel", "Nope")
    assert result.returncode == 2
    assert "no such channel; the channels are 'Lobby'" in result.stderr
    assert not result.stdout


# -- which host the link names (the rules, without processes) --------------------------------------


class FakeDetect:
    def __init__(self, address: str | None) -> None:
        self.address = address
        self.asked: list[tuple[int, ...]] = []

    def __call__(self, families: tuple[int, ...]) -> str | None:
        self.asked.append(families)
        return self.address


def test_invite_host_rules() -> None:
    lan = FakeDetect("192.168.1.20")
    host, notes = invite_host("0.0.0.0", 64738, None, lan)
    assert host == "192.168.1.20" and lan.asked == [(socket.AF_INET,)]
    assert len(notes) == 1 and "local network" in notes[0] and "--public-host" in notes[0]
    assert "TCP and UDP port 64738" in notes[0]

    both = FakeDetect("9.9.9.9")  # a machine with its public address on its interface
    host, notes = invite_host("::", 5000, None, both)
    assert host == "9.9.9.9" and both.asked == [(socket.AF_INET, socket.AF_INET6)]
    assert len(notes) == 1 and "this machine's own address" in notes[0]

    # a specific address or name is used as it is, without asking
    never = FakeDetect(None)
    assert invite_host("voice.example.org", 1, None, never) == ("voice.example.org", [])
    assert invite_host("9.9.9.10", 1, None, never) == ("9.9.9.10", [])
    for local in ("10.0.0.5", "100.64.1.2", "fd00::5"):
        assert invite_host(local, 1, None, never)[1][0].startswith(f"{local} is this machine's")
    # --public-host wins; loopback gets its warning whatever the host
    assert invite_host("0.0.0.0", 1, "vps.example.org", never) == ("vps.example.org", [])
    host, notes = invite_host("127.0.0.1", 1, None, never)
    assert host == "127.0.0.1" and "nobody else can connect" in notes[0]
    assert "nobody else" in invite_host("localhost", 1, "vps.example.org", never)[1][0]
    assert never.asked == []

    with pytest.raises(InviteError, match=r"pass the address or name .* with --public-host"):
        invite_host("0.0.0.0", 1, None, never)


def test_local_address_is_usable_or_none() -> None:
    found = local_address()
    if found is not None:
        address = ipaddress.ip_address(found)
        assert not (address.is_loopback or address.is_unspecified or address.is_link_local)
    v4 = local_address((socket.AF_INET,))
    assert v4 is None or ipaddress.ip_address(v4).version == 4


# -- deployment files: the command lines they run are real ones ------------------------------------


def _parse_server_args(argv: list[str], where: str) -> tuple[argparse.Namespace, Settings]:
    """``voipclient-server`` options as the real parser and configuration read them."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed why on stderr
        pytest.fail(f"{where}: voipclient-server refuses {shlex.join(argv)} (exit {exc.code})")
    return args, resolve_settings(args)


def _console_scripts() -> set[str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(doc["project"]["scripts"])


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _one(instructions: list[tuple[str, str]], name: str) -> str:
    found = [rest for word, rest in instructions if word == name]
    assert len(found) == 1, f"the Dockerfile must have exactly one {name}"
    return found[0]


def test_dockerfile_runs_a_real_server_command() -> None:
    ins = _dockerfile()
    entrypoint = json.loads(_one(ins, "ENTRYPOINT"))
    cmd = json.loads(_one(ins, "CMD"))
    argv = [*entrypoint, *cmd]
    assert argv[0] in _console_scripts()
    assert argv[0] == "voipclient-server"
    _, settings = _parse_server_args(argv[1:], "Dockerfile ENTRYPOINT + CMD")
    assert settings.host == "0.0.0.0"
    port = settings.port
    assert _one(ins, "VOLUME") == str(settings.data_dir)
    assert set(_one(ins, "EXPOSE").split()) == {f"{port}/tcp", f"{port}/udp"}
    health = re.search(r"\('127\.0\.0\.1', (\d+)\)", _one(ins, "HEALTHCHECK"))
    assert health is not None and int(health[1]) == port
    user = _one(ins, "USER")
    assert user not in ("root", "0")
    assert _one(ins, "FROM").startswith("python:3.11-slim")
    # the documented one-shot uses: the entry point's options plus these
    for extra in (
        ["--invite", "--public-host", "voice.example.org"],
        ["--public-host", "voice.example.org", "--channel", "Games"],
        ["--list-bans"],
        ["--ban", "bob", "--reason", "spam"],
        ["--config", "/data/server.toml"],
    ):
        build_parser().parse_args([*argv[1:], *extra])


def test_dockerfile_installs_what_the_server_imports() -> None:
    """The image installs the package with --no-deps plus a hand-written list: that list (with
    what it pulls in) must cover every third-party module the server can import, and its
    version bounds must be pyproject.toml's."""
    runs = [rest for word, rest in _dockerfile() if word == "RUN" and "pip install" in rest]
    listed: list[Requirement] = []
    for run in runs:
        words = shlex.split(run)
        if "--no-deps" in words:
            assert "." in words, "only the package itself is installed with --no-deps"
            continue
        listed += [Requirement(w) for w in words[words.index("install") + 1 :] if w[0] != "-"]
    assert listed, "no dependency list found in the Dockerfile"

    declared = {
        canonicalize_name(r.name): r
        for r in map(
            Requirement,
            tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"],
        )
    }
    for req in listed:
        name = canonicalize_name(req.name)
        assert name in declared, f"the Dockerfile installs {req.name}, not in pyproject.toml"
        assert req.specifier == declared[name].specifier, (
            f"Dockerfile {req} vs pyproject.toml {declared[name]}"
        )

    available = _closure(listed)
    owners = md.packages_distributions()
    missing = {}
    for top, importers in _third_party_imports(["voipclient.server.__main__"]).items():
        dists = {canonicalize_name(d) for d in owners.get(top, [])}
        assert dists, f"{top} (imported by {sorted(importers)}) belongs to no installed package"
        if not dists & available:
            missing[top] = sorted(importers)
    assert not missing, f"the server imports modules the Docker image does not install: {missing}"


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions ``requirements`` install (with their dependencies, as installed here;
    markers evaluated for this machine, which like the image is Linux)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed here, so its dependencies are unknown")
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def _third_party_imports(roots: list[str]) -> dict[str, set[str]]:
    """Top-level non-voipclient, non-stdlib modules imported anywhere (also inside functions)
    in ``roots`` and the voipclient modules they import, transitively; read from the source."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = ["voipclient", *roots]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        is_package = spec.submodule_search_locations is not None
        package = module if is_package else module.rsplit(".", 1)[0]
        tree = ast.parse(Path(spec.origin).read_text("utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0]
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                names = [source]
                if source.split(".")[0] == "voipclient":
                    names += [f"{source}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "voipclient":
                    if _is_module(name):
                        todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(module)
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # "from voipclient.errors import LocalProtocolError"
        return False


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_systemd_unit_runs_a_real_server_command() -> None:
    unit = _unit()
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name in _console_scripts()
    assert Path(argv[0]).name == "voipclient-server"
    _, settings = _parse_server_args(argv[1:], "packaging/voipclient-server.service ExecStart")
    # the data directory is the one systemd creates and hands to the service user
    state = service["StateDirectory"]
    assert settings.data_dir == Path("/var/lib") / state
    assert settings.host == "0.0.0.0"
    # the commands the unit's comments tell the operator to run
    build_parser().parse_args([*argv[1:], "--invite", "--public-host", "voice.example.org"])
    # the hardening asked for
    for key, value in {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "Restart": "on-failure",
    }.items():
        assert service.get(key) == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service.get("User") and service.get("User") != "root"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    script = Path(sys.executable).parent / "voipclient-server"
    if not script.exists():
        pytest.skip("voipclient-server is not installed next to this interpreter")
    # verify checks that ExecStart's program exists: point it at this one
    text = UNIT.read_text(encoding="utf-8")
    program = shlex.split(_unit()["Service"]["ExecStart"])[0]
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(program, str(script)), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert UNIT.name not in result.stdout + result.stderr, result.stdout + result.stderr


# -- URL handler registrations: they name the scheme the links use ------------------------------


def test_url_handler_registrations_name_the_invite_scheme() -> None:
    desktop = configparser.RawConfigParser(interpolation=None, delimiters=("=",))
    desktop.optionxform = str  # type: ignore[assignment,method-assign]
    desktop.read_string(DESKTOP.read_text(encoding="utf-8"))
    entry = desktop["Desktop Entry"]
    assert f"x-scheme-handler/{SCHEME}" in entry["MimeType"].split(";")
    exec_argv = shlex.split(entry["Exec"])
    # "--" first: whatever the launcher passes as the link is never read as an option
    assert exec_argv[0] == "voipclient" and exec_argv[-2:] == ["--", "%u"]
    assert exec_argv[0] in _console_scripts()
    assert {"Network", "Chat", "AudioVideo"} <= set(entry["Categories"].split(";"))

    reg = REG.read_text(encoding="ascii")
    assert reg.startswith("Windows Registry Editor Version 5.00")
    key = f"[HKEY_CURRENT_USER\\Software\\Classes\\{SCHEME}]"
    assert key in reg and '"URL Protocol"=""' in reg
    command = reg.split(f"[HKEY_CURRENT_USER\\Software\\Classes\\{SCHEME}\\shell\\open\\command]")
    assert len(command) == 2 and 'voipclient.exe\\" -- \\"%1\\""' in command[1]

    spec = SPEC.read_text(encoding="utf-8")
    assert re.search(r'"CFBundleURLSchemes": \["' + SCHEME + r'"\]', spec)
    assert "packaging/windows-url-handler.reg" in spec
