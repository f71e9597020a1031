# ListGrouper: the kernel's strategy of one list per device.
# Part of grouper.pyx (included at module level).

cdef class ListGrouper(Grouper):
    """The kernel's design: one partial list per device, scanned at every LPIG."""

    strategy = "list"

    def __dealloc__(self):
        slot_free(&self.lists)

    cdef int s_add(self, uint32_t n, uint32_t dev) except -1 nogil:
        return self.table_append(&self.lists, dev, KEY_LIST, KEY_LIST, n)

    cdef uint32_t s_take(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        # As iopf_group_alloc(): walk the whole device list, move out the matches.
        cdef int64_t i = slot_find(&self.lists, dev, KEY_LIST, KEY_LIST)
        if i < 0:
            return NIL
        cdef Slot* s = &self.lists.slots[i]
        cdef uint32_t n = s.head, prev = NIL, nx, ghead = NIL, gtail = NIL
        cdef Node* x
        while n != NIL:
            x = self.N(n)
            nx = x.next
            if x.grpid == grpid and self.slot_kpasid(x) == kpasid:
                if prev == NIL:
                    s.head = nx
                else:
                    self.N(prev).next = nx
                if s.tail == n:
                    s.tail = prev
                x.next = NIL
                if gtail == NIL:
                    ghead = n
                else:
                    self.N(gtail).next = n
                gtail = n
            else:
                prev = n
            n = nx
        if s.head == NIL:
            slot_delete(&self.lists, <uint32_t>i)
        return ghead

    cdef void s_purge(self, uint32_t n, uint32_t dev) noexcept nogil:
        self.table_purge(&self.lists, dev, KEY_LIST, KEY_LIST)

    cdef int s_reserve(self) except -1 nogil:
        return slot_reserve(&self.lists)

    cdef void s_clear_epochs(self) noexcept nogil:
        slot_clear_epochs(&self.lists)

    cdef uint32_t s_count(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        cdef int64_t i = slot_find(&self.lists, dev, KEY_LIST, KEY_LIST)
        cdef uint32_t n, k = 0
        if i < 0:
            return 0
        n = self.lists.slots[i].head
        while n != NIL:
            if self.N(n).grpid == grpid and self.slot_kpasid(self.N(n)) == kpasid:
                k += 1
            n = self.N(n).next
        return k

    cdef size_t s_sizeof(self) noexcept nogil:
        return self.lists.cap * sizeof(Slot)
