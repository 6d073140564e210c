"""The sliding replay window (RFC 3711 §3.3.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.crypto.replay import DEFAULT_WINDOW, MIN_WINDOW, ReplayWindow
from voipclient.errors import LocalProtocolError


def test_default_and_minimum_size() -> None:
    assert ReplayWindow().size == DEFAULT_WINDOW == 128
    assert ReplayWindow(MIN_WINDOW).size == 64
    with pytest.raises(LocalProtocolError):
        ReplayWindow(63)


def test_in_order_and_exact_replay() -> None:
    w = ReplayWindow()
    for ctr in range(10):
        assert w.check(ctr)
        w.update(ctr)
    for ctr in range(10):
        assert not w.check(ctr)
    assert w.top == 9


def test_check_changes_nothing() -> None:
    w = ReplayWindow()
    w.update(5)
    before = w.snapshot()
    for ctr in (0, 4, 5, 6, 10**6):
        w.check(ctr)
    assert w.snapshot() == before


def test_reordering_within_the_window() -> None:
    w = ReplayWindow(64)
    w.update(100)
    for ctr in (99, 37, 98, 63):  # 100 - 63 = 37 is the oldest slot of a 64 window
        assert w.check(ctr)
        w.update(ctr)
        assert not w.check(ctr)
    assert not w.check(36)  # below the window: refused, can't tell if seen
    assert w.check(101)


def test_below_the_window_is_refused() -> None:
    w = ReplayWindow(64)
    w.update(0)
    w.update(200)
    assert not w.check(1)  # never seen, but too old to tell
    assert not w.check(200 - 64)
    assert w.check(200 - 63)


def test_a_big_jump_forgets_everything_older() -> None:
    w = ReplayWindow()
    w.update(3)
    w.update(10_000)
    assert w.snapshot() == (10_000, 1)


def test_update_refuses_what_check_refuses() -> None:
    w = ReplayWindow()
    w.update(300)
    with pytest.raises(LocalProtocolError):
        w.update(300)
    with pytest.raises(LocalProtocolError):
        w.update(1)
    with pytest.raises(LocalProtocolError):
        ReplayWindow().update(-1)
    assert not ReplayWindow().check(-1)
    assert w.snapshot() == (300, 1)


def test_accept_is_check_then_update() -> None:
    w = ReplayWindow()
    assert w.accept(7)
    assert not w.accept(7)
    assert w.accept(6)


def test_top_bit_slides_out_exactly() -> None:
    w = ReplayWindow(64)
    w.update(0)
    w.update(63)
    assert not w.check(0)  # still inside: delta 63
    w.update(64)
    assert not w.check(0)  # slid out: refused as too old, not as seen
    assert w.snapshot()[1] < 1 << 64


@given(st.lists(st.integers(min_value=0, max_value=600), max_size=300), st.sampled_from([64, 128]))
def test_matches_a_reference_model(ctrs: list[int], size: int) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = -1
    for ctr in ctrs:
        expected = ctr not in seen and ctr > top - size
        assert w.check(ctr) == expected
        if expected:
            w.update(ctr)
            seen.add(ctr)
            top = max(top, ctr)
