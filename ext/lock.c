/* ddlock's Lock and RLock: drop-in replacements for _thread.lock and
 * _thread.RLock built on PyThread locks, with a sampling hook on acquire and
 * release, and the factories that stand in for threading.Lock/RLock.
 *
 * Fast path of an acquire: a non-blocking try on the PyThread lock, then a
 * per-thread sampling countdown. No clock read, no allocation, no attribute
 * lookup and no shared counter unless the event is sampled or contended.
 */
#include "ddlock.h"

#include <float.h>
#include <math.h>

_Thread_local ddl_tls_t ddl_tls
    __attribute__((tls_model("initial-exec"))) = {0, 0, 0, 0};

#define UNSET_TIMEOUT_NS ((int64_t)-1000000000) /* timeout=-1 seconds */

/* ---- sampling ----------------------------------------------------------- */

static inline uint64_t
mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Uniform in (0, 1]. */
double
ddl_rand_unit(void)
{
    uint64_t x = ddl_tls.rng;
    if (x == 0) {
        x = mix64((uint64_t)ddl_monotonic_ns() ^
                  (uint64_t)PyThread_get_thread_ident());
        if (x == 0) {
            x = 0x9e3779b97f4a7c15ULL;
        }
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    ddl_tls.rng = x;
    return ((double)(x >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* Events to skip before the next sampled one: geometric with parameter p,
 * which makes every event independently sampled with probability p. */
static int64_t
draw_countdown(double p)
{
    if (p >= 1.0) {
        return 0;
    }
    if (p <= 0.0) {
        return INT64_MAX;
    }
    double k = floor(log(ddl_rand_unit()) / log1p(-p));
    if (!(k < 9.0e18)) {
        return INT64_MAX;
    }
    return (int64_t)k;
}

static uint64_t tls_seed_sequence = 0; /* guarded by the GIL */

void
ddl_tls_reset(ddl_state *st)
{
    if (st->seed != 0) {
        /* reproducible: each thread's stream derives from the seed and the
         * order in which threads first sample in this generation */
        ddl_tls.rng =
            mix64(st->seed + 0x9e3779b97f4a7c15ULL * (++tls_seed_sequence));
        if (ddl_tls.rng == 0) {
            ddl_tls.rng = 1;
        }
    }
    ddl_tls.generation = st->generation;
    ddl_tls.countdown =
        st->running ? draw_countdown(st->capture_p) : INT64_MAX;
}

void
ddl_reset_seed_sequence(void)
{
    tls_seed_sequence = 0;
}

/* Should this uncontended event be sampled? The common answer (no) costs a
 * thread-local compare and decrement. */
static inline int
sample_uncontended(ddl_state *st)
{
    if (ddl_tls.generation != st->generation) {
        ddl_tls_reset(st);
    }
    if (ddl_tls.countdown > 0) {
        ddl_tls.countdown--;
        return 0;
    }
    if (!st->running) {
        ddl_tls.countdown = INT64_MAX;
        return 0;
    }
    ddl_tls.countdown = draw_countdown(st->capture_p);
    return 1;
}

/* Probability of sampling a contended acquire that waited wait_ns. */
static inline double
contended_p(ddl_state *st, int64_t wait_ns)
{
    double p = st->capture_p;
    if (st->wait_rate_ns > 0) {
        double q = (double)wait_ns / (double)st->wait_rate_ns;
        if (q > 1.0) {
            q = 1.0;
        }
        if (q > p) {
            p = q;
        }
    }
    return p;
}

/* The same two decisions for the primitives of primitives.c. */
int
ddl_sample_uncontended(ddl_state *st)
{
    return sample_uncontended(st);
}

double
ddl_contended_p(ddl_state *st, int64_t wait_ns)
{
    return contended_p(st, wait_ns);
}

/* ---- argument handling (same errors as the native lock) ---------------- */

static int
timeout_to_ns(PyObject *obj, int64_t *out)
{
    if (PyFloat_Check(obj)) {
        double d = PyFloat_AsDouble(obj);
        if (isnan(d)) {
            PyErr_SetString(PyExc_ValueError,
                            "Invalid value NaN (not a number)");
            return -1;
        }
#if DDL_FLOAT_TIME_T_CHECK
        if (!(d >= -9.2233720368547758e18 && d < 9.2233720368547758e18)) {
            PyErr_SetString(PyExc_OverflowError, DDL_MSG_FLOAT_TOO_LARGE);
            return -1;
        }
#endif
        double ns = d * 1e9;
        /* round away from zero, as timeouts are */
        ns = ns >= 0 ? ceil(ns) : floor(ns);
        if (!(ns >= -9.2233720368547758e18 && ns < 9.2233720368547758e18)) {
            PyErr_SetString(PyExc_OverflowError, DDL_MSG_TIME_T_TOO_LARGE);
            return -1;
        }
        *out = (int64_t)ns;
        return 0;
    }
    long long sec = PyLong_AsLongLong(obj);
    if (sec == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_SetString(PyExc_OverflowError, DDL_MSG_TIME_T_TOO_LARGE);
        }
        return -1;
    }
    if (sec > INT64_MAX / 1000000000 || sec < INT64_MIN / 1000000000) {
        PyErr_SetString(PyExc_OverflowError, DDL_MSG_TIME_T_TOO_LARGE);
        return -1;
    }
    *out = (int64_t)sec * 1000000000;
    return 0;
}

/* Parse acquire(blocking=True, timeout=-1). On success *timeout_ns is -1 for
 * "wait forever", 0 for non-blocking, else the timeout. */
static int
parse_acquire_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   int *blocking_out, int64_t *timeout_out)
{
    PyObject *blocking = nargs >= 1 ? args[0] : NULL;
    PyObject *timeout = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs + nkw > 2) {
        PyErr_Format(PyExc_TypeError,
                     "acquire() takes at most 2 arguments (%zd given)",
                     nargs + nkw);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "blocking") == 0) {
            if (nargs >= 1) {
                PyErr_SetString(PyExc_TypeError,
                                "argument for acquire() given by name "
                                "('blocking') and position (1)");
                return -1;
            }
            blocking = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0) {
            if (nargs >= 2) {
                PyErr_SetString(PyExc_TypeError,
                                "argument for acquire() given by name "
                                "('timeout') and position (2)");
                return -1;
            }
            timeout = args[nargs + i];
        }
        else {
            ddl_err_unexpected_keyword("acquire", k);
            return -1;
        }
    }

    int b = 1;
    if (blocking != NULL) {
        b = PyObject_IsTrue(blocking);
        if (b < 0) {
            return -1;
        }
    }
    int64_t t = UNSET_TIMEOUT_NS;
    if (timeout != NULL && timeout_to_ns(timeout, &t) < 0) {
        return -1;
    }
    if (!b && t != UNSET_TIMEOUT_NS) {
        PyErr_SetString(PyExc_ValueError,
                        "can't specify a timeout for a non-blocking call");
        return -1;
    }
    if (t < 0 && t != UNSET_TIMEOUT_NS) {
        PyErr_SetString(PyExc_ValueError, DDL_MSG_TIMEOUT_NEGATIVE);
        return -1;
    }
    if (!b) {
        t = 0;
    }
    else if (t == UNSET_TIMEOUT_NS) {
        t = -1;
    }
    else {
        int64_t us = t / 1000 + (t % 1000 != 0);
        if (us > ddl_timeout_max_us()) {
            PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
            return -1;
        }
    }
    *blocking_out = b;
    *timeout_out = t;
    return 0;
}

