"""Pure helpers of the server's asyncio adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voipclient.server.app import RelayServer, backoff_address
from voipclient.server.config import Settings
from voipclient.server.store import Store
from voipclient.server.tls import load_or_create


@pytest.mark.parametrize(
    ("ip", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack socket's IPv4 client
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # same /64: one address for the back-off
        ("fe80::1%eth0", "fe80::/64"),
        ("?", None),
        ("", None),
    ],
)
def test_backoff_address_counts_ipv6_by_slash_64(ip: str, address: str | None) -> None:
    assert backoff_address(ip) == address


class FakeTimerCore:
    """FAKE: the timer part of ``ServerCore`` alone, counting how often the adapter asks."""

    min_timeout = 10.0

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.asked = 0

    def get_timer(self) -> float | None:
        self.asked += 1  # the real one visits every session
        return self.deadline


def test_the_adapter_asks_for_the_deadline_once_per_min_timeout_not_per_message(
    tmp_path: Path,
) -> None:
    """Every control message ends in ``_schedule_timer``; with every session's deadline far
    off (idle timeout) it used to visit every session each time: 10 % of the relay's CPU at 500
    sessions. The timer is now never further than ``min_timeout``, so later calls skip."""
    loop = asyncio.new_event_loop()
    try:
        server = RelayServer(Settings(), load_or_create(tmp_path / "tls"), Store.open(tmp_path))
        far = FakeTimerCore(loop.time() + 30.0)
        server._core = far  # type: ignore[assignment]
        server._loop = loop
        before = loop.time()
        for _ in range(1000):
            server._schedule_timer()
        after = loop.time()
        assert far.asked == 1
        # At the horizon of the first call: between before + min_timeout and after + min_timeout.
        assert before + far.min_timeout <= server._timer_at <= after + far.min_timeout
        # A deadline before the horizon is kept exactly: a session is closed on time.
        server._timer.cancel()  # type: ignore[union-attr]
        server._timer = None
        near = FakeTimerCore(loop.time() + 2.5)
        server._core = near  # type: ignore[assignment]
        for _ in range(100):
            server._schedule_timer()
        assert near.asked == 1 and server._timer_at == near.deadline
        server._timer.cancel()  # type: ignore[union-attr]
    finally:
        loop.close()
