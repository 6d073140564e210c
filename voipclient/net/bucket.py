"""A token bucket: the server's rate limits, and the client's pacing under them."""

from __future__ import annotations

__all__ = ["TokenBucket"]

#: Tokens short of ``n`` that still count as ``n``: a timer set by :meth:`ready_at` lands on
#: the instant, where the refill can come out a rounding error short.
_EPSILON = 1e-9


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` stored."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:  # a clock going backwards adds nothing
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if available."""
        self._refill(now)
        if self._tokens >= n - _EPSILON:
            self._tokens -= n
            return True
        return False

    def ready_at(self, now: float, n: float = 1.0) -> float:
        """When ``n`` tokens will be there (``now`` if they are)."""
        self._refill(now)
        if self._tokens >= n - _EPSILON:
            return now
        return self._last + (n - self._tokens) / self.rate