/* ---- blocking acquisition ----------------------------------------------- */

/* Wait for the lock with the GIL released. Signals interrupt the wait: their
 * handlers run, and an exception from one aborts the acquire (returns
 * PY_LOCK_INTR with the exception set), as with the native lock.
 * timeout_ns: -1 forever, > 0 bounded. intr: whether signals interrupt. */
static PyLockStatus
acquire_blocking(PyThread_type_lock lock, int64_t timeout_ns, int intr)
{
    int64_t deadline = 0;
    PY_TIMEOUT_T us = -1;
    if (timeout_ns > 0) {
        deadline = ddl_monotonic_ns() + timeout_ns;
        us = (PY_TIMEOUT_T)(timeout_ns / 1000 + (timeout_ns % 1000 != 0));
    }
    for (;;) {
        PyLockStatus r;
        Py_BEGIN_ALLOW_THREADS r = PyThread_acquire_lock_timed(lock, us, intr);
        Py_END_ALLOW_THREADS if (r != PY_LOCK_INTR)
        {
            return r;
        }
        if (Py_MakePendingCalls() < 0) {
            return PY_LOCK_INTR;
        }
        if (timeout_ns > 0) {
            int64_t left = deadline - ddl_monotonic_ns();
            us = left <= 0 ? 0
                           : (PY_TIMEOUT_T)(left / 1000 + (left % 1000 != 0));
        }
    }
}

/* ---- recording ---------------------------------------------------------- */

