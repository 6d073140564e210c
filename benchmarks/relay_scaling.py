"""Relay on every core: the same load through ``--workers 1`` and ``--workers 2``.

Runs ``relay_load.py`` three times with the same layout and load (500 clients in 50 channels, a
fixed number of talkers, every check on):

1. ``--workers 1``, the server pinned to one core, the generator to the other;
2. ``--workers 2``, the same pinning: both workers and the control process share the server's
   core, so their CPU per copy is directly comparable with run 1's: what splitting the relay
   into processes costs (or saves);
3. ``--workers 2``, nothing pinned: the workers spread over both cores (which the generator
   also needs, so this machine cannot show two *saturated* workers).

If a worker costs what one process costs per copy (run 2 vs run 1), N cores forward N times the
copies/s of one, less the control process's share (``docs/server.md`` has the estimate).

    python benchmarks/relay_scaling.py [--talkers 200 --seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Any

import relay_load as rl


def run(workers: int, talkers: int, seconds: float, pinned: bool) -> dict[str, Any]:
    argv = ["--talkers", str(talkers), "--seconds", str(seconds), "--workers", str(workers)]
    argv += ["--no-reference"] + ([] if pinned else ["--unpinned"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = rl.main(argv)
    tag = f"workers {workers}, {'pinned' if pinned else 'unpinned'}"
    for line in out.getvalue().splitlines():
        if not line.startswith("{"):
            print(f"  [{tag}] {line}", flush=True)
    return result


def us_per_copy(step: dict[str, Any]) -> float:
    return round(step["server_cpu_pct"] / 100 / max(1, step["forwarded_pps"]) * 1e6, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--talkers", type=int, default=200)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    one = run(1, args.talkers, args.seconds, pinned=True)
    two = run(2, args.talkers, args.seconds, pinned=True)
    spread = run(2, args.talkers, args.seconds, pinned=False)
    s1, s2, s3 = (r["steps"][-1] for r in (one, two, spread))
    w2, w3 = two["steps_workers"], spread["steps_workers"]
    one_us = us_per_copy(s1)
    worker_us = sum(w["cpu_us_per_copy"] for w in w2) / max(1, len(w2))
    result: dict[str, Any] = {
        "benchmark": "relay_scaling",
        "clients": rl.SWEEP_LAYOUT[0],
        "channels": rl.SWEEP_LAYOUT[1],
        "talkers": args.talkers,
        "one_forwarded_pps": s1["forwarded_pps"],
        "one_loss_pct": s1["loss_pct"],
        "one_cpu_us_per_copy": one_us,
        "two_forwarded_pps": s2["forwarded_pps"],
        "two_loss_pct": s2["loss_pct"],
        "two_cpu_us_per_copy": us_per_copy(s2),
        "two_control_cpu_pct": s2["control_cpu_pct"],
        "worker_cpu_us_per_copy": round(worker_us, 2),
        "worker_vs_one_process": round(worker_us / one_us, 2),
        "copies_per_core_s": round(1e6 / worker_us),
        "spread_forwarded_pps": s3["forwarded_pps"],
        "spread_loss_pct": s3["loss_pct"],
        "spread_p99_ms": s3["p99_ms"],
        "workers_one_core": w2,
        "workers_spread": w3,
    }
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
