/* Profiling state of the Python-level primitives (threading.Semaphore,
 * BoundedSemaphore, asyncio's Lock, Semaphore, BoundedSemaphore and the
 * lock of an asyncio.Condition, threading's pure-Python RLock and gevent's
 * lock): one Tracker per profiled object, kept off the object in a table
 * keyed by its address (the object's attributes, pickling and copies are
 * the native ones). The tracker lives as long as the object: it is the
 * callback of a weak reference to it, which the table owns; when the
 * object goes, the callback removes the entry.
 *
 * A tracker holds the object's ddl_prof (creation site, name, kind) and
 * its sampled hold in progress: one, nested by re-entry, for the
 * exclusive kinds; one per holder (thread, task or greenlet) for the
 * semaphores. hooks.c calls it around the original methods.
 */
#include "tracker.h"

#include "order.h"

#include <string.h>

struct ddl_trackertab {
    PyObject **keys;      /* borrowed; NULL empty */
    ddl_tracker **values; /* borrowed (owned by the weak references) */
    size_t mask;
    size_t count;
};

static inline size_t
tt_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p >> 4;
    x *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(x ^ (x >> 29));
}

static ddl_trackertab *
tt_new(size_t size)
{
    ddl_trackertab *t = PyMem_Calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->keys = PyMem_Calloc(size, sizeof(PyObject *));
    t->values = PyMem_Calloc(size, sizeof(ddl_tracker *));
    if (t->keys == NULL || t->values == NULL) {
        PyMem_Free(t->keys);
        PyMem_Free(t->values);
        PyMem_Free(t);
        return NULL;
    }
    t->mask = size - 1;
    return t;
}

static void
tt_free(ddl_trackertab *t)
{
    if (t != NULL) {
        PyMem_Free(t->keys);
        PyMem_Free(t->values);
        PyMem_Free(t);
    }
}

static ddl_tracker *
tt_find(ddl_trackertab *t, PyObject *key, size_t *slot)
{
    if (t == NULL || t->count == 0) {
        return NULL;
    }
    for (size_t i = tt_hash(key) & t->mask;; i = (i + 1) & t->mask) {
        if (t->keys[i] == NULL) {
            return NULL;
        }
        if (t->keys[i] == key) {
            if (slot != NULL) {
                *slot = i;
            }
            return t->values[i];
        }
    }
}

static void
tt_put(ddl_trackertab *t, PyObject *key, ddl_tracker *value)
{
    size_t i = tt_hash(key) & t->mask;
    while (t->keys[i] != NULL) {
        i = (i + 1) & t->mask;
    }
    t->keys[i] = key;
    t->values[i] = value;
    t->count++;
}

static int
tt_insert(ddl_state *st, PyObject *key, ddl_tracker *value)
{
    ddl_trackertab *t = st->trackertab;
    if ((t->count + 1) * 2 > t->mask + 1) {
        ddl_trackertab *bigger = tt_new((t->mask + 1) * 2);
        if (bigger == NULL) {
            return -1;
        }
        for (size_t i = 0; i <= t->mask; i++) {
            if (t->keys[i] != NULL) {
                tt_put(bigger, t->keys[i], t->values[i]);
            }
        }
        tt_free(t);
        st->trackertab = t = bigger;
    }
    tt_put(t, key, value);
    return 0;
}

static void
tt_remove_at(ddl_trackertab *t, size_t i)
{
    t->count--;
    size_t hole = i;
    for (size_t j = (i + 1) & t->mask; t->keys[j] != NULL;
         j = (j + 1) & t->mask) {
        size_t ideal = tt_hash(t->keys[j]) & t->mask;
        if (((j - ideal) & t->mask) >= ((j - hole) & t->mask)) {
            t->keys[hole] = t->keys[j];
            t->values[hole] = t->values[j];
            hole = j;
        }
    }
    t->keys[hole] = NULL;
    t->values[hole] = NULL;
}

ddl_tracker *
ddl_tracker_of(ddl_state *st, PyObject *obj)
{
    return tt_find(st->trackertab, obj, NULL);
}

/* ---- the Tracker -------------------------------------------------------- */

