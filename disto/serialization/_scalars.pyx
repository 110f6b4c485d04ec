# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Pickle streams of the commonest payloads, written and read without a Pickler: what :mod:`.scalars` uses when
it is built (``pip install``, Cython and the machine's C compiler).

``dumps`` writes None, bools, ints, floats and ASCII strs, and tuples, lists and dicts of them (a call's ``(args,
kwargs)`` included; nested up to NEST deep, at most CONTAINERS lists and dicts, none met twice) as the protocol-5
opcodes ``pickle`` would use for them (without its FRAME and MEMOIZE opcodes, which only help larger streams);
anything else, or a stream that would not fit its 1 KiB buffer, is ``pickle.dumps(obj, 5)``. ``dumps_plain`` is
the same writer that returns None instead. Any ``pickle.loads`` reads what they write, so a peer running the
pure-Python modules needs nothing of this.

``loads`` reads a stream made only of those opcodes (with or without FRAME and MEMOIZE: the shape
``pickle.dumps`` gives them) and hands everything else, whatever is unusual or malformed, to ``pickle.loads``,
which stays the one judge of such input: the value or the error is pickle's own. Every read is bounded.
"""
import pickle

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.long cimport PyLong_FromLong, PyLong_FromLongLong
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    Py_ssize_t PyDict_GET_SIZE "PyDict_Size"(object) except -1

cdef object _pickle_dumps = pickle.dumps
cdef object _pickle_loads = pickle.loads

cdef enum:
    CAP = 1024       # bytes of stream written without pickle; larger values are rare here and pickle does them well
    NEST = 4         # containers inside containers, at most (a deeper value goes to pickle)
    CONTAINERS = 16  # lists and dicts in one value, at most


cdef struct Out:
    unsigned char buf[CAP]
    Py_ssize_t n
    PyObject* containers[CONTAINERS]  # the lists and dicts written so far
    int seen


cdef inline bint _room(Out* o, Py_ssize_t k) noexcept:
    return o.n + k <= CAP - 1  # one byte kept for STOP


cdef bint _put_int(Out* o, object v) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    cdef uint64_t u
    cdef int k, n
    cdef unsigned char b[8]
    if overflow or not _room(o, 10):
        return False
    if 0 <= x < 256:
        o.buf[o.n] = b'K'; o.buf[o.n + 1] = <unsigned char>x; o.n += 2
    elif 0 <= x < 65536:
        o.buf[o.n] = b'M'; o.buf[o.n + 1] = x & 0xff; o.buf[o.n + 2] = (x >> 8) & 0xff; o.n += 3
    elif -2147483648 <= x < 2147483648:
        u = <uint32_t><int32_t>x
        o.buf[o.n] = b'J'
        o.buf[o.n + 1] = u & 0xff; o.buf[o.n + 2] = (u >> 8) & 0xff
        o.buf[o.n + 3] = (u >> 16) & 0xff; o.buf[o.n + 4] = (u >> 24) & 0xff
        o.n += 5
    else:  # LONG1: little-endian two's complement, as few bytes as keep the sign (pickle's encode_long)
        u = <uint64_t>x
        for k in range(8):
            b[k] = (u >> (8 * k)) & 0xff
        n = 8
        while n > 1 and ((b[n - 1] == 0 and not (b[n - 2] & 0x80)) or (b[n - 1] == 0xff and (b[n - 2] & 0x80))):
            n -= 1
        o.buf[o.n] = 0x8a; o.buf[o.n + 1] = n
        memcpy(&o.buf[o.n + 2], b, n)
        o.n += 2 + n
    return True


cdef bint _put_float(Out* o, object v) except -1:
    cdef double d = PyFloat_AS_DOUBLE(v)
    cdef uint64_t u
    cdef int k
    if not _room(o, 9):
        return False
    memcpy(&u, &d, 8)
    o.buf[o.n] = b'G'
    for k in range(8):
        o.buf[o.n + 1 + k] = (u >> (56 - 8 * k)) & 0xff
    o.n += 9
    return True


cdef bint _put_str(Out* o, object v) except -1:
    cdef Py_ssize_t n
    if not PyUnicode_IS_ASCII(v):
        return False
    n = PyUnicode_GET_LENGTH(v)
    if n > 255 or not _room(o, 2 + n):
        return False
    o.buf[o.n] = 0x8c; o.buf[o.n + 1] = <unsigned char>n  # SHORT_BINUNICODE
    memcpy(&o.buf[o.n + 2], PyUnicode_DATA(v), n)
    o.n += 2 + n
    return True


cdef inline bint _byte(Out* o, unsigned char op) noexcept:
    """One opcode, if there is room for it (and STOP after it)."""
    if not _room(o, 1):
        return False
    o.buf[o.n] = op
    o.n += 1
    return True


cdef bint _put_value(Out* o, object v, int depth) except -1:
    """Write ``v`` if it is a scalar, or a tuple, list or dict of such values (nested up to NEST deep, keys too);
    False where it is not, or does not fit. A list or dict met twice (shared, or inside itself) is False too:
    pickle keeps such sharing (its memo), this writer would not."""
    cdef Py_ssize_t i, n, pos = 0
    cdef PyObject* key
    cdef PyObject* val
    t = type(v)
    if v is None:
        return _byte(o, b'N')
    if t is bool:
        return _byte(o, 0x88 if v is True else 0x89)  # NEWTRUE, NEWFALSE
    if t is int:
        return _put_int(o, v)
    if t is float:
        return _put_float(o, v)
    if t is str:
        return _put_str(o, v)
    if depth >= NEST:
        return False
    if t is tuple:
        n = PyTuple_GET_SIZE(v)
        if n == 0:
            return _byte(o, b')')  # EMPTY_TUPLE
        if n > 3 and not _byte(o, b'('):  # MARK
            return False
        for i in range(n):
            if not _put_value(o, <object>PyTuple_GET_ITEM(v, i), depth + 1):
                return False
        return _byte(o, b't' if n > 3 else 0x84 + n)  # TUPLE, or TUPLE1..TUPLE3
    if t is not list and t is not dict:
        return False
    for i in range(o.seen):
        if o.containers[i] == <PyObject*>v:
            return False
    if o.seen == CONTAINERS:
        return False
    o.containers[o.seen] = <PyObject*>v
    o.seen += 1
    n = PyList_GET_SIZE(v) if t is list else PyDict_GET_SIZE(v)
    if not _byte(o, b']' if t is list else b'}'):  # EMPTY_LIST, EMPTY_DICT
        return False
    if n == 0:
        return True
    if not _byte(o, b'('):  # MARK
        return False
    if t is list:
        for i in range(n):
            if not _put_value(o, <object>PyList_GET_ITEM(v, i), depth + 1):
                return False
    else:
        while PyDict_Next(v, &pos, &key, &val):
            if not _put_value(o, <object>key, depth + 1) or not _put_value(o, <object>val, depth + 1):
                return False
    return _byte(o, b'e' if t is list else b'u')  # APPENDS, SETITEMS


cdef inline bint _write(Out* o, object obj) except -1:
    o.buf[0] = 0x80; o.buf[1] = 5  # PROTO 5
    o.n = 2
    o.seen = 0
    if not _put_value(o, obj, 0):
        return False
    o.buf[o.n] = b'.'  # STOP (its byte was kept free)
    o.n += 1
    return True


def dumps(obj: object) -> bytes:
    """``obj`` as a pickle stream: pickle's opcodes for the common shapes, else ``pickle.dumps(obj, 5)``."""
    cdef Out o
    if not _write(&o, obj):
        return _pickle_dumps(obj, 5)
    return PyBytes_FromStringAndSize(<const char*>o.buf, o.n)


