/* Lock-order checking (lockdep for Python): see order.h.
 *
 * - Lock classes: (creation site code, offset, name label), numbered from 1
 *   per session in a dict; a lock's class is kept in a table keyed by the
 *   lock's address (kept off ddl_prof: no memory when the mode is off),
 *   dropped when the lock is freed. At most max_classes; a lock past that
 *   has class 0 (held, never in an edge) and is counted.
 * - Held lists: one per actor holding something (thread ident, or task for
 *   asyncio locks), entries (lock, class, depth) innermost last. Re-entry
 *   (an RLock, a semaphore taken twice by one holder) raises the depth. A
 *   release looks in the releasing actor's list, then in every list (a Lock
 *   or semaphore released by another thread). Lists hold at most
 *   DDL_ORDER_MAX_HELD entries (deeper nesting is counted, not checked).
 * - Edges: (held class -> acquired class), first seen with the stack there,
 *   found through a hash set of pairs (the repeat cost: one probe per held
 *   lock). At most max_edges. A new edge a -> b is checked by a depth-first
 *   search from b for a: a path closes a cycle, an inversion.
 * - Same-class nesting (a lock acquired while a lock of its class is held)
 *   is no edge; it is reported once per class.
 * - Reports are dicts in a list; those not yet taken by the reporter
 *   (ddlock/_order.py) are signalled through a raw PyThread lock. Nothing
 *   here logs or runs Python code of anyone's: no re-entry into logging
 *   from inside an acquire.
 *
 * Everything runs with the GIL. Making a class or a report allocates,
 * which may run a collection and finalizers that acquire locks (or release
 * the GIL to another thread): a busy flag makes those acquires skip the
 * check (counted as order_skipped). */
#include "order.h"

#include <string.h>

#define DDL_ORDER_MAX_HELD 64
#define DDL_ORDER_STACK 16
#define DDL_ORDER_MAX_CLASSES 4096
#define DDL_ORDER_MAX_EDGES 16384

typedef struct {
    PyObject *obj; /* borrowed: identity only */
    uint32_t cls;
    unsigned long depth;
} held_ent;

typedef struct {
    uintptr_t actor;
    int n, cap;
    held_ent *e;
} held_list;

typedef struct {
    uint32_t *out; /* edge numbers */
    uint32_t nout, cap;
    uint32_t mark;     /* search generation that visited it */
    uint32_t via;      /* edge number + 1 it was reached by */
    int nested_report; /* same-class nesting reported */
} cls_info;

typedef struct {
    uint32_t from, to;
    PyObject *stack;  /* tuple of (file, line, function), leaf first */
    PyObject *thread; /* int: the actor that first took this order */
} edge_info;

typedef struct {
    PyObject *key; /* borrowed, NULL: empty */
    uint32_t cls;
} cmap_ent;

struct ddl_order {
    int busy;
    /* the class of each lock acquired this session */
    cmap_ent *cmap;
    size_t cmask, ccount;
    /* held lists: [0, nlists) in use, the rest keep their buffers */
    held_list *lists;
    int nlists, lists_cap;
    int last; /* index of the last list found, a guess */
    size_t nheld;
    /* classes */
    PyObject *class_index; /* (code, lasti, name) -> int */
    PyObject *class_names; /* list: names[id - 1] */
    cls_info *cls;         /* [id], 1-based */
    uint32_t nclasses, max_classes;
    uint32_t cap_classes, cap_edges; /* of the next session */
    /* edges and their pair set */
    edge_info *edges;
    uint32_t nedges, edges_cap, max_edges;
    uint64_t *pkeys; /* from << 32 | to, 0: empty */
    size_t pmask, pcount;
    uint32_t mark;
    uint32_t *dfs;
    /* reports */
    PyObject *reports; /* list of dicts */
    PyObject *seen;    /* set of cycles reported (sorted class tuples) */
    Py_ssize_t taken;  /* reports[:taken] handed to the reporter */
    PyThread_type_lock wake;
    int signalled;
    unsigned long reporter; /* its thread ident: not checked */
    /* counters */
    uint64_t acquires, skipped, held_overflow, classes_overflow,
        edges_overflow, inversions, same_class, foreign_releases;
};

/* ---- held lists --------------------------------------------------------- */

