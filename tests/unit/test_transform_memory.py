"""The transformer's memory per chunk: bounded by the chunk's size, and reused from one chunk to the next."""

import contextvars
import gc
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from pgmeta_shared.chunkthread import ChunkThread
from pgmeta_shared.claimcheck import MAX_CHUNK_RAW_BYTES, batch_records
from pgmeta_transformer.atlas import render_chunk

from .records import CONNECTION_QN, column


def full_chunk() -> list[dict[str, Any]]:
    """The first chunk the extractor would cut from a 20-columns-a-table catalog (as big as chunks get)."""
    columns = (
        column(f"s{t // 200:03d}", f"t{t:04d}", f"col_{c:02d}", ordinal=c + 1, is_nullable=c > 0)
        for t in range(1_000)
        for c in range(20)
    )
    return next(batch_records(columns))


def test_rendering_a_chunk_needs_a_few_times_its_size_not_ten() -> None:
    records = full_chunk()
    raw_bytes = len(orjson.dumps(records))
    assert raw_bytes > MAX_CHUNK_RAW_BYTES // 2  # a chunk cut by size, not by count
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        parts, fingerprints = render_chunk(CONNECTION_QN, records, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(b.count(b"\n") for b in parts.values()) == len(fingerprints) == len(records)
    # Output (~1.4x the raw JSON) and fingerprints included. Holding orjson's lines in a list took ~18x: each
    # line keeps the 8 KiB buffer orjson wrote it in.
    assert peak - before < 4 * raw_bytes, f"rendering {raw_bytes} bytes of records peaked at {peak - before}"


def test_chunk_work_runs_on_one_thread_whichever_thread_asks() -> None:
    chunk_thread = ChunkThread("test-chunk")
    running = threading.Lock()  # held while a piece of work runs: a second one at the same time fails it
    workers: set[int] = set()

    def work() -> int:
        assert running.acquire(blocking=False), "two chunks at once"
        try:
            workers.add(threading.get_ident())
            return threading.get_ident()
        finally:
            running.release()

    with ThreadPoolExecutor(max_workers=8) as callers:
        results = list(callers.map(lambda _: chunk_thread.run(work), range(40)))
    assert len(workers) == 1
    assert set(results) == workers
    assert threading.get_ident() not in workers


def test_chunk_work_keeps_the_callers_context_and_raises_its_errors() -> None:
    chunk_thread = ChunkThread("test-chunk")
    current_run: contextvars.ContextVar[str] = contextvars.ContextVar("current_run")
    current_run.set("run-1")
    assert chunk_thread.run(current_run.get) == "run-1"

    def fail() -> None:
        raise ValueError("bad chunk")

    with pytest.raises(ValueError, match="bad chunk"):
        chunk_thread.run(fail)
    assert chunk_thread.run(lambda: 7) == 7  # the thread survives a failed chunk


def test_chunk_work_runs_without_the_cyclic_collector_which_resumes_after_it() -> None:
    chunk_thread = ChunkThread("test-chunk")

    def fail() -> None:
        raise ValueError("bad chunk")

    assert gc.isenabled()
    assert chunk_thread.run(gc.isenabled) is False
    with pytest.raises(ValueError, match="bad chunk"):
        chunk_thread.run(fail)
    assert gc.isenabled()  # resumed after a failed chunk too
    gc.disable()  # paused by someone else: chunk work leaves it paused
    try:
        assert chunk_thread.run(gc.isenabled) is False
        assert not gc.isenabled()
    finally:
        gc.enable()
