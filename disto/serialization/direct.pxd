# Built with Cython (setup.py) from direct.py, which stays the source and the pure-Python fallback (disto/native.py).
# The encoder's and decoder's steps are C functions; the stream is read as C bytes.
import cython

cpdef encode(object obj, bint same_host)
cdef bint _has_tensor(object x, int depth) except -1
cdef bint _put(bytearray out, object x, list buffers, object shared, list seen, int depth) except -1
cdef int _put_str(bytearray out, str s) except -1
@cython.locals(ndim=Py_ssize_t, nbytes=Py_ssize_t, flags=int, code=object, d=Py_ssize_t)
cdef bint _put_tensor(bytearray out, object x, list buffers, object shared, list seen) except -1

cdef class _Reader:
    cdef public bytes data
    cdef public object buffers
    cdef public Py_ssize_t pos, taken
    cpdef Py_ssize_t take(self, Py_ssize_t n) except -1

cpdef decode(object data, object buffers=*)
@cython.locals(tag=int, n=Py_ssize_t, pos=Py_ssize_t)
cdef _get(_Reader r, int depth)
@cython.locals(n=Py_ssize_t, pos=Py_ssize_t)
cdef str _get_str(_Reader r)
@cython.locals(data=bytes, pos=Py_ssize_t, code=int, flags=int, ndim=int, n=Py_ssize_t, numel=object, d=object)
cdef _get_tensor(_Reader r)
@cython.locals(b0=cython.ulonglong, b1=cython.ulonglong, b2=cython.ulonglong, b3=cython.ulonglong)
cdef unsigned long long _u32(bytes data, Py_ssize_t pos) except? 0
