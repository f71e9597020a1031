# One whole group reported from its fields, for callers that model devices
# (iopf.sim): Grouper.report_group. Packing the records into a FAULT_DTYPE
# array for run() and taking the groups back as three arrays cost 3-4 us a
# group, more than grouping it.

from cpython.number cimport PyNumber_Index


cdef inline object as_int(object v):
    """An integer argument as an int: a float or a bool is refused (TypeError), not cut."""
    if type(v) is int:
        return v
    if PyBool_Check(v):
        raise TypeError(f"a field of the group must be an int, not bool ({v!r})")
    return PyNumber_Index(v)


cdef object report_group(Grouper g, time, dev, pasid, grpid, flags, last_flags, perm, n,
                         addr, stride):
    """Grouper.report_group (see its docstring)."""
    cdef FaultRec r, last
    cdef Py_ssize_t count, i
    cdef uint64_t step
    time = as_int(time); dev = as_int(dev); pasid = as_int(pasid); grpid = as_int(grpid)
    flags = as_int(flags); last_flags = as_int(last_flags); perm = as_int(perm); n = as_int(n)
    addr = as_int(addr); stride = as_int(stride)
    try:
        count = n
        r.time = time; r.dev = dev; r.pasid = pasid; r.grpid = grpid
        r.flags = flags; r.perm = perm; r.priv[0] = 0; r.priv[1] = 0
        last = r
        last.flags = last_flags
    except OverflowError:
        for f in (flags, last_flags):
            check_record(None, (time, dev, pasid, grpid, f, perm), g.rules.pasid_bits,
                         g.rules.grpid_bits)
        raise ValueError(f"a field of the group is out of range: time={time!r} dev={dev!r} "
                         f"pasid={pasid!r} grpid={grpid!r} n={n!r}")
    if count < 1:
        raise ValueError(f"a group has at least one request, got n={n}")
    try:
        r.addr = addr; step = stride
    except OverflowError:   # a negative address or stride, or one past 64 bits
        raise ValueError(f"the addresses addr={addr!r} + i * stride={stride!r} do not fit "
                         "its record (64 bits, ascending)") from None
    # The last address is the largest: addr + (n-1) * stride must fit 64 bits.
    if step and <uint64_t>(count - 1) > (U64_MAX - r.addr) // step:
        raise ValueError(f"the address of request {count - 1} ({r.addr:#x} + {count - 1} * "
                         f"{step:#x}) does not fit its record (64 bits)")
    if g.bad_rec(&r):
        g.refuse(-1, &r)
    if g.bad_rec(&last):
        g.refuse(-1, &last)
    # One group: only its last request may complete one (so a Python handler
    # is called, if at all, after the whole group is in).
    if count > 1 and g.rec_kind(r.flags, r.perm) == KIND_LAST:
        raise ValueError("request 0 would complete a group before the last one under this "
                         "policy: report one group per call")
    i = 0
    g.enter()
    try:
        while i < count:
            if i == count - 1:
                r.flags = last.flags
            g.report_one(&r, 0)   # the queue reads a group's faults from the core
            i += 1
            if i < count:
                r.addr += step
    finally:
        g.position = i       # the request that failed (MemoryError), or n
        g.leave()
    return g.last_cookie


# The responses as Python tuples, for a caller that hands them out one by one
# (iopf.Queue with on_response): a RESPONSE_DTYPE array and its tolist() cost
# 2-3 us for the one response a SimPy timer usually sends.

cdef list take_response_list(Grouper g):
    """Grouper.take_response_list (see its docstring)."""
    cdef Py_ssize_t n, i
    cdef const RespRec* r
    cdef list out
    g.enter()
    try:
        n = g.outbox.len // sizeof(RespRec)
        out = [None] * n
        for i in range(n):
            r = <const RespRec*>g.outbox.data + i
            out[i] = (r.time, r.dev, r.pasid, r.grpid, r.code, r.flags, r.cookie, r.nfaults,
                      r.reason)
        g.outbox.len = 0
        buf_clear(&g.outbox_gtime)
        if g.outbox.cap > SMALL_OUT:   # as buf_take: a big batch's room is not kept
            PyMem_RawFree(g.outbox.data)
            g.outbox.data = NULL
            g.outbox.cap = 0
    finally:
        g.leave()
    return out
