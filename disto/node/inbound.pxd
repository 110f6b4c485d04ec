# Built with Cython (setup.py), InboundCalls is a C type and on_call takes a typed channel; inbound.py stays the
# source and the pure-Python fallback. See disto/native.py.
from disto.transport.channel cimport ChannelCore

cdef class InboundCalls:
    cdef public object _node, _here, _actors, _replies, _buffers

    cpdef on_call(self, ChannelCore ch, ev)
