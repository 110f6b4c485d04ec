"""cloudpickle payloads with out-of-band buffers (numpy, torch, bytearray) and receive-buffer pooling."""
from .pickler import dumps, loads
from .pool import BufferPool

__all__ = ["dumps", "loads", "BufferPool"]
