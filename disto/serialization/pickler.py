"""Payload serialization: cloudpickle, pickle protocol 5, large buffers out of band.

``dumps(obj)`` returns the pickle stream and a list of out-of-band buffers (memoryviews over the caller's own
memory: numpy arrays, torch CPU tensors, bytearrays), which the transport writes to the socket without copying.
``loads(stream, buffers)`` rebuilds the value over the received buffers, again without copying them.

torch is never imported here: tensors are recognised only if the process already imported torch, and a received
stream that holds tensors imports it when it is unpickled.
"""
from __future__ import annotations

import copyreg
import io
import pickle
import sys
import threading
import types
from collections import ChainMap
from typing import Any

import cloudpickle
import numpy as np

from ..errors import SerializationError
from ..memory.blocks import COMPILED as BLOCKS_COMPILED, block
from .direct import MAGIC as DIRECT_MAGIC, decode as direct_decode, encode as direct_encode, note_torch_shared
from .direct import note_torch as direct_note_torch
from .modules import shippable
from .tensors import rebuild_tensor

PROTOCOL = 5
_COPYREG = copyreg.dispatch_table  # the default reductions, which a pickler's own dispatch table replaces
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


def _plain(obj: Any, depth: int = 0) -> bool:
    """True for scalars, bytes, numpy arrays without Python objects inside, and small containers of them: the C
    pickler handles these alone (cloudpickle's per-object Python hook costs ~20 us a call and is not needed)."""
    t = type(obj)
    if t in _SCALARS or t is bytes:
        return True
    if t is np.ndarray:
        return not obj.dtype.hasobject
    if t in _FAST_TENSORS:
        return obj.is_cpu and _strided(obj)
    if depth > 3:
        return False
    if t is tuple or t is list:  # (loops, not all() over a generator: this runs on every call made)
        if len(obj) > 64:
            return False
        for x in obj:  # (scalars and tensors checked here: a recursive call per element costs more than the test)
            tx = type(x)
            if tx in _SCALARS:
                continue
            if tx in _FAST_TENSORS:
                if not (x.is_cpu and x.layout is _STRIDED and not x.is_quantized and not x.is_nested):
                    return False
            elif tx is dict and not x:
                continue  # (a call's empty kwargs)
            elif not _plain(x, depth + 1):
                return False
        return True
    if t is dict:
        if not obj:
            return True  # (the kwargs of most calls)
        if len(obj) > 64:
            return False
        for k, v in obj.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _plain(v, depth + 1)):
                return False
        return True
    return False


# torch.Tensor and torch.nn.Parameter, once torch is imported: CPU tensors among plain values take the C pickler
# with a dispatch table (no Python hook per object, no cloudpickle); everything else takes the full pickler
_FAST_TENSORS: frozenset[type] = frozenset()
_FAST_TABLE: dict[type, Any] = {}  # the default reductions (each thread's table adds the tensors')
_STRIDED: Any = None  # torch.strided
_PARAMETER: Any = None  # torch.nn.Parameter


class _FastDump:
    """One thread's C pickler for plain values, reused from dump to dump (making one costs ~2 us), and the state
    of the dump under way: where out-of-band buffers go, and where shared buffers are noted (or None). One per
    thread (:func:`_thread_dump`): its pickler's dispatch table names its own ``reduce``, so a tensor's reduction
    finds the dump's state without a thread-local lookup."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.pickler = pickle.Pickler(self.file, PROTOCOL, buffer_callback=self.keep)
        self.tensors = False  # the tensors' dispatch table is set
        self.busy = False
        self.buffers: list[memoryview] = []
        self.shared: dict[int, tuple[str, int]] | None = None

    def keep(self, pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < OOB_MIN:
            return True  # in band
        self.buffers.append(raw)
        return False

    def reduce(self, t: Any) -> Any:
        """A CPU tensor, by the dispatch table (only during a dump)."""
        return _reduce_strided(t, self.shared)

    def dump(self, obj: Any, same_host: bool) -> tuple[bytes, list[memoryview], dict[int, tuple[str, int]]]:
        p, f = self.pickler, self.file
        if _FAST_TENSORS and not self.tensors:  # CPU tensors among the values: reduced through the table
            table = dict(_FAST_TABLE)
            table.update(dict.fromkeys(_FAST_TENSORS, self.reduce))
            p.dispatch_table = table  # type: ignore[misc]
            self.tensors = True
        buffers: list[memoryview] = []
        shared: dict[int, tuple[str, int]] = {}
        self.buffers, self.shared, self.busy = buffers, shared if same_host else None, True
        try:
            p.dump(obj)
            return f.getvalue(), buffers, shared
        finally:  # (the memo holds the values pickled: they must not stay alive here)
            f.seek(0)
            f.truncate()
            p.clear_memo()
            self.buffers, self.shared, self.busy = [], None, False


_local = threading.local()


def _thread_dump() -> _FastDump:
    """This thread's :class:`_FastDump`."""
    try:
        return _local.state
    except AttributeError:
        state = _local.state = _FastDump()
        return state


