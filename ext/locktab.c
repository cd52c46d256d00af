/* The table of profiled native locks (lock.c): what ddlock knows of each
 * lock -- its creation site, name and kind (ddl_prof) -- kept off the
 * object in a table keyed by its address, and the sampled holds in
 * progress. */
#include "locktab.h"

#include <string.h>

/* The table of profiled native locks (lock.c): what ddlock knows of each,
 * kept off the object, keyed by its address; and the sampled holds in
 * progress.
 *
 * Open addressing on an index of 32-bit entry numbers (linear probing,
 * rebuilt at 3/4 full, grown when half of it is live entries), entries in
 * chunks that never move: a ddl_prof pointer stays valid while its lock lives,
 * whatever is added or removed meanwhile (the record path runs Python code). A
 * removal leaves its index slot marked (lookups probe past it) until the
 * next rebuild. 32 bytes an entry plus 5-11 bytes of index. */

#define LT_CHUNK 1024
#define LT_MIN_INDEX 1024

static inline size_t
lt_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p >> 4;
    x *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(x ^ (x >> 29));
}

static inline lt_entry *
lt_entry_at(ddl_locktab *t, uint32_t n)
{
    return &t->chunks[n / LT_CHUNK][n % LT_CHUNK];
}

/* Index slots: LT_EMPTY, LT_GONE (a removed entry's, probed past), or an
 * entry number + LT_FIRST. */
#define LT_EMPTY 0u
#define LT_GONE 1u
#define LT_FIRST 2u

static lt_entry *
lt_find(ddl_locktab *t, PyObject *key, size_t *slot)
{
    if (t == NULL || t->count == 0) {
        return NULL;
    }
    size_t i = lt_hash(key) & t->mask;
    for (;;) {
        uint32_t n = t->index[i];
        if (n == LT_EMPTY) {
            return NULL;
        }
        if (n != LT_GONE) {
            lt_entry *e = lt_entry_at(t, n - LT_FIRST);
            if (e->key == key) {
                if (slot != NULL) {
                    *slot = i;
                }
                return e;
            }
        }
        i = (i + 1) & t->mask;
    }
}

/* Rebuild the index at size (dropping the removed entries' slots). */
static int
lt_rehash(ddl_locktab *t, size_t size)
{
    uint32_t *index = PyMem_Calloc(size, sizeof(uint32_t));
    if (index == NULL) {
        return -1;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        uint32_t n = t->index[i];
        if (n < LT_FIRST) {
            continue;
        }
        size_t j = lt_hash(lt_entry_at(t, n - LT_FIRST)->key) & (size - 1);
        while (index[j] != LT_EMPTY) {
            j = (j + 1) & (size - 1);
        }
        index[j] = n;
    }
    PyMem_Free(t->index);
    t->index = index;
    t->mask = size - 1;
    t->filled = t->count;
    return 0;
}

/* A fresh entry for key, which must not be in the table (a new object:
 * an entry goes when its object is freed), or NULL (out of memory). */
static lt_entry *
lt_insert(ddl_locktab *t, PyObject *key)
{
    if ((t->filled + 1) * 4 > (t->mask + 1) * 3) {
        /* grow when live entries fill half, else just drop the removed */
        size_t size =
            (t->count + 1) * 2 > t->mask + 1 ? (t->mask + 1) * 2 : t->mask + 1;
        if (lt_rehash(t, size) < 0) {
            return NULL;
        }
    }
    uint32_t n;
    if (t->free_head != 0) {
        n = t->free_head - 1;
        t->free_head = (uint32_t)lt_entry_at(t, n)->prof.site_lasti;
    }
    else {
        if (t->used >= (size_t)UINT32_MAX - LT_FIRST) {
            return NULL;
        }
        if (t->used == t->nchunks * LT_CHUNK) {
            lt_entry **chunks =
                PyMem_Realloc(t->chunks, (t->nchunks + 1) * sizeof(*chunks));
            if (chunks == NULL) {
                return NULL;
            }
            t->chunks = chunks;
            chunks[t->nchunks] = PyMem_Calloc(LT_CHUNK, sizeof(lt_entry));
            if (chunks[t->nchunks] == NULL) {
                return NULL;
            }
            t->nchunks++;
        }
        n = (uint32_t)t->used++;
    }
    lt_entry *e = lt_entry_at(t, n);
    e->key = key;
    e->prof = (ddl_prof){NULL, NULL, -1, 0, 0, 0, 0};
    size_t i = lt_hash(key) & t->mask;
    while (t->index[i] >= LT_FIRST) {
        i = (i + 1) & t->mask;
    }
    if (t->index[i] == LT_EMPTY) {
        t->filled++;
    }
    t->index[i] = n + LT_FIRST;
    t->count++;
    return e;
}

