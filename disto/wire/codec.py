"""Which CALL/REPLY codec this process uses: the compiled one (:mod:`disto.wire._speedups`, built by
``pip install`` with the machine's C compiler) when it is importable, else the pure-Python one
(:mod:`disto.wire.fastcodec`). Both write and read the same bytes; ``DISTO_PURE_PYTHON=1`` in the environment
forces the pure-Python one (CI runs the tests both ways)."""
from __future__ import annotations

from ..native import PURE_PYTHON_REQUESTED

try:
    if PURE_PYTHON_REQUESTED:
        raise ImportError("DISTO_PURE_PYTHON is set")
    from ._speedups import (call_frame, decode_call, decode_frame,  # type: ignore[import-not-found]
                            decode_release, decode_reply, encode_call, encode_reply, external_desc, reply_frame)
    from ._speedups import buffer_address as compiled_buffer_address  # type: ignore[import-not-found]
    IMPLEMENTATION = "compiled"
except ImportError:
    from .fastcodec import (call_frame, decode_call, decode_frame, decode_release, decode_reply, encode_call,
                            encode_reply, external_desc, reply_frame)
    compiled_buffer_address = None  # the serialization layer has a numpy fallback
    IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "PURE_PYTHON_REQUESTED", "call_frame", "compiled_buffer_address", "decode_call",
           "decode_frame", "decode_release", "decode_reply", "encode_call", "encode_reply", "external_desc", "reply_frame"]
