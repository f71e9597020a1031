# The time heap: timeouts and scheduled answers, in (time, seq) order
# (TimeHeap, see grouper.pxd). Part of grouper.pyx (included at module level,
# after cookies.pxi: whether a group is still pending is a cookie lookup).

# A timeout of a group answered meanwhile is skipped when it comes up; a
# scheduled answer stays until it is due (it then counts as stale: one answer
# per group). So the heap holds timeouts of answered groups, which heap_room
# sweeps out when they are many, and heap_clean pops off the top.

cdef inline bint item_before(const HeapItem* a, const HeapItem* b) noexcept nogil:
    return a.time < b.time or (a.time == b.time and a.seq < b.seq)


cdef int heap_room(TimeHeap* h, const CookieTable* pending, uint64_t npending) except -1 nogil:
    """Room for one more item, npending groups being pending: a full heap
    drops answered groups' timeouts instead of growing if they are many."""
    cdef size_t cap
    if h.len == h.cap:
        if h.len - h.answers > 2 * npending + 64:
            heap_rebuild(h, pending)
        if h.len == h.cap:
            cap = h.cap
            h.items = <HeapItem*>grow(h.items, &cap, cap + 1, sizeof(HeapItem))
            h.cap = <uint32_t>cap
    return 0


cdef int heap_reserve(TimeHeap* h, uint64_t n) except -1 nogil:
    """Room for n more items, so that the next n heap_push calls cannot fail."""
    cdef size_t cap = h.cap
    if h.len + n > h.cap:
        if h.len + n > 0xFFFFFFFFu:
            return raise_nomem()
        h.items = <HeapItem*>grow(h.items, &cap, <size_t>h.len + n, sizeof(HeapItem))
        h.cap = <uint32_t>cap
    return 0


cdef int heap_push(TimeHeap* h, HeapItem it, const CookieTable* pending, uint64_t npending) except -1 nogil:
    cdef uint32_t i, p
    heap_room(h, pending, npending)
    i = h.len
    h.len += 1
    while i > 0:
        p = (i - 1) // 2
        if not item_before(&it, &h.items[p]):
            break
        h.items[i] = h.items[p]
        i = p
    h.items[i] = it
    return 0


cdef void heap_sift_down(TimeHeap* h, uint32_t i) noexcept nogil:
    cdef HeapItem it = h.items[i]
    cdef uint32_t ch
    while True:
        ch = 2 * i + 1
        if ch >= h.len:
            break
        if ch + 1 < h.len and item_before(&h.items[ch + 1], &h.items[ch]):
            ch += 1
        if item_before(&it, &h.items[ch]):
            break
        h.items[i] = h.items[ch]
        i = ch
    h.items[i] = it


cdef void heap_pop(TimeHeap* h) noexcept nogil:
    h.len -= 1
    if h.len:
        h.items[0] = h.items[h.len]
        heap_sift_down(h, 0)


cdef void heap_rebuild(TimeHeap* h, const CookieTable* pending) noexcept nogil:
    """Drop the timeouts of groups no longer in `pending`, and heapify the rest."""
    cdef uint32_t i, n = 0
    for i in range(h.len):
        if h.items[i].reason != R_TIMEOUT or cookie_find(pending, h.items[i].cookie) >= 0:
            h.items[n] = h.items[i]
            n += 1
    h.len = n
    i = n // 2
    while i > 0:
        i -= 1
        heap_sift_down(h, i)


cdef uint32_t heap_due(const TimeHeap* h, uint64_t now) noexcept nogil:
    """How many items are due at `now` (an upper bound of what advancing sends).
    They are a subtree at the top (an item is due only if its parent is), so
    the count goes level by level and stops at a level with none."""
    cdef uint32_t lo = 0, hi = 1, i, k = 0, level
    while lo < h.len:
        level = 0
        for i in range(lo, hi if hi < h.len else h.len):
            if h.items[i].time <= now:
                level += 1
        if level == 0:
            break
        k += level
        lo = hi
        hi = 2 * hi + 1
    return k


cdef void heap_clean(TimeHeap* h, const CookieTable* pending) noexcept nogil:
    """Pop the timeouts of answered groups off the top: the top is then a real deadline."""
    while (h.len and h.items[0].reason == R_TIMEOUT
           and cookie_find(pending, h.items[0].cookie) < 0):
        heap_pop(h)
