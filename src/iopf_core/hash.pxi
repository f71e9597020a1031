# HashGrouper: the strategy of an open-addressed hash.
# Part of grouper.pyx (included at module level).

cdef class HashGrouper(Grouper):
    """Partials in an open-addressed hash on (dev, key PASID, grpid): O(1) LPIG."""

    strategy = "hash"

    def __cinit__(self, *args, **kwargs):
        self.hashed = True

    def __dealloc__(self):
        itab_free(&self.table)

    cdef uint32_t s_find(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil:
        cdef int64_t i = part_find(&self.table, &self.parts, dev, kp, grpid)
        return NIL if i < 0 else self.table.slots[i].idx

    cdef void s_insert(self, uint32_t p) noexcept nogil:
        cdef Part* x = P(&self.parts, p)
        itab_insert(&self.table, part_hash(x.dev, x.kp, x.grpid), p)

    cdef void s_remove(self, uint32_t p) noexcept nogil:
        cdef Part* x = P(&self.parts, p)
        cdef int64_t i = part_find(&self.table, &self.parts, x.dev, x.kp, x.grpid)
        if i >= 0:
            itab_delete(&self.table, <uint32_t>i)

    cdef int s_reserve(self) except -1 nogil:
        return itab_reserve(&self.table, 1)

    cdef size_t s_sizeof(self) noexcept nogil:
        return self.table.cap * sizeof(IdxSlot)