static inline ddl_state *
state_of(PyObject *self)
{
    return (ddl_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* The lock was just acquired. sampled: chosen by the caller; wait_ns and p
 * describe the wait. Marks the hold as sampled when the record succeeds. */
static void
on_sampled_acquire(ddl_state *st, ddl_lockbase *lk, int64_t now_ns,
                   int64_t wait_ns, double p, int track_hold)
{
    double weight = 1.0 / p;
    if (ddl_lock_record(st, lk, wait_ns, 0, 0, weight) == 0 && track_hold) {
        lk->sampled = 1;
        lk->acquired_ns = now_ns ? now_ns : ddl_monotonic_ns();
        lk->weight = weight;
    }
}

/* Acquire with sampling. Returns 1 acquired, 0 not acquired, -1 error. */
static int
lockbase_acquire(ddl_state *st, ddl_lockbase *lk, int64_t timeout_ns, int intr,
                 int track_hold)
{
    if (PyThread_acquire_lock_timed(lk->lock, 0, 0) == PY_LOCK_ACQUIRED) {
        lk->locked = 1;
        if (sample_uncontended(st)) {
            on_sampled_acquire(st, lk, 0, 0, st->capture_p, track_hold);
        }
        return 1;
    }
    if (timeout_ns == 0) {
        return 0;
    }
    int64_t t0 = ddl_monotonic_ns();
    PyLockStatus r = acquire_blocking(lk->lock, timeout_ns, intr);
    if (r == PY_LOCK_INTR) {
        return -1;
    }
    if (r != PY_LOCK_ACQUIRED) {
        return 0; /* timed out: a failed acquire records nothing */
    }
    lk->locked = 1;
    if (st->running) {
        int64_t t1 = ddl_monotonic_ns();
        int64_t wait = t1 - t0;
        double p = contended_p(st, wait);
        if (p > 0 && (p >= 1.0 || ddl_rand_unit() <= p)) {
            on_sampled_acquire(st, lk, t1, wait, p, track_hold);
        }
    }
    return 1;
}

/* Called right before the underlying lock is released. Returns whether a
 * hold must be recorded after the release, with its values. */
static inline int
take_hold(ddl_lockbase *lk, int64_t *hold_ns, double *weight)
{
    if (!lk->sampled) {
        return 0;
    }
    lk->sampled = 0;
    int64_t h = ddl_monotonic_ns() - lk->acquired_ns;
    *hold_ns = h < 0 ? 0 : h;
    *weight = lk->weight;
    return 1;
}

/* ---- common type parts -------------------------------------------------- */

static PyObject *
lockbase_new_instance(ddl_state *st, PyTypeObject *tp, PyObject *site_code,
                      int site_lasti)
{
    ddl_lockbase *self = (ddl_lockbase *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "can't allocate lock");
        return NULL;
    }
    self->is_rlock = tp == st->rlock_type;
    self->site_code = Py_XNewRef(site_code);
    self->site_lasti = site_lasti;
    st->locks_created++;
    return (PyObject *)self;
}

static void
lockbase_dealloc(PyObject *op)
{
    ddl_lockbase *self = (ddl_lockbase *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    if (self->lock != NULL) {
        int held =
            self->is_rlock ? ((ddl_rlock *)self)->count > 0 : self->locked;
        if (held) {
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    Py_CLEAR(self->site_code);
    Py_CLEAR(self->name);
    if (self->is_rlock) {
        Py_CLEAR(((ddl_rlock *)self)->cond_ref);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyObject *
ddl_condition_rlock(ddl_state *st, PyObject *site_code, int site_lasti,
                    PyObject *cond)
{
    PyObject *ref = PyWeakref_NewRef(cond, NULL);
    if (ref == NULL) {
        return NULL;
    }
    PyObject *rl =
        lockbase_new_instance(st, st->rlock_type, site_code, site_lasti);
    if (rl == NULL) {
        Py_DECREF(ref);
        return NULL;
    }
    ((ddl_rlock *)rl)->cond_ref = ref; /* reference moved */
    return rl;
}

/* Both types refuse pickling exactly as the native ones do: by asking a
 * native twin (the outcome differs by version and protocol: a TypeError, or
 * a reduce value naming a class pickle then fails to find). arg: the
 * protocol for __reduce_ex__, NULL for __reduce__. */
static PyObject *
lock_reduce_ex(PyObject *self, PyObject *arg)
{
    ddl_lockbase *lk = (ddl_lockbase *)self;
    PyObject *mod = PyImport_ImportModule("_thread");
    if (mod == NULL) {
        return NULL;
    }
    PyObject *twin = PyObject_CallMethod(
        mod, lk->is_rlock ? "RLock" : "allocate_lock", NULL);
    Py_DECREF(mod);
    if (twin == NULL) {
        return NULL;
    }
    PyObject *r = arg != NULL
                      ? PyObject_CallMethod(twin, "__reduce_ex__", "O", arg)
                      : PyObject_CallMethod(twin, "__reduce__", NULL);
    Py_DECREF(twin);
    return r;
}

static PyObject *
lock_reduce(PyObject *self, PyObject *unused)
{
    return lock_reduce_ex(self, NULL);
}

/* New reference to the lock's label (resolving the name if needed); for
 * introspection and tests: ddlock._ddlock.lock_name(lock). */
static PyObject *
lock_profile_name(PyObject *self, PyObject *unused)
{
    ddl_state *st = state_of(self);
    PyObject *name = ddl_lock_name(st, (ddl_lockbase *)self);
    if (name == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return name;
}

static PyObject *
lock_site(PyObject *self, void *unused)
{
    ddl_lockbase *lk = (ddl_lockbase *)self;
    if (lk->site_code == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *label = ddl_site_label(lk->site_code, lk->site_lasti);
    if (label == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return label;
}

static PyMemberDef lockbase_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ddl_lockbase, weakreflist),
     DDL_MEMBER_OFFSET_FLAG},
    {NULL},
};

static PyGetSetDef lockbase_getset[] = {
    {"_ddlock_site", lock_site, NULL, "creation site (file:line)", NULL},
    {NULL},
};

/* ---- Lock --------------------------------------------------------------- */

static PyObject *
lock_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    ddl_lockbase *lk = (ddl_lockbase *)self;
    ddl_state *st = state_of(self);
    int64_t timeout_ns = -1;
    if (nargs != 0 || kwnames != NULL) {
        int blocking;
        if (parse_acquire_args(args, nargs, kwnames, &blocking, &timeout_ns) <
            0) {
            return NULL;
        }
    }
    int r = lockbase_acquire(st, lk, timeout_ns, 1, 1);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
lock_release(PyObject *self, PyObject *unused)
{
    ddl_lockbase *lk = (ddl_lockbase *)self;
    if (!lk->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    int64_t hold = 0;
    double weight = 0;
    int record = take_hold(lk, &hold, &weight);
    lk->locked = 0;
    PyThread_release_lock(lk->lock);
    if (record) {
        ddl_lock_record(state_of(self), lk, 0, hold, 1, weight);
    }
    Py_RETURN_NONE;
}

static PyObject *
lock_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return lock_release(self, NULL);
}

static PyObject *
lock_locked(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(((ddl_lockbase *)self)->locked);
}

static PyObject *
lock_at_fork_reinit(PyObject *self, PyObject *unused)
{
    ddl_lockbase *lk = (ddl_lockbase *)self;
    PyThread_type_lock fresh = PyThread_allocate_lock();
    if (fresh == NULL) {
        PyErr_SetString(PyExc_MemoryError, "can't allocate lock");
        return NULL;
    }
    /* The old lock may be in any state (held by a thread that does not
     * exist in this process): it is abandoned, never freed or released. */
    lk->lock = fresh;
    lk->locked = 0;
    lk->sampled = 0;
    if (lk->is_rlock) {
        ((ddl_rlock *)lk)->owner = 0;
        ((ddl_rlock *)lk)->count = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *
lock_repr(PyObject *self)
{
    ddl_lockbase *lk = (ddl_lockbase *)self;
    return PyUnicode_FromFormat("<%s _thread.lock object at %p, profiled by "
                                "ddlock>",
                                lk->locked ? "locked" : "unlocked", self);
}

static PyObject *
lock_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "lock() takes no arguments");
        return NULL;
    }
    ddl_state *st = (ddl_state *)PyType_GetModuleState(tp);
    PyObject *code = NULL;
    int lasti = -1;
    if (ddl_creation_site(st, &code, &lasti) < 0) {
        PyErr_Clear();
    }
    PyObject *r = lockbase_new_instance(st, tp, code, lasti);
    Py_XDECREF(code);
    return r;
}

#define LOCK_ACQUIRE_DOC                                                      \
    "acquire(blocking=True, timeout=-1) -> bool\n\nLock the lock (profiled)."

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire,
     METH_FASTCALL | METH_KEYWORDS, LOCK_ACQUIRE_DOC},
    {"acquire_lock", (PyCFunction)(void (*)(void))lock_acquire,
     METH_FASTCALL | METH_KEYWORDS, LOCK_ACQUIRE_DOC},
    {"release", lock_release, METH_NOARGS, "Release the lock."},
    {"release_lock", lock_release, METH_NOARGS, "Release the lock."},
    {"locked", lock_locked, METH_NOARGS, "Whether the lock is held."},
    {"locked_lock", lock_locked, METH_NOARGS, "Whether the lock is held."},
    /* natively __enter__ is acquire itself, arguments included */
    {"__enter__", (PyCFunction)(void (*)(void))lock_acquire,
     METH_FASTCALL | METH_KEYWORDS, "Acquire the lock."},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL,
     "Release the lock."},
    {"_at_fork_reinit", lock_at_fork_reinit, METH_NOARGS, NULL},
    {"__reduce__", lock_reduce, METH_NOARGS, NULL},
    {"__reduce_ex__", lock_reduce_ex, METH_O, NULL},
    {"_ddlock_name", lock_profile_name, METH_NOARGS,
     "The lock's profile label, resolving it now if needed."},
    {NULL},
};

static PyType_Slot lock_slots[] = {
    {Py_tp_dealloc, lockbase_dealloc},
    {Py_tp_repr, lock_repr},
    {Py_tp_methods, lock_methods},
    {Py_tp_members, lockbase_members},
    {Py_tp_getset, lockbase_getset},
    {Py_tp_new, lock_tp_new},
    {Py_tp_doc, "A profiled lock: same behaviour as _thread.lock."},
    {0, NULL},
};

static PyType_Spec lock_spec = {
    .name = "ddlock._ddlock.Lock",
    .basicsize = sizeof(ddl_lockbase),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lock_slots,
};

/* ---- RLock -------------------------------------------------------------- */

static PyObject *
rlock_acquire_timeout(PyObject *self, int64_t timeout_ns)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    ddl_state *st = state_of(self);
    unsigned long me = PyThread_get_thread_ident();
    if (rl->count > 0 && rl->owner == me) {
        if (rl->count == ULONG_MAX) {
            PyErr_SetString(PyExc_OverflowError,
                            "Internal lock count overflowed");
            return NULL;
        }
        rl->count++;
        /* re-entrant acquires are counted; the hold stays the outermost */
        if (sample_uncontended(st)) {
            on_sampled_acquire(st, &rl->base, 0, 0, st->capture_p, 0);
        }
        Py_RETURN_TRUE;
    }
    int r = lockbase_acquire(st, &rl->base, timeout_ns, 1, 1);
    if (r < 0) {
        return NULL;
    }
    if (r) {
        rl->owner = me;
        rl->count = 1;
    }
    return PyBool_FromLong(r);
}

static PyObject *
rlock_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    int64_t timeout_ns = -1;
    if (nargs != 0 || kwnames != NULL) {
        int blocking;
        if (parse_acquire_args(args, nargs, kwnames, &blocking, &timeout_ns) <
            0) {
            return NULL;
        }
    }
    return rlock_acquire_timeout(self, timeout_ns);
}

