"""The control socket for real: a Unix socket (mode 0600) and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voipclient.ptt.control import ControlServer, NotRunningError, send_command
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

CHANNELS = {"Lobby": 1, "Squad": 2, "Command": 3}


def resolve(text: str) -> int | None:
    if text.isdecimal():
        return int(text) if int(text) in CHANNELS.values() else None
    return CHANNELS.get(text)


def cli(*args: str, sock: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from voipclient.ptt.control import ptt_cli; sys.exit(ptt_cli(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PttService, ControlServer]]:
    service = PttService(PttRouter([Binding.parse("squad", "f13", [2])]), resolve_channel=resolve)
    server = ControlServer(service.handle_command, transport="unix", path=tmp_path / "ptt.sock")
    server.start()
    try:
        yield service, server
    finally:
        server.stop()
        service.close()
    assert not (tmp_path / "ptt.sock").exists()


def test_default_path_is_in_the_runtime_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from voipclient.ptt.control import default_socket_path

    assert default_socket_path() == Path(os.environ["VOIPCLIENT_PTT_SOCKET"])  # the override
    monkeypatch.delenv("VOIPCLIENT_PTT_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == tmp_path / "voipclient-ptt.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))  # else a private folder
    assert default_socket_path().name == "ptt.sock"
    assert default_socket_path().parent.name == f"voipclient-{os.getuid()}"


def test_socket_is_private(served: tuple[PttService, ControlServer]) -> None:
    _, server = served
    mode = server.path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_round_trip_in_process(served: tuple[PttService, ControlServer]) -> None:
    service, server = served
    assert send_command("press Squad", path=server.path) == "ok wanted=2"
    assert send_command("toggle 3", path=server.path) == "ok wanted=2,3"
    assert service.wanted() == {2, 3}
    # The name it was pressed with releases it, in any case, even where the resolver is
    # stricter (this fake is case-sensitive): a press must never be left unreleasable.
    assert send_command("release squad", path=server.path) == "ok wanted=3"
    assert send_command("release Nowhere", path=server.path) == "error unknown channel 'Nowhere'"
    assert send_command("release Squad", path=server.path) == "ok wanted=3"  # nothing held
    assert send_command("shout 3", path=server.path).startswith("error unknown command")
    reply = send_command("status", path=server.path)
    assert reply.startswith("ok ")
    status = json.loads(reply[3:])
    assert status["wanted"] == [3] and status["control"] == [3] and status["mode"] == "ptt"


def test_cli_in_a_subprocess(served: tuple[PttService, ControlServer]) -> None:
    service, server = served
    t0 = time.monotonic()
    result = cli("press", "Command", sock=server.path)
    elapsed = time.monotonic() - t0
    assert (result.returncode, result.stdout.strip()) == (0, "wanted=3"), result.stderr
    assert service.wanted() == {3}
    print(f"\nCLI subprocess round trip (interpreter start included): {elapsed * 1000:.0f} ms")
    assert cli("toggle", "2", sock=server.path).stdout.strip() == "wanted=2,3"
    assert cli("release", "Command", sock=server.path).stdout.strip() == "wanted=2"
    bad = cli("press", "Nowhere", sock=server.path)
    assert bad.returncode == 1 and "unknown channel 'Nowhere'" in bad.stderr
    status = cli("status", sock=server.path)
    assert status.returncode == 0 and json.loads(status.stdout)["wanted"] == [2]
    usage = cli("press", sock=server.path)
    assert usage.returncode == 2


def test_cli_when_not_running(tmp_path: Path) -> None:
    result = cli("press", "2", sock=tmp_path / "none.sock")
    assert result.returncode == 3 and "not running" in result.stderr
    with pytest.raises(NotRunningError):
        send_command("status", path=tmp_path / "none.sock")


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "ptt.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    first = ControlServer(lambda line: "ok", transport="unix", path=path)
    first.start()
    try:
        second = ControlServer(lambda line: "ok", transport="unix", path=path)
        with pytest.raises(FileExistsError, match="another voipclient"):
            second.start()
    finally:
        first.stop()


def test_held_connection_does_not_block_stop(tmp_path: Path) -> None:
    import socket

    server = ControlServer(lambda line: "ok", transport="unix", path=tmp_path / "p.sock")
    server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(server.path))
    client.sendall(b"status\n")
    assert client.recv(100) == b"ok\n"
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 3
    client.close()


def test_tcp_transport_with_token(tmp_path: Path) -> None:
    service = PttService(PttRouter(), resolve_channel=resolve)
    token_file = tmp_path / "tok" / "ptt-control.txt"
    server = ControlServer(service.handle_command, transport="tcp", token_file=token_file)
    server.start()
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert send_command("press 2", transport="tcp", token_file=token_file) == "ok wanted=2"
        port = token_file.read_text().split()[0]
        token_file.write_text(f"{port} {'0' * 64}\n")
        assert send_command("press 3", transport="tcp", token_file=token_file) == (
            "error bad token"
        )
        assert service.wanted() == {2}
    finally:
        server.stop()
    assert not token_file.exists()
