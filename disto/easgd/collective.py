"""A torch.distributed process group for one training run inside a long-lived node process, shared by the
EA-SGD and low-communication trainers' all-reduce workers.

A node outlives the runs on it: a group left from an earlier run would be reused with that run's ranks (another
placement may have put rank 1 where rank 2 was), and its all-reduces would hang until gloo's timeout. So every run
makes a new group and takes it down when it ends."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

TIMEOUT = timedelta(seconds=60)


def open_group(backend: str, init_method: str, rank: int, world_size: int) -> Any:
    """``torch.distributed`` with a new default group for this run (an earlier run's is destroyed first)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if backend == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # single host: keep gloo on loopback
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=TIMEOUT)
    return dist


def close_group() -> None:
    """Take this run's group down (nothing if there is none)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
