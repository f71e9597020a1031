# The service model (the kernel's workqueue): `servers` workers (0: one per
# group), each group served FIFO for a duration drawn per group (Service, see
# grouper.pxd). Part of grouper.pyx (included at module level).

# The model knows nothing of groups: the engine (Grouper.serve_cookie) checks
# that a group is pending, asks here when it is done, and schedules its answer.

cdef uint64_t sv_draw(Service* v) noexcept nogil:
    """One service time (ns) from the model's distribution."""
    cdef double x
    if v.kind == SV_CONST:
        return <uint64_t>v.a
    if v.kind == SV_SAMPLES:
        return v.samples[splitmix64(&v.rng) % v.nsamples]
    if v.kind == SV_EXP:
        x = -log(unit(&v.rng)) * v.a
    else:   # lognormal: a = log-mean, b = sigma (Box-Muller, one draw of the pair)
        x = sqrt(-2.0 * log(unit(&v.rng)))
        x = exp(v.a + v.b * x * cos(6.283185307179586 * unit(&v.rng)))
    x = x + 0.5
    if x >= 1.8446744073709552e19:
        return U64_MAX
    return <uint64_t>x


cdef int sv_room(Service* v) except -1 nogil:
    """Room in the FIFO for one more waiting group, so that sv_serve cannot fail
    (it grows the FIFO only when full from its start)."""
    if v.fifo_head == 0 and v.fifo_len == v.fifo_cap:
        v.fifo = <uint64_t*>grow(v.fifo, &v.fifo_cap, v.fifo_len + 1, sizeof(uint64_t))
    return 0


cdef int sv_serve(Service* v, uint64_t arrival, uint64_t d, uint64_t* done) except -1 nogil:
    """A group arriving at `arrival` that takes d ns: the next free worker takes
    it; *done is when it finishes. Counts it in the stats and the backlog."""
    cdef uint64_t start = arrival
    cdef uint32_t i, ch, k = v.servers
    if k:
        if v.free[0] > start:
            start = v.free[0]
        done[0] = add_sat(start, d)
        i = 0                       # the earliest free worker takes it: sift down
        while True:
            ch = 2 * i + 1
            if ch >= k:
                break
            if ch + 1 < k and v.free[ch + 1] < v.free[ch]:
                ch += 1
            if done[0] <= v.free[ch]:
                break
            v.free[i] = v.free[ch]
            i = ch
        v.free[i] = done[0]
    else:
        done[0] = add_sat(start, d)
    v.served += 1
    v.busy += d
    v.wait += start - arrival
    if start - arrival > v.max_wait:
        v.max_wait = start - arrival
    # The backlog: groups still waiting at this arrival (FIFO: starts only grow).
    while v.fifo_len and v.fifo[v.fifo_head] <= arrival:
        v.fifo_head += 1
        v.fifo_len -= 1
    if start > arrival:
        if v.fifo_head + v.fifo_len == v.fifo_cap:
            if v.fifo_head:
                memmove(v.fifo, v.fifo + v.fifo_head, v.fifo_len * sizeof(uint64_t))
                v.fifo_head = 0
            else:
                v.fifo = <uint64_t*>grow(v.fifo, &v.fifo_cap, v.fifo_len + 1, sizeof(uint64_t))
        v.fifo[v.fifo_head + v.fifo_len] = start
        v.fifo_len += 1
        if v.fifo_len > v.max_backlog:
            v.max_backlog = v.fifo_len
    return 0


cdef void sv_clear(Service* v) noexcept nogil:
    """Free the model's arrays and zero it (no model: 0 workers, nothing served)."""
    PyMem_RawFree(v.free)
    PyMem_RawFree(v.samples)
    PyMem_RawFree(v.fifo)
    memset(v, 0, sizeof(Service))
