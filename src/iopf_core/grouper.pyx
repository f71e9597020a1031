# cython: language_level=3
"""The compiled grouping core: partial faults in C memory, grouped at their LPIG.

Three strategies share one engine (``Grouper``) and differ only in where
partial faults wait for their last page in group:

* ``HashGrouper``: an open-addressed hash on (device, key PASID, group id),
  O(1) LPIG completion;
* ``ListGrouper``: the Linux kernel's design, one list per device scanned at
  every LPIG;
* ``TreeGrouper``: a balanced search tree on the same key.

Everything else (pending groups, capacity, attachments, responses, counters)
is shared, so the strategies give identical results by construction of the
engine and by test against the pure-Python twin (``iopf_core.twin``).

Memory comes from malloc, reported to tracemalloc in its own domain
(``TRACE_DOMAIN``); the batch loop runs without the GIL.
"""
# The core's memory: malloc, with every block reported to tracemalloc in a
# domain of its own (as pandas' hash tables do), so that a snapshot can show
# or filter it: tracemalloc.DomainFilter(True, iopf_core.TRACE_DOMAIN). The
# PyMem_Raw* names are kept for the functions below (callable without the GIL;
# PyTraceMalloc_Track takes it only while tracemalloc is tracing).
cdef extern from *:
    """
    #define IOPF_TRACE_DOMAIN 0x696f7066u  /* "iopf" */
    static void* iopf_malloc(size_t n) {
        void* p = malloc(n ? n : 1);
        if (p) PyTraceMalloc_Track(IOPF_TRACE_DOMAIN, (uintptr_t)p, n);
        return p;
    }
    static void* iopf_realloc(void* p, size_t n) {
        void* q = realloc(p, n ? n : 1);
        if (q) {
            if (p) PyTraceMalloc_Untrack(IOPF_TRACE_DOMAIN, (uintptr_t)p);
            PyTraceMalloc_Track(IOPF_TRACE_DOMAIN, (uintptr_t)q, n);
        }
        return q;
    }
    static void iopf_free(void* p) {
        if (p) {
            PyTraceMalloc_Untrack(IOPF_TRACE_DOMAIN, (uintptr_t)p);
            free(p);
        }
    }
    """
    unsigned int IOPF_TRACE_DOMAIN
    void* PyMem_RawMalloc "iopf_malloc" (size_t n) noexcept nogil
    void* PyMem_RawRealloc "iopf_realloc" (void* p, size_t n) noexcept nogil
    void PyMem_RawFree "iopf_free" (void* p) noexcept nogil

#: The tracemalloc domain of the core's C memory.
TRACE_DOMAIN = IOPF_TRACE_DOMAIN
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.long cimport PyLong_Check, PyLong_CheckExact, PyLong_AsLongAndOverflow
from cpython.bool cimport PyBool_Check
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.pythread cimport (PyThread_get_thread_ident, PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_free_lock, PyThread_acquire_lock, PyThread_release_lock,
                               WAIT_LOCK, NOWAIT_LOCK)
from cpython.weakref cimport PyWeakref_GetObject
from libc.string cimport memset, memcpy, memmove
from libc.stdlib cimport qsort
from libc.math cimport log, sqrt, cos, exp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

import numpy as np
cimport numpy as cnp

cnp.import_array()
U64 = np.dtype(np.uint64)
cdef tuple _NO_ARGS = ()
I64 = np.dtype(np.int64)

from iopf_core.records import (FAULT_DTYPE, RESPONSE_DTYPE, COUNTERS, MAX_CODE, check_answers,
                               check_ints, check_record)

cdef enum:
    PASID_VALID = 1
    LAST_PAGE = 2
    NEEDS_PASID = 4
    PRIV_DATA = 8
    PERM_RW = 3
    R_HANDLER = 0
    R_NO_HANDLER = 1
    R_OVERFLOW = 4
    R_FLUSHED = 6
    R_DETACHED = 7
    R_REMOVED = 8
    R_TIMEOUT = 9
    R_CALLER = 10
    C_INVALID = 1
    C_MAX = 2                 # FAILURE, the largest response code
    R_DISPATCH = 5            # report_one: the group waits for a Python handler
    AUTO_SERVE = 4            # Entry.auto_code of a group served by the service model
    SV_CONST = 0
    SV_EXP = 1
    SV_LOGNORMAL = 2
    SV_SAMPLES = 3
    KIND_PARTIAL = 0
    KIND_LAST = 1
    KIND_STOP = 2
    BY_SERVICE = 0x100        # HeapItem.reason mark: an answer of the service model
    MIN_CAP = 16
    CHUNK_BITS = 10           # the least growth of the nodes and Parts (1024): slack stays small
    CHUNK = 1 << CHUNK_BITS
    SWEEP_FLOOR = 4096        # sweep_for_room: what is smaller grows rather than sweeps
    CHUNK_MASK = CHUNK - 1
    COLLECT_KEEP = 1          # report_one(collect): copy the group out, keep its nodes
    COLLECT_FREE = 2          # ... and free them (run(): the faults stay in the output, Segs)

assert sizeof(FaultRec) == FAULT_DTYPE.itemsize
assert sizeof(RespRec) == RESPONSE_DTYPE.itemsize
assert sizeof(Node) == 44
assert sizeof(Part) == 28
assert <int>REPORT_REFUSED < <int>R_DISPATCH
assert C_MAX == MAX_CODE


# The core is one extension module in several files (Cython cannot split a
# class's methods across files, so the engine, class Grouper, stays here):
#   helpers.pxi        allocation (with its debug switches), errors, hashing
#   buffers.pxi        batch output lent to numpy and reused
#   tables.pxi         keys and the open-addressed tables
#   parts.pxi          partial groups (Part): their pool, found through tables
#   nodes.pxi          the node store (held faults) and the pending-group pool
#   cookies.pxi        the cookie table of the pending groups (Robin Hood)
#   heap.pxi           the time heap: timeouts and scheduled answers
#   service.pxi        the service model: workers, FIFO, drawn durations
#   queue_support.pxi  QueueLock and GroupBase, for iopf.Queue and iopf.Group
#   group_entry.pxi    one whole group reported from its fields (iopf.sim)
#   hash.pxi, list.pxi, tree.pxi   the strategies
include "helpers.pxi"
include "buffers.pxi"
include "tables.pxi"
include "parts.pxi"
include "nodes.pxi"
include "cookies.pxi"
include "heap.pxi"
include "service.pxi"


cdef uint32_t attachments(Grouper g, uint32_t dev) noexcept:
    """How many handlers dev has attached (the VT-d driver's iopf_refcount)."""
    cdef uint32_t i, k = 0
    for i in range(g.entry_used):
        if (g.entries[i].dev == dev and g.entries[i].handle and g.entries[i].pasid != KEY_EMPTY
                and g.entries[i].pasid != KEY_DEVICE):
            k += 1
    return k


# --- the engine ------------------------------------------------------------------