/* Remove the entry at index slot i; returns its prof to clear (the caller
 * drops its references once the table is consistent). */
static ddl_prof
lt_remove_at(ddl_locktab *t, size_t i)
{
    uint32_t n = t->index[i] - LT_FIRST;
    lt_entry *e = lt_entry_at(t, n);
    ddl_prof prof = e->prof;
    e->key = NULL;
    e->prof.site_code = e->prof.name = NULL;
    e->prof.site_lasti = (int)t->free_head;
    t->free_head = n + 1;
    t->count--;
    t->index[i] = LT_GONE;
    return prof;
}

static ddl_locktab *
lt_new(void)
{
    ddl_locktab *t = PyMem_Calloc(1, sizeof(ddl_locktab));
    if (t == NULL) {
        return NULL;
    }
    t->index = PyMem_Calloc(LT_MIN_INDEX, sizeof(uint32_t));
    if (t->index == NULL) {
        PyMem_Free(t);
        return NULL;
    }
    t->mask = LT_MIN_INDEX - 1;
    return t;
}

/* Empty the table (every lock unprofiled), keeping its memory small. */
static void
lt_clear(ddl_locktab *t)
{
    if (t == NULL) {
        return;
    }
    lt_entry **chunks = t->chunks;
    size_t nchunks = t->nchunks, used = t->used;
    t->chunks = NULL;
    t->nchunks = t->used = t->count = t->filled = 0;
    t->free_head = 0;
    t->npend = 0;
    memset(t->index, 0, (t->mask + 1) * sizeof(uint32_t));
    Py_CLEAR(t->targets);
    for (size_t n = 0; n < used; n++) {
        lt_entry *e = &chunks[n / LT_CHUNK][n % LT_CHUNK];
        if (e->key != NULL) {
            ddl_prof_clear(&e->prof);
        }
    }
    for (size_t c = 0; c < nchunks; c++) {
        PyMem_Free(chunks[c]);
    }
    PyMem_Free(chunks);
}

/* The key of obj in t->targets (new reference). */
static PyObject *
target_key(PyObject *obj)
{
    return PyLong_FromVoidPtr(obj);
}

/* The object labelling entry e of obj: its target while that lives. Once
 * it is gone (a Condition whose lock lives on), the entry labels obj
 * itself, with no creation binding (it named the Condition). */
static PyObject *
lt_target(ddl_locktab *t, lt_entry *e, PyObject *obj)
{
    PyObject *key = target_key(obj);
    PyObject *ref = key != NULL && t->targets != NULL
                        ? PyDict_GetItem(t->targets, key)
                        : NULL;
    PyObject *target = ref != NULL ? ddl_weakref_peek(ref) : NULL;
    if (target == NULL) {
        e->prof.has_target = 0;
        e->prof.site_direct = 0;
        if (ref != NULL && PyDict_DelItem(t->targets, key) < 0) {
            PyErr_Clear();
        }
    }
    Py_XDECREF(key);
    return target != NULL ? target : obj;
}

ddl_prof *
ddl_lock_prof(ddl_state *st, PyObject *obj, PyObject **target)
{
    lt_entry *e = lt_find(st->locktab, obj, NULL);
    if (e == NULL) {
        return NULL;
    }
    if (target != NULL) {
        *target = e->prof.has_target ? lt_target(st->locktab, e, obj) : obj;
    }
    return &e->prof;
}

int
ddl_is_native_lock(ddl_state *st, PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    return (st->native_lock_type != NULL &&
            PyType_IsSubtype(tp, (PyTypeObject *)st->native_lock_type)) ||
           (st->native_rlock_type != NULL &&
            PyType_IsSubtype(tp, (PyTypeObject *)st->native_rlock_type));
}

