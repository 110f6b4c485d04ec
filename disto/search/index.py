"""The router of a distributed IVF index: trains once, places shard actors, adds with global ids, fans query
batches out and merges the per-shard top-k.

The router keeps a copy of the trained empty index and uses its coarse quantizer once per batch; the shards get
(queries, list ids, coarse distances) and run ``search_preassigned`` (the pattern of Faiss ``IndexShardsIVF``).

By default the database is sharded by inverted lists, not by vectors: each list lives whole on one shard, so a
shard computes the per-list distance tables of a query only for its own lists (with vector sharding every shard
repeats them for all ``nprobe`` lists) and skips the others, which are empty there. Results are the same either
way: the union of the shards is the single index. Shards on the router's host are searched through
:mod:`disto.search.link` (shared memory and a Unix socket); others through actor calls.
"""
from __future__ import annotations

import asyncio
import functools
import heapq
import json
import operator
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from disto import ActorDeadError, ActorRef, ClosedError, Cluster, DistoError, NodeLostError, collect, collect_all

from ._faiss import as_ids, as_matrix, faiss
from .link import BlockPool, Layout, Replies, ShardLink
from .shard import IndexShard, _one_malloc_arena

LAYOUT = "layout.json"
TEMPLATE = "trained.faissindex"
MAX_K = 4096
STAGE_KEEP = 8       # batch blocks kept for reuse (their pages stay mapped: no page faults per batch)
SHARDING = ("lists", "vectors")
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


def balance_lists(lists: np.ndarray, nlist: int, shards: int) -> np.ndarray:
    """The shard that owns each inverted list, given the lists of a sample of the data. A list's scan work per
    batch grows as its size (the codes scanned) times how often queries probe it (also about its size, when
    queries look like the data), so lists are dealt out largest (size+1)^2 first to the least loaded shard."""
    sizes = np.bincount(np.asarray(lists, dtype=np.int64), minlength=nlist)[:nlist].astype(np.float64)
    work = (sizes + 1.0) ** 2
    owner = np.empty(nlist, dtype=np.int32)
    heap = [(0.0, s) for s in range(shards)]
    for lst in np.argsort(-work, kind="stable"):
        load, s = heapq.heappop(heap)
        owner[lst] = s
        heapq.heappush(heap, (load + float(work[lst]), s))
    return owner


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use (taskset, cgroup cpusets)
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _placement(shard: int, replica: int, replicas: int, nodes: int) -> int:
    # replicas of one shard land on distinct nodes whenever there are enough of them
    return (shard * replicas + replica) % nodes


