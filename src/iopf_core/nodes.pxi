# The node store (held faults, NodeStore) and the pool of pending groups
# (PendPool): arrays with a free list, see grouper.pxd. Part of grouper.pyx
# (included at module level). Alloc and release are inline, growth is not.

# Allocation is on the hottest path (one node per fault, one Pend per
# group): the room test and the free-list pop are inline, only a growth
# calls out. Both arrays move when they grow: no Node* or Pend* is held
# across a call that may grow them (reserve() runs first).

cdef int node_grow(NodeStore* s) except -1 nogil:
    """Grow the node array by an eighth (at least CHUNK nodes) and add the new
    nodes to the free list.

    One array, so that walking a list is one load a node (the list
    strategy's scan is such a walk; through a table of chunks it was 1.6x
    a plain C list). An eighth keeps the slack small; glibc grows a large
    block in place or with mremap, without copying it.
    """
    cdef uint64_t cap = s.cap + (s.cap // 8 if s.cap // 8 > CHUNK else CHUNK)
    cdef uint32_t i
    cdef Node* a
    if cap > 0xFFFFFFFEu:
        if s.cap >= 0xFFFFFFFEu:
            return raise_nomem()
        cap = 0xFFFFFFFEu
    a = <Node*>xrealloc(s.items, cap * sizeof(Node))
    if a == NULL:
        return raise_nomem()
    s.items = a
    for i in range(s.cap, <uint32_t>cap - 1):
        a[i].next = i + 1
    a[cap - 1].next = s.free
    s.free = s.cap
    s.cap = <uint32_t>cap
    return 0


cdef inline uint32_t node_take(NodeStore* s) noexcept nogil:
    """A free node, when the caller made sure there is one (node_grow)."""
    cdef uint32_t i = s.free
    s.free = s.items[i].next
    s.used += 1
    return i


cdef inline uint32_t node_alloc(NodeStore* s) except NIL nogil:
    if s.free == NIL:
        node_grow(s)
    return node_take(s)


cdef inline void node_fill(Node* node, const FaultRec* r) noexcept nogil:
    """Node holds request r (checked: flags and perm fit 4 bits, grpid 16), unlinked."""
    node.time = r.time; node.addr = r.addr; node.priv0 = r.priv[0]; node.priv1 = r.priv[1]
    node.pasid = r.pasid; node.grpid = <uint16_t>r.grpid
    node.flags = <uint8_t>(r.flags | r.perm << 4); node.pad = 0
    node.next = NIL


cdef inline void node_release(NodeStore* s, uint32_t i) noexcept nogil:
    s.items[i].next = s.free
    s.free = i
    s.used -= 1


cdef inline void node_release_list(NodeStore* s, uint32_t head, uint32_t tail, uint32_t n) noexcept nogil:
    """Free the n nodes of a list head..tail (linked by next) at once: only the
    tail is written. An answered group's nodes went cold while it was
    pending; walking them to free one by one cost a cache miss per fault.
    (run() frees a group's nodes this way as soon as it is copied out.)"""
    s.items[tail].next = s.free
    s.free = head
    s.used -= n


cdef int pend_grow(PendPool* pp) except -1 nogil:
    """Add free pending-group slots (the pool may move: no Pend* across this)."""
    cdef uint32_t i
    cdef size_t cap = pp.cap
    if pp.cap >= 0x7FFFFFFFu:
        return raise_nomem()
    pp.items = <Pend*>grow(pp.items, &cap, cap + 1, sizeof(Pend))
    for i in range(pp.cap, <uint32_t>cap):
        pp.items[i].qnext = i + 1
    pp.items[cap - 1].qnext = pp.free
    pp.free = pp.cap
    pp.cap = <uint32_t>cap
    return 0


cdef inline uint32_t pend_alloc(PendPool* pp) except NIL nogil:
    cdef uint32_t i
    if pp.free == NIL:
        pend_grow(pp)
    i = pp.free
    pp.free = pp.items[i].qnext
    return i


cdef inline void pend_release(PendPool* pp, uint32_t i) noexcept nogil:
    pp.items[i].qnext = pp.free
    pp.free = i