/* Fully release the underlying lock (count already dropped to zero). */
static void
rlock_release_underlying(PyObject *self)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    int64_t hold = 0;
    double weight = 0;
    int record = take_hold(&rl->base, &hold, &weight);
    rl->owner = 0;
    PyThread_release_lock(rl->base.lock);
    if (record) {
        ddl_lock_record(state_of(self), &rl->base, 0, hold, 1, weight);
    }
}

static PyObject *
rlock_release(PyObject *self, PyObject *unused)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    unsigned long me = PyThread_get_thread_ident();
    if (rl->count == 0 || rl->owner != me) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    if (--rl->count == 0) {
        rlock_release_underlying(self);
    }
    else {
        /* an inner release of a re-entered lock: counted like the inner
         * acquire (sampled the same way), its hold belongs to the outer */
        ddl_state *st = state_of(self);
        if (sample_uncontended(st)) {
            ddl_lock_record(st, &rl->base, 0, 0, 1, 1.0 / st->capture_p);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
rlock_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return rlock_release(self, NULL);
}

PyObject *
ddl_rlock_enter(PyObject *self)
{
    return rlock_acquire_timeout(self, -1);
}

PyObject *
ddl_rlock_exit(PyObject *self)
{
    return rlock_release(self, NULL);
}

static PyObject *
rlock_release_save(PyObject *self, PyObject *unused)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    if (rl->count == 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    unsigned long count = rl->count, owner = rl->owner;
    rl->count = 0;
    rlock_release_underlying(self);
    return Py_BuildValue("(kk)", count, owner);
}

static PyObject *
rlock_acquire_restore(PyObject *self, PyObject *state)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    unsigned long count, owner;
    PyObject *args = PyTuple_Pack(1, state);
    if (args == NULL) {
        return NULL;
    }
    int ok = PyArg_ParseTuple(args, "(kk):_acquire_restore", &count, &owner);
    Py_DECREF(args);
    if (!ok) {
        return NULL;
    }
    /* Condition.wait() re-acquiring: profiled like any acquire, so its
     * contention is seen, and the new hold starts here. Not interruptible,
     * like the native method. */
    int r = lockbase_acquire(state_of(self), &rl->base, -1, 0, 1);
    if (r <= 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "couldn't acquire lock");
        }
        return NULL;
    }
    rl->owner = owner;
    rl->count = count;
    Py_RETURN_NONE;
}

static PyObject *
rlock_is_owned(PyObject *self, PyObject *unused)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    return PyBool_FromLong(rl->count > 0 &&
                           rl->owner == PyThread_get_thread_ident());
}

static DDL_MAYBE_UNUSED PyObject *
rlock_recursion_count(PyObject *self, PyObject *unused)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    return PyLong_FromUnsignedLong(
        rl->owner == PyThread_get_thread_ident() ? rl->count : 0);
}

static PyObject *
rlock_repr(PyObject *self)
{
    ddl_rlock *rl = (ddl_rlock *)self;
    return PyUnicode_FromFormat(
        "<%s _thread.RLock object owner=%lu count=%lu at %p, profiled by "
        "ddlock>",
        rl->count ? "locked" : "unlocked", rl->owner, rl->count, self);
}

static PyObject *
rlock_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    ddl_state *st = (ddl_state *)PyType_GetModuleState(tp);
    PyObject *code = NULL;
    int lasti = -1;
    if (ddl_creation_site(st, &code, &lasti) < 0) {
        PyErr_Clear();
    }
    PyObject *r = lockbase_new_instance(st, tp, code, lasti);
    Py_XDECREF(code);
    return r;
}

