"""Replaying a trace from a file streams it: peak memory follows the chunk size,
not the trace size (traces and replay)."""
from __future__ import annotations

import tracemalloc

import iopf
from iopf import trace

CHUNK = 1 << 14


def peak_bytes(path) -> int:
    tracemalloc.start()
    try:
        report = iopf.replay(trace.iter_chunks(path, chunk_size=CHUNK), batch_size=CHUNK,
                             service_time=5_000)
        assert report.stats["pending_now"] == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_bounded_by_the_chunk_not_the_trace(tmp_path):
    small, large = tmp_path / "small.npy", tmp_path / "large.npy"
    trace.save(small, trace.synthetic(200_000, seed=1))
    trace.save(large, trace.synthetic(1_600_000, seed=1))
    p_small, p_large = peak_bytes(small), peak_bytes(large)
    # 8x the trace, about the same peak (a loaded trace alone would be 83 MB).
    assert p_large < 1.5 * p_small + (4 << 20), (p_small, p_large)
    assert p_large < 40 << 20
