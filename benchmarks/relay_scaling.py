"""Relay on every core: the same load through ``--workers 1`` and ``--workers 2``.

Runs ``relay_load.py`` twice with the same layout and load (500 clients in 50 channels, a fixed
number of talkers), neither the server nor the generator pinned (this machine has two cores:
the generator needs one of them too, so the copies/s of two workers cannot be shown by
saturating them here). What it shows instead: the CPU each worker spends per copy it forwards,
next to the single process's, and how the load splits between the workers (sender id mod N).
If a worker costs what one process costs per copy, N cores forward N times the copies/s
(``docs/server.md`` has the estimate).

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


def run(workers: int, talkers: int, seconds: float) -> dict[str, Any]:
    argv = [
        "--talkers",
        str(talkers),
        "--seconds",
        str(seconds),
        "--workers",
        str(workers),
        "--unpinned",
        "--no-reference",
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = rl.main(argv)
    for line in out.getvalue().splitlines():
        if not line.startswith("{"):
            print(f"  [workers {workers}] {line}", flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--talkers", type=int, default=200)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    one = run(1, args.talkers, args.seconds)
    two = run(2, args.talkers, args.seconds)
    s1, s2 = one["steps"][-1], two["steps"][-1]

    def us_per_copy(step: dict[str, Any]) -> float:
        return round(step["server_cpu_pct"] / 100 / max(1, step["forwarded_pps"]) * 1e6, 2)

    workers = two.get("steps_workers") or []
    result = {
        "benchmark": "relay_scaling",
        "clients": one["clients"] or rl.SWEEP_LAYOUT[0],
        "talkers": args.talkers,
        "one_forwarded_pps": s1["forwarded_pps"],
        "one_loss_pct": s1["loss_pct"],
        "one_p99_ms": s1["p99_ms"],
        "one_cpu_us_per_copy": us_per_copy(s1),
        "two_forwarded_pps": s2["forwarded_pps"],
        "two_loss_pct": s2["loss_pct"],
        "two_p99_ms": s2["p99_ms"],
        "two_cpu_us_per_copy": us_per_copy(s2),
        "two_control_cpu_pct": s2.get("control_cpu_pct"),
        "workers": workers,
    }
    if workers:
        per_copy = [w["cpu_us_per_copy"] for w in workers if w["cpu_us_per_copy"]]
        worker_us = sum(per_copy) / len(per_copy)
        result["worker_cpu_us_per_copy"] = round(worker_us, 2)
        result["worker_vs_one_process"] = round(worker_us / us_per_copy(s1), 2)
        result["copies_per_core_s"] = round(1e6 / worker_us)
        result["estimate_n_cores"] = "N workers forward about N x copies_per_core_s"
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
