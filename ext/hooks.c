/* Method hooks of the Python-level primitives' classes, profiled in place:
 * threading.Semaphore, BoundedSemaphore and Condition, asyncio's Lock,
 * Semaphore, BoundedSemaphore and Condition, threading's pure-Python RLock
 * and gevent's lock. While ddlock runs, a few entries of these classes'
 * dicts are Hooks (ddlock/_primitives.py puts them there): C callables
 * that run the original function -- the stdlib's own code, so tracers and
 * profilers see the native calls, and no frame of ddlock's -- and sample
 * around it. The classes stay the stdlib's (type, __mro__, pickling,
 * copies), and a Hook read from the class is the original function
 * (signatures, source files).
 *
 * - __init__: after the original, a profiled object gets a Tracker
 *   (tracker.c) with its creation site; a Condition's lock is profiled
 *   instead, labelled by the Condition (a native lock through lock.c).
 * - acquire: a wait is timed (the clock read around the call); an acquire
 *   that cannot wait (the primitive's state read without running code of
 *   the user's) is sampled by the per-thread countdown.
 * - asyncio's acquire returns the original coroutine, or, when it may
 *   wait, a Waiting object that drives it and times it (an awaitable
 *   registered as a collections.abc.Coroutine, so asyncio accepts it
 *   wherever it takes a coroutine).
 * - release (and _release_save): after the original, the sampled hold the
 *   release ends is recorded.
 */
#include "tracker.h"

#include "order.h"

#include <string.h>

enum {
    H_INIT = 0,        /* __init__: profile the new object */
    H_ACQUIRE,         /* acquire(blocking=True, timeout=...), __enter__ */
    H_RELEASE,         /* release(...) */
    H_RELEASE_SAVE,    /* releases every level (Condition.wait) */
    H_ACQUIRE_RESTORE, /* re-acquires after Condition.wait() */
    H_AACQUIRE,        /* asyncio acquire(): returns an awaitable */
    H_WAIT,            /* Condition.wait(): a condition wait, timed */
    H_WINIT,           /* __init__ of what waits through a Condition (kind:
                          its DDL_W_*): profile its waits */
    H_AWAIT,           /* asyncio Condition.wait(), Event.wait(): returns
                          an awaitable, timed when it may suspend */
    H_AQGET,           /* asyncio Queue.get() */
    H_AQPUT,           /* asyncio Queue.put() */
    H_COUNT
};

typedef struct {
    PyObject_HEAD int op;
    int kind;       /* H_INIT: what the class makes */
    PyObject *orig; /* the original function */
    ddl_state *st;  /* its module's (alive while the Hook's type is) */
    vectorcallfunc vectorcall;
} ddl_hook;

/* New reference to obj.name when reading it runs no code of the user's (a
 * plain instance attribute: the generic getattr and no class attribute of
 * that name), else NULL (no exception). */
static PyObject *
plain_attr(PyObject *obj, PyObject *name)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp->tp_getattro != PyObject_GenericGetAttr ||
        ddl_type_lookup(tp, name) != NULL) {
        return NULL;
    }
    PyObject *v = NULL;
    if (ddl_getattr_optional(obj, name, &v) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return v;
}

/* Is v an int above zero? */
static int
positive_int(PyObject *v)
{
    if (v == NULL || !PyLong_CheckExact(v)) {
        return 0;
    }
    int overflow = 0;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    PyErr_Clear();
    return overflow > 0 || x > 0;
}

/* Does a sync acquire of obj (kind) obviously not wait? A Semaphore with a
 * free slot, a pure-Python RLock the thread owns. Otherwise it is timed. */
static int
sync_free(ddl_state *st, int kind, PyObject *obj)
{
    int free = 0;
    if (kind == DDL_K_SEMAPHORE || kind == DDL_K_BSEMAPHORE) {
        PyObject *v = plain_attr(obj, st->str__value);
        free = positive_int(v);
        Py_XDECREF(v);
    }
    else if (kind == DDL_K_RLOCK) {
        PyObject *v = plain_attr(obj, st->str__owner);
        if (v != NULL && PyLong_CheckExact(v)) {
            unsigned long owner = PyLong_AsUnsignedLong(v);
            free = !PyErr_Occurred() && owner == PyThread_get_thread_ident();
            PyErr_Clear();
        }
        Py_XDECREF(v);
    }
    return free;
}

