/* Profiling of the primitives beyond Lock and RLock: threading.Semaphore,
 * BoundedSemaphore and Condition, asyncio.Lock, Semaphore, BoundedSemaphore
 * and Condition, and threading.Lock/RLock under gevent.
 *
 * The Python layer (ddlock/_primitives.py) patches each of them with a
 * subclass of the original. Every profiled object has a Tracker, its
 * profiling state: a ddl_lockbase with lock == NULL (creation site, cached
 * name, the pending sampled hold) whose name is searched as the name of its
 * owner, the user-visible primitive, and whose samples carry the owner's
 * `lock type`. It is the owner's `_ddl_tracker` attribute.
 *
 * - Semaphores and asyncio's locks have Python-level methods that count
 *   down to the next sampled uncontended acquire by testing the truth of
 *   one Countdown shared by all of them (the skips geometric as in lock.c),
 *   look at their `_ddl_hold` only while some sampled hold is pending (the
 *   shared list _prim_holds is not empty), and call C only to sample
 *   (Countdown._sample), to time a wait (Tracker._acquired) or to end a
 *   sampled hold (Tracker._release_hold).
 * - A threading.Condition's methods, and gevent's locks, are Hooks: method
 *   descriptors written in C (called like functions, no bound method on
 *   `obj.m()`) around the original methods or the Condition's lock. The
 *   sampling is lock.c's per-thread countdown; contention is detected
 *   without a clock by a non-blocking try first, as the locks do; the clock
 *   is read around the wait only. asyncio ones look at the lock's state
 *   (would the coroutine suspend?) before awaiting.
 */
#include "ddlock.h"

#include <math.h>
#include <string.h>

/* ---- kinds -------------------------------------------------------------- */

enum {
    K_LOCK = 0,
    K_RLOCK,
    K_SEMAPHORE,
    K_BSEMAPHORE,
    K_CONDITION,
    K_ALOCK,
    K_ASEMAPHORE,
    K_ABSEMAPHORE,
    K_ACONDITION,
    K_COUNT
};

static const char *const kind_names[K_COUNT] = {
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "asyncio.Lock",
    "asyncio.Semaphore",
    "asyncio.BoundedSemaphore",
    "asyncio.Condition",
};

/* One holder at a time (a pending sampled hold is nested by re-entry) or a
 * counting semaphore (holds tracked per holder). */
static inline int
kind_exclusive(int kind)
{
    return kind != K_SEMAPHORE && kind != K_BSEMAPHORE &&
           kind != K_ASEMAPHORE && kind != K_ABSEMAPHORE;
}

static inline int
kind_asyncio(int kind)
{
    return kind >= K_ALOCK;
}

/* ---- the Tracker -------------------------------------------------------- */

#define RING_CAP 4

typedef struct {
    uintptr_t actor;     /* thread ident, task or greenlet address */
    uint64_t generation; /* profiling session of the sample */
    int64_t acquired_ns;
    double weight;
} pending_hold;

typedef struct {
    ddl_lockbase base; /* base.lock == NULL; base.sampled: hold pending */
    PyObject *owner;   /* borrowed, compared by identity only */
    int kind;
    int depth;         /* exclusive kinds: nesting of the pending hold */
    uint64_t hold_gen; /* generation of the pending hold */
    char inner_native; /* Condition over a _thread lock: try first */
    /* Condition: the wrapped lock and its bound methods */
    PyObject *inner;
    PyObject *inner_acquire;
    PyObject *inner_release;
    PyObject *inner_enter;
    PyObject *inner_exit;
    PyObject *inner_release_save;
    PyObject *inner_acquire_restore;
    /* semaphores: sampled holds in progress, by holder (allocated lazily) */
    pending_hold *ring;
    int nring;
    /* its holder's _ddl_hold is this tracker, and st->prim_holds has an
     * item for it (publish_hold) */
    int published;
} ddl_tracker;

/* The countdown of the Python-level primitives (one, module state). */
typedef struct {
    PyObject_HEAD int64_t rest; /* events still to skip */
    uint64_t gen;               /* profiling session rest was drawn in */
    ddl_state *st; /* its module's (alive while its type, hence it, is) */
} ddl_countdown;

PyObject *
ddl_name_target(ddl_lockbase *lk)
{
    if (lk->lock == NULL && ((ddl_tracker *)lk)->owner != NULL) {
        return ((ddl_tracker *)lk)->owner;
    }
    if (lk->is_rlock && ((ddl_rlock *)lk)->cond_ref != NULL) {
        PyObject *cond = ddl_weakref_peek(((ddl_rlock *)lk)->cond_ref);
        if (cond != NULL) {
            return cond;
        }
    }
    return (PyObject *)lk;
}

static inline ddl_state *
tracker_state(ddl_tracker *t)
{
    return (ddl_state *)PyType_GetModuleState(Py_TYPE(t));
}

/* Identity of the running task (asyncio task, gevent greenlet) as a new
 * reference, or NULL (no exception) when there is none. */
static PyObject *
current_asyncio_task(ddl_state *st)
{
    if (st->get_running_loop == NULL || st->current_task == NULL) {
        return NULL;
    }
    PyObject *loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL || loop == Py_None) {
        Py_XDECREF(loop);
        PyErr_Clear();
        return NULL;
    }
    PyObject *task;
    if (st->current_tasks != NULL &&
        Py_TYPE(loop)->tp_hash == PyBaseObject_Type.tp_hash) {
        /* what current_task(loop) returns, read from its registry: a
         * lookup by identity (the loop's hash is object's own) instead of
         * a call */
        task = PyDict_GetItemWithError(st->current_tasks, loop);
        Py_XINCREF(task);
    }
    else {
        task = PyObject_CallOneArg(st->current_task, loop);
    }
    Py_DECREF(loop);
    if (task == NULL || task == Py_None) {
        Py_XDECREF(task);
        PyErr_Clear();
        return NULL;
    }
    return task;
}

static PyObject *
current_greenlet(ddl_state *st)
{
    if (st->gevent_getcurrent == NULL) {
        return NULL;
    }
    PyObject *g = PyObject_CallNoArgs(st->gevent_getcurrent);
    if (g == NULL || g == Py_None) {
        Py_XDECREF(g);
        PyErr_Clear();
        return NULL;
    }
    return g;
}

/* Who holds a semaphore: the task for asyncio ones, the greenlet under
 * gevent, else the thread. */
static uintptr_t
current_actor(ddl_state *st, int kind)
{
    PyObject *who =
        kind_asyncio(kind) ? current_asyncio_task(st) : current_greenlet(st);
    if (who != NULL) {
        uintptr_t a = (uintptr_t)who;
        Py_DECREF(who);
        return a;
    }
    return (uintptr_t)PyThread_get_thread_ident();
}

/* A successful acquire. mode: */
enum {
    ACQ_UNCONTENDED, /* sampled by the countdown */
    ACQ_SAMPLED,     /* already chosen by the countdown */
    ACQ_TIMED        /* waited since t0: sampled like a contended acquire */
};