static held_list *
list_find(ddl_order *o, uintptr_t actor)
{
    if (o->last < o->nlists && o->lists[o->last].actor == actor) {
        return &o->lists[o->last];
    }
    for (int i = 0; i < o->nlists; i++) {
        if (o->lists[i].actor == actor) {
            o->last = i;
            return &o->lists[i];
        }
    }
    return NULL;
}

static held_list *
list_get(ddl_order *o, uintptr_t actor)
{
    held_list *l = list_find(o, actor);
    if (l != NULL) {
        return l;
    }
    if (o->nlists == o->lists_cap) {
        int cap = o->lists_cap ? o->lists_cap * 2 : 8;
        held_list *nl = PyMem_Realloc(o->lists, (size_t)cap * sizeof(*nl));
        if (nl == NULL) {
            return NULL;
        }
        memset(nl + o->lists_cap, 0,
               (size_t)(cap - o->lists_cap) * sizeof(*nl));
        o->lists = nl;
        o->lists_cap = cap;
    }
    l = &o->lists[o->nlists];
    l->actor = actor;
    l->n = 0;
    o->last = o->nlists++;
    return l;
}

/* Drop list i once empty (its buffer stays, for the next list). */
static void
list_drop_if_empty(ddl_order *o, int i)
{
    if (o->lists[i].n > 0) {
        return;
    }
    held_list tmp = o->lists[i];
    o->lists[i] = o->lists[o->nlists - 1];
    o->lists[o->nlists - 1] = tmp;
    o->nlists--;
}

static void
list_remove_at(ddl_order *o, held_list *l, int k)
{
    memmove(&l->e[k], &l->e[k + 1], (size_t)(l->n - k - 1) * sizeof(held_ent));
    l->n--;
    o->nheld--;
}

static int
list_push(ddl_order *o, held_list *l, PyObject *obj, uint32_t cls,
          unsigned long depth)
{
    if (l->n == l->cap) {
        if (l->cap >= DDL_ORDER_MAX_HELD) {
            o->held_overflow++;
            return -1;
        }
        int cap = l->cap ? l->cap * 2 : 8;
        held_ent *e = PyMem_Realloc(l->e, (size_t)cap * sizeof(held_ent));
        if (e == NULL) {
            o->held_overflow++;
            return -1;
        }
        l->e = e;
        l->cap = cap;
    }
    l->e[l->n++] = (held_ent){obj, cls, depth};
    o->nheld++;
    return 0;
}

/* ---- the class of each lock ----------------------------------------------
 */

static inline size_t
cmap_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p >> 4;
    x *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(x ^ (x >> 29));
}

static cmap_ent *
cmap_find(ddl_order *o, PyObject *key)
{
    if (o->ccount == 0) {
        return NULL;
    }
    for (size_t i = cmap_hash(key) & o->cmask;; i = (i + 1) & o->cmask) {
        if (o->cmap[i].key == key) {
            return &o->cmap[i];
        }
        if (o->cmap[i].key == NULL) {
            return NULL;
        }
    }
}

static void
cmap_put_at(cmap_ent *map, size_t mask, PyObject *key, uint32_t cls)
{
    size_t i = cmap_hash(key) & mask;
    while (map[i].key != NULL) {
        i = (i + 1) & mask;
    }
    map[i] = (cmap_ent){key, cls};
}

static void
cmap_put(ddl_order *o, PyObject *key, uint32_t cls)
{
    if (o->cmap == NULL || (o->ccount + 1) * 2 > o->cmask + 1) {
        size_t size = o->cmap == NULL ? 256 : (o->cmask + 1) * 2;
        cmap_ent *map = PyMem_Calloc(size, sizeof(cmap_ent));
        if (map == NULL) {
            return; /* looked up again next time */
        }
        for (size_t i = 0; o->cmap != NULL && i <= o->cmask; i++) {
            if (o->cmap[i].key != NULL) {
                cmap_put_at(map, size - 1, o->cmap[i].key, o->cmap[i].cls);
            }
        }
        PyMem_Free(o->cmap);
        o->cmap = map;
        o->cmask = size - 1;
    }
    cmap_put_at(o->cmap, o->cmask, key, cls);
    o->ccount++;
}

