# Keys and the open-addressed tables: cookie placement, the index table.
# Part of grouper.pyx (included at module level).

cdef inline uint32_t key_pasid(uint32_t pasid, uint32_t flags, uint32_t no_pasid) noexcept nogil:
    # policy.no_pasid (Linux: IOMMU_NO_PASID, 0) is the RID's, as no PASID is.
    return pasid if flags & PASID_VALID and pasid != no_pasid else KEY_NO_PASID


cdef inline void cookie_place(CookieSlot* t, uint32_t mask, CookieSlot item) noexcept nogil:
    """Robin Hood insert: an item travelling further than the one in its way
    takes the slot, and the displaced item moves on."""
    cdef uint32_t i = <uint32_t>item.cookie & mask, d = 0, dr
    cdef CookieSlot tmp
    while t[i].cookie:
        dr = (i - <uint32_t>t[i].cookie) & mask
        if dr < d:
            tmp = t[i]
            t[i] = item
            item = tmp
            d = dr
        i = (i + 1) & mask
        d += 1
    t[i] = item


cdef inline uint32_t entry_hash(uint32_t dev, uint32_t pasid) noexcept nogil:
    return <uint32_t>mix3(dev, pasid, 0)


cdef inline uint32_t entry_hint_slot(uint32_t dev, uint32_t pasid) noexcept nogil:
    """Where Grouper.entry_hint keeps the entry of (dev, PASID) found last:
    cheaper than entry_hash (two multiplies), and apart for consecutive
    devices and for consecutive PASIDs of one device. Its top bits: one of
    ENTRY_HINTS slots."""
    return (dev * <uint32_t>0x9E3779B1u + pasid * <uint32_t>0x85EBCA77u) >> (32 - ENTRY_HINT_BITS)


cdef int cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


# --- the index table: open addressing, linear probing, backward-shift delete ---
# One implementation for every table of records that live in a pool (the
# strategy's partial groups, the flush chains, the (dev, PASID) entries):
# a slot is the key's hash and
# the record's index. Backward shift keeps every probe chain as short as if
# the deleted keys had never been there, with no tombstones to sweep; no one
# holds a slot position across a change of the table.

cdef int itab_resize(IdxTable* t, uint32_t cap) except -1 nogil:
    cdef IdxSlot* s = <IdxSlot*>xmalloc(cap * sizeof(IdxSlot))
    cdef uint32_t i, j, mask = cap - 1
    if s == NULL:
        return raise_nomem()
    for i in range(cap):
        s[i].idx = NIL
    for i in range(t.cap):
        if t.slots[i].idx != NIL:
            j = t.slots[i].hash & mask
            while s[j].idx != NIL:
                j = (j + 1) & mask
            s[j] = t.slots[i]
    PyMem_RawFree(t.slots)
    t.slots = s
    t.cap = cap
    return 0


cdef inline int itab_reserve(IdxTable* t, uint32_t more) except -1 nogil:
    """Room for `more` more keys (so that itab_insert cannot fail)."""
    # Load at most 3/4 (3/8 after a resize): a slot is 8 bytes, so even a
    # miss at the highest load reads about one cache line, and a held fault
    # in the worst case (its own group and (dev, PASID)) stays within 128 bytes.
    # Inline: every new partial group asks, and there is room nearly always.
    if 4 * (<uint64_t>t.count + more) <= 3 * <uint64_t>t.cap:
        return 0
    return itab_grow(t, more)


cdef int itab_grow(IdxTable* t, uint32_t more) except -1 nogil:
    cdef uint64_t need = 4 * (<uint64_t>t.count + more)
    cdef uint64_t cap = t.cap if t.cap else MIN_CAP
    while 3 * cap < need:
        cap *= 2
    if cap > 0x80000000u:
        return raise_nomem()
    return itab_resize(t, <uint32_t>cap)


cdef inline uint32_t itab_insert(IdxTable* t, uint32_t h, uint32_t idx) noexcept nogil:
    """Add a key that is not in the table (room reserved); its slot position."""
    cdef uint32_t mask = t.cap - 1, i = h & mask
    while t.slots[i].idx != NIL:
        i = (i + 1) & mask
    t.slots[i].hash = h
    t.slots[i].idx = idx
    t.count += 1
    return i


cdef void itab_delete(IdxTable* t, uint32_t i) noexcept nogil:
    cdef uint32_t mask = t.cap - 1, j = i, k
    while True:
        j = (j + 1) & mask
        if t.slots[j].idx == NIL:
            break
        k = t.slots[j].hash & mask
        # Move j back to i unless its home lies cyclically in (i, j].
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            t.slots[i] = t.slots[j]
            i = j
    t.slots[i].idx = NIL
    t.count -= 1


cdef void itab_free(IdxTable* t) noexcept nogil:
    PyMem_RawFree(t.slots)
    t.slots = NULL
    t.cap = t.count = 0
