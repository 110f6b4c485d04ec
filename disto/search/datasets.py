"""Seeded synthetic data for search benchmarks and tests, exact ground truth (cached), and recall measures.

No real ANN data set ships offline, so the vectors are drawn around random cluster centres with a spread per
cluster, on a low-dimensional subspace: clustered like real descriptors (IVF cells are uneven, neighbours are
mostly in the same cell, the intrinsic dimension is low) and reproducible from the seed alone.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from ._faiss import faiss


def clustered(n: int, d: int, *, seed: int = 0, clusters: int = 1000, spread: float = 0.35, latent: int = 16,
              noise: float = 0.02) -> np.ndarray:
    """``n`` float32 vectors of dimension ``d``: Gaussian clusters in a ``latent``-dimensional space, mapped into
    ``d`` dimensions by one random linear map, plus a little isotropic noise. Real descriptors (SIFT, embeddings)
    have a low intrinsic dimension like this; i.i.d. Gaussian vectors in 128 dimensions would make every
    neighbour nearly equidistant and recall meaningless. Memory stays ~2x the output."""
    rng = np.random.default_rng(seed)
    latent = min(latent, d)
    proj = (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    centres = rng.standard_normal((clusters, latent), dtype=np.float32)
    scale = (spread * (0.5 + rng.random(clusters))).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    step = 1 << 16
    for start in range(0, n, step):
        m = min(step, n - start)
        c = rng.integers(0, clusters, m)
        z = centres[c] + scale[c, None] * rng.standard_normal((m, latent), dtype=np.float32)
        out[start:start + m] = z @ proj + noise * rng.standard_normal((m, d), dtype=np.float32)
    return out


def dataset(nb: int, nq: int, d: int, *, seed: int = 0, clusters: int = 1000, ntrain: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(database, queries, training sample) from one seed: the queries are fresh draws from the same clusters."""
    ntrain = ntrain if ntrain is not None else min(nb, max(20_000, nb // 10))
    allv = clustered(nb + nq, d, seed=seed, clusters=clusters)
    xb, xq = allv[:nb], allv[nb:]
    rng = np.random.default_rng(seed + 1)
    xt = xb[np.sort(rng.choice(nb, ntrain, replace=False))]
    return xb, xq, xt


def ground_truth(xb: np.ndarray, xq: np.ndarray, k: int = 100, cache_dir: str | None = None) -> np.ndarray:
    """Exact k nearest neighbours (L2) by brute force, cached under ``cache_dir`` by a hash of the data."""
    path = None
    if cache_dir is not None:
        h = hashlib.sha1()
        for a in (xb[:1000], xb[-1000:], xq):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(f"{xb.shape}{xq.shape}{k}".encode())
        path = os.path.join(cache_dir, f"gt-{h.hexdigest()[:16]}.npy")
        if os.path.exists(path):
            return np.load(path)
    flat = faiss.IndexFlatL2(xb.shape[1])
    flat.add(xb)
    _, gt = flat.search(xq, k)
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(path + ".tmp.npy", gt)
        os.replace(path + ".tmp.npy", path)
    return gt


def one_recall_at(labels: np.ndarray, gt: np.ndarray, k: int) -> float:
    """1-R@k: the fraction of queries whose true nearest neighbour is among the first ``k`` results."""
    return float((labels[:, :k] == gt[:, :1]).any(axis=1).mean())


def recall_at(labels: np.ndarray, gt: np.ndarray, k: int) -> float:
    """R@k (intersection measure): the average fraction of the true ``k`` nearest found in the first ``k``."""
    hits = sum(len(np.intersect1d(a[:k], b[:k])) for a, b in zip(labels, gt))
    return hits / (len(labels) * k)
