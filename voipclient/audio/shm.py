"""The memory the app and its audio host share: two sample rings and a header of counters.

One block of shared memory (:class:`SharedBlock`) holds

* a header of int64 slots (:class:`Slot`): the host's heartbeat, its device counters, and for
  each ring its positions and its overrun/underrun counters;
* the capture ring's samples (the host's input callback writes, the app's capture worker reads);
* the playback ring's samples (the app's playback worker writes, the host's output callback
  reads).

:class:`SharedSampleRing` is a :class:`~voipclient.audio.ring.SampleRing` whose positions and
counters live in that header instead of Python attributes, so the same single-producer/single-
consumer rules hold across the two processes: each position has one writer (an aligned 8-byte
store, which x86-64 and ARM64 make atomic), and each side publishes its position only after its
copy. No frame is pickled or sent through a pipe; a frame costs one slice copy on each side, as
in-process.

The block is created by the app and handed to the host as a file descriptor (``pass_fds``): a
``memfd`` on Linux, an unlinked temporary file elsewhere on POSIX. It has no name anyone could
open, nothing is left behind if either process is killed, and no resource-tracker process is
needed (``multiprocessing.shared_memory`` would register a name with one). The host is
POSIX-only; on Windows the app keeps its devices in-process (docs/architecture.md).

Memory ordering: CPython gives no fence between the sample copy and the position store. On x86
stores are not reordered with other stores; on ARM64 the interpreter's own atomic operations
between the two stores act as barriers in practice. A reordering would at worst play one stale
frame, never read out of bounds.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import tempfile
from enum import IntEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from voipclient.audio.ring import SampleRing

MAGIC: Final = 0x564F495041554431  # "VOIPAUD1": the layout version both processes agree on
HEADER_SLOTS: Final = 32
HEADER_BYTES: Final = HEADER_SLOTS * 8
SAMPLE_BYTES: Final = 2  # int16


class Slot(IntEnum):
    """The header's int64 slots. Each has one writer process (named in the comment)."""

    MAGIC = 0  # app, once
    RING_SAMPLES = 1  # app, once: each ring's capacity
    HEARTBEAT_NS = 2  # host: time.monotonic_ns() of its last main-loop turn
    HOST_PID = 3  # host, at start
    FRAMES_IN = 4  # host: input callbacks since it started (copied by its main loop)
    FRAMES_OUT = 5  # host: output callbacks
    INPUT_OVERFLOWS = 6  # host
    OUTPUT_UNDERFLOWS = 7  # host
    CAPTURE_STAMP_NS = 8  # host's input callback: monotonic ns of its last publish ...
    CAPTURE_STAMP_POS = 9  # ... and the capture ring's write position after it
    PLAYBACK_STAMP_NS = 10  # host's output callback: monotonic ns of its last read
    WANT_INPUT = 11  # app: 1 while something needs the microphone (push-to-talk held, ...)
    WANT_OUTPUT = 12  # app: 1 while something needs the speakers (voice, a cue)
    INPUT_PAUSED = 13  # host: 1 while the input stream is stopped because nobody wants it
    OUTPUT_PAUSED = 14  # host: the same for the output stream
    CAPTURE_WRITTEN = 16  # host: the capture ring (see SharedSampleRing)
    CAPTURE_READ = 17  # app
    CAPTURE_OVERRUN = 18  # host
    CAPTURE_UNDERRUN = 19  # app
    PLAYBACK_WRITTEN = 20  # app
    PLAYBACK_READ = 21  # host
    PLAYBACK_OVERRUN = 22  # app
    PLAYBACK_UNDERRUN = 23  # host