def _note_torch() -> None:
    """Recognise tensors from now on (called when torch is seen in sys.modules)."""
    global _FAST_TENSORS, _STRIDED, _PARAMETER
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None)
    parameter = getattr(getattr(torch, "nn", None), "Parameter", None)
    if tensor is not None and parameter is not None:
        _STRIDED, _PARAMETER = torch.strided, parameter  # type: ignore[union-attr]
        _FAST_TENSORS = frozenset({tensor, parameter})
        _FAST_TABLE.update(_COPYREG)
        direct_note_torch(torch)


def _strided(t: Any) -> bool:
    return t.layout is _STRIDED and not t.is_quantized and not t.is_nested


def _reduce_tensor(t: Any, pickler: "_Pickler") -> Any:
    torch = sys.modules["torch"]  # (imported: a tensor exists)
    if t.layout != torch.strided or t.is_quantized or t.device.type == "meta" or t.is_nested:
        return NotImplemented  # torch's own reduction
    cls = type(t)
    if cls is not torch.Tensor and cls is not torch.nn.Parameter:
        return NotImplemented
    if t.device.type == "cuda" and pickler.same_host:
        return _reduce_cuda_ipc(t)
    return _reduce_strided(t, pickler.shared if pickler.same_host else None)


_DTYPE_NAMES: dict[Any, str] = {}  # torch dtype -> its name in the torch module ("float32")


def _reduce_strided(t: Any, shared: dict[int, tuple[str, int]] | None) -> Any:
    """A strided tensor (CPU, or CUDA going to another host through host memory) as its bytes, out of band.
    ``shared``: on the same host, where to note a buffer already in torch shared memory (sent by reference)."""
    device = None
    grad = t.requires_grad
    data = t.detach() if grad else t  # (only a tensor that records gradients needs detaching)
    if not data.is_cpu:
        device = str(t.device)
        data = data.cpu()
    if data.is_conj() or data.is_neg():
        data = data.resolve_conj().resolve_neg()
    if not data.is_contiguous():
        data = data.contiguous()
    shape = t.shape
    if len(shape) != 1:
        data = data.reshape(-1)
    nbytes = data.nbytes
    if nbytes < OOB_MIN:  # in band anyway: a bytearray pickles from C (no PickleBuffer, no buffer callback)
        if BLOCKS_COMPILED:
            payload: Any = bytearray(block(data, data.data_ptr(), nbytes))
        else:
            payload = bytearray(data.view(sys.modules["torch"].uint8).numpy()) if nbytes else bytearray()
    else:
        # (the storage's own is_shared is C; Tensor.is_shared goes through Python and a TypedStorage: ~3 us)
        if shared is not None and data.untyped_storage().is_shared():
            note_torch_shared(shared, data)
        if BLOCKS_COMPILED:  # the tensor's bytes as a buffer that keeps it alive (~0.1 us; a numpy view: ~4 us)
            payload = pickle.PickleBuffer(block(data, data.data_ptr(), nbytes))
        else:
            payload = pickle.PickleBuffer(data.view(sys.modules["torch"].uint8).numpy())
    dtype = t.dtype
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    args = (payload, name, tuple(shape), grad, type(t) is _PARAMETER)
    return (rebuild_tensor, args + (device,) if device else args)


CUDA_IPC_USED = False  # set once this process has shared a CUDA tensor: its node then calls ipc_collect()
CUDA_IPC_BYTES = 0     # bytes of CUDA tensors this process has shared through CUDA IPC (for the metrics)


def _reduce_cuda_ipc(t: Any) -> Any:
    """torch's own CUDA IPC reduction: the producer keeps the storage alive until the consumer lets go (a shared
    ref counter), and the consumer waits on the producer's event before using the memory."""
    from torch.multiprocessing.reductions import reduce_tensor

    global CUDA_IPC_USED, CUDA_IPC_BYTES
    CUDA_IPC_USED = True
    CUDA_IPC_BYTES += t.untyped_storage().nbytes()
    try:
        return reduce_tensor(t)
    except RuntimeError as e:
        raise SerializationError(f"cannot share this CUDA tensor over CUDA IPC: {e} "
                                 f"(a CUDA tensor received from another process must be cloned before sending)"
                                 ) from None


