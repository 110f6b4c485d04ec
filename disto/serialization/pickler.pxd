# Built with Cython (setup.py) from pickler.py, which stays the source and the pure-Python fallback (see
# disto/native.py). The per-value checks and the tensor reduction are C functions, called as such from here, and
# a thread's reusable pickler is a C type with typed fields.
cpdef bint _plain(object obj, int depth=*)
cpdef bint _strided(object t)
cpdef _reduce_strided(object t, object shared)

cdef class _FastDump:
    cdef public object file, pickler, buffers, shared
    cdef public bint tensors, busy
    cpdef dump(self, obj, bint same_host)

cpdef _FastDump _thread_dump()
