"""One shard of a distributed IVF index: a disto actor around a Faiss ``IndexIVF`` holding a slice of the
database. Every shard starts from the same trained empty index (so their codes are comparable and their results
merge exactly); the router sends queries already assigned to inverted lists (``search_preassigned``)."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from disto import Actor

from ._faiss import faiss, as_ids, as_matrix
from .link import LinkServer


def _one_malloc_arena() -> None:
    """glibc gives each new thread its own malloc arena, and a thread arena hands memory back to the kernel
    eagerly: Faiss's per-search buffers are then faulted in again on every search (measured: 30% slower in a
    worker thread than on the main thread). One arena for the process keeps them mapped."""
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


class IndexShard(Actor):
    """Holds one slice of the database (some inverted lists, or a slice of every list). Searches run one at a
    time in a thread (Faiss drops the GIL), so the node's event loop keeps running while a batch is scored: from
    a router on this host through :meth:`open_link`'s socket, otherwise through :meth:`search`."""

    max_concurrency = 1  # one Faiss call at a time per shard: its OpenMP pool is sized for one
    inline_work = 256    # queries x nprobe up to which a search runs on the loop (a thread hop costs more)

    def __init__(self, shard: int, index_bytes: np.ndarray | None = None, path: str | None = None,
                 threads: int = 1) -> None:
        if (index_bytes is None) == (path is None):
            raise ValueError("give the trained index as bytes or a path to load, not both or neither")
        threads = max(1, int(threads))
        faiss.omp_set_num_threads(threads)
        _one_malloc_arena()  # before the worker thread exists
        # OpenMP's thread count is per calling thread: the worker thread sets its own, once
        self._pool = ThreadPoolExecutor(1, f"disto-shard-{shard}", faiss.omp_set_num_threads, (threads,))
        self._threads = threads
        self._lock = threading.Lock()  # one Faiss search at a time, whichever path it came by (nprobe is state)
        self._link: LinkServer | None = None
        self.shard = shard
        if path is not None:
            if not os.path.exists(path):
                raise FileNotFoundError(f"shard {shard}: no index file at {path}")
            self.index = faiss.read_index(path)
        else:
            self.index = faiss.deserialize_index(np.ascontiguousarray(index_bytes, dtype=np.uint8))
        if not isinstance(self.index, faiss.IndexIVF):
            raise TypeError(f"a shard index must be a plain Faiss IndexIVF (no pre-transform), "
                            f"not {type(self.index).__name__}")
        self.ivf = self.index

    def info(self) -> dict[str, Any]:
        return {"shard": self.shard, "ntotal": int(self.index.ntotal), "d": int(self.index.d),
                "nlist": int(self.ivf.nlist), "pid": os.getpid()}

    async def add(self, x: np.ndarray, ids: np.ndarray, lists: np.ndarray | None = None) -> int:
        """Add vectors with their global ids; ``lists`` (n,) are their inverted lists when the router has
        assigned them already (sharding by lists), else this shard's quantizer assigns them."""
        x, ids = as_matrix(x, self.index.d), as_ids(ids, len(x))
        if lists is not None:
            lists = np.asarray(lists)
            if lists.shape != (len(x),) or not np.issubdtype(lists.dtype, np.integer):
                raise ValueError(f"lists must be {len(x)} integers, got {lists.dtype} {lists.shape}")
            lists = np.ascontiguousarray(lists, dtype=np.int64)
            if len(lists) and (lists.min() < 0 or lists.max() >= self.ivf.nlist):
                raise ValueError(f"list ids must be in [0, {self.ivf.nlist})")
        await asyncio.get_running_loop().run_in_executor(self._pool, self._add, x, ids, lists)
        return int(self.index.ntotal)

    def _add(self, x: np.ndarray, ids: np.ndarray, lists: np.ndarray | None = None) -> None:
        with self._lock:
            if lists is None:
                self.index.add_with_ids(x, ids)
            else:
                self.ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    def open_link(self) -> dict[str, object]:
        """Where a router on this host connects for the fast path (see :mod:`disto.search.link`), with the
        secret it must present; started on first use."""
        if self._link is None:
            self._link = LinkServer(self._search_into, int(self.index.d), int(self.ivf.nlist), 1 << 16,
                                    name=str(self.shard),
                                    on_thread_start=lambda: faiss.omp_set_num_threads(self._threads))
        return self._link.address()

    async def search(self, xq: np.ndarray, k: int, assign: np.ndarray, coarse: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Top-k of each query over the lists in ``assign`` (n x nprobe, from the router's coarse quantizer).
        Returns distances, global ids, and the wall-clock times Faiss started and ended (the router splits its
        wait into transfer and search with them)."""
        D = np.empty((len(xq), k), np.float32)
        I = np.empty((len(xq), k), np.int64)
        # a small batch runs on the loop (a thread hop costs more), unless a link search holds the index
        if assign.size <= self.inline_work and self._lock.acquire(blocking=False):
            try:
                t0, t1 = self._run(xq, k, assign, coarse, D, I)
            finally:
                self._lock.release()
        else:
            t0, t1 = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._search_into, xq, k, assign, coarse, D, I)
        return D, I, t0, t1

    def _search_into(self, xq: np.ndarray, k: int, assign: np.ndarray, coarse: np.ndarray, D: np.ndarray,
                     I: np.ndarray) -> tuple[float, float]:
        with self._lock:
            return self._run(xq, k, assign, coarse, D, I)

    def _run(self, xq: np.ndarray, k: int, assign: np.ndarray, coarse: np.ndarray, D: np.ndarray,
             I: np.ndarray) -> tuple[float, float]:
        ivf = self.ivf
        if ivf is None:
            raise RuntimeError(f"shard {self.shard} is stopped")
        t0 = time.time()
        ivf.nprobe = assign.shape[1]  # the Python wrapper checks Iq against it
        ivf.search_preassigned(xq, k, assign, coarse, D=D, I=I)
        return t0, time.time()

    def save(self, path: str) -> int:
        """Write this shard's part (atomically: a crash never leaves half a file under the final name)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        faiss.write_index(self.index, tmp)
        os.replace(tmp, path)
        return int(self.index.ntotal)

    def reset(self) -> None:
        with self._lock:
            self.index.reset()

    def on_stop(self) -> None:
        if self._link is not None:
            self._link.close()
        self._pool.shutdown(wait=False)
        self.index = self.ivf = None  # a search still running holds its own reference
