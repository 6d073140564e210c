"""Sliding replay window over packet counters (RFC 3711 §3.3.2, as SRTP and RFC 7714 §8 use it).

One window per counter space: on the client per (channel, sender, gen) of a speaker; on the relay
per (sender, channel, gen) so a replayed datagram is never fanned out again. The window remembers
the highest counter accepted (``top``) and a bitmask of which of the ``size`` counters at and below
it were seen. Anything newer than ``top`` is fresh; anything ``size`` or more below it is too old to
tell and is refused.

Split in two so a forgery can never move the window: :meth:`ReplayWindow.check` does not change
state; call :meth:`ReplayWindow.update` only once the packet authenticated (AEAD opened, or on the
relay the hop MAC verified).
"""

from __future__ import annotations

from typing import Final

from voipclient.errors import LocalProtocolError

MIN_WINDOW: Final = 64  # packets: PROTOCOL §3 requires at least 64 (SRTP's minimum)
DEFAULT_WINDOW: Final = 128  # packets = 2.56 s of 20 ms voice, ample for relay reordering


class ReplayWindow:
    """Sliding window of ``size`` counters; bit ``i`` of the mask means ``top - i`` was accepted.

    Python ints make the bitmask free of word-size limits; shifts on a 128-bit int cost ~50 ns.
    """

    __slots__ = ("_full", "_mask", "_size", "_top")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < MIN_WINDOW:
            raise LocalProtocolError(f"replay window must hold at least {MIN_WINDOW} packets")
        self._size = size
        self._full = (1 << size) - 1
        self._top = -1  # no counter accepted yet
        self._mask = 0

    @property
    def size(self) -> int:
        """How many counters (packets) the window tracks."""
        return self._size

    @property
    def top(self) -> int:
        """Highest counter accepted so far, -1 before the first."""
        return self._top

    def snapshot(self) -> tuple[int, int]:
        """``(top, mask)``: the whole state, for tests and diagnostics."""
        return self._top, self._mask

    def check(self, ctr: int) -> bool:
        """True when ``ctr`` is new to the window. Changes nothing."""
        delta = self._top - ctr
        if delta < 0:
            return True
        if ctr < 0 or delta >= self._size:
            return False
        return not (self._mask >> delta) & 1

    def update(self, ctr: int) -> None:
        """Record ``ctr`` as accepted: only after :meth:`check` passed and the packet authenticated.

        Raises :class:`LocalProtocolError` if ``ctr`` is not new (the caller skipped :meth:`check`).
        """
        if ctr < 0:
            raise LocalProtocolError(f"negative counter {ctr}")
        delta = self._top - ctr
        if delta < 0:
            shift = -delta
            # Slide: older counters move up `shift` bits; those falling off the top are forgotten.
            self._mask = ((self._mask << shift) | 1) & self._full if shift < self._size else 1
            self._top = ctr
            return
        if delta >= self._size or (self._mask >> delta) & 1:
            raise LocalProtocolError(f"counter {ctr} is not new to the replay window")
        self._mask |= 1 << delta

    def accept(self, ctr: int) -> bool:
        """``check`` then ``update``, for callers that authenticated already (the relay)."""
        if not self.check(ctr):
            return False
        self.update(ctr)
        return True
