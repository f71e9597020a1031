# Output buffers: batch output lent to numpy, and reused once numpy is done.
# Part of grouper.pyx (included at module level).

cdef enum:
    OUT_FAULTS = 0
    OUT_OFFSETS = 1
    OUT_COOKIES = 2
    OUT_BOX = 3
    SMALL_OUT = 65536         # below: copied out, the buffer kept
    SMALL_INDEX = 4096        # the same for offsets and cookies (see buf_out)


cdef extern from "numpy/arrayobject.h":
    # (not in numpy's __init__.pxd) Steals a reference to descr.
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, PyObject* obj)


cdef class _Block:
    """Owns a PyMem_Raw block and lends it to numpy through the buffer protocol.

    When its last array goes, the memory goes back to its grouper's Spare
    (if that slot is free), so that the next batch writes into pages that
    are already mapped instead of new ones the kernel must fault in and
    zero (a third of a batch's time, measured).

    It owns the block only once buf_commit says so: until then (while the
    other outputs of the same call are made) the buffer still does, and a
    MemoryError drops the block's arrays without freeing what they showed.
    """
    cdef char* data
    cdef Py_ssize_t size
    cdef size_t cap
    cdef int kind
    cdef bint owns
    cdef Spare* spare

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.size
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL
        view.ndim = 1
        view.shape = NULL
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        cdef Spare* s = self.spare
        if not self.owns:
            pass
        elif s != NULL and not s.closed and s.data[self.kind] == NULL:
            s.data[self.kind] = self.data
            s.cap[self.kind] = self.cap
        else:
            PyMem_RawFree(self.data)
        self.data = NULL
        if s != NULL:
            s.refs -= 1
            if s.refs == 0:
                PyMem_RawFree(s)
        self.spare = NULL


cdef void buf_refill(Buf* b, Spare* s, int kind) noexcept:
    """Give b the spare block of its kind if that is bigger than what b has."""
    if s != NULL and s.data[kind] != NULL and s.cap[kind] > b.cap:
        if b.len:
            memcpy(s.data[kind], b.data, b.len)
        PyMem_RawFree(b.data)
        b.data = s.data[kind]
        b.cap = s.cap[kind]
        s.data[kind] = NULL


cdef size_t spare_bytes(const Spare* s) noexcept:
    cdef size_t n = 0
    cdef int k
    for k in range(4):
        if s.data[k] != NULL:
            n += s.cap[k]
    return n


cdef tuple buf_out(Buf* b, cnp.dtype dtype, Spare* spare, int kind):
    """(array, block): the buffer's contents as a numpy array, the buffer not
    changed yet; buf_commit(block) then empties it, which cannot fail. Two
    steps, so that a call that takes several buffers takes all or none when
    numpy fails to allocate.

    Above 64 KiB the block itself becomes the array's memory (no copy; copying
    the 52 bytes of every fault again cost as much as grouping them) and
    comes back for another batch when the array is gone; below, a copy
    (block None). Offsets and cookies, 8 bytes a group, go as blocks from
    4 KiB: their buffers grow by doubling, so the block is at most twice
    what the array shows, where the faults' is run()'s room for the worst
    case (a copy and a new array for each cost more than grouping 100
    faults).
    """
    cdef _Block blk
    cdef cnp.npy_intp n = <cnp.npy_intp>(b.len // dtype.itemsize)
    # Not the responses: reserve() makes room for a respond_batch's every
    # cookie, answered or stale, so their block may be far bigger than them.
    if b.len < (SMALL_INDEX if kind == OUT_OFFSETS or kind == OUT_COOKIES else SMALL_OUT):
        out = new_array(dtype, n, NULL)
        if b.len:
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>out), b.data, b.len)
        return out, None
    blk = _Block.__new__(_Block)
    blk.data = b.data
    blk.size = <Py_ssize_t>b.len
    blk.cap = b.cap
    blk.kind = kind
    if spare != NULL:
        blk.spare = spare
        spare.refs += 1
    out = new_array(dtype, n, b.data)
    cnp.set_array_base(<cnp.ndarray>out, blk)
    return out, blk


cdef object new_array(cnp.dtype dtype, cnp.npy_intp n, char* data):
    """A 1-D array of n items: over data (the caller then sets its base), or
    numpy's own memory (data NULL). What np.empty or np.frombuffer would
    make, without their argument parsing and buffer protocol (together most
    of the cost of taking a batch's output). The allocation debug switch
    (_fail_alloc_after) counts it, so that tests can fail it."""
    if alloc_fails():
        raise MemoryError()
    Py_INCREF(dtype)                # PyArray_NewFromDescr steals it
    return PyArray_NewFromDescr(<PyTypeObject*>np.ndarray, dtype, 1, &n, NULL, data,
                                cnp.NPY_ARRAY_CARRAY if data != NULL else 0, NULL)


