"""A gain that moves along a per-sample ramp across one frame, pure numpy.

Every gain change on the audio paths (the capture AGC, the mixer's limiter, the priority
channel's duck) goes from the previous frame's gain to this frame's along a linear ramp over
the frame, so it never steps (a step in gain is a click). One function does it for all.

Real-time: no allocation; ``scratch`` is the caller's preallocated array of ``x``'s shape.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["apply_gain"]


def apply_gain(
    x: npt.NDArray[np.float32],
    previous: float,
    gain: float,
    ramp: npt.NDArray[np.float32],
    scratch: npt.NDArray[np.float32],
) -> None:
    """Scale ``x`` in place from ``previous`` to ``gain`` along ``ramp`` ((i + 1) / n, or any
    0 → 1 ramp broadcastable to ``x``); a constant gain when they are equal (nothing at 1.0)."""
    if previous == gain:
        if gain != 1.0:
            np.multiply(x, np.float32(gain), out=x)
        return
    np.multiply(ramp, np.float32(gain - previous), out=scratch)
    np.add(scratch, np.float32(previous), out=scratch)
    np.multiply(x, scratch, out=x)
