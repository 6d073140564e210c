"""The client at rest: connected, push-to-talk, nobody talking. CPU, memory and wake-ups.

A real relay process and the real desktop app (``python -m voipclient --connect``, under Xvfb with
its audio devices open on the PulseAudio null sink: `make bench` runs it in
scripts/with-test-env.sh). The server's pin is approved in the app's pin file beforehand, as a
user's second start would find it. After a warm-up the app's process is sampled from /proc for
a fixed window: CPU (utime + stime of every thread), resident memory, and wake-ups — context
switches of all its threads (voluntary: it slept and was woken; involuntary: preempted), per
second, also broken down by thread name so a busy loop shows where it is. Ends with one JSON
line for run_all.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relay_process import ROOT, Relay

WARMUP_S = 8.0
WINDOW_S = 20.0
TARGET_CPU_PCT = 1.5
TARGET_WAKEUPS = 200.0
TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the app and its audio host)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    return out


def tasks(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread of the app and its child processes: (cpu ticks, context switches), keyed
    ``name#tid``."""
    out: dict[str, tuple[int, int]] = {}
    for p in family(pid):
        out.update(_tasks(p))
    return out


def _tasks(pid: int) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        switches = sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
        key = f"{name}#{task.name}"
        out[key] = (ticks, switches)
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of the app and its child processes (the audio host), each counted
    whole: pages they share (the Python runtime, numpy) are counted twice, so this is an upper
    bound; ``pss_mib`` splits shared pages fairly."""
    return sum(_status_kib(p, "VmRSS:") for p in family(pid)) / 1024


def pss_mib(pid: int) -> float:
    total = 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = Relay(home / "server")
        host, port = server.host, server.port
        data = home / "data"
        data.mkdir()
        server.approve_pin(data)
        env = dict(
            os.environ,
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / "config"),
            VOIPCLIENT_PTT_SOCKET=str(home / "ptt.sock"),
        )
        app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voipclient",
                "--connect",
                f"{host}:{port}",
                "--name",
                "idler",
                "--data-dir",
                str(data),
                "--settings-dir",
                str(home / "settings"),
                "--quit-after",
                str(WARMUP_S + WINDOW_S + 2),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            time.sleep(WARMUP_S)
            before, t0 = tasks(app.pid), time.monotonic()
            time.sleep(WINDOW_S)
            after, t1 = tasks(app.pid), time.monotonic()
            rss, pss = rss_mib(app.pid), pss_mib(app.pid)
            processes = len(family(app.pid))
            assert app.stdout is not None
            report = app.stdout.read()  # --quit-after prints the state line, then it exits
            app.wait(30)
        finally:
            if app.poll() is None:
                app.kill()
            server.stop()
    elapsed = t1 - t0
    ticks = sum(after[k][0] - before.get(k, (0, 0))[0] for k in after)
    per_thread = dict.fromkeys((k.split("#")[0] for k in after), 0.0)  # names may repeat
    cpu_thread = dict.fromkeys(per_thread, 0.0)
    for k, (ticks_k, switches) in after.items():
        per_thread[k.split("#")[0]] += (switches - before.get(k, (0, 0))[1]) / elapsed
        cpu_thread[k.split("#")[0]] += (
            100.0 * (ticks_k - before.get(k, (0, 0))[0]) / TICKS / elapsed
        )
    wakeups = sum(per_thread.values())
    cpu_pct = 100.0 * ticks / TICKS / elapsed
    busiest = sorted(per_thread.items(), key=lambda kv: -kv[1])[:8]
    print(f"app: {report.strip()}")
    print(
        f"idle for {elapsed:.1f} s ({processes} processes): {cpu_pct:.2f} % of a core, "
        f"RSS {rss:.0f} MiB (PSS {pss:.0f} MiB), {wakeups:.0f} wake-ups/s"
    )
    for name, rate in busiest:
        print(f"  {name:24s} {rate:7.1f} /s  {cpu_thread[name]:5.2f} % of a core")
    result = {
        "benchmark": "idle",
        "state": "ready" if "state=ready" in report else report.strip(),
        "window_s": round(elapsed, 1),
        "cpu_core_pct": round(cpu_pct, 2),
        "rss_mib": round(rss, 1),
        "pss_mib": round(pss, 1),
        "processes": processes,
        "wakeups_per_s": round(wakeups),
        "threads": len(after),
        "target_cpu_core_pct": TARGET_CPU_PCT,
        "target_wakeups_per_s": TARGET_WAKEUPS,
        "busiest_threads": [
            {"thread": n, "wakeups_per_s": round(r, 1), "cpu_core_pct": round(cpu_thread[n], 2)}
            for n, r in busiest
        ],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
