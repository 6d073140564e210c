"""A single-producer/single-consumer ring of PCM samples on one preallocated numpy array.

This is the mailbox between a PortAudio callback and an audio worker (ARCHITECTURE "Threads and
mailboxes"): the callback side must not allocate, lock, log or block, so :meth:`SampleRing.write`
and :meth:`SampleRing.read_into` only slice-copy into/out of the preallocated buffer and never
wait. What does not fit is dropped and counted (overrun); what is missing is zero-filled and
counted (underrun), so an output buffer is always filled completely.

Thread safety (exactly one writer thread and one reader thread, CPython with the GIL):

* Positions are two monotonically increasing Python ints: ``_written`` (total samples ever
  written) and ``_read`` (total samples ever read). Only the producer assigns ``_written``; only
  the consumer assigns ``_read``. Each assignment is a single reference store, which is atomic
  under the GIL, so neither side ever sees a torn value and no lock is needed.
* Each side updates its index only *after* its copy is complete. The consumer therefore never
  reads samples the producer has not finished copying, and the producer never overwrites
  samples the consumer has not finished copying: a stale view of the other side's index only
  makes this side more conservative (less data / less room), never wrong.
* The counters (``overrun_samples`` on the producer side, ``underrun_samples`` on the consumer
  side) likewise have a single writer each.

Waking the other side: :attr:`SampleRing.on_write` (called by the producer after it published
new samples) and :attr:`SampleRing.on_read` (called by the consumer after it freed room) let a
worker sleep until the device clock moves instead of polling. The worker that waits installs
``threading.Event.set`` there; the ring itself stays free of threads and locks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt


class SampleRing:
    """A fixed-capacity SPSC ring of samples (default int16, mono).

    ``capacity_samples`` is the number of samples held at most (e.g. 48_000 = 1 s at 48 kHz).
    """

    def __init__(self, capacity_samples: int, dtype: npt.DTypeLike = np.int16) -> None:
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, not {capacity_samples}")
        self._capacity = int(capacity_samples)
        self._buf: npt.NDArray[Any] = np.zeros(self._capacity, dtype=dtype)
        self._written = 0  # total samples ever written; assigned by the producer only
        self._read = 0  # total samples ever read or discarded; assigned by the consumer only
        self.overrun_samples = 0  # samples dropped by write() for lack of room (producer side)
        self.underrun_samples = 0  # samples zero-filled by read_into() (consumer side)
        #: called (no arguments) after write() published samples: the consumer's wake-up
        self.on_write: Callable[[], object] | None = None
        #: called after read_into() or discard() freed room: the producer's wake-up
        self.on_read: Callable[[], object] | None = None

    @property
    def capacity(self) -> int:
        """Samples the ring holds at most."""
        return self._capacity

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._buf.dtype

    @property
    def available(self) -> int:
        """Samples ready to read."""
        return self._written - self._read

    @property
    def free(self) -> int:
        """Samples that can be written without overrun."""
        return self._capacity - (self._written - self._read)

    def write(self, samples: npt.NDArray[Any]) -> int:
        """Copy as many of ``samples`` (1-D) as fit; return how many. Never blocks.

        Samples that do not fit are dropped (the newest ones) and added to ``overrun_samples``.
        """
        n_in = len(samples)
        written = self._written
        room = self._capacity - (written - self._read)
        n = n_in if n_in <= room else room
        if n_in > n:
            self.overrun_samples += n_in - n
        if n == 0:
            return 0
        start = written % self._capacity
        first = self._capacity - start
        if n <= first:
            self._buf[start : start + n] = samples[:n]
        else:
            self._buf[start:] = samples[:first]
            self._buf[: n - first] = samples[first:n]
        self._written = written + n  # publish after the copy
        wake = self.on_write
        if wake is not None:
            wake()
        return n

    def read_into(self, out: npt.NDArray[Any]) -> int:
        """Fill ``out`` (1-D) completely; return samples read from the ring.

        Whatever the ring cannot supply is zero-filled and added to ``underrun_samples``.
        """
        n_out = len(out)
        read = self._read
        avail = self._written - read
        n = n_out if n_out <= avail else avail
        if n > 0:
            start = read % self._capacity
            first = self._capacity - start
            if n <= first:
                out[:n] = self._buf[start : start + n]
            else:
                out[:first] = self._buf[start:]
                out[first:n] = self._buf[: n - first]
        if n < n_out:
            out[n:] = 0
            self.underrun_samples += n_out - n
        if n > 0:
            self._read = read + n  # publish after the copy
            wake = self.on_read
            if wake is not None:
                wake()
        return n

    def discard(self, max_samples: int | None = None) -> int:
        """Consumer side: drop up to ``max_samples`` (default: all available); return how many."""
        avail = self._written - self._read
        n = avail if max_samples is None else max(0, min(avail, max_samples))
        self._read += n
        wake = self.on_read
        if n and wake is not None:
            wake()
        return n