cdef inline void buf_clear(Buf* b) noexcept nogil:
    """Empty b, whose contents were copied out. Large room that held little
    goes rather than stay with the grouper: a batch's reservation for its
    worst case, or a respond_batch's for cookies that turned out stale."""
    if b.len < SMALL_OUT and b.cap > SMALL_OUT:
        PyMem_RawFree(b.data)
        b.data = NULL
        b.cap = 0
    b.len = 0


cdef void buf_commit(Buf* b, _Block blk, Spare* spare, int kind) noexcept:
    """Empty the buffer whose contents buf_out made into an array (and block)."""
    if blk is None:
        buf_clear(b)
        return
    blk.owns = True                 # the block's memory is the array's now
    b.data = NULL
    b.len = b.cap = 0
    buf_refill(b, spare, kind)


cdef object buf_take(Buf* b, cnp.dtype dtype, Spare* spare, int kind):
    """buf_out then buf_commit: the buffer's contents as an array, the buffer emptied."""
    out, blk = buf_out(b, dtype, spare, kind)
    buf_commit(b, blk, spare, kind)
    return out


# --- outputs that keep the faults of pending groups (Segs, see grouper.pxd) ---

cdef int segs_grow(Segs* s) except -1 nogil:
    """Twice the output numbers (the new ones free); s unchanged on failure."""
    cdef uint32_t cap = s.cap * 2 if s.cap else 4, i
    cdef char* a
    cdef Seg* seg
    cdef uint32_t* u
    if cap > 0x10000000u:
        return raise_nomem()
    a = <char*>xmalloc(<size_t>cap * (sizeof(Seg) + 3 * sizeof(uint32_t)))
    if a == NULL:
        return raise_nomem()
    seg = <Seg*>a
    u = <uint32_t*>(a + <size_t>cap * sizeof(Seg))
    if s.cap:
        memcpy(seg, s.seg, s.cap * sizeof(Seg))
        memcpy(u, s.dead, s.ndead * sizeof(uint32_t))
        memcpy(u + cap, s.thin, s.nthin * sizeof(uint32_t))
        memcpy(u + 2 * cap, s.free, s.nfree * sizeof(uint32_t))
    memset(seg + s.cap, 0, (cap - s.cap) * sizeof(Seg))
    for i in range(s.cap, cap):
        u[2 * cap + s.nfree] = i
        s.nfree += 1
    PyMem_RawFree(s.seg)
    s.seg = seg
    s.dead = u
    s.thin = u + cap
    s.free = u + 2 * cap
    s.cap = cap
    return 0


cdef inline size_t segs_sizeof(const Segs* s) noexcept nogil:
    return s.cap * (sizeof(Seg) + 3 * sizeof(uint32_t))


cdef void segs_free(Segs* s) noexcept nogil:
    PyMem_RawFree(s.seg)
    s.seg = NULL
    s.dead = s.thin = s.free = NULL
    s.cap = s.cur = s.ndead = s.nthin = s.nfree = 0


cdef inline uint32_t segs_hold(Segs* s, uint64_t cookie, uint32_t nfaults) noexcept nogil:
    """Pending group `cookie` keeps its faults in the output being filled: its number."""
    cdef Seg* x = &s.seg[s.cur]
    if x.first == 0:
        x.first = cookie
    x.last = cookie
    x.pending += 1
    x.kept += nfaults
    return s.cur


cdef inline void segs_thin(Segs* s, uint32_t i) noexcept nogil:
    """Put taken output i on the thin stack if it keeps under a quarter of its faults."""
    cdef Seg* x = &s.seg[i]
    if not x.thin and x.pending and 4 * x.kept < x.faults:
        x.thin = True
        s.thin[s.nthin] = i
        s.nthin += 1


cdef inline void segs_release(Segs* s, uint32_t i, uint32_t nfaults) noexcept nogil:
    """A group whose faults output i kept is answered, or given nodes. The
    grouper lets go of a taken output it no longer needs, or thins it, as
    the call ends (Grouper.seg_sweep, with the GIL)."""
    cdef Seg* x = &s.seg[i]
    x.pending -= 1
    x.kept -= nfaults
    if x.pending == 0:
        # None left: the output being filled starts its cookie range again at
        # its next group (segs_hold). Else a run of batches answered as they
        # formed (not kept, so the same output is filled again) would stretch
        # it, and a thin output would walk every cookie handed out since.
        x.first = 0
        if i != s.cur:
            s.dead[s.ndead] = i
            s.ndead += 1
    elif i != s.cur:
        segs_thin(s, i)


cdef inline void segs_next(Segs* s) noexcept nogil:
    """Start filling a free output number (seg_room made sure there is one)."""
    s.nfree -= 1
    s.cur = s.free[s.nfree]
    memset(&s.seg[s.cur], 0, sizeof(Seg))