/* Would an asyncio acquire of obj suspend? Reads the lock's state without
 * running code of the user's; when the state is not the stdlib's, says yes
 * (the wait is then measured, which is always correct). */
static int
asyncio_would_wait(ddl_state *st, int kind, PyObject *obj)
{
    PyObject *v;
    if (kind == DDL_K_ALOCK || kind == DDL_K_ACONDITION) {
        v = plain_attr(obj, st->str__locked);
        if (v == NULL) {
            return 1;
        }
        int locked = v != Py_False;
        Py_DECREF(v);
        if (locked) {
            return 1;
        }
    }
    else {
        v = plain_attr(obj, st->str__value);
        if (v == NULL) {
            return 1;
        }
        int free = positive_int(v);
        Py_DECREF(v);
        if (!free) {
            return 1;
        }
#if DDL_ASYNCIO_SEMAPHORE_WAKEUP_FLAG
        v = plain_attr(obj, st->str__wakeup_scheduled);
        if (v != NULL) {
            int scheduled = v != Py_False;
            Py_DECREF(v);
            if (scheduled) {
                return 1;
            }
        }
#endif
    }
    v = plain_attr(obj, st->str__waiters);
    if (v == NULL) {
        return 1;
    }
    int waiters = 0;
    if (v != Py_None) {
        /* a deque (or list), whose length runs no code of the user's */
        Py_ssize_t n =
            PyList_Check(v) || PyTuple_Check(v) ||
                    strcmp(Py_TYPE(v)->tp_name, "collections.deque") == 0
                ? PyObject_Length(v)
                : 1;
        waiters = n != 0;
        if (n < 0) {
            PyErr_Clear();
        }
    }
    Py_DECREF(v);
    return waiters;
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

/* ---- Waiting: an asyncio acquire that may wait ------------------------- */

typedef struct {
    PyObject_HEAD PyObject *coro; /* the original acquire() coroutine */
    PyObject *tracker;            /* strong: its ddl_tracker */
    ddl_state *st;
    int64_t t0;
    int done;
    ddl_wait *holder; /* holder.c: the holder task when it began, or NULL */
    int wait;         /* a condition wait (else an acquire) */
    int suspended;    /* it yielded at least once */
} ddl_waiting;

static PyObject *
waiting_new(ddl_state *st, PyObject *coro, ddl_tracker *t, int64_t t0)
{
    ddl_waiting *w = PyObject_GC_New(ddl_waiting, st->waiting_type);
    if (w == NULL) {
        return NULL;
    }
    w->coro = Py_NewRef(coro);
    w->tracker = Py_NewRef((PyObject *)t);
    w->st = st;
    w->t0 = t0;
    w->done = 0;
    w->holder = NULL;
    PyObject *holder =
        t->holder_task != NULL ? ddl_weakref_peek(t->holder_task) : NULL;
    if (holder != NULL) {
        w->holder = ddl_wait_task(st, holder);
    }
    w->wait = 0;
    w->suspended = 0;
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

/* One step of the coroutine (r: what it yielded, or NULL: it returned or
 * raised). On its return, the acquire is sampled; the value goes on as
 * the StopIteration it came in. */
static PyObject *
waiting_step(ddl_waiting *w, PyObject *r)
{
    if (r != NULL) {
        w->suspended = 1;
        return r;
    }
    if (w->wait) {
        /* a condition wait that suspended: returned (notified) or was
         * cancelled (asyncio's timeouts cancel); the exception stays */
        if (!w->done && w->suspended && w->st->running) {
            int outcome = PyErr_ExceptionMatches(PyExc_StopIteration)
                              ? DDL_WAIT_NOTIFIED
                              : DDL_WAIT_CANCELLED;
            ddl_tracker_waited(w->st, (ddl_tracker *)w->tracker, w->t0,
                               outcome);
        }
        w->done = 1;
        return NULL;
    }
    if (w->done || !PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return NULL;
    }
    w->done = 1;
    PyObject *value = ddl_stop_iteration_value();
    if (value == NULL) {
        return NULL;
    }
    if (result_true(value) && w->st->running) {
        ddl_wait *holder = w->holder;
        w->holder = NULL;
        ddl_tracker_acquired_w(w->st, (ddl_tracker *)w->tracker, DDL_ACQ_TIMED,
                               w->t0, 0, holder);
        if (w->st->lock_order) {
            ddl_tracker_order_acquired(w->st, (ddl_tracker *)w->tracker, 0, 1);
        }
    }
    ddl_set_stop_iteration(value);
    Py_DECREF(value);
    return NULL;
}

static PyObject *
waiting_send(PyObject *self, PyObject *arg)
{
    ddl_waiting *w = (ddl_waiting *)self;
    return waiting_step(w, ddl_coro_send(w->coro, arg));
}

static PyObject *
waiting_iternext(PyObject *self)
{
    return waiting_send(self, Py_None);
}

static PyObject *
waiting_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ddl_waiting *w = (ddl_waiting *)self;
    PyObject *throw = PyObject_GetAttrString(w->coro, "throw");
    if (throw == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_Vectorcall(throw, args, (size_t)nargs, NULL);
    Py_DECREF(throw);
    return waiting_step(w, r);
}

static PyObject *
waiting_close(PyObject *self, PyObject *unused)
{
    ddl_waiting *w = (ddl_waiting *)self;
    return PyObject_CallMethod(w->coro, "close", NULL);
}

static PyObject *
waiting_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int
waiting_traverse(PyObject *op, visitproc visit, void *arg)
{
    ddl_waiting *w = (ddl_waiting *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(w->coro);
    Py_VISIT(w->tracker);
    return 0;
}

static int
waiting_clear(PyObject *op)
{
    ddl_waiting *w = (ddl_waiting *)op;
    if (w->holder != NULL) {
        ddl_wait *holder = w->holder;
        w->holder = NULL;
        ddl_wait_end(w->st, holder, NULL, NULL, 0, 0);
    }
    Py_CLEAR(w->coro);
    Py_CLEAR(w->tracker);
    return 0;
}

static void
waiting_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    waiting_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
waiting_repr(PyObject *self)
{
    return PyObject_Repr(((ddl_waiting *)self)->coro);
}

static PyMethodDef waiting_methods[] = {
    {"send", waiting_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))waiting_throw, METH_FASTCALL, NULL},
    {"close", waiting_close, METH_NOARGS, NULL},
    {NULL},
};

static PyType_Slot waiting_slots[] = {
    {Py_tp_dealloc, waiting_dealloc},
    {Py_tp_traverse, waiting_traverse},
    {Py_tp_clear, waiting_clear},
    {Py_tp_repr, waiting_repr},
    {Py_tp_iter, waiting_await},
    {Py_tp_iternext, waiting_iternext},
    {Py_am_await, waiting_await},
    {Py_tp_methods, waiting_methods},
    {Py_tp_doc, "An asyncio lock acquire being waited for (profiled)."},
    {0, NULL},
};

static PyType_Spec waiting_spec = {
    .name = "ddlock._ddlock.Waiting",
    .basicsize = sizeof(ddl_waiting),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waiting_slots,
};

/* ---- the hooks ---------------------------------------------------------- */

static inline PyObject *
call_orig(ddl_hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
}

/* Is obj of a class whose acquire is hooked (a primitive ddlock profiles
 * in place)? */
static int
class_hooked(ddl_state *st, PyObject *obj)
{
    PyObject *acquire = ddl_type_lookup(Py_TYPE(obj), st->str_acquire);
    return acquire != NULL && Py_IS_TYPE(acquire, st->hook_type);
}

/* Are obj's waits hooked (its class's wait is a Hook: condition waits are
 * profiled)? */
static int
wait_hooked(ddl_state *st, PyObject *obj)
{
    PyObject *wait = ddl_type_lookup(Py_TYPE(obj), st->str_wait);
    return wait != NULL && Py_IS_TYPE(wait, st->hook_type);
}

/* After a successful __init__ of self, which waits through a Condition
 * (an Event, a Barrier, a Future) or is an asyncio Event or Queue: its
 * waits are profiled, named by self. Never raises. */
static void
wait_init_done(ddl_state *st, ddl_hook *h, PyObject *self)
{
    PyObject *code = NULL, *cond = NULL;
    int lasti = -1;
    int profile = ddl_creation_site(st, self, &code, &lasti);
    /* Futures are made by the executors (an excluded module): their
     * waits are profiled, named where they are waited for */
    if (profile < 0 || (profile == 0 && h->kind != DDL_W_FUTURE)) {
        goto done;
    }
    if (h->kind == DDL_W_EVENT || h->kind == DDL_W_BARRIER ||
        h->kind == DDL_W_FUTURE) {
        cond = plain_attr(self, h->kind == DDL_W_FUTURE ? st->str__condition
                                                        : st->str__cond);
        if (cond == NULL || !wait_hooked(st, cond)) {
            goto done;
        }
        ddl_tracker *t = ddl_wait_tracker_new(
            st, cond, h->kind, self, code, lasti, profile == DDL_SITE_DIRECT);
        if (t != NULL && profile == 0 && !t->prof.name_done) {
            /* made by an executor: no site of the user's to name it by */
            Py_XSETREF(t->prof.name, Py_NewRef(st->str_future_label));
            t->prof.name_done = 1;
        }
    }
    else {
        ddl_wait_tracker_new(st, self, h->kind, NULL, code, lasti,
                             profile == DDL_SITE_DIRECT);
    }
done:
    PyErr_Clear();
    Py_XDECREF(code);
    Py_XDECREF(cond);
}

/* Length of a list or deque v (reading it runs no code of the user's), or
 * -1. */
static Py_ssize_t
plain_len(PyObject *v)
{
    if (v == NULL ||
        !(PyList_CheckExact(v) ||
          strcmp(Py_TYPE(v)->tp_name, "collections.deque") == 0)) {
        return -1;
    }
    Py_ssize_t n = PyObject_Length(v);
    if (n < 0) {
        PyErr_Clear();
    }
    return n;
}

/* Would an asyncio wait (op) on obj suspend? Yes unless the stdlib's state
 * says it returns at once: a set Event, a Queue with an item to get or
 * room to put. */
static int
asyncio_wait_suspends(ddl_state *st, int op, PyObject *obj)
{
    PyObject *v;
    int suspends = 1;
    if (op == H_AWAIT) {
        v = plain_attr(obj, st->str__value);
        suspends = v != Py_True; /* Condition.wait: no _value */
        Py_XDECREF(v);
        return suspends;
    }
    v = plain_attr(obj, st->str__queue);
    Py_ssize_t n = plain_len(v);
    Py_XDECREF(v);
    if (op == H_AQGET) {
        return n <= 0;
    }
    v = plain_attr(obj, st->str__maxsize);
    if (n >= 0 && v != NULL && PyLong_CheckExact(v)) {
        long max = PyLong_AsLong(v);
        if (max == -1 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        else {
            suspends = max > 0 && n >= max;
        }
    }
    Py_XDECREF(v);
    return suspends;
}

static PyObject *
hook_async_wait(ddl_state *st, ddl_hook *h, ddl_tracker *t,
                PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    int suspends = asyncio_wait_suspends(st, h->op, args[0]);
    PyObject *coro = call_orig(h, args, nargsf, kwnames);
    if (coro == NULL || !suspends) {
        return coro;
    }
    PyObject *w = waiting_new(st, coro, t, ddl_monotonic_ns());
    Py_DECREF(coro);
    if (w != NULL) {
        ((ddl_waiting *)w)->wait = 1;
    }
    return w;
}

/* After a successful __init__ of self: profile it, unless it is profiled
 * already or made by an excluded module. Never raises. */
static void
init_done(ddl_state *st, ddl_hook *h, PyObject *self)
{
    if (ddl_profiled(st, self, NULL) != NULL) {
        return;
    }
    PyObject *code = NULL, *lock = NULL;
    int lasti = -1;
    int profile = ddl_creation_site(st, self, &code, &lasti);
    if (profile <= 0) {
        goto done;
    }
    if (h->kind == DDL_K_CONDITION || h->kind == DDL_K_ACONDITION) {
        if (wait_hooked(st, self)) {
            ddl_wait_tracker_new(st, self,
                                 h->kind == DDL_K_CONDITION ? DDL_W_CONDITION
                                                            : DDL_W_ACONDITION,
                                 NULL, code, lasti,
                                 profile == DDL_SITE_DIRECT);
            PyErr_Clear();
        }
        /* the Condition's lock is what is profiled, labelled by it; one
         * that ddlock profiles already keeps its own samples */
        lock = plain_attr(self, st->str__lock);
        if (lock == NULL || ddl_profiled(st, lock, NULL) != NULL) {
            goto done;
        }
        if (h->kind == DDL_K_CONDITION && ddl_is_native_lock(st, lock)) {
            if (ddl_lock_register(st, lock, DDL_K_CONDITION, self, code, lasti,
                                  profile == DDL_SITE_DIRECT) == 0) {
                st->primitives_created++;
            }
        }
        else if (class_hooked(st, lock)) {
            ddl_tracker_new(st, lock, h->kind, self, code, lasti,
                            profile == DDL_SITE_DIRECT);
        }
        goto done;
    }
    ddl_tracker_new(st, self, h->kind, NULL, code, lasti,
                    profile == DDL_SITE_DIRECT);
done:
    PyErr_Clear();
    Py_XDECREF(code);
    Py_XDECREF(lock);
}

/* Under gevent a primitive of threading makes a greenlet wait, not its
 * thread: the wait names the greenlet that holds it (ddl_wait_task, as an
 * asyncio task's) and is not registered for the stuck-lock watchdog and the
 * deadlock check, which follow threads (the waiter's thread goes on running
 * other greenlets, and shares its ident with the holder). NULL: no holder
 * known, or the running greenlet is the holder (re-entry). */
static ddl_wait *
greenlet_wait(ddl_state *st, ddl_tracker *t)
{
    PyObject *holder =
        t->holder_task != NULL ? ddl_weakref_peek(t->holder_task) : NULL;
    if (holder == NULL) {
        return NULL;
    }
    PyObject *me = ddl_current_task(st, 0);
    ddl_wait *w = me != holder ? ddl_wait_task(st, holder) : NULL;
    Py_XDECREF(me);
    return w;
}

static PyObject *
hook_sync_acquire(ddl_state *st, ddl_hook *h, ddl_tracker *t,
                  PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int free =
        nargs == 1 && kwnames == NULL && sync_free(st, t->prof.kind, args[0]);
    int64_t t0 = free ? 0 : ddl_monotonic_ns();
    ddl_wait *w = NULL;
    if (!free && st->gevent_getcurrent != NULL) {
        w = greenlet_wait(st, t);
    }
    else if (!free) {
        PyObject *target = args[0];
        ddl_prof *p = ddl_profiled(st, args[0], &target);
        w = ddl_wait_begin(st, args[0], p, target, DDL_HL_NONE, t->holder,
                           nargs != 1 || kwnames != NULL);
    }
    PyObject *r = call_orig(h, args, nargsf, kwnames);
    if (r != NULL && result_true(r)) {
        ddl_tracker_acquired_w(
            st, t, free ? DDL_ACQ_UNCONTENDED : DDL_ACQ_TIMED, t0, 0, w);
        if (st->lock_order) {
            ddl_tracker_order_acquired(
                st, t, ddl_order_is_try(args + 1, nargs - 1, kwnames), 1);
        }
    }
    else if (w != NULL) {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
    }
    return r;
}

static PyObject *
hook_async_acquire(ddl_state *st, ddl_hook *h, ddl_tracker *t,
                   PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || kwnames != NULL) {
        return call_orig(h, args, nargsf, kwnames);
    }
    int waits = asyncio_would_wait(st, t->prof.kind, args[0]);
    PyObject *coro = call_orig(h, args, nargsf, kwnames);
    if (coro == NULL || !waits) {
        if (coro != NULL && t->holder_wanted) {
            /* holder.c: the holder, noted once the lock was contended
             * (reading the running task costs more than the acquire) */
            ddl_tracker_note_task(st, t, 1);
        }
        if (coro != NULL && ddl_sample_uncontended(st)) {
            /* it takes the lock as soon as it runs */
            ddl_tracker_acquired(st, t, DDL_ACQ_SAMPLED, 0, 0);
        }
        if (coro != NULL && st->lock_order) {
            ddl_tracker_order_acquired(st, t, 0, 1);
        }
        return coro;
    }
    t->holder_wanted = 1;
    PyObject *w = waiting_new(st, coro, t, ddl_monotonic_ns());
    Py_DECREF(coro);
    return w;
}

static PyObject *
hook_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                PyObject *kwnames)
{
    ddl_hook *h = (ddl_hook *)callable;
    ddl_state *st = h->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !st->running) {
        return call_orig(h, args, nargsf, kwnames);
    }
    PyObject *self = args[0];
    if (h->op == H_INIT || h->op == H_WINIT) {
        PyObject *r = call_orig(h, args, nargsf, kwnames);
        if (r != NULL && st->running) {
            if (h->op == H_INIT) {
                init_done(st, h, self);
            }
            else {
                wait_init_done(st, h, self);
            }
        }
        return r;
    }
    ddl_tracker *t = ddl_tracker_of(st, self);
    if (t == NULL || (t->wait_type != DDL_W_NONE) != (h->op >= H_WAIT)) {
        return call_orig(h, args, nargsf, kwnames);
    }
    /* t lives as long as self, which the call holds */
    PyObject *r;
    switch (h->op) {
    case H_ACQUIRE:
        return hook_sync_acquire(st, h, t, args, nargsf, kwnames);
    case H_AACQUIRE:
        return hook_async_acquire(st, h, t, args, nargsf, kwnames);
    case H_ACQUIRE_RESTORE: {
        int64_t t0 = ddl_monotonic_ns();
        r = call_orig(h, args, nargsf, kwnames);
        if (r != NULL) {
            int depth = restored_depth(nargs >= 2 ? args[1] : NULL);
            ddl_tracker_acquired(st, t, DDL_ACQ_TIMED, t0, depth);
            if (st->lock_order) {
                ddl_tracker_order_acquired(st, t, 0, (unsigned long)depth);
            }
        }
        return r;
    }
    case H_WAIT: {
        int64_t t0 = ddl_monotonic_ns();
        r = call_orig(h, args, nargsf, kwnames);
        if (r != NULL) {
            ddl_tracker_waited(st, t, t0,
                               r == Py_False ? DDL_WAIT_TIMEOUT
                                             : DDL_WAIT_NOTIFIED);
        }
        return r;
    }
    case H_AWAIT:
    case H_AQGET:
    case H_AQPUT:
        return hook_async_wait(st, h, t, args, nargsf, kwnames);
    case H_RELEASE:
    case H_RELEASE_SAVE:
        r = call_orig(h, args, nargsf, kwnames);
        if (r != NULL && t->holder == PyThread_get_thread_ident()) {
            t->holder = 0; /* holder.c: no longer a holder known */
        }
        if (r != NULL && (t->sampled || t->nring > 0)) {
            ddl_tracker_released(st, t, h->op == H_RELEASE_SAVE);
        }
        if (r != NULL && st->lock_order) {
            ddl_tracker_order_released(st, t, h->op == H_RELEASE_SAVE);
        }
        return r;
    }
    return call_orig(h, args, nargsf, kwnames);
}

