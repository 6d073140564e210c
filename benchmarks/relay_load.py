"""Relay load: many simulated clients over real TLS and UDP through a real server process.

The server (``python -m voipclient.server``) runs as a subprocess pinned to one core; this load
generator runs on the other. Every client is the client core users run,
:class:`~voipclient.net.connection.ClientConnection`, under a thin asyncio adapter (a TLS
transport, a connected UDP socket, one timer re-armed from ``get_timer()``): it checks the
server's key against the pin of the start line before any application byte, logs in (a real
Ed25519-signed login), runs the real end-to-end layer (session key and certificate published,
peers' certificates verified, sender keys and KeyDists for its channel), leaves the Lobby for its
own channel (so the server's roster holds real memberships), validates its UDP address with the
hop-control handshake (BIND -> CHALLENGE -> BIND_CONFIRM -> BIND_OK, real hop MACs) and pings
the relay over UDP, as the app does. Talkers send real voice datagrams sealed by their core
(``send_voice``: the channel's sender key, AES-256-GCM of an 84-byte payload, the size of a
20 ms Opus frame at 32 kb/s, plus the c2s hop MAC), 50 packets/s each, staggered over the 20 ms
frame. The relay runs every check on them (hop MAC, validated address, ACL, replay window, rate
limit) and re-MACs every copy per listener.

So that the client's own per-packet cost does not become part of the relay's figures, the
datagrams of a step are sealed by the talkers' cores before the measuring window (taken from
``datagrams_to_send``, the event loop served between batches) and sent in paced batches, one
``send`` each, from each talker's own validated UDP socket; every listener socket is read with
non-blocking reads driven by one epoll, and the copies are not decrypted (a sample is checked
against each listener's s2c hop key; PONGs go to the core at once). Meanwhile the step serves
the clients' due timers in slices (pings, the core's stats tick). The header (sender_id, gen,
ctr) that the relay never changes identifies each copy, so the time through the relay is receive
time minus send time (both this process's monotonic clock; it includes the loopback hops and
this generator's own reaction time).

Per run (0.5 s of warm-up, then the measuring window): loss % = 1 - received copies / expected
copies, where expected = datagrams sent x (validated members of the channel - 1);
``in_pps`` = datagrams sent per second; ``forwarded_pps`` = copies the relay sent per second
(its stats line: with 10 members per channel each datagram makes 9 copies); server CPU % from
/proc/PID/stat (utime + stime) over the window; RSS from /proc/PID/status. Kernel socket drops
(/proc/net/udp) tell where a loss happened: at the server's socket (the relay did not keep up)
or at the listeners' sockets (this generator did not). The busy time of both cores minus our two
processes (``foreign_cpu_pct``) tells whether other processes got in the way: the machine is
shared, so a run starts only once the cores are quiet (or after a bounded wait), a load whose
first run is close to the limits runs again, and its verdict is the majority of up to three runs.

    python benchmarks/relay_load.py                      # the sweep (what `make bench` runs)
    python benchmarks/relay_load.py --clients 500 --channels 50 --talkers 100 --seconds 5

The sweep keeps 500 clients in 50 channels and raises the number of talkers until a load fails
the criteria (loss <= 0.1 % and p99 <= 10 ms), then tries the middle of the last gap. Prints
readable lines, then one JSON line: the best passing load's figures and every load's figures.
Everything stays on 127.0.0.1, bounded in time; the server is always killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import gzip
import json
import math
import os
import re
import resource
import select
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay_process import stop_process

from voipclient.crypto.hop import HopMac
from voipclient.crypto.identity import IdentityKey
from voipclient.net import events as ev
from voipclient.net import supervisor as sv
from voipclient.net.connection import (
    ClientConnection,
    CloseTransport,
    OpenTransport,
    OpenUdp,
    TransportChanged,
    VoiceTransport,
)
from voipclient.net.hopctl import HOP_CONTROL_LEN
from voipclient.net.pins import pin_of_der_certificate

HOST = "127.0.0.1"
PACKETS_PER_S = 50  # one 20 ms frame per packet, per talker (the relay allows 100/s per session)
OPUS_FRAME = 80  # bytes: 32 kb/s x 20 ms
PAYLOAD_LEN = 4 + OPUS_FRAME  # frame_no + the Opus frame, as the client sends it
LOSS_LIMIT_PCT = 0.1
P99_LIMIT_MS = 10.0
LOBBY_ID = 1  # channel ids: the Lobby is 1, configured channels 2, 3, ... in file order
START_LINE = re.compile(
    r"^voipclient-server listening on (?P<host>\S+):(?P<port>\d+) \(tcp\+udp\) "
    r"pin=(?P<pin>sha256/[A-Za-z0-9+/]{43}=)$"
)
START_TIMEOUT = 30.0  # s
LOGIN_CONCURRENCY = 32  # TLS handshakes + logins in flight (below the server's default cap, 64)
CONTROL_TICK = 1.0  # s: during a step, each client's due timers are served this often
# After its own login a client hands TLS input to its core in batches this far apart (s): one
# member-view rebuild per batch instead of one per message. Longer while 500 users log in and
# join (every client's view changes with each of them), shorter once the roster is still.
SETUP_COALESCE_S = 5.0
COALESCE_S = 1.0
#: The core's delays, but a login may wait longer: the generator's one core plays every client.
SUPERVISOR = sv.SupervisorConfig(connect_timeout=120.0)
STATS_INTERVAL = 0.5  # s between the server's JSON stats lines
DRAIN_S = 0.3  # s of silence after the last datagram was sent that ends a run ...
MAX_DRAIN_S = 2.0  # ... or this long after it: later copies count as lost
WARMUP_S = 0.5  # s of sending before the measuring window opens (not counted)
CONTROL_SLICE = 0.004  # s: during a step, one slice of the clients is served this often (small
# slices: serving a client's due timers takes ~0.1 ms, and every copy that arrives meanwhile waits)
QUIET_PCT = 15.0  # a step starts once the server and other processes use less CPU than this ...
QUIET_WAIT_S = 15.0  # ... or after this long
QUIET_SAMPLE_S = 0.3
NOISY_PCT = 10.0  # foreign CPU % on our cores during a step that makes it worth another try
SWEEP_LAYOUT = (500, 50)  # clients, channels
SWEEP_TALKERS = (50, 100, 150, 200, 250, 300, 400, 500)
SWEEP_SECONDS = 5.0
REF_TALKERS = 150  # the load at which the sweep also measures the bare reference loop
COMPARE_PAIRS = 3  # relay/bare run pairs behind each CPU-per-copy comparison
#: ... and a heavy load, where the relay is ~90 % busy: the ratio falls with the load (a busy
#: loop carries more datagrams per wake-up, so its per-wake-up work weighs less per copy)
HEAVY_REF_TALKERS = 300
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(line: str) -> None:
    print(line, flush=True)


# -- the server process -------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL the server if this benchmark dies without its finally blocks."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def server_config(channels: int, clients: int) -> str:
    """server.toml for the benchmark: every other setting at its default, but the session caps
    raised (all clients come from 127.0.0.1; the per-IP cap also bounds handshakes in flight),
    stats every 0.5 s, and ``channels`` channels under the Lobby."""
    cap = clients + 16
    lines = [
        "[server]",
        'name = "relay-load"',
        f"stats_interval = {STATS_INTERVAL}",
        'log_level = "info"',
        "",
        "[limits]",
        f"max_sessions = {cap}",
        f"max_sessions_per_ip = {cap}",
        "",
    ]
    for i in range(channels):
        lines += ["[[channels]]", f'name = "bench-{i + 1:03d}"', ""]
    return "\n".join(lines)


def channel_ids(channels: int) -> list[int]:
    return [LOBBY_ID + 1 + i for i in range(channels)]


def spawn(cmd: list[str], out: Path, err: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    """A child process with stdout and stderr to files, pinned to ``cpu`` when given."""
    env = dict(os.environ)
    env.pop("VOIPCLIENT_SERVER_PASSWORD", None)
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            cmd,
            stdout=fo,
            stderr=fe,
            env=env,
            stdin=subprocess.DEVNULL,
            # Only sets the parent-death signal; this process has no threads.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, {cpu})
    return proc


def first_line(proc: subprocess.Popen[bytes], out: Path, err: Path) -> str:
    """The first line the child printed (waits up to START_TIMEOUT; kills it on failure)."""
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = out.read_text(errors="replace")
            if "\n" in text:
                return text.splitlines()[0]
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{proc.args!r} did not start; stderr:\n{err.read_text()}")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


@dataclass
class Proc:
    """A child process on 127.0.0.1 that relays UDP on ``port``."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    cpu: int | None  # the core it is pinned to

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)

    def cpu_ticks(self) -> int:
        """utime + stime of the process and its children (the server's UDP workers: all
        threads), in clock ticks."""
        return sum(self.tree_ticks().values())

    def tree_ticks(self) -> dict[int, int]:
        """pid -> utime + stime (clock ticks) of the process and of its live children."""
        out: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            pid, ppid = int(entry.name), int(fields[1])
            if self.proc.pid in (pid, ppid):
                out[pid] = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
        return out

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (UDP workers), summed."""
        total = 0.0
        for pid in self.tree_ticks():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total if total else float("nan")


@dataclass
class Server(Proc):
    pin: str
    stdout_path: Path
    stderr_path: Path

    @classmethod
    def start(
        cls,
        workdir: Path,
        channels: int,
        clients: int,
        cpu: int | None,
        extra: tuple[str, ...] = (),
    ) -> Server:
        cfg = workdir / "server.toml"
        cfg.write_text(server_config(channels, clients))
        out, err = workdir / "stdout.txt", workdir / "stderr.txt"
        cmd = [
            sys.executable,
            "-m",
            "voipclient.server",
            "--host",
            HOST,
            "--port",
            "0",
            "--data-dir",
            str(workdir / "data"),
            "--config",
            str(cfg),
            *extra,
        ]
        proc = spawn(cmd, out, err, cpu)
        line = first_line(proc, out, err)
        match = START_LINE.match(line)
        if match is None:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"unparseable start line: {line!r}")
        return cls(proc, match["host"], int(match["port"]), cpu, match["pin"], out, err)

    def stats(self) -> dict[str, Any] | None:
        """The newest JSON stats line the server printed."""
        with self.stdout_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            tail = f.read().decode(errors="replace").splitlines()
        for line in reversed(tail):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    data: dict[str, Any] = json.loads(line)
                    if data.get("type") == "stats":
                        return data
        return None

    def stats_after(self, wall: float, timeout: float = 3.0) -> dict[str, Any]:
        """The first stats line stamped after ``wall`` (time.time())."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats is not None and stats["time"] > wall:
                return stats
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server printed no fresh stats line")
            time.sleep(0.05)

    def event_loop(self) -> str:
        match = re.search(r"event loop (\w+)", self.stderr_path.read_text(errors="replace"))
        return match.group(1) if match else "?"


