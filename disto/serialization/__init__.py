"""Payloads: cloudpickle with out-of-band buffers (numpy, torch, bytearray), the per-buffer placement policy,
and same-host export and import of buffers through shared memory. No asyncio or sockets; torch only when a
tensor is seen."""
from .pickler import dumps, dumps_for, loads
from .tensors import DEVICE_MAP
from .placement import Route, route, route_on_host
from .shm import ShmExporter, ShmImporter, buffer_address

__all__ = ["DEVICE_MAP", "dumps", "dumps_for", "loads", "Route", "route", "route_on_host", "ShmExporter",
           "ShmImporter", "buffer_address"]
