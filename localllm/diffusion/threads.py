"""Every core at work: heavy ops split their work across a pool of Python threads (numpy and BLAS
release the GIL), each calling single-threaded BLAS.

Measured on a busy 2-core machine, OpenBLAS's own threads lose badly on the many small products of
sliced attention and banded convolution (they spin and wait on each other); one BLAS thread per
worker, with the split done here, is steadier. The engine holds BLAS at one thread for a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

T = TypeVar("T")
WORKERS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_controller = None


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="images-op")
    return _pool


def run_split(items: Sequence[T], work: Callable[[Sequence[T]], None]) -> None:
    """``work`` on WORKERS contiguous shares of ``items`` at once (inline when there is one)."""
    n = min(WORKERS, len(items))
    if n <= 1:
        work(items)
        return
    bounds = np.linspace(0, len(items), n + 1).astype(int)
    futures = [pool().submit(work, items[bounds[i]:bounds[i + 1]]) for i in range(n)]
    for f in futures:
        f.result()


def elementwise(fn: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray, out: np.ndarray,
                min_size: int = 1 << 18) -> np.ndarray:
    """``fn(x_chunk, out_chunk)`` over cache-sized blocks of rows, on every worker.

    ``x`` may be a strided view (one half of a GEGLU projection): blocks run over its rows.
    """
    if x.size < min_size or x.ndim == 0:
        fn(x, out)
        return out
    last = x.shape[-1]
    x2, o2 = x.reshape(-1, last), out.reshape(-1, last)
    if not (np.shares_memory(x2, x) and np.shares_memory(o2, out)):  # reshape had to copy: no blocks
        fn(x, out)
        return out
    rows = max(1, (1 << 16) // last)
    starts = list(range(0, x2.shape[0], rows))

    def work(share: Sequence[int]) -> None:
        for s in share:
            fn(x2[s:s + rows], o2[s:s + rows])

    run_split(starts, work)
    return out


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # still correct, only slower on busy machines
        yield
        return
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
