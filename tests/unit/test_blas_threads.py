"""numpy's OpenBLAS runs on one thread in every process of ours: its worker threads wait for each
other at every large dot product, which beside a game on every core made a correlation crawl."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os
{first}
import numpy as np
a = np.ones(20_000)
float(a @ a)  # a dot product large enough for OpenBLAS to split between threads
print(len(os.listdir("/proc/self/task")))
"""


def threads(first: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread on one core")
def test_importing_the_package_first_keeps_numpy_on_one_thread() -> None:
    assert threads("import voipclient") == 1
    assert threads("") > 1  # numpy alone: a thread per core (the check can fail)
