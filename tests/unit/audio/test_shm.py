"""The shared block of the audio host: a SharedSampleRing behaves exactly as a SampleRing (the
same deque model), and two mappings of one block see each other's samples and positions, as the
app and the host do (here in one process: the same descriptor mapped twice)."""

from __future__ import annotations

import os
import tempfile
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.audio import shm

ops = st.lists(st.tuples(st.sampled_from("wr"), st.integers(0, 24)), max_size=60)


@pytest.fixture
def pair() -> tuple[shm.SharedBlock, shm.SharedBlock]:
    app = shm.create(16)
    host = shm.attach(os.dup(app.fd))
    yield app, host
    for block in (host, app):
        block.close()
        os.close(block.fd)


@settings(max_examples=150, deadline=None)
@given(operations=ops)
def test_a_ring_across_two_mappings_matches_the_deque_model(
    operations: list[tuple[str, int]],
) -> None:
    app = shm.create(16)
    host = shm.attach(os.dup(app.fd))
    try:
        writer, reader = host.capture, app.capture  # the host writes, the app reads
        model: deque[int] = deque()
        counter = overruns = underruns = 0
        for op, n in operations:
            if op == "w":
                data = np.arange(counter, counter + n, dtype=np.int64).astype(np.int16)
                counter += n
                fit = min(n, 16 - len(model))
                assert writer.write(data) == fit
                model.extend(int(x) for x in data[:fit])
                overruns += n - fit
            else:
                out = np.full(n, 12345, dtype=np.int16)
                got = min(n, len(model))
                assert reader.read_into(out) == got
                assert out.tolist() == [model.popleft() for _ in range(got)] + [0] * (n - got)
                underruns += n - got
            # both sides see the same positions and counters at every step
            for ring in (writer, reader):
                assert ring.available == len(model) and ring.free == 16 - len(model)
                assert ring.overrun_samples == overruns
                assert ring.underrun_samples == underruns
    finally:
        for block in (host, app):
            block.close()
            os.close(block.fd)


def test_the_two_rings_and_the_header_are_separate(pair: tuple[shm.SharedBlock, ...]) -> None:
    app, host = pair
    app.playback.write(np.arange(1, 11, dtype=np.int16))
    host.capture.write(np.full(5, -7, dtype=np.int16))
    out = np.zeros(10, dtype=np.int16)
    assert host.playback.read_into(out) == 10 and out.tolist() == list(range(1, 11))
    cap = np.zeros(5, dtype=np.int16)
    assert app.capture.read_into(cap) == 5 and cap.tolist() == [-7] * 5
    host[shm.Slot.HEARTBEAT_NS] = 123
    assert app[shm.Slot.HEARTBEAT_NS] == 123
    assert app[shm.Slot.CAPTURE_WRITTEN] == 5 and app[shm.Slot.PLAYBACK_READ] == 10


def test_hooks_are_per_process_and_called_after_the_publish(
    pair: tuple[shm.SharedBlock, ...],
) -> None:
    app, host = pair
    seen: list[int] = []
    host.capture.on_write = lambda: seen.append(app.capture.available)
    host.capture.write(np.ones(4, dtype=np.int16))
    assert seen == [4]  # the other mapping already sees the samples when the hook runs
    assert app.capture.on_write is None


def test_attach_refuses_what_is_not_a_block() -> None:
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        os.ftruncate(fd, shm.block_bytes(16))  # the right size, but no magic number
        with pytest.raises(ValueError, match="another layout"):
            shm.attach(fd)
        os.ftruncate(fd, 8)
        with pytest.raises(ValueError, match="too small"):
            shm.attach(fd)


def test_create_rejects_a_bad_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        shm.create(0)
