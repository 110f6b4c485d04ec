"""Memory that outlives one message: shared-memory segments (one primitive, one naming scheme, one janitor), the
pool of large receive blocks, and blocks (``blocks.block``: bytes at an address that keep their owner alive and
call back when dropped). No asyncio, sockets or torch."""
from .pool import BufferPool
from .segments import SHM_DIR, Segment, SegmentPool, is_segment_name, janitor, segment_name

__all__ = ["BufferPool", "SHM_DIR", "Segment", "SegmentPool", "is_segment_name", "janitor", "segment_name"]