def dumps_plain(obj: object) -> object:
    """``obj`` as a pickle stream if it is a scalar or a tuple, list or dict of such values (a call's ``(args,
    kwargs)`` included) that this module writes itself; None otherwise (a tensor, an object, a value too large
    or shared): the caller's general path then pickles it."""
    cdef Out o
    if not _write(&o, obj):
        return None
    return PyBytes_FromStringAndSize(<const char*>o.buf, o.n)


cdef inline int64_t _le(const unsigned char* p, int n) noexcept:
    """n <= 8 little-endian bytes, two's complement."""
    cdef uint64_t u = 0
    cdef int k
    for k in range(n):
        u |= (<uint64_t>p[k]) << (8 * k)
    if n < 8 and (p[n - 1] & 0x80):
        u |= ~((<uint64_t>1 << (8 * n)) - 1)  # sign-extend
    return <int64_t>u


cdef enum:
    DEPTH = 64  # values on the stack at once; a longer tuple goes to pickle
    MARKS = 8   # MARKs open at once


cdef object _GIVE_UP = object()  # what _fast_loads returns to say: give it to pickle
GIVE_UP = _GIVE_UP


cdef object _fast_loads(const unsigned char* d, Py_ssize_t end):
    cdef PyObject* stack[DEPTH]
    cdef Py_ssize_t top = 0
    try:
        return _run(d, end, stack, &top)
    finally:
        while top > 0:
            top -= 1
            Py_DECREF(<object>stack[top])