/* The weak reference's callback: the object is gone. */
static PyObject *
tracker_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    ddl_tracker *t = (ddl_tracker *)self;
    ddl_state *st = (ddl_state *)PyType_GetModuleState(Py_TYPE(self));
    size_t slot;
    if (st != NULL && tt_find(st->trackertab, t->key, &slot) == t) {
        tt_remove_at(st->trackertab, slot);
    }
    if (st != NULL && st->lock_order && t->key != NULL) {
        ddl_order_forget(st, t->key);
    }
    t->key = NULL;
    /* the table owned the weak reference that calls us; the call holds
     * what it needs (as for weakref.KeyedRef callbacks) */
    Py_CLEAR(t->ref);
    Py_RETURN_NONE;
}

static void
tracker_dealloc(PyObject *op)
{
    ddl_tracker *t = (ddl_tracker *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(t->ref);
    Py_CLEAR(t->target);
    Py_CLEAR(t->holder_task);
    ddl_prof_clear(&t->prof);
    PyMem_Free(t->ring);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
tracker_repr(PyObject *self)
{
    ddl_tracker *t = (ddl_tracker *)self;
    return PyUnicode_FromFormat("<ddlock tracker of a %s at %p>",
                                ddl_kind_names[t->prof.kind], t->key);
}

static PyType_Slot tracker_slots[] = {
    {Py_tp_dealloc, tracker_dealloc},
    {Py_tp_call, tracker_call},
    {Py_tp_repr, tracker_repr},
    {Py_tp_doc, "Profiling state of one Python-level primitive."},
    {0, NULL},
};

static PyType_Spec tracker_spec = {
    .name = "ddlock._ddlock.Tracker",
    .basicsize = sizeof(ddl_tracker),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = tracker_slots,
};

ddl_tracker *
ddl_tracker_new(ddl_state *st, PyObject *obj, int kind, PyObject *target,
                PyObject *code, int lasti, int direct)
{
    ddl_tracker *t = ddl_tracker_of(st, obj);
    if (t != NULL) {
        return t;
    }
    PyObject *tref = NULL;
    if (target != NULL && target != obj) {
        tref = PyWeakref_NewRef(target, NULL);
        if (tref == NULL) {
            return NULL;
        }
    }
    t = PyObject_New(ddl_tracker, st->tracker_type);
    if (t == NULL) {
        Py_XDECREF(tref);
        return NULL;
    }
    memset((char *)t + sizeof(PyObject), 0,
           sizeof(ddl_tracker) - sizeof(PyObject));
    t->prof.site_code = Py_XNewRef(code);
    t->prof.site_lasti = lasti;
    t->prof.kind = (unsigned char)kind;
    t->prof.has_target = tref != NULL;
    t->prof.site_direct = (unsigned char)direct;
    t->target = tref;
    t->key = obj;
    /* the weak reference calls the tracker when obj goes, and keeps it */
    t->ref = PyWeakref_NewRef(obj, (PyObject *)t);
    if (t->ref == NULL || tt_insert(st, obj, t) < 0) {
        Py_CLEAR(t->ref);
        Py_DECREF(t);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return NULL;
    }
    Py_DECREF(t); /* the weak reference holds it */
    st->primitives_created++;
    return t;
}

/* ---- sampled holds -------------------------------------------------------
 */

/* The object whose name labels t's samples (borrowed). */
static PyObject *
tracker_target(ddl_tracker *t)
{
    if (t->target == NULL) {
        return t->key;
    }
    PyObject *target = ddl_weakref_peek(t->target);
    if (target == NULL) {
        /* the labelling object (a Condition) is gone: t labels its own
         * object, with no creation binding (it named the Condition) */
        t->prof.has_target = 0;
        t->prof.site_direct = 0;
        Py_CLEAR(t->target);
        return t->key;
    }
    return target;
}

#define RING_CAP 4

static inline ddl_wait *
w_take(ddl_wait **w)
{
    ddl_wait *r = *w;
    *w = NULL;
    return r;
}

void
ddl_tracker_note_task(ddl_state *st, ddl_tracker *t, int asyncio)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *task = ddl_current_task(st, asyncio);
    if (task != NULL &&
        (t->holder_task == NULL || ddl_weakref_peek(t->holder_task) != task)) {
        PyObject *ref = PyWeakref_NewRef(task, NULL);
        if (ref == NULL) {
            PyErr_Clear();
        }
        Py_XSETREF(t->holder_task, ref);
    }
    Py_XDECREF(task);
    PyErr_Restore(et, ev, etb);
}

static void tracker_acquired(ddl_state *st, ddl_tracker *t, int mode,
                             int64_t t0, int restore_depth, ddl_wait **w);

void
ddl_tracker_acquired(ddl_state *st, ddl_tracker *t, int mode, int64_t t0,
                     int restore_depth)
{
    ddl_tracker_acquired_w(st, t, mode, t0, restore_depth, NULL);
}

void
ddl_tracker_acquired_w(ddl_state *st, ddl_tracker *t, int mode, int64_t t0,
                       int restore_depth, ddl_wait *w)
{
    if (ddl_kind_asyncio(t->prof.kind)) {
        ddl_tracker_note_task(st, t, 1);
    }
    else if (st->gevent_getcurrent != NULL) {
        /* gevent patched threading: its primitives are held by greenlets */
        ddl_tracker_note_task(st, t, 0);
    }
    else {
        t->holder = PyThread_get_thread_ident(); /* holder.c */
    }
    tracker_acquired(st, t, mode, t0, restore_depth, &w);
    if (w != NULL) {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
    }
}

/* w is set to NULL once the wait is ended. */
static void
tracker_acquired(ddl_state *st, ddl_tracker *t, int mode, int64_t t0,
                 int restore_depth, ddl_wait **w)
{
    int exclusive = ddl_kind_exclusive(t->prof.kind);
    int nested = exclusive && t->sampled && t->hold_gen == st->generation &&
                 restore_depth == 0;
    if (nested) {
        t->depth++; /* re-entered inside a sampled hold */
    }
    int64_t now = 0, wait = 0;
    double p;
    if (mode == DDL_ACQ_TIMED) {
        if (!ddl_sample_timed(st, t0, &now, &wait, &p)) {
            return;
        }
    }
    else {
        if (mode == DDL_ACQ_UNCONTENDED && !ddl_sample_uncontended(st)) {
            return;
        }
        p = st->capture_p;
        if (!(p > 0) || !st->running) {
            return;
        }
    }
    double weight = 1.0 / p;
    if (t->key == NULL ||
        ddl_wait_end(st, w_take(w), &t->prof, tracker_target(t), wait,
                     weight) != 0 ||
        nested) {
        return; /* a re-entrant acquire is counted; the hold stays outer */
    }
    if (now == 0) {
        now = ddl_monotonic_ns();
    }
    if (exclusive) {
        t->sampled = 1;
        t->acquired_ns = now;
        t->weight = weight;
        t->hold_gen = st->generation;
        t->depth = restore_depth > 0 ? restore_depth : 1;
        return;
    }
    if (t->ring == NULL) {
        t->ring = PyMem_Calloc(RING_CAP, sizeof(ddl_pending_hold));
        if (t->ring == NULL) {
            PyErr_Clear();
            return;
        }
        t->nring = 0;
    }
    if (t->nring == RING_CAP) {
        /* forget the oldest (released by someone else, or never) */
        memmove(&t->ring[0], &t->ring[1],
                (RING_CAP - 1) * sizeof(ddl_pending_hold));
        t->nring--;
        st->holds_dropped++;
    }
    ddl_pending_hold *h = &t->ring[t->nring++];
    h->actor = ddl_current_actor(st, t->prof.kind);
    h->generation = st->generation;
    h->acquired_ns = now;
    h->weight = weight;
}

void
ddl_tracker_released(ddl_state *st, ddl_tracker *t, int full)
{
    int64_t acquired_ns;
    double weight;
    if (ddl_kind_exclusive(t->prof.kind)) {
        if (!t->sampled) {
            return;
        }
        if (t->hold_gen != st->generation) {
            t->sampled = 0;
            return;
        }
        if (!full && --t->depth > 0) {
            return;
        }
        t->sampled = 0;
        t->depth = 0;
        acquired_ns = t->acquired_ns;
        weight = t->weight;
    }
    else {
        if (t->nring == 0) {
            return;
        }
        uintptr_t actor = ddl_current_actor(st, t->prof.kind);
        int found = -1;
        for (int i = t->nring - 1; i >= 0; i--) {
            if (t->ring[i].actor == actor &&
                t->ring[i].generation == st->generation) {
                found = i;
                break;
            }
        }
        if (found < 0) {
            return;
        }
        acquired_ns = t->ring[found].acquired_ns;
        weight = t->ring[found].weight;
        memmove(&t->ring[found], &t->ring[found + 1],
                (size_t)(t->nring - found - 1) * sizeof(ddl_pending_hold));
        t->nring--;
    }
    if (!st->running || t->key == NULL) {
        return;
    }
    int64_t hold = ddl_monotonic_ns() - acquired_ns;
    ddl_record(st, &t->prof, tracker_target(t), 0, hold < 0 ? 0 : hold, 1,
               weight);
}

/* ---- condition waits ----------------------------------------------------
 * A Condition (or what waits through one: an Event, a Barrier, a Future;
 * asyncio's Condition, Event and Queue) whose waits are profiled has a
 * tracker of its own, used for its waits only. */

const char *const ddl_wait_names[DDL_W_COUNT] = {
    "Condition", "Condition",         "Event",         "Barrier",
    "Future",    "asyncio.Condition", "asyncio.Event", "asyncio.Queue",
};

static const char *const wait_outcomes[] = {"notified", "timeout",
                                            "cancelled"};

ddl_tracker *
ddl_wait_tracker_new(ddl_state *st, PyObject *obj, int wait_type,
                     PyObject *target, PyObject *code, int lasti, int direct)
{
    ddl_tracker *t = ddl_tracker_of(st, obj);
    if (t != NULL) {
        return t;
    }
    int kind =
        wait_type >= DDL_W_ACONDITION ? DDL_K_ACONDITION : DDL_K_CONDITION;
    t = ddl_tracker_new(st, obj, kind, target, code, lasti, direct);
    if (t != NULL) {
        t->wait_type = wait_type;
        st->primitives_created--; /* counted as its lock's, or not at all */
    }
    return t;
}

void
ddl_tracker_waited(ddl_state *st, ddl_tracker *t, int64_t t0, int outcome)
{
    int64_t now, wait;
    double p;
    if (t->key == NULL || !ddl_sample_timed(st, t0, &now, &wait, &p)) {
        return;
    }
    ddl_record_wait(st, &t->prof, tracker_target(t),
                    ddl_wait_names[t->wait_type], wait_outcomes[outcome], wait,
                    1.0 / p);
}

/* ---- lock-order checking ------------------------------------------------ */

void
ddl_tracker_order_acquired(ddl_state *st, ddl_tracker *t, int is_try,
                           unsigned long depth)
{
    if (t->key == NULL || !st->running) {
        return;
    }
    PyObject *target =
        ddl_order_needs_target(st, t->key) ? tracker_target(t) : NULL;
    ddl_order_acquired(st, t->key, &t->prof, target,
                       ddl_current_actor(st, t->prof.kind), is_try, depth);
}

void
ddl_tracker_order_released(ddl_state *st, ddl_tracker *t, int full)
{
    if (t->key != NULL) {
        ddl_order_released(st, t->key, ddl_current_actor(st, t->prof.kind),
                           full);
    }
}

/* ---- module parts
 * --------------------------------------------------------
 */

ddl_prof *
ddl_profiled(ddl_state *st, PyObject *obj, PyObject **target)
{
    ddl_prof *p = ddl_lock_prof(st, obj, target);
    if (p == NULL) {
        ddl_tracker *t = ddl_tracker_of(st, obj);
        if (t != NULL && t->wait_type == DDL_W_NONE) {
            p = &t->prof;
            if (target != NULL) {
                *target = tracker_target(t);
            }
        }
    }
    return p;
}

int
ddl_trackers_init(PyObject *module, ddl_state *st)
{
    st->tracker_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &tracker_spec, NULL);
    if (st->tracker_type == NULL) {
        return -1;
    }
    st->trackertab = tt_new(64);
    if (st->trackertab == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

void
ddl_trackers_clear(ddl_state *st)
{
    /* the trackers stay with their weak references; only the table goes
     * (a callback after this finds no table) */
    tt_free(st->trackertab);
    st->trackertab = NULL;
    Py_CLEAR(st->tracker_type);
}