static void
cmap_del(ddl_order *o, PyObject *key)
{
    cmap_ent *e = cmap_find(o, key);
    if (e == NULL) {
        return;
    }
    size_t hole = (size_t)(e - o->cmap);
    o->ccount--;
    for (size_t j = (hole + 1) & o->cmask; o->cmap[j].key != NULL;
         j = (j + 1) & o->cmask) {
        size_t ideal = cmap_hash(o->cmap[j].key) & o->cmask;
        if (((j - ideal) & o->cmask) >= ((j - hole) & o->cmask)) {
            o->cmap[hole] = o->cmap[j];
            hole = j;
        }
    }
    o->cmap[hole] = (cmap_ent){NULL, 0};
}

int
ddl_order_needs_target(ddl_state *st, PyObject *obj)
{
    return st->order != NULL && cmap_find(st->order, obj) == NULL;
}

/* ---- classes ------------------------------------------------------------ */

/* The class of p (made now if new), 0 when there is none (unknown site,
 * too many classes, an error). May run a collection. */
static uint32_t
class_of(ddl_state *st, ddl_order *o, ddl_prof *p, PyObject *target)
{
    if (p->site_code == NULL) {
        return 0;
    }
    PyObject *name = ddl_lock_name(st, p, target);
    if (name == NULL) {
        PyErr_Clear();
        name = ddl_site_label(p->site_code, p->site_lasti);
        if (name == NULL) {
            PyErr_Clear();
            return 0;
        }
    }
    uint32_t id = 0;
    PyObject *key = Py_BuildValue("(OiO)", p->site_code, p->site_lasti, name);
    if (key == NULL) {
        goto done;
    }
    PyObject *v = PyDict_GetItemWithError(o->class_index, key);
    if (v != NULL) {
        id = (uint32_t)PyLong_AsUnsignedLong(v);
        goto done;
    }
    if (PyErr_Occurred()) {
        goto done;
    }
    if (o->nclasses >= o->max_classes) {
        o->classes_overflow++;
        goto done;
    }
    cls_info *ci = PyMem_Realloc(o->cls, (o->nclasses + 2) * sizeof(*ci));
    if (ci == NULL) {
        goto done;
    }
    o->cls = ci;
    memset(&ci[o->nclasses + 1], 0, sizeof(*ci));
    PyObject *num = PyLong_FromUnsignedLong(o->nclasses + 1);
    if (num == NULL || PyDict_SetItem(o->class_index, key, num) < 0 ||
        PyList_Append(o->class_names, name) < 0) {
        Py_XDECREF(num);
        PyDict_DelItem(o->class_index, key);
        goto done;
    }
    Py_DECREF(num);
    id = ++o->nclasses;
done:
    PyErr_Clear();
    Py_XDECREF(key);
    Py_DECREF(name);
    return id;
}

static PyObject *
class_name(ddl_order *o, uint32_t id)
{
    return PyList_GET_ITEM(o->class_names, (Py_ssize_t)id - 1); /* borrowed */
}

/* ---- edges -------------------------------------------------------------- */

static inline size_t
pair_hash(uint64_t k)
{
    k *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(k ^ (k >> 31));
}

/* Is the pair known? */
static inline int
pair_known(ddl_order *o, uint64_t k)
{
    if (o->pkeys == NULL) {
        return 0;
    }
    for (size_t i = pair_hash(k) & o->pmask;; i = (i + 1) & o->pmask) {
        if (o->pkeys[i] == k) {
            return 1;
        }
        if (o->pkeys[i] == 0) {
            return 0;
        }
    }
}

static int
pair_add(ddl_order *o, uint64_t k)
{
    if (o->pkeys == NULL || (o->pcount + 1) * 2 > o->pmask + 1) {
        size_t size = o->pkeys == NULL ? 256 : (o->pmask + 1) * 2;
        uint64_t *keys = PyMem_Calloc(size, sizeof(uint64_t));
        if (keys == NULL) {
            return -1;
        }
        for (size_t i = 0; o->pkeys != NULL && i <= o->pmask; i++) {
            if (o->pkeys[i] != 0) {
                size_t j = pair_hash(o->pkeys[i]) & (size - 1);
                while (keys[j] != 0) {
                    j = (j + 1) & (size - 1);
                }
                keys[j] = o->pkeys[i];
            }
        }
        PyMem_Free(o->pkeys);
        o->pkeys = keys;
        o->pmask = size - 1;
    }
    size_t i = pair_hash(k) & o->pmask;
    while (o->pkeys[i] != 0) {
        i = (i + 1) & o->pmask;
    }
    o->pkeys[i] = k;
    o->pcount++;
    return 0;
}

