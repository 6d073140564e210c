"""Soak: the desktop app among 20 bots that come, talk, go and get killed, with loss and a CPU hog.

A real relay process; the real desktop app (``python -m voipclient --connect``) under Xvfb with its
devices on the PulseAudio null sink (`make bench` runs in scripts/with-test-env.sh), in the Lobby,
pressing push-to-talk now and then through ``voipclient ptt`` (its control socket); a CPU hog
beside it. Twenty bot processes at a time, each living 6-40 s: they join the Lobby and maybe a
channel, most of them talk (the speech samples), their voice goes through a lossy UDP proxy
(5 % loss) to the relay, about a quarter are killed with SIGKILL in the middle (no goodbye), and
each one gone is replaced by a new one. Bounded: SOAK_S seconds (default 240, at most 15 min).

Reported: the app's and the relay's resident memory growth from the end of a warm-up to the end,
the app's threads and open descriptors before and after, exceptions the app and the relay logged,
audio-host restarts (the soak SIGKILLs the app's audio host process every HOST_KILL_EVERY_S: each
must be restarted and the app must stay connected), the audio host's own memory growth, the frames
the app's audio device lost because the app was late (capture overrun + playback underrun, from
the engine's counters logged at quit), and the bots' own counts. Targets: RSS growth <= 20 MB,
no growth in threads or descriptors, no unhandled exception. Ends with one JSON line for run_all.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netem import Impairment, LossyProxy
from relay_process import ROOT, Relay

SPEECH = [ROOT / "tests" / "data" / f"speech-{i}-48k.wav" for i in (0, 1)]
SOAK_S = min(float(os.environ.get("VOIPCLIENT_SOAK_S", "240")), 900.0)
WARMUP_S = 15.0
#: VOIPCLIENT_SOAK_TRACE=1: trace the app's Python allocations and print where they grew
TRACE = bool(os.environ.get("VOIPCLIENT_SOAK_TRACE"))
BOTS = 20
LOSS = 0.05
KILL_SHARE = 0.25
TARGET_RSS_GROWTH_MB = 20.0
HOST_KILL_EVERY_S = 60.0
STATE_LINE = re.compile(r"voipclient\.net\.connection INFO connection (\w+):")
ENGINE_LINE = re.compile(
    r"audio engine stopped: (\d+) frames in, (\d+) out; capture overrun (\d+) frames, "
    r"playback underrun (\d+) frames"
)
CONFIG = """\
[server]
name = "soak"

[limits]
max_sessions = 64
max_sessions_per_ip = 64

[[channels]]
name = "A"