cdef class Grouper:
    """The grouping engine. Use a subclass: HashGrouper, ListGrouper, TreeGrouper.

    This is the low-level interface behind ``iopf.Queue``; the queue adds
    handlers, ``Fault``/``Group`` objects and argument checks. Key PASIDs are
    the PASID, or ``NO_PASID`` (0xFFFFFFFF) for requests without PASID_VALID.
    """

    strategy = "base"

    def __cinit__(self, *args, **kwargs):
        # The tables are made here, not in __init__: a second __init__ call
        # must not leak the first ones.
        self.nodes.free = NIL
        self.pends.free = NIL
        self.next_cookie = 1
        self.next_handle = 1
        self.parts.free = NIL
        self.parts.recent = NIL
        self.sweep_ratio = 4
        self._entries_init(MIN_CAP)
        cookies_init(&self.cookies, MIN_CAP)
        self.spare = <Spare*>PyMem_RawMalloc(sizeof(Spare))
        if self.spare == NULL:
            raise MemoryError()
        memset(self.spare, 0, sizeof(Spare))
        self.spare.refs = 1
        buf_reserve(&self.out_offsets, sizeof(int64_t))
        (<int64_t*>self.out_offsets.data)[0] = 0
        self.out_offsets.len = sizeof(int64_t)
        self.seg_arrays = []
        self.seg_room()
        segs_next(&self.segs)

    def __init__(self, policy):
        # Once only: a second __init__ would change the rules under live tables.
        if self.inited:
            raise RuntimeError("a grouper is initialised once; make a new one for another policy")
        # The core checks what it relies on itself (it may be given any object).
        for name, lo, hi in (("pasid_bits", 1, 31), ("grpid_bits", 1, 16)):
            v = getattr(policy, name)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"policy.{name} must be an int in {lo}..{hi}, got {v!r}")
        for name in ("no_handler_code", "handler_error_code", "timeout_code", "overflow_code"):
            v = getattr(policy, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= C_MAX:
                raise ValueError(f"policy.{name} must be a response code 0..{C_MAX}, got {v!r}")
        v = policy.no_pasid
        if v is not None and (type(v) is not int or not 0 <= v < 1 << policy.pasid_bits):
            raise ValueError(f"policy.no_pasid must be None or a PASID below 2**pasid_bits, got {v!r}")
        for name in ("response_timeout", "queue_depth"):
            v = getattr(policy, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64):
                raise ValueError(f"policy.{name} must be None or an int in 0..2**64-1, got {v!r}")
        cdef Rules* r = &self.rules
        r.match_pasid = policy.match_pasid
        r.stall = policy.stall
        r.stop_markers = policy.stop_markers
        r.priv_data_is_last = policy.priv_data_is_last
        r.require_handler = policy.require_handler
        r.discard_on_overflow = policy.discard_on_overflow
        r.flush_partial_on_detach = policy.flush_partial_on_detach
        r.require_device = policy.require_device
        r.attach_adds_device = policy.attach_adds_device
        r.no_pasid = KEY_NO_PASID if policy.no_pasid is None else policy.no_pasid
        r.pasid_bits = policy.pasid_bits
        r.grpid_bits = policy.grpid_bits
        r.bad_pasid = ~((<uint32_t>1 << r.pasid_bits) - 1)     # (both at most 31 bits)
        r.bad_grpid = ~((<uint32_t>1 << r.grpid_bits) - 1)
        r.no_handler_code = policy.no_handler_code
        r.handler_error_code = policy.handler_error_code
        r.timeout_code = policy.timeout_code
        r.overflow_code = policy.overflow_code
        r.has_timeout = policy.response_timeout is not None
        r.timeout = policy.response_timeout or 0
        r.has_depth = policy.queue_depth is not None
        r.depth = policy.queue_depth or 0
        r.last_flags = LAST_PAGE | (PRIV_DATA if r.priv_data_is_last else 0)
        self.plain_update()
        self.policy = policy
        self.inited = True

    cdef int enter(self) except -1 nogil:
        """Take the grouper for one call (RuntimeError if another thread has it)."""
        if not iopf_try_take(&self.busy):
            return raise_busy()
        if not self.inited:
            iopf_give(&self.busy)
            return raise_uninit()
        return 0

    cdef inline void leave(self) noexcept nogil:
        if self.segs.ndead or self.segs.nthin:    # the call answered groups of a taken output
            self.seg_sweep()
        iopf_give(&self.busy)

    def _debug_counters(self, uint32_t epoch, uint64_t next_handle, uint64_t next_cookie):
        """Debug: start the handle and cookie counters near a limit (a test crosses
        2**32 with them). epoch is ignored: drops no longer mark faults with one."""
        self.enter()
        try:
            if self.c.pending_now or self.entry_count or self.c.partial_now:
                raise RuntimeError("only on an empty grouper")
            self.next_handle = next_handle or 1
            self.next_cookie = next_cookie or 1
        finally:
            self.leave()

    def _debug_sweep_ratio(self, uint32_t ratio):
        """Debug: sweep the empty Parts when they are more than 1/ratio of the
        pool (4 otherwise), so that a short test sweeps often."""
        self.sweep_ratio = ratio

    def __dealloc__(self):
        cdef uint32_t i
        PyMem_RawFree(self.nodes.items); self.nodes.items = NULL
        pool_free(&self.parts)
        itab_free(&self.chains)
        PyMem_RawFree(self.pends.items); self.pends.items = NULL
        PyMem_RawFree(self.entries); self.entries = NULL
        itab_free(&self.etab)
        PyMem_RawFree(self.cookies.slots); self.cookies.slots = NULL
        PyMem_RawFree(self.heap.items); self.heap.items = NULL
        sv_clear(&self.sv)
        PyMem_RawFree(self.outbox_gtime.data); self.outbox_gtime.data = NULL
        PyMem_RawFree(self.out_faults.data); self.out_faults.data = NULL
        PyMem_RawFree(self.out_offsets.data); self.out_offsets.data = NULL
        PyMem_RawFree(self.out_cookies.data); self.out_cookies.data = NULL
        PyMem_RawFree(self.outbox.data); self.outbox.data = NULL
        segs_free(&self.segs)
        if self.spare != NULL:        # blocks still lent out free their memory themselves
            for i in range(4):
                PyMem_RawFree(self.spare.data[i])
                self.spare.data[i] = NULL
            self.spare.closed = True
            self.spare.refs -= 1
            if self.spare.refs == 0:
                PyMem_RawFree(self.spare)
            self.spare = NULL

    # -- strategy (overridden): the table that finds a partial group by its key ----------
    cdef uint32_t s_find(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil:
        """The Part keyed (dev, kp, grpid) (a key of skey()), or NIL."""
        return NIL

    cdef void s_insert(self, uint32_t p) noexcept nogil:
        """Add Part p under its key (room made by s_reserve: cannot fail)."""
        pass

    cdef void s_remove(self, uint32_t p) noexcept nogil:
        pass

    cdef size_t s_sizeof(self) noexcept nogil:
        return 0

    cdef void seg_sweep(self) noexcept nogil:
        """Let go of the taken outputs whose pending groups are all answered
        (Segs), after giving nodes back to the groups of thin ones. Every call
        does at its end (leave(), still inside the busy flag, as everything
        that reads or changes segs): whatever answered them (respond, a
        timeout, a scheduled answer, the service model, detach, flush,
        remove_device, a request that advanced the clock), the arrays go with
        the call; between calls no output is dead or thin."""
        cdef uint32_t i
        with gil:
            while self.segs.nthin:
                self.segs.nthin -= 1
                i = self.segs.thin[self.segs.nthin]
                if self.segs.seg[i].pending:
                    try:
                        self.seg_to_nodes(i)
                    except MemoryError:     # no nodes to spare: it stays kept until answered
                        self.thin_failures += 1
            while self.segs.ndead:
                self.segs.ndead -= 1
                i = self.segs.dead[self.segs.ndead]
                self.seg_arrays[i] = None       # within the list: it is never shorter than segs.cap
                self.segs.free[self.segs.nfree] = i
                self.segs.nfree += 1

    cdef int seg_to_nodes(self, uint32_t i) except -1:
        """Give the pending groups of taken output i nodes again, holding their
        faults, so that the output can go (it keeps under a quarter of its
        faults: see segs_thin). Its groups have cookies first..last, among
        others. All or nothing: the nodes are made first."""
        cdef Seg* x = &self.segs.seg[i]
        cdef size_t n
        cdef const FaultRec* src = self.seg_faults(i, &n)
        cdef uint64_t c, last = x.last
        cdef int64_t ci
        cdef uint32_t j, k, prev
        cdef Pend* g
        while <uint64_t>(self.nodes.cap - self.nodes.used) < x.kept:
            node_grow(&self.nodes)
        c = x.first
        while c <= last and x.pending:
            ci = cookie_find(&self.cookies, c)
            c += 1
            if ci < 0:
                continue
            g = &self.pends.items[self.cookies.slots[ci].idx]
            if g.head != NIL or g.tail != i:
                continue
            if <size_t>g.at + g.nfaults > n:    # the caller resized the array: leave it be
                continue
            prev = NIL
            for j in range(g.nfaults):
                k = node_take(&self.nodes)
                node_fill(self.N(k), &src[g.at + j])
                if prev == NIL:
                    g.head = k
                else:
                    self.N(prev).next = k
                prev = k
            g.tail = prev
            segs_release(&self.segs, i, g.nfaults)
        return 0

    cdef int seg_room(self) except -1:
        """A free output number for segs_next (all or nothing: the list grows first)."""
        cdef uint32_t cap
        if self.segs.nfree:
            return 0
        cap = self.segs.cap * 2 if self.segs.cap else 4
        if len(self.seg_arrays) < cap:
            self.seg_arrays.extend([None] * (cap - len(self.seg_arrays)))
        return segs_grow(&self.segs)

    cdef int refill(self) except -1:
        """Output buffers from the memory of arrays that are gone (see _Block)."""
        buf_refill(&self.out_faults, self.spare, OUT_FAULTS)
        buf_refill(&self.out_offsets, self.spare, OUT_OFFSETS)
        buf_refill(&self.out_cookies, self.spare, OUT_COOKIES)
        buf_refill(&self.outbox, self.spare, OUT_BOX)
        return 0

    cdef int s_reserve(self) except -1 nogil:
        """Room for one more s_insert, so that it cannot fail."""
        return 0

    cdef uint32_t s_count(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        """How many partials an LPIG of (dev, kpasid, grpid) would take (nothing changes)."""
        cdef uint32_t p = self.s_find(dev, self.skey(kpasid), self.gkey(grpid))
        cdef uint32_t n, k = 0
        if p == NIL:
            return 0
        n = P(&self.parts, p).head
        while n != NIL:
            if not self.per_device or (self.N(n).grpid == grpid and self.node_key(self.N(n)) == kpasid):
                k += 1
            n = self.N(n).next
        return k

    cdef inline Node* N(self, uint32_t i) noexcept nogil:
        return &self.nodes.items[i]

    cdef uint32_t list_len(self, uint32_t n) noexcept nogil:
        """Length of a group list (linked by next)."""
        cdef uint32_t k = 0
        while n != NIL:
            k += 1
            n = self.N(n).next
        return k

    cdef inline uint32_t node_kpasid(self, const Node* n) noexcept nogil:
        """The key PASID of a held fault (its PASID, or KEY_NO_PASID)."""
        return key_pasid(n.pasid, n.flags, self.rules.no_pasid)

    cdef inline uint32_t node_key(self, const Node* n) noexcept nogil:
        """The PASID part of the grouping key of a held fault."""
        if self.rules.match_pasid:
            return key_pasid(n.pasid, n.flags, self.rules.no_pasid)
        return KEY_ANY

    cdef inline uint32_t gkey(self, uint32_t grpid) noexcept nogil:
        """The group part of the strategy's key for faults of group id grpid:
        grpid, or KEY_LIST (the device's one list)."""
        return KEY_LIST if self.per_device else grpid

    cdef inline uint32_t skey(self, uint32_t kp) noexcept nogil:
        """The PASID part of the strategy's key (and of the flush chain) for
        faults of key PASID kp: kp, KEY_ANY (groups across PASIDs), or
        KEY_LIST (the device's one list)."""
        if self.per_device:
            return KEY_LIST
        return kp if self.rules.match_pasid else KEY_ANY

    # -- partial groups --------------------------------------------------------------
    # Each Part is under its key in the strategy and on the flush chain of its
    # (dev, kp): the table `chains` finds the newest Part of a (dev, kp), the
    # others link from it (cnext, cprev). Linked when a key gets its first
    # partial, unlinked when it is dropped (flush, discard, removal), swept,
    # or, for the list, empties: nothing per fault.
    #
    # The hash and the tree keep a completed group's Part, empty, under its
    # key and on its chain: devices reuse their group ids (a PCIe function
    # has 512), so the next group with the key takes it again, and an LPIG
    # and the group after it change no table. parts.empty counts the empty
    # Parts (a Part counts from part_new until its first fault); when they
    # are over a quarter of the pool, or when room for a new Part would
    # have to grow, parts_sweep() frees them. Every walk of
    # Parts (flush, discard, remove_device, counts) takes an empty one as a
    # Part with no fault; none is ever a group. (The list's Part is a
    # device's whole list: it goes when it empties.)
    cdef inline int part_room(self) except -1 nogil:
        """Room for one more Part (pool, strategy, chain), before any change."""
        if self.parts.free == NIL:
            pool_grow(&self.parts)
        self.s_reserve()
        itab_reserve(&self.chains, 1)
        return 0

    cdef inline uint32_t part_new(self, uint32_t dev, uint32_t kp, uint32_t grpid, int64_t slot,
                                  uint32_t h) noexcept nogil:
        """An empty Part under key (dev, kp, grpid), linked (room made by part_room).
        slot: -1, or (hash strategy) the empty slot its search ended on and h
        the key's hash: the Part goes there, as itab_insert would put it."""
        cdef uint32_t p = pool_alloc(&self.parts), old
        cdef Part* x = P(&self.parts, p)
        cdef int64_t c = part_find(&self.chains, &self.parts, dev, kp, KEY_CHAIN)
        cdef IdxTable* t
        x.head = x.tail = NIL
        self.parts.empty += 1      # until hold_partial gives it its first fault
        x.dev = dev
        x.kp = kp
        x.grpid = grpid
        x.cprev = NIL
        if c < 0:
            x.cnext = NIL
            itab_insert(&self.chains, part_hash(dev, kp, KEY_CHAIN), p)
        else:           # the newest first: groups mostly complete oldest first, off the tail
            old = self.chains.slots[c].idx
            x.cnext = old
            P(&self.parts, old).cprev = p
            self.chains.slots[c].idx = p
        if slot >= 0:
            t = &(<HashGrouper>self).table
            t.slots[slot].hash = h
            t.slots[slot].idx = p
            t.count += 1
        else:
            self.s_insert(p)
        return p

    cdef void part_drop(self, uint32_t p) noexcept nogil:
        """Take an emptied Part out of the strategy and its chain, and free it."""
        self.s_remove(p)
        self.part_unlink(p)

    cdef inline void part_unlink(self, uint32_t p) noexcept nogil:
        """Take a Part that the strategy no longer holds off its chain, and free it."""
        cdef Part* x = P(&self.parts, p)
        cdef int64_t c
        if x.cnext != NIL:
            P(&self.parts, x.cnext).cprev = x.cprev
        if x.cprev != NIL:
            P(&self.parts, x.cprev).cnext = x.cnext
        else:
            c = part_find(&self.chains, &self.parts, x.dev, x.kp, KEY_CHAIN)
            if c >= 0:      # always: a Part is on its chain
                if x.cnext == NIL:
                    itab_delete(&self.chains, <uint32_t>c)
                else:
                    self.chains.slots[c].idx = x.cnext
        pool_release(&self.parts, p)

    cdef uint32_t part_take(self, uint32_t p, uint32_t kp, uint32_t grpid, uint32_t* tail) noexcept nogil:
        """Unlink from Part p (a device's list) its faults of group (kp, grpid) and
        return them as a list in arrival order (its last in *tail, NIL if none);
        an emptied Part is dropped."""
        cdef Part* x = P(&self.parts, p)
        cdef uint32_t n, prev = NIL, nx, ghead = NIL, gtail = NIL
        cdef Node* y
        # As iopf_group_alloc(): walk the whole device list, move out the matches.
        n = x.head
        while n != NIL:
            y = self.N(n)
            nx = y.next
            if y.grpid == grpid and self.node_key(y) == kp:
                if prev == NIL:
                    x.head = nx
                else:
                    self.N(prev).next = nx
                if x.tail == n:
                    x.tail = prev
                y.next = NIL
                if gtail == NIL:
                    ghead = n
                else:
                    self.N(gtail).next = n
                gtail = n
            else:
                prev = n
            n = nx
        if x.head == NIL:
            self.part_drop(p)
        tail[0] = gtail
        return ghead

    cdef uint32_t part_free_nodes(self, uint32_t p, uint32_t kp, bint whole) noexcept nogil:
        """Free the faults of Part p with key PASID kp (whole: all); drop it if
        emptied. Returns how many went; the order of the rest is kept."""
        cdef Part* x = P(&self.parts, p)
        cdef uint32_t n = x.head, nx, prev = NIL, k = 0
        if n == NIL:
            self.parts.empty -= 1
        while n != NIL:
            nx = self.N(n).next
            if whole or self.node_kpasid(self.N(n)) == kp:
                node_release(&self.nodes, n)
                k += 1
            else:
                if prev == NIL:
                    x.head = n
                else:
                    self.N(prev).next = n
                prev = n
            n = nx
        if prev == NIL:
            x.head = NIL
            self.part_drop(p)
        else:
            self.N(prev).next = NIL
            x.tail = prev
        return k

    cdef uint32_t drop_chain(self, uint32_t c) noexcept nogil:
        """Free every Part on the flush chain in slot c of `chains`, and their
        faults; the slot is deleted. Returns the number of faults."""
        cdef uint32_t p = self.chains.slots[c].idx, nx, k = 0, n, m
        cdef uint32_t dev = P(&self.parts, p).dev
        while p != NIL:
            nx = P(&self.parts, p).cnext
            n = P(&self.parts, p).head
            if n == NIL:
                self.parts.empty -= 1
            while n != NIL:
                m = self.N(n).next
                node_release(&self.nodes, n)
                k += 1
                n = m
            self.s_remove(p)
            pool_release(&self.parts, p)
            p = nx
        itab_delete(&self.chains, c)
        self.hold(dev, -<int64_t>k)
        return k

    # -- entries: (dev, key PASID) -> chains, attachment; (dev, KEY_DEVICE) -> limit -----
    # Records in one array (a free list through qhead, pasid KEY_EMPTY when free),
    # found through the index table etab: an entry keeps its index while it
    # lives (a growth moves the array, never an index), so walks go over
    # [0, entry_used) and skip the free records.
    cdef int _entries_init(self, uint32_t cap) except -1:
        self.entries = <Entry*>xmalloc(cap * sizeof(Entry))
        if self.entries == NULL:
            raise MemoryError()
        self.entry_cap = cap
        self.entry_free = NIL
        itab_resize(&self.etab, cap)     # never empty: entry_find needs no test
        return 0

    cdef inline int64_t entry_find(self, uint32_t dev, uint32_t pasid) noexcept nogil:
        # The entry found last for a (dev, PASID) of the same hint slot
        # first: a device sends its groups together, and a few devices take
        # turns (each its own slot). A deleted or reused record fails the key
        # test (a free one's pasid is KEY_EMPTY, which no one looks for).
        cdef uint32_t slot = entry_hint_slot(dev, pasid)
        cdef uint32_t i = self.entry_hint[slot]
        if i < self.entry_used and self.entries[i].dev == dev and self.entries[i].pasid == pasid:
            return i
        return self.entry_search(dev, pasid, slot)

    cdef int64_t entry_search(self, uint32_t dev, uint32_t pasid, uint32_t slot) noexcept nogil:
        """entry_find when its hint (entry_hint[slot]) is not the entry: the
        table's search (not inline: the common case needs none of this)."""
        cdef uint32_t h, mask, i
        cdef const Entry* x
        h = entry_hash(dev, pasid)
        mask = self.etab.cap - 1
        i = h & mask
        while True:
            if self.etab.slots[i].idx == NIL:
                return -1
            if self.etab.slots[i].hash == h:
                x = &self.entries[self.etab.slots[i].idx]
                if x.dev == dev and x.pasid == pasid:
                    self.entry_hint[slot] = self.etab.slots[i].idx
                    return self.etab.slots[i].idx
            i = (i + 1) & mask

    cdef int64_t entry_get(self, uint32_t dev, uint32_t pasid) except -1 nogil:
        """Find or create (the indices of other entries stay valid)."""
        cdef int64_t f = self.entry_find(dev, pasid)
        if f >= 0:
            return f
        # The test of entry_room, inline: a group of a (dev, PASID) with no
        # handler makes its entry when it goes pending and drops it when
        # answered, so this runs once a group.
        if (self.entry_count >= self.entry_cap
                or 4 * (<uint64_t>self.etab.count + 1) > 3 * <uint64_t>self.etab.cap):
            self.entry_room()
        cdef uint32_t i = self.entry_free
        if i != NIL:
            self.entry_free = self.entries[i].qhead
        else:
            i = self.entry_used
            self.entry_used += 1
        memset(&self.entries[i], 0, sizeof(Entry))
        self.entries[i].dev = dev
        self.entries[i].pasid = pasid
        self.entries[i].qhead = NIL
        self.entries[i].qtail = NIL
        itab_insert(&self.etab, entry_hash(dev, pasid), i)
        self.entry_count += 1
        return i

    cdef int entry_room(self, uint32_t more=1) except -1 nogil:
        """Room for `more` more entries (records and table slots), so that
        entry_get cannot fail. A growth that succeeds before one that fails
        changes nothing anyone sees (all or nothing)."""
        cdef uint64_t need = <uint64_t>self.entry_count + more
        cdef uint64_t cap = self.entry_cap
        cdef Entry* e
        if need > cap:
            while need > cap:
                cap *= 2
            if cap > 0x80000000u:
                return raise_nomem()
            e = <Entry*>xrealloc(self.entries, cap * sizeof(Entry))
            if e == NULL:
                return raise_nomem()
            self.entries = e
            self.entry_cap = <uint32_t>cap
        return itab_reserve(&self.etab, more)

    cdef void entry_delete(self, uint32_t i) noexcept nogil:
        cdef uint32_t mask = self.etab.cap - 1
        cdef uint32_t j = entry_hash(self.entries[i].dev, self.entries[i].pasid) & mask
        while self.etab.slots[j].idx != i:
            j = (j + 1) & mask
        itab_delete(&self.etab, j)
        self.entries[i].pasid = KEY_EMPTY
        self.entries[i].qhead = self.entry_free
        self.entry_free = i
        self.entry_count -= 1

    cdef void entry_tidy(self, uint32_t dev, uint32_t pasid) noexcept nogil:
        """Delete the (dev, pasid) entry if nothing hangs on it any more."""
        cdef int64_t i = self.entry_find(dev, pasid)
        if i >= 0 and pasid != KEY_DEVICE:
            if self.entries[i].qhead == NIL and self.entries[i].handle == 0:
                self.entry_delete(<uint32_t>i)

    cdef inline void hold(self, uint32_t dev, int64_t n) noexcept nogil:
        """Count n more (or fewer) outstanding requests for dev's allocation (capacity)."""
        cdef int64_t i
        if self.n_limited:
            i = self.entry_find(dev, KEY_DEVICE)
            if i >= 0:
                self.entries[i].outstanding = <uint32_t>(self.entries[i].outstanding + n)

    # -- time heap (heap.pxi): scheduling answers, sending what is due -------------
    cdef int schedule(self, uint64_t cookie, uint32_t code, uint32_t reason, uint64_t at,
                      bint pending=False) except -1 nogil:
        """Schedule the answer of a pending group at time `at`: 1, or 0 (stale) if not
        pending (`pending`: the caller has just checked)."""
        cdef HeapItem it
        if not pending and cookie_find(&self.cookies, cookie) < 0:
            self.c.stale_responses += 1
            return 0
        it.time = at
        it.seq = self.heap.seq
        it.cookie = cookie
        it.code = code
        it.reason = reason
        heap_push(&self.heap, it, &self.cookies, self.c.pending_now)
        self.heap.seq += 1
        self.heap.answers += 1
        return 1

    cdef int advance_to(self, uint64_t now, bint timeouts_only) except -1 nogil:
        """Send what is due at or before `now`, in (time, seq) order, stamped with its time."""
        cdef HeapItem it
        cdef HeapItem* kept = NULL
        cdef size_t nkept = 0, kcap = 0, i
        cdef uint32_t due = heap_due(&self.heap, now)
        # Room for every response (and every item put back) before the first
        # item is taken off: all or nothing (a failed send lost its group).
        if due:
            self.reserve(0, 0, due, 0)
            if timeouts_only:
                kept = <HeapItem*>grow(kept, &kcap, due, sizeof(HeapItem))
        if now > self.now:
            self.now = now
        try:
            while self.heap.len and self.heap.items[0].time <= now:
                it = self.heap.items[0]
                heap_pop(&self.heap)
                if it.reason == R_TIMEOUT:
                    if cookie_find(&self.cookies, it.cookie) >= 0:
                        self.respond_cookie(it.cookie, it.code, R_TIMEOUT, it.time)
                elif timeouts_only:      # put back afterwards, with its place in line
                    kept[nkept] = it
                    nkept += 1
                else:
                    self.heap.answers -= 1
                    if (self.respond_cookie(it.cookie, it.code, it.reason & 0xFF, it.time) == 0
                            and it.reason & BY_SERVICE):
                        self.sv.stale += 1
        finally:
            for i in range(nkept):
                heap_push(&self.heap, kept[i], &self.cookies, self.c.pending_now)   # room: the heap held them a moment ago
            PyMem_RawFree(kept)
        return 0

    # -- the service model (service.pxi) -------------------------------------------
    cdef int serve_cookie(self, uint64_t cookie, uint64_t arrival, bint given,
                          uint64_t duration, uint32_t code) except -1 nogil:
        """Queue a pending group for the next free worker; schedule its answer when done."""
        cdef uint64_t done
        if cookie_find(&self.cookies, cookie) < 0:
            self.c.stale_responses += 1
            return 0
        sv_room(&self.sv)                    # before the model counts the group
        heap_reserve(&self.heap, 1)
        sv_serve(&self.sv, arrival, duration if given else sv_draw(&self.sv), &done)
        return self.schedule(cookie, code, R_CALLER | BY_SERVICE, done, True)

        # -- output ----------------------------------------------------------------------
    cdef inline int send(self, uint64_t time, uint32_t dev, uint32_t pasid, uint32_t grpid, uint32_t flags,
                         uint32_t code, uint64_t cookie, uint32_t nfaults, uint32_t reason, uint64_t gtime) except -1 nogil:
        """A response to the group of LPIG (dev, pasid, grpid, flags).

        Inline (declared so in grouper.pxd): called with its ten arguments
        through the class's method table, it was a sixth of the instructions
        of answering a group (respond_batch)."""
        buf_reserve(&self.outbox, sizeof(RespRec))
        buf_reserve(&self.outbox_gtime, sizeof(uint64_t))
        (<uint64_t*>(self.outbox_gtime.data + self.outbox_gtime.len))[0] = gtime
        self.outbox_gtime.len += sizeof(uint64_t)
        cdef RespRec* r = <RespRec*>(self.outbox.data + self.outbox.len)
        r.time = time
        r.dev = dev
        r.pasid = pasid
        r.grpid = grpid
        r.code = code
        # The PASID goes back only if the LPIG had PASID_VALID and NEEDS_PASID.
        r.flags = PASID_VALID if (flags & (PASID_VALID | NEEDS_PASID)) == (PASID_VALID | NEEDS_PASID) else 0
        r.cookie = cookie
        r.nfaults = nfaults
        r.reason = reason
        self.outbox.len += sizeof(RespRec)
        return 0

    cdef inline void node_to_rec(self, const Node* n, uint32_t dev, FaultRec* f) noexcept nogil:
        f.time = n.time
        f.dev = dev
        f.pasid = n.pasid
        f.grpid = n.grpid
        f.flags = n.flags & 0xF
        f.perm = n.flags >> 4
        f.addr = n.addr
        f.priv[0] = n.priv0
        f.priv[1] = n.priv1

    cdef inline uint32_t collect(self, uint32_t head, const FaultRec* last, uint64_t cookie,
                                 uint32_t dev) noexcept nogil:
        """Append a completed group to the batch output (room made by the
        caller): the faults of the list head, then `last` (the LPIG, when it
        has no node; checked, so the copy is what a node would give back);
        returns its number of faults (one walk counts and copies)."""
        cdef FaultRec* f = <FaultRec*>(self.out_faults.data + self.out_faults.len)
        cdef uint32_t n = head, nfaults = 0
        while n != NIL:
            self.node_to_rec(self.N(n), dev, f)
            f += 1
            nfaults += 1
            n = self.N(n).next
        if last != NULL:
            f[0] = last[0]
            nfaults += 1
        self.out_faults.len += nfaults * sizeof(FaultRec)
        (<int64_t*>(self.out_offsets.data + self.out_offsets.len))[0] = self.out_faults.len // sizeof(FaultRec)
        self.out_offsets.len += sizeof(int64_t)
        (<uint64_t*>(self.out_cookies.data + self.out_cookies.len))[0] = cookie
        self.out_cookies.len += sizeof(uint64_t)
        return nfaults

    # -- the per-fault rules ------------------------------------------------------------
    cdef inline bint bad_rec(self, const FaultRec* r) noexcept nogil:
        # One test, no branch a field: the batch loop checks every record again.
        return self.bad_bits(r.pasid, r.grpid, r.flags | r.perm)

    cdef inline bint bad_bits(self, uint32_t pasid, uint32_t grpid, uint32_t flags_perm) noexcept nogil:
        """The field check of bad_rec: a bit set that the field may not have.
        Bitwise, so that check() can test the OR of a whole batch at once."""
        return ((pasid & self.rules.bad_pasid) | (grpid & self.rules.bad_grpid)
                | (flags_perm & ~(<uint32_t>0xF))) != 0

    cdef inline uint8_t rec_kind(self, uint32_t flags, uint32_t perm) noexcept nogil:
        """What the rules make of a request: held (partial), an LPIG, or a dropped stop marker."""
        cdef Rules* p = &self.rules
        if p.stop_markers and (flags & LAST_PAGE) and not (perm & PERM_RW):    # stop marker
            return KIND_STOP
        if p.stall or (flags & LAST_PAGE) or (p.priv_data_is_last and (flags & PRIV_DATA)):
            return KIND_LAST                                                    # stall, PRIV_DATA
        return KIND_PARTIAL

    def kinds(self, arr):
        """rec_kind of every record of a FAULT_DTYPE array (uint8: 0 partial, 1 LPIG,
        2 dropped stop marker), without reporting them."""
        cdef Py_ssize_t n, i
        cdef const FaultRec* recs = self._records(arr, &n)
        out = np.empty(n, dtype=np.uint8)
        cdef uint8_t[::1] ov = out
        for i in range(n):
            ov[i] = self.rec_kind(recs[i].flags, recs[i].perm)
        return out

    cdef int report_rec(self, const FaultRec* r, bint collect) except -1 nogil:
        """The checked entry for C callers: a ReportResult (see grouper.pxd).

        The record is copied, then checked, then applied: the caller's memory
        is not read again. A group that waits for a Python handler stays
        pending (REPORT_GROUPED); a C caller answers it or leaves it to the queue.
        """
        cdef FaultRec rec
        cdef int res
        rec_copy(&rec, r)
        if self.bad_rec(&rec):
            return REPORT_REFUSED
        self.enter()
        try:
            res = self.report_one(&rec, COLLECT_KEEP if collect else 0)
        finally:
            self.leave()
        if res == R_DISPATCH:
            self.dispatch = False
            return REPORT_GROUPED
        return res

    cdef int reserve(self, uint32_t nodes, uint32_t groups, size_t sends, uint32_t out_faults) except -1 nogil:
        """Grow the pools a call will take from before it changes anything, so
        that a MemoryError leaves the state as it was (all or nothing). Each
        pool grows exactly when the allocation itself would have.

        nodes: new held faults (0 or 1); groups: new pending groups (0 or 1);
        sends: responses; out_faults: faults of a group to collect (0: none).
        """
        if nodes and self.nodes.free == NIL:
            node_grow(&self.nodes)
        if groups:
            if self.pends.free == NIL:
                pend_grow(&self.pends)
            cookie_room(&self.cookies, self.c.pending_now + 2)   # as cookie_insert, after pending_now += 1
            if self.rules.has_timeout:
                heap_room(&self.heap, &self.cookies, self.c.pending_now)   # as heap_push
            if out_faults:
                buf_reserve(&self.out_faults, out_faults * sizeof(FaultRec))
                buf_reserve(&self.out_offsets, sizeof(int64_t))
                buf_reserve(&self.out_cookies, sizeof(uint64_t))
        if sends:
            buf_reserve(&self.outbox, sends * sizeof(RespRec))
            buf_reserve(&self.outbox_gtime, sends * sizeof(uint64_t))
        return 0

    cdef inline void count_in(self, const FaultRec* r, uint8_t kind) noexcept nogil:
        """A request is taken (it can no longer fail): count it, advance the clock,
        keep its kind (rec_kind) as last_kind (not before: a failed request
        leaves the last one's)."""
        self.last_kind = kind
        self.c.faults_reported += 1
        if r.time > self.now:
            self.now = r.time
        self.last_cookie = 0
        self.dispatch = False

    cdef inline bint plain_partial(self, uint32_t flags) noexcept nogil:
        """A partial that no rule could refuse or drop, with nothing to advance
        first: it goes straight to its group (take_partial). The most common
        request, so report_one tests this first, with one mask (plain_update).
        RULED is set in no request's flags (bad_bits: they fit 4 bits), so
        it tests nonzero against a plain_mask that has it."""
        return ((flags | RULED) & self.plain_mask) == 0

    cdef void plain_update(self) noexcept nogil:
        """plain_mask, after a change of what plain_partial depends on: the
        policy, the devices with a limit (n_limited), auto_advance. A
        request is a plain partial when it has none of the flags that make
        it last (rules.last_flags); no request is (RULED) under stall (every
        request is last), when a rule may refuse a partial (a handler, a
        device or a depth check), when a device's allocation is counted, or
        when time advances before each request."""
        cdef const Rules* p = &self.rules
        if (not p.stall and not p.require_handler and not p.require_device and not p.has_depth
                and not self.n_limited and not self.advances_on_report):
            self.plain_mask = self.rules.last_flags
        else:
            self.plain_mask = RULED

    @property
    def auto_advance(self):
        """Each request first sends what falls due at or before its time."""
        return self.advances_on_report

    @auto_advance.setter
    def auto_advance(self, bint on):
        self.advances_on_report = on
        self.plain_update()

    cdef inline void hold_partial(self, uint32_t part, const FaultRec* r) noexcept nogil:
        """Hold request r as the newest fault of Part part (a free node made
        sure of): it is taken, and counted. Not in the device's outstanding
        count (hold()): a plain partial has no limit to count for, and
        report_ruled counts the others (so this makes no call)."""
        cdef uint32_t n = node_take(&self.nodes)
        cdef Node* node = self.N(n)
        cdef Part* x = P(&self.parts, part)
        self.count_in(r, KIND_PARTIAL)
        self.parts.recent = part
        node_fill(node, r)
        if x.head == NIL:
            x.head = n
            self.parts.empty -= 1
        else:
            self.N(x.tail).next = n
        x.tail = n
        self.c.partial_now += 1

    cdef inline bint recent_has(self, uint32_t dev, uint32_t sk, uint32_t gk) noexcept nogil:
        """Whether the Part that took the last partial (parts.recent) has the
        key (dev, strategy key sk, group key gk): a device sends a group's
        requests together, so its next partial and its LPIG try it before
        any search."""
        cdef uint32_t part = self.parts.recent
        return (part != NIL and P(&self.parts, part).dev == dev
                and P(&self.parts, part).kp == sk and P(&self.parts, part).grpid == gk)

    cdef inline bint hold_recent(self, const FaultRec* r, uint32_t sk, uint32_t gk) noexcept nogil:
        """Hold partial r (the rules let it through; strategy key sk, group
        key gk) in the Part that took the last partial, if it has r's key and
        a node is free: no search, no room to make, nothing that can fail.
        Inline in the batch loop; False: take_partial."""
        if self.nodes.free == NIL or not self.recent_has(r.dev, sk, gk):
            return False
        self.hold_partial(self.parts.recent, r)
        return True

    cdef int take_partial(self, const FaultRec* r, uint32_t sk, uint32_t gk) except -1 nogil:
        """Hold partial r (the rules let it through) in its group after a
        search (hold_recent failed): REPORT_HELD. Not inline: the common
        partial needs none of this."""
        self.hold_partial(self.part_for(r, sk, gk), r)
        # Empty Parts are Parts part_for made, emptied: the test belongs after
        # a search, not on every partial. After the request is taken: a sweep
        # changes nothing anyone sees.
        if <uint64_t>self.parts.empty * self.sweep_ratio > self.parts.cap:
            self.parts_sweep()
        return REPORT_HELD

    cdef uint32_t part_for(self, const FaultRec* r, uint32_t sk, uint32_t gk) except NIL nogil:
        """take_partial's Part after a search: a new one if none has the key
        (the hash strategy's in the slot where its search ended, unless
        part_room grew the table); and a free node for r.

        A key found with a node free returns at once: the Parts of a key
        stay, empty, for its next group, so that is every group's first
        partial once the keys recur. The rest (part_make) is apart, so that
        this common case runs without its registers and stack."""
        cdef uint32_t h = 0
        cdef int64_t i, slot = -1
        cdef IdxTable* t
        if self.hashed:
            t = &(<HashGrouper>self).table
            h = part_hash(r.dev, sk, gk)
            i = part_probe(t, &self.parts, r.dev, sk, gk, h, &slot)
            if i >= 0:
                if self.nodes.free != NIL:
                    return t.slots[i].idx
                return self.part_make(r, sk, gk, t.slots[i].idx, -1, h)
            return self.part_make(r, sk, gk, NIL, slot, h)
        return self.part_make(r, sk, gk, self.s_find(r.dev, sk, gk), -1, 0)

    cdef uint32_t part_make(self, const FaultRec* r, uint32_t sk, uint32_t gk, uint32_t part,
                            int64_t slot, uint32_t h) except NIL nogil:
        """part_for's Part (part: the one found, or NIL; slot, h: where the
        hash strategy's search ended, and the key's hash) and a free node."""
        cdef IdxTable* t = &(<HashGrouper>self).table if self.hashed else NULL
        cdef uint32_t cap = t.cap if t != NULL else 0
        if part == NIL:
            if self.parts.empty and self.sweep_for_room(t):
                self.parts_sweep()
                slot = -1           # the sweep moved slots: part_new probes again
            self.part_room()        # part_new below then cannot fail
            if t != NULL and t.cap != cap:
                slot = -1           # moved: part_new probes again
        if self.nodes.free == NIL:
            node_grow(&self.nodes)
        if part == NIL:
            part = self.part_new(r.dev, sk, gk, slot, h)
        return part

    cdef bint sweep_for_room(self, const IdxTable* t) noexcept nogil:
        """Whether a new Part should sweep the empty Parts rather than let
        part_room grow the pool, the strategy's table t or the flush chains:
        when the one that would grow is large (SWEEP_FLOOR: below it a growth
        costs little memory, and sweeping keys that come back would only
        make them again) and the empty Parts are a 32nd of the pool (which
        grows a chunk at a time) or an eighth of the table (which doubles)
        or more. So they make the pool grow by about a 32nd at most, and a
        table double only when held partials fill 5/8 of it."""
        cdef uint64_t e = 8 * <uint64_t>self.parts.empty
        if self.parts.free == NIL and self.parts.cap >= SWEEP_FLOOR and 4 * e >= self.parts.cap:
            return True
        if (t != NULL and 4 * (<uint64_t>t.count + 1) > 3 * <uint64_t>t.cap
                and t.cap >= SWEEP_FLOOR and e >= t.cap):
            return True
        return (4 * (<uint64_t>self.chains.count + 1) > 3 * <uint64_t>self.chains.cap
                and self.chains.cap >= SWEEP_FLOOR and e >= self.chains.cap)

    cdef void parts_sweep(self) noexcept nogil:
        """Free the empty Parts kept for their keys (see part_room), in one
        walk of the pool: when they are over a quarter of it (take_partial),
        or when a new Part would make a large pool or table grow and they are
        enough of it (sweep_for_room, part_for). A sweep so costs O(1) a
        Part it frees, and the memory per held partial stays within its goal
        beside keys that never recur (tests/test_empty_parts_hardening.py)."""
        cdef uint32_t i
        for i in range(self.parts.cap):
            if P(&self.parts, i).kp != KEY_EMPTY and P(&self.parts, i).head == NIL:
                self.part_drop(i)
                self.parts.empty -= 1

    cdef inline uint32_t out_room(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil:
        """The batch output room, in faults, to make for the group an LPIG of
        (dev, key PASID kp, grpid) completes: 1 when the room left holds every
        partial held anyway, else the group's size. Counting walks the group
        (the whole device list for ListGrouper: twice the cost of an LPIG),
        so only then."""
        if self.out_faults.cap - self.out_faults.len < (self.c.partial_now + 1) * sizeof(FaultRec):
            return self.s_count(dev, kp if self.rules.match_pasid else KEY_ANY, grpid) + 1
        return 1

    cdef inline int report_one(self, const FaultRec* r, int collect) except -1 nogil:
        """Apply one request that bad_rec() accepted, from memory the caller cannot
        change: a ReportResult, or R_DISPATCH if the group it completed waits for a
        Python handler (self.dispatch; the cookie is self.last_cookie).

        A plain partial (the most common request) is held here, inline; every
        other request goes through the rules (report_ruled).
        """
        cdef uint32_t sk, gk
        if self.plain_partial(r.flags):
            sk = self.skey(key_pasid(r.pasid, r.flags, self.rules.no_pasid))
            gk = self.gkey(r.grpid)
            if self.hold_recent(r, sk, gk):
                return REPORT_HELD
            return self.take_partial(r, sk, gk)
        return self.report_ruled(r, collect)

    cdef int report_ruled(self, const FaultRec* r, int collect) except -1 nogil:
        """report_one for a request that is not a plain partial.

        Everything that can fail (allocations) comes before count_in(): a
        MemoryError leaves the grouper as it was before the call.
        """
        cdef Rules* p = &self.rules
        cdef uint32_t flags = r.flags, dev = r.dev, kp, sk, gk, part, n, m, head, tail, nf, q, auto, out, at
        cdef int64_t ei, di, ci
        cdef uint64_t handle = 0
        cdef Part* x
        cdef bint last, keep
        cdef uint8_t kind
        cdef HeapItem tmo
        if self.advances_on_report and self.heap.len and self.heap.items[0].time <= r.time:
            # What falls due before this request comes first. The room the
            # request may take (the advance only frees) is made before the
            # advance changes anything: all or nothing for both.
            out = 0
            if collect and self.rec_kind(flags, r.perm) == KIND_LAST:
                out = self.out_room(dev, key_pasid(r.pasid, flags, p.no_pasid), r.grpid)
            self.reserve(1, 1, heap_due(&self.heap, r.time) + 1, out)
            self.part_room()
            self.entry_room()
            if self.has_service:
                sv_room(&self.sv)
                heap_reserve(&self.heap, 2)
            self.advance_to(r.time, False)
        kind = self.rec_kind(flags, r.perm)
        last = kind == KIND_LAST
        if kind == KIND_STOP:                                                    # stop marker
            self.count_in(r, kind)
            self.c.stop_markers += 1
            return REPORT_DROPPED
        kp = key_pasid(r.pasid, flags, p.no_pasid)
        sk = self.skey(kp)
        ei = -1
        if last or p.require_handler:   # a partial needs its handler only to be refused
            ei = self.entry_find(dev, kp)
            if ei >= 0:
                handle = self.entries[ei].handle
        if p.require_handler and not self.default_handler and handle == 0:    # no handler
            self.reserve(0, 0, 1, 0)
            self.count_in(r, kind)
            self.send(r.time, dev, r.pasid, r.grpid, flags, p.no_handler_code, 0, 1, R_NO_HANDLER, r.time)
            self.c.rejected += 1
            return REPORT_DROPPED
        if p.require_device and self.entry_find(dev, KEY_DEVICE) < 0:       # no iopf_param: iommu_report_device_fault
            self.reserve(0, 0, 1, 0)
            self.count_in(r, kind)
            self.send(r.time, dev, r.pasid, r.grpid, flags, C_INVALID, 0, 1, R_NO_HANDLER, r.time)
            self.c.rejected += 1
            return REPORT_DROPPED
        if p.has_depth and self.c.partial_now + self.pending_faults + 1 > p.depth:
            return self.overflow(r, last)
        if self.n_limited:
            di = self.entry_find(dev, KEY_DEVICE)
            if di >= 0 and self.entries[di].limit and self.entries[di].outstanding + 1 > self.entries[di].limit:
                return self.overflow(r, last)
        if not last:
            gk = self.gkey(r.grpid)
            if not self.hold_recent(r, sk, gk):
                self.take_partial(r, sk, gk)
            self.hold(dev, 1)
            return REPORT_HELD
        # A constant handler answers the group it completes in C (one response).
        auto = self.entries[ei].auto_code if handle else (self.default_auto if self.default_handler else 0)
        out = 0
        if collect:
            out = self.out_room(dev, kp, r.grpid)
        # run() copies the group out and frees its nodes at once: the LPIG
        # then needs no node, it goes straight to the output after the others.
        keep = collect != COLLECT_FREE
        # Most requests need nothing new: the cheap tests first, reserve() when one fails.
        if ((keep and self.nodes.free == NIL)
                or self.pends.free == NIL or 2 * (self.c.pending_now + 2) > self.cookies.cap
                or (p.has_timeout and self.heap.len == self.heap.cap)
                or self.out_faults.len + out * sizeof(FaultRec) > self.out_faults.cap
                or self.out_offsets.len + sizeof(int64_t) > self.out_offsets.cap
                or self.out_cookies.len + sizeof(uint64_t) > self.out_cookies.cap
                or (auto and (self.outbox.len + sizeof(RespRec) > self.outbox.cap
                              or self.outbox_gtime.len + sizeof(uint64_t) > self.outbox_gtime.cap))):
            self.reserve(keep, 1, 1 if auto else 0, out)
        if auto == AUTO_SERVE:      # serve_cookie below: its FIFO place, its timeout and answer
            sv_room(&self.sv)
            heap_reserve(&self.heap, 2 if p.has_timeout else 1)
        if ei < 0:
            self.entry_room()       # entry_get below then cannot fail
        n = NIL
        if keep:
            n = node_alloc(&self.nodes)
            node_fill(self.N(n), r)
        self.count_in(r, KIND_LAST)
        self.hold(dev, 1)
        # Every partial with the key, stale or of another PASID, then the LPIG.
        head = tail = NIL
        if self.per_device:
            part = self.s_find(dev, sk, KEY_LIST)
            if part != NIL:
                head = self.part_take(part, kp if p.match_pasid else KEY_ANY, r.grpid, &tail)
        else:                   # the Part stays, empty, for the key's next group
            # The Part that took the last partial first: a device sends a
            # group's requests together, its LPIG last.
            part = self.parts.recent if self.recent_has(dev, sk, r.grpid) else NIL
            if part == NIL:
                if self.hashed:     # s_find, inline
                    ci = part_find(&(<HashGrouper>self).table, &self.parts, dev, sk, r.grpid)
                    part = NIL if ci < 0 else (<HashGrouper>self).table.slots[ci].idx
                else:
                    part = self.s_find(dev, sk, r.grpid)
            if part != NIL:
                x = P(&self.parts, part)
                head = x.head
                tail = x.tail
                if head != NIL:
                    x.head = x.tail = NIL
                    self.parts.empty += 1
        # The group's size: counted as it is copied out (the one walk of its
        # faults, which went cold while the group was open), or by a walk.
        at = <uint32_t>(self.out_faults.len // sizeof(FaultRec))
        if keep:
            if tail == NIL:
                head = n
            else:
                self.N(tail).next = n
            nf = self.collect(head, NULL, self.next_cookie, dev) if collect else self.list_len(head)
        else:
            nf = self.collect(head, r, self.next_cookie, dev)
        self.c.partial_now -= nf - 1
        self.c.grouped += nf
        self.c.groups += 1
        self.c.pending_now += 1
        self.pending_faults += nf
        # The pending group, chained on its LPIG's (dev, key PASID).
        q = pend_alloc(&self.pends)
        cdef Pend* g = &self.pends.items[q]
        g.cookie = self.next_cookie
        self.next_cookie += 1
        g.time = r.time
        g.dev = dev
        g.handle = handle
        g.nfaults = nf
        g.pasid = r.pasid
        g.grpid = <uint16_t>r.grpid
        g.flags = <uint8_t>flags
        if collect == COLLECT_FREE:
            # Copied out: its faults stay in the output, and its nodes go back
            # to work at once, while they are still in cache.
            if head != NIL:
                node_release_list(&self.nodes, head, tail, nf - 1)
            g.head = NIL
            g.tail = segs_hold(&self.segs, g.cookie, nf)
            g.at = at
        else:
            g.head = head
            g.tail = n
        g.qnext = NIL
        if ei < 0:          # (found above, the entries have not moved since)
            ei = self.entry_get(dev, kp)
        g.entry = <uint32_t>ei
        g.qprev = self.entries[ei].qtail
        if g.qprev == NIL:
            self.entries[ei].qhead = q
        else:
            self.pends.items[g.qprev].qnext = q
        self.entries[ei].qtail = q
        cookie_insert(&self.cookies, g.cookie, q, self.c.pending_now + 1)
        if p.has_timeout:
            tmo.time = add_sat(g.time, p.timeout)
            if self.tmo_quantum and tmo.time % self.tmo_quantum:
                tmo.time = add_sat(tmo.time, self.tmo_quantum - tmo.time % self.tmo_quantum)
            tmo.seq = self.heap.seq
            tmo.cookie = g.cookie
            tmo.code = p.timeout_code
            tmo.reason = R_TIMEOUT
            heap_push(&self.heap, tmo, &self.cookies, self.c.pending_now)
            self.heap.seq += 1
        self.last_cookie = g.cookie
        if auto == AUTO_SERVE:
            self.serve_cookie(self.last_cookie, r.time, False, 0, self.sv.code)
            return REPORT_GROUPED
        if auto:
            self.respond_cookie(self.last_cookie, auto - 1, R_HANDLER, r.time)
            return REPORT_ANSWERED
        if handle or self.default_handler:
            self.dispatch = True
            return R_DISPATCH
        return REPORT_GROUPED

    cdef int overflow(self, const FaultRec* r, bint last) except -1 nogil:
        """Overflow: drop the request; answer it if it is an LPIG; maybe discard all partials."""
        self.reserve(0, 0, 1 if last else 0, 0)
        self.count_in(r, KIND_LAST if last else KIND_PARTIAL)
        self.c.overflowed += 1
        if last:
            self.send(r.time, r.dev, r.pasid, r.grpid, r.flags, self.rules.overflow_code, 0, 1, R_OVERFLOW, r.time)
        if self.rules.discard_on_overflow:
            self.drop_where(0, 0, 0, &self.c.discarded)
        return REPORT_DROPPED

    # -- dropping partials (flush, discard, remove) --------------------------------------
    cdef int drop_where(self, int mode, uint32_t dev, uint32_t kp, uint64_t* counter) except -1 nogil:
        """Drop held partials: mode 0 all, 1 of a device, 2 of (dev, key PASID);
        counts into *counter.

        Mode 2 visits only the flush chain of (dev, kp): the Parts of that key
        PASID, or, when groups span PASIDs (match_pasid off, or the device's one
        list), the device's Parts, whose faults of other PASIDs stay, in order
        (the device's partial list, as the kernel would walk it).
        """
        cdef uint32_t i, p, nx, k, dropped = 0
        cdef uint32_t ck = self.skey(kp)
        cdef int64_t c
        if mode == 2:
            c = part_find(&self.chains, &self.parts, dev, ck, KEY_CHAIN)
            if c < 0:
                return 0
            if ck == kp:
                dropped = self.drop_chain(<uint32_t>c)
            else:
                p = self.chains.slots[c].idx
                while p != NIL:
                    nx = P(&self.parts, p).cnext    # p may go (part_drop)
                    dropped += self.part_free_nodes(p, kp, False)
                    p = nx
                self.hold(dev, -<int64_t>dropped)
        else:
            i = 0
            while i < self.chains.cap:
                p = self.chains.slots[i].idx
                if p != NIL and (mode == 0 or P(&self.parts, p).dev == dev):
                    dropped += self.drop_chain(i)   # may pull a later slot into i: look at i again
                else:
                    i += 1
        counter[0] += dropped
        self.c.partial_now -= dropped
        return 0

    # -- answering pending groups ----------------------------------------------------------
    cdef inline int respond_cookie(self, uint64_t cookie, uint32_t code, uint32_t reason, uint64_t time) except -1 nogil:
        """Answer a pending group (once only): 1 if sent, 0 if stale."""
        cdef int64_t ci = cookie_find(&self.cookies, cookie), ei
        if ci < 0:
            self.c.stale_responses += 1
            return 0
        cdef uint32_t q = self.cookies.slots[ci].idx
        cdef Pend* g = &self.pends.items[q]
        ei = g.entry
        cookie_delete(&self.cookies, <uint32_t>ci)
        if g.qprev == NIL:
            self.entries[ei].qhead = g.qnext
        else:
            self.pends.items[g.qprev].qnext = g.qnext
        if g.qnext == NIL:
            self.entries[ei].qtail = g.qprev
        else:
            self.pends.items[g.qnext].qprev = g.qprev
        if self.entries[ei].qhead == NIL and self.entries[ei].handle == 0:
            self.entry_delete(<uint32_t>ei)     # nothing hangs on it any more (entry_tidy)
        self.send(time, g.dev, g.pasid, g.grpid, g.flags, code, cookie, g.nfaults, reason, g.time)
        if g.head == NIL:
            segs_release(&self.segs, g.tail, g.nfaults)
        else:
            node_release_list(&self.nodes, g.head, g.tail, g.nfaults)
        self.hold(g.dev, -<int64_t>g.nfaults)
        self.pending_faults -= g.nfaults
        self.c.answered += 1
        self.c.pending_now -= 1
        pend_release(&self.pends, q)
        return 1

    cdef int answer_chain(self, uint32_t dev, uint32_t kp, bint by_handle, uint64_t handle,
                          uint32_t code, uint32_t reason, uint64_t time) except -1 nogil:
        """Answer the pending groups of (dev, kp) in cookie order (optionally one attachment's)."""
        cdef int64_t e = self.entry_find(dev, kp)
        if e < 0:
            return 0
        cdef uint32_t q = self.entries[e].qhead, nx
        while q != NIL:
            nx = self.pends.items[q].qnext        # pools do not move while answering
            if not by_handle or self.pends.items[q].handle == handle:
                self.respond_cookie(self.pends.items[q].cookie, code, reason, time)
            q = nx
        return 0

    # -- Python interface --------------------------------------------------------------------
    cdef uint64_t _time(self, object time) except? 0:
        """A call's time argument (None: now), checked; clock_to() makes it the clock."""
        if time is None:
            return self.now
        if type(time) is not int and (PyBool_Check(time) or not isinstance(time, (int, np.integer))):
            # A float or a bool is refused, never cut (as Fault refuses them).
            raise TypeError(f"time must be an int, not {type(time).__name__} ({time!r})")
        if not 0 <= time < 2**64:
            raise ValueError(f"time must be a whole number of ns in [0, 2**64), not {time!r}")
        return <uint64_t>time

    cdef inline void clock_to(self, uint64_t t) noexcept nogil:
        if t > self.now:
            self.now = t

    cdef inline const FaultRec* _records(self, object arr, Py_ssize_t* n) except? NULL:
        # The array's own pointer: a typed memoryview cost a microsecond a
        # call, which a small batch (one group of a SimPy model) noticed.
        if not isinstance(arr, cnp.ndarray):
            raise TypeError("a 1-D contiguous FAULT_DTYPE array is needed")
        cdef cnp.ndarray a = <cnp.ndarray>arr
        if (cnp.PyArray_NDIM(a) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                or cnp.PyArray_ITEMSIZE(a) != sizeof(FaultRec)):
            raise TypeError("a 1-D contiguous FAULT_DTYPE array is needed")
        n[0] = cnp.PyArray_DIM(a, 0)
        return <const FaultRec*>cnp.PyArray_DATA(a) if n[0] else NULL

    cdef bint bad_kpasid(self, uint32_t kpasid) noexcept nogil:
        """A key PASID no request can have: wider than the policy allows and not
        NO_PASID (so never one of the core's internal markers)."""
        return kpasid != KEY_NO_PASID and (kpasid >> self.rules.pasid_bits) != 0

    cdef int check_kpasid(self, uint32_t kpasid) except -1:
        if self.bad_kpasid(kpasid):
            raise ValueError(f"pasid {kpasid:#x} does not fit in {self.rules.pasid_bits} bits "
                             f"(and is not NO_PASID, {KEY_NO_PASID:#x})")
        return 0

    cdef uint32_t chain_len(self, uint32_t dev, uint32_t kp) noexcept nogil:
        """Number of pending groups of (dev, kp): the responses a flush or detach may send."""
        cdef int64_t e = self.entry_find(dev, kp)
        cdef uint32_t q, k = 0
        if e >= 0:
            q = self.entries[e].qhead
            while q != NIL:
                k += 1
                q = self.pends.items[q].qnext
        return k

    def add_device(self, uint32_t dev, uint32_t limit):
        """Add dev to the queue with a PRI allocation; 0 means unlimited.

        The device's entry (KEY_DEVICE) says it is in the queue (require_device)
        and holds its limit; n_limited counts the entries with a limit.
        """
        self.enter()
        try:
            self.add_device_(dev, limit)
        finally:
            self.leave()

    cdef int add_device_(self, uint32_t dev, uint32_t limit) except -1:
        # entry_get is the only step that can fail, and it comes before any change.
        cdef int64_t e = self.entry_find(dev, KEY_DEVICE)
        cdef uint32_t i, n, p, count = 0
        if limit == 0:
            if e < 0:
                self.entry_get(dev, KEY_DEVICE)
            elif self.entries[e].limit:
                self.entries[e].limit = 0
                self.n_limited -= 1
                self.plain_update()
            return 0
        if e < 0 or self.entries[e].limit == 0:
            # Count what the device holds now: partials and faults of pending groups
            # (an unlimited device's count is not kept up to date).
            for i in range(self.chains.cap):
                p = self.chains.slots[i].idx
                if p != NIL and P(&self.parts, p).dev == dev:
                    while p != NIL:
                        count += self.list_len(P(&self.parts, p).head)
                        p = P(&self.parts, p).cnext
            for i in range(self.entry_used):
                if self.entries[i].dev == dev and self.entries[i].pasid != KEY_EMPTY:
                    n = self.entries[i].qhead
                    while n != NIL:
                        count += self.pends.items[n].nfaults
                        n = self.pends.items[n].qnext
            if e < 0:
                e = self.entry_get(dev, KEY_DEVICE)
            self.entries[e].outstanding = count
            self.n_limited += 1
            self.plain_update()
        self.entries[e].limit = limit
        return 0

    def set_default_handler(self, bint present, int auto=-1):
        """A default handler exists; auto >= 0 makes it the constant code auto."""
        if not -1 <= auto <= AUTO_SERVE - 1:
            raise ValueError(f"auto must be -1 (a Python handler), a code 0..{C_MAX} or "
                             f"{AUTO_SERVE - 1} (the service model), got {auto}")
        if auto == AUTO_SERVE - 1 and not self.has_service:
            raise ValueError("no service model")
        self.enter()
        self.default_handler = present
        self.default_auto = <uint32_t>(auto + 1) if present and auto >= 0 else 0
        self.leave()

    def attach(self, uint32_t dev, uint32_t kpasid, time=None, int auto=-1):
        """Attach a handler to (dev, kpasid); a replace answers the old one's groups.

        auto >= 0: a constant handler that answers every group with code auto
        as it forms, without leaving C.
        """
        if not -1 <= auto <= AUTO_SERVE - 1:
            raise ValueError(f"auto must be -1 (a Python handler), a code 0..{C_MAX} or "
                             f"{AUTO_SERVE - 1} (the service model), got {auto}")
        if auto == AUTO_SERVE - 1 and not self.has_service:
            raise ValueError("no service model")
        self.check_kpasid(kpasid)
        cdef uint64_t t = self._time(time)
        cdef int64_t e
        cdef bint adds
        self.enter()
        try:
            # The first handler enables IOPF (adds the device); a replace never
            # adds or removes it (iopf_for_domain_replace).
            adds = (self.rules.attach_adds_device and attachments(self, dev) == 0
                    and self.entry_find(dev, KEY_DEVICE) < 0)
            self.reserve(0, 0, self.chain_len(dev, kpasid), 0)
            self.entry_room(2 if adds else 1)   # the entry_get calls below cannot fail
            if adds:
                self.entry_get(dev, KEY_DEVICE)
            self.detach_one_(dev, kpasid, t)
            e = self.entry_get(dev, kpasid)
            self.entries[e].handle = self.next_handle
            self.entries[e].auto_code = <uint32_t>(auto + 1) if auto >= 0 else 0
            self.next_handle += 1
        finally:
            self.leave()

    def detach(self, uint32_t dev, uint32_t kpasid, time=None):
        """Answer the attachment's pending groups INVALID; False if none was attached."""
        self.check_kpasid(kpasid)
        cdef uint64_t t = self._time(time)
        self.enter()
        try:
            return self.detach_(dev, kpasid, t)
        finally:
            self.leave()

    cdef bint detach_(self, uint32_t dev, uint32_t kpasid, uint64_t t) except -1:
        cdef int64_t e = self.entry_find(dev, kpasid)
        if (self.rules.attach_adds_device and e >= 0 and self.entries[e].handle
                and attachments(self, dev) == 1):
            # The last handler goes, so the driver removes the device
            # (intel_iommu_disable_iopf), which answers all its groups before
            # iommufd_auto_response_faults would answer the attachment's.
            # remove_device_ reserves its responses before it changes anything,
            # and the handle is cleared after it (all or nothing).
            self.remove_device_(dev, t)
            # e is still the entry: a handle keeps it, and an entry keeps its index.
            self.entries[e].handle = 0
            self.entries[e].auto_code = 0
            self.entry_tidy(dev, kpasid)
            return True
        self.reserve(0, 0, self.chain_len(dev, kpasid), 0)
        return self.detach_one_(dev, kpasid, t)

    cdef bint detach_one_(self, uint32_t dev, uint32_t kpasid, uint64_t t) except -1:
        """Detach one handler (its outbox space reserved by the caller): answer its
        pending groups, leave the device in the queue."""
        cdef int64_t e = self.entry_find(dev, kpasid)
        if e < 0 or self.entries[e].handle == 0:
            return False
        cdef uint64_t handle = self.entries[e].handle
        self.clock_to(t)
        self.entries[e].handle = 0
        self.entries[e].auto_code = 0
        # Newest first, as iommufd_auto_response_faults answers the groups not
        # yet read (it moves them to a private list, reversing them).
        cdef uint32_t q = self.entries[e].qtail, pv
        while q != NIL:
            pv = self.pends.items[q].qprev        # pools do not move while answering
            if self.pends.items[q].handle == handle:
                self.respond_cookie(self.pends.items[q].cookie, C_INVALID, R_DETACHED, t)
            q = pv
        if self.rules.flush_partial_on_detach:
            self.drop_where(2, dev, kpasid, &self.c.flushed)
        self.entry_tidy(dev, kpasid)
        return True

    def check(self, arr):
        """Raise ValueError naming the first record a field check refuses."""
        cdef Py_ssize_t n, i, bad = -1
        cdef const FaultRec* recs = self._records(arr, &n)
        cdef uint64_t acc[2]
        cdef uint64_t v[2]
        acc[0] = acc[1] = 0
        with nogil:
            # A batch is bad if the OR of its fields is (bad_bits is bitwise):
            # one pass without a branch a record, then the search for the
            # first bad one only when there is one. The pass ORs pasid,
            # grpid, flags and perm, adjacent in a record, 16 bytes at a time.
            for i in range(n):
                memcpy(v, &recs[i].pasid, 16)
                acc[0] |= v[0]
                acc[1] |= v[1]
            if self.bad_bits(<uint32_t>acc[0], <uint32_t>(acc[0] >> 32),
                             <uint32_t>acc[1] | <uint32_t>(acc[1] >> 32)):
                for i in range(n):
                    if self.bad_rec(&recs[i]):
                        bad = i
                        break
        # (No bad one found: the array changed meanwhile; run() checks each
        # record it applies anyway.)
        if bad >= 0:
            self.refuse(bad, &recs[bad])

    cdef int refuse(self, Py_ssize_t i, const FaultRec* r) except -1:
        """Raise the ValueError of check_record for a record bad_rec() refused."""
        rec = (r.time, r.dev, r.pasid, r.grpid, r.flags, r.perm, r.addr, (r.priv[0], r.priv[1]))
        check_record(None if i < 0 else i, rec, self.rules.pasid_bits, self.rules.grpid_bits)
        raise ValueError(f"bad field in {rec!r}")  # pragma: no cover

    def report(self, tuple rec):
        """Report one request (a tuple in FAULT_DTYPE order); the cookie of the
        group it completed, or 0. take_groups() then gives that group (after
        any that run() collected and were not taken yet)."""
        cdef FaultRec r
        if len(rec) != 8 or not isinstance(rec[7], (tuple, list)) or len(rec[7]) != 2:
            raise TypeError(f"a record is a tuple (time, dev, pasid, grpid, flags, perm, addr, "
                            f"(priv0, priv1)), not {rec!r}")
        p0, p1 = rec[7]
        if not ints9(PyTuple_GET_ITEM(rec, 0), PyTuple_GET_ITEM(rec, 1), PyTuple_GET_ITEM(rec, 2),
                     PyTuple_GET_ITEM(rec, 3), PyTuple_GET_ITEM(rec, 4), PyTuple_GET_ITEM(rec, 5),
                     PyTuple_GET_ITEM(rec, 6), <PyObject*>p0, <PyObject*>p1):
            check_ints(rec)
        try:
            r.time = rec[0]; r.dev = rec[1]; r.pasid = rec[2]; r.grpid = rec[3]
            r.flags = rec[4]; r.perm = rec[5]; r.addr = rec[6]
            r.priv[0] = rec[7][0]; r.priv[1] = rec[7][1]
        except OverflowError:
            check_record(None, rec, self.rules.pasid_bits, self.rules.grpid_bits)
            raise ValueError(f"field out of range in {rec!r}")
        if self.bad_rec(&r):
            self.refuse(-1, &r)
        self.enter()
        try:
            self.report_one(&r, COLLECT_KEEP)
        finally:
            self.leave()
        return self.last_cookie

    # -- the per-call path: one request in, the completed group's records out ----------
    # A numpy array per group cost a microsecond (three of them, from
    # take_groups); a bytes object of the group's records costs ~30 ns, and
    # the caller makes an array of it only if someone reads the faults.
    cdef inline bint held_elsewhere(self) noexcept:
        # Read with the GIL held: no other thread changes owner meanwhile.
        return self.owner != 0 and self.owner != PyThread_get_thread_ident()

    cdef object report_call(self, FaultRec* r):
        """None, or the records of the group r completed (bytes of
        FAULT_DTYPE records, LPIG last; its cookie is last_cookie); False,
        without doing anything, while another thread holds the queue (see owner).
        The checks and the all-or-nothing rule of report(): r is the caller's
        copy, checked, then applied under the busy flag."""
        cdef size_t nf, nc, no
        if self.held_elsewhere():
            return False
        if self.bad_rec(r):
            self.refuse(-1, r)
        self.enter()
        # The group is copied out after what run() collected and was not
        # taken yet, and taken back off: that output stays as it was. (Its
        # lengths are read inside the busy flag: a C caller of report_rec may
        # change them without the GIL until then.)
        nf, nc, no = self.out_faults.len, self.out_cookies.len, self.out_offsets.len
        try:
            self.report_one(r, COLLECT_KEEP)   # R_DISPATCH leaves dispatch set, as report() does
            if self.last_cookie == 0:
                return None
            return PyBytes_FromStringAndSize(self.out_faults.data + nf, <Py_ssize_t>(self.out_faults.len - nf))
        finally:
            self.out_faults.len = nf
            self.out_cookies.len = nc
            self.out_offsets.len = no
            self.leave()

    cdef object respond_call(self, uint64_t cookie, uint32_t code, uint32_t reason, time):
        """Answer a pending group now (code and reason already checked): True if sent."""
        cdef uint64_t t = self._time(time)
        cdef int sent
        self.enter()
        try:
            self.reserve(0, 0, 1, 0)
            sent = self.respond_cookie(cookie, code, reason, t)
            self.clock_to(t)
        finally:
            self.leave()
        return sent == 1

    def report_fault(self, fault):
        """Report one request given as a tuple in FAULT_DTYPE order (an
        ``iopf.Fault``); None, or (cookie, records) of the group it completed
        (False: another thread holds the queue, nothing was done)."""
        done = self.report_tuple(fault)
        return done if done is None or done is False else (self.last_cookie, done)

    def report_values(self, time, dev, pasid, grpid, flags, perm, addr, priv0=0, priv1=0):
        """Report one request given field by field; as report_fault."""
        done = self.report_fields(time, dev, pasid, grpid, flags, perm, addr, priv0, priv1)
        return done if done is None or done is False else (self.last_cookie, done)

    cdef object report_tuple(self, object fault):
        cdef FaultRec r
        if not isinstance(fault, tuple) or len(<tuple>fault) != 8:
            raise TypeError("a fault is a tuple of the 8 fields of FAULT_DTYPE")
        cdef tuple t = <tuple>fault
        p = t[7]
        # as report(): the pair is checked (indexing below is unchecked)
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise TypeError(f"a record is a tuple (time, dev, pasid, grpid, flags, perm, addr, "
                            f"(priv0, priv1)), not {t!r}")
        p0 = p[0]
        p1 = p[1]
        if not ints9(PyTuple_GET_ITEM(t, 0), PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 2),
                     PyTuple_GET_ITEM(t, 3), PyTuple_GET_ITEM(t, 4), PyTuple_GET_ITEM(t, 5),
                     PyTuple_GET_ITEM(t, 6), <PyObject*>p0, <PyObject*>p1):
            check_ints(t)
        try:
            r.time = t[0]; r.dev = t[1]; r.pasid = t[2]; r.grpid = t[3]
            r.flags = t[4]; r.perm = t[5]; r.addr = t[6]
            r.priv[0] = p0; r.priv[1] = p1
        except OverflowError:
            check_record(None, t, self.rules.pasid_bits, self.rules.grpid_bits)
            raise ValueError(f"field out of range in {t!r}")
        return self.report_call(&r)

    cdef object report_fields(self, time, dev, pasid, grpid, flags, perm, addr, priv0, priv1):
        cdef FaultRec r
        if not ints9(<PyObject*>time, <PyObject*>dev, <PyObject*>pasid, <PyObject*>grpid,
                     <PyObject*>flags, <PyObject*>perm, <PyObject*>addr, <PyObject*>priv0,
                     <PyObject*>priv1):
            check_ints((time, dev, pasid, grpid, flags, perm, addr, (priv0, priv1)))
        try:
            r.time = time; r.dev = dev; r.pasid = pasid; r.grpid = grpid
            r.flags = flags; r.perm = perm; r.addr = addr; r.priv[0] = priv0; r.priv[1] = priv1
        except OverflowError:
            rec = (time, dev, pasid, grpid, flags, perm, addr, (priv0, priv1))
            check_record(None, rec, self.rules.pasid_bits, self.rules.grpid_bits)
            raise ValueError(f"field out of range in {rec!r}")
        return self.report_call(&r)

    # -- bound to an iopf.Queue: its report and report_values, in C -------------------
    # A Python method around the calls above cost as much as the grouping
    # (a frame, keyword parsing, three flag reads). The queue installs these
    # as its per-instance report and report_values; they go to its locked
    # Python methods whenever Python code could run inside (fast is off) or
    # another thread holds the queue.
    def bind(self, queue, group_cls, fault_cls, slow_report, slow_values, slow_respond):
        """For iopf.Queue: queue (held weakly: the queue holds the grouper),
        its Group and Fault classes, and its locked report, report_values
        and respond functions."""
        import weakref
        if not issubclass(group_cls, GroupBase):   # group_of() makes them with its tp_new
            raise TypeError("group_cls must be a subclass of GroupBase")
        self.queue_ref = weakref.ref(queue)
        self.group_cls = group_cls
        self.fault_cls = fault_cls
        self.slow_report = slow_report
        self.slow_values = slow_values
        self.slow_respond = slow_respond

    cdef object bound_queue(self):
        cdef object q = <object>PyWeakref_GetObject(self.queue_ref)
        if q is None:
            raise RuntimeError("the queue of this grouper is gone")
        return q

    cdef object group_of(self, object raw):
        """The Group of a group just completed (raw: its records), or None."""
        if raw is None:
            return None
        # The class's tp_new itself: GroupBase.__new__(cls) went through a
        # method lookup and tp_new_wrapper (a fifth of a report's time).
        cdef GroupBase g = <GroupBase>(<PyTypeObject*>self.group_cls).tp_new(
            self.group_cls, <PyObject*>_NO_ARGS, NULL)
        g._queue = self.bound_queue()
        g.cookie = self.last_cookie
        g._raw = raw
        g.core = self
        return g

    def fast_report(self, fault):
        """Queue.report, bound to the queue (see bind)."""
        # Only an exact iopf.Fault (its fields checked when it was made, and
        # again here); anything else goes to Queue.report, which refuses it.
        if self.fast and fault.__class__ is self.fault_cls:
            done = self.report_tuple(fault)
            if done is not False:
                return self.group_of(done)
        return self.slow_report(self.bound_queue(), fault)

    def fast_report_values(self, dev, pasid, grpid, flags, addr, *, perm=1, time=0):
        """Queue.report_values, bound to the queue (see bind); report_values_entry()
        is the same with a faster argument parser."""
        return self.values_call(dev, pasid, grpid, flags, addr, perm, time)

    def report_values_entry(self):
        """fast_report_values as a function that parses its own arguments (the
        queue's report_values)."""
        return iopf_values_method(self)

    cdef object values_call(self, dev, pasid, grpid, flags, addr, perm, time):
        if self.fast:
            done = self.report_fields(time, dev, pasid, grpid, flags, perm, addr, 0, 0)
            if done is not False:
                return self.group_of(done)
        return self.slow_values(self.bound_queue(), dev, pasid, grpid, flags, addr, perm=perm, time=time)

    def fast_respond(self, group, code, *, time=None, at=None):
        """Queue.respond, bound to the queue (see bind): a Group of this queue
        (exactly the bound class) or an int cookie, and a code 0..2 (never a
        bool), answered now in C; anything else goes to the queue's method."""
        cdef int overflow = 0
        cdef long c = -1
        cdef unsigned long long k = 0
        if self.fast and at is None:
            if type(group) is self.group_cls:
                if (<GroupBase>group)._queue is self.bound_queue():
                    k = (<GroupBase>group).cookie
            else:
                k = iopf_cookie(<PyObject*>group)   # 0: not an int in 1..2**64-1
            if PyLong_Check(code) and not PyBool_Check(code):
                c = PyLong_AsLongAndOverflow(code, &overflow)
            if k and 0 <= c <= 2 and not overflow and not self.held_elsewhere():
                return self.respond_call(k, <uint32_t>c, R_CALLER, time)
        return self.slow_respond(self.bound_queue(), group, code, time=time, at=at)

    def run(self, arr, Py_ssize_t start=0):
        """Report arr[start:] without the GIL; stop after a group that has a
        handler to call. Returns the index to resume from.

        Each record is copied, checked and applied in one step: a record
        changed after check() (by a handler, by another thread) is checked
        again, never trusted. A refused record raises ValueError naming it;
        any failure leaves the records before it applied and the rest not,
        and ``position`` is its index.
        """
        cdef Py_ssize_t n, i, bad = -1
        cdef const FaultRec* recs = self._records(arr, &n)
        cdef FaultRec rec
        cdef int res
        if not 0 <= start <= n:
            raise IndexError(f"start {start} is outside the array (0..{n})")
        i = start
        self.enter()
        self.position = start
        try:
            self.refill()
            # One allocation for the worst case (every fault in a group) instead of
            # doubling and copying as the output grows.
            buf_reserve(&self.out_faults, (n - start) * sizeof(FaultRec))
            with nogil:
                while i < n:
                    rec_copy(&rec, &recs[i])
                    if self.bad_rec(&rec):
                        bad = i
                        break
                    res = self.report_one(&rec, COLLECT_FREE)
                    i += 1
                    if res == R_DISPATCH:
                        break
        finally:
            self.position = i     # the record that failed, or where to resume
            self.leave()
        if bad >= 0:
            self.refuse(bad, &rec)
        return i

    def take_groups(self):
        """(faults, offsets, cookies) of the groups collected by run(); resets them.

        A large output is handed to numpy as it is, not copied, and its
        memory is reused once the arrays are gone (see _Block). While some of
        its groups are pending, the grouper keeps the faults array: their
        faults are there, not in nodes (see Segs); it is read-only.
        """
        cdef Buf first
        cdef bint keep
        cdef uint32_t i
        first.data = NULL
        first.len = first.cap = 0
        self.enter()
        try:
            # Everything that can fail comes before any buffer is emptied (the
            # three arrays, the room for the next batch's first offset): a
            # MemoryError leaves the groups to take again.
            buf_reserve(&first, sizeof(int64_t))
            faults, fblk = buf_out(&self.out_faults, FAULT_DTYPE, self.spare, OUT_FAULTS)
            cookies, cblk = buf_out(&self.out_cookies, U64, self.spare, OUT_COOKIES)
            offsets, oblk = buf_out(&self.out_offsets, I64, self.spare, OUT_OFFSETS)
            keep = self.segs.seg[self.segs.cur].pending != 0
            if keep:
                self.seg_room()
            buf_commit(&self.out_faults, fblk, self.spare, OUT_FAULTS)
            buf_commit(&self.out_cookies, cblk, self.spare, OUT_COOKIES)
            buf_commit(&self.out_offsets, oblk, self.spare, OUT_OFFSETS)
            if self.out_offsets.cap < sizeof(int64_t):
                PyMem_RawFree(self.out_offsets.data)
                self.out_offsets = first
                first.data = NULL
            (<int64_t*>self.out_offsets.data)[0] = 0
            self.out_offsets.len = sizeof(int64_t)
            # Read-only: it is the record group_faults reads a pending group
            # back from (writing it in place would change that silently).
            cnp.PyArray_CLEARFLAGS(<cnp.ndarray>faults, cnp.NPY_ARRAY_WRITEABLE)
            if keep:
                i = self.segs.cur
                self.seg_arrays[i] = faults
                self.segs.seg[i].faults = <uint64_t>cnp.PyArray_DIM(<cnp.ndarray>faults, 0)
                segs_next(&self.segs)
                segs_thin(&self.segs, i)    # most of its groups answered already: thinned as the call ends
        finally:
            PyMem_RawFree(first.data)
            self.leave()
        return faults, offsets, cookies

    def respond(self, uint64_t cookie, uint32_t code, uint32_t reason=R_CALLER, time=None, at=None):
        """Answer a pending group (or, with `at`, schedule its answer); False (and
        counted stale) if it is not pending (None, without doing anything, while
        another thread holds the queue)."""
        check_code_reason(code, reason)
        if self.held_elsewhere():
            return None
        cdef uint64_t t
        if at is not None:
            self._time(time)        # checked, as an answer now checks it; the clock stays
            t = at
            self.enter()
            try:
                return self.schedule(cookie, code, reason, t) == 1
            finally:
                self.leave()
        return self.respond_call(cookie, code, reason, time)

    def respond_batch(self, cookies, codes, uint32_t reason=R_CALLER, time=None, at=None):
        """Answer many groups, in order; a bool array of which were sent.
        Everything is checked first: a bad argument answers nothing."""
        kv_a, cv_a = check_answers(cookies, codes)
        check_code_reason(0, reason)
        cdef const uint64_t[::1] kv = np.ascontiguousarray(kv_a, dtype=np.uint64)
        cdef const uint32_t[::1] cv = np.ascontiguousarray(cv_a, dtype=np.uint32)
        cdef Py_ssize_t i, n = kv.shape[0]
        sent = np.zeros(n, dtype=np.bool_)
        cdef uint8_t[::1] sv = sent.view(np.uint8)
        cdef const uint64_t[::1] av
        cdef uint64_t t = self._time(time)     # checked even with `at` (the clock stays then)
        if at is not None:
            av = np.ascontiguousarray(np.broadcast_to(np.asarray(at, dtype=np.uint64), (n,)))
            self.enter()
            try:
                heap_reserve(&self.heap, n)     # every answer's room first: all or nothing
                with nogil:
                    for i in range(n):
                        sv[i] = <uint8_t>self.schedule(kv[i], cv[i], reason, av[i])
            finally:
                self.leave()
            return sent
        self.enter()
        try:
            self.refill()
            self.reserve(0, 0, n, 0)
            with nogil:
                for i in range(n):
                    sv[i] = <uint8_t>self.respond_cookie(kv[i], cv[i], reason, t)
            self.clock_to(t)
        finally:
            self.leave()
        return sent

    def advance(self, uint64_t now):
        """Send every scheduled answer and timeout due at or before `now`, in time order."""
        self.advance_call(now, False)

    cdef int advance_call(self, uint64_t now, bint timeouts_only) except -1:
        """advance_to for a caller: the grouper taken, the GIL released."""
        self.enter()
        try:
            with nogil:
                self.advance_to(now, timeouts_only)
        finally:
            self.leave()
        return 0

    def next_deadline(self):
        """The earliest scheduled answer or timeout, or None."""
        self.enter()
        try:
            heap_clean(&self.heap, &self.cookies)
            return self.heap.items[0].time if self.heap.len else None
        finally:
            self.leave()

    def set_service(self, uint32_t servers, uint32_t kind, double a, double b, samples,
                    uint64_t seed, uint32_t code):
        """Install the service model (resets its workers and generator)."""
        cdef uint64_t* free = NULL
        cdef uint64_t* smp = NULL
        cdef const uint64_t[::1] sv = np.ascontiguousarray(
            samples if samples is not None else np.zeros(0), dtype=np.uint64)
        if kind > SV_SAMPLES or (kind == SV_SAMPLES and sv.shape[0] == 0):
            raise ValueError("bad service model")
        self.enter()
        try:
            if servers:
                free = <uint64_t*>PyMem_RawMalloc(servers * sizeof(uint64_t))
                if free == NULL:
                    raise MemoryError()
                memset(free, 0, servers * sizeof(uint64_t))
            if sv.shape[0]:
                smp = <uint64_t*>PyMem_RawMalloc(sv.shape[0] * sizeof(uint64_t))
                if smp == NULL:
                    PyMem_RawFree(free)
                    raise MemoryError()
                memcpy(smp, &sv[0], sv.shape[0] * sizeof(uint64_t))
            sv_clear(&self.sv)
            self.sv.servers = servers
            self.sv.kind = kind
            self.sv.a = a
            self.sv.b = b
            self.sv.free = free
            self.sv.samples = smp
            self.sv.nsamples = <uint32_t>sv.shape[0]
            self.sv.rng = seed
            self.sv.code = code
            self.has_service = True
        finally:
            self.leave()

    def serve(self, uint64_t cookie, uint64_t arrival, duration=None, code=None):
        """Hand a pending group to the service model at `arrival`; False if not pending."""
        if not self.has_service:
            raise ValueError("no service model")
        cdef uint64_t d = 0 if duration is None else duration
        cdef uint32_t c = self.sv.code if code is None else code
        self.enter()
        try:
            return self.serve_cookie(cookie, arrival, duration is not None, d, c) == 1
        finally:
            self.leave()

    def service_stats(self):
        """Groups given to the workers, ns of service, ns waited for a worker (total,
        max), answers that came too late (stale), most groups waiting at once."""
        return {"servers": self.sv.servers, "served": self.sv.served, "busy_ns": self.sv.busy,
                "wait_ns": self.sv.wait, "max_wait_ns": self.sv.max_wait,
                "stale": self.sv.stale, "max_backlog": self.sv.max_backlog}

    def service_at(self, uint64_t now):
        """(busy workers, groups waiting for one) at time `now` (not before the last arrival)."""
        cdef uint32_t i, busy = 0
        cdef size_t j, waiting = 0
        self.enter()
        try:
            for i in range(self.sv.servers):
                busy += self.sv.free[i] > now
            for j in range(self.sv.fifo_head, self.sv.fifo_head + self.sv.fifo_len):
                waiting += self.sv.fifo[j] > now
        finally:
            self.leave()
        return busy, waiting

    def set_timeout_quantum(self, uint64_t quantum):
        """Round the deadlines of groups formed from now on up to multiples of
        `quantum` ns (a periodic scan, as a kernel timer would); 0: exact."""
        self.enter()
        self.tmo_quantum = quantum
        self.leave()

    def flush_pasid(self, uint32_t dev, uint32_t kpasid, uint32_t code=C_INVALID, time=None):
        """Drop the partials of (dev, kpasid) and answer its pending groups."""
        check_code_reason(code, R_FLUSHED)
        self.check_kpasid(kpasid)
        cdef uint64_t t = self._time(time)
        self.enter()
        try:
            self.reserve(0, 0, self.chain_len(dev, kpasid), 0)
            self.clock_to(t)
            self.drop_where(2, dev, kpasid, &self.c.flushed)
            self.answer_chain(dev, kpasid, False, 0, code, R_FLUSHED, t)
        finally:
            self.leave()

    def discard_partial(self):
        """Drop every partial, no responses."""
        self.enter()
        try:
            self.drop_where(0, 0, 0, &self.c.discarded)
        finally:
            self.leave()

    def remove_device(self, uint32_t dev, time=None):
        """Drop dev's partials, answer its pending groups INVALID, newest first."""
        cdef uint64_t t = self._time(time)
        self.enter()
        try:
            self.remove_device_(dev, t)
        finally:
            self.leave()

    cdef int remove_device_(self, uint32_t dev, uint64_t t) except -1:
        cdef uint32_t i
        cdef int64_t e
        found = []
        for i in range(self.cookies.cap):
            if self.cookies.slots[i].cookie and self.pends.items[self.cookies.slots[i].idx].dev == dev:
                found.append(self.cookies.slots[i].cookie)
        # Newest first, as iopf_queue_remove_device walks fault_param->faults,
        # where iopf_group_alloc adds each group at the head.
        found.sort(reverse=True)
        self.reserve(0, 0, len(found), 0)     # before any change: all or nothing
        self.clock_to(t)
        self.drop_where(1, dev, 0, &self.c.removed)
        for cookie in found:
            self.respond_cookie(cookie, C_INVALID, R_REMOVED, t)
        e = self.entry_find(dev, KEY_DEVICE)
        if e >= 0:
            if self.entries[e].limit:        # n_limited counts only limited entries
                self.n_limited -= 1
                self.plain_update()
            self.entry_delete(<uint32_t>e)
        return 0

    def expire(self, uint64_t now):
        """Answer every pending group formed at or before now - response_timeout
        (advance for the timeouts alone)."""
        self.advance_call(now, True)

    def take_responses(self, bint group_times=False):
        """The responses sent since the last call, as a RESPONSE_DTYPE array (and,
        with group_times, the time each one's group formed, as uint64)."""
        cdef Py_ssize_t n
        cdef cnp.ndarray gt = None
        self.enter()
        try:
            n = self.outbox.len // sizeof(RespRec)
            if group_times:
                gt = np.empty(n, dtype=np.uint64)
                if n:
                    memcpy(cnp.PyArray_DATA(gt), self.outbox_gtime.data, self.outbox_gtime.len)
            out = buf_take(&self.outbox, RESPONSE_DTYPE, self.spare, OUT_BOX)
            buf_clear(&self.outbox_gtime)     # only once the responses are taken
        finally:
            self.leave()
        return (out, gt) if group_times else out

    @property
    def has_responses(self):
        return self.outbox.len != 0

    @property
    def partial_count(self):
        return self.c.partial_now

    def pending_cookies(self):
        """Cookies of the pending groups, ascending."""
        cdef uint64_t[::1] v
        cdef uint32_t i, k = 0
        self.enter()
        try:
            out = np.empty(self.c.pending_now, dtype=np.uint64)
            v = out
            for i in range(self.cookies.cap):
                if self.cookies.slots[i].cookie:
                    v[k] = self.cookies.slots[i].cookie
                    k += 1
            if k:
                qsort(&v[0], k, sizeof(uint64_t), cmp_u64)
        finally:
            self.leave()
        return out

    def group_faults(self, uint64_t cookie):
        """The faults of a pending group (FAULT_DTYPE, LPIG last), or None."""
        cdef int64_t ci
        cdef Pend* g
        cdef cnp.ndarray out
        cdef FaultRec* f
        cdef const FaultRec* src
        cdef uint32_t n
        cdef size_t end
        self.enter()
        try:
            ci = cookie_find(&self.cookies, cookie)
            if ci < 0:
                return None
            g = &self.pends.items[self.cookies.slots[ci].idx]
            out = np.empty(g.nfaults, dtype=FAULT_DTYPE)
            g = &self.pends.items[self.cookies.slots[ci].idx]
            f = <FaultRec*>cnp.PyArray_DATA(out)
            if g.head == NIL:       # copied out by run(): its faults are in that output
                src = self.seg_faults(g.tail, &end)
                if <size_t>g.at + g.nfaults > end:
                    raise SystemError(f"group {cookie}: faults {g.at}+{g.nfaults} past its output ({end})")
                memcpy(f, src + g.at, g.nfaults * sizeof(FaultRec))
                return out
            n = g.head
            while n != NIL:
                self.node_to_rec(self.N(n), g.dev, f)
                f += 1
                n = self.N(n).next
            return out
        finally:
            self.leave()

    def stats(self):
        """The conservation counters, as a dict."""
        cdef Counters* c = &self.c
        return dict(zip(COUNTERS, (
            c.faults_reported, c.partial_now, c.grouped, c.stop_markers, c.rejected,
            c.overflowed, c.discarded, c.flushed, c.removed, c.groups, c.answered,
            c.pending_now, c.stale_responses)))

    def sizeof(self):
        """Bytes of C memory this grouper holds (all of it visible to tracemalloc,
        in TRACE_DOMAIN; output arrays still alive hold theirs besides)."""
        return (sizeof(Spare) + self.nodes.cap * sizeof(Node) + self.pends.cap * sizeof(Pend)
                + self.entry_cap * sizeof(Entry) + self.etab.cap * sizeof(IdxSlot)
                + self.cookies.cap * sizeof(CookieSlot)
                + self.heap.cap * sizeof(HeapItem) + self.out_faults.cap + self.out_offsets.cap
                + self.out_cookies.cap + self.outbox.cap + self.outbox_gtime.cap
                + (self.sv.servers + self.sv.nsamples + self.sv.fifo_cap) * sizeof(uint64_t)
                + pool_sizeof(&self.parts) + self.chains.cap * sizeof(IdxSlot)
                + self.s_sizeof() + spare_bytes(self.spare) + segs_sizeof(&self.segs))

    cdef const FaultRec* seg_faults(self, uint32_t i, size_t* n) except? NULL:
        """The faults of output number i (Segs) and, in *n, how many."""
        cdef cnp.ndarray a
        if i == self.segs.cur:
            n[0] = self.out_faults.len // sizeof(FaultRec)
            return <const FaultRec*>self.out_faults.data
        a = self.seg_arrays[i]
        if a is None:
            raise SystemError(f"output {i} holds pending faults but is gone")
        # The array is the caller's: it may have been reshaped (even to 0-d),
        # given another dtype or resized in place since. Its bytes from its
        # data pointer are what numpy keeps valid; its first dimension is not.
        n[0] = <size_t>cnp.PyArray_NBYTES(a) // sizeof(FaultRec)
        return <const FaultRec*>cnp.PyArray_DATA(a)

    def get_state(self):
        """Sizes of the internal tables, for inspection and tests; outputs_kept
        and faults_in_outputs: the batch outputs kept for pending groups, and
        those groups' faults (held there, not in nodes); thin_failures: thin
        outputs kept because their groups could not get nodes (MemoryError,
        which no call reports: the output stays until they are answered)."""
        self.enter()
        try:
            return {"nodes_used": self.nodes.used, "node_capacity": self.nodes.cap,
                    "parts_used": self.parts.used, "parts_empty": self.parts.empty,
                    "part_capacity": self.parts.cap,
                    "chains": self.chains.count,
                    "pend_capacity": self.pends.cap, "entries": self.entry_count,
                    "entry_capacity": self.entry_cap, "cookie_capacity": self.cookies.cap,
                    "heap": self.heap.len, "bytes": self.sizeof(),
                    "outputs_kept": sum(a is not None for a in self.seg_arrays),
                    "faults_in_outputs": self.faults_in_outputs(),
                    "thin_failures": self.thin_failures}
        finally:
            self.leave()

    cdef uint64_t faults_in_outputs(self) noexcept:
        """Faults of the pending groups kept in an output, not in nodes: the
        outputs' own counts (Segs), which _check_nodes checks against the groups."""
        cdef uint64_t k = 0
        cdef uint32_t i
        for i in range(self.segs.cap):
            k += self.segs.seg[i].kept
        return k

    cdef int64_t mark_list(self, uint32_t n, uint8_t* seen, uint32_t* last) noexcept:
        """_check_nodes: mark the nodes of the list from n in seen; their number
        (*last: the last one), or -1 at a node out of range or already marked
        (*last: that node)."""
        cdef int64_t k = 0
        last[0] = NIL
        while n != NIL:
            last[0] = n
            if n >= self.nodes.cap or seen[n]:
                return -1
            seen[n] = 1
            k += 1
            n = self.N(n).next
        return k

    def _check_nodes(self):
        """Debug: walk the node store and raise AssertionError at the first
        inconsistency. Every node is on exactly one list: the free list, a
        partial group's (a Part, found through its flush chain) or a pending
        group's (head..tail, nfaults nodes; respond_cookie frees it by its
        ends and count, see node_release_list); each list ends at its tail;
        the counts agree with nodes_used, partial_count and the pending
        faults. A group run() copied out holds no node: its faults are in an
        output that the grouper keeps (Segs), and the outputs' counts of such
        groups agree. Returns the number of free nodes. For tests: O(capacity)."""
        cdef uint8_t* seen
        cdef uint32_t i, n, last, p, parts = 0, empty = 0
        cdef int64_t k
        cdef IdxTable* t
        cdef const Part* x
        cdef uint64_t free = 0, held = 0, pending = 0, in_outputs = 0
        cdef const Pend* g
        cdef cnp.ndarray marks
        cdef size_t end
        cdef uint32_t[::1] seg_groups
        cdef uint64_t[::1] seg_faults
        msg = None
        self.enter()
        try:
            seg_groups = np.zeros(self.segs.cap, dtype=np.uint32)     # (the table's size inside the flag)
            seg_faults = np.zeros(self.segs.cap, dtype=np.uint64)
            marks = np.zeros(self.nodes.cap + 1, dtype=np.uint8)
            seen = <uint8_t*>cnp.PyArray_DATA(marks)
            n = self.nodes.free
            while n != NIL and msg is None:
                if n >= self.nodes.cap or seen[n]:
                    msg = f"free list: node {n} out of range or seen twice"
                else:
                    seen[n] = 1
                    free += 1
                    n = self.N(n).next
            for i in range(self.chains.cap):
                p = self.chains.slots[i].idx
                while p != NIL and msg is None:
                    parts += 1
                    k = self.mark_list(P(&self.parts, p).head, seen, &last)
                    if k < 0:
                        msg = f"Part {p}: node {last} out of range or on two lists"
                    elif k == 0 and (self.per_device or P(&self.parts, p).tail != NIL):
                        msg = f"Part {p}: empty (the list keeps none), tail {P(&self.parts, p).tail}"
                    elif k and last != P(&self.parts, p).tail:
                        msg = f"Part {p}: its tail {P(&self.parts, p).tail} is not its last node {last}"
                    else:
                        held += k
                        empty += k == 0
                    p = P(&self.parts, p).cnext
            for i in range(self.cookies.cap):
                if self.cookies.slots[i].cookie == 0 or msg is not None:
                    continue
                g = &self.pends.items[self.cookies.slots[i].idx]
                if g.head == NIL:   # its faults are in output g.tail, from g.at (Segs)
                    if g.tail >= self.segs.cap:
                        msg = f"group {g.cookie}: output {g.tail} out of range"
                        continue
                    seg_groups[g.tail] += 1
                    seg_faults[g.tail] += g.nfaults
                    if not self.segs.seg[g.tail].first <= g.cookie <= self.segs.seg[g.tail].last:
                        msg = (f"group {g.cookie}: outside the cookies {self.segs.seg[g.tail].first}.."
                               f"{self.segs.seg[g.tail].last} of its output {g.tail}")
                    self.seg_faults(g.tail, &end)
                    if <size_t>g.at + g.nfaults > end:
                        msg = f"group {g.cookie}: faults {g.at}+{g.nfaults} past its output ({end})"
                    in_outputs += g.nfaults
                    continue
                k = self.mark_list(g.head, seen, &last)
                if k < 0:
                    msg = f"group {g.cookie}: node {last} out of range or on two lists"
                elif last != g.tail or k != g.nfaults:
                    msg = (f"group {g.cookie}: {k} nodes ending at {last}, "
                           f"kept as {g.nfaults} ending at {g.tail}")
                else:
                    pending += k
            if msg is None and (self.segs.ndead or self.segs.nthin):     # every call sweeps as it ends
                msg = f"{self.segs.ndead} outputs without pending groups, {self.segs.nthin} thin, still kept"
            for i in range(self.segs.cap):
                if msg is None and (seg_groups[i] != self.segs.seg[i].pending
                                    or seg_faults[i] != self.segs.seg[i].kept):
                    msg = (f"output {i}: {seg_groups[i]} pending groups, {seg_faults[i]} faults in it, "
                           f"counted {self.segs.seg[i].pending} and {self.segs.seg[i].kept}")
                elif msg is None and seg_groups[i] == 0 and self.segs.seg[i].first:
                    msg = f"output {i}: no pending group, its cookies start at {self.segs.seg[i].first}"
                elif (msg is None and i != self.segs.cur and seg_groups[i] and not self.segs.seg[i].thin
                      and 4 * seg_faults[i] < self.segs.seg[i].faults):
                    msg = f"output {i}: keeps {seg_faults[i]} of its {self.segs.seg[i].faults} faults, not thinned"
                elif msg is None and i != self.segs.cur and (self.seg_arrays[i] is None) != (seg_groups[i] == 0):
                    msg = f"output {i}: kept {self.seg_arrays[i] is not None}, {seg_groups[i]} groups in it"
            unused = [i for i in range(self.segs.cap) if i != self.segs.cur and self.seg_arrays[i] is None]
            if msg is None and sorted([self.segs.free[i] for i in range(self.segs.nfree)]) != unused:
                msg = f"free output numbers {[self.segs.free[i] for i in range(self.segs.nfree)]}, unused {unused}"
            if msg is None and (parts != self.parts.used or empty != self.parts.empty):
                msg = (f"{parts} Parts on the flush chains, {empty} empty; "
                       f"{self.parts.used} used, {self.parts.empty} empty")
            if msg is None and self.hashed:
                # Every Part once in the hash table, where a search for its key finds it.
                t = &(<HashGrouper>self).table
                parts = 0
                for i in range(t.cap):
                    p = t.slots[i].idx
                    if p != NIL and msg is None:
                        parts += 1
                        if p >= self.parts.cap:
                            msg = f"slot {i} of the hash table: Part {p} out of range"
                            continue
                        x = P(&self.parts, p)
                        # A search for its key reaches slot i: no empty slot from
                        # its home to i. (Not part_find: a second caller of it
                        # here made the compiler stop inlining it in the LPIG's path.)
                        n = t.slots[i].hash & (t.cap - 1)
                        while n != i and t.slots[n].idx != NIL:
                            n = (n + 1) & (t.cap - 1)
                        if t.slots[i].hash != part_hash(x.dev, x.kp, x.grpid) or n != i:
                            msg = f"Part {p} in slot {i} of the hash table: not where its key leads"
                if msg is None and (parts != self.parts.used or parts != t.count):
                    msg = f"{parts} Parts in the hash table, counted {t.count}; {self.parts.used} used"
            if msg is None and (held != self.c.partial_now or pending + in_outputs != self.pending_faults):
                msg = (f"{held} partials, {pending} pending faults on lists and {in_outputs} in "
                       f"outputs, counted {self.c.partial_now} and {self.pending_faults}")
            if msg is None and (free + held + pending != self.nodes.cap
                                or held + pending != self.nodes.used):
                msg = (f"{free} free, {held + pending} held of {self.nodes.cap} nodes, "
                       f"{self.nodes.used} used")
        finally:
            self.leave()
        if msg is not None:
            raise AssertionError(msg)
        return free

    def report_group(self, time, dev, pasid, grpid, flags, last_flags, perm, n, addr,
                     stride=4096):
        """Report the ``n`` requests of one group given by their fields, as
        run() reports their FAULT_DTYPE records, without the array; the
        cookie of the group the last request completed, or 0.

        Request i has ``time``, ``dev``, ``pasid``, ``grpid``, ``perm``,
        address ``addr + i * stride`` and private fields 0; the first n-1
        have ``flags``, the last ``last_flags``. Only the last may complete a
        group; if that group waits for a Python handler, ``dispatch`` is set
        (as after report()).

        Every request is checked before any is applied: a field that does
        not fit (as check() refuses it), an address past 64 bits, or a
        request before the last that would complete a group raises
        ValueError and nothing changes. The fields are copied into C first,
        so nothing the caller holds is read again. A failure while applying
        (MemoryError) leaves the requests before it applied and the rest
        not, and ``position`` is its index, as in run().
        """
        return report_group(self, time, dev, pasid, grpid, flags, last_flags, perm, n, addr, stride)

    def take_response_list(self):
        """take_responses() as a list of tuples (RESPONSE_DTYPE's fields, in
        order), without the array: for callers that use them one by one."""
        return take_response_list(self)


include "queue_support.pxi"
include "group_entry.pxi"

# The strategies: where partials wait for their LPIG.
include "hash.pxi"
include "list.pxi"
include "tree.pxi"