cdef inline bint _push(PyObject** stack, Py_ssize_t* top, object v) except -1:
    if top[0] >= DEPTH:
        return False
    Py_INCREF(v)
    stack[top[0]] = <PyObject*>v
    top[0] += 1
    return True


cdef object _tuple(PyObject** stack, Py_ssize_t* top, Py_ssize_t n):
    """The top n values as a tuple, which takes their references and replaces them on the stack."""
    cdef tuple t = PyTuple_New(n)
    cdef Py_ssize_t k, base = top[0] - n
    for k in range(n):
        PyTuple_SET_ITEM(t, k, <object>stack[base + k])  # steals the stack's reference
    top[0] = base
    return t


cdef inline void _drop(PyObject** stack, Py_ssize_t* top, Py_ssize_t base) noexcept:
    """Pop the values above ``base`` (their references go)."""
    while top[0] > base:
        top[0] -= 1
        Py_DECREF(<object>stack[top[0]])


cdef object _run(const unsigned char* d, Py_ssize_t end, PyObject** stack, Py_ssize_t* top):
    cdef Py_ssize_t p = 2, n, k, m, floor
    cdef Py_ssize_t marks[MARKS]
    cdef int nmarks = 0
    cdef object target
    cdef unsigned char op
    cdef uint64_t u
    cdef double x
    if end < 3 or d[0] != 0x80 or d[1] < 2 or d[1] > 5:
        return _GIVE_UP
    if d[2] == 0x95:  # FRAME: the rest of the stream, exactly
        if end < 11 or <Py_ssize_t>_le(d + 3, 8) != end - 11:
            return _GIVE_UP
        p = 11
    while p < end:
        op = d[p]
        p += 1
        if op == b'K':
            if p + 1 > end or not _push(stack, top, PyLong_FromLong(d[p])):
                return _GIVE_UP
            p += 1
        elif op == b'M':
            if p + 2 > end or not _push(stack, top, PyLong_FromLong(d[p] | (d[p + 1] << 8))):
                return _GIVE_UP
            p += 2
        elif op == b'J':
            if p + 4 > end or not _push(stack, top, PyLong_FromLong(<int32_t>_le(d + p, 4))):
                return _GIVE_UP
            p += 4
        elif op == 0x8a:  # LONG1
            if p + 1 > end:
                return _GIVE_UP
            n = d[p]
            if n < 1 or n > 8 or p + 1 + n > end or not _push(stack, top, PyLong_FromLongLong(_le(d + p + 1, <int>n))):
                return _GIVE_UP
            p += 1 + n
        elif op == b'G':
            if p + 8 > end:
                return _GIVE_UP
            u = 0
            for k in range(8):
                u = (u << 8) | d[p + k]
            memcpy(&x, &u, 8)
            if not _push(stack, top, PyFloat_FromDouble(x)):
                return _GIVE_UP
            p += 8
        elif op == 0x8c or op == b'X':  # SHORT_BINUNICODE, BINUNICODE
            k = 1 if op == 0x8c else 4
            if p + k > end:
                return _GIVE_UP
            n = d[p] if k == 1 else <Py_ssize_t><uint32_t>_le(d + p, 4)
            p += k
            if n > end - p:
                return _GIVE_UP
            try:
                v = PyUnicode_DecodeUTF8(<const char*>(d + p), n, "surrogatepass")
            except UnicodeDecodeError:
                return _GIVE_UP
            if not _push(stack, top, v):
                return _GIVE_UP
            p += n
        elif op == b'N':
            if not _push(stack, top, None):
                return _GIVE_UP
        elif op == 0x88 or op == 0x89:
            if not _push(stack, top, op == 0x88):
                return _GIVE_UP
        elif op == b')':
            if not _push(stack, top, ()):
                return _GIVE_UP
        elif op == b'}':
            if not _push(stack, top, {}):
                return _GIVE_UP
        elif op == b']':
            if not _push(stack, top, []):
                return _GIVE_UP
        elif 0x85 <= op <= 0x87:  # TUPLE1..TUPLE3
            n = op - 0x84
            if top[0] - n < (marks[nmarks - 1] if nmarks else 0):
                return _GIVE_UP
            _push(stack, top, _tuple(stack, top, n))  # (room: n >= 1 values just left the stack)
        elif op == b'(':
            if nmarks == MARKS:
                return _GIVE_UP
            marks[nmarks] = top[0]
            nmarks += 1
        elif op == b't':
            if nmarks == 0:
                return _GIVE_UP
            nmarks -= 1
            _push(stack, top, _tuple(stack, top, top[0] - marks[nmarks]))
        elif op == b'e' or op == b'u':  # APPENDS, SETITEMS: the values since the MARK into the container under it
            if nmarks == 0:
                return _GIVE_UP
            m = marks[nmarks - 1]
            floor = marks[nmarks - 2] if nmarks > 1 else 0
            if m - 1 < floor:
                return _GIVE_UP
            target = <object>stack[m - 1]
            if op == b'e':
                if type(target) is not list:
                    return _GIVE_UP
                for k in range(m, top[0]):
                    target.append(<object>stack[k])
            else:
                if type(target) is not dict or (top[0] - m) % 2:
                    return _GIVE_UP
                try:
                    for k in range(m, top[0], 2):
                        target[<object>stack[k]] = <object>stack[k + 1]
                except TypeError:  # an unhashable key
                    return _GIVE_UP
            nmarks -= 1
            _drop(stack, top, m)
        elif op == b'a':  # APPEND
            floor = marks[nmarks - 1] if nmarks else 0
            if top[0] - 2 < floor or type(<object>stack[top[0] - 2]) is not list:
                return _GIVE_UP
            (<list>stack[top[0] - 2]).append(<object>stack[top[0] - 1])
            _drop(stack, top, top[0] - 1)
        elif op == b's':  # SETITEM
            floor = marks[nmarks - 1] if nmarks else 0
            if top[0] - 3 < floor or type(<object>stack[top[0] - 3]) is not dict:
                return _GIVE_UP
            try:
                (<dict>stack[top[0] - 3])[<object>stack[top[0] - 2]] = <object>stack[top[0] - 1]
            except TypeError:
                return _GIVE_UP
            _drop(stack, top, top[0] - 2)
        elif op == 0x94:  # MEMOIZE: nothing refers to the memo in what this reads (a GET goes to pickle)
            if top[0] == 0:
                return _GIVE_UP
        elif op == b'.':
            if p != end or nmarks or top[0] != 1:
                return _GIVE_UP
            return <object>stack[0]
        else:
            return _GIVE_UP
    return _GIVE_UP


def fast_loads(data: object) -> object:
    """What ``loads`` reads itself: the value, or :data:`GIVE_UP` where it would call ``pickle.loads`` (the
    tests and the fuzz target compare it with a pickle Unpickler that may not import anything)."""
    if type(data) is not bytes:
        return _GIVE_UP
    return _fast_loads(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def loads(data: object) -> object:
    """``pickle.loads(data)``, read here when ``data`` is a bytes stream of the common shapes."""
    cdef object got
    if type(data) is bytes:
        got = _fast_loads(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if got is not _GIVE_UP:
            return got
    return _pickle_loads(data)
