# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled CALL/REPLY codec and frame decoder: the same functions, bytes and errors as
:mod:`disto.wire.fastcodec`, in C, plus ``buffer_address`` for the serialization layer.

``pip install -e .`` builds it with the machine's C compiler (Cython); :mod:`disto.wire.codec` picks it when it
is importable and ``DISTO_PURE_PYTHON`` is not set. Only the canonical layout (fields in id order, as both
implementations write them) is decoded here; anything else goes to the pure-Python general loop, which stays the
one place that judges unusual input. Every read is bounded by ``end``; tests check both implementations give the
same results and raise the same errors on the same bytes, and the fuzz target compares them on every input.
Buffer descriptors of other kinds than INLINE (shared memory, CUDA IPC) are read and written here, with the pure
reader's checks and errors; unusual ones are written by the pure-Python helper.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from ..errors import RemoteProtocolError
from .events import Call, Reply, StreamItem
from .fastcodec import _bad, _decode_call_slow, _decode_reply_slow, _externals
from .fastcodec import _descs as _py_descs
from .fastcodec import EXTERNAL as _EXTERNAL
from .messages import WIRE_VERSION, Kind, T

cdef dict _str_cache = {}
cdef object _Desc = T.BufferDesc
cdef object _new_object = object.__new__
cdef int _CALL = Kind.CALL
cdef int _REPLY = Kind.REPLY
cdef int _ITEM = Kind.STREAM_ITEM
cdef int _VERSION = WIRE_VERSION

cdef enum:
    CALL_HEAD = 29   # i64 call_id, i64 actor_id, string header of method (3 + 8 + 3 + 8 + 3 + 4)
    REPLY_HEAD = 18  # i64 call_id, binary header of payload
    DESC = 19        # BufferDesc {1: i64 size, 2: i32 kind = INLINE} STOP


cdef class CallMsg:
    cdef public object call_id, actor_id, method, payload, buffers, payload_oob, node_id, traceparent

    def __repr__(self):
        return f"CallMsg({self.call_id}, {self.actor_id}, {self.method!r})"


cdef class ReplyMsg:
    cdef public object call_id, payload, buffers, payload_oob

    def __repr__(self):
        return f"ReplyMsg({self.call_id})"


