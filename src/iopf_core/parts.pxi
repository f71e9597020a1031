# Partial groups (Part, see grouper.pxd): their pool, and how the index
# tables find them. Part of grouper.pyx (included at module level).

cdef inline Part* P(const PartPool* pp, uint32_t i) noexcept nogil:
    return &pp.chunks[i >> CHUNK_BITS][i & CHUNK_MASK]


cdef int pool_grow(PartPool* pp) except -1 nogil:
    """Add one chunk of Parts to the free list (fixed chunks: indexes stay valid)."""
    cdef size_t cap = pp.chunks_cap
    cdef uint32_t i, base = pp.cap
    cdef Part* chunk
    if pp.cap >= 0xFFFFFFFFu - CHUNK:
        return raise_nomem()
    if pp.n_chunks == pp.chunks_cap:
        pp.chunks = <Part**>grow(pp.chunks, &cap, cap + 1, sizeof(Part*))
        pp.chunks_cap = <uint32_t>cap
    chunk = <Part*>xmalloc(CHUNK * sizeof(Part))
    if chunk == NULL:
        return raise_nomem()
    pp.chunks[pp.n_chunks] = chunk
    pp.n_chunks += 1
    for i in range(CHUNK - 1):
        chunk[i].cnext = base + i + 1
    chunk[CHUNK - 1].cnext = pp.free
    pp.free = base
    pp.cap += CHUNK
    return 0


cdef inline uint32_t pool_alloc(PartPool* pp) noexcept nogil:
    """A free Part (the caller made sure there is one: pool_grow)."""
    cdef uint32_t i = pp.free
    pp.free = P(pp, i).cnext
    pp.used += 1
    return i


cdef inline void pool_release(PartPool* pp, uint32_t i) noexcept nogil:
    P(pp, i).cnext = pp.free
    pp.free = i
    pp.used -= 1


cdef void pool_free(PartPool* pp) noexcept nogil:
    cdef uint32_t i
    for i in range(pp.n_chunks):
        PyMem_RawFree(pp.chunks[i])
    PyMem_RawFree(pp.chunks)
    pp.chunks = NULL
    pp.n_chunks = pp.chunks_cap = pp.cap = pp.used = 0
    pp.free = NIL


cdef inline size_t pool_sizeof(const PartPool* pp) noexcept nogil:
    return pp.cap * sizeof(Part) + pp.chunks_cap * sizeof(Part*)


cdef inline uint32_t part_hash(uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
    return <uint32_t>mix3(dev, kp, grp)


cdef inline int64_t part_find(const IdxTable* t, const PartPool* pp, uint32_t dev, uint32_t kp,
                              uint32_t grp) noexcept nogil:
    """Slot position in t of the Part keyed (dev, kp, grp), or -1. In the table
    of flush chains, grp is KEY_CHAIN: any Part of (dev, kp) is the key's."""
    if t.count == 0:
        return -1
    cdef uint32_t h = part_hash(dev, kp, grp), mask = t.cap - 1, i = h & mask
    cdef const Part* x
    while True:
        if t.slots[i].idx == NIL:
            return -1
        if t.slots[i].hash == h:
            x = P(pp, t.slots[i].idx)
            if x.dev == dev and x.kp == kp and (grp == KEY_CHAIN or x.grpid == grp):
                return i
        i = (i + 1) & mask
