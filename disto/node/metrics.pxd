# Built with Cython (setup.py), these are C types with typed fields (the reply of every call is counted here);
# metrics.py stays the source and the pure-Python fallback. See disto/native.py.
cdef class MethodStats:
    cdef public list counts, buckets
    cdef public double sum

cdef class ActorStats:
    cdef public dict methods
    cdef public double started