def rebuild_exception(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    """An exception as it was: its class, ``args`` and fields, without calling its ``__init__`` (whose signature
    may be anything: ``OutOfStock(item, wanted)`` calling ``super().__init__(message)`` has args (message,))."""
    try:
        exc = cls.__new__(cls, *args)
    except TypeError:
        exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _reduce_exception(exc: BaseException) -> Any:
    """Exceptions of user classes pickle through their fields, not their constructor (the default reduction
    calls ``cls(*args)``, which fails for most custom ``__init__`` signatures); builtin ones, and classes with a
    reduction of their own, keep it."""
    cls = type(exc)
    if (cls.__module__ == "builtins" or cls.__reduce_ex__ is not BaseException.__reduce_ex__
            or cls.__reduce__ is not BaseException.__reduce__ or not hasattr(exc, "__dict__")):
        return NotImplemented
    return (rebuild_exception, (cls, exc.args, dict(exc.__dict__)))


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of code pickled by value, keeping the file name it replaces with "<dynamic-code>"
    (so a remote traceback through a driver script's class names the script, and shows its lines where the file
    exists)."""
    fn, args = cloudpickle.cloudpickle._code_reduce(code)
    return fn, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    def __init__(self, *args: Any, same_host: bool = False, modules: set[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.same_host = same_host
        self.modules = modules  # collects the shippable modules that classes and functions pickled here come from
        self.shared: dict[int, tuple[str, int]] = {}  # data address -> (path to map, offset) of shared tensors

    def reducer_override(self, obj: Any) -> Any:
        # getattr: torch may be half imported by another thread (a node preloads it); no tensor exists yet then
        tensor = getattr(sys.modules.get("torch"), "Tensor", None)
        if tensor is not None and isinstance(obj, tensor):
            return _reduce_tensor(obj, self)
        if isinstance(obj, BaseException):
            reduced = _reduce_exception(obj)
            if reduced is not NotImplemented:
                return reduced
        modules = self.modules
        if modules is not None and (isinstance(obj, type) or type(obj) is types.FunctionType):
            mod = getattr(obj, "__module__", None)
            if type(mod) is str and mod not in modules and shippable(mod):
                modules.add(mod)
        return super().reducer_override(obj)


def dumps(obj: Any, modules: set[str] | None = None) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the stream and the out-of-band buffers (views of the caller's memory, not copies).
    ``modules``, if given, collects the shippable modules the stream refers to (see :mod:`.modules`)."""
    if _is_simple(obj):
        return pickle.dumps(obj, PROTOCOL), []
    stream, buffers, _ = dumps_for(obj, same_host=False, modules=modules)
    return stream, buffers


def dumps_for(obj: Any, same_host: bool, modules: set[str] | None = None
              ) -> tuple[bytes, list[memoryview], dict[int, tuple[str, int]]]:
    """Like :func:`dumps`, for a destination on this host (``same_host``) or not. On the same host CUDA tensors
    become CUDA IPC handles, and the third result maps the address of each buffer that already lives in torch
    shared memory to how the receiver can map it. Elsewhere CUDA tensors travel through host memory."""
    if not _FAST_TENSORS and "torch" in sys.modules:
        _note_torch()
    if _FAST_TENSORS:  # tensors and scalars: encoded without pickle (see .direct)
        encoded = direct_encode(obj, same_host)
        if encoded is not None:
            return encoded
    if _plain(obj):  # scalars, bytes, arrays, CPU tensors, small containers of them: the C pickler alone
        state = _thread_dump()
        if not state.busy:
            return state.dump(obj, same_host)
    buffers: list[memoryview] = []

    def keep(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < OOB_MIN:
            return True  # in band
        buffers.append(raw)
        return False

    f = io.BytesIO()
    pickler = _Pickler(f, protocol=PROTOCOL, buffer_callback=keep, same_host=same_host, modules=modules)
    try:
        pickler.dump(obj)
    except SerializationError:
        raise
    except Exception as e:
        raise SerializationError(f"cannot pickle {type(obj).__name__}: {type(e).__name__}: {e}") from e
    return f.getvalue(), buffers, pickler.shared


def loads(data: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> Any:
    try:
        if len(data) and data[0] == DIRECT_MAGIC:  # (no pickle stream starts with this byte)
            return direct_decode(data, buffers)
        return pickle.loads(data, buffers=buffers)
    except SerializationError:
        raise
    except ModuleNotFoundError as e:
        raise SerializationError(
            f"cannot unpickle: module {e.name!r} cannot be imported here ({e}). Install it where this runs (or "
            f"put it on PYTHONPATH), or have the caller import it before the call so that disto ships its source"
        ) from e
    except Exception as e:
        raise SerializationError(f"cannot unpickle: {type(e).__name__}: {e}") from e
