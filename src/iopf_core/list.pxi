# ListGrouper: the kernel's strategy of one list per device.
# Part of grouper.pyx (included at module level).

cdef class ListGrouper(Grouper):
    """The kernel's design: one partial list per device, scanned at every LPIG.

    A device's list is one Part keyed (dev, KEY_LIST, KEY_LIST), alone on its
    flush chain: the table of flush chains finds it, and the engine scans it
    (Grouper.part_take) as iopf_group_alloc() walks fault_param->partial.
    """

    strategy = "list"

    def __cinit__(self, *args, **kwargs):
        self.per_device = True

    cdef uint32_t s_find(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil:
        cdef int64_t i = part_find(&self.chains, &self.parts, dev, KEY_LIST, KEY_CHAIN)
        return NIL if i < 0 else self.chains.slots[i].idx

    cdef void s_insert(self, uint32_t p) noexcept nogil:
        pass

    cdef void s_remove(self, uint32_t p) noexcept nogil:
        pass
