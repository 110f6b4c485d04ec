# Built with Cython (setup.py), ActorThread is a C type with typed fields; threads.py stays the source and the
# pure-Python fallback. See disto/native.py.
cdef class ActorThread:
    cdef public object name, _loop, _jobs, _thread, _outcomes, direct
    cdef public int _wake, _done
    cdef public bint _flush_scheduled, _wake_pending, lazy, _flushing