[[channels]]
name = "B"
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def audio_host(app_pid: int) -> int | None:
    """The pid of the app's `voipclient --audio-host` child, if it runs."""
    for children in Path(f"/proc/{app_pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--audio-host" in argv:
                return int(child)
    return None


def fd_targets(pid: int) -> dict[str, str]:
    out = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out[fd.name] = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
    return out


def census(pid: int) -> dict[str, object]:
    fds = fd_targets(pid)
    return {
        "rss_mb": round(rss_mb(pid), 1),
        "threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
        "fds": len(fds),
        "fd_targets": fds,
    }


def growth(before: dict[str, object], after: dict[str, object]) -> float:
    a, b = after["rss_mb"], before["rss_mb"]
    assert isinstance(a, float) and isinstance(b, float)
    return round(a - b, 1)


class Soak:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.rng = random.Random(2026)
        self.spawned = self.killed = self.ended = self.failed = 0
        self.bot_errors: list[str] = []
        self.serial = 0

    def start_relay(self) -> None:
        cfg = self.home / "server.toml"
        cfg.write_text(CONFIG)
        self.relay_err = (self.home / "relay.err").open("w")
        self.relay = Relay(self.home / "relay", config=cfg, stderr=self.relay_err)
        self.host, self.port, self.pin = self.relay.host, self.relay.port, self.relay.pin

    def start_app(self) -> None:
        data = self.home / "data"
        self.relay.approve_pin(data)
        self.app_log = data / "logs" / "voipclient.log"
        self.socket = self.home / "ptt.sock"
        env = dict(os.environ, HOME=str(self.home), VOIPCLIENT_PTT_SOCKET=str(self.socket))
        if TRACE:
            env["VOIPCLIENT_TRACEMALLOC"] = "1"
        self.app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voipclient",
                "--connect",
                f"{self.host}:{self.port}",
                "--name",
                "soaker",
                "--data-dir",
                str(data),
                "--settings-dir",
                str(self.home / "settings"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )

    async def ptt(self, verb: str) -> str:
        from voipclient.ptt.control import send_command

        try:
            return await asyncio.to_thread(send_command, f"{verb} Lobby", path=self.socket)
        except OSError as exc:
            return f"error {exc}"

    async def bot(self) -> None:
        """One bot's life: spawn, maybe kill it midway, wait for it; then the loop replaces it."""
        self.serial += 1
        name = f"bot{self.serial:04d}"
        life = self.rng.uniform(6.0, 40.0)
        talks = self.rng.random() < 0.7
        proxy = LossyProxy(Impairment(LOSS, 1.0, 0.0), seed=self.serial)
        via = await proxy.start((self.host, self.port))
        join = "Lobby" + (f",{self.rng.choice('AB')}" if self.rng.random() < 0.5 else "")
        args = [
            sys.executable,
            "-m",
            "voipclient.bot",
            "--server",
            f"{self.host}:{self.port}",
            "--pin",
            self.pin,
            "--name",
            name,
            "--join",
            join,
            "--seconds",
            f"{life:.1f}",
            "--udp-via",
            f"{via[0]}:{via[1]}",
        ]
        if talks:
            args += [
                "--talk",
                "Lobby",
                "--play",
                str(self.rng.choice(SPEECH)),
                "--start-delay",
                f"{self.rng.uniform(0, 3):.1f}",
            ]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT
        )
        self.spawned += 1
        try:
            if self.rng.random() < KILL_SHARE:
                await asyncio.sleep(self.rng.uniform(1.0, life))
                if proc.returncode is None:
                    proc.kill()  # SIGKILL: no goodbye, sockets just vanish
                    self.killed += 1
            _, err = await proc.communicate()
            if proc.returncode == 0:
                self.ended += 1
            elif proc.returncode != -signal.SIGKILL:
                self.failed += 1
                self.bot_errors.append(f"{name}: exit {proc.returncode}: {err.decode()[-300:]}")
        finally:
            proxy.close()

    async def keep_bots(self, until: float) -> None:
        running: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            while len(running) < BOTS:
                running.add(asyncio.create_task(self.bot()))
                await asyncio.sleep(0.2)  # not all at once
            done, running = await asyncio.wait(running, timeout=1.0, return_when="FIRST_COMPLETED")
            for task in done:
                task.result()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def sample_rss(self, until: float) -> list[float]:
        """The app's RSS every 30 s: a leak climbs steadily, bounded buffers level off."""
        series = [round(rss_mb(self.app.pid), 1)]
        while time.monotonic() + 30 <= until:
            await asyncio.sleep(30)
            series.append(round(rss_mb(self.app.pid), 1))
        return series

    async def kill_audio_host(self, until: float) -> tuple[int, list[float]]:
        """SIGKILL the app's audio host every HOST_KILL_EVERY_S; (kills, host RSS each time just
        before the kill: the host's own memory across its lives)."""
        kills, rss = 0, []
        while time.monotonic() + HOST_KILL_EVERY_S <= until:
            await asyncio.sleep(HOST_KILL_EVERY_S)
            pid = audio_host(self.app.pid)
            if pid is None:
                continue
            rss.append(round(rss_mb(pid), 1))
            os.kill(pid, signal.SIGKILL)
            kills += 1
        return kills, rss

    async def press_now_and_then(self, until: float) -> int:
        presses = 0
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(3.0, 8.0))
            if (await self.ptt("press")).startswith("ok"):
                presses += 1
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            await self.ptt("release")
        return presses

    async def run(self) -> dict[str, object]:
        self.start_relay()
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            self.start_app()
            bots_until = time.monotonic() + WARMUP_S + SOAK_S
            bots = asyncio.create_task(self.keep_bots(bots_until))
            await asyncio.sleep(WARMUP_S)
            app_before, relay_before = census(self.app.pid), census(self.relay.pid)
            if TRACE:
                self.app.send_signal(signal.SIGUSR1)  # the allocation baseline
            sampler = asyncio.create_task(self.sample_rss(bots_until))
            killer = asyncio.create_task(self.kill_audio_host(bots_until))
            presses = await self.press_now_and_then(bots_until)
            await bots
            series = await sampler
            host_kills, host_rss = await killer
            await asyncio.sleep(3.0)  # the last sessions time out or leave
            app_after, relay_after = census(self.app.pid), census(self.relay.pid)
            if TRACE:
                self.app.send_signal(signal.SIGUSR1)  # where Python memory grew: in the log
                await asyncio.sleep(2.0)
            states = STATE_LINE.findall(self.app_log.read_text("utf-8"))
            state_at_end = states[-1] if states else "unknown"
        finally:
            hog.kill()
            hog.wait()
            if self.app.poll() is None:
                self.app.send_signal(signal.SIGTERM)  # the app quits normally: logs engine stats
                try:
                    self.app.wait(20)
                except subprocess.TimeoutExpired:
                    self.app.kill()
            self.relay.stop()
            self.relay_err.close()
        log = self.app_log.read_text("utf-8") if self.app_log.exists() else ""
        if TRACE:
            at = log.rfind("tracemalloc: growth")
            print(log[at : log.find(" INFO ", at + 30)] if at >= 0 else "no tracemalloc dump")
        engine = ENGINE_LINE.findall(log)
        lost = sum(int(m[2]) + int(m[3]) for m in engine)
        relay_log = (self.home / "relay.err").read_text()
        return {
            "benchmark": "soak",
            "soak_s": SOAK_S,
            "bots_at_a_time": BOTS,
            "bots_spawned": self.spawned,
            "bots_killed": self.killed,
            "bots_failed": self.failed,
            "ptt_presses": presses,
            "app_rss_growth_mb": growth(app_before, app_after),
            "relay_rss_growth_mb": growth(relay_before, relay_after),
            "app_rss_every_30s_mb": series,
            "app_threads_before_after": [app_before["threads"], app_after["threads"]],
            "app_fds_before_after": [app_before["fds"], app_after["fds"]],
            # what the descriptors opened since the warm-up point at (a leak repeats; a file
            # opened once on first use does not)
            "app_fds_new": sorted(
                set(app_after["fd_targets"].values()) - set(app_before["fd_targets"].values())
            ),
            "app_exceptions_logged": log.count("unhandled exception"),
            "app_errors_logged": log.count(" ERROR ") + log.count(" CRITICAL "),
            "app_errors_first": [
                line[line.find(" ERROR ") :][:200]
                for line in log.splitlines()
                if " ERROR " in line or " CRITICAL " in line
            ][:3],
            "relay_tracebacks": relay_log.count("Traceback"),
            "audio_host_kills": host_kills,
            "audio_host_restarts": log.count("; restarted it (restart"),
            "audio_host_rss_before_each_kill_mb": host_rss,
            "app_frames_lost_to_stalls": lost if engine else None,
            "app_state_at_end": state_at_end,
            "target_rss_growth_mb": TARGET_RSS_GROWTH_MB,
            "bot_errors": self.bot_errors[:3],
        }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = asyncio.run(Soak(Path(tmp)).run())
    print(
        f"soak {result['soak_s']:.0f} s, {result['bots_spawned']} bots ({result['bots_killed']} "
        f"killed, {result['bots_failed']} failed): app RSS {result['app_rss_growth_mb']:+} MB, "
        f"relay RSS {result['relay_rss_growth_mb']:+} MB, threads "
        f"{result['app_threads_before_after']}, fds {result['app_fds_before_after']}, "
        f"exceptions {result['app_exceptions_logged']}, frames lost to stalls "
        f"{result['app_frames_lost_to_stalls']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