static void
tracker_acquired(ddl_state *st, ddl_tracker *t, int mode, int64_t t0,
                 int restore_depth)
{
    int exclusive = kind_exclusive(t->kind);
    int nested = exclusive && t->base.sampled &&
                 t->hold_gen == st->generation && restore_depth == 0;
    if (nested) {
        t->depth++; /* re-entered inside a sampled hold */
    }
    int64_t now = 0, wait = 0;
    double p;
    if (mode == ACQ_TIMED) {
        if (!st->running) {
            return;
        }
        now = ddl_monotonic_ns();
        wait = now - t0;
        if (wait < 0) {
            wait = 0;
        }
        p = ddl_contended_p(st, wait);
        if (!(p > 0) || (p < 1.0 && ddl_rand_unit() > p)) {
            return;
        }
    }
    else {
        if (mode == ACQ_UNCONTENDED && !ddl_sample_uncontended(st)) {
            return;
        }
        p = st->capture_p;
        if (!(p > 0) || !st->running) {
            return;
        }
    }
    double weight = 1.0 / p;
    if (ddl_lock_record(st, &t->base, wait, 0, 0, weight) != 0 || nested) {
        return; /* a re-entrant acquire is counted; the hold stays outer */
    }
    if (now == 0) {
        now = ddl_monotonic_ns();
    }
    if (exclusive) {
        t->base.sampled = 1;
        t->base.acquired_ns = now;
        t->base.weight = weight;
        t->hold_gen = st->generation;
        t->depth = restore_depth > 0 ? restore_depth : 1;
        return;
    }
    if (t->ring == NULL) {
        t->ring = PyMem_Calloc(RING_CAP, sizeof(pending_hold));
        if (t->ring == NULL) {
            PyErr_Clear();
            return;
        }
        t->nring = 0;
    }
    if (t->nring == RING_CAP) {
        /* forget the oldest (released by someone else, or never) */
        memmove(&t->ring[0], &t->ring[1],
                (RING_CAP - 1) * sizeof(pending_hold));
        t->nring--;
    }
    pending_hold *h = &t->ring[t->nring++];
    h->actor = current_actor(st, t->kind);
    h->generation = st->generation;
    h->acquired_ns = now;
    h->weight = weight;
}

/* A successful release; full: every level at once (Condition.wait). */
static void
tracker_released(ddl_state *st, ddl_tracker *t, int full)
{
    int64_t acquired_ns;
    double weight;
    if (kind_exclusive(t->kind)) {
        if (!t->base.sampled) {
            return;
        }
        if (t->hold_gen != st->generation) {
            t->base.sampled = 0;
            return;
        }
        if (!full && --t->depth > 0) {
            return;
        }
        t->base.sampled = 0;
        t->depth = 0;
        acquired_ns = t->base.acquired_ns;
        weight = t->base.weight;
    }
    else {
        if (t->nring == 0) {
            return;
        }
        uintptr_t actor = current_actor(st, t->kind);
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
                (size_t)(t->nring - found - 1) * sizeof(pending_hold));
        t->nring--;
    }
    int64_t hold = ddl_monotonic_ns() - acquired_ns;
    ddl_lock_record(st, &t->base, 0, hold < 0 ? 0 : hold, 1, weight);
}

/* One item of the shared list of published holds goes (the last). */
static void
holds_pop(ddl_state *st)
{
    Py_ssize_t n =
        st->prim_holds != NULL ? PyList_GET_SIZE(st->prim_holds) : 0;
    if (n > 0) {
        /* a list may be shorter than its allocation */
        PyObject *last = PyList_GET_ITEM(st->prim_holds, n - 1);
        Py_SET_SIZE(st->prim_holds, n - 1);
        Py_DECREF(last);
    }
}