/* The current stack: a tuple of (filename, line, function), leaf first. */
static PyObject *
stack_now(void)
{
    ddl_raw_frame raw[DDL_ORDER_STACK];
    int n = ddl_stack_raw(raw, DDL_ORDER_STACK);
    if (n < 0) {
        n = DDL_ORDER_STACK;
    }
    PyObject *t = PyTuple_New(n);
    if (t == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyCodeObject *co = (PyCodeObject *)raw[i].code;
        int line = raw[i].lasti >= 0 ? PyCode_Addr2Line(co, raw[i].lasti)
                                     : co->co_firstlineno;
        PyObject *fr =
            Py_BuildValue("(OiO)", co->co_filename, line, ddl_code_name(co));
        if (fr == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, fr);
    }
    return t;
}

/* A new edge from -> to; its number, or -1 (full, out of memory). */
static int64_t
edge_add(ddl_order *o, uint32_t from, uint32_t to, uintptr_t actor)
{
    if (o->nedges >= o->max_edges) {
        o->edges_overflow++;
        return -1;
    }
    if (o->nedges == o->edges_cap) {
        uint32_t cap = o->edges_cap ? o->edges_cap * 2 : 64;
        edge_info *e = PyMem_Realloc(o->edges, cap * sizeof(*e));
        if (e == NULL) {
            return -1;
        }
        o->edges = e;
        o->edges_cap = cap;
    }
    cls_info *c = &o->cls[from];
    if (c->nout == c->cap) {
        uint32_t cap = c->cap ? c->cap * 2 : 4;
        uint32_t *out = PyMem_Realloc(c->out, cap * sizeof(uint32_t));
        if (out == NULL) {
            return -1;
        }
        c->out = out;
        c->cap = cap;
    }
    if (pair_add(o, (uint64_t)from << 32 | to) < 0) {
        return -1;
    }
    PyObject *stack = stack_now();
    PyObject *thread = PyLong_FromSize_t((size_t)actor);
    if (stack == NULL || thread == NULL) {
        PyErr_Clear();
    }
    uint32_t n = o->nedges++;
    o->edges[n] = (edge_info){from, to, stack, thread};
    c->out[c->nout++] = n;
    return n;
}

/* Is there a path from -> ... -> to? Then cls[x].via links it back from
 * to (each class's via: the edge it was reached by). */
static int
path_exists(ddl_order *o, uint32_t from, uint32_t to)
{
    if (o->dfs == NULL) {
        return 0;
    }
    uint32_t mark = ++o->mark;
    uint32_t sp = 0;
    o->dfs[sp++] = from;
    o->cls[from].mark = mark;
    o->cls[from].via = 0;
    while (sp > 0) {
        uint32_t c = o->dfs[--sp];
        cls_info *ci = &o->cls[c];
        for (uint32_t i = 0; i < ci->nout; i++) {
            uint32_t en = ci->out[i];
            uint32_t d = o->edges[en].to;
            if (o->cls[d].mark == mark) {
                continue;
            }
            o->cls[d].mark = mark;
            o->cls[d].via = en + 1;
            if (d == to) {
                return 1;
            }
            o->dfs[sp++] = d; /* each class at most once: sp < nclasses */
        }
    }
    return 0;
}

/* ---- reports ------------------------------------------------------------ */

static PyObject *
edge_dict(ddl_order *o, uint32_t en)
{
    edge_info *e = &o->edges[en];
    return Py_BuildValue("{sOsOsOsO}", "held", class_name(o, e->from),
                         "acquired", class_name(o, e->to), "stack",
                         e->stack != NULL ? e->stack : Py_None, "thread",
                         e->thread != NULL ? e->thread : Py_None);
}

static void
signal_reporter(ddl_order *o)
{
    if (!o->signalled && o->wake != NULL) {
        o->signalled = 1;
        PyThread_release_lock(o->wake);
    }
}

static void
add_report(ddl_order *o, PyObject *report)
{
    if (report != NULL && PyList_Append(o->reports, report) == 0) {
        signal_reporter(o);
    }
    Py_XDECREF(report);
}

/* The new edge en (a -> b) closed a cycle b -> ... -> a: report it once
 * per set of classes. */
