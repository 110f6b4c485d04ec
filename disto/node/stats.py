"""What a node reports about its process: the figures a leak would grow."""
from __future__ import annotations

import asyncio
import os


def process_stats() -> dict[str, int]:
    """Resident memory, open descriptors and asyncio tasks of this process."""
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        tasks = 0
    out = {"tasks": tasks}
    try:
        with open("/proc/self/statm") as fh:
            out["rss_bytes"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        pass
    return out
