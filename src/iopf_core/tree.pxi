# TreeGrouper: the strategy of a balanced tree.
# Part of grouper.pyx (included at module level).

cdef inline int key_cmp(uint32_t dev, uint32_t kp, uint32_t grp, const Slot* b) noexcept nogil:
    if dev != b.dev:
        return -1 if dev < b.dev else 1
    if kp != b.kpasid:
        return -1 if kp < b.kpasid else 1
    if grp != b.grpid:
        return -1 if grp < b.grpid else 1
    return 0


cdef class TreeGrouper(Grouper):
    """Partials in an AVL tree ordered on (dev, key PASID, grpid): O(log n) LPIG.

    The nodes live in one pool and link by index, like the rest of the core;
    recursion depth is at most 1.44 log2(groups).
    """

    strategy = "tree"

    def __cinit__(self, *args, **kwargs):
        self.root = NIL
        self.t_free = NIL

    def __dealloc__(self):
        PyMem_RawFree(self.t)
        self.t = NULL

    cdef uint32_t t_find(self, uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
        cdef uint32_t i = self.root
        cdef int c
        while i != NIL:
            c = key_cmp(dev, kp, grp, &self.t[i].s)
            if c == 0:
                return i
            i = self.t[i].left if c < 0 else self.t[i].right
        return NIL

    cdef void t_fix(self, uint32_t i) noexcept nogil:
        cdef int32_t hl = 0 if self.t[i].left == NIL else self.t[self.t[i].left].height
        cdef int32_t hr = 0 if self.t[i].right == NIL else self.t[self.t[i].right].height
        self.t[i].height = 1 + (hl if hl > hr else hr)

    cdef uint32_t t_rotate_right(self, uint32_t y) noexcept nogil:
        cdef uint32_t x = self.t[y].left
        self.t[y].left = self.t[x].right
        self.t[x].right = y
        self.t_fix(y)
        self.t_fix(x)
        return x

    cdef uint32_t t_rotate_left(self, uint32_t x) noexcept nogil:
        cdef uint32_t y = self.t[x].right
        self.t[x].right = self.t[y].left
        self.t[y].left = x
        self.t_fix(x)
        self.t_fix(y)
        return y

    cdef uint32_t t_balance(self, uint32_t i) noexcept nogil:
        self.t_fix(i)
        cdef uint32_t l = self.t[i].left, r = self.t[i].right
        cdef int32_t hl = 0 if l == NIL else self.t[l].height
        cdef int32_t hr = 0 if r == NIL else self.t[r].height
        cdef int32_t a, b
        if hl - hr > 1:
            a = 0 if self.t[l].left == NIL else self.t[self.t[l].left].height
            b = 0 if self.t[l].right == NIL else self.t[self.t[l].right].height
            if a < b:
                self.t[i].left = self.t_rotate_left(l)
            return self.t_rotate_right(i)
        if hr - hl > 1:
            a = 0 if self.t[r].right == NIL else self.t[self.t[r].right].height
            b = 0 if self.t[r].left == NIL else self.t[self.t[r].left].height
            if a < b:
                self.t[i].right = self.t_rotate_right(r)
            return self.t_rotate_left(i)
        return i

    cdef uint32_t t_insert(self, uint32_t root, uint32_t n) noexcept nogil:
        if root == NIL:
            return n
        if key_cmp(self.t[n].s.dev, self.t[n].s.kpasid, self.t[n].s.grpid, &self.t[root].s) < 0:
            self.t[root].left = self.t_insert(self.t[root].left, n)
        else:
            self.t[root].right = self.t_insert(self.t[root].right, n)
        return self.t_balance(root)

    cdef uint32_t t_remove_min(self, uint32_t i, uint32_t* out) noexcept nogil:
        if self.t[i].left == NIL:
            out[0] = i
            return self.t[i].right
        self.t[i].left = self.t_remove_min(self.t[i].left, out)
        return self.t_balance(i)

    cdef uint32_t t_delete(self, uint32_t root, uint32_t dev, uint32_t kp, uint32_t grp,
                           uint32_t* out) noexcept nogil:
        if root == NIL:
            return NIL
        cdef int c = key_cmp(dev, kp, grp, &self.t[root].s)
        cdef uint32_t m, r
        if c < 0:
            self.t[root].left = self.t_delete(self.t[root].left, dev, kp, grp, out)
        elif c > 0:
            self.t[root].right = self.t_delete(self.t[root].right, dev, kp, grp, out)
        else:
            out[0] = root
            if self.t[root].right == NIL:
                return self.t[root].left
            r = self.t_remove_min(self.t[root].right, &m)
            self.t[m].right = r
            self.t[m].left = self.t[root].left
            return self.t_balance(m)
        return self.t_balance(root)

    cdef int s_add(self, uint32_t n, uint32_t dev) except -1 nogil:
        cdef Node* x = self.N(n)
        cdef uint32_t kp = self.slot_kpasid(x), i = self.t_find(dev, kp, x.grpid)
        if i == NIL:
            self.s_reserve()          # grow before linking: the pool may move
            i = self.t_free
            self.t_free = self.t[i].left
            self.t[i].s.dev = dev
            self.t[i].s.kpasid = kp
            self.t[i].s.grpid = x.grpid
            self.t[i].s.head = n
            self.t[i].s.epoch = 0
            self.t[i].left = NIL
            self.t[i].right = NIL
            self.t[i].height = 1
            self.root = self.t_insert(self.root, i)
        else:
            self.N(self.t[i].s.tail).next = n
        self.t[i].s.tail = n
        return 0

    cdef uint32_t s_take(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        cdef uint32_t found = NIL
        self.root = self.t_delete(self.root, dev, kpasid, grpid, &found)
        if found == NIL:
            return NIL
        self.t[found].left = self.t_free
        self.t_free = found
        return self.t[found].s.head

    cdef void s_purge(self, uint32_t n, uint32_t dev) noexcept nogil:
        cdef Node* x = self.N(n)
        cdef uint32_t kp = self.slot_kpasid(x), i = self.t_find(dev, kp, x.grpid)
        if i != NIL and self.t[i].s.epoch != self.epoch:
            if self.filter_dead(&self.t[i].s) == 0:
                self.s_take(dev, kp, x.grpid)

    cdef int s_reserve(self) except -1 nogil:
        cdef size_t cap
        cdef uint32_t i
        if self.t_free == NIL:
            if self.t_cap >= 0x7FFFFFFFu:
                return raise_nomem()
            cap = self.t_cap
            self.t = <TNode*>grow(self.t, &cap, cap + 1, sizeof(TNode))
            for i in range(self.t_cap, <uint32_t>cap):
                self.t[i].left = i + 1
            self.t[cap - 1].left = NIL
            self.t_free = self.t_cap
            self.t_cap = <uint32_t>cap
        return 0

    cdef void s_clear_epochs(self) noexcept nogil:
        cdef uint32_t i
        for i in range(self.t_cap):
            self.t[i].s.epoch = 0

    cdef uint32_t s_count(self, uint32_t dev, uint32_t kpasid, uint32_t grpid) noexcept nogil:
        cdef uint32_t i = self.t_find(dev, kpasid, grpid)
        return 0 if i == NIL else self.list_len(self.t[i].s.head)

    cdef size_t s_sizeof(self) noexcept nogil:
        return self.t_cap * sizeof(TNode)