static PyMethodDef rlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))rlock_acquire,
     METH_FASTCALL | METH_KEYWORDS, LOCK_ACQUIRE_DOC},
    {"release", rlock_release, METH_NOARGS, "Release the lock."},
    {"__enter__", (PyCFunction)(void (*)(void))rlock_acquire,
     METH_FASTCALL | METH_KEYWORDS, "Acquire the lock."},
    {"__exit__", (PyCFunction)(void (*)(void))rlock_exit, METH_FASTCALL,
     "Release the lock."},
    {"_is_owned", rlock_is_owned, METH_NOARGS, NULL},
    {"_release_save", rlock_release_save, METH_NOARGS, NULL},
    {"_acquire_restore", rlock_acquire_restore, METH_O, NULL},
    DDL_RLOCK_RECURSION_COUNT_METHOD(rlock_recursion_count){
        "_at_fork_reinit", lock_at_fork_reinit, METH_NOARGS, NULL},
    {"__reduce__", lock_reduce, METH_NOARGS, NULL},
    {"__reduce_ex__", lock_reduce_ex, METH_O, NULL},
    {"_ddlock_name", lock_profile_name, METH_NOARGS,
     "The lock's profile label, resolving it now if needed."},
    {NULL},
};

static PyType_Slot rlock_slots[] = {
    {Py_tp_dealloc, lockbase_dealloc},
    {Py_tp_repr, rlock_repr},
    {Py_tp_methods, rlock_methods},
    {Py_tp_members, lockbase_members},
    {Py_tp_getset, lockbase_getset},
    {Py_tp_new, rlock_tp_new},
    {Py_tp_doc,
     "A profiled re-entrant lock: same behaviour as _thread.RLock."},
    {0, NULL},
};

static PyType_Spec rlock_spec = {
    .name = "ddlock._ddlock.RLock",
    .basicsize = sizeof(ddl_rlock),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rlock_slots,
};

/* ---- factories ------------------------------------------------------------
 * A LockFactory stands in for threading.Lock / threading.RLock while ddlock
 * runs. Calling it makes a profiled lock (or a native one for excluded
 * modules, or when called with arguments, which go to the original so that
 * errors are the original's). It has no __get__, so stored as a class
 * attribute it does not bind; isinstance(), `|`, subclassing and pickling
 * behave as they do with the original object. */

typedef struct {
    PyObject_HEAD PyObject *original; /* the object threading.X was */
    PyObject *native;   /* what makes a native lock: _thread factory */
    PyTypeObject *kind; /* Lock or RLock type (borrowed from state) */
    PyObject *dict;     /* __name__, __qualname__, __module__, __doc__ */
    vectorcallfunc vectorcall;
    PyObject *weakreflist; /* weakref.ref(threading.Lock) works natively */
} ddl_factory;

static PyObject *
factory_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    ddl_factory *f = (ddl_factory *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        return PyObject_Vectorcall(f->original, args, nargsf, kwnames);
    }
    ddl_state *st = (ddl_state *)PyType_GetModuleState(Py_TYPE(callable));
    if (!st->running) {
        return PyObject_CallNoArgs(f->native);
    }
    PyObject *code = NULL;
    int lasti = -1;
    int profile = ddl_creation_site(st, &code, &lasti);
    if (profile < 0) {
        /* never let the profiler break lock creation */
        PyErr_Clear();
        profile = 1;
    }
    PyObject *r = profile ? lockbase_new_instance(st, f->kind, code, lasti)
                          : PyObject_CallNoArgs(f->native);
    Py_XDECREF(code);
    return r;
}

