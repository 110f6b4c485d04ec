# cython: language_level=3
"""``Block``: writable bytes at a raw address, exported through the buffer protocol, that keep their owner alive
and can call back once when they are gone. Compiled (~0.1 us to make) where the pure-Python equivalent builds a
numpy array from an ``__array_interface__`` and a ``weakref.finalize`` (~10 us); :mod:`disto.memory.blocks` picks
this when it was built and falls back to that otherwise."""
cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES

cdef char* _FORMAT = b"B"  # unsigned bytes


@cython.no_gc_clear  # the callback must survive a garbage collection that breaks a cycle through the block
@cython.final
cdef class Block:
    """``size`` writable bytes at ``address``, inside memory that ``owner`` keeps alive. ``on_release`` (if not
    None) is called once, from whatever thread drops the last reference to the block, i.e. once nothing built on
    it (a memoryview, numpy array or tensor over it) is left. Exceptions it raises are reported, not raised."""
    cdef readonly object owner
    cdef object on_release
    cdef size_t address
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self, object owner, size_t address, Py_ssize_t size, object on_release=None):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.owner = owner
        self.address = address
        self.shape[0] = size
        self.strides[0] = 1
        self.on_release = on_release

    @property
    def nbytes(self) -> int:
        return self.shape[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        buffer.buf = <void*>self.address
        buffer.obj = self
        buffer.len = self.shape[0]
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = NULL
        if flags & PyBUF_FORMAT:
            buffer.format = _FORMAT
        buffer.ndim = 1
        buffer.shape = NULL
        if (flags & PyBUF_ND) == PyBUF_ND:
            buffer.shape = self.shape
        buffer.strides = NULL
        if (flags & PyBUF_STRIDES) == PyBUF_STRIDES:
            buffer.strides = self.strides
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __dealloc__(self):
        cb = self.on_release
        if cb is not None:
            self.on_release = None
            cb()  # (an exception here is reported as unraisable, as a weakref.finalize callback's would be)
