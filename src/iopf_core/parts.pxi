# Partial groups (Part, see grouper.pxd): their pool, and how the index
# tables find them. Part of grouper.pyx (included at module level).

cdef inline Part* P(const PartPool* pp, uint32_t i) noexcept nogil:
    return &pp.parts[i]


cdef int pool_grow(PartPool* pp) except -1 nogil:
    """Grow the Parts by CHUNK and put the new ones on the free list.

    One array, as the nodes: a Part is then one load away from its index
    (through a table of chunks it was two dependent loads, on every probe of
    every table that finds Parts). Indexes stay valid; no Part* is held
    across a call that may grow the pool (part_room runs first). A step of
    one CHUNK keeps the slack small (the tree's worst case per held partial
    is close to its 128-byte bound); a large block is grown by mremap, not
    copied.
    """
    cdef uint64_t cap = <uint64_t>pp.cap + CHUNK
    cdef uint32_t i
    cdef Part* a
    if cap >= 0xFFFFFFFFu:
        return raise_nomem()
    a = <Part*>xrealloc(pp.parts, cap * sizeof(Part))
    if a == NULL:
        return raise_nomem()
    pp.parts = a
    for i in range(pp.cap, <uint32_t>cap):
        a[i].cnext = i + 1
        a[i].kp = KEY_EMPTY         # free (parts_sweep walks the pool)
    a[cap - 1].cnext = pp.free
    pp.free = pp.cap
    pp.cap = <uint32_t>cap
    return 0


cdef inline uint32_t pool_alloc(PartPool* pp) noexcept nogil:
    """A free Part (the caller made sure there is one: pool_grow)."""
    cdef uint32_t i = pp.free
    pp.free = pp.parts[i].cnext
    pp.used += 1
    return i


cdef inline void pool_release(PartPool* pp, uint32_t i) noexcept nogil:
    if pp.recent == i:
        pp.recent = NIL
    pp.parts[i].kp = KEY_EMPTY      # free: no key (parts_sweep walks the pool)
    pp.parts[i].cnext = pp.free
    pp.free = i
    pp.used -= 1


cdef void pool_free(PartPool* pp) noexcept nogil:
    PyMem_RawFree(pp.parts)
    pp.parts = NULL
    pp.cap = pp.used = 0
    pp.free = pp.recent = NIL
    pp.empty = 0


cdef inline size_t pool_sizeof(const PartPool* pp) noexcept nogil:
    return pp.cap * sizeof(Part)


cdef inline uint32_t part_hash(uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
    return <uint32_t>mix3(dev, kp, grp)


cdef inline int64_t part_probe(const IdxTable* t, const PartPool* pp, uint32_t dev, uint32_t kp,
                               uint32_t grp, uint32_t h, int64_t* empty) noexcept nogil:
    """part_find with the key's hash h given: the slot position, or -1 with
    *empty the slot where itab_insert would put the key (-1: no table yet).
    A new partial group takes that slot (part_new): one hash and one probe."""
    cdef uint32_t mask = t.cap - 1, i = h & mask
    cdef const Part* x
    empty[0] = -1
    if t.cap == 0:
        return -1
    while True:
        if t.slots[i].idx == NIL:
            empty[0] = i
            return -1
        if t.slots[i].hash == h:
            x = P(pp, t.slots[i].idx)
            if x.dev == dev and x.kp == kp and x.grpid == grp:
                return i
        i = (i + 1) & mask


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


def _part_hash(uint32_t dev, uint32_t kp, uint32_t grp):
    """Debug: the hash a partial group's key (dev, key PASID, group id) has
    in the index tables (tests/test_hash_spread.py measures its probes)."""
    return part_hash(dev, kp, grp)
