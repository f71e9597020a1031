# cython: language_level=3
"""C-level declarations of the grouping core, for Cython code that cimports it.

    from iopf_core.grouper cimport Grouper, FaultRec
    cdef Grouper g = queue.core
    if g.report_rec(&rec, False) == REPORT_REFUSED:   # no Python overhead per fault
        ...

``report_rec`` is the checked entry for C callers: it validates the record
against the policy, copies it before use, and returns a ``ReportResult``
(or -1 with an exception set: MemoryError, or RuntimeError when another
thread is inside the same grouper).
The other cdef methods are internals: they trust their arguments.

A Grouper owns all its memory; every index below is into one of its pools.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

cdef enum:
    NIL = 0xFFFFFFFF          # no node / no record
    KEY_NO_PASID = 0xFFFFFFFF # key PASID of a request without PASID_VALID
    KEY_ANY = 0xFFFFFFFE      # key PASID when match_pasid is False
    KEY_DEVICE = 0xFFFFFFFD   # Entry of a device (its limit and outstanding count)
    KEY_EMPTY = 0xFFFFFFFC    # free slot of a table
    KEY_LIST = 0xFFFFFFFB     # ListGrouper: a device's single partial list
    KEY_CHAIN = 0xFFFFFFFA    # third hash word of a flush chain's key (dev, kp)
    RULED = 0x80000000        # Grouper.plain_mask: no request is a plain partial (no checked flags have it)
    ENTRY_HINT_BITS = 8       # Grouper.entry_hint: the entry found last for a (dev, PASID),
    ENTRY_HINTS = 1 << ENTRY_HINT_BITS   # in one of 256 slots by entry_hint_slot

# What report_rec did with one record (a C caller cannot call a Python handler:
# a group whose handler is a Python callable is left pending, REPORT_GROUPED).
cpdef enum ReportResult:
    REPORT_HELD = 0           # held as a partial, waiting for its LPIG
    REPORT_GROUPED = 1        # completed a group, now pending (cookie: last_cookie)
    REPORT_ANSWERED = 2       # completed a group that a constant handler answered at once
    REPORT_DROPPED = 3        # not held, no group: stop marker, overflow or no handler (any response is in the outbox)
    REPORT_REFUSED = 4        # a field does not fit the policy: nothing changed

# One record of FAULT_DTYPE (packed, 52 bytes): what batches are made of.
cdef packed struct FaultRec:
    uint64_t time
    uint32_t dev, pasid, grpid, flags, perm
    uint64_t addr
    uint64_t priv[2]

# One record of RESPONSE_DTYPE (packed, 44 bytes).
cdef packed struct RespRec:
    uint64_t time
    uint32_t dev, pasid, grpid, code, flags
    uint64_t cookie
    uint32_t nfaults, reason

# A held fault: a partial, or a member of a pending group. 44 bytes, packed:
# the fields of FaultRec but the device (every list a node is on belongs to
# one device, which the caller knows), the group id in 16 bits (the policy
# check keeps grpid_bits <= 16), flags and perm in one byte (4 bits each,
# both checked on entry: flags | perm << 4), and the link of its list (its
# partial group's, then its pending group's). What flush needs per
# (dev, PASID) is kept per partial group (Part), not per fault.
# Packing (a node starts 4-byte aligned) is what keeps a held fault under 64
# bytes with its share of the tables; x86 loads unaligned words at full speed.
cdef packed struct Node:
    uint64_t time, addr, priv0, priv1
    uint32_t pasid
    uint32_t next
    uint16_t grpid
    uint8_t flags, pad

# A partial group: the faults held under one key of the strategy (hash,
# tree: (dev, key PASID, grpid); list: (dev, KEY_LIST, KEY_LIST), the
# device's one list), in arrival order, and its place on the flush chain of
# (dev, kp): every Part with that dev and kp, so that a flush visits only
# them. 28 bytes, in one growable array (indexes stay valid).
ctypedef struct Part:
    uint32_t head, tail       # its faults (Node.next)
    uint32_t dev, kp, grpid   # its key
    uint32_t cnext, cprev     # the flush chain of (dev, kp)

ctypedef struct PartPool:
    Part* parts               # one array (see pool_grow), cap a multiple of CHUNK
    uint32_t cap, free, used
    uint32_t recent           # the Part that took the last partial (NIL: none), see take_partial
    uint32_t empty            # Parts with no fault, kept for their keys (hash, tree: parts_sweep)

# The held faults (nodes.pxi): one array of Nodes, the free ones on a list
# through Node.next; used counts the others.
ctypedef struct NodeStore:
    Node* items
    uint32_t cap, free, used

# An open-addressed table of record indexes (linear probing, backward-shift
# delete, load at most 3/4): 8 bytes a slot, the records themselves dense in
# their pool. The one table of the core for records: partial groups (hash
# strategy), flush chains and (dev, PASID) entries; the cookies keep their
# own Robin Hood table (docs/performance.md says why). The slot keeps its key's hash, so that a probe reads the record
# only on a hash match and a resize never reads records.
ctypedef struct IdxSlot:
    uint32_t hash
    uint32_t idx              # NIL: empty

ctypedef struct IdxTable:
    IdxSlot* slots
    uint32_t cap, count

# Per (dev, key PASID): its pending groups and its attachment. Per device (pasid == KEY_DEVICE): the PRI allocation.
ctypedef struct Entry:
    uint64_t handle           # 64 bits: never wraps back to 0 ("no handler")
    uint32_t dev, pasid
    uint32_t qhead, qtail
    uint32_t auto_code        # 1 + code of a constant handler, 0 for a Python one
    uint32_t limit, outstanding

# A node of TreeGrouper's AVL tree: the key and links of the Part of the
# same index (the key copied: a step down reads one node).
ctypedef struct TNode:
    uint32_t dev, kp, grpid
    uint32_t left, right
    int32_t height

ctypedef struct Pend:
    uint64_t cookie, time
    uint64_t handle
    uint32_t dev, nfaults
    uint32_t entry            # its (dev, key PASID) entry, which lives while a group is chained on it
    # Its faults: nodes head..tail (LPIG last), or, for a group run() copied
    # out, no node (head NIL): faults at..at+nfaults of batch output tail (Segs)
    uint32_t head, tail, at
    uint32_t qnext, qprev
    uint32_t pasid            # its LPIG's PASID, group id and flags, for its response
    uint16_t grpid
    uint8_t flags

# The pending groups (nodes.pxi): one array of Pends, the free ones on a list
# through Pend.qnext.
ctypedef struct PendPool:
    Pend* items
    uint32_t cap, free

ctypedef struct CookieSlot:
    uint64_t cookie
    uint32_t idx

# The cookies of the pending groups (cookies.pxi): Robin Hood on the cookie
# itself as home slot, load at most 1/2; cookie 0 marks a free slot.
ctypedef struct CookieTable:
    CookieSlot* slots
    uint32_t cap

# One entry of the time heap: a group's timeout (reason TIMEOUT) or a
# scheduled answer. Ordered on (time, seq): ties go in scheduling order.
ctypedef struct HeapItem:
    uint64_t time, seq, cookie
    uint32_t code, reason

# The time heap (heap.pxi): a binary min-heap of HeapItems; seq numbers the
# items pushed, answers counts the scheduled answers in it (the rest are timeouts).
ctypedef struct TimeHeap:
    HeapItem* items
    uint32_t len, cap
    uint64_t seq, answers

# The service model (service.pxi; the kernel's workqueue): `servers` workers
# (0: one per group), each group served FIFO for a duration drawn per group.
ctypedef struct Service:
    uint32_t servers, kind, code, nsamples
    double a, b
    uint64_t rng
    uint64_t* free            # min-heap of the workers' free times
    uint64_t* samples
    uint64_t served, busy, wait, max_wait, stale, max_backlog
    uint64_t* fifo            # start times of the groups waiting for a worker
    size_t fifo_head, fifo_len, fifo_cap

ctypedef struct Counters:
    uint64_t faults_reported, partial_now, grouped, stop_markers, rejected
    uint64_t overflowed, discarded, flushed, removed, groups, answered
    uint64_t pending_now, stale_responses

ctypedef struct Rules:
    bint match_pasid, stall, stop_markers, priv_data_is_last, require_handler
    bint discard_on_overflow, flush_partial_on_detach, has_timeout, has_depth
    uint32_t pasid_bits, grpid_bits
    uint32_t bad_pasid, bad_grpid   # the bits above them (bad_rec: one test a record)
    uint32_t no_handler_code, handler_error_code, timeout_code, overflow_code
    uint64_t timeout, depth
    bint require_device, attach_adds_device
    uint32_t last_flags       # the flags that make a request its group's last (not under stall)
    uint32_t no_pasid         # PASID that means no PASID (Linux 0); KEY_NO_PASID: none

# The batch outputs that hold faults of pending groups (buffers.pxi): run()
# frees a group's nodes once it has copied the group out, so that the nodes
# go back to work while they are still in cache; the group's faults then
# stay in the output, which the grouper keeps (Grouper.seg_arrays) until its
# last such group is answered. Output number cur is the one being filled.
# A taken output that keeps under a quarter of its faults gives its pending
# groups nodes again (thin, see Grouper.seg_sweep) and goes: an output kept
# is never more than 4x the faults it keeps (plus the output being filled).
ctypedef struct Seg:
    uint64_t first, last      # the cookies of the first and last group kept in it (first 0: none pending)
    uint64_t faults           # the faults it holds, once taken (0 while it is being filled)
    uint64_t kept             # the faults of its pending groups
    uint32_t pending          # its pending groups (without nodes)
    bint thin                 # on the thin stack, or done with it

ctypedef struct Segs:
    Seg* seg                  # per output number
    uint32_t* dead            # outputs whose last such group went since the last sweep
    uint32_t* thin            # taken outputs that keep under a quarter of their faults
    uint32_t* free            # output numbers not in use
    uint32_t cap, cur, ndead, nthin, nfree

ctypedef struct Buf:           # a growable byte buffer
    char* data
    size_t len, cap

# Output memory handed to numpy comes back here when its arrays are gone, to
# be the next batch's buffer: one block per output buffer (faults, offsets,
# cookies, outbox). Shared by a grouper and the blocks it lent out (refs).
ctypedef struct Spare:
    int refs
    bint closed               # the grouper is gone: returned memory is freed
    char* data[4]
    size_t cap[4]


cdef class Grouper:
    cdef Rules rules
    cdef readonly object policy
    cdef bint inited
    cdef int busy             # one call at a time: taken atomically, see enter()
    cdef Counters c
    cdef readonly uint64_t now
    cdef readonly uint64_t last_cookie
    cdef bint default_handler
    cdef uint32_t default_auto
    cdef readonly bint dispatch
    # The thread (its ident) inside an iopf.Queue call on this grouper, 0 if
    # none: the Queue's lock-free per-call entries step aside while another
    # thread holds the queue (the core's busy flag would only refuse them).
    cdef public unsigned long owner
    # Set by iopf.Queue (see Grouper.bind): fast_report may run without the
    # queue's lock (no Python handler, no on_response), and what it needs to
    # make a Group or fall back to the queue's locked path.
    cdef public bint fast
    cdef object queue_ref, fault_cls, slow_report, slow_values, slow_respond
    cdef type group_cls       # typed: GroupBase.__new__(group_cls) is then a direct tp_new call
    cdef readonly uint8_t last_kind   # what the last request reported was (rec_kind)
    # pools: nodes in one array (see node_grow)
    cdef NodeStore nodes
    # partial groups, and their flush chains: (dev, kp) -> the newest Part
    cdef PartPool parts
    cdef IdxTable chains
    cdef bint per_device      # ListGrouper: a Part is a device's whole list
    cdef bint hashed          # HashGrouper: report_one searches its table inline (no method call)
    cdef PendPool pends
    # tables
    # (dev, PASID) entries: records in one array (indices stable while an entry
    # lives; free ones on a list through qhead) and the index table of them
    cdef Entry* entries
    cdef uint32_t entry_cap, entry_used, entry_free, entry_count, n_limited
    cdef uint32_t entry_hint[ENTRY_HINTS]   # the entry entry_find found last, by entry_hint_slot (a hint: its key is checked)
    cdef IdxTable etab
    cdef CookieTable cookies
    cdef TimeHeap heap
    cdef uint64_t tmo_quantum
    cdef bint has_service
    cdef bint advances_on_report   # the auto_advance property: each request first advances time
    cdef uint32_t plain_mask  # a request is a plain partial when (flags | RULED) & plain_mask is 0 (plain_update)
    cdef Service sv
    cdef Buf outbox_gtime      # per response: the time its group formed
    cdef uint64_t pending_faults, next_cookie
    cdef uint64_t next_handle
    cdef readonly Py_ssize_t position   # run(): index of the record a failure stopped at
    # batch output and outbox
    cdef Buf out_faults, out_offsets, out_cookies, outbox
    cdef Spare* spare
    cdef Segs segs
    cdef list seg_arrays      # per output number: the faults array taken, or None
    cdef uint64_t thin_failures   # thin outputs kept for want of nodes (get_state, tests)
    cdef uint32_t sweep_ratio     # parts_sweep when empty Parts are over 1/sweep_ratio of the pool (4)
    cdef int refill(self) except -1
    cdef void seg_sweep(self) noexcept nogil
    cdef int seg_room(self) except -1
    cdef int seg_to_nodes(self, uint32_t i) except -1
    cdef const FaultRec* seg_faults(self, uint32_t i, size_t* n) except? NULL
    cdef uint64_t faults_in_outputs(self) noexcept

    # internals (see grouper.pyx). A method is C-inline only when its line
    # here says `inline`: `cdef inline` in grouper.pyx alone makes a plain
    # static function, called directly, which gcc inlines or not by size.
    # Inline here where it was measured to pay (benchmarks/RESULTS.md,
    # "Inline where the declaration says so"): the entry's lookup, at every
    # LPIG, and writing a response, at every answer. The partial's hold,
    # the copy out and the answer itself gained the batch nothing and
    # slowed the per-call path (its larger callers), so they stay calls.
    cdef Node* N(self, uint32_t i) noexcept nogil
    cdef uint32_t list_len(self, uint32_t n) noexcept nogil
    cdef int64_t mark_list(self, uint32_t n, uint8_t* seen, uint32_t* last) noexcept
    cdef uint32_t node_kpasid(self, const Node* n) noexcept nogil
    cdef uint32_t node_key(self, const Node* n) noexcept nogil
    cdef uint32_t gkey(self, uint32_t grpid) noexcept nogil
    cdef uint32_t skey(self, uint32_t kp) noexcept nogil
    cdef uint32_t part_new(self, uint32_t dev, uint32_t kp, uint32_t grpid, int64_t slot, uint32_t h) noexcept nogil
    cdef void part_drop(self, uint32_t p) noexcept nogil
    cdef void part_unlink(self, uint32_t p) noexcept nogil
    cdef int part_room(self) except -1 nogil
    cdef uint32_t part_take(self, uint32_t p, uint32_t kp, uint32_t grpid, uint32_t* tail) noexcept nogil
    cdef uint32_t part_free_nodes(self, uint32_t p, uint32_t kp, bint whole) noexcept nogil
    cdef uint32_t drop_chain(self, uint32_t pos) noexcept nogil
    cdef int enter(self) except -1 nogil
    cdef void leave(self) noexcept nogil
    cdef int reserve(self, uint32_t nodes, uint32_t groups, size_t sends, uint32_t out_faults) except -1 nogil
    cdef bint bad_kpasid(self, uint32_t kpasid) noexcept nogil
    cdef int check_kpasid(self, uint32_t kpasid) except -1
    cdef uint32_t chain_len(self, uint32_t dev, uint32_t kp) noexcept nogil
    cdef int entry_room(self, uint32_t more=*) except -1 nogil
    cdef int _entries_init(self, uint32_t cap) except -1
    cdef inline int64_t entry_find(self, uint32_t dev, uint32_t pasid) noexcept nogil
    cdef int64_t entry_search(self, uint32_t dev, uint32_t pasid, uint32_t slot) noexcept nogil
    cdef int64_t entry_get(self, uint32_t dev, uint32_t pasid) except -1 nogil
    cdef void entry_delete(self, uint32_t i) noexcept nogil
    cdef void entry_tidy(self, uint32_t dev, uint32_t pasid) noexcept nogil
    cdef void hold(self, uint32_t dev, int64_t n) noexcept nogil
    cdef int schedule(self, uint64_t cookie, uint32_t code, uint32_t reason, uint64_t at, bint pending=*) except -1 nogil
    cdef int advance_to(self, uint64_t now, bint timeouts_only) except -1 nogil
    cdef int advance_call(self, uint64_t now, bint timeouts_only) except -1
    cdef int serve_cookie(self, uint64_t cookie, uint64_t arrival, bint given, uint64_t duration, uint32_t code) except -1 nogil
    cdef inline int send(self, uint64_t time, uint32_t dev, uint32_t pasid, uint32_t grpid, uint32_t flags, uint32_t code, uint64_t cookie, uint32_t nfaults, uint32_t reason, uint64_t gtime) except -1 nogil
    cdef int answer_chain(self, uint32_t dev, uint32_t kp, bint by_handle, uint64_t handle, uint32_t code, uint32_t reason, uint64_t time) except -1 nogil
    cdef void node_to_rec(self, const Node* n, uint32_t dev, FaultRec* f) noexcept nogil
    cdef uint32_t collect(self, uint32_t head, const FaultRec* last, uint64_t cookie, uint32_t dev) noexcept nogil
    cdef bint bad_rec(self, const FaultRec* r) noexcept nogil
    cdef bint bad_bits(self, uint32_t pasid, uint32_t grpid, uint32_t flags_perm) noexcept nogil
    cdef int overflow(self, const FaultRec* r, bint last) except -1 nogil
    cdef int drop_where(self, int mode, uint32_t dev, uint32_t kp, uint64_t* counter) except -1 nogil
    cdef uint64_t _time(self, object time) except? 0
    cdef const FaultRec* _records(self, object arr, Py_ssize_t* n) except? NULL

    # the strategy: where partials wait for their LPIG
    cdef uint32_t s_find(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil
    cdef void s_insert(self, uint32_t p) noexcept nogil
    cdef void s_remove(self, uint32_t p) noexcept nogil
    cdef int s_reserve(self) except -1 nogil
    cdef size_t s_sizeof(self) noexcept nogil
    cdef uint32_t s_count(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil

    cdef uint8_t rec_kind(self, uint32_t flags, uint32_t perm) noexcept nogil
    cdef int report_rec(self, const FaultRec* r, bint collect) except -1 nogil
    cdef void count_in(self, const FaultRec* r, uint8_t kind) noexcept nogil
    cdef int report_one(self, const FaultRec* r, int collect) except -1 nogil
    cdef int report_ruled(self, const FaultRec* r, int collect) except -1 nogil
    cdef bint plain_partial(self, uint32_t flags) noexcept nogil
    cdef void plain_update(self) noexcept nogil
    cdef bint recent_has(self, uint32_t dev, uint32_t sk, uint32_t gk) noexcept nogil
    cdef bint hold_recent(self, const FaultRec* r, uint32_t sk, uint32_t gk) noexcept nogil
    cdef int take_partial(self, const FaultRec* r, uint32_t sk, uint32_t gk) except -1 nogil
    cdef uint32_t part_for(self, const FaultRec* r, uint32_t sk, uint32_t gk) except NIL nogil
    cdef uint32_t part_make(self, const FaultRec* r, uint32_t sk, uint32_t gk, uint32_t part,
                            int64_t slot, uint32_t h) except NIL nogil
    cdef void parts_sweep(self) noexcept nogil
    cdef bint sweep_for_room(self, const IdxTable* t) noexcept nogil
    cdef uint32_t out_room(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil
    cdef void hold_partial(self, uint32_t part, const FaultRec* r) noexcept nogil
    cdef bint detach_(self, uint32_t dev, uint32_t kpasid, uint64_t t) except -1
    cdef bint detach_one_(self, uint32_t dev, uint32_t kpasid, uint64_t t) except -1
    cdef int remove_device_(self, uint32_t dev, uint64_t t) except -1
    cdef int add_device_(self, uint32_t dev, uint32_t limit) except -1
    cdef int refuse(self, Py_ssize_t i, const FaultRec* r) except -1
    cdef void clock_to(self, uint64_t t) noexcept nogil
    cdef object report_call(self, FaultRec* r)
    cdef bint held_elsewhere(self) noexcept
    cdef object bound_queue(self)
    cdef object report_tuple(self, object fault)
    cdef object report_fields(self, time, dev, pasid, grpid, flags, perm, addr, priv0, priv1)
    cdef object values_call(self, dev, pasid, grpid, flags, addr, perm, time)
    cdef object group_of(self, object raw)
    cdef object respond_call(self, uint64_t cookie, uint32_t code, uint32_t reason, time)
    cdef int respond_cookie(self, uint64_t cookie, uint32_t code, uint32_t reason, uint64_t time) except -1 nogil


cdef class HashGrouper(Grouper):
    cdef IdxTable table


cdef class ListGrouper(Grouper):
    pass


cdef class TreeGrouper(Grouper):
    cdef TNode** tc           # chunks of CHUNK tree nodes, one for every CHUNK Parts
    cdef uint32_t tc_n, tc_cap, root
    cdef TNode* T(self, uint32_t i) noexcept nogil
    cdef uint32_t t_find(self, uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil
    cdef void t_fix(self, uint32_t i) noexcept nogil
    cdef uint32_t t_rotate_right(self, uint32_t y) noexcept nogil
    cdef uint32_t t_rotate_left(self, uint32_t x) noexcept nogil
    cdef uint32_t t_balance(self, uint32_t i) noexcept nogil
    cdef uint32_t t_insert(self, uint32_t root, uint32_t n) noexcept nogil
    cdef uint32_t t_remove_min(self, uint32_t i, uint32_t* out) noexcept nogil
    cdef uint32_t t_delete(self, uint32_t root, uint32_t dev, uint32_t kp, uint32_t grp, uint32_t* out) noexcept nogil


# The data of an iopf.Group (iopf.queue.Group adds its properties): the
# per-call path makes it in C, and answers through it in C.
cdef class GroupBase:
    cdef public object _queue, _faults, _raw
    cdef public uint64_t cookie   # in C: the per-call path makes and answers it without an int object
    cdef Grouper core     # the compiled core that made it, or None
