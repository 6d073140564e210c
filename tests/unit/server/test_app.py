"""Pure helpers of the server's asyncio adapter."""

from __future__ import annotations

import pytest

from voipclient.server.app import backoff_address


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
