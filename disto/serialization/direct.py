"""Values made of CPU tensors and scalars, encoded without pickle: the common payload of a training or search call
(``(args, kwargs)`` holding a few tensors, numbers and strings; a tensor as the reply).

Pickling such a value runs the pickler's machinery for a handful of objects: the dispatch table, a reduction per
tensor, the rebuild function saved by name (an import lookup per dump), the memo, and the unpickler's stack on the
other side. Most of that code is cold between two calls, so on a busy machine it costs several times its warm
figure. This encoding writes what the receiver needs and nothing else; the tensors' bytes travel out of band
exactly as pickle's buffers do (same list, same order), so the transport, shared memory and by-reference paths do
not change.

Layout (little-endian)::

    stream  := MAGIC VERSION value
    value   := 't' tensor | '(' n:u16 value*n | '[' n:u16 value*n | '{' n:u16 (key:str value)*n
             | 'n' | '0' | '1' | 'i' i64 | 'd' f64 | 's' str
    str     := n:u32 utf-8 bytes (lone surrogates kept, as pickle does)
    tensor  := dtype:u8 flags:u8 ndim:u8 shape:i64*ndim [nbytes:u32 bytes  if flags & IN_BAND]

A tensor not in band takes the next buffer of the message. :func:`encode` says None for anything else (another
type, a CUDA or sparse tensor, a subclass, a container too long or too deep, the same tensor twice, no tensor at
all), and the caller pickles instead; :func:`decode` is what :func:`~disto.serialization.pickler.loads` runs for a
stream that starts with :data:`MAGIC`, which no pickle stream does (they start with PROTO, 0x80).
"""
from __future__ import annotations

import os
import struct
import sys
from typing import Any

from ..errors import SerializationError
from ..memory.blocks import COMPILED as BLOCKS_COMPILED, block
from .tensors import rebuild_tensor

MAGIC = 0xD7
VERSION = 1
OOB_MIN = 1024      # (pickler.OOB_MIN: smaller tensors travel in the stream)
MAX_ITEMS = 64      # a longer container is pickled
MAX_DEPTH = 3       # (args, kwargs) -> args -> a list of tensors
MAX_NDIM = 32

FLAG_GRAD = 1
FLAG_PARAM = 2
FLAG_IN_BAND = 4

# The dtypes by code: the list is part of the format (append only). A dtype this torch lacks is skipped.
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
               "complex64", "complex128", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2")
_COMPLEX = frozenset({"complex64", "complex128"})

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_SHAPES = [struct.Struct(f"<{n}q") for n in range(MAX_NDIM + 1)]
_HEAD = bytes((MAGIC, VERSION))

# Set by note_torch() once torch is imported in this process (the encoder never imports it)
_TENSOR: Any = None
_PARAMETER: Any = None
_STRIDED: Any = None
_CODES: dict[Any, int] = {}        # torch dtype -> code
_CONJ_CODES: frozenset = frozenset()  # codes of the complex dtypes (only they can carry a conjugate bit)
_DTYPES: list[Any] = []            # code -> torch dtype (None where this torch lacks it)
_ITEMSIZES: list[int] = []         # code -> bytes per element


def note_torch(torch: Any) -> None:
    """Recognise tensors from now on (torch is imported in this process)."""
    global _TENSOR, _PARAMETER, _STRIDED, _CONJ_CODES
    _STRIDED = torch.strided
    _DTYPES[:] = [getattr(torch, name, None) for name in DTYPE_NAMES]
    _CODES.clear()
    for code, dtype in enumerate(_DTYPES):
        if isinstance(dtype, torch.dtype):
            _CODES[dtype] = code
        else:
            _DTYPES[code] = None
    _ITEMSIZES[:] = [torch.empty(0, dtype=d).element_size() if d is not None else 0 for d in _DTYPES]
    _CONJ_CODES = frozenset(DTYPE_NAMES.index(n) for n in _COMPLEX)
    _PARAMETER = torch.nn.Parameter
    _TENSOR = torch.Tensor  # (last: the encoder is off until everything above is set)


def encode(obj: Any, same_host: bool) -> tuple[bytes, list, dict] | None:
    """``obj`` as (stream, out-of-band buffers, shared) like :func:`~disto.serialization.pickler.dumps_for`, or
    None when this encoding does not cover it. ``shared`` maps the address of each buffer that lives in torch
    shared memory to how a process on this host maps it (only when ``same_host``)."""
    if _TENSOR is None or not _has_tensor(obj, 0):
        return None  # (no tensor: the C pickler handles scalars and containers of them as fast)
    out = bytearray(_HEAD)
    buffers: list = []
    shared: dict = {}
    seen: list = []
    if not _put(out, obj, buffers, shared if same_host else None, seen, 0):
        return None
    return bytes(out), buffers, shared