static PyObject *
hook_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"op", "kind", "orig", NULL};
    int op, kind;
    PyObject *orig;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiO:Hook", kwlist, &op,
                                     &kind, &orig)) {
        return NULL;
    }
    int nkinds = op >= H_WAIT ? DDL_W_COUNT : DDL_K_COUNT;
    if (op < 0 || op >= H_COUNT || kind < 0 || kind >= nkinds) {
        PyErr_SetString(PyExc_ValueError, "unknown hook op or kind");
        return NULL;
    }
    if (!PyCallable_Check(orig)) {
        PyErr_SetString(PyExc_TypeError, "orig must be callable");
        return NULL;
    }
    ddl_hook *self = (ddl_hook *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->op = op;
    self->kind = kind;
    self->orig = Py_NewRef(orig);
    self->st = (ddl_state *)PyType_GetModuleState(tp);
    self->vectorcall = hook_vectorcall;
    return (PyObject *)self;
}

static int
hook_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((ddl_hook *)op)->orig);
    return 0;
}

static int
hook_clear(PyObject *op)
{
    Py_CLEAR(((ddl_hook *)op)->orig);
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

/* Read from the class, a Hook is the original function; from an instance,
 * a bound method of the Hook. */
static PyObject *
hook_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    ddl_hook *h = (ddl_hook *)self;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(h->orig);
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
    PyErr_Clear();
    return PyObject_GetAttr(((ddl_hook *)self)->orig, name);
}