#: The same-run reference: a bare UDP fan-out loop as the server's adapter runs it (uvloop when
#: installed, the socket drained in batches from add_reader, one sendto per copy), without any
#: check or MAC. A client registers with "JOIN" + channel id (u32); a datagram is copied as it is
#: to every other member of the channel named by its bytes 4..8.
BARE_RELAY = """
import asyncio, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.setblocking(False)
for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
    sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
members = {}
def readable():
    recvfrom, sendto = sock.recvfrom, sock.sendto
    for _ in range(256):
        try:
            data, addr = recvfrom(2048)
        except BlockingIOError:
            break
        except OSError:
            continue
        if len(data) == 8 and data[:4] == b"JOIN":
            members.setdefault(int.from_bytes(data[4:8], "big"), []).append(addr)
            sendto(b"OK", addr)
            continue
        for dst in members.get(int.from_bytes(data[4:8], "big"), ()):
            if dst != addr:
                try:
                    sendto(data, dst)
                except OSError:
                    pass
async def main():
    asyncio.get_running_loop().add_reader(sock.fileno(), readable)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()
try:
    import uvloop
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
except ImportError:
    runner = asyncio.Runner()
with runner:
    runner.run(main())
"""


@dataclass
class BareRelay(Proc):
    @classmethod
    def start(cls, workdir: Path, cpu: int | None) -> BareRelay:
        out, err = workdir / "bare-stdout.txt", workdir / "bare-stderr.txt"
        proc = spawn([sys.executable, "-c", BARE_RELAY], out, err, cpu)
        return cls(proc, HOST, int(first_line(proc, out, err)), cpu)


def core_times(cpu: int | None) -> list[int]:
    """/proc/stat times of one core (user nice system idle iowait irq softirq steal), ticks."""
    if cpu is None:
        return [0] * 8
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                return [int(x) for x in line.split()[1:9]]
    return [0] * 8


def core_usage(before: list[int], after: list[int]) -> dict[str, float]:
    """Busy, softirq and steal % of a core between two core_times() readings."""
    d = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(d) or 1
    busy = total - d[3] - d[4]
    return {
        "busy": round(100.0 * busy / total, 1),
        "softirq": round(100.0 * d[6] / total, 1),
        "steal": round(100.0 * d[7] / total, 1),
    }


def _irq_time_accounted() -> bool:
    """Whether the kernel keeps softirq time out of the tasks' utime/stime. Without it (tick
    accounting) the softirq work of the loopback path is charged to the process that triggered
    it, here mostly the server's sendto."""
    with contextlib.suppress(OSError, EOFError), gzip.open("/proc/config.gz", "rt") as f:
        return "CONFIG_IRQ_TIME_ACCOUNTING=y" in f.read()
    return False


IRQ_TIME_ACCOUNTED = _irq_time_accounted()


def foreign_pct(
    server_core: dict[str, float], gen_core: dict[str, float], server_pct: float, gen_pct: float
) -> float:
    """CPU % that other processes took on our two cores (this is a shared machine): each core's
    busy time minus the process pinned to it (and minus softirq time when the kernel accounts
    it apart from the processes)."""

    def other(core: dict[str, float], own: float) -> float:
        irq = core["softirq"] if IRQ_TIME_ACCOUNTED else 0.0
        return max(0.0, core["busy"] - irq - own)

    return round(other(server_core, server_pct) + other(gen_core, gen_pct), 1)


def own_cpu_ticks() -> int:
    t = os.times()
    return round((t.user + t.system) * CLK_TCK)


