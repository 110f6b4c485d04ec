# Built with Cython (setup.py), these are C types with typed fields, and the call path's methods take typed
# channels; outbound.py stays the source and the pure-Python fallback. See disto/native.py.
cimport cython
from disto.transport.channel cimport ChannelCore

cdef class CallTable:
    cdef public dict pending, streams
    cdef public object waiting
    cdef public long long next_id

cdef class OutboundCalls:
    cdef public object stream_window, _here, _peers, _buffers, _local, _lost, loop
    cdef public Py_ssize_t max_inflight, max_frame
    cdef public unsigned long loop_thread
    cdef public dict tables

    @cython.locals(ch=ChannelCore, table=CallTable)
    cpdef call(self, ref, method, args, kwargs, oneway=*)
    @cython.locals(cid="long long")
    cpdef _send(self, ChannelCore ch, CallTable table, call, fut, oneway)
    @cython.locals(table=CallTable)
    cpdef on_reply(self, ChannelCore ch, ev)
