# Built with Cython (setup.py), ChannelCore is a C type with these fields typed; channel.py stays the source and
# the pure-Python fallback. See disto/native.py.
from disto.wire.connection cimport Connection as CConnection

cdef class ChannelCore:
    cdef public object owner, get_buffer, address, transport, loop, lost_reason, ready_waiters
    cdef public CConnection conn
    cdef public bint ready, closed, reading_paused, _processing, _flush_scheduled, writing_paused
    cdef public bint same_host, said_goodbye
    cdef public Py_ssize_t queued, max_queued
    cdef public object _batch, _wq, _handshake_timer
    cdef public double last_heard
    cdef public long long bytes_in, bytes_out, shm_bytes_out, cuda_bytes_out
    cdef public int wfd
    cdef public object tail

    cpdef write(self, frames)
    cpdef _process(self)
