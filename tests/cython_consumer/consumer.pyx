# cython: language_level=3
"""A downstream simulator's Cython module: drives the core through its .pxd,
one C call per fault, with no Python object per fault."""
from iopf_core.grouper cimport Grouper, FaultRec


def group_in_c(Grouper g, unsigned int n_groups, unsigned int size):
    """Report n_groups groups of `size` faults on device 1, PASID 2; return
    how many groups the core completed (counted from report_rec's result)."""
    cdef FaultRec r
    cdef unsigned int k, j, done = 0
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
                if g.report_rec(&r, False) >= 1:
                    done += 1
    return done


def feed(Grouper g, FaultRec[::1] recs):
    """The README's example: a FAULT_DTYPE array as a typed memoryview."""
    cdef Py_ssize_t i
    cdef int done = 0
    with nogil:
        for i in range(recs.shape[0]):
            done += g.report_rec(&recs[i], False) >= 1
    return done