static PyObject *
factory_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    PyObject *kind, *original, *native;
    static char *kwlist[] = {"kind", "original", "native", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:LockFactory", kwlist,
                                     &kind, &original, &native)) {
        return NULL;
    }
    ddl_state *st = (ddl_state *)PyType_GetModuleState(tp);
    if (kind != (PyObject *)st->lock_type &&
        kind != (PyObject *)st->rlock_type) {
        PyErr_SetString(PyExc_TypeError,
                        "kind must be ddlock._ddlock.Lock or RLock");
        return NULL;
    }
    ddl_factory *self = (ddl_factory *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->kind = (PyTypeObject *)Py_NewRef(kind);
    self->original = Py_NewRef(original);
    self->native = Py_NewRef(native);
    self->vectorcall = factory_vectorcall;
    self->dict = PyDict_New();
    if (self->dict == NULL) {
        goto error;
    }
    static const char *copied[] = {"__name__", "__qualname__", "__module__",
                                   "__doc__"};
    for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++) {
        PyObject *v = PyObject_GetAttrString(original, copied[i]);
        if (v == NULL) {
            PyErr_Clear();
            continue;
        }
        int rc = PyDict_SetItemString(self->dict, copied[i], v);
        Py_DECREF(v);
        if (rc < 0) {
            goto error;
        }
    }
    if (PyDict_SetItemString(self->dict, "__wrapped__", original) < 0) {
        goto error;
    }
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static int
factory_traverse(PyObject *op, visitproc visit, void *arg)
{
    ddl_factory *f = (ddl_factory *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(f->original);
    Py_VISIT(f->native);
    Py_VISIT(f->kind);
    Py_VISIT(f->dict);
    return 0;
}

static int
factory_clear(PyObject *op)
{
    ddl_factory *f = (ddl_factory *)op;
    Py_CLEAR(f->original);
    Py_CLEAR(f->native);
    Py_CLEAR(f->kind);
    Py_CLEAR(f->dict);
    return 0;
}

static void
factory_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((ddl_factory *)op)->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    factory_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
factory_instancecheck(PyObject *self, PyObject *obj)
{
    ddl_factory *f = (ddl_factory *)self;
    if (Py_TYPE(obj) == f->kind) {
        /* still let a non-type original raise as it would natively */
        if (!PyType_Check(f->original)) {
            int r = PyObject_IsInstance(obj, f->original);
            if (r < 0) {
                return NULL;
            }
            return PyBool_FromLong(r);
        }
        Py_RETURN_TRUE;
    }
    int r = PyObject_IsInstance(obj, f->original);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
factory_subclasscheck(PyObject *self, PyObject *cls)
{
    ddl_factory *f = (ddl_factory *)self;
    if (cls == (PyObject *)f->kind && PyType_Check(f->original)) {
        Py_RETURN_TRUE;
    }
    int r = PyObject_IsSubclass(cls, f->original);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
factory_mro_entries(PyObject *self, PyObject *bases)
{
    return PyTuple_Pack(1, ((ddl_factory *)self)->original);
}

static PyObject *
factory_reduce(PyObject *self, PyObject *unused)
{
    /* pickled by reference, like the original: threading.<name> */
    ddl_factory *f = (ddl_factory *)self;
    PyObject *name = PyDict_GetItemString(f->dict, "__qualname__");
    if (name == NULL) {
        name = PyDict_GetItemString(f->dict, "__name__");
    }
    if (name == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot pickle this lock factory");
        return NULL;
    }
    return Py_NewRef(name);
}

static PyObject *
factory_or(PyObject *a, PyObject *b)
{
    /* X | Y with the factory on either side means the original there; when
     * the original is a type (3.13's _thread.lock), the profiled type joins
     * it so that isinstance(profiled_lock, threading.Lock | None) holds as
     * it does natively. A non-type original raises its own TypeError. */
    PyObject *l = a, *r = b, *lr = NULL, *rr = NULL, *res;
    {
        /* errors, if any, are the native ones */
        PyObject *nl = Py_TYPE(a)->tp_new == factory_new
                           ? ((ddl_factory *)a)->original
                           : a;
        PyObject *nr = Py_TYPE(b)->tp_new == factory_new
                           ? ((ddl_factory *)b)->original
                           : b;
        PyObject *native = PyNumber_Or(nl, nr);
        if (native == NULL) {
            return NULL;
        }
        Py_DECREF(native);
    }
    if (Py_TYPE(a)->tp_new == factory_new) {
        ddl_factory *f = (ddl_factory *)a;
        l = f->original;
        if (PyType_Check(l)) {
            l = lr = PyNumber_Or(f->original, (PyObject *)f->kind);
            if (l == NULL) {
                return NULL;
            }
        }
    }
    if (Py_TYPE(b)->tp_new == factory_new) {
        ddl_factory *f = (ddl_factory *)b;
        r = f->original;
        if (PyType_Check(r)) {
            r = rr = PyNumber_Or(f->original, (PyObject *)f->kind);
            if (r == NULL) {
                Py_XDECREF(lr);
                return NULL;
            }
        }
    }
    res = PyNumber_Or(l, r);
    Py_XDECREF(lr);
    Py_XDECREF(rr);
    return res;
}

static PyObject *
factory_repr(PyObject *self)
{
    return PyUnicode_FromFormat("<ddlock profiled factory for %R>",
                                ((ddl_factory *)self)->original);
}

static PyObject *
factory_getattro(PyObject *self, PyObject *name)
{
    ddl_factory *f = (ddl_factory *)self;
    PyObject *v = PyDict_GetItemWithError(f->dict, name);
    if (v != NULL) {
        return Py_NewRef(v);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyObject_GenericGetAttr(self, name);
}

static PyObject *
factory_get_original(PyObject *self, void *unused)
{
    return Py_NewRef(((ddl_factory *)self)->original);
}

/* copy.copy()/deepcopy() of the original (a builtin function or type, or
 * threading.RLock) give the object itself: so do the factory's. */
static PyObject *
factory_copy(PyObject *self, PyObject *unused)
{
    return Py_NewRef(self);
}

static PyObject *
factory_deepcopy(PyObject *self, PyObject *memo)
{
    return Py_NewRef(self);
}

static PyMethodDef factory_methods[] = {
    {"__copy__", factory_copy, METH_NOARGS, NULL},
    {"__deepcopy__", factory_deepcopy, METH_O, NULL},
    {"__instancecheck__", factory_instancecheck, METH_O, NULL},
    {"__subclasscheck__", factory_subclasscheck, METH_O, NULL},
    {"__mro_entries__", factory_mro_entries, METH_O, NULL},
    {"__reduce__", factory_reduce, METH_NOARGS, NULL},
    {NULL},
};

static PyGetSetDef factory_getset[] = {
    {"_ddlock_original", factory_get_original, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef factory_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(ddl_factory, vectorcall),
     DDL_MEMBER_OFFSET_FLAG},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ddl_factory, weakreflist),
     DDL_MEMBER_OFFSET_FLAG},
    {NULL},
};

static PyType_Slot factory_slots[] = {
    {Py_tp_new, factory_new},
    {Py_tp_dealloc, factory_dealloc},
    {Py_tp_traverse, factory_traverse},
    {Py_tp_clear, factory_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, factory_repr},
    {Py_tp_getattro, factory_getattro},
    {Py_tp_methods, factory_methods},
    {Py_tp_getset, factory_getset},
    {Py_tp_members, factory_members},
    {Py_nb_or, factory_or},
    {0, NULL},
};

static PyType_Spec factory_spec = {
    .name = "ddlock._ddlock.LockFactory",
    .basicsize = sizeof(ddl_factory),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = factory_slots,
};

int
ddl_lock_types_init(PyObject *module, ddl_state *st)
{
    st->lock_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &lock_spec, NULL);
    if (st->lock_type == NULL) {
        return -1;
    }
    st->rlock_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &rlock_spec, NULL);
    if (st->rlock_type == NULL) {
        return -1;
    }
    st->factory_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &factory_spec, NULL);
    if (st->factory_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Lock", (PyObject *)st->lock_type) < 0 ||
        PyModule_AddObjectRef(module, "RLock", (PyObject *)st->rlock_type) <
            0 ||
        PyModule_AddObjectRef(module, "LockFactory",
                              (PyObject *)st->factory_type) < 0) {
        return -1;
    }
    return 0;
}

/* ---- turning an event into a sample ----------------------------------- */

/* Stochastic rounding keeps weighted counts unbiased. */
static int64_t
weighted(double value, double weight)
{
    double x = value * weight;
    double fl = floor(x);
    if (x - fl > 0 && ddl_rand_unit() <= x - fl) {
        fl += 1;
    }
    return (int64_t)fl;
}

