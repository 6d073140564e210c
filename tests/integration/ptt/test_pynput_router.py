"""pynput under Xvfb: xdotool key and side-button events reach the router; latency printed.

The latency figure is from just before ``xdotool`` is started to the router's WantedChanged
event (delivered on pynput's thread), so it includes xdotool's own process start-up.
"""

from __future__ import annotations

import os
import queue
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest

from voipclient.ptt.events import WantedChanged
from voipclient.ptt.pynput_source import PynputSource
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


def xdotool(*args: str) -> float:
    """Run xdotool; return the monotonic time just before it started."""
    t0 = time.monotonic()
    subprocess.run(["xdotool", *args], check=True, timeout=5, env=os.environ.copy())
    return t0


@pytest.fixture
def wired() -> Iterator[tuple[PttService, queue.Queue[tuple[WantedChanged, float]]]]:
    router = PttRouter(
        [
            Binding.parse("squad", "f13", [2]),
            Binding.parse("command", "f14", [3]),
            Binding.parse("side", "mouse4", [4]),
            Binding.parse("fwd", "mouse5", [5]),
        ]
    )
    service = PttService(router)
    seen: queue.Queue[tuple[WantedChanged, float]] = queue.Queue()
    service.add_listener(lambda ev: seen.put((ev, time.monotonic())))
    source = PynputSource()
    ok, reason = source.available()
    assert ok, reason
    service.attach(source)
    time.sleep(0.2)  # the X record context needs a moment after wait() returns
    try:
        yield service, seen
    finally:
        service.close()
        assert source.stopped_listeners
        for listener in source.stopped_listeners:  # stop() joined them
            assert not listener.is_alive()
        subprocess.run(["xdotool", "keyup", "F13", "keyup", "F14"], check=False, timeout=5)
        subprocess.run(["xdotool", "mouseup", "8", "mouseup", "9"], check=False, timeout=5)


def _next(seen: queue.Queue[tuple[WantedChanged, float]]) -> tuple[WantedChanged, float]:
    return seen.get(timeout=5)


def test_f13_and_f14_held_transmit_to_both_channels(
    wired: tuple[PttService, queue.Queue[tuple[WantedChanged, float]]],
) -> None:
    service, seen = wired
    latencies: list[float] = []
    for _ in range(5):
        t0 = xdotool("keydown", "F13")
        ev, _delivered = _next(seen)
        assert ev.after == {2}
        latencies.append(ev.at - t0)
        t0 = xdotool("keydown", "F14")
        ev, _ = _next(seen)
        assert ev.after == {2, 3}
        assert service.wanted() == {2, 3}
        latencies.append(ev.at - t0)
        t0 = xdotool("keyup", "F13")
        ev, _ = _next(seen)
        assert ev.after == {3}
        latencies.append(ev.at - t0)
        t0 = xdotool("keyup", "F14")
        ev, _ = _next(seen)
        assert ev.after == frozenset()
        latencies.append(ev.at - t0)
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"\nlatency xdotool key → router event: median {statistics.median(ms):.2f} ms, "
        f"min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms (n={len(ms)})"
    )
    assert ms[-1] < 1000


def test_side_buttons_transmit(
    wired: tuple[PttService, queue.Queue[tuple[WantedChanged, float]]],
) -> None:
    service, seen = wired
    latencies: list[float] = []
    for _ in range(5):
        t0 = xdotool("mousedown", "8")
        ev, _ = _next(seen)
        assert ev.after == {4}
        latencies.append(ev.at - t0)
        t0 = xdotool("mousedown", "9")
        ev, _ = _next(seen)
        assert ev.after == {4, 5}
        latencies.append(ev.at - t0)
        t0 = xdotool("mouseup", "8")
        ev, _ = _next(seen)
        assert ev.after == {5}
        latencies.append(ev.at - t0)
        t0 = xdotool("mouseup", "9")
        ev, _ = _next(seen)
        assert ev.after == frozenset()
        latencies.append(ev.at - t0)
    assert service.wanted() == frozenset()
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"\nlatency xdotool mouse button → router event: median {statistics.median(ms):.2f} ms, "
        f"min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms (n={len(ms)})"
    )


def test_key_repeat_from_x_does_not_toggle_a_latch(
    wired: tuple[PttService, queue.Queue[tuple[WantedChanged, float]]],
) -> None:
    service, seen = wired
    service._router.set_bindings([Binding.parse("radio", "f13", [7], latching=True)], 0.0)
    # Two keydowns without a keyup: the second is what auto-repeat looks like to pynput.
    xdotool("keydown", "F13")
    ev, _ = _next(seen)
    assert ev.after == {7}
    xdotool("keydown", "F13", "keyup", "F13")
    time.sleep(0.3)
    assert seen.empty()
    assert service.wanted() == {7}


def test_in_a_wayland_session_pynput_sees_keys_of_xwayland_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Wayland desktop runs X programs (most games, under Wine or Proton) on XWayland, an X
    server like this Xvfb: pynput, connected to it, sees the keys those windows get. So on
    Wayland it is not switched off; it is used after the portal and evdev, and says what it
    sees."""
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-test")
    router = PttRouter([Binding.parse("squad", "f13", [2])])
    service = PttService(router)
    seen: queue.Queue[WantedChanged] = queue.Queue()
    service.add_listener(seen.put)
    source = PynputSource()
    ok, reason = source.available()
    assert ok and "XWayland windows only" in reason
    service.attach(source)
    time.sleep(0.2)
    try:
        xdotool("keydown", "F13")
        assert seen.get(timeout=5).after == {2}
        xdotool("keyup", "F13")
        assert seen.get(timeout=5).after == frozenset()
    finally:
        service.close()
        subprocess.run(["xdotool", "keyup", "F13"], check=False, timeout=5)