def udp_drops(ports: set[int]) -> dict[int, int]:
    """Kernel receive drops per local UDP port on 127.0.0.1 (/proc/net/udp, cumulative)."""
    out: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            parts = line.split()
            addr, _, port_hex = parts[1].partition(":")
            port = int(port_hex, 16)
            if addr == "0100007F" and port in ports:
                out[port] = out.get(port, 0) + int(parts[-1])
    return out


# -- clients ------------------------------------------------------------------------------------


def client_ssl_context() -> ssl.SSLContext:
    """TLS 1.3 without CA or host name: the core checks the pin before any application byte."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Control(asyncio.Protocol):
    """The TLS connection of one ``OpenTransport``; its callbacks are tagged with the generation."""

    def __init__(self, client: Client, generation: int) -> None:
        self.client = client
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self.closing = False  # the core sent CloseTransport for it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closing:
            transport.abort()
        else:
            self.client.tls_up(self)

    def data_received(self, data: bytes) -> None:
        self.client.data_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.tls_lost(self)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.add_done_callback(lambda f: f.exception())  # retrieved: no "never retrieved" noise


@dataclass(eq=False)
class Client:
    """One simulated user: the client core users run (:class:`ClientConnection`: pin verdict,
    login, end-to-end layer, UDP hop handshake and pings, UDP/tunnel choice) under a thin asyncio
    adapter: a TLS transport, a connected UDP socket read by the event loop, one timer re-armed
    from ``get_timer()``. During a step the event loop is busy sending, so the step serves the
    clients' due timers in slices and hands hop-control datagrams (PONGs) to the core itself."""

    index: int
    pin: str
    channel: int
    identity: IdentityKey = field(default_factory=IdentityKey.generate)
    lost: bool = False  # the core would have reconnected (not done: counted instead)
    closed: str | None = None
    sid: int | None = None
    s2c: HopMac | None = None  # this login's s2c hop key, for the spot check of relay MACs
    udp: socket.socket | None = None
    ref_udp: socket.socket | None = None  # registered with the bare relay
    tunnelled: int = 0  # times the core moved our voice into the TLS tunnel
    failover_from: float | None = None  # set: a lost session reconnects (the cluster run)
    rejoined_at: float | None = None  # ... and when our channel's membership came back
    retry_whys: list[str] = field(default_factory=list)  # ... why attempts after the first

    def __post_init__(self) -> None:
        self.name = f"bench{self.index:04d}"
        self.loop = asyncio.get_running_loop()
        self.conn = ClientConnection(
            self.name, self.identity, wall_clock=time.time, config=SUPERVISOR
        )
        self.logged_in: asyncio.Future[None] = self.loop.create_future()
        self.joined: asyncio.Future[None] = self.loop.create_future()
        self.bound_once: asyncio.Future[None] = self.loop.create_future()
        self.control: _Control | None = None
        self.udp_generation = 0
        self.inbox: list[bytes] = []
        self.urgent = True  # feed TLS input at once (login); later in batches (coalesce_s)
        self.coalesce_s = SETUP_COALESCE_S
        self.feed_handle: asyncio.TimerHandle | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.abort_on_close = False
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def bound(self) -> bool:
        """Our UDP address is validated and the core sends (and gets) voice over UDP."""
        return self.conn.udp_bound and self.conn.transport is VoiceTransport.UDP

    # -- driving the core --------------------------------------------------------------------------

    def call(self, action: Callable[[float], object]) -> None:
        """Hand something to the core at the loop's clock, then carry out what it asks."""
        action(self.loop.time())
        self.pump()

    def pump(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            self.carry_out(event)
        data = conn.data_to_send()
        if data:
            self.write(data)
        for datagram in conn.datagrams_to_send():
            self.send(datagram)
        if self.bound and not self.bound_once.done():
            self.bound_once.set_result(None)
        self.rearm()

    def carry_out(self, event: object) -> None:
        if isinstance(event, OpenTransport):
            self.open_tls(event)
        elif isinstance(event, CloseTransport):
            self.close_transport(event)
        elif isinstance(event, OpenUdp):
            self.open_udp(event)
        elif isinstance(event, ev.LoggedIn):
            self.sid = event.sender_id
            macs = self.conn.hop_macs  # the core's, derived once per login
            self.s2c = None if macs is None else macs[1]
            if LOBBY_ID in event.roster.channels_of(event.sender_id):
                # Off to our own channel (joined in the next phase): users who stayed would
                # make every E2E layer hand Lobby keys to all 500 (O(n²) KeyDists at login).
                self.conn.leave(LOBBY_ID, self.loop.time())
            if not self.logged_in.done():
                self.logged_in.set_result(None)
        elif isinstance(event, ev.MembershipChanged):
            mine = event.sender_id == self.sid and event.channel_id == self.channel
            if mine and event.joined and not self.joined.done():
                self.joined.set_result(None)
            if mine and event.joined and self.failover_from is not None and not self.rejoined_at:
                self.rejoined_at = self.loop.time()
        elif isinstance(event, TransportChanged):
            self.tunnelled += event.transport is VoiceTransport.TUNNEL
        elif isinstance(event, ev.ConnectionClosed):
            self.closed = f"{event.reason.value}: {event.message}"
            _fail(self.logged_in, ConnectionError(self.closed))
        elif isinstance(event, sv.ReconnectScheduled) and self.failover_from is not None:
            if event.attempt > 2:  # attempt 2 is the first after the loss
                self.retry_whys.append(event.why)
        elif isinstance(event, sv.ReconnectScheduled):
            # A reconnect would be a new session in the middle of a measurement: count it.
            self.lost = True
            _fail(self.logged_in, ConnectionError(f"{self.name}: {event.why}"))
            self.conn.close(self.loop.time())

    def rearm(self) -> None:
        due = self.conn.get_timer()
        timer = self.timer
        if timer is not None:
            if due is not None and timer.when() == due:
                return
            timer.cancel()
            self.timer = None
        if due is not None:
            self.timer = self.loop.call_at(due, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.call(self.conn.handle_timer)

    def service(self) -> None:
        """During a step: what the timer would have done by now."""
        due = self.conn.get_timer()
        if due is not None and due <= self.loop.time():
            self.call(self.conn.handle_timer)

    # -- TLS ---------------------------------------------------------------------------------------

    def start(self, host: str, port: int) -> None:
        self.call(lambda now: self.conn.connect(host, port, self.pin, now))

    def join(self) -> None:
        self.call(lambda now: self.conn.join(self.channel, None, now))

    def open_tls(self, event: OpenTransport) -> None:
        control = _Control(self, event.generation)
        self.control = control

        async def connect() -> None:
            try:
                await self.loop.create_connection(
                    lambda: control, event.host, event.port, ssl=SSL_CONTEXT
                )
            except OSError as exc:  # ssl.SSLError is one
                why, gen = str(exc), event.generation
                self.call(lambda now: self.conn.transport_failed(why, now, generation=gen))

        task = self.loop.create_task(connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def tls_up(self, control: _Control) -> None:
        assert control.transport is not None
        ssl_object = control.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        presented = pin_of_der_certificate(der) if der else None
        gen = control.generation
        self.call(lambda now: self.conn.transport_connected(presented, now, generation=gen))

    def data_received(self, control: _Control, data: bytes) -> None:
        if control is not self.control:
            return
        self.inbox.append(data)
        if self.urgent:
            self.feed()
        elif self.feed_handle is None:
            self.feed_handle = self.loop.call_later(self.coalesce_s, self.feed)

    def feed(self) -> None:
        """Buffered TLS input to the core in one call (one roster snapshot per batch)."""
        self.feed_handle = None
        control = self.control
        if not self.inbox or control is None:
            return
        data = b"".join(self.inbox)
        self.inbox.clear()
        gen = control.generation
        self.call(lambda now: self.conn.receive_data(data, now, generation=gen))

    def tls_lost(self, control: _Control) -> None:
        if control is self.control:
            self.feed()
            gen = control.generation
            self.call(lambda now: self.conn.connection_lost(now, generation=gen))

    def write(self, data: bytes) -> None:
        control = self.control
        transport = control.transport if control is not None else None
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close_transport(self, event: CloseTransport) -> None:
        control = self.control
        if control is not None and control.generation == event.generation:
            self.control = None
            self.inbox.clear()
            control.closing = True
            transport = control.transport
            if transport is not None:
                if event.abort or self.abort_on_close:
                    transport.abort()
                else:
                    if event.data:
                        transport.write(event.data)
                    transport.close()
        if self.udp is not None and self.udp_generation == event.generation:
            self.close_udp()

    # -- UDP ---------------------------------------------------------------------------------------

    def open_udp(self, event: OpenUdp) -> None:
        self.close_udp()
        self.udp = connected_udp((event.host, event.port))
        self.udp_generation = event.generation
        self.loop.add_reader(self.udp.fileno(), self.udp_readable)

    def close_udp(self) -> None:
        sock, self.udp = self.udp, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def udp_readable(self) -> None:
        sock = self.udp
        if sock is None:
            return
        now, gen = self.loop.time(), self.udp_generation
        for _ in range(64):
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            except OSError:  # ICMP errors reported on the connected socket
                continue
            self.conn.datagram_received(data, now, generation=gen)
        self.pump()

    def hop_datagram(self, data: bytes) -> None:
        """During a step: a hop-control datagram (a PONG) read by the step goes to the core."""
        gen = self.udp_generation
        self.call(lambda now: self.conn.datagram_received(data, now, generation=gen))

    def send(self, datagram: bytes) -> None:
        if self.udp is not None:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                self.udp.send(datagram)

    def seal(self, payload: bytes) -> bytes | None:
        """One voice datagram for our channel as the core makes it (the E2E layer's sender key,
        AES-GCM, the c2s hop MAC), taken from ``datagrams_to_send`` before it leaves: the step
        sends it later, paced, with one ``send`` call. None when the core no longer sends voice
        over UDP (after an overloaded step it may have moved to the TLS tunnel, or lost its
        session): the step goes on without this talker."""
        self.conn.send_voice((self.channel,), (), payload, self.loop.time())
        voice = []
        for datagram in self.conn.datagrams_to_send():
            if len(datagram) == HOP_CONTROL_LEN:
                self.send(datagram)
            else:
                voice.append(datagram)
        self.pump()
        if len(voice) > 1:
            raise RuntimeError(f"{self.name}: the core sealed {len(voice)} datagrams, not 1")
        return voice[0] if voice else None

    def shutdown(self) -> None:
        """The core closes (its CloseTransport aborts the TLS connection: the server is stopped
        next, no Bye round trips) and every socket goes."""
        self.abort_on_close = True
        self.call(self.conn.close)
        for handle in (self.timer, self.feed_handle):
            if handle is not None:
                handle.cancel()
        self.close_udp()
        if self.ref_udp is not None:
            self.ref_udp.close()


SSL_CONTEXT = client_ssl_context()


def connected_udp(peer: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.connect(peer)  # only the relay's datagrams are accepted; send() needs no address
    sock.setblocking(False)
    return sock


def register_bare(clients: list[Client], relay: BareRelay, timeout: float = 10.0) -> None:
    """Every client's second socket joins its channel on the bare relay."""
    ep = select.epoll()
    by_fd: dict[int, Client] = {}
    done: set[int] = set()
    try:
        for c in clients:
            c.ref_udp = sock = connected_udp((relay.host, relay.port))
            by_fd[sock.fileno()] = c
            ep.register(sock.fileno(), select.EPOLLIN)
            sock.send(b"JOIN" + struct.pack(">I", c.channel))
        deadline = time.monotonic() + timeout
        while len(done) < len(clients):
            if time.monotonic() > deadline:
                raise TimeoutError("the bare relay did not answer every JOIN")
            for fd, _ in ep.poll(0.05):
                with contextlib.suppress(BlockingIOError):
                    if by_fd[fd].ref_udp.recv(16) == b"OK":  # type: ignore[union-attr]
                        done.add(fd)
    finally:
        ep.close()


async def login_all(server: Server, channels: list[int], n: int, timeout: float) -> list[Client]:
    """n clients logged in over TLS, client i destined for channels[i % len(channels)]."""
    sem = asyncio.Semaphore(LOGIN_CONCURRENCY)
    clients = [Client(i, server.pin, channels[i % len(channels)]) for i in range(n)]

    async def one(c: Client) -> None:
        async with sem:
            c.start(server.host, server.port)
            await c.logged_in
            c.urgent = False

    await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients)), timeout)
    return clients


async def join_all(clients: list[Client], timeout: float) -> None:
    for c in clients:
        c.join()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.joined for c in clients)), timeout)
    except TimeoutError:
        missing = sum(not c.joined.done() for c in clients)
        raise TimeoutError(f"{missing} clients did not get their join confirmed") from None


