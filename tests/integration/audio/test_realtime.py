"""Real-time scheduling for the audio threads (:mod:`voipclient.audio.realtime`): directly where
the process may (root here, as in CI), and through a FAKE rtkit on a private bus for a process
that may not (a child started without ``CAP_SYS_NICE``, as a desktop user's app is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voipclient.audio.realtime import (
    NICE,
    PRIORITY,
    RTTIME_LIMIT_US,
    demote_current_thread,
    prioritise_current_thread,
    promote_current_thread,
    promote_thread,
    realtime,
)

from ..ptt.fake_portal import PrivateBus, private_bus
from .fake_rtkit import FakeRtkit

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(sys.platform != "linux", reason="Linux")]

ROOT = Path(__file__).parents[3]
#: What the child runs: promote its main thread, report how it runs afterwards.
CHILD = """
import json, os, resource, sys, time, threading
from voipclient.audio.realtime import prioritise_current_thread, promote_current_thread
t0 = time.monotonic()
if sys.argv[1] == "prioritise":
    p = prioritise_current_thread()
else:
    p = promote_current_thread(rtkit_realtime=sys.argv[1] == "realtime")
took = time.monotonic() - t0
t1 = time.monotonic()
again = promote_current_thread()  # a second thread asking (the same one here)
took_again = time.monotonic() - t1
print(json.dumps({
    "how": p.how, "text": str(p), "tid": threading.get_native_id(),
    "policy": os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK,
    "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
    "rttime_hard": resource.getrlimit(resource.RLIMIT_RTTIME)[1],
    "took": took, "again": again.how, "took_again": took_again,
}))
"""


def may_raise_directly() -> bool:
    return os.geteuid() == 0 or os.sched_get_priority_min(os.SCHED_RR) <= _rtprio_limit()


def _rtprio_limit() -> int:
    import resource

    return int(resource.getrlimit(resource.RLIMIT_RTPRIO)[1])


def without_sys_nice(mode: str, bus: str) -> dict[str, Any]:
    """Run CHILD as a process that may not raise itself (root without CAP_SYS_NICE in its
    bounding set: exactly the EPERM an ordinary user gets), rtkit looked for on ``bus``."""
    env = {**os.environ, "VOIPCLIENT_RTKIT_BUS": bus, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", CHILD, mode]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", *argv]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    with private_bus() as b:
        yield b


@pytest.mark.skipif(not may_raise_directly(), reason="needs root, CAP_SYS_NICE or RLIMIT_RTPRIO")
def test_a_thread_is_raised_directly_and_lowered_again() -> None:
    seen: dict[str, Any] = {}

    def worker() -> None:
        promotion = promote_current_thread()
        seen["how"], seen["text"] = promotion.how, str(promotion)
        seen["policy"] = os.sched_getscheduler(0)
        seen["priority"] = os.sched_getparam(0).sched_priority
        demote_current_thread()
        seen["after"] = os.sched_getscheduler(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert seen["how"] == "SCHED_RR"
    assert seen["text"] == f"real-time (SCHED_RR priority {PRIORITY})"
    assert seen["policy"] == os.SCHED_RR and seen["priority"] == PRIORITY
    assert seen["after"] == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # only that thread was touched


@pytest.mark.skipif(not may_raise_directly(), reason="needs root, CAP_SYS_NICE or RLIMIT_RTPRIO")
def test_nested_blocks_on_one_thread_lower_it_only_at_the_outermost_end() -> None:
    """Two bots on one event loop: the one that finishes first must not lower the other."""
    with realtime() as first:
        with realtime() as second:
            assert os.sched_getscheduler(0) == os.SCHED_RR
        assert os.sched_getscheduler(0) == os.SCHED_RR  # the inner end changed nothing
        assert first is second
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_without_the_right_the_app_asks_rtkit_for_a_high_nice_level(bus: PrivateBus) -> None:
    with FakeRtkit(bus.address) as rtkit:
        got = without_sys_nice("worker", bus.address)
    assert got["how"] == "rtkit-nice", got
    assert got["text"] == f"high priority (nice {NICE} through rtkit)"
    assert got["nice"] == NICE  # the fake applied it, as rtkit does
    (call, *_) = rtkit.calls
    assert (call.method, call.tid, call.value) == ("MakeThreadHighPriority", got["tid"], NICE)
    assert got["rttime_hard"] == -1  # RLIM_INFINITY: the app takes no CPU-time cap


def test_the_audio_host_asks_rtkit_for_real_time_with_its_cpu_time_capped(bus: PrivateBus) -> None:
    with FakeRtkit(bus.address) as rtkit:
        got = without_sys_nice("realtime", bus.address)
    assert got["how"] == "rtkit", got
    assert got["policy"] == os.SCHED_RR
    assert got["rttime_hard"] == RTTIME_LIMIT_US  # what rtkit demands before it agrees
    (call, *_) = rtkit.calls
    assert call.method == "MakeThreadRealtime" and call.tid == got["tid"]
    assert call.value == PRIORITY and call.rttime_hard == RTTIME_LIMIT_US


def test_a_refusal_is_reported_and_nothing_changes(bus: PrivateBus) -> None:
    with FakeRtkit(bus.address, refuse=True) as rtkit:
        got = without_sys_nice("realtime", bus.address)
    assert got["how"] == "none"
    assert "no CAP_SYS_NICE or RLIMIT_RTPRIO" in got["text"] and "AccessDenied" in got["text"]
    assert got["policy"] == os.SCHED_OTHER and got["nice"] == 0
    assert [c.method for c in rtkit.calls][:2] == ["MakeThreadRealtime", "MakeThreadHighPriority"]


def test_without_rtkit_the_reason_is_given_and_not_waited_for_twice(bus: PrivateBus) -> None:
    got = without_sys_nice("worker", bus.address)  # the bus has no rtkit on it
    assert got["how"] == "none"
    assert "ServiceUnknown" in got["text"] or "not provided" in got["text"], got["text"]
    assert got["took"] < 1.0
    assert got["again"] == "none" and got["took_again"] < 0.01  # remembered: no second wait


def test_a_thread_that_ended_meanwhile_is_reported_not_raised() -> None:
    """The audio host raises PortAudio's callback threads some time after their first callback;
    a stream closed in between takes its thread with it (this crashed the host once)."""
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join(5)
    assert t.native_id is not None
    task = Path(f"/proc/self/task/{t.native_id}")
    deadline = time.monotonic() + 5
    while task.exists() and time.monotonic() < deadline:  # join() returns before the OS thread
        time.sleep(0.01)  # has quite gone
    assert not task.exists()
    promotion = promote_thread(t.native_id)
    assert promotion.how == "none" and promotion.detail == "the thread has ended"


def test_the_connection_thread_gets_a_nice_level_through_rtkit(bus: PrivateBus) -> None:
    """The connection's thread is raised by nice level only (it also does TLS and key work):
    without the right to do it directly, through rtkit's MakeThreadHighPriority."""
    with FakeRtkit(bus.address) as rtkit:
        got = without_sys_nice("prioritise", bus.address)
    assert got["how"] == "rtkit-nice", got
    assert got["nice"] == NICE and got["policy"] == os.SCHED_OTHER
    (call, *_) = rtkit.calls
    assert (call.method, call.tid, call.value) == ("MakeThreadHighPriority", got["tid"], NICE)


@pytest.mark.skipif(not may_raise_directly(), reason="needs root, CAP_SYS_NICE or RLIMIT_RTPRIO")
def test_the_connection_thread_gets_its_nice_level_directly_where_allowed() -> None:
    seen: dict[str, Any] = {}

    def worker() -> None:
        seen["promotion"] = prioritise_current_thread()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert str(seen["promotion"]) == f"high priority (nice {NICE})"
    assert seen["nice"] == NICE and seen["policy"] == os.SCHED_OTHER
