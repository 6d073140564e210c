"""The bundle's budget: its size unpacked, and the time from launch to the window on screen.

Needs the bundle (`make bundle`; `make bench` builds it first) and a display (`make bench` runs
under scripts/with-test-env.sh: Xvfb, and PulseAudio so the audio devices really open). Each run
starts the bundled `voipclient --startup-probe` with a fresh home (no saved servers, nothing
cached by us), which prints a line once the main window is exposed and quits; the clock runs
from just before the process is spawned to that line. The same is measured for the venv's
`python -m voipclient` for comparison. Ends with one JSON line for run_all.py.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "dist" / "voipclient"
RUNS = 10


def apparent_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def launch_to_window(command: list[str]) -> float:
    with tempfile.TemporaryDirectory() as home:
        env = dict(
            os.environ,
            HOME=home,
            XDG_CONFIG_HOME=f"{home}/config",
            XDG_DATA_HOME=f"{home}/data",
            XDG_CACHE_HOME=f"{home}/cache",
        )
        start = time.monotonic()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert proc.stdout is not None
        shown = None
        for line in proc.stdout:
            if line.startswith("voipclient: window shown"):
                shown = time.monotonic() - start
        proc.wait(30)
        if shown is None:
            raise SystemExit(f"bundle benchmark: {command[0]} never showed its window")
        return shown


def series(command: list[str]) -> list[float]:
    return [launch_to_window(command) * 1000 for _ in range(RUNS)]


def main() -> int:
    exe = BUNDLE / "voipclient"
    if not exe.exists():
        raise SystemExit("bundle benchmark: no bundle; run `make bundle` first")
    total = apparent_bytes(BUNDLE)
    internal = BUNDLE / "_internal"
    parts = sorted(
        (
            (apparent_bytes(p) if p.is_dir() else p.stat().st_size, p.name)
            for p in internal.iterdir()
            if not p.is_symlink()  # top-level links to libraries inside the package folders
        ),
        reverse=True,
    )[:6]
    bundle_ms = series([str(exe), "--startup-probe"])
    venv_ms = series([sys.executable, "-m", "voipclient", "--startup-probe"])
    figures = {
        "benchmark": "bundle",
        "unpacked_mib": round(total / 2**20, 1),
        "unpacked_mb": round(total / 1e6, 1),
        "files": sum(1 for f in BUNDLE.rglob("*") if f.is_file()),
        "largest_parts": [{"part": name, "mib": round(size / 2**20, 1)} for size, name in parts],
        "launch_to_window_first_ms": round(bundle_ms[0]),
        "launch_to_window_median_ms": round(statistics.median(bundle_ms)),
        "launch_to_window_max_ms": round(max(bundle_ms)),
        "venv_launch_to_window_median_ms": round(statistics.median(venv_ms)),
        "runs": RUNS,
    }
    print(
        f"bundle: {figures['unpacked_mib']} MiB ({figures['unpacked_mb']} MB) unpacked; launch to "
        f"window median {figures['launch_to_window_median_ms']} ms (first "
        f"{figures['launch_to_window_first_ms']}, max {figures['launch_to_window_max_ms']}); "
        f"venv {figures['venv_launch_to_window_median_ms']} ms"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
