# QueueLock and GroupBase: what iopf.Queue and iopf.Group are built on.
# Part of grouper.pyx (included at module level).

cdef class QueueLock:
    """The lock of an iopf.Queue: re-entrant, and while held it records the
    holding thread in the queue's grouper (``owner``), which the per-call
    entries check before they run without the lock.

    In C because a Python class around an RLock cost 0.4 us a call, which a
    small batch (one group of a SimPy model) noticed.
    """
    cdef PyThread_type_lock lock
    cdef unsigned long holder
    cdef Py_ssize_t depth
    cdef object core          # a Grouper, or the twin (anything with .owner)

    def __cinit__(self, core):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        self.core = core

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)
            self.lock = NULL

    cdef int set_owner(self, unsigned long ident) except -1:
        if isinstance(self.core, Grouper):
            (<Grouper>self.core).owner = ident
        else:
            self.core.owner = ident
        return 0

    def acquire(self):
        cdef unsigned long me = PyThread_get_thread_ident()
        if self.depth and self.holder == me:
            self.depth += 1
            return True
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.holder = me
        self.depth = 1
        self.set_owner(me)
        return True

    def release(self):
        if self.depth == 0 or self.holder != PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self.depth -= 1
        if self.depth == 0:
            self.set_owner(0)
            self.holder = 0
            PyThread_release_lock(self.lock)

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


cdef class GroupBase:
    """The data of a completed group; ``iopf.Group`` adds what it offers.

    ``_faults`` (a FAULT_DTYPE array) or ``_raw`` (its records as bytes) hold
    the faults; ``respond`` answers in C when the queue allows it.
    """

    def __init__(self, queue, cookie, faults=None, raw=None):
        self._queue = queue
        self.cookie = int(cookie)
        self._faults = faults
        self._raw = raw

    def respond(self, code, *, time=None, at=None):
        """Answer the group (or schedule the answer for ``at``); False if it was
        answered already (one answer per group)."""
        cdef Grouper core = self.core
        # Queue.respond's lock-free path, without its Python frame.
        # The queue's code rule: an int 0..2 (a Response is one), never a bool.
        if (at is None and core is not None and core.fast and isinstance(code, int)
                and not isinstance(code, bool) and 0 <= code <= 2 and not core.held_elsewhere()):
            return core.respond_call(self.cookie, code, time)
        return self._queue.respond(self.cookie, code, time=time, at=at)
