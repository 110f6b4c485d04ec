"""MNIST-1D (generated offline by the ``mnist1d`` package, cached as .npz) and the models of the example."""
from __future__ import annotations

import os

import numpy as np
import torch

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "disto", "mnist1d-{n}-seed{seed}.npz")


def mnist1d(num_samples: int = 60_000, seed: int = 42, cache: str | None = None) -> dict[str, np.ndarray]:
    """x (n, 40) float32 and y (n,) int64 train and test arrays; generated once (about 20 s for 60k) then read
    from the cache. Never downloads."""
    path = (cache or DEFAULT_CACHE).format(n=num_samples, seed=seed)
    if os.path.exists(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError("MNIST-1D needs the mnist1d package: pip install 'disto[easgd]'") from None
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    d = make_dataset(args)  # generated locally; its download path is never used
    out = {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
           "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def mlp(inputs: int = 40, hidden: int = 256, classes: int = 10) -> torch.nn.Module:
    """The example's model: 40-256-256-10, about 79k parameters."""
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes))