static PyObject *
hook_orig_attr(PyObject *self, void *name)
{
    return PyObject_GetAttrString(((ddl_hook *)self)->orig,
                                  (const char *)name);
}

static PyObject *
hook_wrapped(PyObject *self, void *unused)
{
    return Py_NewRef(((ddl_hook *)self)->orig);
}

static PyObject *
hook_repr(PyObject *self)
{
    return PyObject_Repr(((ddl_hook *)self)->orig);
}

static PyGetSetDef hook_getset[] = {
    {"__name__", hook_orig_attr, NULL, NULL, "__name__"},
    {"__qualname__", hook_orig_attr, NULL, NULL, "__qualname__"},
    {"__doc__", hook_orig_attr, NULL, NULL, "__doc__"},
    {"__module__", hook_orig_attr, NULL, NULL, "__module__"},
    {"__wrapped__", hook_wrapped, NULL, NULL, NULL},
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

int
ddl_hooks_init(PyObject *module, ddl_state *st)
{
    st->hook_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &hook_spec, NULL);
    st->waiting_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &waiting_spec, NULL);
    if (st->hook_type == NULL || st->waiting_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Hook", (PyObject *)st->hook_type) < 0 ||
        PyModule_AddObjectRef(module, "Waiting",
                              (PyObject *)st->waiting_type) < 0) {
        return -1;
    }
    static const struct {
        int value;
        const char *name;
    } consts[] = {
        {H_INIT, "H_INIT"},
        {H_ACQUIRE, "H_ACQUIRE"},
        {H_RELEASE, "H_RELEASE"},
        {H_RELEASE_SAVE, "H_RELEASE_SAVE"},
        {H_ACQUIRE_RESTORE, "H_ACQUIRE_RESTORE"},
        {H_AACQUIRE, "H_AACQUIRE"},
        {H_WAIT, "H_WAIT"},
        {H_WINIT, "H_WINIT"},
        {H_AWAIT, "H_AWAIT"},
        {H_AQGET, "H_AQGET"},
        {H_AQPUT, "H_AQPUT"},
        {DDL_W_CONDITION, "W_CONDITION"},
        {DDL_W_EVENT, "W_EVENT"},
        {DDL_W_BARRIER, "W_BARRIER"},
        {DDL_W_FUTURE, "W_FUTURE"},
        {DDL_W_ACONDITION, "W_ACONDITION"},
        {DDL_W_AEVENT, "W_AEVENT"},
        {DDL_W_AQUEUE, "W_AQUEUE"},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++) {
        if (PyModule_AddIntConstant(module, consts[i].name, consts[i].value) <
            0) {
            return -1;
        }
    }
    return 0;
}
