# TreeGrouper: the strategy of a balanced tree.
# Part of grouper.pyx (included at module level).

cdef class TreeGrouper(Grouper):
    """Partials in an AVL tree ordered on (dev, key PASID, grpid): O(log n) LPIG.

    The tree's node of Part p is t[p] (a copy of its key and the links, 24
    bytes), in an array beside the pool of Parts: a step down reads one
    node, as a tree of keys would; recursion depth is at most 1.44 log2(groups).
    """

    strategy = "tree"

    def __cinit__(self, *args, **kwargs):
        self.root = NIL

    def __dealloc__(self):
        PyMem_RawFree(self.t)
        self.t = NULL

    cdef int t_cmp(self, uint32_t dev, uint32_t kp, uint32_t grp, uint32_t i) noexcept nogil:
        """The key (dev, kp, grp) against the key of tree node i: -1, 0 or 1."""
        cdef const TNode* b = &self.t[i]
        if dev != b.dev:
            return -1 if dev < b.dev else 1
        if kp != b.kp:
            return -1 if kp < b.kp else 1
        if grp != b.grpid:
            return -1 if grp < b.grpid else 1
        return 0

    cdef uint32_t t_find(self, uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
        cdef uint32_t i = self.root
        cdef int c
        while i != NIL:
            c = self.t_cmp(dev, kp, grp, i)
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
        if self.t_cmp(self.t[n].dev, self.t[n].kp, self.t[n].grpid, root) < 0:
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
        cdef int c = self.t_cmp(dev, kp, grp, root)
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

    cdef uint32_t s_find(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil:
        return self.t_find(dev, kp, grpid)

    cdef void s_insert(self, uint32_t p) noexcept nogil:
        cdef const Part* x = P(&self.parts, p)
        self.t[p].dev = x.dev           # s_reserve made t as long as the pool
        self.t[p].kp = x.kp
        self.t[p].grpid = x.grpid
        self.t[p].left = NIL
        self.t[p].right = NIL
        self.t[p].height = 1
        self.root = self.t_insert(self.root, p)

    cdef void s_remove(self, uint32_t p) noexcept nogil:
        cdef uint32_t found = NIL
        self.root = self.t_delete(self.root, self.t[p].dev, self.t[p].kp, self.t[p].grpid, &found)

    cdef int s_reserve(self) except -1 nogil:
        """t as long as the pool of Parts (it grows by one chunk at a time)."""
        cdef TNode* t
        if self.t_cap < self.parts.cap:
            t = <TNode*>xrealloc(self.t, self.parts.cap * sizeof(TNode))
            if t == NULL:
                return raise_nomem()
            self.t = t
            self.t_cap = self.parts.cap
        return 0

    cdef size_t s_sizeof(self) noexcept nogil:
        return self.t_cap * sizeof(TNode)
