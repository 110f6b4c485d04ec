"""Payload serialization: cloudpickle, pickle protocol 5, large buffers out of band.

``dumps(obj)`` returns the pickle stream and a list of out-of-band buffers (memoryviews over the caller's own
memory: numpy arrays, torch CPU tensors, bytearrays), which the transport writes to the socket without copying.
``loads(stream, buffers)`` rebuilds the value over the received buffers, again without copying them.

torch is never imported here: tensors are recognised only if the process already imported torch, and a received
stream that holds tensors imports it when it is unpickled.
"""
from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import cloudpickle
import numpy as np

from .._errors import SerializationError

PROTOCOL = 5
OOB_MIN = 1024  # smaller buffers stay in the pickle stream: a descriptor costs more than copying them

_SCALARS = frozenset({int, float, str, bool, type(None)})


def _is_simple(obj: Any, depth: int = 0) -> bool:
    """True for plain scalars and small containers of them, which the C pickler handles alone (and which any
    receiver can unpickle: no class is pickled by reference to a module the receiver may lack)."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if depth > 2:
        return False
    if t is tuple or t is list:
        if len(obj) > 16:
            return False
        for x in obj:
            if type(x) not in _SCALARS and not _is_simple(x, depth + 1):
                return False
        return True
    if t is dict:
        if len(obj) > 16:
            return False
        for k, v in obj.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _is_simple(v, depth + 1)):
                return False
        return True
    if t is bytes:
        return len(obj) < OOB_MIN
    return False


def _rebuild_tensor(buf: Any, dtype: Any, shape: tuple[int, ...], requires_grad: bool, param: bool) -> Any:
    import torch

    view = memoryview(buf)
    if view.readonly:  # only in-band bytes are read-only; tensors must be writable
        view = memoryview(bytearray(view))
    t = torch.from_numpy(np.frombuffer(view, dtype=np.uint8))
    t = t.view(dtype).reshape(shape)
    if param:
        return torch.nn.Parameter(t, requires_grad=requires_grad)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _reduce_tensor(t: Any) -> Any:
    import torch

    if t.layout != torch.strided or t.is_quantized or t.device.type == "meta" or t.is_nested:
        return NotImplemented  # torch's own reduction
    cls = type(t)
    param = cls is torch.nn.Parameter
    if cls is not torch.Tensor and not param:
        return NotImplemented
    data = t.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.resolve_conj().resolve_neg().contiguous().reshape(-1)
    raw = data.view(torch.uint8).numpy() if data.numel() else np.empty(0, dtype=np.uint8)
    return (_rebuild_tensor, (pickle.PickleBuffer(raw), t.dtype, tuple(t.shape), t.requires_grad, param))


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            return _reduce_tensor(obj)
        return super().reducer_override(obj)


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the stream and the out-of-band buffers (views of the caller's memory, not copies)."""
    if _is_simple(obj):
        return pickle.dumps(obj, PROTOCOL), []
    buffers: list[memoryview] = []

    def keep(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < OOB_MIN:
            return True  # in band
        buffers.append(raw)
        return False

    f = io.BytesIO()
    try:
        _Pickler(f, protocol=PROTOCOL, buffer_callback=keep).dump(obj)
    except Exception as e:
        raise SerializationError(f"cannot pickle {type(obj).__name__}: {type(e).__name__}: {e}") from e
    return f.getvalue(), buffers


def loads(data: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> Any:
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as e:
        raise SerializationError(f"cannot unpickle: {type(e).__name__}: {e}") from e
