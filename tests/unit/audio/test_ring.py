"""SampleRing: wrap-around, overrun/underrun counting, zero fill, order against a deque model."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.audio.engine import AudioEngine, DeviceEvent, NullEngine
from voipclient.audio.ring import SampleRing


def arr(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int16)


def test_empty_ring_counts() -> None:
    ring = SampleRing(8)
    assert ring.capacity == 8
    assert ring.available == 0
    assert ring.free == 8
    assert ring.overrun_samples == 0
    assert ring.underrun_samples == 0


def test_rejects_non_positive_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SampleRing(0)


def test_write_then_read_round_trip() -> None:
    ring = SampleRing(8)
    assert ring.write(arr(1, 2, 3)) == 3
    assert ring.available == 3
    assert ring.free == 5
    out = np.full(3, 99, dtype=np.int16)
    assert ring.read_into(out) == 3
    assert out.tolist() == [1, 2, 3]
    assert ring.available == 0
    assert ring.underrun_samples == 0


def test_wrap_around_write_and_read() -> None:
    ring = SampleRing(5)
    out = np.zeros(3, dtype=np.int16)
    ring.write(arr(1, 2, 3))
    ring.read_into(out)
    # Write position is 3: four samples wrap (2 at the end, 2 at the start).
    assert ring.write(arr(4, 5, 6, 7)) == 4
    out4 = np.zeros(4, dtype=np.int16)
    assert ring.read_into(out4) == 4
    assert out4.tolist() == [4, 5, 6, 7]
    assert ring.overrun_samples == 0


def test_overrun_drops_newest_and_counts() -> None:
    ring = SampleRing(4)
    assert ring.write(arr(1, 2, 3)) == 3
    assert ring.write(arr(4, 5, 6)) == 1
    assert ring.overrun_samples == 2
    assert ring.free == 0
    assert ring.write(arr(7)) == 0
    assert ring.overrun_samples == 3
    out = np.zeros(4, dtype=np.int16)
    ring.read_into(out)
    assert out.tolist() == [1, 2, 3, 4]


def test_underrun_zero_fills_rest_and_counts() -> None:
    ring = SampleRing(8)
    ring.write(arr(5, 6))
    out = np.full(5, 77, dtype=np.int16)
    assert ring.read_into(out) == 2
    assert out.tolist() == [5, 6, 0, 0, 0]
    assert ring.underrun_samples == 3
    # Reading from an empty ring fills the whole buffer with zeros.
    out[:] = 77
    assert ring.read_into(out) == 0
    assert out.tolist() == [0, 0, 0, 0, 0]
    assert ring.underrun_samples == 8


def test_discard() -> None:
    ring = SampleRing(8)
    ring.write(arr(1, 2, 3, 4))
    assert ring.discard(1) == 1
    assert ring.discard() == 3
    assert ring.available == 0
    assert ring.discard() == 0


def test_float_dtype() -> None:
    ring = SampleRing(4, dtype=np.float32)
    ring.write(np.array([0.5, -0.25], dtype=np.float32))
    out = np.zeros(3, dtype=np.float32)
    assert ring.read_into(out) == 2
    assert out.tolist() == [0.5, -0.25, 0.0]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.integers(0, 20)),
        st.tuples(st.just("r"), st.integers(0, 20)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 16), operations=ops)
def test_random_sequences_match_deque_model(
    capacity: int, operations: list[tuple[str, int]]
) -> None:
    ring = SampleRing(capacity)
    model: deque[int] = deque()
    counter = 0
    overruns = underruns = 0
    for op, n in operations:
        if op == "w":
            data = np.arange(counter, counter + n, dtype=np.int64).astype(np.int16)
            counter += n
            fit = min(n, capacity - len(model))
            assert ring.write(data) == fit
            model.extend(int(x) for x in data[:fit])
            overruns += n - fit
        else:
            out = np.full(n, 12345, dtype=np.int16)
            got = min(n, len(model))
            assert ring.read_into(out) == got
            expected = [model.popleft() for _ in range(got)] + [0] * (n - got)
            assert out.tolist() == expected
            underruns += n - got
        assert 0 <= ring.available <= capacity
        assert ring.available == len(model)
        assert ring.free == capacity - len(model)
        assert ring.overrun_samples == overruns
        assert ring.underrun_samples == underruns


def test_null_engine_discards_playback_and_captures_nothing() -> None:
    events: list[DeviceEvent] = []
    engine: AudioEngine = NullEngine(on_event=events.append)
    assert isinstance(engine, NullEngine)
    engine.start()
    engine.playback.write(np.ones(960 * 2, dtype=np.int16))
    assert engine.tick(0.04) == 1920
    assert engine.playback.available == 0
    assert engine.capture.available == 0
    stats = engine.stats()
    assert (stats.frames_in, stats.frames_out, stats.overruns, stats.underruns) == (0, 2, 0, 0)
    assert engine.sample_rate == 48_000
    assert engine.frame_samples == 960
    engine.stop()
    assert [e.kind for e in events] == ["started", "stopped"]
