"""cloudpickle payloads with out-of-band buffers (numpy, torch, bytearray) and receive-buffer pooling."""
from .pickler import DEVICE_MAP, dumps, dumps_for, loads
from .placement import Route, route
from .pool import BufferPool
from .shm import ShmExporter, ShmImporter, janitor

__all__ = ["DEVICE_MAP", "dumps", "dumps_for", "loads", "Route", "route", "BufferPool", "ShmExporter",
           "ShmImporter", "janitor"]
