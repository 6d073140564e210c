"""Real-time scheduling for the threads that move audio, so a game on every core does not starve
them.

A game (or a compiler, or a browser tab) that keeps every core busy delays an ordinary thread by
tens of milliseconds at a time: a capture frame leaves late and the other side conceals it, a
playback frame is written late and the device plays silence. Sound servers solve this by running
their audio threads under a real-time policy (PulseAudio and PipeWire: ``SCHED_RR`` through
rtkit); we do the same for ours: the capture and playback workers, PortAudio's callback threads
in the audio host (raised after their first callback; the host's main thread, which opens the
streams, stays normal: PortAudio's ALSA backend polls while a stream starts, and at real-time
priority that starved the sound server) and the bot's event loop while it moves audio.

:func:`promote_current_thread` tries, in order:

1. ``sched_setscheduler(SCHED_RR)`` directly: allowed to root, to a process with
   ``CAP_SYS_NICE``, or within ``RLIMIT_RTPRIO`` (``/etc/security/limits.d``: PipeWire's
   packages grant their group 95). The kernel's real-time throttling (5 % of every second left
   to ordinary threads) is the safety net, as for JACK or PipeWire with the same grant.
2. **rtkit** (``org.freedesktop.RealtimeKit1`` on the system bus, present wherever PipeWire or
   PulseAudio is). With ``rtkit_realtime`` (the audio host only): ``MakeThreadRealtime`` at most
   at rtkit's ``MaxRealtimePriority``, which rtkit grants only to a process whose
   ``RLIMIT_RTTIME`` is capped (:data:`RTTIME_LIMIT_US`: a real-time thread using 200 ms of CPU
   without blocking is killed). That is fine for the audio host, which the app restarts, and not
   for the app itself (a long garbage collection on a worker must not end it), so there and in
   the bot rtkit is asked for ``MakeThreadHighPriority`` (nice :data:`NICE`) instead, which needs
   no such limit.
3. nothing: the thread keeps the normal policy, and the reason is kept (Help → Copy
   diagnostics).

:func:`demote_current_thread` goes back to the normal policy and nice 0 (always allowed).
Linux only; elsewhere :func:`promote_current_thread` says so and changes nothing (Windows' MMCSS
and macOS's time-constraint policy are not asked for yet).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("voipclient.audio.realtime")

__all__ = [
    "NICE",
    "PRIORITY",
    "RTTIME_LIMIT_US",
    "Promotion",
    "demote_current_thread",
    "prioritise_current_thread",
    "promote_current_thread",
    "promote_thread",
    "realtime",
]

#: SCHED_RR priority: above every ordinary thread (a game's included), *below* the sound server's
#: (PulseAudio's default is 5, PipeWire's data loop 20 or more): a client must never be able to
#: starve the server it waits on (measured: at 10, two audio hosts opening their streams at once
#: starved PulseAudio for 10 s).
PRIORITY: Final = 4
NICE: Final = -11  # through rtkit's MakeThreadHighPriority (its default minimum is -15)
RTTIME_LIMIT_US: Final = 200_000  # CPU without blocking before SIGKILL (rtkit's default maximum)
RTKIT_BUS_ENV: Final = "VOIPCLIENT_RTKIT_BUS"  # a D-Bus address to find rtkit on (tests)
_RTKIT_NAME: Final = "org.freedesktop.RealtimeKit1"
_RTKIT_PATH: Final = "/org/freedesktop/RealtimeKit1"
_TIMEOUT_S: Final = 0.5  # the audio host's heartbeat must not wait longer (the app's limit: 2 s)


class RtkitError(Exception):
    """rtkit (or the bus) answered a call with a D-Bus error."""


_rtkit_missing: dict[str, str] = {}  # bus -> why rtkit cannot be reached there


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote_current_thread` got: ``how`` is ``"SCHED_RR"`` (directly),
    ``"rtkit"`` (SCHED_RR through rtkit), ``"nice"`` / ``"rtkit-nice"`` (a high nice level,
    directly or through rtkit) or ``"none"``; ``detail`` says the priority or why not."""

    how: str
    detail: str

    @property
    def raised(self) -> bool:
        return self.how != "none"

    def __str__(self) -> str:
        if self.how in ("SCHED_RR", "rtkit"):
            return f"real-time ({self.detail})"
        if self.how in ("rtkit-nice", "nice"):
            return f"high priority ({self.detail})"
        return f"normal priority ({self.detail})"


