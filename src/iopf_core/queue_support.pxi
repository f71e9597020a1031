# QueueLock and GroupBase: what iopf.Queue and iopf.Group are built on.
# Part of grouper.pyx (included at module level).

# Queue.report_values as a C function with its own argument parsing: five
# positional arguments, then perm= and time= found by identity in the call's
# keyword names (Python interns them). Cython's general parser cost a tenth
# of the call; anything else (other counts or names, errors) goes to
# Grouper.fast_report_values, which parses in full.
cdef extern from *:
    """
    static PyObject *iopf_kw_perm, *iopf_kw_time, *iopf_default_perm, *iopf_default_time;
    static PyObject *(*iopf_values_impl)(PyObject *, PyObject *, PyObject *, PyObject *,
                                         PyObject *, PyObject *, PyObject *, PyObject *);
    static PyObject *iopf_values_vectorcall(PyObject *self, PyObject *const *args,
                                            Py_ssize_t nargs, PyObject *kwnames) {
        Py_ssize_t i, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        PyObject *perm = NULL, *time = NULL, *general, *res;
        if (nargs != 5) goto general;
        for (i = 0; i < nkw; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (k == iopf_kw_perm && !perm) perm = args[5 + i];
            else if (k == iopf_kw_time && !time) time = args[5 + i];
            else goto general;
        }
        return iopf_values_impl(self, args[0], args[1], args[2], args[3], args[4],
                                perm ? perm : iopf_default_perm, time ? time : iopf_default_time);
    general:
        general = PyObject_GetAttrString(self, "fast_report_values");
        if (!general) return NULL;
        res = PyObject_Vectorcall(general, args, (size_t)nargs, kwnames);
        Py_DECREF(general);
        return res;
    }
    static PyMethodDef iopf_values_def = {
        "report_values", (PyCFunction)(void (*)(void))iopf_values_vectorcall,
        METH_FASTCALL | METH_KEYWORDS,
        "report_values(dev, pasid, grpid, flags, addr, *, perm=Perm.READ, time=0)"};
    static PyObject *iopf_values_method(PyObject *core) {
        return PyCFunction_NewEx(&iopf_values_def, core, NULL);
    }
    """
    ctypedef object (*values_fn)(object, object, object, object, object, object, object, object)
    PyObject* iopf_kw_perm
    PyObject* iopf_kw_time
    PyObject* iopf_default_perm
    PyObject* iopf_default_time
    values_fn iopf_values_impl
    object iopf_values_method(object core)

cdef extern from *:
    """
    /* An int (Flag and Perm are ints) but not a bool: Cython's conversion
       would take a float's int() and a bool's 0/1, which iopf.Fault refuses. */
    static inline int iopf_int_field(PyObject *v) {
        return PyLong_CheckExact(v) || (PyLong_Check(v) && !PyBool_Check(v));
    }
    """
    bint iopf_int_field(PyObject* v) noexcept

cdef extern from *:
    """
    /* A cookie for the lock-free respond: an int in 1..2**64-1, else 0 (the
       queue's method then says what is wrong with it). */
    static inline unsigned long long iopf_cookie(PyObject *k) {
        unsigned long long v;
        if (!PyLong_CheckExact(k)) return 0;
        v = PyLong_AsUnsignedLongLong(k);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
        return v;
    }
    """
    unsigned long long iopf_cookie(PyObject* k) noexcept


cdef inline bint ints9(PyObject* a, PyObject* b, PyObject* c, PyObject* d, PyObject* e,
                       PyObject* f, PyObject* g, PyObject* h, PyObject* i) noexcept:
    """The per-call fields (borrowed) are all ints (else check_ints says which is not)."""
    return (iopf_int_field(a) and iopf_int_field(b) and iopf_int_field(c) and iopf_int_field(d)
            and iopf_int_field(e) and iopf_int_field(f) and iopf_int_field(g)
            and iopf_int_field(h) and iopf_int_field(i))


cdef object _values_impl(object core, object dev, object pasid, object grpid, object flags,
                         object addr, object perm, object time):
    return (<Grouper>core).values_call(dev, pasid, grpid, flags, addr, perm, time)

import sys as _sys
cdef object _KW_PERM = _sys.intern("perm"), _KW_TIME = _sys.intern("time")
cdef object _PERM_READ = 1, _TIME_ZERO = 0    # the defaults of Queue.report_values
iopf_kw_perm = <PyObject*>_KW_PERM
iopf_kw_time = <PyObject*>_KW_TIME
iopf_default_perm = <PyObject*>_PERM_READ
iopf_default_time = <PyObject*>_TIME_ZERO
iopf_values_impl = _values_impl

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
        cdef int overflow = 0
        cdef long c = -1
        # Queue.respond's lock-free path, without its Python frame.
        # The queue's code rule: an int 0..2 (a Response is one), never a bool;
        # read in C (comparing a Response in Python goes through the enum's type).
        if PyLong_Check(code) and not PyBool_Check(code):
            c = PyLong_AsLongAndOverflow(code, &overflow)
        if (at is None and core is not None and core.fast and 0 <= c <= 2 and not overflow
                and not core.held_elsewhere()):
            return core.respond_call(self.cookie, <uint32_t>c, R_CALLER, time)
        return self._queue.respond(self.cookie, code, time=time, at=at)
