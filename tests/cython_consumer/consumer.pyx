# cython: language_level=3
"""A downstream simulator's Cython module: drives the core through its .pxd,
one C call per fault, with no Python object per fault."""
from iopf_core.grouper cimport Grouper, FaultRec, REPORT_GROUPED, REPORT_ANSWERED, REPORT_REFUSED


def group_in_c(Grouper g, unsigned int n_groups, unsigned int size):
    """Report n_groups groups of `size` faults on device 1, PASID 2; return
    how many groups the core completed (counted from report_rec's result)."""
    cdef FaultRec r
    cdef unsigned int k, j, done = 0
    cdef int res
    r.dev = 1
    r.pasid = 2
    r.perm = 1
    r.priv[0] = 0
    r.priv[1] = 0
    with nogil:
        for k in range(n_groups):
            for j in range(size):
                r.time = k * size + j
                r.grpid = k % 512
                r.addr = <unsigned long long>j << 12
                r.flags = 1 | (2 if j == size - 1 else 0)     # PASID_VALID, LAST_PAGE
                res = g.report_rec(&r, False)
                if res == REPORT_GROUPED or res == REPORT_ANSWERED:
                    done += 1
    return done


def feed(Grouper g, FaultRec[::1] recs, bint collect=False):
    """The README's example: a FAULT_DTYPE array as a typed memoryview;
    (groups completed, records refused). With collect, the completed groups
    go to the batch output (take_groups), as run() puts them."""
    cdef Py_ssize_t i
    cdef int done = 0, refused = 0, res
    with nogil:
        for i in range(recs.shape[0]):
            res = g.report_rec(&recs[i], collect)
            done += res == REPORT_GROUPED or res == REPORT_ANSWERED
            refused += res == REPORT_REFUSED
    return done, refused


def report_one(Grouper g, unsigned long long time, unsigned int dev, unsigned int pasid,
               unsigned int grpid, unsigned int flags, unsigned int perm):
    """One record through the checked C entry: its ReportResult."""
    cdef FaultRec r
    r.time = time
    r.dev = dev
    r.pasid = pasid
    r.grpid = grpid
    r.flags = flags
    r.perm = perm
    r.addr = 0
    r.priv[0] = 0
    r.priv[1] = 0
    return g.report_rec(&r, False)
