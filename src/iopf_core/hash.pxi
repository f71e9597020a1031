# HashGrouper: the strategy of an open-addressed hash.
# Part of grouper.pyx (included at module level).

cdef class HashGrouper(Grouper):
    """Partials in an open-addressed hash on (dev, key PASID, grpid): O(1) LPIG."""

    strategy = "hash"

    def __dealloc__(self):
        slot_free(&self.table)

    cdef int s_add(self, uint32_t n, uint32_t dev) except -1 nogil:
        return self.table_append(&self.table, dev, self.slot_kpasid(self.N(n)), self.N(n).grpid, n)

    cdef uint32_t s_take(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        cdef int64_t i = slot_find(&self.table, dev, kpasid, grpid)
        if i < 0:
            return NIL
        cdef uint32_t head = self.table.slots[i].head
        slot_delete(&self.table, <uint32_t>i)
        return head

    cdef void s_purge(self, uint32_t n, uint32_t dev) noexcept nogil:
        self.table_purge(&self.table, dev, self.slot_kpasid(self.N(n)), self.N(n).grpid)

    cdef int s_reserve(self) except -1 nogil:
        return slot_reserve(&self.table)

    cdef void s_clear_epochs(self) noexcept nogil:
        slot_clear_epochs(&self.table)

    cdef uint32_t s_count(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        cdef int64_t i = slot_find(&self.table, dev, kpasid, grpid)
        return 0 if i < 0 else self.list_len(self.table.slots[i].head)

    cdef size_t s_sizeof(self) noexcept nogil:
        return self.table.cap * sizeof(Slot)
