# cython: language_level=3
"""Write frames on a channel's socket from a thread that is not the channel's event loop (an actor's thread
answering a call), without a lock and without waking the loop. See :mod:`disto.transport.threadwrites`.

Why this is safe without a lock: everything in :func:`send` runs holding the GIL, the checks and the write
system call alike (the write is non-blocking, a few microseconds), with Python's cyclic collector off so that no
finalizer's Python code can run and hand the GIL over in between. uvloop's own writes hold the GIL too. So a
write from here and one from the loop can never interleave, and what the loop has buffered (``transport``'s
write buffer, libuv's write queue) is seen here before anything is written after it.
"""
from libc.errno cimport EAGAIN, EINTR, errno
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from "Python.h":
    int PyGC_Disable()
    int PyGC_Enable()

cdef extern from "sys/uio.h":
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt) nogil

cdef enum:
    MAX_IOV = 64

SENT = 0     # every byte is on the socket
QUEUED = 1   # some or all of it waits in ch.tail: the loop writes it before anything else (wake it up)
DROPPED = 2  # the channel is closed or closing: nothing was written (the loop tells the caller's side)


def send(ch, list frames, ready) -> int:
    """Write ``frames`` (bytes objects, in order) on ``ch``'s socket now if nothing is waiting to be written before
    them, else append them to ``ch.tail`` for the loop. ``ch.conn.state`` must be ``ready``."""
    cdef int gc_was = PyGC_Disable()
    try:
        return _send(ch, frames, ready)
    finally:
        if gc_was:
            PyGC_Enable()


cdef int _send(ch, list frames, ready) except -1:
    cdef iovec iov[MAX_IOV]
    cdef Py_ssize_t total = 0, n, i, nframes = len(frames)
    cdef int fd = ch.wfd
    if ch.closed or fd < 0 or ch.conn.state is not ready:
        return DROPPED
    transport = ch.transport
    if transport is None or transport.is_closing():
        return DROPPED
    tail = ch.tail
    if tail is not None or nframes > MAX_IOV or transport.get_write_buffer_size():
        _queue(ch, frames, 0)  # after what is waiting (the loop's buffer, or the tail already there)
        return QUEUED
    for i in range(nframes):
        f = frames[i]
        if type(f) is not bytes:
            raise TypeError(f"frames written from a thread must be bytes, not {type(f).__name__}")
        iov[i].iov_base = PyBytes_AS_STRING(f)
        iov[i].iov_len = <size_t>PyBytes_GET_SIZE(f)
        total += PyBytes_GET_SIZE(f)
    n = writev(fd, iov, <int>nframes)
    while n < 0 and errno == EINTR:
        n = writev(fd, iov, <int>nframes)
    if n < 0:
        if errno != EAGAIN:  # (EWOULDBLOCK is the same number on Linux)
            return DROPPED  # (the connection broke: the loop's side of it hears so and fails its calls)
        n = 0
    ch.bytes_out += n
    if n == total:
        return SENT
    _queue(ch, frames, n)
    return QUEUED


cdef void _queue(ch, list frames, Py_ssize_t skip) except *:
    """Append what is left of ``frames`` after their first ``skip`` bytes to ``ch.tail``."""
    rest = []
    for f in frames:
        size = len(f)
        if skip >= size:
            skip -= size
            continue
        rest.append(f[skip:] if skip else f)
        skip = 0
    tail = ch.tail
    if tail is None:
        ch.tail = rest
    else:
        tail.extend(rest)