static int
tracker_traverse(PyObject *op, visitproc visit, void *arg)
{
    ddl_tracker *t = (ddl_tracker *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(t->base.site_code);
    Py_VISIT(t->inner);
    Py_VISIT(t->inner_acquire);
    Py_VISIT(t->inner_release);
    Py_VISIT(t->inner_enter);
    Py_VISIT(t->inner_exit);
    Py_VISIT(t->inner_release_save);
    Py_VISIT(t->inner_acquire_restore);
    return 0;
}

static int
tracker_clear(PyObject *op)
{
    ddl_tracker *t = (ddl_tracker *)op;
    Py_CLEAR(t->inner);
    Py_CLEAR(t->inner_acquire);
    Py_CLEAR(t->inner_release);
    Py_CLEAR(t->inner_enter);
    Py_CLEAR(t->inner_exit);
    Py_CLEAR(t->inner_release_save);
    Py_CLEAR(t->inner_acquire_restore);
    return 0;
}

static void
tracker_dealloc(PyObject *op)
{
    ddl_tracker *t = (ddl_tracker *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (t->published) {
        holds_pop(tracker_state(t)); /* its holder died with a hold pending */
    }
    tracker_clear(op);
    Py_CLEAR(t->base.site_code);
    Py_CLEAR(t->base.name);
    PyMem_Free(t->ring);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* _bind(owner): the object whose name the tracker's samples carry. */
static PyObject *
tracker_bind(PyObject *self, PyObject *owner)
{
    ((ddl_tracker *)self)->owner = owner;
    Py_RETURN_NONE;
}

/* The lock methods a Condition uses, in the order of st->str_attach. */
static const char *const attach_names[6] = {
    "acquire",  "release",       "__enter__",
    "__exit__", "_release_save", "_acquire_restore",
};

/* _attach(lock[, owner, hooks]): the lock a Condition wraps. With hooks, a
 * tuple of 4 Hooks bound to trackers (acquire, release, _release_save,
 * _acquire_restore), also sets owner's attributes of those names to the
 * hooks bound to this tracker (what Condition.__init__ set to the lock's
 * methods); asyncio's Conditions take 2 (acquire, release). */
static PyObject *
tracker_attach(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ddl_tracker *t = (ddl_tracker *)self;
    ddl_state *st = tracker_state(t);
    if (nargs != 1 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_attach(lock[, owner, hooks])");
        return NULL;
    }
    PyObject *lock = args[0];
    PyObject *found[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    int n = kind_asyncio(t->kind) ? 2 : 6;
    for (int i = 0; i < n; i++) {
        int r = ddl_getattr_optional(lock, st->str_attach[i], &found[i]);
        if (r < 0 || (r == 0 && i < 2)) {
            if (r == 0) {
                PyErr_Format(PyExc_AttributeError, "lock has no %s",
                             attach_names[i]);
            }
            for (int j = 0; j < 6; j++) {
                Py_XDECREF(found[j]);
            }
            return NULL;
        }
    }
    Py_XSETREF(t->inner, Py_NewRef(lock));
    Py_XSETREF(t->inner_acquire, found[0]);
    Py_XSETREF(t->inner_release, found[1]);
    Py_XSETREF(t->inner_enter, found[2]);
    Py_XSETREF(t->inner_exit, found[3]);
    Py_XSETREF(t->inner_release_save, found[4]);
    Py_XSETREF(t->inner_acquire_restore, found[5]);
    t->inner_native =
        (st->native_lock_type != NULL &&
         Py_TYPE(lock) == (PyTypeObject *)st->native_lock_type) ||
        (st->native_rlock_type != NULL &&
         Py_TYPE(lock) == (PyTypeObject *)st->native_rlock_type);
    if (nargs == 3 && PyTuple_Check(args[2])) {
        static const int attr_index[4] = {0, 1, 4, 5};
        Py_ssize_t nhooks = PyTuple_GET_SIZE(args[2]);
        for (Py_ssize_t i = 0; i < nhooks && i < 4; i++) {
            PyObject *m = PyMethod_New(PyTuple_GET_ITEM(args[2], i), self);
            int rc =
                m ? PyObject_SetAttr(args[1], st->str_attach[attr_index[i]], m)
                  : -1;
            Py_XDECREF(m);
            if (rc < 0) {
                return NULL;
            }
        }
    }
    Py_RETURN_NONE;
}

static inline int
hold_pending(ddl_tracker *t)
{
    return kind_exclusive(t->kind) ? t->base.sampled : t->nring > 0;
}

/* Set holder._ddl_hold (holder: the one object whose tracker t is) to t
 * while a sampled hold is pending, else None: the Python-level release
 * looks at that attribute, and only while the shared list st->prim_holds
 * is not empty: it has one item per tracker whose holder's _ddl_hold is
 * set (t->published), so a release never misses a pending hold. */
static void
publish_hold(ddl_tracker *t, PyObject *holder)
{
    if (holder == NULL || holder == Py_None) {
        return;
    }
    ddl_state *st = tracker_state(t);
    int now = hold_pending(t);
    if (now && !t->published) {
        if (PyList_Append(st->prim_holds, Py_None) < 0) {
            /* out of memory: the release would not look, so the hold just
             * begun (the last one) is dropped */
            PyErr_Clear();
            if (kind_exclusive(t->kind)) {
                t->base.sampled = 0;
                t->depth = 0;
            }
            else if (t->nring > 0) {
                t->nring--;
            }
            return;
        }
        t->published = 1;
    }
    if (ddl_set_instance_attr(holder, st->str__ddl_hold,
                              now ? (PyObject *)t : Py_None) < 0) {
        PyErr_Clear();
    }
    if (!now && t->published) {
        t->published = 0;
        holds_pop(st);
    }
}

/* _acquired([holder,] t0): a Python-level acquire succeeded after a wait
 * measured from t0 (ddlock._primitives, or _acquire_wrapper of the Hooks);
 * t0 == 0: an uncontended acquire the countdown already chose. */
static PyObject *
tracker_acquired_py(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ddl_tracker *t = (ddl_tracker *)self;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "_acquired([holder,] t0)");
        return NULL;
    }
    long long t0 = PyLong_AsLongLong(args[nargs - 1]);
    if (t0 == -1 && PyErr_Occurred()) {
        return NULL;
    }
    ddl_state *st = tracker_state(t);
    tracker_acquired(st, t, t0 == 0 ? ACQ_SAMPLED : ACQ_TIMED, (int64_t)t0, 0);
    if (nargs == 2) {
        publish_hold(t, args[0]);
    }
    Py_RETURN_NONE;
}

/* The countdown of the Python-level primitives: one Countdown object (the
 * module's _prim_countdown) for all of them, and `if not countdown:` in
 * their uncontended acquire is this nb_bool: true while the current skip
 * goes on (one event counted), false when this event is to be sampled (the
 * method then calls countdown._sample(self)). One C slot call on a closure
 * variable, no attribute of the object read. The skips are geometric with
 * parameter capture_pct / 100, drawn again in each profiling session, so
 * that every event is sampled with that probability, whichever object it
 * is on, as with the locks' countdown (lock.c). */
#define SKIP_NEVER ((int64_t)1 << 40)

static int64_t
draw_skip(ddl_state *st)
{
    double p = st->capture_p;
    if (!st->running || !(p > 0)) {
        return SKIP_NEVER;
    }
    if (p >= 1.0) {
        return 0;
    }
    double k = floor(log(ddl_rand_unit()) / log1p(-p));
    return k < (double)SKIP_NEVER ? (int64_t)k : SKIP_NEVER;
}

static int
countdown_bool(PyObject *self)
{
    ddl_countdown *c = (ddl_countdown *)self;
    ddl_state *st = c->st;
    if (c->gen != st->generation) {
        c->gen = st->generation;
        c->rest = draw_skip(st);
    }
    if (c->rest > 0) {
        c->rest--;
        return 1;
    }
    c->rest = draw_skip(st);
    return 0; /* sample this one */
}

static void
countdown_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* _sample(holder): the countdown chose this uncontended acquire of holder
 * (a profiled primitive, or one made while stopped or by an excluded
 * module, whose _ddl_tracker is None): sample it. */
static PyObject *
countdown_sample(PyObject *self, PyObject *holder)
{
    ddl_state *st = ((ddl_countdown *)self)->st;
    PyObject *t = PyObject_GenericGetAttr(holder, st->str__ddl_tracker);
    if (t == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (Py_IS_TYPE(t, st->tracker_type)) {
        tracker_acquired(st, (ddl_tracker *)t, ACQ_SAMPLED, 0, 0);
        publish_hold((ddl_tracker *)t, holder);
    }
    Py_DECREF(t);
    Py_RETURN_NONE;
}

static PyMethodDef countdown_methods[] = {
    {"_sample", countdown_sample, METH_O, NULL},
    {NULL},
};

static PyType_Slot countdown_slots[] = {
    {Py_tp_dealloc, countdown_dealloc},
    {Py_tp_methods, countdown_methods},
    {Py_nb_bool, countdown_bool},
    {Py_tp_doc, "The sampling countdown of the Python-level primitives."},
    {0, NULL},
};

static PyType_Spec countdown_spec = {
    .name = "ddlock._ddlock.Countdown",
    .basicsize = sizeof(ddl_countdown),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = countdown_slots,
};

/* _release_hold(holder): holder (whose _ddl_hold is this tracker) was
 * released: ends the releasing holder's sampled hold. */
static PyObject *
tracker_release_hold_py(PyObject *self, PyObject *holder)
{
    ddl_tracker *t = (ddl_tracker *)self;
    if (hold_pending(t)) {
        tracker_released(tracker_state(t), t, 0);
    }
    publish_hold(t, holder);
    Py_RETURN_NONE;
}

static PyObject *
tracker_name(PyObject *self, PyObject *unused)
{
    ddl_tracker *t = (ddl_tracker *)self;
    PyObject *name = ddl_lock_name(tracker_state(t), &t->base);
    if (name == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return name;
}

static PyObject *
tracker_get_kind(PyObject *self, void *unused)
{
    return PyUnicode_FromString(kind_names[((ddl_tracker *)self)->kind]);
}

static PyObject *
tracker_get_site(PyObject *self, void *unused)
{
    ddl_tracker *t = (ddl_tracker *)self;
    if (t->base.site_code == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *label = ddl_site_label(t->base.site_code, t->base.site_lasti);
    if (label == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return label;
}

static PyObject *
tracker_get_native(PyObject *self, void *unused)
{
    return PyBool_FromLong(((ddl_tracker *)self)->inner_native);
}

static PyObject *
tracker_get_inner(PyObject *self, void *unused)
{
    PyObject *inner = ((ddl_tracker *)self)->inner;
    return Py_NewRef(inner ? inner : Py_None);
}

static PyObject *
tracker_repr(PyObject *self)
{
    ddl_tracker *t = (ddl_tracker *)self;
    return PyUnicode_FromFormat("<ddlock tracker of a %s at %p>",
                                kind_names[t->kind], t->owner);
}

static PyMethodDef tracker_methods[] = {
    {"_bind", tracker_bind, METH_O, NULL},
    {"_attach", (PyCFunction)(void (*)(void))tracker_attach, METH_FASTCALL,
     NULL},
    {"_acquired", (PyCFunction)(void (*)(void))tracker_acquired_py,
     METH_FASTCALL, NULL},
    {"_release_hold", tracker_release_hold_py, METH_O, NULL},
    {"_ddlock_name", tracker_name, METH_NOARGS,
     "The profile label, resolving it now if needed."},
    {NULL},
};

static PyGetSetDef tracker_getset[] = {
    {"kind", tracker_get_kind, NULL, "the primitive's lock type label", NULL},
    {"_ddlock_site", tracker_get_site, NULL, "creation site (file:line)",
     NULL},
    {"inner_native", tracker_get_native, NULL, NULL, NULL},
    {"inner", tracker_get_inner, NULL, "the lock a Condition wraps", NULL},
    {NULL},
};

static PyType_Slot tracker_slots[] = {
    {Py_tp_dealloc, tracker_dealloc},
    {Py_tp_traverse, tracker_traverse},
    {Py_tp_clear, tracker_clear},
    {Py_tp_repr, tracker_repr},
    {Py_tp_methods, tracker_methods},
    {Py_tp_getset, tracker_getset},
    {Py_tp_doc, "Profiling state of one Semaphore, Condition, asyncio lock."},
    {0, NULL},
};

static PyType_Spec tracker_spec = {
    .name = "ddlock._ddlock.Tracker",
    .basicsize = sizeof(ddl_tracker),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = tracker_slots,
};

/* ---- Hooks ---------------------------------------------------------------
 * A Hook replaces one method of a patched class (owner form: cls set, the
 * tracker the instance's `_ddl_tracker`, orig the original function called
 * as orig(self, ...)), or is bound to a Tracker as a Condition's instance
 * attribute (tracker form: cls NULL, args[0] is the Tracker, the wrapped
 * lock's methods are called). Attributes other than its own (__name__,
 * __doc__, __code__, ...) are the original function's, so introspection
 * (inspect.signature, iscoroutinefunction) sees the original. */

enum {
    H_ACQUIRE = 0,     /* acquire(blocking=True, timeout=...) / __enter__ */
    H_RELEASE,         /* release(...) */
    H_RELEASE_SAVE,    /* releases every level, returns the state */
    H_ACQUIRE_RESTORE, /* re-acquires after Condition.wait() */
    H_AACQUIRE,        /* asyncio acquire(): returns an awaitable */
    H_ENTER,           /* Condition.__enter__ */
    H_EXIT,            /* Condition.__exit__ */
    H_COUNT
};

typedef struct {
    PyObject_HEAD int op;
    int kind;
    PyTypeObject *cls; /* owner form: the patched class; NULL: tracker form */
    PyObject *orig;
    int fast; /* cls (tracker form: the lock) is the stdlib's own
                 class: its state may be read and set directly */
    vectorcallfunc vectorcall;
} ddl_hook;

/* The tracker of a call (new reference), NULL when the call is not
 * profiled. Owner form: the `_ddl_tracker` attribute of the instance (our
 * classes define no __getattr__ but the gevent lock wrapper's, which
 * refuses `_ddl_` names). */
static inline ddl_tracker *
hook_tracker(ddl_state *st, ddl_hook *h, PyObject *self)
{
    if (!st->running) {
        return NULL;
    }
    if (h->cls == NULL) {
        return Py_IS_TYPE(self, st->tracker_type)
                   ? (ddl_tracker *)Py_NewRef(self)
                   : NULL;
    }
    if (!PyObject_TypeCheck(self, h->cls)) {
        return NULL; /* the original raises its own TypeError */
    }
    PyObject *t = NULL;
    if (ddl_getattr_optional(self, st->str__ddl_tracker, &t) < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (t != NULL && !Py_IS_TYPE(t, st->tracker_type)) {
        Py_CLEAR(t);
    }
    return (ddl_tracker *)t;
}

/* In tracker form, what the original method of the Condition calls. */
static PyObject *
inner_callable(ddl_tracker *t, int op)
{
    switch (op) {
    case H_ACQUIRE:
    case H_AACQUIRE:
        return t->inner_acquire;
    case H_RELEASE:
        return t->inner_release;
    case H_RELEASE_SAVE:
        return t->inner_release_save ? t->inner_release_save
                                     : t->inner_release;
    case H_ACQUIRE_RESTORE:
        return t->inner_acquire_restore ? t->inner_acquire_restore
                                        : t->inner_acquire;
    case H_ENTER:
        return t->inner_enter;
    case H_EXIT:
        return t->inner_exit;
    }
    return NULL;
}

/* Run the operation as the original would: orig(self, *args) in owner form
 * (and for the Condition's __enter__/__exit__ without a tracker), else the
 * wrapped lock's method with the arguments after args[0]. */
static PyObject *
call_under(ddl_hook *h, ddl_tracker *t, PyObject *const *args, size_t nargsf,
           PyObject *kwnames)
{
    PyObject *fn = NULL;
    if (t != NULL && (h->cls == NULL || h->op == H_ENTER || h->op == H_EXIT)) {
        fn = inner_callable(t, h->op);
    }
    if (fn == NULL) {
        if (h->cls == NULL) {
            /* tracker form without its lock (not attached): cannot be */
            PyErr_SetString(PyExc_RuntimeError,
                            "ddlock: Condition hook without its lock");
            return NULL;
        }
        return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (h->op == H_ACQUIRE_RESTORE && t->inner_acquire_restore == NULL) {
        /* Condition._acquire_restore(x): self._lock.acquire() -> None */
        PyObject *r = PyObject_CallNoArgs(fn);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    if (h->op == H_RELEASE_SAVE && t->inner_release_save == NULL) {
        PyObject *r = PyObject_CallNoArgs(fn); /* self._lock.release() */
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(
        fn, args + 1, (size_t)(nargs - 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
        kwnames);
}

/* Non-blocking attempt for an acquire called without arguments; NULL with
 * no exception when not applicable (the caller then runs it timed). */
static PyObject *
try_acquire(ddl_hook *h, ddl_tracker *t, PyObject *self)
{
    if (h->cls != NULL && h->op == H_ACQUIRE) {
        PyObject *stack[2] = {self, Py_False};
        return PyObject_Vectorcall(h->orig, stack, 2, NULL);
    }
    if (t->inner_native && t->inner_acquire != NULL) {
        PyObject *stack[2] = {NULL, Py_False};
        return PyObject_Vectorcall(t->inner_acquire, stack + 1,
                                   1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    return NULL;
}

static int
result_true(PyObject *r)
{
    if (r == Py_True) {
        return 1;
    }
    if (r == Py_False || r == Py_None) {
        return 0;
    }
    int v = PyObject_IsTrue(r);
    if (v < 0) {
        PyErr_Clear();
        return 1;
    }
    return v;
}

static PyObject *
hook_sync_acquire(ddl_state *st, ddl_hook *h, ddl_tracker *t,
                  PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 1 && kwnames == NULL) {
        PyObject *r = try_acquire(h, t, args[0]);
        if (r != NULL) {
            if (result_true(r)) {
                if (h->op == H_ENTER && r != Py_True) {
                    /* a native lock's __enter__ returns True */
                    Py_SETREF(r, Py_NewRef(Py_True));
                }
                tracker_acquired(st, t, ACQ_UNCONTENDED, 0, 0);
                return r;
            }
            Py_DECREF(r);
        }
        else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    int64_t t0 = ddl_monotonic_ns();
    PyObject *r = call_under(h, t, args, nargsf, kwnames);
    if (r == NULL) {
        return NULL;
    }
    if (h->op == H_ENTER || result_true(r)) {
        tracker_acquired(st, t, ACQ_TIMED, t0, 0);
    }
    return r;
}

/* Depth of an RLock from the state _release_save returned: (count, owner). */
static int
restored_depth(PyObject *state)
{
    if (state != NULL && PyTuple_Check(state) &&
        PyTuple_GET_SIZE(state) >= 1 &&
        PyLong_Check(PyTuple_GET_ITEM(state, 0))) {
        long n = PyLong_AsLong(PyTuple_GET_ITEM(state, 0));
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        return n < 1 ? 1 : (n > INT32_MAX ? INT32_MAX : (int)n);
    }
    return 1;
}

/* Would an asyncio acquire of obj suspend? Reads the lock's state without
 * running its code; when the state is not the stdlib's, says yes (the wait
 * is then measured, which is always correct). */
static int
asyncio_would_wait(ddl_state *st, int kind, PyObject *obj)
{
    PyObject *v;
    if (kind == K_ALOCK || kind == K_ACONDITION) {
        v = PyObject_GetAttr(obj, st->str__locked);
        if (v == NULL) {
            PyErr_Clear();
            return 1;
        }
        int locked = v != Py_False;
        Py_DECREF(v);
        if (locked) {
            return 1;
        }
    }
    else {
        v = PyObject_GetAttr(obj, st->str__value);
        if (v == NULL) {
            PyErr_Clear();
            return 1;
        }
        int free = 0;
        if (PyLong_CheckExact(v)) {
            int overflow = 0;
            long value = PyLong_AsLongAndOverflow(v, &overflow);
            free = overflow > 0 || value > 0;
            PyErr_Clear();
        }
        Py_DECREF(v);
        if (!free) {
            return 1;
        }
#if DDL_ASYNCIO_SEMAPHORE_WAKEUP_FLAG
        v = PyObject_GetAttr(obj, st->str__wakeup_scheduled);
        if (v == NULL) {
            PyErr_Clear();
        }
        else {
            int scheduled = v != Py_False;
            Py_DECREF(v);
            if (scheduled) {
                return 1;
            }
        }
#endif
    }
    v = PyObject_GetAttr(obj, st->str__waiters);
    if (v == NULL) {
        PyErr_Clear();
        return 1;
    }
    int waiters = 0;
    if (v != Py_None) {
        Py_ssize_t n = PyObject_Length(v);
        waiters = n != 0;
        if (n < 0) {
            PyErr_Clear();
        }
    }
    Py_DECREF(v);
    return waiters;
}

/* release() of an asyncio lock of the stdlib's own class with nobody
 * waiting, done here: exactly what the method does then (no waiter to
 * wake). Returns 1 done, 0 not applicable, -1 error. */
static int
asyncio_release_fast(ddl_state *st, int kind, PyObject *obj)
{
    PyObject *w = PyObject_GetAttr(obj, st->str__waiters);
    if (w == NULL) {
        PyErr_Clear();
        return 0;
    }
    int idle = w == Py_None;
    if (!idle) {
        Py_ssize_t n = PyObject_Length(w);
        idle = n == 0;
        if (n < 0) {
            PyErr_Clear();
        }
    }
    Py_DECREF(w);
    if (!idle) {
        return 0;
    }
    if (kind == K_ALOCK || kind == K_ACONDITION) {
        PyObject *v = PyObject_GetAttr(obj, st->str__locked);
        if (v == NULL) {
            PyErr_Clear();
            return 0;
        }
        Py_DECREF(v);
        if (v != Py_True) {
            return 0; /* the method raises RuntimeError */
        }
        return PyObject_SetAttr(obj, st->str__locked, Py_False) < 0 ? -1 : 1;
    }
    PyObject *v = PyObject_GetAttr(obj, st->str__value);
    if (v == NULL) {
        PyErr_Clear();
        return 0;
    }
    int overflow = 0;
    long value =
        PyLong_CheckExact(v) ? PyLong_AsLongAndOverflow(v, &overflow) : -1;
    Py_DECREF(v);
    if (overflow || value < 0 || value == LONG_MAX) {
        PyErr_Clear();
        return 0;
    }
    if (kind == K_ABSEMAPHORE) {
        PyObject *b = PyObject_GetAttr(obj, st->str__bound_value);
        if (b == NULL) {
            PyErr_Clear();
            return 0;
        }
        long bound =
            PyLong_CheckExact(b) ? PyLong_AsLongAndOverflow(b, &overflow) : -1;
        Py_DECREF(b);
        if (overflow || bound < 0 || value >= bound) {
            PyErr_Clear();
            return 0; /* the method raises ValueError */
        }
    }
    PyObject *nv = PyLong_FromLong(value + 1);
    if (nv == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttr(obj, st->str__value, nv);
    Py_DECREF(nv);
    return rc < 0 ? -1 : 1;
}

static PyObject *
hook_async_acquire(ddl_state *st, ddl_hook *h, ddl_tracker *t,
                   PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || kwnames != NULL || st->acquire_wrapper == NULL) {
        return call_under(h, t, args, nargsf, kwnames);
    }
    PyObject *obj = h->cls != NULL ? args[0] : t->inner;
    int contended = obj == NULL || asyncio_would_wait(st, t->kind, obj);
    PyObject *coro = call_under(h, t, args, nargsf, kwnames);
    if (coro == NULL) {
        return NULL;
    }
    if (!contended && !ddl_sample_uncontended(st)) {
        return coro;
    }
    PyObject *t0 = PyLong_FromLongLong(contended ? ddl_monotonic_ns() : 0);
    if (t0 == NULL) {
        Py_DECREF(coro);
        return NULL;
    }
    PyObject *stack[3] = {(PyObject *)t, coro, t0};
    PyObject *r = PyObject_Vectorcall(st->acquire_wrapper, stack, 3, NULL);
    Py_DECREF(coro);
    Py_DECREF(t0);
    return r;
}

static PyObject *
hook_dispatch(ddl_state *st, ddl_hook *h, ddl_tracker *t,
              PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (t == NULL) {
        if (h->cls == NULL && nargs >= 1 &&
            Py_IS_TYPE(args[0], st->tracker_type)) {
            /* bound to a tracker while not profiling: the lock's method */
            return call_under(h, (ddl_tracker *)args[0], args, nargsf,
                              kwnames);
        }
        return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    }
    PyObject *r;
    switch (h->op) {
    case H_ACQUIRE:
    case H_ENTER:
        if (h->op == H_ENTER) {
            if (t->inner_enter == NULL) {
                return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
            }
        }
        return hook_sync_acquire(st, h, t, args, nargsf, kwnames);
    case H_AACQUIRE:
        return hook_async_acquire(st, h, t, args, nargsf, kwnames);
    case H_ACQUIRE_RESTORE: {
        int64_t t0 = ddl_monotonic_ns();
        r = call_under(h, t, args, nargsf, kwnames);
        if (r != NULL) {
            tracker_acquired(st, t, ACQ_TIMED, t0,
                             restored_depth(nargs >= 2 ? args[1] : NULL));
        }
        return r;
    }
    case H_EXIT:
        if (t->inner_exit == NULL) {
            return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
        }
        /* fall through */
    case H_RELEASE:
    case H_RELEASE_SAVE:
        if (h->op == H_RELEASE && h->fast && kind_asyncio(t->kind)) {
            PyObject *obj = h->cls != NULL ? args[0] : t->inner;
            int done = 0;
            if (obj != NULL &&
                (h->cls != NULL ? Py_IS_TYPE(obj, h->cls)
                                : Py_TYPE(obj) == st->asyncio_lock_cls)) {
                done = asyncio_release_fast(st, t->kind, obj);
            }
            if (done < 0) {
                return NULL;
            }
            if (done) {
                tracker_released(st, t, 0);
                Py_RETURN_NONE;
            }
        }
        r = call_under(h, t, args, nargsf, kwnames);
        if (r != NULL) {
            tracker_released(st, t, h->op == H_RELEASE_SAVE);
        }
        return r;
    }
    return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
}

/* New reference to `self._lock` when it can be read without running code
 * of the user's, else NULL (no exception): only for classes with the
 * generic getattr and no class attribute `_lock`, where the instance's
 * value is what self._lock gives. */
static PyObject *
plain_lock_attr(ddl_state *st, PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (tp->tp_getattro != PyObject_GenericGetAttr ||
        _PyType_Lookup(tp, st->str__lock) != NULL) {
        return NULL;
    }
    PyObject *lk = NULL;
    if (ddl_getattr_optional(self, st->str__lock, &lk) <= 0) {
        PyErr_Clear();
        return NULL;
    }
    return lk;
}

/* Is lk the RLock a profiled threading.Condition() made for cond
 * (ddl_condition_rlock)? */
static int
is_condition_own_rlock(ddl_state *st, PyObject *lk, PyObject *cond)
{
    return lk != NULL && Py_IS_TYPE(lk, st->rlock_type) &&
           ((ddl_rlock *)lk)->cond_ref != NULL &&
           ddl_weakref_peek(((ddl_rlock *)lk)->cond_ref) == cond;
}

static PyObject *
hook_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                PyObject *kwnames)
{
    ddl_hook *h = (ddl_hook *)callable;
    ddl_state *st = (ddl_state *)PyType_GetModuleState(Py_TYPE(callable));
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    /* Condition.__enter__/__exit__ are self._lock.__enter__()/__exit__(...):
     * read self._lock once, for both paths below */
    int with_op = (h->op == H_ENTER || h->op == H_EXIT) && h->cls != NULL &&
                  nargs >= 1 && PyObject_TypeCheck(args[0], h->cls);
    PyObject *lk = with_op ? plain_lock_attr(st, args[0]) : NULL;
    if (kwnames == NULL && is_condition_own_rlock(st, lk, args[0])) {
        /* `with cond:` on a Condition() ddlock made the RLock of: in C */
        PyObject *r =
            h->op == H_ENTER ? ddl_rlock_enter(lk) : ddl_rlock_exit(lk);
        Py_DECREF(lk);
        return r;
    }
    ddl_tracker *t = nargs >= 1 ? hook_tracker(st, h, args[0]) : NULL;
    if (t != NULL && with_op && (lk == NULL || lk != t->inner)) {
        /* self._lock was replaced (or cannot be read without running
         * code of the user's): Condition's own method decides */
        Py_CLEAR(t);
    }
    Py_XDECREF(lk); /* compared by identity only */
    PyObject *r = hook_dispatch(st, h, t, args, nargsf, kwnames);
    Py_XDECREF(t); /* held for the call: user code may drop the attribute */
    return r;
}

static PyObject *
hook_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"op", "kind", "orig", "cls", "fast", NULL};
    int op, kind, fast = 0;
    PyObject *orig, *cls;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiOO|p:Hook", kwlist, &op,
                                     &kind, &orig, &cls, &fast)) {
        return NULL;
    }
    if (op < 0 || op >= H_COUNT || kind < 0 || kind >= K_COUNT) {
        PyErr_SetString(PyExc_ValueError, "unknown hook op or kind");
        return NULL;
    }
    if (!PyCallable_Check(orig)) {
        PyErr_SetString(PyExc_TypeError, "orig must be callable");
        return NULL;
    }
    if (cls != Py_None && !PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a class or None");
        return NULL;
    }
    ddl_hook *self = (ddl_hook *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->op = op;
    self->kind = kind;
    self->cls = cls == Py_None ? NULL : (PyTypeObject *)Py_NewRef(cls);
    self->orig = Py_NewRef(orig);
    self->fast = fast;
    self->vectorcall = hook_vectorcall;
    return (PyObject *)self;
}

static int
hook_traverse(PyObject *op, visitproc visit, void *arg)
{
    ddl_hook *h = (ddl_hook *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(h->cls);
    Py_VISIT(h->orig);
    return 0;
}

static int
hook_clear(PyObject *op)
{
    ddl_hook *h = (ddl_hook *)op;
    Py_CLEAR(h->cls);
    Py_CLEAR(h->orig);
    return 0;
}

static void
hook_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    hook_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
hook_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
hook_getattro(PyObject *self, PyObject *name)
{
    PyObject *v = PyObject_GenericGetAttr(self, name);
    if (v != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return v;
    }
    ddl_hook *h = (ddl_hook *)self;
    if (h->orig == NULL) {
        return NULL;
    }
    PyErr_Clear();
    return PyObject_GetAttr(h->orig, name);
}

static PyObject *
hook_orig_attr(PyObject *self, void *name)
{
    ddl_hook *h = (ddl_hook *)self;
    if (h->orig == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttrString(h->orig, (const char *)name);
}

static PyObject *
hook_repr(PyObject *self)
{
    return PyUnicode_FromFormat("<ddlock hook of %R>",
                                ((ddl_hook *)self)->orig);
}

static PyObject *
hook_get_original(PyObject *self, void *unused)
{
    return Py_NewRef(((ddl_hook *)self)->orig);
}

static PyGetSetDef hook_getset[] = {
    {"__name__", hook_orig_attr, NULL, NULL, "__name__"},
    {"__qualname__", hook_orig_attr, NULL, NULL, "__qualname__"},
    {"__doc__", hook_orig_attr, NULL, NULL, "__doc__"},
    {"__module__", hook_orig_attr, NULL, NULL, "__module__"},
    {"_ddlock_original", hook_get_original, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef hook_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(ddl_hook, vectorcall),
     DDL_MEMBER_OFFSET_FLAG},
    {NULL},
};

static PyType_Slot hook_slots[] = {
    {Py_tp_new, hook_new},
    {Py_tp_dealloc, hook_dealloc},
    {Py_tp_traverse, hook_traverse},
    {Py_tp_clear, hook_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, hook_descr_get},
    {Py_tp_getattro, hook_getattro},
    {Py_tp_repr, hook_repr},
    {Py_tp_getset, hook_getset},
    {Py_tp_members, hook_members},
    {0, NULL},
};

static PyType_Spec hook_spec = {
    .name = "ddlock._ddlock.Hook",
    .basicsize = sizeof(ddl_hook),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = hook_slots,
};

/* ---- labels every sample gets from here ----------------------------------
 */

/* New reference to an asyncio task's name, NULL (maybe with an exception
 * set) when there is none. Only the get_name of asyncio's own Task types is
 * called, looked up on the task's type (a subclass or an instance that
 * overrides it would run user code: such a task gets no name label). */
static PyObject *
asyncio_task_name(ddl_state *st, PyObject *task)
{
    PyObject *get_name = ddl_type_lookup(Py_TYPE(task), st->str_get_name);
    if (get_name == NULL || (get_name != st->task_get_name[0] &&
                             get_name != st->task_get_name[1])) {
        return NULL;
    }
    Py_INCREF(get_name);
    PyObject *name = PyObject_CallOneArg(get_name, task);
    Py_DECREF(get_name);
    return name;
}

size_t
ddl_sample_extra_labels(ddl_state *st, ddl_lockbase *lk, ddl_label *out,
                        ddl_label_refs *refs)
{
    size_t n = 0;
    refs->n = 0;
    const char *type =
        lk->lock == NULL ? kind_names[((ddl_tracker *)lk)->kind]
        : lk->is_rlock
            ? (((ddl_rlock *)lk)->cond_ref != NULL ? "Condition" : "RLock")
            : "Lock";
    out[n++] = (ddl_label){{"lock type", 9}, {type, strlen(type)}, 0};
    PyObject *task = current_asyncio_task(st);
    PyObject *name = NULL;
    if (task != NULL) {
        name = asyncio_task_name(st, task);
    }
    else if ((task = current_greenlet(st)) != NULL) {
        name = PyObject_GetAttr(task, st->str_name_attr);
    }
    if (task == NULL) {
        return n;
    }
    out[n++] =
        (ddl_label){{"task id", 7}, {NULL, 0}, (int64_t)(uintptr_t)task};
    refs->refs[refs->n++] = task;
    if (name != NULL && PyUnicode_Check(name)) {
        ddl_str s;
        refs->refs[refs->n++] = name;
        ddl_str_of(&s, name, refs->refs, &refs->n);
        out[n++] = (ddl_label){{"task name", 9}, s, 0};
    }
    else {
        Py_XDECREF(name);
        PyErr_Clear();
    }
    return n;
}

void
ddl_label_refs_release(ddl_label_refs *refs)
{
    for (size_t i = 0; i < refs->n; i++) {
        Py_DECREF(refs->refs[i]);
    }
    refs->n = 0;
}

/* ---- module functions -----------------------------------------------------
 */

/* The site a new profiled primitive is created at. source: None (walk the
 * creation site of the caller: returns 0 when not profiling or when the
 * primitive is made by an excluded module, so it stays native), or a
 * Tracker, Lock or RLock of ddlock's whose site it shares (returns 1).
 * *code: a new reference or NULL. -1: an exception is set. */
static int
site_of(ddl_state *st, PyObject *source, PyObject **code, int *lasti)
{
    *code = NULL;
    *lasti = -1;
    if (source == Py_None) {
        if (!st->running) {
            return 0;
        }
        int profile = ddl_creation_site_outside_ddlock(st, code, lasti);
        if (profile < 0) {
            PyErr_Clear(); /* never let the profiler break creation */
            profile = 1;
        }
        return profile;
    }
    if (!Py_IS_TYPE(source, st->tracker_type) &&
        !Py_IS_TYPE(source, st->lock_type) &&
        !Py_IS_TYPE(source, st->rlock_type)) {
        PyErr_SetString(PyExc_TypeError,
                        "site source: None, a Tracker, Lock or RLock");
        return -1;
    }
    ddl_lockbase *lk = (ddl_lockbase *)source;
    *code = Py_XNewRef(lk->site_code);
    *lasti = lk->site_lasti;
    return 1;
}

/* _prim_tracker(kind[, source]) -> Tracker or None: None when not
 * profiling or when the primitive is created by an excluded module (it
 * stays native). source: the object whose creation site it takes instead of
 * walking the caller's (see site_of). */
static PyObject *
mod_prim_tracker(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "_prim_tracker(kind[, source])");
        return NULL;
    }
    long kind = PyLong_AsLong(args[0]);
    if (kind == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (kind < 0 || kind >= K_COUNT) {
        PyErr_SetString(PyExc_ValueError, "unknown lock kind");
        return NULL;
    }
    if (!st->running) {
        Py_RETURN_NONE;
    }
    PyObject *code;
    int lasti;
    int profile = site_of(st, nargs == 2 ? args[1] : Py_None, &code, &lasti);
    if (profile < 0) {
        return NULL;
    }
    if (!profile) {
        Py_RETURN_NONE;
    }
    ddl_tracker *t = PyObject_GC_New(ddl_tracker, st->tracker_type);
    if (t == NULL) {
        Py_XDECREF(code);
        return NULL;
    }
    memset((char *)t + sizeof(PyObject), 0,
           sizeof(ddl_tracker) - sizeof(PyObject));
    t->kind = (int)kind;
    t->base.site_code = code; /* reference moved */
    t->base.site_lasti = lasti;
    st->primitives_created++;
    PyObject_GC_Track((PyObject *)t);
    return (PyObject *)t;
}

/* _prim_setup(acquire_wrapper, native_lock_type, native_rlock_type) */
static PyObject *
mod_prim_setup(PyObject *module, PyObject *args)
{
    PyObject *wrapper, *lt, *rlt;
    if (!PyArg_ParseTuple(args, "OOO:_prim_setup", &wrapper, &lt, &rlt)) {
        return NULL;
    }
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    Py_XSETREF(st->acquire_wrapper, Py_NewRef(wrapper));
    Py_XSETREF(st->native_lock_type, Py_NewRef(lt));
    Py_XSETREF(st->native_rlock_type, Py_NewRef(rlt));
    Py_RETURN_NONE;
}

/* _prim_set_asyncio(locks_file, get_running_loop, current_task, Lock,
 *                   current_tasks, task_types):
 * Lock is asyncio.locks.Lock, the stdlib class; current_tasks the dict
 * current_task(loop) reads (or None: it is called); task_types asyncio's
 * own Task classes (at most two), whose get_name is trusted */
static PyObject *
mod_prim_set_asyncio(PyObject *module, PyObject *args)
{
    PyObject *file, *grl, *ct, *lock_cls, *tasks, *types;
    if (!PyArg_ParseTuple(args, "UOOO!OO!:_prim_set_asyncio", &file, &grl, &ct,
                          &PyType_Type, &lock_cls, &tasks, &PyTuple_Type,
                          &types)) {
        return NULL;
    }
    if (tasks != Py_None && !PyDict_CheckExact(tasks)) {
        PyErr_SetString(PyExc_TypeError, "current_tasks must be a dict");
        return NULL;
    }
    if (PyTuple_GET_SIZE(types) > 2) {
        PyErr_SetString(PyExc_ValueError, "at most two Task types");
        return NULL;
    }
    PyObject *get_name[2] = {NULL, NULL};
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        PyObject *tp = PyTuple_GET_ITEM(types, i);
        if (!PyType_Check(tp)) {
            PyErr_SetString(PyExc_TypeError, "Task types expected");
            return NULL;
        }
    }
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        PyTypeObject *tp = (PyTypeObject *)PyTuple_GET_ITEM(types, i);
        get_name[i] = ddl_type_lookup(tp, st->str_get_name);
    }
    for (int i = 0; i < 2; i++) {
        Py_XSETREF(st->task_get_name[i], Py_XNewRef(get_name[i]));
    }
    Py_XSETREF(st->current_tasks, tasks == Py_None ? NULL : Py_NewRef(tasks));
    Py_XSETREF(st->asyncio_lock_cls, (PyTypeObject *)Py_NewRef(lock_cls));
    Py_XSETREF(st->asyncio_locks_file, Py_NewRef(file));
    ddl_code_cache_clear(st); /* asyncio's lock code is internal */
    ddl_memo_clear(st);
    Py_XSETREF(st->get_running_loop, Py_NewRef(grl));
    Py_XSETREF(st->current_task, Py_NewRef(ct));
    Py_RETURN_NONE;
}

/* _prim_set_gevent(getcurrent or None) */
static PyObject *
mod_prim_set_gevent(PyObject *module, PyObject *getcurrent)
{
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    Py_XSETREF(st->gevent_getcurrent,
               getcurrent == Py_None ? NULL : Py_NewRef(getcurrent));
    Py_RETURN_NONE;
}

/* _prim_tracker_of(obj) -> the Tracker profiling obj (or the ddlock Lock
 * or RLock obj itself), None when obj is not profiled. Only objects of the
 * classes ddlock._primitives makes (their dict has `_ddl_original`) are
 * asked for their `_ddl_tracker`: no user code runs. */
static PyObject *
mod_prim_tracker_of(PyObject *module, PyObject *obj)
{
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp == st->lock_type || tp == st->rlock_type) {
        return Py_NewRef(obj);
    }
    PyObject *mro = tp->tp_mro;
    int ours = 0;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro) && !ours;
         i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            continue;
        }
        PyObject *d = ddl_type_dict(base);
        ours = d != NULL && PyDict_GetItemString(d, "_ddl_original") != NULL;
        Py_XDECREF(d);
    }
    PyObject *t = NULL;
    if (ours && ddl_getattr_optional(obj, st->str__ddl_tracker, &t) < 0) {
        PyErr_Clear();
    }
    if (t != NULL &&
        (Py_IS_TYPE(t, st->tracker_type) || Py_IS_TYPE(t, st->rlock_type))) {
        return t;
    }
    Py_XDECREF(t);
    Py_RETURN_NONE;
}

/* _prim_condition_lock(source, cond) -> the lock of a profiled
 * threading.Condition() made without one, or None when cond stays native
 * (source None: see site_of): a ddlock RLock created at the Condition's
 * creation site (walked, or source's) whose samples are the Condition's (its
 * name, `lock type` Condition). cond.acquire/release/wait then run the
 * RLock's C methods directly, as natively they run _thread.RLock's. */
static PyObject *
mod_prim_condition_lock(PyObject *module, PyObject *const *args,
                        Py_ssize_t nargs)
{
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_prim_condition_lock(source, cond)");
        return NULL;
    }
    PyObject *code;
    int lasti;
    int profile = site_of(st, args[0], &code, &lasti);
    if (profile <= 0) {
        if (profile < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *rl = ddl_condition_rlock(st, code, lasti, args[1]);
    Py_XDECREF(code);
    if (rl != NULL && args[0] == Py_None) {
        st->primitives_created++;
    }
    return rl;
}

/* _now(): the monotonic clock of waits and holds, in ns. */
static PyObject *
mod_prim_now(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong(ddl_monotonic_ns());
}

static PyMethodDef prim_functions[] = {
    {"_now", mod_prim_now, METH_NOARGS, NULL},
    {"_prim_tracker", (PyCFunction)(void (*)(void))mod_prim_tracker,
     METH_FASTCALL, NULL},
    {"_prim_setup", mod_prim_setup, METH_VARARGS, NULL},
    {"_prim_set_asyncio", mod_prim_set_asyncio, METH_VARARGS, NULL},
    {"_prim_set_gevent", mod_prim_set_gevent, METH_O, NULL},
    {"_prim_tracker_of", mod_prim_tracker_of, METH_O, NULL},
    {"_prim_condition_lock",
     (PyCFunction)(void (*)(void))mod_prim_condition_lock, METH_FASTCALL,
     NULL},
    {NULL},
};

int
ddl_primitives_init(PyObject *module, ddl_state *st)
{
    st->tracker_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &tracker_spec, NULL);
    if (st->tracker_type == NULL) {
        return -1;
    }
    st->hook_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &hook_spec, NULL);
    if (st->hook_type == NULL) {
        return -1;
    }
    st->countdown_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &countdown_spec, NULL);
    if (st->countdown_type == NULL) {
        return -1;
    }
    ddl_countdown *cd = PyObject_New(ddl_countdown, st->countdown_type);
    if (cd == NULL) {
        return -1;
    }
    cd->rest = 0;
    cd->gen = st->generation - 1; /* drawn at the first event */
    cd->st = st;
    st->prim_countdown = (PyObject *)cd;
    st->prim_holds = PyList_New(0);
    if (st->prim_holds == NULL) {
        return -1;
    }
    st->str__locked = PyUnicode_InternFromString("_locked");
    st->str__value = PyUnicode_InternFromString("_value");
    st->str__waiters = PyUnicode_InternFromString("_waiters");
    st->str__wakeup_scheduled =
        PyUnicode_InternFromString("_wakeup_scheduled");
    st->str_get_name = PyUnicode_InternFromString("get_name");
    st->str_name_attr = PyUnicode_InternFromString("name");
    st->str__bound_value = PyUnicode_InternFromString("_bound_value");
    st->str__ddl_tracker = PyUnicode_InternFromString("_ddl_tracker");
    st->str__ddl_hold = PyUnicode_InternFromString("_ddl_hold");
    st->str__lock = PyUnicode_InternFromString("_lock");
    if (st->str__bound_value == NULL || st->str__ddl_tracker == NULL ||
        st->str__ddl_hold == NULL || st->str__lock == NULL) {
        return -1;
    }
    for (int i = 0; i < 6; i++) {
        st->str_attach[i] = PyUnicode_InternFromString(attach_names[i]);
        if (st->str_attach[i] == NULL) {
            return -1;
        }
    }
    if (st->str__locked == NULL || st->str__value == NULL ||
        st->str__waiters == NULL || st->str__wakeup_scheduled == NULL ||
        st->str_get_name == NULL || st->str_name_attr == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Tracker",
                              (PyObject *)st->tracker_type) < 0 ||
        PyModule_AddObjectRef(module, "_prim_countdown", st->prim_countdown) <
            0 ||
        PyModule_AddObjectRef(module, "_prim_holds", st->prim_holds) < 0 ||
        PyModule_AddObjectRef(module, "Hook", (PyObject *)st->hook_type) < 0 ||
        PyModule_AddFunctions(module, prim_functions) < 0) {
        return -1;
    }
    return 0;
}

int
ddl_primitives_traverse(ddl_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->tracker_type);
    Py_VISIT(st->hook_type);
    Py_VISIT(st->countdown_type);
    Py_VISIT(st->prim_countdown);
    Py_VISIT(st->prim_holds);
    Py_VISIT(st->acquire_wrapper);
    Py_VISIT(st->native_lock_type);
    Py_VISIT(st->native_rlock_type);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->current_task);
    Py_VISIT(st->current_tasks);
    Py_VISIT(st->task_get_name[0]);
    Py_VISIT(st->task_get_name[1]);
    Py_VISIT(st->gevent_getcurrent);
    Py_VISIT(st->asyncio_lock_cls);
    return 0;
}

