"""Distributed compressed-domain similarity search on disto: a Faiss IVF index (IVF-PQ and friends) trained once,
sharded over actors, searched by fan-out with a k-way merge.

    from disto.search import DistributedIndex
    index = await DistributedIndex.create(cluster, "IVF1024,PQ16", xt, shards=2)
    await index.add(xb)
    D, I = await index.search(xq, k=10, nprobe=16)

Needs Faiss (``pip install 'disto[search]'``). See docs/search.md.
"""
from .datasets import clustered, dataset, ground_truth, one_recall_at, recall_at
from .index import DistributedIndex, SearchResult, balance_lists
from .link_protocol import ShardSearchError
from .service import SearchService, serve
from .shard import IndexShard

__all__ = ["DistributedIndex", "SearchResult", "ShardSearchError", "IndexShard", "SearchService", "serve",
           "balance_lists", "clustered", "dataset", "ground_truth", "one_recall_at", "recall_at"]
