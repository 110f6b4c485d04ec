"""Rebuilding a received tensor: over the memory it arrived in (a received buffer, a shared-memory block) without
copying it, with its dtype, shape, gradient flag and Parameter-ness; a CUDA tensor that crossed hosts goes back
onto a GPU here (``DEVICE_MAP``). The sending side is :func:`disto.serialization.pickler._reduce_strided`, whose
pickle streams name :func:`rebuild_tensor`. torch is imported only when a stream holding a tensor is unpickled."""
from __future__ import annotations

import copyreg
import sys
from typing import Any

from ..errors import SerializationError

_DTYPES: dict[str, Any] = {}  # a dtype's name ("float32") -> the torch dtype, as received


def rebuild_tensor(buf: Any, dtype: Any, shape: tuple[int, ...], requires_grad: bool, param: bool,
                    device: str | None = None) -> Any:
    torch = sys.modules.get("torch")
    if torch is None:
        import torch  # (the receiver may not have imported it yet: the dtype comes by name)

    if type(dtype) is str:  # its name ("float32"): cheaper to pickle and unpickle than the dtype object
        name, dtype = dtype, _DTYPES.get(dtype)
        if dtype is None:
            dtype = getattr(torch, name, None)
            if not isinstance(dtype, torch.dtype):
                raise SerializationError(f"not a torch dtype: {name!r}")
            _DTYPES[name] = dtype
    view = memoryview(buf)
    if view.readonly:  # only in-band bytes are read-only; tensors must be writable
        view = memoryview(bytearray(view))
    if view.nbytes == 0:
        t = torch.empty(shape, dtype=dtype)
    else:  # one call over the received memory (the tensor keeps it alive); a reshape only if not 1-D
        t = torch.frombuffer(view, dtype=dtype)
        if len(shape) != 1:
            t = t.reshape(shape)
    if device is not None:  # a CUDA tensor that crossed hosts: back onto a GPU here, if there is one
        t = _to_local_device(t, device)
    if param:
        return torch.nn.Parameter(t, requires_grad=requires_grad)
    if requires_grad:
        t.requires_grad_(True)
    return t


# Where CUDA tensors that arrive from another host go: {remote device index: local device index}.
DEVICE_MAP: dict[int, int] = {}


def _to_local_device(t: Any, device: str) -> Any:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return t  # no GPU here: the tensor stays in host memory
    index = int(device.split(":")[1]) if ":" in device else 0
    index = DEVICE_MAP.get(index, index)
    if index >= torch.cuda.device_count():
        index = 0
    return t.to(f"cuda:{index}")


# Streams name rebuild_tensor by a pickle extension code (5 bytes) instead of its module and name: unpickling then
# finds it in copyreg's cache instead of importing the module again for every tensor (~0.8 us a tensor). Every
# disto process registers it when this module is imported, which any process that unpickles a disto payload does.
EXTENSION_CODE = 0x44_69_73_01  # ("Dis" 1: in the range PEP 307 leaves to private use)
copyreg.add_extension(__name__, "rebuild_tensor", EXTENSION_CODE)