void
ddl_primitives_clear(ddl_state *st)
{
    Py_CLEAR(st->tracker_type);
    Py_CLEAR(st->hook_type);
    Py_CLEAR(st->prim_countdown);
    Py_CLEAR(st->countdown_type);
    Py_CLEAR(st->prim_holds);
    Py_CLEAR(st->acquire_wrapper);
    Py_CLEAR(st->native_lock_type);
    Py_CLEAR(st->native_rlock_type);
    Py_CLEAR(st->asyncio_locks_file);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->current_task);
    Py_CLEAR(st->current_tasks);
    Py_CLEAR(st->task_get_name[0]);
    Py_CLEAR(st->task_get_name[1]);
    Py_CLEAR(st->gevent_getcurrent);
    Py_CLEAR(st->str__locked);
    Py_CLEAR(st->str__value);
    Py_CLEAR(st->str__waiters);
    Py_CLEAR(st->str__wakeup_scheduled);
    Py_CLEAR(st->str_get_name);
    Py_CLEAR(st->str_name_attr);
    Py_CLEAR(st->str__bound_value);
    Py_CLEAR(st->str__ddl_tracker);
    Py_CLEAR(st->str__ddl_hold);
    Py_CLEAR(st->str__lock);
    for (int i = 0; i < 6; i++) {
        Py_CLEAR(st->str_attach[i]);
    }
    Py_CLEAR(st->asyncio_lock_cls);
}