def _has_tensor(x: Any, depth: int) -> bool:
    """Whether ``x`` holds a tensor where :func:`encode` would look: a scan of types only, so that a value
    without one (a reply of a few numbers) costs the encoder next to nothing before it goes to pickle."""
    t = type(x)
    if t is _TENSOR or t is _PARAMETER:
        return True
    if depth >= MAX_DEPTH:
        return False
    if t is not tuple and t is not list and t is not dict:
        return False
    if len(x) > MAX_ITEMS:
        return False
    for item in (x.values() if t is dict else x):
        ti = type(item)
        if ti is _TENSOR or ti is _PARAMETER:
            return True
        if (ti is tuple or ti is list or ti is dict) and _has_tensor(item, depth + 1):
            return True
    return False


def _put(out: bytearray, x: Any, buffers: list, shared: Any, seen: list, depth: int) -> bool:
    t = type(x)
    if t is _TENSOR or t is _PARAMETER:
        return _put_tensor(out, x, buffers, shared, seen)
    if t is tuple or t is list:
        n = len(x)
        if depth >= MAX_DEPTH or n > MAX_ITEMS:
            return False
        out.append(40 if t is tuple else 91)  # '(' '['
        out.append(n)  # (n <= MAX_ITEMS < 256: the high byte is 0)
        out.append(0)
        for item in x:
            if not _put(out, item, buffers, shared, seen, depth + 1):
                return False
        return True
    if t is dict:
        n = len(x)
        if depth >= MAX_DEPTH or n > MAX_ITEMS:
            return False
        out.append(123)  # '{'
        out.append(n)
        out.append(0)
        for k, v in x.items():
            if type(k) is not str:
                return False
            _put_str(out, k)
            if not _put(out, v, buffers, shared, seen, depth + 1):
                return False
        return True
    if x is None:
        out.append(110)  # 'n'
        return True
    if t is bool:
        out.append(49 if x else 48)  # '1' '0'
        return True
    if t is int:
        if not -0x8000000000000000 <= x <= 0x7FFFFFFFFFFFFFFF:
            return False
        out.append(105)  # 'i'
        out += _I64.pack(x)
        return True
    if t is float:
        out.append(100)  # 'd'
        out += _F64.pack(x)
        return True
    if t is str:
        out.append(115)  # 's'
        _put_str(out, x)
        return True
    return False


def _put_str(out: bytearray, s: str) -> None:
    b = s.encode("utf-8", "surrogatepass")
    out += _U32.pack(len(b))
    out += b


def _put_tensor(out: bytearray, x: Any, buffers: list, shared: Any, seen: list) -> bool:
    # (each tensor attribute is a call into torch, ~60 ns: read only what is needed, cheapest tests first)
    if not x.is_cpu or x.layout is not _STRIDED or x.is_nested:
        return False
    code = _CODES.get(x.dtype)  # (quantized dtypes are not in the table)
    if code is None:
        return False
    for other in seen:  # the same tensor twice: pickle's memo keeps it one object on the other side
        if other is x:
            return False
    seen.append(x)
    shape = x.shape
    ndim = len(shape)
    if ndim > MAX_NDIM:
        return False
    grad = x.requires_grad
    data = x.detach() if grad else x
    if data.is_neg() or (code in _CONJ_CODES and data.is_conj()):  # (a detached view keeps the bit: no shortcut)
        data = data.resolve_conj().resolve_neg()
    if not data.is_contiguous():
        data = data.contiguous()
    nbytes = _ITEMSIZES[code]
    for d in shape:
        nbytes *= d
    flags = (FLAG_GRAD if grad else 0) | (FLAG_PARAM if type(x) is _PARAMETER else 0)
    if nbytes < OOB_MIN:
        flags |= FLAG_IN_BAND
    out.append(116)  # 't'
    out.append(code)
    out.append(flags)
    out.append(ndim)
    out += _SHAPES[ndim].pack(*shape)
    if nbytes < OOB_MIN:
        out += _U32.pack(nbytes)
        if nbytes:
            out += block(data, data.data_ptr(), nbytes) if BLOCKS_COMPILED else \
                data.reshape(-1).view(sys.modules["torch"].uint8).numpy().tobytes()
        return True
    if shared is not None and data.untyped_storage().is_shared():
        note_torch_shared(shared, data)
    if BLOCKS_COMPILED:  # the tensor's bytes as a buffer that keeps it alive
        buffers.append(memoryview(block(data, data.data_ptr(), nbytes)))
    else:
        buffers.append(memoryview(data.reshape(-1).view(sys.modules["torch"].uint8).numpy()))
    return True


def note_torch_shared(shared: dict[int, tuple[str, int]], data: Any) -> None:
    """A CPU tensor in torch shared memory (``share_memory_()``): remember how another process on this host can
    map the same memory, so the buffer travels by reference."""
    storage = data.untyped_storage()
    try:
        fd, _size = storage._share_fd_cpu_()
    except (RuntimeError, AttributeError):
        return  # another sharing strategy: the buffer goes by value
    shared[data.data_ptr()] = (f"/proc/{os.getpid()}/fd/{fd}", data.data_ptr() - storage.data_ptr())


