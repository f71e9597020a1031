# Keys and the open-addressed tables: cookie placement, the slot table.
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


cdef int cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


# --- the slot table: open addressing, linear probing, backward-shift delete ----
# Backward shift keeps every probe chain as short as if the deleted keys had
# never been there, with no tombstones to sweep; no one holds a slot index
# across a delete (nodes link to nodes, not to slots).

cdef inline uint32_t slot_home(const SlotTable* t, uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
    return <uint32_t>(mix3(dev, kp, grp) & (t.cap - 1))


cdef inline int64_t slot_find(const SlotTable* t, uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
    if t.cap == 0:
        return -1
    cdef uint32_t mask = t.cap - 1
    cdef uint32_t i = slot_home(t, dev, kp, grp)
    cdef const Slot* s
    while True:
        s = &t.slots[i]
        if s.kpasid == KEY_EMPTY:
            return -1
        if s.dev == dev and s.kpasid == kp and s.grpid == grp:
            return i
        i = (i + 1) & mask


cdef int slot_resize(SlotTable* t, uint32_t cap) except -1 nogil:
    cdef Slot* old = t.slots
    cdef uint32_t old_cap = t.cap, i, j, mask = cap - 1
    cdef Slot* s = <Slot*>xmalloc(cap * sizeof(Slot))
    if s == NULL:
        return raise_nomem()
    for i in range(cap):
        s[i].kpasid = KEY_EMPTY
    for i in range(old_cap):
        if old[i].kpasid != KEY_EMPTY:
            j = <uint32_t>(mix3(old[i].dev, old[i].kpasid, old[i].grpid) & mask)
            while s[j].kpasid != KEY_EMPTY:
                j = (j + 1) & mask
            s[j] = old[i]
    t.slots = s
    t.cap = cap
    PyMem_RawFree(old)
    return 0


cdef int slot_reserve(SlotTable* t) except -1 nogil:
    """Room for one more key (so that slot_insert cannot fail)."""
    # Load at most 1/2: a probe then touches ~1.5 slots of one cache line.
    if 2 * (t.count + 1) > t.cap:
        slot_resize(t, t.cap * 2 if t.cap else MIN_CAP)
    return 0


cdef int64_t slot_insert(SlotTable* t, uint32_t dev, uint32_t kp, uint32_t grp) except -1 nogil:
    """Index of a new slot for a key that is not in the table."""
    slot_reserve(t)
    cdef uint32_t mask = t.cap - 1
    cdef uint32_t i = slot_home(t, dev, kp, grp)
    while t.slots[i].kpasid != KEY_EMPTY:
        i = (i + 1) & mask
    t.slots[i].dev = dev
    t.slots[i].kpasid = kp
    t.slots[i].grpid = grp
    t.slots[i].head = NIL
    t.slots[i].tail = NIL
    t.slots[i].epoch = 0
    t.count += 1
    return i


cdef void slot_delete(SlotTable* t, uint32_t i) noexcept nogil:
    cdef uint32_t mask = t.cap - 1, j = i, k
    while True:
        j = (j + 1) & mask
        if t.slots[j].kpasid == KEY_EMPTY:
            break
        k = slot_home(t, t.slots[j].dev, t.slots[j].kpasid, t.slots[j].grpid)
        # Move j back to i unless its home lies cyclically in (i, j].
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            t.slots[i] = t.slots[j]
            i = j
    t.slots[i].kpasid = KEY_EMPTY
    t.count -= 1


cdef void slot_clear_epochs(SlotTable* t) noexcept nogil:
    cdef uint32_t i
    for i in range(t.cap):
        t.slots[i].epoch = 0


cdef void slot_free(SlotTable* t) noexcept nogil:
    PyMem_RawFree(t.slots)
    t.slots = NULL
    t.cap = t.count = 0
