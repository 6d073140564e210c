"""A FAKE ``org.freedesktop.RealtimeKit1`` (rtkit) on a private bus.

This is a test double, not rtkit-daemon: it answers the two properties and the two methods
:mod:`voipclient.audio.realtime` uses (``MaxRealtimePriority``, ``RTTimeUSecMax``,
``MakeThreadRealtime``, ``MakeThreadHighPriority``), records every call with the caller's
process id (asked from the bus, as rtkit does), and, like rtkit, checks that a process asking for
real-time has capped its ``RLIMIT_RTTIME`` (read from ``/proc/PID/limits``) before it changes the
thread's scheduling itself (the tests run as root, so it can; otherwise it records and answers
only). ``refuse=True`` answers every method with ``AccessDenied``.

It runs on a PRIVATE bus (:func:`tests.integration.ptt.fake_portal.private_bus`): never the
system bus. Its literals are written out here rather than imported from the code under test.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jeepney import (
    DBusAddress,
    HeaderFields,
    MessageType,
    new_error,
    new_method_call,
    new_method_return,
)
from jeepney.io.blocking import open_dbus_connection as open_blocking
from jeepney.io.threading import DBusConnection, ReceiveStopped

from ..ptt.fake_portal import leave_bus, own_name

NAME = "org.freedesktop.RealtimeKit1"
PATH = "/org/freedesktop/RealtimeKit1"
PROPS = "org.freedesktop.DBus.Properties"
MAX_PRIORITY = 20
RTTIME_MAX_US = 200_000


@dataclass
class RtkitCall:
    method: str
    pid: int
    tid: int
    value: int  # the priority or the nice level asked for
    rttime_hard: int | None  # the caller's RLIMIT_RTTIME hard limit at the call (None: unlimited)


@dataclass
class FakeRtkit:
    address: str
    refuse: bool = False
    calls: list[RtkitCall] = field(default_factory=list)
    _conn: DBusConnection | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> FakeRtkit:
        self._conn = own_name(self.address, NAME)
        self._thread = threading.Thread(target=self._serve, name="fake-rtkit", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            leave_bus(conn, self._thread)

    def _serve(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                msg = conn.receive()
            except (ReceiveStopped, OSError):
                return
            if msg.header.message_type != MessageType.method_call:
                continue
            try:
                self._handle(conn, msg)
            except Exception as exc:  # a broken fake must show up as a failing call
                conn.send(new_error(msg, "org.freedesktop.DBus.Error.Failed", "s", (repr(exc),)))

    def _handle(self, conn: DBusConnection, msg: Any) -> None:
        fields = msg.header.fields
        iface = fields.get(HeaderFields.interface, "")
        member = fields.get(HeaderFields.member, "")
        if iface == PROPS and member == "Get" and msg.body[0] == NAME:
            values = {
                "MaxRealtimePriority": ("i", MAX_PRIORITY),
                "RTTimeUSecMax": ("x", RTTIME_MAX_US),
            }
            if msg.body[1] in values:
                conn.send(new_method_return(msg, "v", (values[msg.body[1]],)))
                return
        if iface == NAME and member in ("MakeThreadRealtime", "MakeThreadHighPriority"):
            tid, value = msg.body
            pid = self._caller_pid(fields.get(HeaderFields.sender, ""))
            hard = _rttime_hard(pid)
            self.calls.append(RtkitCall(member, pid, tid, value, hard))
            if self.refuse:
                conn.send(new_error(msg, "org.freedesktop.DBus.Error.AccessDenied", "s", ("no",)))
                return
            if member == "MakeThreadRealtime":
                if hard is None or hard > RTTIME_MAX_US:  # rtkit's own rule
                    conn.send(
                        new_error(
                            msg, "org.freedesktop.DBus.Error.AccessDenied", "s", ("RLIMIT_RTTIME",)
                        )
                    )
                    return
                policy = os.SCHED_RR | os.SCHED_RESET_ON_FORK  # as rtkit sets it
                os.sched_setscheduler(tid, policy, os.sched_param(value))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, value)
            conn.send(new_method_return(msg))
            return
        conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (member,)))

    def _caller_pid(self, sender: str) -> int:
        """Ask the bus for the sender's process id (what rtkit checks the thread against), on
        a connection of its own (the serving one is busy answering)."""
        bus = DBusAddress(
            "/org/freedesktop/DBus",
            bus_name="org.freedesktop.DBus",
            interface="org.freedesktop.DBus",
        )
        with open_blocking(bus=self.address) as conn:
            reply = conn.send_and_get_reply(
                new_method_call(bus, "GetConnectionUnixProcessID", "s", (sender,)), timeout=5
            )
        return int(reply.body[0])

    def wait_for_calls(self, count: int, timeout: float = 5.0) -> list[RtkitCall]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.calls)


def _rttime_hard(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max realtime timeout"):
                hard = line.split()[4]
                return None if hard == "unlimited" else int(hard)
    return None
