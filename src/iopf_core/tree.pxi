# TreeGrouper: the strategy of a balanced tree.
# Part of grouper.pyx (included at module level).

cdef inline int key_cmp(uint32_t dev, uint32_t kp, uint32_t grp, const TNode* b) noexcept nogil:
    if dev != b.dev:
        return -1 if dev < b.dev else 1
    if kp != b.kp:
        return -1 if kp < b.kp else 1
    if grp != b.grpid:
        return -1 if grp < b.grpid else 1
    return 0


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
        cdef uint32_t i
        for i in range(self.tc_n):
            PyMem_RawFree(self.tc[i])
        PyMem_RawFree(self.tc)
        self.tc = NULL

    cdef inline TNode* T(self, uint32_t i) noexcept nogil:
        return &self.tc[i >> CHUNK_BITS][i & CHUNK_MASK]

    cdef uint32_t t_find(self, uint32_t dev, uint32_t kp, uint32_t grp) noexcept nogil:
        cdef uint32_t i = self.root
        cdef int c
        while i != NIL:
            c = key_cmp(dev, kp, grp, self.T(i))
            if c == 0:
                return i
            i = self.T(i).left if c < 0 else self.T(i).right
        return NIL

    cdef void t_fix(self, uint32_t i) noexcept nogil:
        cdef int32_t hl = 0 if self.T(i).left == NIL else self.T(self.T(i).left).height
        cdef int32_t hr = 0 if self.T(i).right == NIL else self.T(self.T(i).right).height
        self.T(i).height = 1 + (hl if hl > hr else hr)

    cdef uint32_t t_rotate_right(self, uint32_t y) noexcept nogil:
        cdef uint32_t x = self.T(y).left
        self.T(y).left = self.T(x).right
        self.T(x).right = y
        self.t_fix(y)
        self.t_fix(x)
        return x

    cdef uint32_t t_rotate_left(self, uint32_t x) noexcept nogil:
        cdef uint32_t y = self.T(x).right
        self.T(x).right = self.T(y).left
        self.T(y).left = x
        self.t_fix(x)
        self.t_fix(y)
        return y

    cdef uint32_t t_balance(self, uint32_t i) noexcept nogil:
        self.t_fix(i)
        cdef uint32_t l = self.T(i).left, r = self.T(i).right
        cdef int32_t hl = 0 if l == NIL else self.T(l).height
        cdef int32_t hr = 0 if r == NIL else self.T(r).height
        cdef int32_t a, b
        if hl - hr > 1:
            a = 0 if self.T(l).left == NIL else self.T(self.T(l).left).height
            b = 0 if self.T(l).right == NIL else self.T(self.T(l).right).height
            if a < b:
                self.T(i).left = self.t_rotate_left(l)
            return self.t_rotate_right(i)
        if hr - hl > 1:
            a = 0 if self.T(r).right == NIL else self.T(self.T(r).right).height
            b = 0 if self.T(r).left == NIL else self.T(self.T(r).left).height
            if a < b:
                self.T(i).right = self.t_rotate_right(r)
            return self.t_rotate_left(i)
        return i

    cdef uint32_t t_insert(self, uint32_t root, uint32_t n) noexcept nogil:
        if root == NIL:
            return n
        if key_cmp(self.T(n).dev, self.T(n).kp, self.T(n).grpid, self.T(root)) < 0:
            self.T(root).left = self.t_insert(self.T(root).left, n)
        else:
            self.T(root).right = self.t_insert(self.T(root).right, n)
        return self.t_balance(root)

    cdef uint32_t t_remove_min(self, uint32_t i, uint32_t* out) noexcept nogil:
        if self.T(i).left == NIL:
            out[0] = i
            return self.T(i).right
        self.T(i).left = self.t_remove_min(self.T(i).left, out)
        return self.t_balance(i)

    cdef uint32_t t_delete(self, uint32_t root, uint32_t dev, uint32_t kp, uint32_t grp,
                           uint32_t* out) noexcept nogil:
        if root == NIL:
            return NIL
        cdef int c = key_cmp(dev, kp, grp, self.T(root))
        cdef uint32_t m, r
        if c < 0:
            self.T(root).left = self.t_delete(self.T(root).left, dev, kp, grp, out)
        elif c > 0:
            self.T(root).right = self.t_delete(self.T(root).right, dev, kp, grp, out)
        else:
            out[0] = root
            if self.T(root).right == NIL:
                return self.T(root).left
            r = self.t_remove_min(self.T(root).right, &m)
            self.T(m).right = r
            self.T(m).left = self.T(root).left
            return self.t_balance(m)
        return self.t_balance(root)

    cdef uint32_t s_find(self, uint32_t dev, uint32_t kp, uint32_t grpid) noexcept nogil:
        return self.t_find(dev, kp, grpid)

    cdef void s_insert(self, uint32_t p) noexcept nogil:
        cdef const Part* x = P(&self.parts, p)
        self.T(p).dev = x.dev           # s_reserve made t as long as the pool
        self.T(p).kp = x.kp
        self.T(p).grpid = x.grpid
        self.T(p).left = NIL
        self.T(p).right = NIL
        self.T(p).height = 1
        self.root = self.t_insert(self.root, p)

    cdef void s_remove(self, uint32_t p) noexcept nogil:
        cdef uint32_t found = NIL
        self.root = self.t_delete(self.root, self.T(p).dev, self.T(p).kp, self.T(p).grpid, &found)

    cdef int s_reserve(self) except -1 nogil:
        """A chunk of tree nodes for every chunk of Parts (nothing moves or is copied)."""
        cdef size_t cap = self.tc_cap
        cdef TNode* chunk
        while <uint64_t>self.tc_n * CHUNK < self.parts.cap:     # whole chunks: see pool_grow
            if self.tc_n == self.tc_cap:
                self.tc = <TNode**>grow(self.tc, &cap, cap + 1, sizeof(TNode*))
                self.tc_cap = <uint32_t>cap
            chunk = <TNode*>xmalloc(CHUNK * sizeof(TNode))
            if chunk == NULL:
                return raise_nomem()
            self.tc[self.tc_n] = chunk
            self.tc_n += 1
        return 0

    cdef size_t s_sizeof(self) noexcept nogil:
        return self.tc_n * CHUNK * sizeof(TNode) + self.tc_cap * sizeof(TNode*)
