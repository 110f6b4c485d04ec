"""Memory that outlives one message: shared-memory segments (one primitive, one naming scheme, one janitor) and
the pool of large receive blocks. No asyncio, sockets or torch."""
from .pool import BufferPool
from .segments import SHM_DIR, Segment, SegmentPool, is_segment_name, janitor, segment_name

__all__ = ["BufferPool", "SHM_DIR", "Segment", "SegmentPool", "is_segment_name", "janitor", "segment_name"]
