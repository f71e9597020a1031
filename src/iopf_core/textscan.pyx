# cython: language_level=3
"""A C scanner for well-formed ``intel_iommu:prq_report`` lines.

``scan_prq(block)`` reads a block of whole lines and returns the records of
the lines written the way the kernel writes them (single spaces inside the
event body, a four-digit PCI segment, no private data, no trailing blanks,
at most 16 hex digits a field, ASCII), and the indexes of every other line
holding ``prq_report:`` (not a comment), which ``iopf.trace`` leaves to its
rule (a regular expression) to decide. It accepts exactly what the numpy
scanner ``iopf.trace._prq_fast`` accepts and nothing the rule refuses.
"""
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memchr, memcmp

import numpy as np

cdef enum:
    MAX_UNITS = 64
    UNIT_BYTES = 16

cdef extern from *:
    """
    static const unsigned char IOPF_EVENT[] = "prq_report:";
    """
    const unsigned char *IOPF_EVENT


cdef inline int hexval(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline bint number(const uint8_t *b, int64_t start, int64_t stop, int base, int width,
                        uint64_t *out) noexcept nogil:
    """Digits b[start:stop] (1 to width of them) as a number; False if bad."""
    cdef int64_t n = stop - start, i
    cdef uint64_t v = 0
    cdef int d
    if n < 1 or n > width:
        return False
    for i in range(start, stop):
        if base == 16:
            d = hexval(b[i])
        else:
            d = b[i] - 48 if 48 <= b[i] <= 57 else -1
        if d < 0:
            return False
        v = v * base + d
    out[0] = v
    return True


cdef inline int64_t next_space(const uint8_t *b, int64_t pos, int64_t stop) noexcept nogil:
    """The first space at or after pos, before stop (the line's end); stop if none."""
    while pos < stop and b[pos] != 32:
        pos += 1
    return pos


cdef inline bint same(const uint8_t *b, int64_t at, int64_t lo, int64_t hi,
                      const char *text, int64_t n) noexcept nogil:
    return at >= lo and at + n <= hi and memcmp(b + at, text, n) == 0


def scan_prq(const uint8_t[::1] block):
    """(records, lines, left, units, stamped) or None when no line was
    taken and none left; ``records`` a dict of uint64 arrays."""
    cdef Py_ssize_t n = block.shape[0]
    if n == 0:
        return None
    cdef const uint8_t *b = &block[0]
    cdef int64_t nlines = 0, i = 0
    cdef const uint8_t *hit
    while i < n:
        hit = <const uint8_t *>memchr(b + i, 10, n - i)
        if hit == NULL:
            break
        nlines += 1
        i = hit - b + 1
    if b[n - 1] != 10:
        nlines += 1            # a last line without its newline
    cols = np.zeros((9, nlines), np.uint64)
    cdef uint64_t[:, ::1] c = cols
    lines_arr = np.zeros(nlines, np.int64)
    left_arr = np.zeros(nlines, np.int64)
    cdef int64_t[::1] lines = lines_arr
    cdef int64_t[::1] left = left_arr
    cdef char units[MAX_UNITS][UNIT_BYTES]
    cdef int unit_len[MAX_UNITS]
    cdef int nunits = 0, u
    cdef int64_t taken = 0, nleft = 0, line_no = 0
    cdef int64_t ls = 0, le, q, fc, event, ts_end, ts_start, dot, k, pad, body, s1, dev0
    cdef int64_t s2, s3, s4, s5, s6, idx_end, ulen
    cdef uint64_t sec, frac, seq, rid, page, pasid, index, seg, tmp, time
    cdef int nbare = 0, nstamped = 0, perm
    cdef bint ok, bare, has_frac
    cdef uint8_t ch
    with nogil:
        while ls < n:
            hit = <const uint8_t *>memchr(b + ls, 10, n - ls)
            le = n if hit == NULL else hit - b
            # The first "prq_report:" of the line.
            q = -1
            k = ls
            while k + 11 <= le:
                hit = <const uint8_t *>memchr(b + k, 112, le - 10 - k)
                if hit == NULL:
                    break
                k = hit - b
                if memcmp(b + k, IOPF_EVENT, 11) == 0:
                    q = k
                    break
                k += 1
            if q < 0:
                ls = le + 1
                line_no += 1
                continue
            fc = ls
            while fc < le and b[fc] == 32:
                fc += 1
            if fc < le and b[fc] == 35:          # a comment: skipped by the rule too
                ls = le + 1
                line_no += 1
                continue
            ok = fc < le and 33 <= b[fc] < 128
            event = q - 12 if same(b, q - 12, ls, le, "intel_iommu:", 12) else q
            bare = event == fc
            sec = frac = 0
            has_frac = False
            dot = -1
            ts_end = 0
            if ok and not bare:
                ts_end = event - 2
                ok = ts_end > ls and b[event - 1] == 32 and b[ts_end] == 58
                if ok:
                    ts_start = ts_end - 1
                    while ts_start >= ls and b[ts_start] != 32:
                        ts_start -= 1
                    ts_start += 1
                    dot = -1
                    k = ts_start
                    while k < ts_end and k < ts_start + 32:
                        if b[k] == 46:
                            dot = k
                            break
                        k += 1
                    has_frac = dot >= 0
                    if has_frac:
                        ok = (number(b, ts_start, dot, 10, 10, &sec)
                              and number(b, dot + 1, ts_end, 10, 9, &frac))
                    else:
                        ok = number(b, ts_start, ts_end, 10, 19, &sec)
            # The body after the (padded) event name.
            pad = 0
            while ok and q + 11 + pad < le and b[q + 11 + pad] == 32:
                pad += 1
            ok = ok and pad >= 1
            body = q + 11 + pad
            s1 = next_space(b, body, le)
            dev0 = s1 - 12
            ulen = dev0 - 1 - body
            ok = (ok and s1 < le and ulen >= 1 and ulen <= UNIT_BYTES and b[dev0 - 1] == 47
                  and b[dev0 + 4] == 58 and b[dev0 + 7] == 58 and b[dev0 + 10] == 46
                  and number(b, dev0, dev0 + 4, 16, 4, &seg)
                  and number(b, dev0 + 5, dev0 + 7, 16, 2, &tmp)
                  and number(b, dev0 + 8, dev0 + 10, 16, 2, &tmp)
                  and 48 <= b[dev0 + 11] <= 55)
            if ok:
                for k in range(body, dev0 - 1):
                    if b[k] < 33 or b[k] >= 128 or b[k] == 47:
                        ok = False
                        break
            ok = ok and same(b, s1 + 1, ls, le, "seq# ", 5)
            s2 = next_space(b, s1 + 6, le) if ok else le
            ok = (ok and s2 < le and b[s2 - 1] == 58 and number(b, s1 + 6, s2 - 1, 10, 19, &seq)
                  and same(b, s2 + 1, ls, le, "rid=0x", 6))
            s3 = next_space(b, s2 + 7, le) if ok else le
            ok = (ok and s3 < le and number(b, s2 + 7, s3, 16, 16, &rid) and rid <= 0xFFFF
                  and same(b, s3 + 1, ls, le, "addr=0x", 7))
            s4 = next_space(b, s3 + 8, le) if ok else le
            ok = (ok and s4 < le and number(b, s3 + 8, s4, 16, 16, &page)
                  and page < (<uint64_t>1 << 52) and s4 + 6 < le)
            perm = 0
            if ok:
                ch = b[s4 + 1]
                ok = ch == 114 or ch == 45
                perm |= 1 if ch == 114 else 0
                ch = b[s4 + 2]
                ok = ok and (ch == 119 or ch == 45)
                perm |= 2 if ch == 119 else 0
                ch = b[s4 + 3]
                ok = ok and (ch == 120 or ch == 45)
                perm |= 4 if ch == 120 else 0
                ch = b[s4 + 4]
                ok = ok and (ch == 112 or ch == 45)
                perm |= 8 if ch == 112 else 0
                ch = b[s4 + 5]
                ok = ok and (ch == 108 or ch == 45)
            s5 = s4 + 6
            ok = ok and b[s5] == 32 and same(b, s5 + 1, ls, le, "pasid=0x", 8)
            s6 = next_space(b, s5 + 9, le) if ok else le
            ok = (ok and s6 < le and number(b, s5 + 9, s6, 16, 16, &pasid) and pasid <= 0xFFFFF
                  and same(b, s6 + 1, ls, le, "index=0x", 8))
            idx_end = le - 1 if le > ls and b[le - 1] == 13 else le
            ok = (ok and next_space(b, s6 + 1, le) == le
                  and number(b, s6 + 9, idx_end, 16, 16, &index) and index <= 0x1FF)
            # The unit's number in this block's table.
            u = -1
            if ok:
                for u in range(nunits):
                    if unit_len[u] == ulen and memcmp(units[u], b + body, ulen) == 0:
                        break
                else:
                    if nunits < MAX_UNITS:
                        for k in range(ulen):
                            units[nunits][k] = b[body + k]
                        unit_len[nunits] = <int>ulen
                        u = nunits
                        nunits += 1
                    else:
                        ok = False
            if ok:
                if bare:
                    time = seq
                    nbare += 1
                else:
                    nstamped += 1
                    if has_frac:
                        k = ts_end - dot - 1
                        while k < 9:
                            frac *= 10
                            k += 1
                        time = sec * 1000000000 + frac
                    else:
                        time = sec
                c[0, taken] = time
                c[1, taken] = seg << 16 | rid
                c[2, taken] = pasid
                c[3, taken] = index
                c[4, taken] = (2 if b[s4 + 5] == 108 else 0) | (5 if pasid != 0 else 0)
                c[5, taken] = perm
                c[6, taken] = page << 12
                c[7, taken] = seq
                c[8, taken] = u
                lines[taken] = line_no
                taken += 1
            else:
                left[nleft] = line_no
                nleft += 1
            ls = le + 1
            line_no += 1
    if taken == 0 and nleft == 0:
        return None
    if nbare and nstamped:
        return "mixed"
    names = [bytes(units[u][:unit_len[u]]).decode("ascii") for u in range(nunits)]
    return cols[:, :taken], lines_arr[:taken], left_arr[:nleft], names, nbare == 0
