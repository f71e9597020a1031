/* The floor of the benchmarks: plain C grouping of page requests, no Python.
 *
 * What a C programmer would write to group a trace of FAULT_DTYPE records
 * and answer each group as it forms: partials wait in a node pool, linked
 * per group; an open-addressed hash on (dev, PASID, group id) (or, in list
 * mode, one list per device scanned at every LPIG, as the kernel's
 * iopf_group_alloc() walks its partial list) finds them at the LPIG; the
 * group is copied out (LPIG last) and answered with one response record.
 * Output and response buffers belong to the caller and are reused.
 *
 * No policy, no handler, no counters but the two the benchmark checks: it is
 * the least work that still groups and answers. Built by benchmarks/floor.py
 * with the compiler of the Python that runs the benchmarks, loaded by ctypes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma pack(push, 1)
typedef struct {                      /* FAULT_DTYPE, 52 bytes */
    uint64_t time;
    uint32_t dev, pasid, grpid, flags, perm;
    uint64_t addr;
    uint64_t priv[2];
} rec_t;
typedef struct {                      /* RESPONSE_DTYPE, 44 bytes */
    uint64_t time;
    uint32_t dev, pasid, grpid, code, flags;
    uint64_t cookie;
    uint32_t nfaults, reason;
} resp_t;
#pragma pack(pop)

#define NIL 0xFFFFFFFFu
#define EMPTY 0xFFFFFFFFu
#define LAST_PAGE 2u

typedef struct { rec_t r; uint32_t next; } node_t;
typedef struct { uint32_t dev, pasid, grpid, head, tail; } slot_t;

typedef struct {
    int list_mode;
    node_t *nodes;
    uint32_t node_cap, node_free;
    slot_t *slots;
    uint32_t cap, count;
    uint64_t next_cookie, held;
} floor_t;

static inline uint32_t home(const floor_t *f, uint32_t dev, uint32_t pasid, uint32_t grp) {
    uint64_t h = ((uint64_t)dev << 32 | pasid) * 0x9E3779B97F4A7C15ULL;
    h ^= ((uint64_t)grp + 0x632BE59BD9B4E019ULL) * 0xC2B2AE3D27D4EB4FULL;
    h ^= h >> 32;
    return (uint32_t)h & (f->cap - 1);
}

static int64_t find(const floor_t *f, uint32_t dev, uint32_t pasid, uint32_t grp) {
    uint32_t i = home(f, dev, pasid, grp);
    for (;;) {
        const slot_t *s = &f->slots[i];
        if (s->dev == EMPTY) return -1;
        if (s->dev == dev && s->pasid == pasid && s->grpid == grp) return i;
        i = (i + 1) & (f->cap - 1);
    }
}

static int grow_table(floor_t *f) {
    uint32_t old_cap = f->cap, cap = old_cap ? 2 * old_cap : 64, i;
    slot_t *old = f->slots, *s = malloc(cap * sizeof(slot_t));
    if (!s) return -1;
    for (i = 0; i < cap; i++) s[i].dev = EMPTY;
    f->slots = s;
    f->cap = cap;
    for (i = 0; i < old_cap; i++) {
        if (old[i].dev != EMPTY) {
            uint32_t j = home(f, old[i].dev, old[i].pasid, old[i].grpid);
            while (s[j].dev != EMPTY) j = (j + 1) & (cap - 1);
            s[j] = old[i];
        }
    }
    free(old);
    return 0;
}

static void delete_slot(floor_t *f, uint32_t i) {   /* backward shift */
    uint32_t mask = f->cap - 1, j = i, k;
    for (;;) {
        j = (j + 1) & mask;
        if (f->slots[j].dev == EMPTY) break;
        k = home(f, f->slots[j].dev, f->slots[j].pasid, f->slots[j].grpid);
        if ((i <= j && (k <= i || k > j)) || (i > j && k <= i && k > j)) {
            f->slots[i] = f->slots[j];
            i = j;
        }
    }
    f->slots[i].dev = EMPTY;
    f->count--;
}