cdef inline int64_t _rd64(const unsigned char* p) noexcept nogil:
    return <int64_t>((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40) |
                     (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16) |
                     (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline int32_t _rd32(const unsigned char* p) noexcept nogil:
    return <int32_t>((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline unsigned char* _wr64(unsigned char* p, int64_t v) noexcept nogil:
    cdef uint64_t u = <uint64_t>v
    p[0] = u >> 56; p[1] = u >> 48; p[2] = u >> 40; p[3] = u >> 32
    p[4] = u >> 24; p[5] = u >> 16; p[6] = u >> 8; p[7] = u
    return p + 8


cdef inline unsigned char* _wr32(unsigned char* p, int32_t v) noexcept nogil:
    cdef uint32_t u = <uint32_t>v
    p[0] = u >> 24; p[1] = u >> 16; p[2] = u >> 8; p[3] = u
    return p + 4


cdef inline unsigned char* _field(unsigned char* p, unsigned char ttype, unsigned char fid) noexcept nogil:
    p[0] = ttype; p[1] = 0; p[2] = fid
    return p + 3


cdef inline bytes _b(str s):
    cdef object b = _str_cache.get(s)
    if b is None:
        b = s.encode()
        if len(_str_cache) < 4096:
            _str_cache[s] = b
    return <bytes>b


cdef object _desc(object size, object kind, object segment, object offset, object handle):
    # a T.BufferDesc with these fields, without the Python frame of its generated __init__ (same __dict__)
    cdef object d = _new_object(_Desc)
    d.size = size
    d.kind = kind
    d.segment = segment
    d.offset = offset
    d.handle = handle
    return d


def external_desc(size, kind, segment, offset):
    """``T.BufferDesc(size=size, kind=kind, segment=segment, offset=offset)`` of a buffer that lives elsewhere
    (shared memory), made here: what a sender builds for every such buffer."""
    return _desc(size, kind, segment, offset, None)


cdef inline unsigned char* _bin(unsigned char* p, unsigned char fid, const unsigned char* src, Py_ssize_t n):
    p = _field(p, 11, fid)
    p = _wr32(p, <int32_t>n)
    if n:
        memcpy(p, src, n)
    return p + n


cdef unsigned char* _descs(unsigned char* p, unsigned char fid, object sizes, Py_ssize_t count) except NULL:
    cdef object n
    p = _field(p, 15, fid)
    p[0] = 12
    p = _wr32(p + 1, <int32_t>count)
    for n in sizes:
        p = _field(p, 10, 1)
        p = _wr64(p, <int64_t>n)
        p = _field(p, 8, 2)
        p = _wr32(p, 0)
        p[0] = 0
        p += 1
    return p


cdef inline Py_ssize_t _descs_len(Py_ssize_t count, bytes other):
    if other is not None:
        return PyBytes_GET_SIZE(other)
    return 8 + DESC * count if count else 0


cdef inline unsigned char* _put_descs(unsigned char* p, unsigned char fid, object sizes, Py_ssize_t count,
                                      bytes other) except NULL:
    if other is not None:
        memcpy(p, PyBytes_AS_STRING(other), PyBytes_GET_SIZE(other))
        return p + PyBytes_GET_SIZE(other)
    return _descs(p, fid, sizes, count) if count else p


cdef inline bint _i64(object v):
    return type(v) is int and -0x8000000000000000 <= v <= 0x7fffffffffffffff


cdef inline bint _i32(object v):
    return type(v) is int and -0x80000000 <= v <= 0x7fffffff


cdef inline bint _all_inline(object sizes):
    # (a size out of range goes to _other_descs too, which leaves it to the pure helper: the same error)
    for n in sizes:
        if not _i64(n):
            return False
    return True


cdef bytes _py_other_descs(unsigned char fid, object sizes):
    cdef list parts = []
    _py_descs(parts, fid, sizes)
    return b"".join(parts)


cdef bytes _other_descs(unsigned char fid, object sizes):
    """A list holding descriptors of other kinds too (shared memory, CUDA IPC: ``T.BufferDesc`` objects), each
    with its set fields in id order, as the pure helper writes them; anything unusual (a field of another type, a
    number out of range) is left to that helper, which then says what is wrong the way it always has."""
    cdef list segs = []
    cdef Py_ssize_t total = 8, count = 0, i = 0
    cdef object n, seg, handle
    cdef bytes out, b
    cdef unsigned char* p
    for n in sizes:
        count += 1
        if type(n) is int:
            if not _i64(n):
                return _py_other_descs(fid, sizes)
            total += DESC
            segs.append(None)
            continue
        if not _i64(n.size):
            return _py_other_descs(fid, sizes)
        total += 12  # size (3 + 8) and STOP
        if n.kind is not None:
            if not _i32(n.kind):
                return _py_other_descs(fid, sizes)
            total += 7
        seg = n.segment
        if seg is not None:
            if type(seg) is not str:
                return _py_other_descs(fid, sizes)
            seg = _b(<str>seg)  # (a few names, over and over: the pooled and shared segments)
            total += 7 + PyBytes_GET_SIZE(seg)
        segs.append(seg)
        if n.offset is not None:
            if not _i64(n.offset):
                return _py_other_descs(fid, sizes)
            total += 11
        handle = n.handle
        if handle is not None:
            if type(handle) is not bytes:
                return _py_other_descs(fid, sizes)
            total += 7 + PyBytes_GET_SIZE(handle)
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    p = _field(p, 15, fid)
    p[0] = 12
    p = _wr32(p + 1, <int32_t>count)
    for n in sizes:
        p = _field(p, 10, 1)
        if type(n) is int:
            p = _wr64(p, <int64_t>n)
            p = _field(p, 8, 2)
            p = _wr32(p, 0)
        else:
            p = _wr64(p, <int64_t>n.size)
            if n.kind is not None:
                p = _field(p, 8, 2)
                p = _wr32(p, <int32_t>n.kind)
            seg = segs[i]
            if seg is not None:
                b = <bytes>seg
                p = _bin(p, 3, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
            if n.offset is not None:
                p = _field(p, 10, 4)
                p = _wr64(p, <int64_t>n.offset)
            if n.handle is not None:
                b = <bytes>n.handle
                p = _bin(p, 5, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        p[0] = 0
        p += 1
        i += 1
    return out


cdef inline unsigned char* _header(unsigned char* p, Py_ssize_t body_len, unsigned char kind) noexcept:
    # framing.HEADER (!IBBHQ): body length, version, kind, no flags, no out-of-band bytes
    p = _wr32(p, <int32_t>body_len)
    p[0] = _VERSION
    p[1] = kind
    p[2] = 0
    p[3] = 0
    return _wr64(p + 4, 0)


def encode_call(call_id, actor_id, str method, payload, sizes, payload_oob, node_id, traceparent=None):
    return _call(call_id, actor_id, method, payload, sizes, payload_oob, node_id, traceparent, -1)


def call_frame(call_id, actor_id, str method, payload, payload_oob, node_id, traceparent, Py_ssize_t max_body,
               descs=()):
    """A whole CALL frame (header and body, in one allocation) for a call without buffer bytes after its body:
    no buffers, or ``descs``, descriptors of buffers that live elsewhere (shared memory, CUDA IPC); None if its
    body would exceed ``max_body`` (the connection then says so)."""
    return _call(call_id, actor_id, method, payload, descs, payload_oob, node_id, traceparent, max_body)


cdef object _call(call_id, actor_id, str method, payload, sizes, payload_oob, node_id, traceparent,
                  Py_ssize_t framed):
    # framed < 0: the body alone; else the header and the body, or None if the body is over ``framed`` bytes
    cdef Py_ssize_t head = 16 if framed >= 0 else 0
    cdef int64_t cid = call_id, aid = actor_id
    cdef bytes m = _b(method)
    cdef bytes n = _b(node_id) if node_id is not None else None
    cdef bytes t = traceparent.encode() if traceparent is not None else None
    cdef Py_buffer pb
    cdef bint have_payload = payload is not None
    cdef Py_ssize_t count = len(sizes) if sizes else 0
    cdef bytes other = None
    cdef Py_ssize_t total
    cdef bytes out
    cdef unsigned char* p
    if count and not _all_inline(sizes):
        other = _other_descs(5, sizes)
    if have_payload:
        PyObject_GetBuffer(payload, &pb, PyBUF_SIMPLE)
    try:
        total = CALL_HEAD + PyBytes_GET_SIZE(m) + 4 + 1
        if have_payload:
            total += 7 + pb.len
        total += _descs_len(count, other)
        if n is not None:
            total += 7 + PyBytes_GET_SIZE(n)
        if t is not None:
            total += 7 + PyBytes_GET_SIZE(t)
        if head and total > framed:
            return None
        out = PyBytes_FromStringAndSize(NULL, head + total)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        if head:
            p = _header(p, total, _CALL)
        p = _wr64(_field(p, 10, 1), cid)
        p = _wr64(_field(p, 10, 2), aid)
        p = _bin(p, 3, <const unsigned char*>PyBytes_AS_STRING(m), PyBytes_GET_SIZE(m))
        if have_payload:
            p = _bin(p, 4, <const unsigned char*>pb.buf, pb.len)
        p = _put_descs(p, 5, sizes, count, other)
        p = _field(p, 2, 6)
        p[0] = 1 if payload_oob else 0
        p += 1
        if n is not None:
            p = _bin(p, 7, <const unsigned char*>PyBytes_AS_STRING(n), PyBytes_GET_SIZE(n))
        if t is not None:
            p = _bin(p, 8, <const unsigned char*>PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))
        p[0] = 0
        return out
    finally:
        if have_payload:
            PyBuffer_Release(&pb)


def encode_reply(call_id, payload, sizes, payload_oob):
    return _reply(call_id, payload, sizes, payload_oob, 0, -1)


def reply_frame(call_id, payload, payload_oob, int kind, Py_ssize_t max_body, descs=()):
    """A whole REPLY (or STREAM_ITEM: ``kind``) frame for a value without buffer bytes after its body (no
    buffers, or only the external ``descs``); None if its body would exceed ``max_body``."""
    return _reply(call_id, payload, descs, payload_oob, kind, max_body)


cdef object _reply(call_id, payload, sizes, payload_oob, int kind, Py_ssize_t framed):
    cdef Py_ssize_t head = 16 if framed >= 0 else 0
    cdef int64_t cid = call_id
    cdef Py_buffer pb
    cdef bint have_payload = payload is not None
    cdef Py_ssize_t count = len(sizes) if sizes else 0
    cdef Py_ssize_t total = 11 + 4 + 1
    cdef bytes other = None
    cdef bytes out
    cdef unsigned char* p
    if count and not _all_inline(sizes):
        other = _other_descs(3, sizes)
    if have_payload:
        PyObject_GetBuffer(payload, &pb, PyBUF_SIMPLE)
    try:
        if have_payload:
            total += 7 + pb.len
        total += _descs_len(count, other)
        if head and total > framed:
            return None
        out = PyBytes_FromStringAndSize(NULL, head + total)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        if head:
            p = _header(p, total, <unsigned char>kind)
        p = _wr64(_field(p, 10, 1), cid)
        if have_payload:
            p = _bin(p, 2, <const unsigned char*>pb.buf, pb.len)
        p = _put_descs(p, 3, sizes, count, other)
        p = _field(p, 2, 4)
        p[0] = 1 if payload_oob else 0
        p[1] = 0
        return out
    finally:
        if have_payload:
            PyBuffer_Release(&pb)


cdef object _read_descs(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, object data):
    """(per buffer its size if INLINE, else its ``T.BufferDesc``; the position after the list), or None for the
    generic path: :func:`fastcodec._read_descs` step by step, the same checks in the same order and the same
    errors (the tests hold the two to each other on every single-byte change of bodies with descriptors)."""
    cdef unsigned char etype, t
    cdef int32_t count, kind, n
    cdef int64_t size, offset
    cdef bint have_size, have_kind, have_offset
    cdef int fid
    cdef Py_ssize_t i
    cdef list sizes
    cdef object segment, handle
    if pos + 5 > end:
        raise _bad("truncated list header")
    etype = d[pos]
    count = _rd32(d + pos + 1)
    pos += 5
    if etype != 12:
        return None
    if count < 0 or count > end - pos:
        raise _bad(f"bad buffer list count {count}")
    sizes = []
    for i in range(count):
        have_size = have_kind = have_offset = False
        size = offset = 0
        kind = 0
        segment = handle = None
        while True:
            if pos >= end:
                raise _bad("truncated buffer descriptor")
            t = d[pos]
            if t == 0:
                pos += 1
                break
            if pos + 3 > end:
                raise _bad("truncated field header")
            fid = (d[pos + 1] << 8) | d[pos + 2]
            pos += 3
            if t == 10 and (fid == 1 or fid == 4):
                if pos + 8 > end:
                    raise _bad("truncated i64")
                if fid == 1:
                    size = _rd64(d + pos)
                    have_size = True
                else:
                    offset = _rd64(d + pos)
                    have_offset = True
                pos += 8
            elif t == 8 and fid == 2:
                if pos + 4 > end:
                    raise _bad("truncated kind")
                kind = _rd32(d + pos)
                have_kind = True
                pos += 4
            elif t == 11 and (fid == 3 or fid == 5):
                if pos + 4 > end:
                    raise _bad("truncated length")
                n = _rd32(d + pos)
                pos += 4
                if n < 0 or n > end - pos:
                    raise _bad(f"string length {n} out of bounds")
                if fid == 5:
                    handle = PyBytes_FromStringAndSize(<const char*>(d + pos), n)
                else:
                    segment = _utf8(d + pos, n, "segment name")
                pos += n
            else:
                return None
        if not have_size or size < 0:
            raise _bad("buffer descriptor without a valid size")
        if not have_kind or kind == 0:
            sizes.append(size)
        elif kind in _EXTERNAL:  # SHM, SHM_SHARED, CUDA_IPC
            sizes.append(_desc(size, kind, segment, offset if have_offset else None, handle))
        else:
            return None  # an unknown kind: the generic path says what is wrong
    return sizes, pos


cdef inline str _utf8(const unsigned char* p, Py_ssize_t n, str what):
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError:
        raise _bad(f"{what} is not UTF-8") from None


cdef object _decode_call(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, object data):
    cdef Py_ssize_t p
    cdef int64_t n
    cdef str method
    cdef object payload = None, node_id = None, got
    cdef list sizes
    cdef bint oob
    cdef CallMsg msg
    if end - pos >= CALL_HEAD:
        n = _rd32(d + pos + 25)
        if (d[pos] == 10 and d[pos + 1] == 0 and d[pos + 2] == 1 and d[pos + 11] == 10 and d[pos + 12] == 0
                and d[pos + 13] == 2 and d[pos + 22] == 11 and d[pos + 23] == 0 and d[pos + 24] == 3
                and 0 <= n <= end - pos - CALL_HEAD):
            p = pos + CALL_HEAD
            method = _utf8(d + p, n, "method")
            p += n
            sizes = []
            if p + 3 <= end and d[p] == 11 and d[p + 1] == 0 and d[p + 2] == 4:
                if p + 7 > end:
                    raise _bad("truncated length")
                n = _rd32(d + p + 3)
                p += 7
                if n < 0 or n > end - p:
                    raise _bad(f"payload length {n} out of bounds")
                payload = PyBytes_FromStringAndSize(<const char*>(d + p), n)
                p += n
            if p + 4 <= end and d[p] == 15:
                got = _read_descs(d, p + 3, end, data) if d[p + 2] == 5 and d[p + 1] == 0 else None
                if got is None:
                    return _decode_call_slow(data, pos, end)
                sizes, p = got
            if p + 4 <= end and d[p] == 2 and d[p + 1] == 0 and d[p + 2] == 6:
                oob = d[p + 3] != 0
                p += 4
                if p + 7 <= end and d[p] == 11 and d[p + 1] == 0 and d[p + 2] == 7:
                    n = _rd32(d + p + 3)
                    p += 7
                    if n < 0 or n > end - p:
                        raise _bad(f"node id length {n} out of bounds")
                    node_id = _utf8(d + p, n, "node id")
                    p += n
                if p + 1 == end and d[p] == 0:
                    msg = CallMsg.__new__(CallMsg)
                    msg.call_id = _rd64(d + pos + 3)
                    msg.actor_id = _rd64(d + pos + 14)
                    msg.method = method
                    msg.payload = payload
                    msg.payload_oob = oob
                    msg.node_id = node_id
                    msg.buffers = _externals(sizes) if sizes else None
                    return msg, sizes
    return _decode_call_slow(data, pos, end)


cdef object _decode_reply(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, object data):
    cdef Py_ssize_t p
    cdef int64_t n
    cdef object got, payload
    cdef list sizes
    cdef ReplyMsg msg
    if end - pos >= 22:
        n = _rd32(d + pos + 14)
        if (d[pos] == 10 and d[pos + 1] == 0 and d[pos + 2] == 1 and d[pos + 11] == 11 and d[pos + 12] == 0
                and d[pos + 13] == 2 and 0 <= n <= end - pos - REPLY_HEAD):
            p = pos + REPLY_HEAD + n
            payload = PyBytes_FromStringAndSize(<const char*>(d + pos + REPLY_HEAD), n)
            sizes = []
            if p + 4 <= end and d[p] == 15:
                got = _read_descs(d, p + 3, end, data) if d[p + 2] == 3 and d[p + 1] == 0 else None
                if got is None:
                    return _decode_reply_slow(data, pos, end)
                sizes, p = got
            if p + 5 == end and d[p] == 2 and d[p + 1] == 0 and d[p + 2] == 4 and d[p + 4] == 0:
                msg = ReplyMsg.__new__(ReplyMsg)
                msg.call_id = _rd64(d + pos + 3)
                msg.payload = payload
                msg.payload_oob = d[p + 3] != 0
                msg.buffers = _externals(sizes) if sizes else None
                return msg, sizes
    return _decode_reply_slow(data, pos, end)


cdef inline Py_ssize_t _bounds(Py_buffer* pb, Py_ssize_t pos, Py_ssize_t end) except -1:
    if pos < 0 or end > pb.len or pos > end:
        raise ValueError(f"range {pos}:{end} outside a buffer of {pb.len} bytes")
    return 0


def decode_call(data, Py_ssize_t pos, Py_ssize_t end):
    """Decode a Call body in ``data[pos:end]``: (message, inline buffer sizes), or None for the generic path."""
    cdef Py_buffer pb
    PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
    try:
        _bounds(&pb, pos, end)
        return _decode_call(<const unsigned char*>pb.buf, pos, end, data)
    finally:
        PyBuffer_Release(&pb)


def decode_reply(data, Py_ssize_t pos, Py_ssize_t end):
    """Decode a Reply body in ``data[pos:end]``: (message, inline buffer sizes), or None for the generic path."""
    cdef Py_buffer pb
    PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
    try:
        _bounds(&pb, pos, end)
        return _decode_reply(<const unsigned char*>pb.buf, pos, end, data)
    finally:
        PyBuffer_Release(&pb)


def decode_release(data, Py_ssize_t pos, Py_ssize_t end):
    """A RELEASE body as its ``T.Release`` without thriftpy2's generic reader, or None for the generic path:
    :func:`fastcodec.decode_release` in C (the same checks in the same order; the fuzz target holds the two to
    each other)."""
    cdef Py_buffer pb
    cdef const unsigned char* d
    PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
    try:
        _bounds(&pb, pos, end)
        d = <const unsigned char*>pb.buf
        if end - pos < 9 or d[pos] != 15 or d[pos + 1] != 0 or d[pos + 2] != 1:
            return None
        try:
            got = _read_descs(d, pos + 3, end, data)
        except RemoteProtocolError:
            return None  # malformed: the generic path says what is wrong
        if got is None:
            return None
        descs, after = got
        if after != end - 1 or d[<Py_ssize_t>after] != 0:
            return None
        for x in descs:
            if type(x) is int:  # an INLINE descriptor means nothing in a RELEASE: the generic path judges it
                return None
        return T.Release(buffers=descs)
    finally:
        PyBuffer_Release(&pb)


def buffer_address(buf):
    """The address of the first byte of a contiguous buffer (0 when it is empty): what a shared-memory lookup
    keys on. The pure-Python fallback (disto.serialization.shm) builds a numpy array to ask, ~3 us."""
    cdef Py_buffer pb
    PyObject_GetBuffer(buf, &pb, PyBUF_SIMPLE)
    try:
        return <size_t>pb.buf if pb.len else 0
    finally:
        PyBuffer_Release(&pb)




cdef object _new = object.__new__


cdef inline bint _external_only(object sizes):
    # no buffer whose bytes follow the body: none at all, or only shared-memory / CUDA IPC descriptors (which
    # the event carries as they are, as the connection's general path would)
    for n in sizes:
        if type(n) is int:
            return False
    return True


cdef inline object _event(object cls, object body, object sizes):
    # the event without running Message.__init__ (a Python frame per message)
    cdef object ev = _new(cls)
    ev.body = body
    ev.buffers = list(sizes)
    return ev


def decode_frame(rx, Py_ssize_t start, Py_ssize_t rend, Py_ssize_t max_body):
    """The frame at ``rx[start:rend]`` as an event, if it is a whole CALL, REPLY or STREAM_ITEM with no
    buffer bytes after its body (no buffers, or shared-memory / CUDA IPC ones only) that the fast decoders take: (the event, where the frame ends). None otherwise: too few bytes, or
    for the connection's general path (which checks the header and says what is wrong)."""
    cdef Py_buffer pb
    cdef const unsigned char* d
    cdef uint64_t body_len, oob_len
    cdef Py_ssize_t begin, end
    cdef int kind
    cdef object got
    PyObject_GetBuffer(rx, &pb, PyBUF_SIMPLE)
    try:
        _bounds(&pb, start, rend)
        if rend - start < 16:
            return None
        d = <const unsigned char*>pb.buf + start
        body_len = <uint32_t>_rd32(d)
        oob_len = <uint64_t>_rd64(d + 8)
        kind = d[5]
        if (oob_len or d[4] != _VERSION or d[6] or d[7] or <Py_ssize_t>body_len > max_body
                or <Py_ssize_t>body_len > rend - start - 16):
            return None
        begin = start + 16
        end = begin + <Py_ssize_t>body_len
        if kind == _CALL:
            got = _decode_call(<const unsigned char*>pb.buf, begin, end, rx)
            if got is not None and _external_only((<tuple>got)[1]):
                return _event(Call, (<tuple>got)[0], (<tuple>got)[1]), end
        elif kind == _REPLY or kind == _ITEM:
            got = _decode_reply(<const unsigned char*>pb.buf, begin, end, rx)
            if got is not None and _external_only((<tuple>got)[1]):
                return _event(Reply if kind == _REPLY else StreamItem, (<tuple>got)[0], (<tuple>got)[1]), end
        return None
    finally:
        PyBuffer_Release(&pb)
