# The cookie table: a pending group's cookie -> its Pend (CookieTable, see
# grouper.pxd), Robin Hood and not the index table (docs/performance.md says
# why). Part of grouper.pyx (included at module level, after tables.pxi).

# Open addressing on the cookie, backward-shift delete.
# Cookies are handed out in sequence and mostly answered in about that
# order, so the cookie itself is the home slot: consecutive groups land
# in consecutive slots (one cache miss per 4 groups instead of one per
# group: cookie_insert went from 28% of a batch to noise).
cdef int cookies_init(CookieTable* t, uint32_t cap) except -1:
    t.slots = <CookieSlot*>xmalloc(cap * sizeof(CookieSlot))
    if t.slots == NULL:
        raise MemoryError()
    memset(t.slots, 0, cap * sizeof(CookieSlot))
    t.cap = cap
    return 0


cdef inline int64_t cookie_find(const CookieTable* t, uint64_t cookie) noexcept nogil:
    cdef uint32_t mask = t.cap - 1
    cdef uint32_t i = <uint32_t>(cookie & mask)
    if cookie == 0:
        return -1
    while True:
        if t.slots[i].cookie == 0:
            return -1
        if t.slots[i].cookie == cookie:
            return i
        i = (i + 1) & mask


cdef inline int cookie_room(CookieTable* t, uint64_t n) except -1 nogil:
    """Grow the table (x2) if it cannot hold n cookies at load 1/2."""
    # Inline: every new group asks, and there is room nearly always.
    if 2 * n > t.cap:
        cookie_grow(t, n)
    return 0


cdef int cookie_grow(CookieTable* t, uint64_t n) except -1 nogil:
    cdef uint32_t i, old_cap = t.cap
    cdef CookieSlot* old
    if 2 * n > old_cap:
        if old_cap >= 0x80000000u:
            return raise_nomem()
        old = t.slots
        t.slots = <CookieSlot*>xmalloc(2 * old_cap * sizeof(CookieSlot))
        if t.slots == NULL:
            t.slots = old
            return raise_nomem()
        memset(t.slots, 0, 2 * old_cap * sizeof(CookieSlot))
        t.cap = 2 * old_cap
        for i in range(old_cap):
            if old[i].cookie:
                cookie_place(t.slots, t.cap - 1, old[i])
        PyMem_RawFree(old)
    return 0


cdef inline int cookie_insert(CookieTable* t, uint64_t cookie, uint32_t idx, uint64_t n) except -1 nogil:
    """Add a cookie that is not in the table; n: how many it must hold with it."""
    cdef CookieSlot item
    cookie_room(t, n)
    item.cookie = cookie
    item.idx = idx
    cookie_place(t.slots, t.cap - 1, item)
    return 0


cdef void cookie_delete(CookieTable* t, uint32_t i) noexcept nogil:
    # Robin Hood order lets the backward shift stop at the first slot that
    # holds its own home: with cookies answered in about the order they
    # were given, that is the next slot. (Scanning to the end of the run
    # instead made answering N groups in order cost O(N^2).)
    cdef uint32_t mask = t.cap - 1, j = (i + 1) & mask
    while t.slots[j].cookie and ((j - <uint32_t>t.slots[j].cookie) & mask) != 0:
        t.slots[i] = t.slots[j]
        i = j
        j = (j + 1) & mask
    t.slots[i].cookie = 0
