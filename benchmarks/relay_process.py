"""A real relay process for the app benchmarks (idle, gui_stalls, soak), and a pin approved for it
as a user's second start would find it. Not a benchmark (run_all.py skips it)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
START_LINE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+) .*pin=(?P<pin>sha256/\S+)")


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL (the benchmarks' child processes:
    a server, nats-server)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Relay:
    """``python -m voipclient.server`` on ``port`` (0: any), started and its start line read."""

    def __init__(
        self,
        data: Path,
        *,
        port: int = 0,
        config: Path | None = None,
        stderr: IO[str] | int = subprocess.DEVNULL,
    ) -> None:
        cmd = [sys.executable, "-m", "voipclient.server", "--port", str(port)]
        cmd += ["--data-dir", str(data)]
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        match = START_LINE.search(self.proc.stdout.readline())
        if match is None:
            self.proc.kill()
            raise SystemExit("benchmark: the relay did not start")
        self.host, self.port, self.pin = match["host"], int(match["port"]), match["pin"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def approve_pin(self, data_dir: Path) -> None:
        """Write this relay's pin into an app's pin file (``--data-dir``): no first-contact
        dialog, as on a user's second start."""
        from voipclient.net.pins import PinStore, server_key
        from voipclient.storage.trust import PinFile

        store = PinStore()
        store.approve(server_key(self.host, self.port), self.pin, int(time.time() * 1000))
        PinFile(data_dir / "server-pins.json").save(store)
