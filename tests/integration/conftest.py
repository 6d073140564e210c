"""A real ``python -m voipclient.server`` process on loopback, per test.

The fixture starts the server with ``--port 0`` and a temporary data directory, reads the start
line from its stdout (a file, so the stats lines never block on a full pipe), and at teardown
kills what is still running and fails the test if the server logged a traceback (an exception
that escaped a callback: malformed input must only ever cost a session).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_LINE = re.compile(
    r"^voipclient-server listening on (?P<host>\S+):(?P<port>\d+) \(tcp\+udp\) "
    r"pin=(?P<pin>sha256/[A-Za-z0-9+/]{43}=)$"
)
START_TIMEOUT = 20.0  # seconds (a cold interpreter plus key generation)

# Channel ids: the Lobby is 1, then channels in the order they are configured.
LOBBY, A, B = 1, 2, 3


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    pin: str
    data_dir: Path
    stdout_path: Path
    stderr_path: Path
    start_line: str

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines()

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


Starter = Callable[..., ServerProcess]


def bot_command(server: ServerProcess, name: str, *args: str) -> list[str]:
    """``voipclient.bot`` logging in to ``server`` as ``name``, with ``args``."""
    return [
        sys.executable,
        "-m",
        "voipclient.bot",
        "--server",
        f"{server.host}:{server.port}",
        "--pin",
        server.pin,
        "--name",
        name,
        *args,
    ]


def start_bot(
    server: ServerProcess, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A bot process (text pipes; ``env`` added to this one's environment). The caller waits
    for it or kills it."""
    return subprocess.Popen(
        bot_command(server, name, *args),
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Starter]:
    started: list[ServerProcess] = []
    counter = iter(range(1000))

    def start(
        *args: str,
        config: str | None = None,
        channels: tuple[str, ...] = ("A", "B"),
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        module: str = "voipclient.server",
    ) -> ServerProcess:
        """``module``: the server's entry module (the adversarial tests run a patched one)."""
        n = next(counter)
        data = data_dir or tmp_path / f"data{n}"
        cmd = [sys.executable, "-m", module, "--port", "0", "--data-dir", str(data)]
        for ch in channels:
            cmd += ["--channel", ch]
        if config is not None:
            cfg = tmp_path / f"server{n}.toml"
            cfg.write_text(config)
            cmd += ["--config", str(cfg)]
        cmd += list(args)
        out, err = tmp_path / f"stdout{n}.txt", tmp_path / f"stderr{n}.txt"
        full_env = dict(os.environ)
        full_env.pop("VOIPCLIENT_SERVER_PASSWORD", None)
        full_env.update(env or {})
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                cmd, stdout=fo, stderr=fe, env=full_env, cwd=Path(__file__).parents[2]
            )
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            text = out.read_text()
            if "\n" in text:
                line = text.splitlines()[0]
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        if not line:
            proc.kill()
            proc.wait(5)
            pytest.fail(f"server did not print its start line; stderr:\n{err.read_text()}")
        match = START_LINE.match(line)
        assert match is not None, f"unparseable start line: {line!r}"
        server = ServerProcess(
            proc=proc,
            host=match["host"],
            port=int(match["port"]),
            pin=match["pin"],
            data_dir=data,
            stdout_path=out,
            stderr_path=err,
            start_line=line,
        )
        started.append(server)
        return server

    yield start

    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(timeout=10)
    for server in started:
        text = server.stderr_text()
        assert "Traceback" not in text, f"the server logged a traceback:\n{text}"
