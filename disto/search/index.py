"""The router of a distributed IVF index: trains once, places shard actors, adds with global ids, fans query
batches out and merges the per-shard top-k.

The router keeps a copy of the trained empty index and uses its coarse quantizer once per batch; the shards get
(queries, list ids, coarse distances) and run ``search_preassigned`` (the pattern of Faiss ``IndexShardsIVF``).
"""
from __future__ import annotations

import asyncio
import json
import operator
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from disto import (ActorDeadError, ActorRef, ClosedError, Cluster, DistoError, NodeLostError, collect, collect_all,
                   shared_array)

from ._faiss import as_ids, as_matrix, faiss
from .shard import IndexShard, _one_malloc_arena

LAYOUT = "layout.json"
TEMPLATE = "trained.faissindex"
MAX_K = 4096
STAGE_MIN = 1 << 16  # batches this big are staged in shared memory: shards on this host map them, no copy
STAGE_KEEP = 8       # staging blocks kept for reuse (their pages stay mapped: no page faults per batch)
_LOST = (NodeLostError, ActorDeadError, ClosedError)  # the replica is gone; another one may answer


@dataclass
class SearchResult:
    """Top-k of a batch. ``labels`` holds global ids, -1 where fewer than k were found. ``partial`` is True when
    some shards did not answer (only with ``allow_partial=True``); ``missing`` names them. ``timing`` has seconds:
    ``coarse`` (quantizer, and staging the batch), ``fanout`` (from sending to the last shard's answer),
    ``shard`` (the slowest shard's own Faiss search), ``overhead`` (fanout - shard: what disto adds), ``send`` and
    ``return`` (the two halves of it, from wall clocks: exact on one host), ``merge`` and ``total``."""

    distances: np.ndarray
    labels: np.ndarray
    partial: bool = False
    missing: tuple[int, ...] = ()
    timing: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Any:  # D, I = await index.search(...)
        return iter((self.distances, self.labels))


def _int_in(v: Any, name: str, lo: int, hi: int) -> int:
    try:
        if isinstance(v, bool):
            raise TypeError
        i = operator.index(v)  # ints and numpy integers; not floats, not bools
    except TypeError:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}") from None
    if not lo <= i <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    return i


def _placement(shard: int, replica: int, replicas: int, nodes: int) -> int:
    # replicas of one shard land on distinct nodes whenever there are enough of them
    return (shard * replicas + replica) % nodes


