# Built with Cython (setup.py), Replies is a C type and reply() takes a typed call item and channel; replies.py
# stays the source and the pure-Python fallback. See disto/native.py.
cimport cython
from disto.actor.mailbox cimport CallItem as CCallItem
from disto.transport.channel cimport ChannelCore

cdef class Replies:
    cdef public object _ship, _here, _buffers, _max_frame
    cdef public long long thread_answers

    @cython.locals(ch=ChannelCore)
    cpdef reply(self, CCallItem item, value)
    @cython.locals(ch=ChannelCore)
    cpdef prepare(self, CCallItem item, value)
    @cython.locals(ch=ChannelCore)
    cpdef bint send(self, CCallItem item, list frames)
    @cython.locals(ch=ChannelCore)
    cpdef after_send(self, CCallItem item, ok, value, tb)