static void
report_cycle(ddl_order *o, uint32_t en)
{
    uint32_t a = o->edges[en].from, b = o->edges[en].to;
    PyObject *edges = PyList_New(0), *locks = PyList_New(0);
    PyObject *ids = PyList_New(0), *key = NULL;
    if (edges == NULL || locks == NULL || ids == NULL) {
        goto done;
    }
    /* the path b -> ... -> a, walked back from a, then the new edge */
    uint32_t path[DDL_ORDER_MAX_HELD * 4];
    uint32_t n = 0;
    for (uint32_t c = a; c != b && n < sizeof(path) / sizeof(path[0]);) {
        uint32_t via = o->cls[c].via;
        if (via == 0) {
            break;
        }
        path[n++] = via - 1;
        c = o->edges[via - 1].from;
    }
    for (uint32_t i = n; i > 0; i--) {
        PyObject *d = edge_dict(o, path[i - 1]);
        if (d == NULL || PyList_Append(edges, d) < 0) {
            Py_XDECREF(d);
            goto done;
        }
        Py_DECREF(d);
    }
    PyObject *d = edge_dict(o, en);
    if (d == NULL || PyList_Append(edges, d) < 0) {
        Py_XDECREF(d);
        goto done;
    }
    Py_DECREF(d);
    /* the locks in cycle order, from the one the new edge acquires */
    for (uint32_t i = n; i > 0; i--) {
        uint32_t f = o->edges[path[i - 1]].from;
        PyObject *num = PyLong_FromUnsignedLong(f);
        if (num == NULL || PyList_Append(ids, num) < 0 ||
            PyList_Append(locks, class_name(o, f)) < 0) {
            Py_XDECREF(num);
            goto done;
        }
        Py_DECREF(num);
    }
    {
        PyObject *num = PyLong_FromUnsignedLong(a);
        if (num == NULL || PyList_Append(ids, num) < 0 ||
            PyList_Append(locks, class_name(o, a)) < 0) {
            Py_XDECREF(num);
            goto done;
        }
        Py_DECREF(num);
    }
    if (PyList_Sort(ids) < 0 || (key = PyList_AsTuple(ids)) == NULL) {
        goto done;
    }
    int seen = PySet_Contains(o->seen, key);
    if (seen != 0 || PySet_Add(o->seen, key) < 0) {
        goto done;
    }
    o->inversions++;
    add_report(o, Py_BuildValue("{sssOsO}", "kind", "inversion", "locks",
                                locks, "edges", edges));
done:
    PyErr_Clear();
    Py_XDECREF(edges);
    Py_XDECREF(locks);
    Py_XDECREF(ids);
    Py_XDECREF(key);
}

static void
report_nesting(ddl_order *o, uint32_t c, uintptr_t actor)
{
    if (o->cls[c].nested_report) {
        return;
    }
    o->cls[c].nested_report = 1;
    o->same_class++;
    PyObject *stack = stack_now();
    PyObject *thread = PyLong_FromSize_t((size_t)actor);
    if (stack != NULL && thread != NULL) {
        PyObject *name = class_name(o, c);
        add_report(o, Py_BuildValue("{sss[OO]s[{sOsOsOsO}]}", "kind",
                                    "same-class", "locks", name, name, "edges",
                                    "held", name, "acquired", name, "stack",
                                    stack, "thread", thread));
    }
    PyErr_Clear();
    Py_XDECREF(stack);
    Py_XDECREF(thread);
}

/* ---- the acquire and release paths -------------------------------------- */