async def bound_all(clients: list[Client], timeout: float) -> None:
    """The core binds our UDP address by itself from the login on: until every one is bound
    and on UDP at once (or ``timeout``: the ones left are reported and not used). A client
    whose UDP pings went unanswered while this one process logged 500 clients in (a slow
    machine) is on the TLS tunnel for a while and comes back at its next UDP probe (every
    12 s): its copies would otherwise go through TLS, which is not what the steps measure."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.bound_once for c in clients)), timeout)
    deadline = time.monotonic() + timeout
    while not all(c.bound for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


# -- one step -----------------------------------------------------------------------------------


def pick_talkers(clients: list[Client], channels: list[int], talkers: int) -> list[Client]:
    """Talkers spread round-robin over the channels (one per channel, then a second, ...)."""
    members = {ch: [c for c in clients if c.channel == ch and c.bound] for ch in channels}
    out: list[Client] = []
    depth = 0
    while len(out) < talkers:
        added = False
        for ch in channels:
            if depth < len(members[ch]) and len(out) < talkers:
                out.append(members[ch][depth])
                added = True
        if not added:
            break
        depth += 1
    return out


@dataclass
class Sealed:
    """One step's voice, sealed by the talkers' cores before the step, in send order: datagram
    k is talker k % T's frame k // T."""

    talkers: list[Client]
    frames: int
    warm_frames: int
    datagrams: list[bytes]
    #: The header bytes the relay never changes (sender_id, gen, ctr) → send index k.
    index_of: dict[bytes, int]