/* The OS thread id, read once per thread and generation (a fork bumps the
 * generation, so the child's forking thread reads its new id). */
static unsigned long
cached_native_id(ddl_state *st)
{
    if (ddl_tls.native_id_generation != st->generation ||
        ddl_tls.native_id == 0) {
        ddl_tls.native_id = PyThread_get_thread_native_id();
        ddl_tls.native_id_generation = st->generation;
    }
    return ddl_tls.native_id;
}

#define STACK_ON_C_STACK 65

/* ---- the record memo (ddlock.h) ------------------------------------------
 * Most sampled events of a program repeat a few keys: the same lock taken
 * at the same line of the same stack by the same thread. Capturing the
 * stack (a code and line cache lookup per frame) and resolving the key in
 * the profile (a cache probe per frame and label, a sample lookup) is then
 * work done again for the same answer, and on a rarely sampled path most
 * of its cost is cold caches. An entry remembers the raw stack and the
 * labels of a key it recorded, and the profile's ticket for its sample: an
 * event with the same raw stack (code, filename and instruction of every
 * frame: what the captured frames are computed from, with the state's
 * configuration, fixed within a generation) and the same labels (strings
 * compared by pointer: the entry owns what they point into) adds its
 * values by ticket. Any difference, a stale ticket (the profile was
 * exported) or a stack deeper than DDL_MEMO_FRAMES takes the full path. */

static uint64_t
memo_mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * 0x9e3779b97f4a7c15ULL;
    return h ^ (h >> 29);
}

/* The slot of a key: from its leaf-most parts only (memo_match compares
 * the whole key). */
static uint64_t
memo_hash(const ddl_raw_frame *raw, int nraw, const ddl_label *labels,
          size_t nl, int is_release)
{
    uint64_t h = memo_mix(0x243f6a8885a308d3ULL,
                          (uint64_t)is_release << 32 | (uint32_t)nraw);
    if (nraw > 0) {
        h = memo_mix(h, (uint64_t)(uintptr_t)raw[0].code ^
                            (uint64_t)(uint32_t)raw[0].lasti << 40);
    }
    if (nl > 1) {
        h = memo_mix(h, (uint64_t)(uintptr_t)labels[0].str.ptr ^
                            (uint64_t)labels[1].num << 20);
    }
    return h;
}

static int
memo_match(ddl_state *st, const ddl_memo_entry *e, uint64_t h,
           const ddl_raw_frame *raw, int nraw, const ddl_label *labels,
           size_t nl, int is_release)
{
    if (e->hash != h || e->nframes != nraw || e->nlabels != (int)nl ||
        e->is_release != is_release || e->generation != st->generation) {
        return 0;
    }
    for (int i = 0; i < nraw; i++) {
        if (e->frames[i].code != raw[i].code ||
            e->frames[i].lasti != raw[i].lasti ||
            e->frames[i].filename != raw[i].filename) {
            return 0;
        }
    }
    for (size_t i = 0; i < nl; i++) {
        const ddl_label *a = &e->labels[i], *b = &labels[i];
        if (a->key.ptr != b->key.ptr || a->key.len != b->key.len ||
            a->str.ptr != b->str.ptr || a->str.len != b->str.len ||
            a->num != b->num) {
            return 0;
        }
    }
    return 1;
}

/* Empty entry e into refs (room for its references); returns how many. */
static size_t
memo_take(ddl_memo_entry *e, PyObject **refs)
{
    size_t n = 0;
    for (int i = 0; i < e->nframes; i++) {
        refs[n++] = e->frames[i].code;
        refs[n++] = e->frames[i].filename;
    }
    for (int i = 0; i < e->nowners; i++) {
        refs[n++] = e->owners[i];
    }
    e->nframes = -1;
    e->nowners = 0;
    e->hash = 0;
    return n;
}

#define MEMO_REFS (2 * DDL_MEMO_FRAMES + DDL_MEMO_OWNERS)
/* a record's labels always fit an entry (ddl_lock_record checks the owners
 * and the stack depth; its ticket is never 0 once added) */
_Static_assert(4 + DDL_EXTRA_LABELS <= DDL_MEMO_LABELS, "memo labels");

/* Fill e (the references it takes are new ones; the entry's old ones are
 * dropped last, since that may run Python code). */
static void
memo_fill(ddl_state *st, ddl_memo_entry *e, uint64_t h,
          const ddl_raw_frame *raw, int nraw, const ddl_label *labels,
          size_t nl, int is_release, PyObject *const *owners, size_t nowners,
          uint64_t ticket)
{
    PyObject *old[MEMO_REFS];
    size_t nold = memo_take(e, old);
    for (int i = 0; i < nraw; i++) {
        e->frames[i].code = Py_NewRef(raw[i].code);
        e->frames[i].filename = Py_NewRef(raw[i].filename);
        e->frames[i].lasti = raw[i].lasti;
    }
    for (size_t i = 0; i < nowners; i++) {
        e->owners[i] = Py_NewRef(owners[i]);
    }
    memcpy(e->labels, labels, nl * sizeof(ddl_label));
    e->nowners = (int)nowners;
    e->nlabels = (int)nl;
    e->is_release = is_release;
    e->generation = st->generation;
    e->ticket = ticket;
    e->hash = h;
    e->nframes = nraw;
    for (size_t i = 0; i < nold; i++) {
        Py_DECREF(old[i]);
    }
}

static ddl_memo_entry *
memo_table(ddl_state *st)
{
    if (st->memo == NULL) {
        st->memo = PyMem_Calloc(DDL_MEMO_SIZE, sizeof(ddl_memo_entry));
        if (st->memo == NULL) {
            PyErr_Clear();
            return NULL;
        }
        for (size_t i = 0; i < DDL_MEMO_SIZE; i++) {
            st->memo[i].nframes = -1;
        }
    }
    return st->memo;
}

