# Built with Cython (setup.py), Connection is a C type with these fields typed; connection.py stays the source and
# the pure-Python fallback. See disto/native.py.
cdef class Connection:
    cdef public object dialer, identity, peer, state, _handshake, _alloc, _rx_view, _hdr, _msg, _pending_sizes
    cdef public object _direct
    cdef public bytearray _rx
    cdef public Py_ssize_t _max_body, _max_frame, _large, _rstart, _rend, _direct_filled

    cpdef send_call(self, call_id, actor_id, method, payload, buffers=*, payload_oob=*, node_id=*, traceparent=*)
    cpdef send_reply(self, call_id, payload, buffers=*, payload_oob=*, kind=*)
    cpdef next_event(self)
    cpdef send_release(self, names)