async def seal_step(talkers: list[Client], seconds: float) -> Sealed:
    """Every datagram of a step sealed by its talker's core (``send_voice``), the event loop
    served between batches so the control sessions and UDP pings go on meanwhile."""
    warm_frames = round(WARMUP_S * PACKETS_PER_S)
    frames = warm_frames + max(1, round(seconds * PACKETS_PER_S))
    opus = os.urandom(OPUS_FRAME)
    while True:  # again without a talker whose core stopped sending over UDP (rare)
        if not talkers:
            raise RuntimeError("no client sends voice over UDP any more (sessions lost)")
        datagrams: list[bytes] = []
        index_of: dict[bytes, int] = {}
        gone: list[Client] = []
        for frame in range(frames):
            payload = struct.pack(">I", frame) + opus
            for t in talkers:
                dg = t.seal(payload)
                if dg is None:
                    gone.append(t)
                    break
                index_of[dg[8:20]] = len(datagrams)
                datagrams.append(dg)
            if gone:
                break
            await asyncio.sleep(0)
        if not gone:
            return Sealed(talkers, frames, warm_frames, datagrams, index_of)
        say(f"  {gone[0].name} no longer sends voice over UDP: the step goes on without it")
        talkers = [t for t in talkers if t not in gone]


def run_step(
    server: Proc,
    clients: list[Client],
    sealed: Sealed,
    gen_cpu: int | None,
) -> dict[str, Any]:
    """Send the sealed voice of every talker and measure what comes back, through the relay
    server or (``server`` a :class:`BareRelay`) through the bare reference loop."""
    real = isinstance(server, Server)

    def sock_of(c: Client) -> socket.socket | None:
        return c.udp if real else c.ref_udp

    talkers, datagrams, index_of = sealed.talkers, sealed.datagrams, sealed.index_of
    t_count = len(talkers)
    warm_frames, frames = sealed.warm_frames, sealed.frames
    rate = t_count * PACKETS_PER_S  # datagrams/s in
    n = t_count * frames

    # One send call per datagram, from its talker's socket, in send order: k -> talker k % T.
    sends: list[Callable[[bytes], int]] = []
    talker_sends = []
    for t in talkers:
        sock = sock_of(t)
        assert sock is not None
        talker_sends.append(sock.send)
    for _ in range(frames):
        sends.extend(talker_sends)

    # Expected copies: validated members of the channel, minus the talker.
    validated: dict[int, int] = {}
    for c in clients:
        if c.bound if real else c.ref_udp is not None:
            validated[c.channel] = validated.get(c.channel, 0) + 1
    expected_per_dg = [validated[t.channel] - 1 for t in talkers]
    expected = (frames - warm_frames) * sum(expected_per_dg)

    socks = {c: sock for c in clients if (c.bound or not real) and (sock := sock_of(c))}
    ep = select.epoll()
    recv_of: dict[int, Callable[[int], bytes]] = {}
    data_lists: dict[int, list[bytes]] = {}
    time_lists: dict[int, list[float]] = {}
    client_of_fd: dict[int, Client] = {}
    for c, sock in socks.items():
        fd = sock.fileno()
        ep.register(fd, select.EPOLLIN)
        recv_of[fd] = sock.recv
        data_lists[fd] = []
        time_lists[fd] = []
        client_of_fd[fd] = c
    ports = {sock.getsockname()[1] for sock in socks.values()}
    stale = 0  # copies that arrived after an earlier run had stopped listening
    hop_control = 0  # hop-control datagrams (PONGs) that came in during the step: to the core
    for c, sock in socks.items():
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            while data := sock.recv(2048):
                if real and len(data) == HOP_CONTROL_LEN:
                    hop_control += 1
                    c.hop_datagram(data)
                else:
                    stale += 1
    drops_before = udp_drops({*ports, server.port})
    stats_before = server.stats_after(time.time() - 10) if isinstance(server, Server) else {}

    send_times = [0.0] * n
    perf = time.perf_counter
    poll = ep.poll
    interval = 1.0 / rate
    k = 0
    send_errors = 0
    # The clients' cores keep running during the step: every CONTROL_SLICE s a slice of the
    # clients has its due timers served (Pings go out, as real clients send them; the PONGs
    # that come back are handed to the core as they arrive).
    slices = max(1, round(CONTROL_TICK / CONTROL_SLICE))
    next_slice, slice_no = 0.0, 0
    measure_from = warm_frames * t_count  # the first datagram that counts
    t0 = perf() + 0.01
    t_measure = t_stop = t_first = last_rx = 0.0
    cpu0 = own0 = cpu1 = own1 = 0
    core0 = core1 = ([0] * 8, [0] * 8)
    gc.disable()
    try:
        while True:
            now = perf()
            if k < n:
                due = min(n, int((now - t0) * rate) + 1)
                if k < measure_from < due:
                    due = measure_from  # stop at the boundary to take the readings
                while k < due:
                    try:
                        sends[k](datagrams[k])
                    except OSError:
                        send_errors += 1
                    send_times[k] = perf()
                    k += 1
                if not t_first:
                    t_first = send_times[0]
                if k == measure_from and not t_measure:
                    tree0 = server.tree_ticks()
                    cpu0, own0 = sum(tree0.values()), own_cpu_ticks()
                    core0 = core_times(server.cpu), core_times(gen_cpu)
                    t_measure = perf()
                if k >= n:
                    t_stop = perf()
                    tree1 = server.tree_ticks()
                    cpu1, own1 = sum(tree1.values()), own_cpu_ticks()
                    core1 = core_times(server.cpu), core_times(gen_cpu)
                    wait = 0.0
                else:
                    wait = t0 + k * interval - perf()
                    wait = 0.0 if wait < 0 else (0.001 if wait > 0.001 else wait)
                if now >= next_slice:
                    for c in clients[slice_no % slices :: slices]:
                        c.service()
                    slice_no += 1
                    next_slice = now + CONTROL_SLICE
            else:
                # Listen on until nothing came for DRAIN_S (a backlog in the relay drains),
                # at most MAX_DRAIN_S: what arrives later counts as lost.
                if now - t_stop > MAX_DRAIN_S or (
                    now - t_stop > DRAIN_S and now - last_rx > DRAIN_S
                ):
                    break
                wait = 0.01
            # Level-triggered: one datagram per ready socket and poll, so no read ever fails
            # with EAGAIN (an exception costs more than the read); what is left is reported
            # again by the next poll.
            for fd, _ in poll(wait):
                try:
                    data = recv_of[fd](2048)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                if len(data) == HOP_CONTROL_LEN and real:
                    hop_control += 1
                    client_of_fd[fd].hop_datagram(data)
                    continue
                last_rx = t_rx = perf()
                data_lists[fd].append(data)
                time_lists[fd].append(t_rx)
    finally:
        gc.enable()
        ep.close()
    window = t_stop - t_measure
    drops_after = udp_drops({*ports, server.port})
    stats_after = server.stats_after(time.time()) if isinstance(server, Server) else {}
    rss = server.rss_mb()

    # Time through the relay, loss, and a spot check of the relay's s2c hop MACs.
    latencies: list[float] = []
    received = received_all = 0
    unknown = 0
    mac_checked = mac_bad = 0
    for fd, data_list in data_lists.items():
        time_list = time_lists[fd]
        listener = client_of_fd[fd]
        assert listener.s2c is not None
        checked_here = 0
        for data, t_rx in zip(data_list, time_list, strict=True):
            sent = index_of.get(data[8:20])  # (sender_id, gen, ctr): the relay never changes it
            if sent is None:
                unknown += 1
                continue
            received_all += 1
            if sent < measure_from:  # warm-up
                continue
            received += 1
            latencies.append(t_rx - send_times[sent])
            if real and checked_here < 2:
                checked_here += 1
                mac_checked += 1
                mac_bad += not listener.s2c.verify(data)
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    def delta(key: str) -> int:
        if not real:  # the bare loop has no counters: what arrived (all of it, warm-up too)
            return received_all if key == "copies_udp" else 0
        return int(stats_after[key]) - int(stats_before[key])

    relay_drops = {
        name: stats_after["drops"][name] - stats_before["drops"].get(name, 0)
        for name in stats_after.get("drops", {})
        if stats_after["drops"][name] - stats_before["drops"].get(name, 0)
    }
    server_socket_drops = drops_after.get(server.port, 0) - drops_before.get(server.port, 0)
    listener_drops = sum(drops_after.get(p, 0) - drops_before.get(p, 0) for p in ports)
    loss_pct = 100.0 * (1.0 - received / expected) if expected else float("nan")
    p99 = pct(99)
    server_cpu = 100.0 * (cpu1 - cpu0) / CLK_TCK / window
    gen_cpu_pct = 100.0 * (own1 - own0) / CLK_TCK / window
    server_core = core_usage(core0[0], core1[0])
    gen_core = core_usage(core0[1], core1[1])
    foreign = (
        foreign_pct(server_core, gen_core, server_cpu, gen_cpu_pct)
        if server.cpu is not None and gen_cpu is not None
        else None
    )
    # Per process: the control process, and each UDP worker with the copies it forwarded.
    per_process: dict[int, float] = {
        pid: 100.0 * (tree1[pid] - tree0[pid]) / CLK_TCK / window for pid in tree1 if pid in tree0
    }
    control_cpu = per_process.get(server.proc.pid, float("nan"))
    workers_figures: list[dict[str, Any]] = []
    if real and "udp_workers" in stats_after and stats_after["udp_workers"]["count"] > 1:
        before_each = {w["pid"]: w for w in stats_before["udp_workers"]["each"]}
        for w in stats_after["udp_workers"]["each"]:
            copies = w["copies_udp"] - before_each.get(w["pid"], {}).get("copies_udp", 0)
            rate = copies / (t_stop - t_first)  # as forwarded_pps: the stats span the warm-up
            pct_w = per_process.get(w["pid"], float("nan"))
            per_copy = pct_w / 100 / rate * 1e6 if rate > 0 else float("nan")
            workers_figures.append(
                {
                    "cpu_pct": round(pct_w, 1),
                    "copies_per_s": round(rate),
                    "cpu_us_per_copy": round(per_copy, 2),
                }
            )
    figures: dict[str, Any] = {
        "clients": len(clients),
        "channels": len({c.channel for c in clients}),
        "talkers": t_count,
        "seconds": round(window, 2),
        "in_pps": round((n - measure_from) / window),
        "forwarded_pps": round(delta("copies_udp") / (t_stop - t_first)),
        "delivered_pps": round(received / window),
        "expected_copies": expected,
        "received_copies": received,
        "loss_pct": round(loss_pct, 4),
        "p50_ms": round(pct(50), 3),
        "p90_ms": round(pct(90), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
        "server_cpu_pct": round(server_cpu, 1),
        "control_cpu_pct": round(control_cpu, 1),
        "workers": workers_figures,
        "server_rss_mb": round(rss, 1),
        "generator_cpu_pct": round(gen_cpu_pct, 1),
        "server_core": server_core,
        "generator_core": gen_core,
        "foreign_cpu_pct": foreign,
        "relay_in": delta("packets_in"),
        "relay_forwarded": delta("forwarded"),
        "relay_copies": delta("copies_udp"),
        # Copies per sendmmsg: the native path flushes once per wake-up, so this is how many
        # copies a wake-up of the relay's socket carried (a relay that answers sooner wakes for
        # fewer datagrams, and pays each wake-up over fewer copies).
        "copies_per_send_call": (
            round(delta("copies_udp") / delta("udp_send_calls"), 1)
            if delta("udp_send_calls")
            else None
        ),
        "relay_drops": relay_drops,
        "server_send_dropped": delta("udp_send_dropped") + delta("udp_send_errors"),
        "server_socket_drops": server_socket_drops,
        "listener_socket_drops": listener_drops,
        "send_errors": send_errors,
        "unknown_datagrams": unknown,
        "stale_datagrams": stale,
        "hop_control_datagrams": hop_control,
        "s2c_mac_checked": mac_checked,
        "s2c_mac_bad": mac_bad,
    }
    passed = (
        expected > 0
        and loss_pct <= LOSS_LIMIT_PCT
        and p99 <= P99_LIMIT_MS
        and mac_bad == 0
        and send_errors == 0
    )
    figures["passed"] = passed
    return figures


def clear_verdict(f: dict[str, Any]) -> bool:
    """A run that passed or failed by a wide margin, without other processes in the way."""
    if (f["foreign_cpu_pct"] or 0) > NOISY_PCT:
        return False
    p50, p99, loss = float(f["p50_ms"]), float(f["p99_ms"]), float(f["loss_pct"])
    if f["passed"]:
        return p99 <= P99_LIMIT_MS / 2 and loss <= LOSS_LIMIT_PCT / 2
    return p50 > P99_LIMIT_MS or loss > 10 * LOSS_LIMIT_PCT


def describe(f: dict[str, Any]) -> str:
    return (
        f"talkers {f['talkers']:>4}: in {f['in_pps']:>6}/s  forwarded {f['forwarded_pps']:>7}/s  "
        f"loss {f['loss_pct']:.3f} %  p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  "
        f"server cpu {f['server_cpu_pct']:.0f} % (core {f['server_core']['busy']:.0f} %, "
        f"softirq {f['server_core']['softirq']:.0f} %)  generator cpu "
        f"{f['generator_cpu_pct']:.0f} % (core {f['generator_core']['busy']:.0f} %)  "
        f"rss {f['server_rss_mb']:.0f} MB  drops srv/lis {f['server_socket_drops']}/"
        f"{f['listener_socket_drops']}  others {f['foreign_cpu_pct']} %  "
        + (f"copies/send {f['copies_per_send_call']}  " if f["copies_per_send_call"] else "")
        + f"{'PASS' if f['passed'] else 'FAIL'}"
    )


# -- orchestration ------------------------------------------------------------------------------

#: What the final JSON line keeps of each load step (every run's details are printed above it).
STEP_KEYS = (
    "talkers",
    "in_pps",
    "forwarded_pps",
    "loss_pct",
    "p50_ms",
    "p99_ms",
    "server_cpu_pct",
    "control_cpu_pct",
    "generator_cpu_pct",
    "foreign_cpu_pct",
    "copies_per_send_call",
    "runs",
    "passed_runs",
    "passed",
)


def no_nan(value: Any) -> Any:
    """NaN (no datagram arrived) as null: the JSON line stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


def cpu_us_per_copy(f: dict[str, Any]) -> float:
    """Process CPU per forwarded copy (its share of the datagram's checks included), in us."""
    return float(f["server_cpu_pct"]) / 100 / max(1, int(f["forwarded_pps"])) * 1e6


def sanity_totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters over every run that should stay at zero (or tell where a loss happened)."""
    relay_drops: dict[str, int] = {}
    for f in runs:
        for name, count in f["relay_drops"].items():
            relay_drops[name] = relay_drops.get(name, 0) + count
    return {
        "runs": len(runs),
        "relay_drops": relay_drops,
        "server_socket_drops": sum(f["server_socket_drops"] for f in runs),
        "listener_socket_drops": sum(f["listener_socket_drops"] for f in runs),
        "server_send_dropped": sum(f["server_send_dropped"] for f in runs),
        "send_errors": sum(f["send_errors"] for f in runs),
        "unknown_datagrams": sum(f["unknown_datagrams"] for f in runs),
        "stale_datagrams": sum(f["stale_datagrams"] for f in runs),
        "hop_control_datagrams": sum(f["hop_control_datagrams"] for f in runs),
        "s2c_mac_checked": sum(f["s2c_mac_checked"] for f in runs),
        "s2c_mac_bad": sum(f["s2c_mac_bad"] for f in runs),
    }


#: Seconds over which the relay's CPU is measured with every session up and nobody talking.
IDLE_S = 6.0


async def idle_cpu_pct(server: Server, seconds: float) -> float:
    """The server's CPU % (of one core) over ``seconds`` with its sessions up and no voice:
    keepalives, UDP pings, timers, the stats line."""
    s0, t0 = server.cpu_ticks(), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100.0 * (server.cpu_ticks() - s0) / CLK_TCK / (time.perf_counter() - t0)


async def wait_quiet(server: Server, gen_cpu: int | None) -> float | None:
    """Wait (at most QUIET_WAIT_S) until the server is idle again (a failed step may have left a
    queue) and other processes leave our two cores alone. Returns the foreign CPU % last seen."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        s0, o0 = server.cpu_ticks(), own_cpu_ticks()
        c0 = core_times(server.cpu), core_times(gen_cpu)
        t0 = time.perf_counter()
        await asyncio.sleep(QUIET_SAMPLE_S)
        dt = time.perf_counter() - t0
        s1, o1 = server.cpu_ticks(), own_cpu_ticks()
        c1 = core_times(server.cpu), core_times(gen_cpu)
        server_pct = 100.0 * (s1 - s0) / CLK_TCK / dt
        if server.cpu is None or gen_cpu is None:
            foreign = None
            quiet = server_pct < QUIET_PCT
        else:
            own_pct = 100.0 * (o1 - o0) / CLK_TCK / dt
            foreign = foreign_pct(
                core_usage(c0[0], c1[0]), core_usage(c0[1], c1[1]), server_pct, own_pct
            )
            quiet = server_pct < QUIET_PCT and foreign < QUIET_PCT
        if quiet or time.monotonic() > deadline:
            return foreign


def pick_cpus() -> tuple[int | None, int | None]:
    """(server core, generator core), or (None, None) when fewer than two are available."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def bench(
    args: argparse.Namespace, server: Server, bare: BareRelay | None, gen_cpu: int | None
) -> dict[str, Any]:
    if gen_cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {gen_cpu})
    chans = channel_ids(args.channels)
    t = time.perf_counter()
    clients = await login_all(server, chans, args.clients, timeout=120.0)
    login_s = time.perf_counter() - t
    say(f"logged in {len(clients)} clients over TLS in {login_s:.1f} s")
    try:
        t = time.perf_counter()
        await join_all(clients, timeout=120.0)
        join_s = time.perf_counter() - t
        say(f"joined {args.channels} channels in {join_s:.1f} s")
        t = time.perf_counter()
        await bound_all(clients, timeout=60.0)
        bind_s = time.perf_counter() - t
        bound = sum(c.bound for c in clients)
        say(f"validated {bound}/{len(clients)} UDP addresses in {bind_s:.1f} s more")
        for c in clients:  # the roster is still from now on
            c.coalesce_s = COALESCE_S
        if bare is not None:
            register_bare(clients, bare)
        await asyncio.sleep(0.2)
        idle_pct = await idle_cpu_pct(server, IDLE_S)
        say(f"the relay with {len(clients)} sessions and no talker: {idle_pct:.1f} % of a core")
        steps: list[dict[str, Any]] = []  # the chosen run of each load
        runs: list[dict[str, Any]] = []  # every run
        best: dict[str, Any] | None = None

        reference: dict[str, Any] = {}

        async def run_once(talkers: int, target: Proc = server) -> dict[str, Any]:
            sealed = await seal_step(pick_talkers(clients, chans, talkers), args.seconds)
            before = await wait_quiet(server, gen_cpu)
            figures = run_step(target, clients, sealed, gen_cpu)
            figures["foreign_cpu_pct_before"] = before
            if target is server:
                runs.append(figures)
            say(("bare loop " if target is not server else "") + describe(figures))
            return figures

        async def compare(relay_run: dict[str, Any], prefix: str = "") -> None:
            """The bare loop at the same load, alternating with the relay (relay, bare, three
            times: the host's speed drifts, and one run of either can cost a sixth more CPU
            than the next at the same load): CPU per forwarded copy, mean of three runs each,
            and the spread of the three pairs' ratios. The figures' keys start with ``prefix``
            (the sweep's heavy reference: "heavy_")."""
            if bare is None:
                return
            talkers = relay_run["talkers"]
            relay_us = [cpu_us_per_copy(relay_run)]
            bare_runs = [await run_once(talkers, bare)]
            for _ in range(COMPARE_PAIRS - 1):
                relay_us.append(cpu_us_per_copy(await run_once(talkers)))
                bare_runs.append(await run_once(talkers, bare))
            bare_us = [cpu_us_per_copy(f) for f in bare_runs]
            pairs = [r / max(0.01, b) for r, b in zip(relay_us, bare_us, strict=True)]
            # (a floor of 0.01 us: a tiny load may take less than one clock tick of CPU)
            r_us = max(0.01, statistics.fmean(relay_us))
            b_us = max(0.01, statistics.fmean(bare_us))
            # What the sessions cost with nobody talking (keepalives, UDP pings, timers), per
            # copy at this load: work the bare loop, which has no sessions, never does.
            idle_us = idle_pct / 100 / max(1, int(relay_run["forwarded_pps"])) * 1e6
            figures = {
                "ref_talkers": talkers,
                "relay_cpu_us_per_copy": round(r_us, 2),
                "ref_bare_cpu_us_per_copy": round(b_us, 2),
                "ratio_relay_to_bare": round(r_us / b_us, 2),
                "ratio_pairs_min": round(min(pairs), 2),
                "ratio_pairs_max": round(max(pairs), 2),
                "relay_idle_cpu_pct": round(idle_pct, 1),
                "relay_idle_us_per_copy": round(idle_us, 2),
                "ratio_relay_forwarding_to_bare": round(max(0.0, r_us - idle_us) / b_us, 2),
                "relay_copies_per_cpu_s": round(1e6 / r_us),
                "ref_bare_copies_per_cpu_s": round(1e6 / b_us),
                "ref_bare_p99_ms": max(f["p99_ms"] for f in bare_runs),
                "ref_bare_loss_pct": max(f["loss_pct"] for f in bare_runs),
            }
            reference.update({prefix + k: v for k, v in figures.items()})
            say(
                f"  CPU per forwarded copy at {talkers} talkers: relay {r_us:.2f} us, bare loop "
                f"{b_us:.2f} us (x{r_us / b_us:.2f}, pairs x{min(pairs):.2f}-{max(pairs):.2f}; "
                f"the relay's idle sessions {idle_us:.2f} us "
                f"of it, x{max(0.0, r_us - idle_us) / b_us:.2f} without); one core at 100 % "
                f"would forward about {1e6 / r_us:,.0f} copies/s (bare loop {1e6 / b_us:,.0f})"
            )

        async def load_step(talkers: int) -> dict[str, Any]:
            """One load, run until the verdict is clear: once when it passes or fails by a wide
            margin, else the majority of up to three runs (this machine is shared and noisy).
            Returns the median run (by p99) among those that agree with the verdict."""
            done = [await run_once(talkers)]
            if not clear_verdict(done[0]):
                while len(done) < 3:
                    passes = sum(f["passed"] for f in done)
                    if passes >= 2 or len(done) - passes >= 2:
                        break
                    say("  close to the limits: running the same load again")
                    done.append(await run_once(talkers))
            passes = sum(f["passed"] for f in done)
            verdict = passes * 2 > len(done)
            agree = sorted((f for f in done if f["passed"] == verdict), key=lambda f: f["p99_ms"])
            chosen = dict(agree[len(agree) // 2])
            chosen["runs"] = len(done)
            chosen["passed_runs"] = passes
            steps.append(chosen)
            return chosen

        if args.talkers is not None:
            chosen = await load_step(args.talkers)
            best = chosen if chosen["passed"] else None
            await compare(runs[-1])
        else:
            last_pass = 0
            for talkers in [x for x in SWEEP_TALKERS if x <= bound]:
                chosen = await load_step(talkers)
                if talkers == REF_TALKERS:
                    await compare(runs[-1])
                if talkers == HEAVY_REF_TALKERS and chosen["passed"]:
                    await compare(runs[-1], "heavy_")
                if chosen["passed"]:
                    last_pass = talkers
                    best = chosen
                    continue
                middle = (last_pass + talkers) // 2
                if last_pass and talkers - last_pass >= 50:
                    chosen = await load_step(middle)
                    if chosen["passed"]:
                        best = chosen
                break
            if not reference and steps:  # the sweep ended below REF_TALKERS
                await compare(best or steps[0])
        lost = sum(c.lost or c.closed is not None for c in clients)
        return {
            "login_s": round(login_s, 1),
            "join_s": round(join_s, 1),
            "bind_s": round(bind_s, 1),
            "validated": bound,
            "sessions_lost": lost,
            "tunnelled": sum(c.tunnelled for c in clients),
            "best": best,
            "steps": steps,
            "runs": runs,
            "reference": reference,
        }
    finally:
        for c in clients:
            c.shutdown()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=SWEEP_LAYOUT[0])
    p.add_argument("--channels", type=int, default=SWEEP_LAYOUT[1])
    p.add_argument("--talkers", type=int, help="one run with this many talkers (default: sweep)")
    p.add_argument("--seconds", type=float, default=SWEEP_SECONDS, help="sending time per step")
    p.add_argument("--sweep", action="store_true", help="increasing talker counts (the default)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the server's UDP workers (default 1: forwarding in the server process, as Murmur "
        "forwards in one thread; the server's own default is the number of cores)",
    )
    p.add_argument(
        "--unpinned",
        action="store_true",
        help="pin neither the server nor the generator (for --workers above 1 on few cores)",
    )
    p.add_argument(
        "--udp-send",
        choices=("sendmmsg", "sendto"),
        help="the server's way of sending copies (default: its own, sendmmsg on Linux)",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the same-run reference (a bare UDP fan-out loop at the same load)",
    )
    args = p.parse_args(argv)
    if args.sweep:
        args.talkers = None
    if not 1 <= args.channels <= args.clients:
        p.error("need 1 <= channels <= clients")
    if args.talkers is not None and not 1 <= args.talkers <= args.clients:
        p.error("need 1 <= talkers <= clients")

    # SIGTERM takes the same path as Ctrl-C: the finally blocks kill the server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise_fd_limit(4 * args.clients + 256)
    server_cpu, gen_cpu = (None, None) if args.unpinned else pick_cpus()
    # bench() pins this process to the generator's core: put it back afterwards, or a second
    # main() in the same process (relay_scaling.py) would find one core, pin nothing and start
    # its server on the generator's core.
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return _main(args, server_cpu, gen_cpu)
    finally:
        if affinity is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, affinity)


def _main(args: argparse.Namespace, server_cpu: int | None, gen_cpu: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="relay-load-") as tmp:
        extra = ("--workers", str(args.workers))
        extra += ("--udp-send", args.udp_send) if args.udp_send else ()
        server = Server.start(Path(tmp), args.channels, args.clients, server_cpu, extra)
        bare: BareRelay | None = None
        try:
            if not args.no_reference:
                bare = BareRelay.start(Path(tmp), server_cpu)
            say(
                f"server pid {server.proc.pid} on {server.host}:{server.port} "
                f"(core {server_cpu}, event loop {server.event_loop()}); generator on core "
                f"{gen_cpu}; {args.clients} clients in {args.channels} channels, "
                f"{PACKETS_PER_S} packets/s per talker, {PAYLOAD_LEN}-byte payloads"
            )
            run = asyncio.run(bench(args, server, bare, gen_cpu))
            loop_name = server.event_loop()
            traceback = "Traceback" in server.stderr_path.read_text(errors="replace")
        finally:
            if bare is not None:
                bare.stop()
            server.stop()
    best = run["best"]
    headline_keys = (
        "clients",
        "channels",
        "talkers",
        "in_pps",
        "forwarded_pps",
        "loss_pct",
        "p50_ms",
        "p99_ms",
        "server_cpu_pct",
        "server_rss_mb",
    )
    result: dict[str, Any] = {"benchmark": "relay_load"}
    for key in headline_keys:
        result[key] = best[key] if best is not None else None
    result.update(
        {
            "criteria": f"loss <= {LOSS_LIMIT_PCT} % and p99 <= {P99_LIMIT_MS} ms",
            "passed": best is not None,
            "payload_bytes": PAYLOAD_LEN,
            "packets_per_s_per_talker": PACKETS_PER_S,
            "server_event_loop": loop_name,
            "server_workers": args.workers,
            "server_pinned_core": server_cpu,
            "generator_pinned_core": gen_cpu,
            "per_ip_cap_raised": True,
            "login_s": run["login_s"],
            "join_s": run["join_s"],
            "bind_s": run["bind_s"],
            "validated": run["validated"],
            "sessions_lost": run["sessions_lost"],
            "tunnelled": run["tunnelled"],
            "server_traceback": traceback,
            "steps": [{k: f[k] for k in STEP_KEYS} for f in run["steps"]],
            "steps_workers": run["steps"][-1]["workers"] if run["steps"] else [],
            **run["reference"],
            **sanity_totals(run["runs"]),
        }
    )
    if best is not None:
        say(
            f"best passing load: {best['talkers']} talkers of {best['clients']} clients in "
            f"{best['channels']} channels: {best['forwarded_pps']} forwarded packets/s "
            f"({best['in_pps']}/s in), loss {best['loss_pct']} %, p99 {best['p99_ms']} ms, "
            f"server cpu {best['server_cpu_pct']} %"
        )
    else:
        say("no step held the criteria")
    print(json.dumps(no_nan(result), separators=(",", ":")), flush=True)
    return result


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        sys.exit(130)
