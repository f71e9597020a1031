# Allocation (with its debug switches), errors, and small inline helpers.
# Part of grouper.pyx (included at module level).

# --- debug switches ---------------------------------------------------------------
# Every allocation of the core goes through xmalloc/xrealloc, so a test can make
# the Nth one fail (_fail_alloc_after) and check that the call leaves the state
# as it was. Module-wide and unsynchronised: for single-threaded tests only.
cdef int64_t fail_after = -1          # allocations left before one fails; -1: never
cdef uint64_t alloc_count = 0


cdef inline bint alloc_fails() noexcept nogil:
    global fail_after, alloc_count
    alloc_count += 1
    if fail_after < 0:
        return False
    if fail_after == 0:
        fail_after = -1               # fail once
        return True
    fail_after -= 1
    return False


cdef void* xmalloc(size_t n) noexcept nogil:
    return NULL if alloc_fails() else PyMem_RawMalloc(n)


cdef void* xrealloc(void* p, size_t n) noexcept nogil:
    return NULL if alloc_fails() else PyMem_RawRealloc(p, n)


def _fail_alloc_after(int64_t n):
    """Debug: let n more allocations of the core succeed, then fail one (MemoryError).

    -1 turns it off. Returns the number of allocations made so far (all
    groupers), so a test can count the allocations of a workload first.
    """
    global fail_after
    fail_after = n
    return alloc_count


cdef extern from *:
    """
    /* The busy flag of a grouper: taken with an atomic exchange, so that two
       threads, with or without the GIL, cannot both be inside one grouper. */
    static inline int iopf_try_take(int* p) { return __atomic_exchange_n(p, 1, __ATOMIC_ACQUIRE) == 0; }
    static inline void iopf_give(int* p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }
    """
    bint iopf_try_take(int* p) noexcept nogil
    void iopf_give(int* p) noexcept nogil


cdef int raise_busy() except -1 with gil:
    raise RuntimeError("iopf_core: this grouper is in use by another thread "
                       "(share it through one iopf.Queue, which serialises calls)")


cdef int check_code_reason(uint32_t code, uint32_t reason) except -1:
    if code > C_MAX:
        raise ValueError(f"response code {code} is not one of 0..{C_MAX} (SUCCESS, INVALID, FAILURE)")
    if reason > R_CALLER:
        raise ValueError(f"reason {reason} is not one of 0..{R_CALLER}")
    return 0


cdef int raise_uninit() except -1 with gil:
    raise RuntimeError("iopf_core: the grouper was not initialised (call __init__ with a policy)")

cdef uint64_t U64_MAX = 0xFFFFFFFFFFFFFFFFULL


# --- small helpers -------------------------------------------------------------

cdef inline uint64_t mix3(uint32_t a, uint32_t b, uint32_t c) noexcept nogil:
    # Multiply-xorshift: cheap, and spreads the low bits that group ids and
    # PASIDs vary in over the whole word (the table index takes low bits).
    cdef uint64_t h = (<uint64_t>a << 32 | b) * 0x9E3779B97F4A7C15ULL
    h ^= (<uint64_t>c + 0x632BE59BD9B4E019ULL) * 0xC2B2AE3D27D4EB4FULL
    h ^= h >> 32
    h *= 0xD6E8FEB86659FD93ULL
    h ^= h >> 29
    return h


cdef inline uint64_t add_sat(uint64_t a, uint64_t b) noexcept nogil:
    return U64_MAX if a > U64_MAX - b else a + b


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    # The service model's generator: small, seeded, and the same in the twin.
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double unit(uint64_t* state) noexcept nogil:
    """A uniform double in (0, 1]."""
    return <double>((splitmix64(state) >> 11) + 1) * (1.0 / 9007199254740992.0)


cdef int raise_nomem() except -1 with gil:
    raise MemoryError("iopf_core: out of memory")


cdef void* grow(void* p, size_t* cap, size_t need, size_t item) except NULL nogil:
    """Grow an array of `item`-sized elements to hold at least `need` (x2)."""
    cdef size_t c = cap[0] if cap[0] else MIN_CAP
    while c < need:
        c *= 2
    cdef void* q = xrealloc(p, c * item)
    if q == NULL:
        raise_nomem()
        return NULL
    cap[0] = c
    return q


cdef inline int buf_reserve(Buf* b, size_t extra) except -1 nogil:
    # Inline: the hot paths call it with room already there (a test and a return).
    if b.len + extra > b.cap:
        b.data = <char*>grow(b.data, &b.cap, b.len + extra, 1)
    return 0


cdef inline void rec_copy(FaultRec* d, const volatile FaultRec* s) noexcept nogil:
    """d = s[0], each field of s read once (volatile: the compiler may not
    read caller memory again after the copy has been checked), and written
    as a field: what the core then reads of d is read back as it was
    written. A plain struct copy moves 16 bytes at a time, and a field that
    straddles two of those (addr, priv[1]) then waits for both stores to
    land before it can be loaded (no store forwarding): that stall was a
    tenth of the batch loop's time."""
    d.time = s.time
    d.dev = s.dev
    d.pasid = s.pasid
    d.grpid = s.grpid
    d.flags = s.flags
    d.perm = s.perm
    d.addr = s.addr
    d.priv[0] = s.priv[0]
    d.priv[1] = s.priv[1]