static uint32_t node_alloc(floor_t *f) {
    if (f->node_free == NIL) {
        uint32_t cap = f->node_cap ? 2 * f->node_cap : 4096, i;
        node_t *n = realloc(f->nodes, (size_t)cap * sizeof(node_t));
        if (!n) return NIL;
        for (i = f->node_cap; i < cap - 1; i++) n[i].next = i + 1;
        n[cap - 1].next = NIL;
        f->nodes = n;
        f->node_free = f->node_cap;
        f->node_cap = cap;
    }
    uint32_t i = f->node_free;
    f->node_free = f->nodes[i].next;
    return i;
}

void *floor_new(int list_mode) {
    floor_t *f = calloc(1, sizeof(floor_t));
    if (!f) return NULL;
    f->list_mode = list_mode;
    f->node_free = NIL;
    f->next_cookie = 1;
    if (grow_table(f)) { free(f); return NULL; }
    return f;
}

void floor_free(void *p) {
    floor_t *f = p;
    if (!f) return;
    free(f->nodes);
    free(f->slots);
    free(f);
}

/* Partials held now: out must have room for n + floor_held() records. */
int64_t floor_held(void *p) { return (int64_t)((floor_t *)p)->held; }

/* Group n records; complete groups go to out (faults, LPIG last) and one
 * response each to resp (n records). Returns the number of
 * groups, or -1 when out of memory; *nout gets the faults written. */
int64_t floor_run(void *p, const rec_t *recs, int64_t n, rec_t *out, resp_t *resp, int64_t *nout) {
    floor_t *f = p;
    int64_t i, groups = 0, o = 0;
    for (i = 0; i < n; i++) {
        const rec_t *r = &recs[i];
        /* the list mode keys its one list per device on the device alone */
        uint32_t kp = f->list_mode ? EMPTY - 1 : r->pasid, kg = f->list_mode ? 0 : r->grpid;
        int64_t s = find(f, r->dev, kp, kg);
        if (!(r->flags & LAST_PAGE)) {
            uint32_t m = node_alloc(f);
            if (m == NIL) return -1;
            f->nodes[m].r = *r;
            f->nodes[m].next = NIL;
            f->held++;
            if (s < 0) {
                if (2 * (f->count + 1) > f->cap && grow_table(f)) return -1;
                uint32_t j = home(f, r->dev, kp, kg);
                while (f->slots[j].dev != EMPTY) j = (j + 1) & (f->cap - 1);
                f->slots[j].dev = r->dev;
                f->slots[j].pasid = kp;
                f->slots[j].grpid = kg;
                f->slots[j].head = m;
                f->count++;
                s = j;
            } else {
                f->nodes[f->slots[s].tail].next = m;
            }
            f->slots[s].tail = m;
            continue;
        }
        uint32_t nf = 1;
        if (s >= 0) {
            slot_t *sl = &f->slots[s];
            uint32_t m = sl->head, prev = NIL, nx;
            while (m != NIL) {
                node_t *x = &f->nodes[m];
                nx = x->next;
                if (!f->list_mode || (x->r.pasid == r->pasid && x->r.grpid == r->grpid)) {
                    out[o++] = x->r;
                    nf++;
                    f->held--;
                    if (prev == NIL) sl->head = nx; else f->nodes[prev].next = nx;
                    if (sl->tail == m) sl->tail = prev;
                    x->next = f->node_free;
                    f->node_free = m;
                } else {
                    prev = m;
                }
                m = nx;
            }
            if (sl->head == NIL) delete_slot(f, (uint32_t)s);
        }
        out[o++] = *r;
        resp_t *a = &resp[groups++];
        a->time = r->time;
        a->dev = r->dev;
        a->pasid = r->pasid;
        a->grpid = r->grpid;
        a->code = 0;
        a->flags = 0;
        a->cookie = f->next_cookie++;
        a->nfaults = nf;
        a->reason = 10;
    }
    *nout = o;
    return groups;
}