void
ddl_order_acquired(ddl_state *st, PyObject *obj, ddl_prof *p, PyObject *target,
                   uintptr_t actor, int is_try, unsigned long depth)
{
    ddl_order *o = st->order;
    if (o == NULL || !st->lock_order) {
        return;
    }
    if (o->busy || o->reporter == PyThread_get_thread_ident()) {
        o->skipped++;
        return;
    }
    o->busy = 1;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    o->acquires++;
    cmap_ent *known = cmap_find(o, obj);
    uint32_t c;
    if (known != NULL) {
        c = known->cls;
    }
    else {
        c = class_of(st, o, p, target != NULL ? target : obj);
        cmap_put(o, obj, c);
    }
    /* the held classes, copied: making an edge allocates, and what that
     * runs (a finalizer releasing a lock) may change the lists */
    uint32_t held[DDL_ORDER_MAX_HELD];
    int nheld = 0;
    held_list *l = list_find(o, actor);
    if (l != NULL) {
        for (int i = l->n - 1; i >= 0; i--) {
            if (l->e[i].obj == obj) {
                l->e[i].depth += depth; /* re-entered: no new order */
                goto done;
            }
        }
        for (int i = 0; i < l->n; i++) {
            held[nheld++] = l->e[i].cls;
        }
    }
    if (c != 0 && !is_try) {
        for (int i = 0; i < nheld; i++) {
            uint32_t h = held[i];
            if (h == 0) {
                continue;
            }
            if (h == c) {
                report_nesting(o, c, actor);
                continue;
            }
            uint64_t k = (uint64_t)h << 32 | c;
            if (pair_known(o, k)) {
                continue;
            }
            int64_t en = edge_add(o, h, c, actor);
            if (en >= 0 && path_exists(o, c, h)) {
                report_cycle(o, (uint32_t)en);
            }
        }
    }
    l = list_get(o, actor);
    if (l != NULL && list_push(o, l, obj, c, depth) < 0) {
        list_drop_if_empty(o, (int)(l - o->lists));
    }
done:
    PyErr_Restore(et, ev, etb);
    o->busy = 0;
}

/* Remove a level (or all) of obj from list i; 1 when found there. */
static int
release_in(ddl_order *o, int i, PyObject *obj, int full)
{
    held_list *l = &o->lists[i];
    for (int k = l->n - 1; k >= 0; k--) {
        if (l->e[k].obj == obj) {
            if (full || l->e[k].depth <= 1) {
                list_remove_at(o, l, k);
                list_drop_if_empty(o, i);
            }
            else {
                l->e[k].depth--;
            }
            return 1;
        }
    }
    return 0;
}

void
ddl_order_released(ddl_state *st, PyObject *obj, uintptr_t actor, int full)
{
    ddl_order *o = st->order;
    if (o == NULL || o->nheld == 0) {
        return;
    }
    held_list *l = list_find(o, actor);
    if (l != NULL && release_in(o, (int)(l - o->lists), obj, full)) {
        return;
    }
    for (int i = 0; i < o->nlists; i++) {
        if (&o->lists[i] != l && release_in(o, i, obj, full)) {
            o->foreign_releases++;
            return;
        }
    }
}

void
ddl_order_forget(ddl_state *st, PyObject *obj)
{
    ddl_order *o = st->order;
    if (o == NULL) {
        return;
    }
    if (o->ccount > 0) {
        cmap_del(o, obj); /* its address may be another lock's next */
    }
    if (o->nheld == 0) {
        return;
    }
    for (int i = o->nlists - 1; i >= 0; i--) {
        held_list *l = &o->lists[i];
        for (int k = l->n - 1; k >= 0; k--) {
            if (l->e[k].obj == obj) {
                list_remove_at(o, l, k);
            }
        }
        list_drop_if_empty(o, i);
    }
}

int
ddl_order_is_try(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *blocking = nargs >= 1 ? args[0] : NULL;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_Check(k) &&
            PyUnicode_CompareWithASCIIString(k, "blocking") == 0) {
            blocking = args[nargs + i];
        }
    }
    if (blocking == NULL) {
        return 0;
    }
    if (PyBool_Check(blocking)) {
        return blocking == Py_False;
    }
    if (PyLong_CheckExact(blocking)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(blocking, &overflow);
        PyErr_Clear();
        return v == 0 && overflow == 0;
    }
    return 0; /* its truth would run code: counted as blocking */
}

/* ---- sessions ----------------------------------------------------------- */

static void
order_reset(ddl_order *o)
{
    for (uint32_t i = 0; i < o->nedges; i++) {
        Py_CLEAR(o->edges[i].stack);
        Py_CLEAR(o->edges[i].thread);
    }
    for (uint32_t c = 1; c <= o->nclasses && o->cls != NULL; c++) {
        PyMem_Free(o->cls[c].out);
    }
    PyMem_Free(o->cls);
    PyMem_Free(o->edges);
    PyMem_Free(o->pkeys);
    PyMem_Free(o->dfs);
    PyMem_Free(o->cmap);
    o->cmap = NULL;
    o->cmask = o->ccount = 0;
    o->cls = NULL;
    o->edges = NULL;
    o->pkeys = NULL;
    o->dfs = NULL;
    o->nclasses = o->nedges = o->edges_cap = 0;
    o->pmask = o->pcount = 0;
    o->nlists = 0;
    o->nheld = 0;
    o->last = 0;
    o->taken = 0;
    Py_CLEAR(o->class_index);
    Py_CLEAR(o->class_names);
    Py_CLEAR(o->reports);
    Py_CLEAR(o->seen);
    o->acquires = o->skipped = o->held_overflow = o->classes_overflow = 0;
    o->edges_overflow = o->inversions = o->same_class = 0;
    o->foreign_releases = 0;
}