def promote_current_thread(
    priority: int = PRIORITY, *, rtkit_realtime: bool = False, rtkit_bus: str | None = None
) -> Promotion:
    """Raise the calling thread (:func:`promote_thread`)."""
    return promote_thread(None, priority, rtkit_realtime=rtkit_realtime, rtkit_bus=rtkit_bus)


def promote_thread(
    tid: int | None,
    priority: int = PRIORITY,
    *,
    rtkit_realtime: bool = False,
    rtkit_bus: str | None = None,
) -> Promotion:
    """Raise thread ``tid`` of this process (``None``: the calling one): ``SCHED_RR`` at
    ``priority`` directly, else through rtkit on ``rtkit_bus`` (a D-Bus address; by default
    ``$VOIPCLIENT_RTKIT_BUS`` or the system bus): real-time with ``rtkit_realtime``, otherwise
    (or if that is refused) nice :data:`NICE`."""
    if sys.platform != "linux":
        return Promotion("none", f"asked for on Linux only, not on {sys.platform}")
    target = 0 if tid is None else tid
    try:
        if _policy(target) in (os.SCHED_RR, os.SCHED_FIFO):
            now = os.sched_getparam(target).sched_priority
            return Promotion("SCHED_RR", f"SCHED_RR priority {now}, inherited")
        os.sched_setscheduler(target, os.SCHED_RR, os.sched_param(priority))
    except ProcessLookupError:  # the thread ended meanwhile (a stream closed)
        return Promotion("none", "the thread has ended")
    except PermissionError:
        direct = "no CAP_SYS_NICE or RLIMIT_RTPRIO for SCHED_RR"
    except OSError as exc:
        direct = f"SCHED_RR refused: {exc.strerror}"
    else:
        return Promotion("SCHED_RR", f"SCHED_RR priority {priority}")
    bus = rtkit_bus or os.environ.get(RTKIT_BUS_ENV) or "SYSTEM"
    native = threading.get_native_id() if tid is None else tid
    if rtkit_realtime and bus not in _rtkit_missing:
        try:
            granted = _rtkit_realtime(bus, native, priority)
        except Exception as exc:  # refused, or no rtkit: try the nice level
            direct += f"; rtkit real-time: {_short(exc)}"
        else:
            return Promotion("rtkit", f"SCHED_RR priority {granted} through rtkit")
    return _rtkit_nice(bus, native, direct)


def prioritise_current_thread(*, rtkit_bus: str | None = None) -> Promotion:
    """A high nice level (:data:`NICE`) for the calling thread, not a real-time policy: for
    threads on the voice path that also do unbounded work (the connection's: TLS, key
    exchange), which must win against a game's threads without ever being able to lock a core.
    Directly where allowed (``CAP_SYS_NICE``, ``RLIMIT_NICE``), else through rtkit."""
    if sys.platform != "linux":
        return Promotion("none", f"asked for on Linux only, not on {sys.platform}")
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, NICE)
    except PermissionError:
        direct = "no CAP_SYS_NICE or RLIMIT_NICE for a negative nice level"
    else:
        return Promotion("nice", f"nice {NICE}")
    bus = rtkit_bus or os.environ.get(RTKIT_BUS_ENV) or "SYSTEM"
    return _rtkit_nice(bus, tid, direct)


def _rtkit_nice(bus: str, tid: int, why_not_directly: str) -> Promotion:
    """Ask rtkit for nice :data:`NICE` on ``tid``; ``why_not_directly`` goes into a refusal."""
    missing = _rtkit_missing.get(bus)
    if missing is not None:  # asked before: no bus or no rtkit on it; do not wait for it again
        return Promotion("none", f"{why_not_directly}; rtkit: {missing}")
    try:
        _rtkit_call(bus, "MakeThreadHighPriority", "ti", (tid, NICE))
    except Exception as exc:  # no rtkit, no system bus, refused: the thread stays as it is
        if not isinstance(exc, RtkitError) or "ServiceUnknown" in str(exc):
            _rtkit_missing[bus] = _short(exc)
        return Promotion("none", f"{why_not_directly}; rtkit: {_short(exc)}")
    return Promotion("rtkit-nice", f"nice {NICE} through rtkit")