class _Reader:
    """Where decoding is: the stream, the position in it, the buffers and the next one to take."""

    def __init__(self, data: Any, buffers: Any) -> None:
        self.data = data
        self.pos = 2
        self.buffers = buffers
        self.taken = 0

    def take(self, n: int) -> int:
        """Advance by ``n`` bytes; the position before."""
        pos = self.pos
        if pos + n > len(self.data):
            raise SerializationError("truncated stream")
        self.pos = pos + n
        return pos


def decode(data: Any, buffers: Any = ()) -> Any:
    """The value :func:`encode` wrote, over its buffers (not copied; writable where they are)."""
    if type(data) is not bytes:  # (a stream that came out of band: small, copied for fast indexing)
        data = bytes(data)
    if len(data) < 3 or data[0] != MAGIC:
        raise SerializationError("not a direct-encoded stream")
    if data[1] != VERSION:
        raise SerializationError(f"direct encoding version {data[1]} is not supported here (this side has "
                                 f"{VERSION}): every node must run the same disto")
    r = _Reader(data, buffers)
    try:
        value = _get(r, 0)
    except SerializationError:
        raise
    except (ValueError, IndexError, OverflowError, TypeError, struct.error) as e:  # (bad utf-8, ...)
        raise SerializationError(f"malformed stream: {type(e).__name__}: {e}") from None
    if r.pos != len(data) or r.taken != len(buffers):
        raise SerializationError(f"malformed stream: {len(data) - r.pos} bytes and {len(buffers) - r.taken} "
                                 f"buffers left over")
    return value


def _get(r: _Reader, depth: int) -> Any:
    tag = r.data[r.take(1)]
    if tag == 116:  # 't'
        return _get_tensor(r)
    if tag == 40 or tag == 91 or tag == 123:  # '(' '[' '{'
        if depth >= MAX_DEPTH:
            raise SerializationError("malformed stream: nested too deep")
        pos = r.take(2)
        n = r.data[pos] | (r.data[pos + 1] << 8)
        if tag == 123:
            d = {}
            for _ in range(n):
                k = _get_str(r)
                d[k] = _get(r, depth + 1)
            return d
        items = [_get(r, depth + 1) for _ in range(n)]
        return tuple(items) if tag == 40 else items
    if tag == 110:  # 'n'
        return None
    if tag == 48 or tag == 49:
        return tag == 49
    if tag == 105:
        return _I64.unpack_from(r.data, r.take(8))[0]
    if tag == 100:
        return _F64.unpack_from(r.data, r.take(8))[0]
    if tag == 115:
        return _get_str(r)
    raise SerializationError(f"malformed stream: tag {tag}")


def _get_str(r: _Reader) -> str:
    n = _u32(r.data, r.take(4))
    pos = r.take(n)
    return bytes(r.data[pos:pos + n]).decode("utf-8", "surrogatepass")


def _u32(data: bytes, pos: int) -> int:
    b0 = data[pos]
    b1 = data[pos + 1]
    b2 = data[pos + 2]
    b3 = data[pos + 3]
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)


def _get_tensor(r: _Reader) -> Any:
    data = r.data
    pos = r.take(3)
    code = data[pos]
    flags = data[pos + 1]
    ndim = data[pos + 2]
    if ndim > MAX_NDIM:
        raise SerializationError(f"malformed stream: {ndim} dimensions")
    pos = r.take(8 * ndim)
    if ndim == 1:  # (the common case, without a call into struct)
        shape: Any = (_u32(data, pos) | (_u32(data, pos + 4) << 32),)
    else:
        shape = _SHAPES[ndim].unpack_from(data, pos)
    if not _DTYPES:
        import torch  # (the receiver may not have imported it yet)
        note_torch(torch)
    dtype = _DTYPES[code] if code < len(_DTYPES) else None
    if dtype is None:
        raise SerializationError(f"dtype code {code} ({DTYPE_NAMES[code] if code < len(DTYPE_NAMES) else '?'}) "
                                 f"is not known to this torch")
    if flags & FLAG_IN_BAND:
        n = _u32(data, r.take(4))
        pos = r.take(n)
        buf: Any = bytearray(data[pos:pos + n])  # (writable, and not holding the whole stream)
    else:
        if r.taken >= len(r.buffers):
            raise SerializationError("malformed stream: a tensor without its buffer")
        buf = r.buffers[r.taken]
        r.taken += 1
    numel = 1
    for d in shape:
        if d < 0:
            raise SerializationError(f"malformed tensor: shape {shape}")
        numel *= d
    n = memoryview(buf).nbytes
    if numel * _ITEMSIZES[code] != n:  # (checked before anything is allocated from the shape)
        raise SerializationError(f"malformed tensor: shape {tuple(shape)} of {DTYPE_NAMES[code]} does not match its "
                                 f"{n} bytes")
    try:
        return rebuild_tensor(buf, dtype, shape, bool(flags & FLAG_GRAD), bool(flags & FLAG_PARAM))
    except SerializationError:
        raise
    except (RuntimeError, ValueError, TypeError) as e:  # e.g. a buffer that does not match the shape
        raise SerializationError(f"malformed tensor: {e}") from None