class DistributedIndex:
    """An IVF index (IVF-PQ, IVF-Flat, IVF-SQ, fast-scan PQ: any Faiss ``IndexIVF``) split over shard actors.

    Make one with :meth:`create` (train, then place empty shards) or :meth:`load` (a saved one), then
    ``await index.add(x)`` and ``await index.search(q, k=10, nprobe=16)``.
    """

    inline_coarse = 64  # batches up to this many queries are quantized on the loop; bigger ones in threads
    link_check = 1.0    # seconds between liveness checks of a shard while a fast-path search waits on it

    def __init__(self, cluster: Cluster, template: Any, shards: list[list[ActorRef]], *, next_id: int = 0,
                 factory: str = "", threads: int | None = None, sharding: str = "lists",
                 owner: np.ndarray | None = None, fast_path: bool = True) -> None:
        if sharding not in SHARDING:
            raise ValueError(f"sharding must be one of {SHARDING}, not {sharding!r}")
        self._cluster = cluster
        # the coarse quantizer runs split by queries over `threads` threads of ours, each with a one-thread
        # OpenMP team (an idle team of the default size spins and takes the cores the shards need)
        self.threads = max(1, threads if threads is not None else _default_threads())
        _one_malloc_arena()  # the coarse quantizer's threads would otherwise fault their buffers in every batch
        self._pool = ThreadPoolExecutor(self.threads, "disto-router", faiss.omp_set_num_threads, (1,))
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
        self.sharding = sharding
        self._owner = None if owner is None else np.asarray(owner, dtype=np.int32)
        if self._owner is not None and self._owner.shape != (self.nlist,):
            raise ValueError(f"owner must give a shard for each of the {self.nlist} lists")
        self.fast_path = fast_path
        self._links: dict[tuple[int, int], asyncio.Future] = {}
        self._blocks = BlockPool(STAGE_KEEP)
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
                     nprobe: int = 1, threads: int | None = None, sharding: str = "lists",
                     fast_path: bool = True) -> "DistributedIndex":
        """Train ``factory`` (e.g. ``"IVF1024,PQ16"``) on ``train`` here, then send the trained empty index to
        ``shards`` x ``replicas`` shard actors spread over ``nodes`` (default: the cluster's worker nodes).

        ``sharding="lists"`` (default) gives each shard whole inverted lists, balanced on the training sample;
        ``"vectors"`` gives each shard a slice of every list. ``threads``: the router's threads for the coarse
        quantizer (default: the cores, at most 8); ``threads_per_shard``: each shard's OpenMP team.
        ``fast_path=False`` sends every search through actor calls, even on one host."""
        template = cls.train(factory, train, metric)
        return await cls.from_trained(cluster, template, shards=shards, replicas=replicas,
                                      threads_per_shard=threads_per_shard, nodes=nodes, nprobe=nprobe,
                                      factory=factory, threads=threads, sharding=sharding, sample=train,
                                      fast_path=fast_path)

    @classmethod
    async def from_trained(cls, cluster: Cluster, template: Any, *, shards: int = 2, replicas: int = 1,
                           threads_per_shard: int = 1, nodes: Sequence[Any] | None = None, nprobe: int = 1,
                           factory: str = "", threads: int | None = None, sharding: str = "lists",
                           sample: Any = None, fast_path: bool = True) -> "DistributedIndex":
        """Like :meth:`create`, from an index trained already (it must be empty: vectors are added with
        :meth:`add`). With list sharding the lists are balanced on ``sample`` (vectors like the data), or on the
        first batch given to :meth:`add` when there is no sample."""
        if shards < 1 or replicas < 1:
            raise ValueError("shards and replicas must be >= 1")
        if sharding not in SHARDING:
            raise ValueError(f"sharding must be one of {SHARDING}, not {sharding!r}")
        if not isinstance(template, faiss.IndexIVF) or not template.is_trained:
            raise ValueError("the template must be a trained Faiss IndexIVF")
        if template.ntotal:
            raise ValueError(f"the template must be empty (it holds {template.ntotal} vectors)")
        if sharding == "lists" and shards > template.nlist:
            raise ValueError(f"{shards} shards for {template.nlist} inverted lists: some shards would hold "
                             "nothing; use fewer shards or sharding='vectors'")
        xs = as_matrix(sample, template.d, "sample vectors") if sharding == "lists" and sample is not None else None
        blob = faiss.serialize_index(template)
        refs = await cls._place(cluster, nodes, shards, replicas,
                                lambda s: {"index_bytes": blob, "threads": threads_per_shard})
        self = cls(cluster, faiss.deserialize_index(blob), refs, factory=factory, threads=threads,
                   sharding=sharding, fast_path=fast_path)
        self.nprobe = nprobe
        if xs is not None:
            self._owner = balance_lists(await self._lists_of(xs), self.nlist, shards)
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
        lists = None
        if self.sharding == "lists" and n:
            lists = await self._lists_of(x)
            if self._owner is None:
                self._owner = balance_lists(lists, self.nlist, len(self.shards))
        pending: list[Any] = []
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            if lists is not None:
                assert self._owner is not None
                own = self._owner[lists[start:stop]]
                for s, reps in enumerate(self.shards):
                    rows = np.flatnonzero(own == s) + start
                    if len(rows):
                        pending.extend(self._add_to(s, r, x[rows], ids[rows], lists[rows]) for r in range(len(reps)))
            else:
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

    async def _add_to(self, s: int, r: int, x: np.ndarray, ids: np.ndarray, lists: np.ndarray | None = None
                      ) -> int:
        try:
            return await self.shards[s][r].add(x, ids, lists)
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
        n, nshards = len(xq), len(self.shards)
        lay = Layout(n, self.d, k, nprobe, nshards)
        # the batch, its lists and every shard's results share one reused segment: shards on this host read and
        # write it in place
        block = self._blocks.take(lay.size)
        clean = False
        try:
            xs = block.array(lay.queries, np.float32, (n, self.d))
            np.copyto(xs, xq)
            assign = block.array(lay.assign, np.int64, (n, nprobe))
            coarse = block.array(lay.coarse, np.float32, (n, nprobe))
            # the shards' result slots, made now: nothing but the answers is left for after the wait
            slots = [lay.results(block, s) for s in range(nshards)]
            merged = (block.array(lay.distances, np.float32, (nshards, n, k)),
                      block.array(lay.labels, np.int64, (nshards, n, k)))
            await self._coarse(xs, nprobe, coarse, assign)
            t1 = time.perf_counter()
            w1 = time.time()
            down = sum(map(len, self._down))
            outcomes = await self._fan_out(block, lay, slots, xs, k, assign, coarse)
            t2 = time.perf_counter()
            w2 = time.time()
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
                D, I = live[0][0].copy(), live[0][1].copy()  # out of the block, which is reused
            elif not missing and all(o[4] for o in live):
                # every shard wrote into its slot of the block: the (shards, n, k) arrays are there already
                D, I = faiss.merge_knn_results(*merged, keep_max=self.keep_max)
            else:
                D, I = faiss.merge_knn_results(np.stack([o[0] for o in live]), np.stack([o[1] for o in live]),
                                               keep_max=self.keep_max)
            # a replica given up on (frozen, cut off) might still write into the block later: never reuse it then
            clean = not missing and sum(map(len, self._down)) == down
        finally:
            if clean:
                self._blocks.give(block)
            else:
                block.discard()
        t3 = time.perf_counter()
        slowest = max(live, key=lambda o: o[3] - o[2])
        shard_s = slowest[3] - slowest[2]
        # wall clocks of this host and the shards' (exact on one host; across hosts only as good as NTP)
        timing = {"coarse": t1 - t0, "fanout": t2 - t1, "shard": shard_s, "overhead": (t2 - t1) - shard_s,
                  "send": max(o[2] for o in live) - w1, "return": w2 - max(o[3] for o in live), "merge": t3 - t2,
                  "total": t3 - t0}
        return SearchResult(D, I, bool(missing), missing, timing)

    async def _lists_of(self, x: np.ndarray) -> np.ndarray:
        """The inverted list of each vector (the coarse quantizer's nearest centroid)."""
        D = np.empty((len(x), 1), np.float32)
        I = np.empty((len(x), 1), np.int64)
        await self._coarse(x, 1, D, I)
        return I[:, 0]

    async def _coarse(self, xq: np.ndarray, nprobe: int, D: np.ndarray, I: np.ndarray) -> None:
        """The ``nprobe`` nearest lists of each query into ``D`` and ``I``; a big batch is split over the
        router's threads (the quantizer's search is read-only, so the parts run at once)."""
        q = self._ivf.quantizer
        n = len(xq)
        if n <= self.inline_coarse:
            # OpenMP settings are per thread: use one thread here too, and leave the caller's as they were
            prev = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                q.search(xq, nprobe, D=D, I=I)
            finally:
                faiss.omp_set_num_threads(prev)
            return
        parts = max(1, min(self.threads, n // self.inline_coarse))
        cuts = [n * p // parts for p in range(parts + 1)]
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, functools.partial(
            q.search, xq[a:b], nprobe, D=D[a:b], I=I[a:b])) for a, b in zip(cuts, cuts[1:])))

    async def _fan_out(self, block: Any, lay: Layout, slots: list[tuple[np.ndarray, np.ndarray]], xq: np.ndarray,
                       k: int, assign: np.ndarray, coarse: np.ndarray) -> list[Any]:
        """Each shard's (D, I, started, ended, in the block), or the exception that stopped it; lost replicas
        are replaced by the shard's other replicas until one answers."""
        args = (block, lay, slots, xq, k, assign, coarse)
        nshards = len(self.shards)
        chosen = [self._pick(s) for s in range(nshards)]
        outcomes: list[Any] = [None] * nshards
        links: list[ShardLink | None] = [None] * nshards
        for s, r in enumerate(chosen):
            if r < 0:
                continue
            try:
                known, link = self._known_link(s, r)  # the steady state, without a coroutine per shard
                links[s] = link if known else await self._link(s, r)
            except _LOST as e:  # its node is gone: the failover below picks another replica
                outcomes[s] = e
        fast = [s for s in range(nshards) if links[s] is not None]
        slow = [s for s in range(nshards) if links[s] is None and outcomes[s] is None]
        replies = Replies(len(fast)) if fast else None
        for s in fast:  # every shard on this host at once, and one future for all their answers
            links[s].search(block, lay, replies, s)
        others = collect_all(self._ask(s, chosen[s], *args) if chosen[s] >= 0 else _no_replica(s)
                             for s in slow) if slow else None
        if replies is not None:
            await self._wait(replies, {s: chosen[s] for s in fast}, {s: links[s] for s in fast})
            for s in fast:
                got = replies.results[s]
                outcomes[s] = got if isinstance(got, BaseException) else (*slots[s], *got, True)
        if others is not None:
            for s, o in zip(slow, await others):
                outcomes[s] = o
        for s, r in enumerate(chosen):
            while isinstance(outcomes[s], _LOST):
                if r >= 0:
                    self._down[s].add(r)
                r = self._pick(s)
                if r < 0:
                    break
                try:
                    outcomes[s] = await self._ask(s, r, *args)
                except _LOST as e:
                    outcomes[s] = e
        return outcomes

    async def _wait(self, replies: Replies, replicas: dict[int, int], links: dict[int, ShardLink]) -> None:
        """Until every shard has answered over its link. While Faiss runs on a shard, every ``link_check``
        seconds its node is asked whether it is still there (disto's failure detector fails that call with
        NodeLostError if not), so a stopped process cannot make a search wait forever. (A timer, not
        ``wait_for``: the answer path stays one future and one task wake-up.)"""
        loop = asyncio.get_running_loop()
        checks: list[asyncio.Task] = []

        def check() -> None:
            if not replies.future.done():
                checks.append(asyncio.ensure_future(self._check(replies, replicas, links)))
                timer[0] = loop.call_later(self.link_check, check)

        timer = [loop.call_later(self.link_check, check)]
        try:
            await replies.future
        finally:
            timer[0].cancel()
            for t in checks:
                t.cancel()

    async def _check(self, replies: Replies, replicas: dict[int, int], links: dict[int, ShardLink]) -> None:
        waiting = [s for s in replicas if s not in replies.results]
        got = await collect_all(self.shards[s][replicas[s]].info() for s in waiting)
        for s, c in zip(waiting, got):
            if isinstance(c, _LOST):
                links[s].close()
                replies.done(s, c)

    async def _ask(self, s: int, r: int, block: Any, lay: Layout, slots: list[tuple[np.ndarray, np.ndarray]],
                   xq: np.ndarray, k: int, assign: np.ndarray, coarse: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float, float, bool]:
        """One shard's answer from replica ``r``, over its link when it has one."""
        link = await self._link(s, r)
        if link is None:
            D, I, started, ended = await self.shards[s][r].search(xq, k, assign, coarse)
            return D, I, started, ended, False
        replies = Replies(1)
        link.search(block, lay, replies, s)
        await self._wait(replies, {s: r}, {s: link})
        got = replies.results[s]
        if isinstance(got, BaseException):
            raise got
        return (*slots[s], *got, True)

    def _known_link(self, s: int, r: int) -> tuple[bool, ShardLink | None]:
        """(True, the fast path to replica ``r`` of shard ``s`` or None) once its opening has finished (the
        node's loss, if that is how it ended, is raised); (False, None) before."""
        if not self.fast_path:
            return True, None
        task = self._links.get((s, r))
        if task is None or not task.done():
            return False, None
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, _LOST):
                raise exc
            return True, None  # no fast path to this replica (an error opening it): actor calls still work
        link = task.result()
        return True, None if link is None or link.closed else link

    async def _link(self, s: int, r: int) -> ShardLink | None:
        """The fast path to replica ``r`` of shard ``s`` when it runs on this host (opened on first use)."""
        task = self._links.get((s, r))
        if task is None and self.fast_path:
            task = self._links[(s, r)] = asyncio.ensure_future(self._open_link(s, r))
        if task is not None and not task.done():
            await asyncio.wait((task,))
        return self._known_link(s, r)[1]

    async def _open_link(self, s: int, r: int) -> ShardLink | None:
        address = await self.shards[s][r].open_link()
        return await ShardLink.open(s, address)

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
        layout = {"format": 2, "d": self.d, "nlist": self.nlist, "factory": self.factory,
                  "metric": "ip" if self.keep_max else "l2", "next_id": self._next_id, "template": TEMPLATE,
                  "sharding": self.sharding,
                  "owner": None if self._owner is None else self._owner.tolist(),
                  "shards": [{"file": f, "ntotal": c} for f, c in zip(files, counts)]}
        tmp = os.path.join(directory, LAYOUT + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(layout, fh, indent=1)
        os.replace(tmp, os.path.join(directory, LAYOUT))

    @classmethod
    async def load(cls, cluster: Cluster, directory: str, *, replicas: int = 1, threads_per_shard: int = 1,
                   nodes: Sequence[Any] | None = None, nprobe: int = 1, threads: int | None = None,
                   fast_path: bool = True) -> "DistributedIndex":
        """Start shard actors from a directory written by :meth:`save` (the shard count and the sharding are the
        saved ones)."""
        path = os.path.join(directory, LAYOUT)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no saved distributed index in {directory} ({LAYOUT} is missing)")
        with open(path) as fh:
            layout = json.load(fh)
        if layout.get("format") not in (1, 2):  # 1: before list sharding (always by vectors)
            raise ValueError(f"{path}: unknown layout format {layout.get('format')!r}")
        template = faiss.read_index(os.path.join(directory, layout["template"]))
        root = os.path.abspath(directory)
        entries = layout["shards"]
        refs = await cls._place(cluster, nodes, len(entries), replicas,
                                lambda s: {"path": os.path.join(root, entries[s]["file"]),
                                           "threads": threads_per_shard})
        owner = layout.get("owner")
        try:
            self = cls(cluster, template, refs, next_id=int(layout["next_id"]), factory=layout.get("factory", ""),
                       threads=threads, sharding=layout.get("sharding", "vectors"), fast_path=fast_path,
                       owner=None if owner is None else np.asarray(owner, dtype=np.int32))
        except ValueError as e:
            await collect_all(cluster.stop(ref) for reps in refs for ref in reps)
            raise ValueError(f"{path}: {e}") from None
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
        for task in self._links.values():
            if task.done() and not task.cancelled() and task.exception() is None and task.result() is not None:
                task.result().close()
            else:
                task.cancel()
        self._links.clear()
        await collect_all(self._cluster.stop(ref) for reps in self.shards for ref in reps)
        self._blocks.close()
        self._pool.shutdown(wait=False)

    def __repr__(self) -> str:
        reps = len(self.shards[0]) if self.shards else 0
        return f"<DistributedIndex d={self.d} nlist={self.nlist} shards={len(self.shards)} replicas={reps}>"


async def _no_replica(s: int) -> Any:
    raise NodeLostError(f"shard {s} has no live replica left")