class SharedSampleRing(SampleRing):
    """A :class:`SampleRing` over shared memory: samples in ``buffer``, positions and counters in
    four consecutive header slots starting at ``first`` (written, read, overrun, underrun)."""

    def __init__(self, samples: npt.NDArray[np.int16], header: memoryview, first: int) -> None:
        # No SampleRing.__init__: it would allocate a private buffer and plain-int positions.
        self._capacity = len(samples)
        self._buf = samples
        self._h = header
        self._w = first
        self.on_write = None
        self.on_read = None

    # The positions and counters SampleRing reads and assigns, kept in the shared header.
    @property
    def _written(self) -> int:
        return int(self._h[self._w])

    @_written.setter
    def _written(self, value: int) -> None:
        self._h[self._w] = value

    @property
    def _read(self) -> int:
        return int(self._h[self._w + 1])

    @_read.setter
    def _read(self, value: int) -> None:
        self._h[self._w + 1] = value

    @property
    def overrun_samples(self) -> int:
        return int(self._h[self._w + 2])

    @overrun_samples.setter
    def overrun_samples(self, value: int) -> None:
        self._h[self._w + 2] = value

    @property
    def underrun_samples(self) -> int:
        return int(self._h[self._w + 3])

    @underrun_samples.setter
    def underrun_samples(self, value: int) -> None:
        self._h[self._w + 3] = value


def block_bytes(ring_samples: int) -> int:
    """Size of a block holding two rings of ``ring_samples`` int16 samples."""
    return HEADER_BYTES + 2 * ring_samples * SAMPLE_BYTES


class SharedBlock:
    """The mapped block: header slots and the two rings. Made by :func:`create` (the app) or
    :func:`attach` (the host); ``close()`` unmaps it (the descriptor is closed by its owner)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, size)
        view = memoryview(self._map)
        self._view = view
        self.header = view[:HEADER_BYTES].cast("q")
        ring_samples = (size - HEADER_BYTES) // (2 * SAMPLE_BYTES)
        self.ring_samples = ring_samples
        cap: npt.NDArray[np.int16] = np.frombuffer(
            self._map, dtype=np.int16, count=ring_samples, offset=HEADER_BYTES
        )
        play: npt.NDArray[np.int16] = np.frombuffer(
            self._map,
            dtype=np.int16,
            count=ring_samples,
            offset=HEADER_BYTES + ring_samples * SAMPLE_BYTES,
        )
        self._arrays: list[Any] = [cap, play]
        self.capture = SharedSampleRing(cap, self.header, Slot.CAPTURE_WRITTEN)
        self.playback = SharedSampleRing(play, self.header, Slot.PLAYBACK_WRITTEN)

    def __getitem__(self, slot: Slot) -> int:
        return int(self.header[slot])

    def __setitem__(self, slot: Slot, value: int) -> None:
        self.header[slot] = value

    def close(self) -> None:
        """Unmap. The rings must not be used afterwards."""
        self.capture._buf = self.playback._buf = np.zeros(0, dtype=np.int16)
        self._arrays.clear()
        self.header.release()
        self._view.release()
        # A numpy view still exported somewhere: the GC unmaps it later.
        with contextlib.suppress(BufferError):
            self._map.close()


def _anonymous_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):  # Linux: memory with no name in any filesystem
        fd = os.memfd_create("voipclient-audio")  # close-on-exec: pass_fds hands it over
    else:  # other POSIX: a temporary file unlinked at once (tmpfs on most systems)
        handle, path = tempfile.mkstemp(prefix="voipclient-audio-")
        os.unlink(path)
        fd = handle
    os.ftruncate(fd, size)
    return fd


def create(ring_samples: int) -> SharedBlock:
    """A new zeroed block for two rings of ``ring_samples`` samples (the app's side)."""
    if sys.platform == "win32":
        raise OSError("the audio host's shared memory is POSIX-only")
    if ring_samples <= 0:
        raise ValueError(f"ring_samples must be positive, not {ring_samples}")
    size = block_bytes(ring_samples)
    fd = _anonymous_fd(size)
    block = SharedBlock(fd, size)
    block[Slot.MAGIC] = MAGIC
    block[Slot.RING_SAMPLES] = ring_samples
    return block


def attach(fd: int) -> SharedBlock:
    """Map the block the app passed as ``fd`` (the host's side); ValueError if it is not one."""
    size = os.fstat(fd).st_size
    if size <= HEADER_BYTES:
        raise ValueError(f"shared audio block too small ({size} bytes)")
    block = SharedBlock(fd, size)
    if block[Slot.MAGIC] != MAGIC or block_bytes(block[Slot.RING_SAMPLES]) != size:
        block.close()
        raise ValueError("shared audio block has another layout (app and host versions differ)")
    return block