static void
order_free(ddl_order *o)
{
    if (o == NULL) {
        return;
    }
    order_reset(o);
    for (int i = 0; i < o->lists_cap; i++) {
        PyMem_Free(o->lists[i].e);
    }
    PyMem_Free(o->lists);
    if (o->wake != NULL) {
        PyThread_free_lock(o->wake);
    }
    PyMem_Free(o);
}

static int
order_new(ddl_state *st)
{
    ddl_order *o = st->order;
    if (o == NULL) {
        o = PyMem_Calloc(1, sizeof(*o));
        if (o == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        o->cap_classes = DDL_ORDER_MAX_CLASSES;
        o->cap_edges = DDL_ORDER_MAX_EDGES;
        o->wake = PyThread_allocate_lock();
        if (o->wake == NULL) {
            PyMem_Free(o);
            PyErr_NoMemory();
            return -1;
        }
        PyThread_acquire_lock(o->wake, WAIT_LOCK); /* held: nothing to say */
        st->order = o;
    }
    return 0;
}

int
ddl_order_start(ddl_state *st)
{
    if (order_new(st) < 0) {
        return -1;
    }
    ddl_order *o = st->order;
    order_reset(o);
    o->max_classes = o->cap_classes;
    o->max_edges = o->cap_edges;
    o->class_index = PyDict_New();
    o->class_names = PyList_New(0);
    o->reports = PyList_New(0);
    o->seen = PySet_New(NULL);
    o->dfs = PyMem_Calloc((size_t)o->max_classes + 1, sizeof(uint32_t));
    o->cls = PyMem_Calloc(1, sizeof(cls_info));
    if (o->class_index == NULL || o->class_names == NULL ||
        o->reports == NULL || o->seen == NULL || o->dfs == NULL ||
        o->cls == NULL) {
        order_reset(o);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    o->busy = 0;
    return 0;
}

void
ddl_order_fork_child(ddl_state *st)
{
    ddl_order *o = st->order;
    if (o == NULL) {
        return;
    }
    o->busy = 0;
    o->reporter = 0;
    /* the waiting reporter thread is gone: a fresh signal lock */
    o->wake = PyThread_allocate_lock();
    if (o->wake != NULL) {
        PyThread_acquire_lock(o->wake, WAIT_LOCK);
    }
    o->signalled = 0;
    held_list *mine = list_find(o, (uintptr_t)PyThread_get_thread_ident());
    held_list keep = {0};
    if (mine != NULL) {
        keep = *mine;
        *mine = o->lists[0];
        o->lists[0] = keep;
    }
    o->nlists = mine != NULL ? 1 : 0;
    o->nheld = mine != NULL ? (size_t)keep.n : 0;
    o->last = 0;
}

#define SET_U64(k, v)                                                         \
    do {                                                                      \
        PyObject *o_ = PyLong_FromUnsignedLongLong((unsigned long long)(v));  \
        if (o_ == NULL || PyDict_SetItemString(d, (k), o_) < 0) {             \
            Py_XDECREF(o_);                                                   \
            return -1;                                                        \
        }                                                                     \
        Py_DECREF(o_);                                                        \
    } while (0)

int
ddl_order_stats(ddl_state *st, PyObject *d)
{
    ddl_order *o = st->order;
    if (o == NULL) {
        return 0;
    }
    SET_U64("order_acquires", o->acquires);
    SET_U64("order_classes", o->nclasses);
    SET_U64("order_edges", o->nedges);
    SET_U64("order_inversions", o->inversions);
    SET_U64("order_same_class", o->same_class);
    SET_U64("order_classes_overflow", o->classes_overflow);
    SET_U64("order_edges_overflow", o->edges_overflow);
    SET_U64("order_held_overflow", o->held_overflow);
    SET_U64("order_skipped", o->skipped);
    SET_U64("order_foreign_releases", o->foreign_releases);
    SET_U64("order_held", o->nheld);
    return 0;
}

/* ---- module functions --------------------------------------------------- */

static ddl_state *
mod_state(PyObject *module)
{
    return (ddl_state *)PyModule_GetState(module);
}

/* _order_reports(): every report of the session so far (a new list). */
static PyObject *
mod_order_reports(PyObject *module, PyObject *unused)
{
    ddl_order *o = mod_state(module)->order;
    if (o == NULL || o->reports == NULL) {
        return PyList_New(0);
    }
    return PyList_GetSlice(o->reports, 0, PyList_GET_SIZE(o->reports));
}

/* _order_take(): the reports not taken yet. */
static PyObject *
mod_order_take(PyObject *module, PyObject *unused)
{
    ddl_order *o = mod_state(module)->order;
    if (o == NULL || o->reports == NULL) {
        return PyList_New(0);
    }
    Py_ssize_t n = PyList_GET_SIZE(o->reports);
    PyObject *r = PyList_GetSlice(o->reports, o->taken, n);
    if (r != NULL) {
        o->taken = n;
    }
    return r;
}

/* _order_wait(timeout): wait (without the GIL) until a report is queued
 * or _order_wake() is called; True when signalled. */
static PyObject *
mod_order_wait(PyObject *module, PyObject *arg)
{
    ddl_order *o = mod_state(module)->order;
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (o == NULL || o->wake == NULL) {
        Py_RETURN_FALSE;
    }
    PyThread_type_lock wake = o->wake;
    long long us = timeout > 0 ? (long long)(timeout * 1e6) : 0;
    PyLockStatus r;
    Py_BEGIN_ALLOW_THREADS r = PyThread_acquire_lock_timed(wake, us, 0);
    Py_END_ALLOW_THREADS if (r == PY_LOCK_ACQUIRED)
    {
        if (mod_state(module)->order == o && o->wake == wake) {
            o->signalled = 0;
        }
        else {
            PyThread_release_lock(wake);
        }
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *
mod_order_wake(PyObject *module, PyObject *unused)
{
    ddl_order *o = mod_state(module)->order;
    if (o != NULL) {
        signal_reporter(o);
    }
    Py_RETURN_NONE;
}

/* _order_set_reporter(ident): the reporter thread's acquires (its logging)
 * are not checked. */
static PyObject *
mod_order_set_reporter(PyObject *module, PyObject *arg)
{
    ddl_order *o = mod_state(module)->order;
    unsigned long ident = PyLong_AsUnsignedLong(arg);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (o != NULL) {
        o->reporter = ident;
    }
    Py_RETURN_NONE;
}

/* _order_set_caps(classes, edges): the caps of the next sessions (tests
 * of the overflow counters lower them). */
static PyObject *
mod_order_set_caps(PyObject *module, PyObject *args)
{
    unsigned int classes, edges;
    if (!PyArg_ParseTuple(args, "II:_order_set_caps", &classes, &edges)) {
        return NULL;
    }
    ddl_state *st = mod_state(module);
    if (classes < 1 || classes > DDL_ORDER_MAX_CLASSES || edges < 1 ||
        edges > DDL_ORDER_MAX_EDGES) {
        PyErr_SetString(PyExc_ValueError, "cap out of range");
        return NULL;
    }
    if (st->order == NULL && order_new(st) < 0) {
        return NULL;
    }
    st->order->cap_classes = classes;
    st->order->cap_edges = edges;
    Py_RETURN_NONE;
}

static PyMethodDef order_methods[] = {
    {"_order_reports", mod_order_reports, METH_NOARGS, NULL},
    {"_order_take", mod_order_take, METH_NOARGS, NULL},
    {"_order_wait", mod_order_wait, METH_O, NULL},
    {"_order_wake", mod_order_wake, METH_NOARGS, NULL},
    {"_order_set_reporter", mod_order_set_reporter, METH_O, NULL},
    {"_order_set_caps", mod_order_set_caps, METH_VARARGS, NULL},
    {NULL},
};

int
ddl_order_init(PyObject *module, ddl_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, order_methods);
}

void
ddl_order_clear(ddl_state *st)
{
    order_free(st->order);
    st->order = NULL;
}