int
ddl_lock_register(ddl_state *st, PyObject *obj, int kind, PyObject *target,
                  PyObject *code, int lasti, int direct)
{
    ddl_locktab *t = st->locktab;
    int has_target = target != NULL && target != obj;
    if (has_target) {
        if (t->targets == NULL && (t->targets = PyDict_New()) == NULL) {
            return -1;
        }
        PyObject *ref = PyWeakref_NewRef(target, NULL);
        PyObject *key = ref != NULL ? target_key(obj) : NULL;
        int rc = key != NULL ? PyDict_SetItem(t->targets, key, ref) : -1;
        Py_XDECREF(key);
        Py_XDECREF(ref);
        if (rc < 0) {
            return -1;
        }
    }
    lt_entry *e = lt_find(t, obj, NULL);
    if (e == NULL) {
        e = lt_insert(t, obj);
        if (e == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    ddl_prof old = e->prof;
    e->prof.site_code = Py_XNewRef(code);
    e->prof.site_lasti = lasti;
    e->prof.kind = (unsigned char)kind;
    e->prof.name = NULL;
    e->prof.name_done = 0;
    e->prof.has_target = (unsigned char)has_target;
    e->prof.site_direct = (unsigned char)direct;
    if (old.site_code != NULL || old.name != NULL) {
        ddl_prof_clear(&old);
    }
    return 0;
}

/* ---- pending sampled holds ---------------------------------------------- */

ddl_pending *
ddl_pend_find(ddl_locktab *t, PyObject *obj, unsigned long owner)
{
    for (int i = t->npend - 1; i >= 0; i--) {
        if (t->pend[i].obj == obj && t->pend[i].owner == owner) {
            return &t->pend[i];
        }
    }
    return NULL;
}

void
ddl_pend_remove(ddl_locktab *t, ddl_pending *p)
{
    *p = t->pend[--t->npend];
}

/* Forget obj's pending holds (it is being freed, or re-initialised). */
static void
pend_forget(ddl_locktab *t, PyObject *obj)
{
    for (int i = t->npend - 1; i >= 0; i--) {
        if (t->pend[i].obj == obj) {
            ddl_pend_remove(t, &t->pend[i]);
        }
    }
}

ddl_pending *
ddl_pend_add(ddl_locktab *t, PyObject *obj, unsigned long owner)
{
    ddl_pending *old = ddl_pend_find(t, obj, owner);
    if (old != NULL) {
        ddl_pend_remove(t, old); /* a stale one (a lost release) */
    }
    if (t->npend == DDL_PEND_CAP) {
        return NULL;
    }
    ddl_pending *p = &t->pend[t->npend++];
    p->obj = obj;
    p->owner = owner;
    return p;
}

void
ddl_locktab_forget(ddl_locktab *t, PyObject *obj)
{
    if (t->npend > 0) {
        pend_forget(t, obj);
    }
    size_t slot;
    lt_entry *e = lt_find(t, obj, &slot);
    if (e != NULL) {
        int has_target = e->prof.has_target;
        ddl_prof prof = lt_remove_at(t, slot);
        if (!has_target && prof.name == NULL) {
            Py_XDECREF(prof.site_code); /* the common case, inline */
            return;
        }
        if (has_target && t->targets != NULL) {
            /* a deallocation may happen while an exception is raised */
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyObject *key = target_key(obj);
            if (key == NULL || PyDict_DelItem(t->targets, key) < 0) {
                PyErr_Clear();
            }
            Py_XDECREF(key);
            PyErr_Restore(et, ev, etb);
        }
        ddl_prof_clear(&prof);
    }
}

int
ddl_locktab_add(ddl_locktab *t, PyObject *obj, PyObject *code, int lasti,
                int kind, int direct)
{
    lt_entry *e = lt_insert(t, obj);
    if (e == NULL) {
        return -1;
    }
    e->prof.site_code = code; /* the reference moves */
    e->prof.site_lasti = lasti;
    e->prof.kind = (unsigned char)kind;
    e->prof.site_direct = (unsigned char)direct;
    return 0;
}

ddl_locktab *
ddl_locktab_new(void)
{
    return lt_new();
}

void
ddl_locktab_clear(ddl_locktab *t)
{
    lt_clear(t);
}

void
ddl_locktab_free(ddl_locktab *t)
{
    if (t != NULL) {
        lt_clear(t);
        PyMem_Free(t->index);
        PyMem_Free(t);
    }
}
