"""PortalSource against a FAKE GlobalShortcuts portal on a private dbus-daemon (never the user's
bus): availability, binding, activation → key events, the per-key count, foreign and spoofed
signals, cancelled dialogs, rebinding, a portal that restarts, stop, the press latency, and the
real router and service fed by it.

The latency figure is from just before the fake sends ``Activated`` (a monotonic clock read on
the test thread) to the source's callback (on its ``ptt-portal`` thread): both are in this
process, and the signal goes through the real dbus-daemon.
"""

from __future__ import annotations

import os
import queue
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jeepney import DBusAddress, HeaderFields, new_signal
from jeepney.io.blocking import open_dbus_connection

from tests.integration.ptt.fake_portal import FakePortal, PrivateBus, private_bus
from voipclient.ptt.events import WantedChanged
from voipclient.ptt.portal_source import PortalSource, shortcut_id, shortcuts_from_bindings
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService
from voipclient.ptt.sources import HotkeySource, InputEvent

pytestmark = pytest.mark.timeout(30)

SQUAD = ("Push-to-talk: Squad A", frozenset({"ctrl", "shift", "f13"}))
COMMAND = ("Push-to-talk: Command", frozenset({"ctrl", "f14"}))
SQUAD_ID = shortcut_id(SQUAD[1])  # ptt-ctrl-shift-f13
COMMAND_ID = shortcut_id(COMMAND[1])  # ptt-ctrl-f14

Events = queue.Queue[tuple[InputEvent, float]]


def _our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("ptt-portal", "fake-portal")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5.0
    while _our_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _our_threads(), f"threads left running: {_our_threads()}"


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    with private_bus() as b:
        yield b


@pytest.fixture
def make_fake(bus: PrivateBus) -> Iterator[Callable[..., FakePortal]]:
    fakes: list[FakePortal] = []

    def make(**options: Any) -> FakePortal:
        fake = FakePortal(bus.address, **options).start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop()


@pytest.fixture
def make_source(bus: PrivateBus) -> Iterator[Callable[..., PortalSource]]:
    sources: list[PortalSource] = []

    def make(**options: Any) -> PortalSource:
        options.setdefault("bus_address", bus.address)
        options.setdefault("timeout", 2.0)
        source = PortalSource(**options)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.stop()
        if source.stopped_thread is not None:
            assert not source.stopped_thread.is_alive()


def started(
    source: PortalSource, bindings: list[tuple[str, frozenset[str]]] | None = None
) -> Events:
    """Start ``source`` with a queue as its callback, bind ``bindings``, wait for the answer."""
    events: Events = queue.Queue()
    source.set_bindings([SQUAD, COMMAND] if bindings is None else bindings)
    source.start(lambda ev: events.put((ev, time.monotonic())))
    assert source.wait_settled(5.0), source.status
    return events


def take(events: Events, n: int, timeout: float = 5.0) -> list[tuple[str, bool]]:
    out = [events.get(timeout=timeout)[0] for _ in range(n)]
    return [(ev.name, ev.pressed) for ev in out]


def quiet(events: Events, wait: float = 0.2) -> bool:
    """Nothing arrives within ``wait`` s."""
    try:
        ev = events.get(timeout=wait)
    except queue.Empty:
        return True
    pytest.fail(f"unexpected event {ev!r}")


# -- availability ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_available_with_the_portal(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource], version: int
) -> None:
    make_fake(version=version)
    source = make_source()
    assert isinstance(source, HotkeySource)
    assert source.available() == (
        True,
        f"global shortcuts through the desktop portal (GlobalShortcuts v{version})",
    )


def test_unavailable_without_a_portal(make_source: Callable[..., PortalSource]) -> None:
    source = make_source()
    ok, reason = source.available()
    assert not ok
    assert reason.startswith("no desktop portal (org.freedesktop.portal.Desktop)")
    with pytest.raises(RuntimeError, match="no desktop portal"):
        source.start(lambda _e: None)


