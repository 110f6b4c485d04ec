# Built with Cython (setup.py), these are C types with typed fields; mailbox.py stays the source and the
# pure-Python fallback. See disto/native.py.
cdef class CallItem:
    cdef public object ch, call_id, method, args, kwargs, fut, task, coro, span
    cdef public bint abandoned
    cdef public double t0, t1

cdef class Mailbox:
    cdef public object _open_stream, stats, instance, label, queue, running_items, _reply, _fail, _methods
    cdef public object thread, _joining, _direct, _answered
    cdef public Py_ssize_t limit, running, _run_left
    cdef public bint stopped, _run_open

    cpdef post(self, CallItem item)
    cpdef _start(self, CallItem item)