def demote_current_thread() -> None:
    """Back to the normal policy and nice 0 (lowering one's own priority is always allowed)."""
    if sys.platform != "linux":
        return
    if _current_policy() != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    tid = threading.get_native_id()
    if os.getpriority(os.PRIO_PROCESS, tid) < 0:
        os.setpriority(os.PRIO_PROCESS, tid, 0)


_nesting = threading.local()


@contextlib.contextmanager
def realtime(priority: int = PRIORITY) -> Iterator[Promotion]:
    """The calling thread raised for the ``with`` block (if it can be), back to normal when the
    outermost such block on this thread ends (two bots on one event loop: the one finishing first
    does not lower the other), unless it was real-time before the first."""
    depth = getattr(_nesting, "depth", 0)
    if depth == 0:
        _nesting.was = _current_policy() if sys.platform == "linux" else None
        _nesting.promotion = promote_current_thread(priority)
    _nesting.depth = depth + 1
    promotion: Promotion = _nesting.promotion
    try:
        yield promotion
    finally:
        _nesting.depth -= 1
        if _nesting.depth == 0 and promotion.raised and _nesting.was == os.SCHED_OTHER:
            demote_current_thread()


def _current_policy() -> int:
    return _policy(0)


def _policy(tid: int) -> int:
    """The scheduling policy of ``tid`` (0: the calling thread), without rtkit's
    ``SCHED_RESET_ON_FORK`` flag."""
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _rtkit_realtime(bus: str, tid: int, priority: int) -> int:
    """Ask rtkit to make ``tid`` real-time; the priority granted (at most rtkit's maximum).
    Caps this process's RLIMIT_RTTIME first, as rtkit requires."""
    from jeepney import DBusAddress, Properties
    from jeepney.io.blocking import open_dbus_connection

    address = DBusAddress(_RTKIT_PATH, bus_name=_RTKIT_NAME, interface=_RTKIT_NAME)
    with open_dbus_connection(bus=bus) as conn:
        most = int(_value(conn, Properties(address).get("MaxRealtimePriority")))
        longest = int(_value(conn, Properties(address).get("RTTimeUSecMax")))
    limit = min(RTTIME_LIMIT_US, longest)
    hard = resource.getrlimit(resource.RLIMIT_RTTIME)[1]
    if hard == resource.RLIM_INFINITY or hard > limit:
        resource.setrlimit(resource.RLIMIT_RTTIME, (limit, limit))
    granted = max(1, min(priority, most))
    _rtkit_call(bus, "MakeThreadRealtime", "tu", (tid, granted))
    return granted


def _rtkit_call(bus: str, method: str, signature: str, args: tuple[int, int]) -> None:
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    address = DBusAddress(_RTKIT_PATH, bus_name=_RTKIT_NAME, interface=_RTKIT_NAME)
    with open_dbus_connection(bus=bus) as conn:
        _checked(
            conn.send_and_get_reply(
                new_method_call(address, method, signature, args), timeout=_TIMEOUT_S
            )
        )


def _value(conn: Any, message: Any) -> Any:
    """The value of a ``Properties.Get`` answer (a variant: (signature, value))."""
    body = _checked(conn.send_and_get_reply(message, timeout=_TIMEOUT_S)).body
    return body[0][1]


def _checked(reply: Any) -> Any:
    from jeepney import HeaderFields, MessageType

    if reply.header.message_type == MessageType.error:
        name = str(reply.header.fields.get(HeaderFields.error_name, "error"))
        text = str(reply.body[0]) if reply.body and isinstance(reply.body[0], str) else ""
        raise RtkitError(f"{name}: {text}" if text else name)
    return reply
