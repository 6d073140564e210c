"""PttService's route slot: what the capture worker reads every frame without the lock."""

from __future__ import annotations

from voipclient.ptt.events import WantedChanged
from voipclient.ptt.router import NOBODY, Binding, PttRouter, Route
from voipclient.ptt.service import PttService
from voipclient.ptt.sources import InputEvent


def test_route_slot_follows_every_input_even_without_an_event() -> None:
    service = PttService(PttRouter([Binding.parse("squad", "f13", [2])]), clock=lambda: 0.0)
    seen: list[WantedChanged] = []
    service.add_listener(seen.append)
    assert service.route() == NOBODY
    service.set_hot_mic(7)
    assert service.set_mode("voice_activation") == []  # silent: no change of who hears me now...
    assert service.route() == Route(frozenset(), frozenset({7}))  # ...the worker knows anyway
    assert service.wanted() == frozenset() and seen == []
    service.set_muted(True)
    assert service.route() == NOBODY
    service.set_muted(False)
    assert service.route().speaking == {7}


def test_route_slot_is_written_before_the_listeners_run() -> None:
    service = PttService(PttRouter([Binding.parse("squad", "f13", [2])]), clock=lambda: 0.0)
    routes_seen: list[Route] = []
    service.add_listener(lambda event: routes_seen.append(service.route()))
    service.on_input(InputEvent("f13", True, 1.0))
    assert routes_seen == [Route(frozenset({2}), frozenset({2}))]
    # a reader that does not take the lock, while another thread holds it (the GUI, busy)
    with service._lock:
        assert service.route().always == {2}