void
ddl_memo_clear(ddl_state *st)
{
    PyObject *refs[MEMO_REFS];
    if (st->memo == NULL) {
        return;
    }
    for (size_t i = 0; i < DDL_MEMO_SIZE; i++) {
        /* each entry is empty before its references go (they may run
         * code that records, even here) */
        size_t n = memo_take(&st->memo[i], refs);
        for (size_t j = 0; j < n; j++) {
            Py_DECREF(refs[j]);
        }
    }
}

/* Record one sampled event with the current stack and the lock's labels.
 * Never raises and never lets an exception escape (the caller's pending
 * exception, e.g. in __exit__, is preserved). Returns 0 when recorded. */
int
ddl_lock_record(ddl_state *st, ddl_lockbase *lk, int64_t wait_ns,
                int64_t hold_ns, int is_release, double weight)
{
    if (!st->running || st->profile == NULL) {
        return -1;
    }
    if (ddl_tls.busy) {
        /* acquired by something the profiler itself triggered (a __del__
         * run by an allocation, a finalizer): straight through, unrecorded */
        st->events_reentrant_skipped++;
        return -1;
    }
    ddl_tls.busy = 1;
    int gc_was_enabled = ddl_gc_pause();
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);

    int rc = -1;
    PyObject *name = ddl_lock_name(st, lk);
    unsigned long ident = PyThread_get_thread_ident();
    PyObject *tname = ddl_thread_name(st, ident);

    /* the labels, and the objects their strings point into: own (name,
     * tname and escaped bytes made for them: references of this function)
     * and extra_refs */
    ddl_label labels[4 + DDL_EXTRA_LABELS];
    ddl_label_refs extra_refs;
    PyObject *own[4];
    size_t nown = 0;
    size_t nl = 0;
    ddl_str name_s = {"<unknown>", 9};
    if (name != NULL) {
        own[nown++] = name;
        ddl_str_of(&name_s, name, own, &nown);
    }
    labels[nl++] = (ddl_label){{"lock name", 9}, name_s, 0};
    labels[nl++] = (ddl_label){{"thread id", 9}, {NULL, 0}, (int64_t)ident};
    labels[nl++] = (ddl_label){
        {"thread native id", 16}, {NULL, 0}, (int64_t)cached_native_id(st)};
    if (tname != NULL) {
        ddl_str tname_s;
        own[nown++] = tname;
        ddl_str_of(&tname_s, tname, own, &nown);
        labels[nl++] = (ddl_label){{"thread name", 11}, tname_s, 0};
    }
    nl += ddl_sample_extra_labels(st, lk, &labels[nl], &extra_refs);

    int64_t values[DDL_NVALUES] = {0, 0, 0, 0};
    if (is_release) {
        values[DDL_V_RELEASE] = weighted(1.0, weight);
        values[DDL_V_HOLD] = weighted((double)hold_ns, weight);
    }
    else {
        values[DDL_V_ACQUIRE] = weighted(1.0, weight);
        values[DDL_V_WAIT] = weighted((double)wait_ns, weight);
    }

    ddl_raw_frame raw[DDL_MEMO_FRAMES];
    int nraw = -1;
    uint64_t h = 0;
    ddl_memo_entry *entry = NULL;
    /* the memo keeps the strings (and escaped bytes) the labels point
     * into, nothing else: not the task object (its id is a number) */
    PyObject *owners[DDL_MEMO_OWNERS];
    size_t nowners = 0;
    int memo_ok = 1;
    for (size_t i = 0; i < nown + extra_refs.n && memo_ok; i++) {
        PyObject *o = i < nown ? own[i] : extra_refs.refs[i - nown];
        if (PyUnicode_CheckExact(o) || PyBytes_CheckExact(o)) {
            memo_ok = nowners < DDL_MEMO_OWNERS;
            if (memo_ok) {
                owners[nowners++] = o;
            }
        }
        else if (i < nown || PyUnicode_Check(o) || PyBytes_Check(o)) {
            memo_ok = 0; /* a subclass: its instance may own anything */
        }
    }
    if (memo_ok && memo_table(st) != NULL) {
        nraw = ddl_stack_raw(raw, DDL_MEMO_FRAMES);
    }
    if (nraw >= 0) {
        h = memo_hash(raw, nraw, labels, nl, is_release);
        entry = &st->memo[h & (DDL_MEMO_SIZE - 1)];
        if (memo_match(st, entry, h, raw, nraw, labels, nl, is_release) &&
            ddl_profile_add_ticket(st->profile, entry->ticket, values) == 0) {
            st->events_sampled++;
            rc = 0;
            goto labels_done;
        }
    }

    ddl_frame frames_local[STACK_ON_C_STACK];
    PyObject *refs_local[STACK_ON_C_STACK * DDL_REFS_PER_FRAME + 4];
    ddl_frame *frames = frames_local;
    PyObject **refs = refs_local;
    size_t cap = (size_t)st->max_frames + 1;
    if (cap > STACK_ON_C_STACK) {
        frames = PyMem_Malloc(cap * sizeof(ddl_frame));
        refs =
            PyMem_Malloc((cap * DDL_REFS_PER_FRAME + 4) * sizeof(PyObject *));
        if (frames == NULL || refs == NULL) {
            goto frames_done;
        }
    }
    else {
        cap = STACK_ON_C_STACK;
    }
    ddl_stack stack;
    ddl_stack_capture(st, &stack, frames, refs, cap);
    uint64_t ticket = 0;
    /* (the capture may have run a weakref callback, even one that stopped
     * the profiler) */
    if (st->profile != NULL &&
        ddl_profile_add_ex(st->profile, stack.frames, stack.nframes, labels,
                           nl, values, &ticket) == 0) {
        st->events_sampled++;
        rc = 0;
        if (entry != NULL) {
            memo_fill(st, entry, h, raw, nraw, labels, nl, is_release, owners,
                      nowners, ticket);
        }
    }
    ddl_stack_release(&stack);
frames_done:
    if (frames != frames_local) {
        PyMem_Free(frames);
        PyMem_Free(refs);
    }
labels_done:
    for (size_t i = 0; i < nown; i++) {
        Py_DECREF(own[i]);
    }
    ddl_label_refs_release(&extra_refs);
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    ddl_gc_resume(gc_was_enabled);
    ddl_tls.busy = 0;
    return rc;
}