class DistributedIndex:
    """An IVF index (IVF-PQ, IVF-Flat, IVF-SQ, fast-scan PQ: any Faiss ``IndexIVF``) split over shard actors.

    Make one with :meth:`create` (train, then place empty shards) or :meth:`load` (a saved one), then
    ``await index.add(x)`` and ``await index.search(q, k=10, nprobe=16)``.
    """

    inline_coarse = 64  # batches up to this many queries are quantized on the loop; bigger ones in a thread

    def __init__(self, cluster: Cluster, template: Any, shards: list[list[ActorRef]], *, next_id: int = 0,
                 factory: str = "", threads: int = 1) -> None:
        self._cluster = cluster
        # the coarse quantizer runs in a thread of ours whose OpenMP team is `threads` (default 1: on a small host
        # the shards need the cores, and an idle OpenMP team spins)
        self.threads = max(1, threads)
        _one_malloc_arena()  # the coarse quantizer's thread would otherwise fault its buffers in every batch
        self._pool = ThreadPoolExecutor(1, "disto-router", faiss.omp_set_num_threads, (self.threads,))
        self._template = template
        self._ivf = faiss.extract_index_ivf(template)
        self.d = int(template.d)
        self.nlist = int(self._ivf.nlist)
        self.keep_max = template.metric_type == faiss.METRIC_INNER_PRODUCT
        self.factory = factory
        self.shards = shards
        self._down: list[set[int]] = [set() for _ in shards]  # replicas that stopped answering, per shard
        self._turn = list(range(len(shards)))  # first picks spread over the replicas' nodes
        self._next_id = next_id
        self._staging: list[np.ndarray] = []
        self.nprobe = 1

    # --------------------------------------------------------------- building
    @staticmethod
    def train(factory: str, x: Any, metric: str = "l2") -> Any:
        """Train an empty index in this process; it becomes the template every shard starts from."""
        arr = x if hasattr(x, "shape") else np.asarray(x, dtype=np.float32)
        if len(arr.shape) != 2:
            raise ValueError(f"training vectors must have shape (n, d), got {tuple(arr.shape)}")
        sample = as_matrix(arr, arr.shape[1], "training vectors")
        m = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}.get(metric)
        if m is None:
            raise ValueError(f"metric must be 'l2' or 'ip', not {metric!r}")
        index = faiss.index_factory(sample.shape[1], factory, m)
        if not isinstance(index, faiss.IndexIVF):
            raise ValueError(f"{factory!r} is not a plain IVF index (IVF<nlist>,<codec>); pre-transforms such as "
                             "OPQ or PCA are not supported by the sharded router")
        index.train(sample)
        return index

    @classmethod
    async def create(cls, cluster: Cluster, factory: str, train: Any, *, shards: int = 2, replicas: int = 1,
                     metric: str = "l2", threads_per_shard: int = 1, nodes: Sequence[Any] | None = None,
                     nprobe: int = 1, threads: int = 1) -> "DistributedIndex":
        """Train ``factory`` (e.g. ``"IVF1024,PQ16"``) on ``train`` here, then send the trained empty index to
        ``shards`` x ``replicas`` shard actors spread over ``nodes`` (default: the cluster's worker nodes).
        ``threads`` is the OpenMP team of the router's coarse quantizer, ``threads_per_shard`` each shard's."""
        return await cls.from_trained(cluster, cls.train(factory, train, metric), shards=shards, replicas=replicas,
                                      threads_per_shard=threads_per_shard, nodes=nodes, nprobe=nprobe,
                                      factory=factory, threads=threads)

    @classmethod
    async def from_trained(cls, cluster: Cluster, template: Any, *, shards: int = 2, replicas: int = 1,
                           threads_per_shard: int = 1, nodes: Sequence[Any] | None = None, nprobe: int = 1,
                           factory: str = "", threads: int = 1) -> "DistributedIndex":
        """Like :meth:`create`, from an index trained already (it must be empty: vectors are added with
        :meth:`add`)."""
        if shards < 1 or replicas < 1:
            raise ValueError("shards and replicas must be >= 1")
        if not isinstance(template, faiss.IndexIVF) or not template.is_trained:
            raise ValueError("the template must be a trained Faiss IndexIVF")
        if template.ntotal:
            raise ValueError(f"the template must be empty (it holds {template.ntotal} vectors)")
        blob = faiss.serialize_index(template)
        refs = await cls._place(cluster, nodes, shards, replicas,
                                lambda s: {"index_bytes": blob, "threads": threads_per_shard})
        self = cls(cluster, faiss.deserialize_index(blob), refs, factory=factory, threads=threads)
        self.nprobe = nprobe
        return self

    @staticmethod
    async def _place(cluster: Cluster, nodes: Sequence[Any] | None, shards: int, replicas: int,
                     kwargs: Any) -> list[list[ActorRef]]:
        nodes = list(nodes if nodes is not None else cluster.nodes)
        if not nodes:
            raise DistoError("the cluster has no worker nodes to hold shards")
        futs = [nodes[_placement(s, r, replicas, len(nodes))].spawn(IndexShard, s, **kwargs(s))
                for s in range(shards) for r in range(replicas)]
        flat = await collect_all(futs)
        failed = [x for x in flat if isinstance(x, BaseException)]
        if failed:  # leave no half-built index behind
            await collect_all(cluster.stop(x) for x in flat if not isinstance(x, BaseException))
            raise failed[0]
        return [flat[s * replicas:(s + 1) * replicas] for s in range(shards)]

    # --------------------------------------------------------------- adding
    async def add(self, x: Any, ids: Any = None, *, batch: int = 1 << 16, inflight: int = 4) -> int:
        """Add vectors (numpy or torch, shape (n, d)) with global ``ids`` (default: the next free ones). Each
        batch is split into one contiguous slice per shard and sent to every replica; up to ``inflight`` batches
        are on the wire at once. Returns the number of vectors in the index."""
        x = as_matrix(x, self.d)
        n = len(x)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = as_ids(ids, n)
        if n:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        pending: list[Any] = []
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            bounds = np.linspace(start, stop, len(self.shards) + 1).astype(np.int64)
            for s, reps in enumerate(self.shards):
                lo, hi = int(bounds[s]), int(bounds[s + 1])
                if hi > lo:
                    pending.extend(self._add_to(s, r, x[lo:hi], ids[lo:hi]) for r in range(len(reps)))
            if len(pending) >= inflight * len(self.shards):
                await collect(pending)
                pending = []
        if pending:
            await collect(pending)
        return await self.ntotal()

    async def _add_to(self, s: int, r: int, x: np.ndarray, ids: np.ndarray) -> int:
        try:
            return await self.shards[s][r].add(x, ids)
        except BaseException:
            # this replica may now miss vectors: never let it answer queries again
            self._down[s].add(r)
            raise

    async def ntotal(self) -> int:
        """Vectors in the index (each shard counted once, from a live replica)."""
        infos = await collect(self._live(s)[0].info() for s in range(len(self.shards)))
        return sum(i["ntotal"] for i in infos)

    # --------------------------------------------------------------- searching
    def _live(self, s: int) -> list[ActorRef]:
        reps = [ref for r, ref in enumerate(self.shards[s]) if r not in self._down[s]]
        if not reps:
            raise NodeLostError(f"shard {s} has no live replica left")
        return reps

    def _pick(self, s: int) -> int:
        """The replica of shard ``s`` whose turn it is (round robin over the live ones)."""
        reps = self.shards[s]
        down = self._down[s]
        for _ in range(len(reps)):
            r = self._turn[s] % len(reps)
            self._turn[s] += 1
            if r not in down:
                return r
        return -1

    async def search(self, queries: Any, k: int = 10, nprobe: int | None = None, *,
                     allow_partial: bool = False) -> SearchResult:
        """The ``k`` nearest neighbours of each query, searching ``nprobe`` lists (default: ``self.nprobe``).

        A shard whose replicas are all lost fails the search with NodeLostError, or, with
        ``allow_partial=True``, the live shards' merged result comes back with ``partial=True``."""
        t0 = time.perf_counter()
        xq = as_matrix(queries, self.d, "queries")
        k = _int_in(k, "k", 1, MAX_K)
        nprobe = _int_in(self.nprobe if nprobe is None else nprobe, "nprobe", 1, self.nlist)
        block = self._stage(len(xq), nprobe)
        if block is not None:
            xs, assign, coarse = self._carve(block, xq, nprobe)
            await self._coarse(xs, nprobe, coarse, assign)
        else:
            coarse, assign = await self._coarse(xq, nprobe)
            xs = xq
        t1 = time.perf_counter()
        w1 = time.time()
        outcomes = await self._fan_out(xs, k, assign, coarse)
        if block is not None and len(self._staging) < STAGE_KEEP:
            self._staging.append(block)  # every shard has answered (or is gone): nobody reads it any more
        t2 = time.perf_counter()
        w2 = time.time()
        nshards = len(self.shards)
        missing = tuple(s for s, o in enumerate(outcomes) if isinstance(o, BaseException))
        for s in missing:
            err = outcomes[s]
            if not isinstance(err, _LOST):
                raise err
            if not allow_partial or len(missing) == nshards:
                raise NodeLostError(f"shard {s} of {nshards} did not answer: {err}",
                                    node=getattr(err, "node", None)) from err
        live = [o for o in outcomes if not isinstance(o, BaseException)]
        if len(live) == 1:
            D, I = live[0][0], live[0][1]
        else:
            D, I = faiss.merge_knn_results(np.stack([o[0] for o in live]), np.stack([o[1] for o in live]),
                                           keep_max=self.keep_max)
        t3 = time.perf_counter()
        slowest = max(live, key=lambda o: o[3] - o[2])
        shard_s = slowest[3] - slowest[2]
        # wall clocks of this host and the shards' (exact on one host; across hosts only as good as NTP)
        timing = {"coarse": t1 - t0, "fanout": t2 - t1, "shard": shard_s, "overhead": (t2 - t1) - shard_s,
                  "send": max(o[2] for o in live) - w1, "return": w2 - slowest[3], "merge": t3 - t2,
                  "total": t3 - t0}
        return SearchResult(D, I, bool(missing), missing, timing)

    def _stage(self, n: int, nprobe: int) -> np.ndarray | None:
        """A shared-memory block for a batch of ``n`` queries (reused), or None for a small batch."""
        need = n * nprobe * 12 + n * self.d * 4
        if need < STAGE_MIN:
            return None
        fits = [i for i, b in enumerate(self._staging) if b.nbytes >= need]
        if fits:
            return self._staging.pop(min(fits, key=lambda i: self._staging[i].nbytes))
        return shared_array(1 << (need - 1).bit_length(), np.uint8)

    def _carve(self, block: np.ndarray, xq: np.ndarray, nprobe: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, d = xq.shape
        a_end = n * nprobe * 8  # int64 first: every offset stays 8-byte aligned
        x_end = a_end + n * d * 4
        assign = block[:a_end].view(np.int64).reshape(n, nprobe)
        xs = block[a_end:x_end].view(np.float32).reshape(n, d)
        coarse = block[x_end:x_end + n * nprobe * 4].view(np.float32).reshape(n, nprobe)
        np.copyto(xs, xq)
        return xs, assign, coarse

    async def _coarse(self, xq: np.ndarray, nprobe: int, D: np.ndarray | None = None,
                      I: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self._ivf.quantizer
        if len(xq) <= self.inline_coarse:
            # OpenMP settings are per thread: use ours here too, and leave the caller's as they were (an idle
            # team of the default size spins and takes the cores the shards need)
            prev = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.threads)
            try:
                return q.search(xq, nprobe, D=D, I=I)
            finally:
                faiss.omp_set_num_threads(prev)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: q.search(xq, nprobe, D=D, I=I))

    async def _fan_out(self, xq: np.ndarray, k: int, assign: np.ndarray, coarse: np.ndarray) -> list[Any]:
        """Each shard's (D, I, seconds), or the exception that stopped it; lost replicas are replaced by the
        shard's other replicas until one answers."""
        chosen = [self._pick(s) for s in range(len(self.shards))]
        outcomes: list[Any] = await collect_all(
            self.shards[s][r].search(xq, k, assign, coarse) if r >= 0 else _no_replica(s)
            for s, r in enumerate(chosen))
        for s, r in enumerate(chosen):
            while isinstance(outcomes[s], _LOST):
                if r >= 0:
                    self._down[s].add(r)
                r = self._pick(s)
                if r < 0:
                    break
                try:
                    outcomes[s] = await self.shards[s][r].search(xq, k, assign, coarse)
                except _LOST as e:
                    outcomes[s] = e
        return outcomes

    # --------------------------------------------------------------- persistence
    async def save(self, directory: str) -> None:
        """Each shard writes its part next to the trained template and the layout. ``directory`` must be the
        same path on the shards' nodes (one host, or a shared filesystem). The layout is written last, so a
        directory is loadable only once every part is complete."""
        os.makedirs(directory, exist_ok=True)
        files = [f"shard-{s:03d}.faissindex" for s in range(len(self.shards))]
        counts = await collect(self._live(s)[0].save(os.path.join(os.path.abspath(directory), f))
                               for s, f in enumerate(files))
        faiss.write_index(self._template, os.path.join(directory, TEMPLATE))
        layout = {"format": 1, "d": self.d, "nlist": self.nlist, "factory": self.factory,
                  "metric": "ip" if self.keep_max else "l2", "next_id": self._next_id, "template": TEMPLATE,
                  "shards": [{"file": f, "ntotal": c} for f, c in zip(files, counts)]}
        tmp = os.path.join(directory, LAYOUT + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(layout, fh, indent=1)
        os.replace(tmp, os.path.join(directory, LAYOUT))

    @classmethod
    async def load(cls, cluster: Cluster, directory: str, *, replicas: int = 1, threads_per_shard: int = 1,
                   nodes: Sequence[Any] | None = None, nprobe: int = 1, threads: int = 1) -> "DistributedIndex":
        """Start shard actors from a directory written by :meth:`save` (the shard count is the saved one)."""
        path = os.path.join(directory, LAYOUT)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no saved distributed index in {directory} ({LAYOUT} is missing)")
        with open(path) as fh:
            layout = json.load(fh)
        if layout.get("format") != 1:
            raise ValueError(f"{path}: unknown layout format {layout.get('format')!r}")
        template = faiss.read_index(os.path.join(directory, layout["template"]))
        root = os.path.abspath(directory)
        entries = layout["shards"]
        refs = await cls._place(cluster, nodes, len(entries), replicas,
                                lambda s: {"path": os.path.join(root, entries[s]["file"]),
                                           "threads": threads_per_shard})
        self = cls(cluster, template, refs, next_id=int(layout["next_id"]), factory=layout.get("factory", ""),
                   threads=threads)
        self.nprobe = nprobe
        infos = await collect(ref.info() for reps in refs for ref in reps)
        for info in infos:
            want = entries[info["shard"]]["ntotal"]
            if info["ntotal"] != want:
                await self.close()
                raise ValueError(f"shard {info['shard']} holds {info['ntotal']} vectors, the layout says {want}")
        return self

    async def close(self) -> None:
        """Stop every shard actor (their memory is freed; the saved files stay)."""
        await collect_all(self._cluster.stop(ref) for reps in self.shards for ref in reps)
        self._pool.shutdown(wait=False)

    def __repr__(self) -> str:
        reps = len(self.shards[0]) if self.shards else 0
        return f"<DistributedIndex d={self.d} nlist={self.nlist} shards={len(self.shards)} replicas={reps}>"


async def _no_replica(s: int) -> Any:
    raise NodeLostError(f"shard {s} has no live replica left")