def test_unavailable_without_the_interface(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    make_fake(global_shortcuts=False)
    ok, reason = make_source().available()
    assert (ok, reason) == (
        False,
        "no portal GlobalShortcuts interface on the session bus "
        "(needs KDE Plasma 5.27+, GNOME 48+ or Hyprland)",
    )


def test_unavailable_when_the_bus_is_missing() -> None:
    source = PortalSource(bus_address="unix:path=/nonexistent/vc-no-bus", timeout=1.0)
    t0 = time.monotonic()
    ok, reason = source.available()
    assert not ok
    assert reason.startswith("cannot connect to the D-Bus session bus")
    assert time.monotonic() - t0 < 0.5


def test_available_never_hangs_on_a_silent_bus() -> None:
    """A socket that accepts and then says nothing (a wedged bus): False within the timeout."""
    folder = tempfile.mkdtemp(prefix="vcsilent-")
    path = os.path.join(folder, "bus")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(4)
        source = PortalSource(bus_address=f"unix:path={path}", timeout=0.5)
        t0 = time.monotonic()
        ok, reason = source.available()
        elapsed = time.monotonic() - t0
        assert (ok, reason) == (False, "the D-Bus session bus did not answer within 0.5 s")
        assert elapsed < 1.5
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(folder)


def test_available_never_hangs_on_a_silent_portal(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    make_fake(mute=True)
    source = make_source(timeout=0.5)
    t0 = time.monotonic()
    assert source.available() == (False, "the desktop portal did not answer within 0.5 s")
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(RuntimeError, match=r"did not answer within 0\.5 s"):
        source.start(lambda _e: None)


# -- binding --------------------------------------------------------------------------------------


def test_bind_asks_for_one_shortcut_per_binding(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    started(source)
    session = fake.bound_session()
    assert source.session_handle == session.path
    assert session.shortcuts == [
        (SQUAD_ID, {"description": "Push-to-talk: Squad A", "preferred_trigger": "CTRL+SHIFT+F13"}),
        (COMMAND_ID, {"description": "Push-to-talk: Command", "preferred_trigger": "CTRL+F14"}),
    ]
    assert session.parent_window == ""
    assert source.bound == {SQUAD_ID: "CTRL+SHIFT+F13", COMMAND_ID: "CTRL+F14"}
    assert source.status == (
        "desktop portal bound 2 of 2 shortcut(s): Push-to-talk: Squad A = CTRL+SHIFT+F13; "
        "Push-to-talk: Command = CTRL+F14"
    )
    # every portal call after the first went to a request path we were subscribed to already
    members = [c[0].rsplit(".", 1)[1] for c in fake.record.calls if c[2] == session.owner]
    assert members == ["Get", "CreateSession", "BindShortcuts"]


def test_a_mouse_button_is_bound_without_a_trigger(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source, [("Push-to-talk: side", frozenset({"mouse4"}))])
    assert fake.bound_session().shortcuts == [("ptt-mouse4", {"description": "Push-to-talk: side"})]
    fake.activate("ptt-mouse4")
    assert take(events, 1) == [("mouse4", True)]  # whatever key the user picked, mouse4 it is


def test_cancelled_dialog_gives_the_reason(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake(bind_response=1)
    source = make_source()
    events = started(source)
    assert source.status.startswith(
        "the desktop's shortcut dialog was cancelled by the user: push-to-talk keys are not bound"
    )
    session = fake.latest_session()
    assert fake.wait_until(lambda _r: session.closed)
    assert source.session_handle is None and source.bound == {}
    fake.activate(SQUAD_ID, session=session.path)
    assert quiet(events)


def test_refused_session_gives_the_reason(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    make_fake(create_response=2)
    source = make_source()
    started(source)
    assert source.status == (
        "the desktop portal refused a global shortcuts session (ended by the desktop without "
        "an answer (response 2)): push-to-talk keys are not bound"
    )


def test_response_before_the_reply_is_not_lost(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    """We subscribe to our request paths before the first call, so the race the portal's
    documentation warns about cannot lose the Response."""
    fake = make_fake(respond_early=True)
    source = make_source()
    events = started(source)
    assert source.bound == {SQUAD_ID: "CTRL+SHIFT+F13", COMMAND_ID: "CTRL+F14"}
    fake.activate(COMMAND_ID)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]


def test_a_portal_that_does_not_list_the_bound_shortcuts(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    make_fake(list_bound=False)
    source = make_source()
    started(source)
    assert source.bound == {SQUAD_ID: "", COMMAND_ID: ""}
    assert "Push-to-talk: Squad A = CTRL+SHIFT+F13 (suggested)" in source.status


def test_app_id_is_registered_before_any_portal_call(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source(app_id="voipclient")
    started(source)
    owner = fake.bound_session().owner
    assert fake.record.registered == [(owner, "voipclient")]
    first = next(c for c in fake.record.calls if c[2] == owner)
    assert first[0] == "org.freedesktop.host.portal.Registry.Register"


# -- delivery -------------------------------------------------------------------------------------


def test_activation_presses_the_chord_and_deactivation_releases_it(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source)
    fake.activate(SQUAD_ID)
    assert take(events, 3) == [("ctrl", True), ("shift", True), ("f13", True)]
    fake.deactivate(SQUAD_ID)
    assert take(events, 3) == [("f13", False), ("shift", False), ("ctrl", False)]
    assert quiet(events)


def test_a_shared_key_is_released_by_the_last_shortcut(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source)
    fake.activate(SQUAD_ID)
    assert take(events, 3) == [("ctrl", True), ("shift", True), ("f13", True)]
    fake.activate(COMMAND_ID)
    assert take(events, 1) == [("f14", True)]  # ctrl is down already
    fake.deactivate(SQUAD_ID)
    assert take(events, 2) == [("f13", False), ("shift", False)]  # ctrl stays for Command
    fake.deactivate(COMMAND_ID)
    assert take(events, 2) == [("f14", False), ("ctrl", False)]
    assert quiet(events)


def test_repeats_strays_and_unknown_ids_change_nothing(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source)
    fake.deactivate(SQUAD_ID)  # never activated
    fake.activate("ptt-not-ours")
    fake.activate(COMMAND_ID)
    fake.activate(COMMAND_ID)  # key repeat
    assert take(events, 2) == [("ctrl", True), ("f14", True)]
    fake.deactivate(COMMAND_ID)
    fake.deactivate(COMMAND_ID)
    assert take(events, 2) == [("f14", False), ("ctrl", False)]
    assert quiet(events)


def test_foreign_sessions_and_spoofed_senders_are_ignored(
    bus: PrivateBus, make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source)
    ours = fake.bound_session()
    # the portal, for another session (another app's, or an old one of ours), sent to us
    fake.activate(SQUAD_ID, session=ours.path + "x", destination=ours.owner)
    # someone else on the bus pretending to be the portal, with our session
    with open_dbus_connection(bus=bus.address) as spoofer:
        msg = new_signal(
            DBusAddress(
                "/org/freedesktop/portal/desktop",
                interface=("org.freedesktop.portal.GlobalShortcuts"),
            ),
            "Activated",
            "osta{sv}",
            (ours.path, SQUAD_ID, 0, {}),
        )
        msg.header.fields[HeaderFields.destination] = ours.owner
        spoofer.send(msg)
        assert quiet(events, 0.3)
    fake.activate(COMMAND_ID)  # the real thing still works
    assert take(events, 2) == [("ctrl", True), ("f14", True)]


def test_a_broadcast_activation_is_received(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    """xdg-desktop-portal sends to the session's owner; a portal that broadcasts still reaches
    us through the match rule added at start."""
    fake = make_fake()
    source = make_source()
    events = started(source)
    fake.activate(COMMAND_ID, broadcast=True)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]


# -- rebinding and sessions ending ----------------------------------------------------------------


def test_new_bindings_after_start_use_a_new_session(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source)
    old = fake.bound_session()
    fake.activate(SQUAD_ID)
    assert take(events, 3) == [("ctrl", True), ("shift", True), ("f13", True)]
    source.set_bindings([COMMAND, ("Push-to-talk: All", frozenset({"f15"}))])
    # the old session's keys are let go, then the old session is closed
    assert take(events, 3) == [("f13", False), ("shift", False), ("ctrl", False)]
    assert source.wait_settled(5.0), source.status
    assert fake.wait_until(lambda _r: old.closed)
    new = fake.bound_session()
    assert new.path != old.path
    assert [sid for sid, _ in new.shortcuts or []] == [COMMAND_ID, "ptt-f15"]
    fake.activate(SQUAD_ID, session=old.path)  # the old session is gone
    fake.activate("ptt-f15")
    assert take(events, 1) == [("f15", True)]
    source.set_bindings([COMMAND, ("Push-to-talk: All", frozenset({"F15"}))])  # the same: no-op
    assert source.session_handle == new.path
    assert quiet(events)


def test_new_bindings_while_the_dialog_is_open(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake(hold_bind=True)
    source = make_source()
    events: Events = queue.Queue()
    source.set_bindings([SQUAD])
    source.start(lambda ev: events.put((ev, time.monotonic())))
    first = fake.bound_session()  # asked; the "dialog" stays open
    assert not source.wait_settled(0.2)
    assert "confirm them in its dialog" in source.status
    source.set_bindings([COMMAND])
    assert fake.wait_until(lambda r: len(r.closed_requests) == 1 and first.closed)
    assert fake.wait_until(
        lambda r: len(r.sessions) == 2 and fake.latest_session().shortcuts is not None
    )
    fake.answer_bind(0)
    assert source.wait_settled(5.0)
    assert source.bound == {COMMAND_ID: "CTRL+F14"}
    fake.activate(COMMAND_ID)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]


def test_stop_while_the_dialog_is_open_is_prompt(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake(hold_bind=True)
    source = make_source()
    source.set_bindings([SQUAD])
    source.start(lambda _e: None)
    session = fake.bound_session()
    t0 = time.monotonic()
    source.stop()
    assert time.monotonic() - t0 < 1.0
    assert source.stopped_thread is not None and not source.stopped_thread.is_alive()
    assert session.closed
    source.stop()  # idempotent


def test_the_desktop_closing_the_session_releases_its_keys(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source)
    fake.activate(COMMAND_ID)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]
    fake.close_session(fake.bound_session().path)
    assert take(events, 2) == [("f14", False), ("ctrl", False)]
    assert source.status.startswith("the desktop closed the global shortcuts session")
    assert source.session_handle is None


def test_a_restarted_portal_gets_the_shortcuts_again(
    bus: PrivateBus, make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    first = make_fake()
    source = make_source()
    events = started(source)
    first.activate(COMMAND_ID)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]
    first.stop()  # the portal crashes: its name goes with its connection
    assert take(events, 2) == [("f14", False), ("ctrl", False)]
    deadline = time.monotonic() + 5
    while "went away" not in source.status and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.status == "the desktop portal went away: push-to-talk keys are not bound"
    second = make_fake()
    session = second.bound_session()
    assert [sid for sid, _ in session.shortcuts or []] == [SQUAD_ID, COMMAND_ID]
    deadline = time.monotonic() + 5
    while source.session_handle != session.path and time.monotonic() < deadline:
        time.sleep(0.01)
    second.activate(SQUAD_ID)
    assert take(events, 3) == [("ctrl", True), ("shift", True), ("f13", True)]


def test_configure_shortcuts_needs_version_2(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake(version=2)
    source = make_source()
    started(source)
    assert source.configure_shortcuts()
    assert fake.wait_until(lambda r: r.configure_calls == [(source.session_handle, "")])
    # the user picks another key in the desktop's settings
    fake.shortcuts_changed(fake.bound_session().path, {COMMAND_ID: "Ctrl+Alt+K"})
    deadline = time.monotonic() + 5
    while source.bound.get(COMMAND_ID) != "Ctrl+Alt+K" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.bound == {SQUAD_ID: "CTRL+SHIFT+F13", COMMAND_ID: "Ctrl+Alt+K"}
    assert "Push-to-talk: Command = Ctrl+Alt+K" in source.status


def test_configure_shortcuts_is_refused_on_version_1(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake(version=1)
    source = make_source()
    started(source)
    assert not source.configure_shortcuts()
    assert fake.record.configure_calls == []


# -- life cycle -----------------------------------------------------------------------------------


def test_status_hook_hears_every_change(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    make_fake(bind_response=1)
    source = make_source()
    heard: list[str] = []
    source.on_status = heard.append
    started(source, [COMMAND])
    assert heard[0] == "1 shortcut(s) to bind when started"
    assert heard[1] == "connected to the desktop portal (GlobalShortcuts v1)"
    assert "confirm them in its dialog" in heard[2]
    assert heard[-1] == source.status
    assert "cancelled by the user" in heard[-1]


def test_start_twice_fails_and_stop_joins_the_thread(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    started(source)
    with pytest.raises(RuntimeError, match="already started"):
        source.start(lambda _e: None)
    assert [t.name for t in _our_threads()].count("ptt-portal") == 1
    session = fake.bound_session()
    source.stop()
    assert source.stopped_thread is not None and not source.stopped_thread.is_alive()
    assert session.closed  # closed on the way out
    assert [t for t in _our_threads() if t.name == "ptt-portal"] == []
    source.stop()
    # and it can start again: a new session with the same shortcuts
    events: Events = queue.Queue()
    source.start(lambda ev: events.put((ev, time.monotonic())))
    assert source.wait_settled(5.0), source.status
    again = fake.bound_session()
    assert again.path != session.path and source.session_handle == again.path
    fake.activate(COMMAND_ID)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]


def test_start_without_bindings_then_bind(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    source = make_source()
    events = started(source, [])
    assert source.status.endswith("no push-to-talk keys to bind")
    assert fake.record.sessions == {}
    source.set_bindings([COMMAND])
    assert source.wait_settled(5.0)
    fake.activate(COMMAND_ID)
    assert take(events, 2) == [("ctrl", True), ("f14", True)]


def test_press_latency(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    """From the fake emitting Activated/Deactivated to our callback getting the key event."""
    fake = make_fake()
    source = make_source()
    events = started(source, [("Push-to-talk: Squad A", frozenset({"f13"}))])
    press: list[float] = []
    release: list[float] = []
    for _ in range(50):
        t0 = fake.activate("ptt-f13")
        ev, got = events.get(timeout=5)
        assert (ev.name, ev.pressed) == ("f13", True)
        assert t0 <= ev.at <= got
        press.append((got - t0) * 1000)
        t0 = fake.deactivate("ptt-f13")
        ev, got = events.get(timeout=5)
        assert (ev.name, ev.pressed) == ("f13", False)
        release.append((got - t0) * 1000)
    for label, signal, ms in (
        ("press", "Activated", sorted(press)),
        ("release", "Deactivated", sorted(release)),
    ):
        p95 = ms[int(len(ms) * 0.95) - 1]
        print(
            f"\nportal {label} latency (fake {signal} → callback, via dbus-daemon): "
            f"median {statistics.median(ms):.3f} ms, p95 {p95:.3f} ms, max {ms[-1]:.3f} ms "
            f"(n={len(ms)})"
        )
        assert statistics.median(ms) < 20.0  # the target
        assert p95 < 20.0


# -- with the real router -------------------------------------------------------------------------


def test_the_router_gets_the_channel(
    make_fake: Callable[..., FakePortal], make_source: Callable[..., PortalSource]
) -> None:
    fake = make_fake()
    router = PttRouter(
        [
            Binding.parse("Squad A", "ctrl+shift+f13", [2]),
            Binding.parse("Command", "ctrl+f14", [3]),
        ]
    )
    service = PttService(router)
    seen: queue.Queue[WantedChanged] = queue.Queue()
    service.add_listener(lambda ev: seen.put(ev) if isinstance(ev, WantedChanged) else None)
    source = make_source()
    source.set_bindings(shortcuts_from_bindings(router.bindings))
    service.attach(source)
    try:
        assert source.wait_settled(5.0), source.status
        ids = [sid for sid, _ in fake.bound_session().shortcuts or []]
        assert ids == ["ptt-ctrl-shift-f13", "ptt-ctrl-f14"]
        t0 = fake.activate("ptt-ctrl-shift-f13")
        ev = seen.get(timeout=5)
        print(f"\nportal Activated → router WantedChanged: {(ev.at - t0) * 1000:.3f} ms")
        assert ev.after == {2}
        assert service.wanted() == {2}
        fake.activate("ptt-ctrl-f14")
        assert seen.get(timeout=5).after == {2, 3}
        fake.deactivate("ptt-ctrl-shift-f13")  # ctrl stays down for Command
        assert seen.get(timeout=5).after == {3}
        fake.deactivate("ptt-ctrl-f14")
        assert seen.get(timeout=5).after == frozenset()
        assert service.wanted() == frozenset()
        fake.activate("ptt-ctrl-f14")
        assert seen.get(timeout=5).after == {3}
    finally:
        service.close()  # stops the source (its session ends, its keys go up) and releases all
    assert service.wanted() == frozenset()
    assert source.stopped_thread is not None and not source.stopped_thread.is_alive()
