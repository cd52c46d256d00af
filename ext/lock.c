/* The native locks, profiled in place: _thread.lock (threading.Lock) and
 * _thread.RLock (threading.RLock) stay the interpreter's own types and
 * objects -- type(lock) is _thread.LockType, isinstance, pickling, dill,
 * trio, gevent and every tool that looks see a native lock -- and ddlock
 * replaces, while it runs, the entries of their type dicts for the methods
 * that acquire and release (method descriptors of the native type with the
 * native names and docstrings, so signatures and profilers' keys are the
 * native ones) and the type slots that make and free them.
 *
 * What ddlock knows of a lock is kept off the object, in a table keyed by
 * the object's address: its creation site, name and kind. A lock is
 * profiled when it has an entry: made while ddlock runs by a module that is
 * not excluded. The entry goes when the object is freed (the dealloc slot)
 * or when ddlock stops. Sampled holds in progress are a short list beside
 * it, looked at by a release only while it is not empty.
 *
 * Fast path of an acquire without arguments: on the tested minors a
 * non-blocking try on the native lock's PyThread lock (what the native
 * acquire does first), then the per-thread sampling countdown; no clock,
 * no allocation, no table lookup. Anything else -- contention, arguments,
 * an untested version -- calls the native method itself, timed: its
 * arguments, errors, signals and timeouts are the native ones by
 * construction.
 *
 * Creation: _thread.allocate_lock (threading.Lock up to 3.12) is a builtin
 * function whose method definition ddlock swaps for its own (same name,
 * flags and doc); _thread.lock (3.13+) and _thread.RLock get their tp_new
 * (and tp_vectorcall, where set) replaced. Everything is restored at stop;
 * what outlives it (a bound method taken meanwhile, a subclass that copied
 * tp_new) keeps working natively.
 */
#include "holder.h"
#include "locktab.h"
#include "order.h"

#include <string.h>

/* ---- the hooks' process-wide data --------------------------------------
 * The native types are the process's (3.9's are static types shared by
 * every interpreter): so is what replaces their methods. Only the main
 * interpreter profiles; a call from another one behaves natively. Not
 * reachable from Python. */

typedef struct {
    const char *name;
    PyCFunction impl;
    int flags;
    PyCFunction impl_order; /* impl checking lock order (order.c) */
    PyObject *orig;         /* the native descriptor, strong while installed */
    PyCFunction native;     /* its C function, when METH_NOARGS, else NULL */
    PyCFunction meth; /* its C function, whatever its calling convention */
    int meth_flags;   /* and that convention (METH_COEXIST masked) */
    PyMethodDef def;  /* ours: the native name and doc */
} hmethod;

enum {
    LM_ACQUIRE,
    LM_ACQUIRE_LOCK,
    LM_ENTER,
    LM_RELEASE,
    LM_RELEASE_LOCK,
    LM_EXIT,
    LM_LOCKED,
    LM_COUNT
};
enum {
    RM_ACQUIRE,
    RM_ENTER,
    RM_RELEASE,
    RM_EXIT,
    RM_RELEASE_SAVE,
    RM_ACQUIRE_RESTORE,
    RM_IS_OWNED,
    RM_COUNT
};

static PyObject *lk_acquire(PyObject *, PyObject *const *, Py_ssize_t,
                            PyObject *);
static PyObject *lk_acquire_lock(PyObject *, PyObject *const *, Py_ssize_t,
                                 PyObject *);
static PyObject *lk_enter(PyObject *, PyObject *const *, Py_ssize_t,
                          PyObject *);
static PyObject *lk_release(PyObject *, PyObject *);
static PyObject *lk_release_lock(PyObject *, PyObject *);
static PyObject *lk_exit(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *rl_acquire(PyObject *, PyObject *const *, Py_ssize_t,
                            PyObject *);
static PyObject *rl_enter(PyObject *, PyObject *const *, Py_ssize_t,
                          PyObject *);
static PyObject *rl_release(PyObject *, PyObject *);
static PyObject *rl_exit(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *rl_release_save(PyObject *, PyObject *);
static PyObject *rl_acquire_restore(PyObject *, PyObject *const *, Py_ssize_t);

static PyObject *lko_acquire(PyObject *, PyObject *const *, Py_ssize_t,
                             PyObject *);
static PyObject *lko_acquire_lock(PyObject *, PyObject *const *, Py_ssize_t,
                                  PyObject *);
static PyObject *lko_enter(PyObject *, PyObject *const *, Py_ssize_t,
                           PyObject *);
static PyObject *lko_release(PyObject *, PyObject *);
static PyObject *lko_release_lock(PyObject *, PyObject *);
static PyObject *lko_exit(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *rlo_acquire(PyObject *, PyObject *const *, Py_ssize_t,
                             PyObject *);
static PyObject *rlo_enter(PyObject *, PyObject *const *, Py_ssize_t,
                           PyObject *);
static PyObject *rlo_release(PyObject *, PyObject *);
static PyObject *rlo_exit(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *rlo_release_save(PyObject *, PyObject *);
static PyObject *rlo_acquire_restore(PyObject *, PyObject *const *,
                                     Py_ssize_t);

#define FASTKW METH_FASTCALL | METH_KEYWORDS
#define FN(f) ((PyCFunction)(void (*)(void))(f))

static struct {
    ddl_state *st; /* the state whose hooks these are (NULL: none) */
    PyInterpreterState *interp;
    PyTypeObject *lock_tp, *rlock_tp;
    int lock_hooked, rlock_hooked;
    int layout_ok;    /* the native layouts checked (internal path) */
    int shared_types; /* static types, seen by every interpreter */
    newfunc lock_new, rlock_new;
    vectorcallfunc lock_vc, rlock_vc;
    destructor lock_dealloc, rlock_dealloc;
    /* _thread.allocate_lock / allocate: the function objects and their
     * native definitions */
    PyCFunctionObject *alloc_fn[2];
    PyMethodDef *alloc_native[2];
    PyMethodDef alloc_def[2];
    hmethod lm[LM_COUNT];
    hmethod rm[RM_COUNT];
    /* (), (False,) and (True,): argument tuples of the native acquires
     * taking METH_VARARGS; made once, kept for the process */
    PyObject *args_empty, *args_false, *args_true;
} H = {
    .lm =
        {
            [LM_ACQUIRE] = {"acquire", FN(lk_acquire), FASTKW,
                            FN(lko_acquire)},
            [LM_ACQUIRE_LOCK] = {"acquire_lock", FN(lk_acquire_lock), FASTKW,
                                 FN(lko_acquire_lock)},
            [LM_ENTER] = {"__enter__", FN(lk_enter), FASTKW, FN(lko_enter)},
            [LM_RELEASE] = {"release", FN(lk_release), METH_NOARGS,
                            FN(lko_release)},
            [LM_RELEASE_LOCK] = {"release_lock", FN(lk_release_lock),
                                 METH_NOARGS, FN(lko_release_lock)},
            [LM_EXIT] = {"__exit__", FN(lk_exit), METH_FASTCALL, FN(lko_exit)},
            /* not replaced: called by the portable path */
            [LM_LOCKED] = {"locked", NULL, 0, NULL},
        },
    .rm =
        {
            [RM_ACQUIRE] = {"acquire", FN(rl_acquire), FASTKW,
                            FN(rlo_acquire)},
            [RM_ENTER] = {"__enter__", FN(rl_enter), FASTKW, FN(rlo_enter)},
            [RM_RELEASE] = {"release", FN(rl_release), METH_NOARGS,
                            FN(rlo_release)},
            [RM_EXIT] = {"__exit__", FN(rl_exit), METH_FASTCALL, FN(rlo_exit)},
            [RM_RELEASE_SAVE] = {"_release_save", FN(rl_release_save),
                                 METH_NOARGS, FN(rlo_release_save)},
            [RM_ACQUIRE_RESTORE] = {"_acquire_restore", FN(rl_acquire_restore),
                                    METH_FASTCALL, FN(rlo_acquire_restore)},
            /* not replaced: called by the portable path */
            [RM_IS_OWNED] = {"_is_owned", NULL, 0},
        },
};

/* The state to profile for, or NULL: not running, or another interpreter
 * (whose objects ddlock does not profile). Only static native types (3.9's)
 * are shared with other interpreters; heap types are each interpreter's
 * own, and only the main interpreter's are hooked. */
static inline ddl_state *
active_state(void)
{
    ddl_state *st = H.st;
    if (st == NULL || !st->running) {
        return NULL;
    }
    if (H.shared_types &&
        PyThreadState_GetInterpreter(PyThreadState_Get()) != H.interp) {
        return NULL;
    }
    return st;
}

/* A lock just made: profile it when made while running by a module that
 * is not excluded. Never raises (the lock is returned either way). The
 * creation site's reference moves to the entry. */
static void
register_new(PyObject *obj, int kind)
{
    ddl_state *st = active_state();
    if (st == NULL || st->locktab == NULL) {
        return;
    }
    PyObject *code = NULL;
    int lasti = -1;
    int profile = ddl_creation_site_cached(st, ddl_walk_top(), &code, &lasti);
    if (profile < 0) {
        profile = ddl_creation_site(st, NULL, &code, &lasti);
    }
    if (profile < 0) {
        PyErr_Clear(); /* never let the profiler break lock creation */
        profile = DDL_SITE_OUTER;
    }
    if (profile) {
        if (ddl_locktab_add(st->locktab, obj, code, lasti, kind,
                            profile == DDL_SITE_DIRECT) == 0) {
            st->locks_created++; /* the code's reference moved */
            return;
        }
    }
    Py_XDECREF(code);
}

/* The profile of self when it is to be recorded now, else NULL; *target:
 * what labels it. */
static inline ddl_prof *
prof_of(ddl_state *st, PyObject *self, PyObject **target)
{
    return st != NULL ? ddl_lock_prof(st, self, target) : NULL;
}

/* A sampled acquire of self (p: its probability) that ends wait w (NULL:
 * none): record it, and begin a pending hold unless it re-enters one
 * (depth 0). */
static void
sampled_acquire(ddl_state *st, PyObject *self, unsigned long owner,
                int64_t now, int64_t wait, double p, unsigned long depth,
                ddl_wait *w)
{
    PyObject *target;
    ddl_prof *pr = prof_of(st, self, &target);
    if (pr == NULL) {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
        return;
    }
    double weight = 1.0 / p;
    if (ddl_wait_end(st, w, pr, target, wait, weight) != 0 || depth == 0) {
        return;
    }
    ddl_pending *hold = ddl_pend_add(st->locktab, self, owner);
    if (hold == NULL) {
        st->holds_dropped++;
        return;
    }
    hold->generation = st->generation;
    hold->acquired_ns = now != 0 ? now : ddl_monotonic_ns();
    hold->weight = weight;
    hold->depth = depth;
}

/* A release of self by owner (0 for a Lock): with full, it ended every
 * level (RLock._release_save); otherwise one level. Records the hold it
 * ends. */
static void
hold_released(ddl_state *st, PyObject *self, unsigned long owner, int full)
{
    ddl_locktab *t = H.st->locktab;
    ddl_pending *p = ddl_pend_find(t, self, owner);
    if (p == NULL) {
        return;
    }
    if (!full && p->depth > 1) {
        p->depth--;
        return;
    }
    ddl_pending done = *p;
    ddl_pend_remove(t, p);
    if (st == NULL || done.generation != st->generation) {
        return;
    }
    PyObject *target;
    ddl_prof *pr = prof_of(st, self, &target);
    if (pr != NULL) {
        int64_t hold = ddl_monotonic_ns() - done.acquired_ns;
        ddl_record(st, pr, target, 0, hold < 0 ? 0 : hold, 1, done.weight);
    }
}

static inline int
holds_pending(void)
{
    return H.st != NULL && H.st->locktab != NULL && H.st->locktab->npend > 0;
}

/* ---- calling the native methods ----------------------------------------- */

typedef PyObject *(*fastkw_fn)(PyObject *, PyObject *const *, Py_ssize_t,
                               PyObject *);
typedef PyObject *(*varkw_fn)(PyObject *, PyObject *, PyObject *);

/* The native method m on self with the call's arguments. Its C function is
 * called directly when its convention allows (self is of its type: ours is
 * a method of the same type), else through its descriptor. */
static PyObject *
call_native(hmethod *m, PyObject *self, PyObject *const *args,
            Py_ssize_t nargs, PyObject *kwnames)
{
    if (m->orig == NULL) {
        PyErr_Format(PyExc_SystemError, "ddlock: native %s is gone", m->name);
        return NULL;
    }
    if (m->meth_flags == (METH_FASTCALL | METH_KEYWORDS)) {
        return ((fastkw_fn)(void (*)(void))m->meth)(self, args, nargs,
                                                    kwnames);
    }
    if (m->meth_flags == (METH_VARARGS | METH_KEYWORDS) && kwnames == NULL &&
        H.args_true != NULL) {
        PyObject *t = nargs == 0            ? H.args_empty
                      : nargs > 1           ? NULL
                      : args[0] == Py_False ? H.args_false
                      : args[0] == Py_True  ? H.args_true
                                            : NULL;
        if (t != NULL) {
            return ((varkw_fn)(void (*)(void))m->meth)(self, t, NULL);
        }
    }
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t total = nargs + nkw;
    PyObject *small[10];
    PyObject **stack = small;
    if (total + 2 > 10) {
        stack = PyMem_Malloc((size_t)(total + 2) * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = NULL; /* PY_VECTORCALL_ARGUMENTS_OFFSET's slot */
    stack[1] = self;
    if (total > 0) {
        memcpy(stack + 2, args, (size_t)total * sizeof(PyObject *));
    }
    PyObject *r = PyObject_Vectorcall(
        m->orig, stack + 1,
        (size_t)(nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return r;
}

/* A METH_NOARGS native method, directly. */
static inline PyObject *
call_native0(hmethod *m, PyObject *self)
{
    if (m->native != NULL) {
        return m->native(self, NULL);
    }
    return call_native(m, self, NULL, 0, NULL);
}

/* The arguments of an acquire that the fast path takes: 1 blocking with no
 * timeout (none, or a bool True), 2 non-blocking (a bool False), 0 any
 * other (the native method parses them). */
static inline int
simple_acquire(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        return 0;
    }
    if (nargs == 0) {
        return 1;
    }
    if (nargs == 1 && PyBool_Check(args[0])) {
        return args[0] == Py_True ? 1 : 2;
    }
    return 0;
}

/* A non-blocking try: 1 acquired, 0 not, -1 error. */
static int
try_native(hmethod *acquire, PyObject *self)
{
    PyObject *arg = Py_False;
    PyObject *r = call_native(acquire, self, &arg, 1, NULL);
    if (r == NULL) {
        return -1;
    }
    int got = r == Py_True;
    Py_DECREF(r);
    return got;
}

/* ---- Lock --------------------------------------------------------------- */

/* An acquire of a Lock that may wait: registered (holder.c) with the
 * holder the fast path stored, unless the lock is free. */
static ddl_wait *
lock_wait_begin(ddl_state *st, PyObject *self, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    int timed = simple_acquire(args, nargs, kwnames) != 1;
    unsigned long holder = 0;
    int how = DDL_HL_NONE;
#if DDL_NATIVE_LAYOUT
    if (H.layout_ok) {
        ddl_native_lock *lk = (ddl_native_lock *)self;
        if (!lk->locked) {
            return NULL;
        }
        how = DDL_HL_LOCK;
        holder = ddl_slot_ident(lk->ddl_holder);
    }
#endif
    PyObject *target;
    ddl_prof *pr = prof_of(st, self, &target);
    return ddl_wait_begin(st, self, pr, target, how, holder, timed);
}

/* The same for an RLock that I do not own (timed: it has arguments). */
static ddl_wait *
rlock_wait_begin(ddl_state *st, PyObject *self, int timed)
{
    if (st == NULL) {
        return NULL;
    }
    unsigned long holder = 0;
    int how = DDL_HL_NONE;
#if DDL_NATIVE_LAYOUT
    if (H.layout_ok) {
        ddl_native_rlock *rl = (ddl_native_rlock *)self;
        if (rl->rlock_count == 0) {
            return NULL;
        }
        how = DDL_HL_RLOCK;
        holder = rl->rlock_owner;
    }
#endif
    PyObject *target;
    ddl_prof *pr = prof_of(st, self, &target);
    return ddl_wait_begin(st, self, pr, target, how, holder, timed);
}

/* The acquire that may wait or has arguments: the native method, timed. */
static PyObject *
lock_acquire_timed(hmethod *m, PyObject *self, PyObject *const *args,
                   Py_ssize_t nargs, PyObject *kwnames)
{
    ddl_state *st = active_state();
    if (st == NULL) {
        return call_native(m, self, args, nargs, kwnames);
    }
    int64_t t0 = ddl_monotonic_ns();
    ddl_wait *w = lock_wait_begin(st, self, args, nargs, kwnames);
    PyObject *r = call_native(m, self, args, nargs, kwnames);
    int64_t now, wait;
    double p;
#if DDL_NATIVE_LAYOUT
    if (r == Py_True && H.layout_ok) {
        ((ddl_native_lock *)self)->ddl_holder = ddl_holder_slot();
    }
#endif
    if (r == Py_True && ddl_sample_timed(st, t0, &now, &wait, &p)) {
        sampled_acquire(st, self, 0, now, wait, p, 1, w);
    }
    else {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
    }
    return r;
}

static PyObject *
lock_acquire_impl(hmethod *m, PyObject *self, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *kwnames)
{
    int simple = simple_acquire(args, nargs, kwnames);
    if (simple == 0) {
        return lock_acquire_timed(m, self, args, nargs, kwnames);
    }
    int got;
#if DDL_NATIVE_LAYOUT
    if (H.layout_ok) {
        ddl_native_lock *lk = (ddl_native_lock *)self;
        got = PyThread_acquire_lock_timed(lk->lock_lock, 0, 0) ==
              PY_LOCK_ACQUIRED;
        if (got) {
            lk->locked = 1;
            lk->ddl_holder = ddl_holder_slot(); /* holder.c */
        }
    }
    else
#endif
        if (H.lm[LM_LOCKED].native != NULL) {
        /* free now means the native acquire takes it without waiting: the
         * GIL is held from this check to its first, non-blocking try */
        PyObject *held = H.lm[LM_LOCKED].native(self, NULL);
        if (held == NULL) {
            return NULL;
        }
        Py_DECREF(held);
        if (held != Py_False) {
            if (simple == 2) {
                Py_RETURN_FALSE;
            }
            return lock_acquire_timed(m, self, args, nargs, kwnames);
        }
        PyObject *r = call_native(m, self, args, nargs, kwnames);
        if (r != Py_True) {
            return r;
        }
        Py_DECREF(r);
        got = 1;
    }
    else {
        got = try_native(&H.lm[LM_ACQUIRE], self);
        if (got < 0) {
            return NULL;
        }
    }
    if (got) {
        ddl_state *st = H.st;
        if (st != NULL && ddl_sample_uncontended(st)) {
            st = active_state();
            if (st != NULL) {
                sampled_acquire(st, self, 0, 0, 0, st->capture_p, 1, NULL);
            }
        }
        Py_RETURN_TRUE;
    }
    if (simple == 2) {
        Py_RETURN_FALSE;
    }
    return lock_acquire_timed(m, self, args, nargs, kwnames);
}

static PyObject *
lk_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    return lock_acquire_impl(&H.lm[LM_ACQUIRE], self, args, nargs, kwnames);
}

static PyObject *
lk_acquire_lock(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    return lock_acquire_impl(&H.lm[LM_ACQUIRE_LOCK], self, args, nargs,
                             kwnames);
}

static PyObject *
lk_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    return lock_acquire_impl(&H.lm[LM_ENTER], self, args, nargs, kwnames);
}

static PyObject *
lock_release_impl(hmethod *m, PyObject *self)
{
    PyObject *r = call_native0(m, self);
    if (r != NULL && holds_pending()) {
        hold_released(active_state(), self, 0, 1);
    }
    return r;
}

static PyObject *
lk_release(PyObject *self, PyObject *unused)
{
    return lock_release_impl(&H.lm[LM_RELEASE], self);
}

static PyObject *
lk_release_lock(PyObject *self, PyObject *unused)
{
    return lock_release_impl(&H.lm[LM_RELEASE_LOCK], self);
}

/* __exit__(...): the native one, directly when it is release's C function
 * (which ignores its arguments; hook_methods checks) */
static inline PyObject *
call_exit(hmethod *m, PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return m->native != NULL ? m->native(self, NULL)
                             : call_native(m, self, args, nargs, NULL);
}

static PyObject *
lk_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *r = call_exit(&H.lm[LM_EXIT], self, args, nargs);
    if (r != NULL && holds_pending()) {
        hold_released(active_state(), self, 0, 1);
    }
    return r;
}

/* ---- RLock -------------------------------------------------------------- */

/* Does the running thread own self (before an acquire)? -1: error. */
static int
rlock_owned(PyObject *self, unsigned long me)
{
#if DDL_NATIVE_LAYOUT
    if (H.layout_ok) {
        ddl_native_rlock *rl = (ddl_native_rlock *)self;
        return rl->rlock_count > 0 && rl->rlock_owner == me;
    }
#endif
    PyObject *r = call_native0(&H.rm[RM_IS_OWNED], self);
    if (r == NULL) {
        return -1;
    }
    int owned = r == Py_True;
    Py_DECREF(r);
    return owned;
}

/* After a successful acquire by me that re-entered (owned) or not. */
static void
rlock_acquired(PyObject *self, unsigned long me, int owned, int64_t now,
               int64_t wait, double p, int sampled, ddl_wait *w)
{
    ddl_state *st = H.st;
    if (owned && holds_pending()) {
        ddl_pending *pd = ddl_pend_find(st->locktab, self, me);
        if (pd != NULL) {
            pd->depth++; /* re-entered inside a sampled hold */
        }
    }
    ddl_state *ast = sampled ? active_state() : NULL;
    if (ast != NULL) {
        /* a re-entrant acquire is counted; the hold stays the outermost */
        sampled_acquire(ast, self, me, now, wait, p, owned ? 0 : 1, w);
    }
    else if (w != NULL) {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
    }
}

static PyObject *
rlock_acquire_timed(hmethod *m, PyObject *self, PyObject *const *args,
                    Py_ssize_t nargs, PyObject *kwnames)
{
    ddl_state *st = active_state();
    if (st == NULL && !holds_pending()) {
        return call_native(m, self, args, nargs, kwnames);
    }
    unsigned long me = PyThread_get_thread_ident();
    int owned = rlock_owned(self, me);
    if (owned < 0) {
        return NULL;
    }
    int64_t t0 = ddl_monotonic_ns();
    ddl_wait *w =
        owned ? NULL
              : rlock_wait_begin(st, self,
                                 simple_acquire(args, nargs, kwnames) != 1);
    PyObject *r = call_native(m, self, args, nargs, kwnames);
    if (r == Py_True) {
        int64_t now = 0, wait = 0;
        double p = 0;
        int sampled = st != NULL && active_state() != NULL &&
                      (owned ? ddl_sample_uncontended(st)
                             : ddl_sample_timed(st, t0, &now, &wait, &p));
        if (owned) {
            p = st != NULL ? st->capture_p : 0;
        }
        rlock_acquired(self, me, owned, now, wait, p, sampled, w);
    }
    else if (w != NULL) {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
    }
    return r;
}

static PyObject *
rlock_acquire_impl(hmethod *m, PyObject *self, PyObject *const *args,
                   Py_ssize_t nargs, PyObject *kwnames)
{
    int simple = simple_acquire(args, nargs, kwnames);
    if (simple == 0) {
        return rlock_acquire_timed(m, self, args, nargs, kwnames);
    }
    unsigned long me = PyThread_get_thread_ident();
    ddl_state *st = H.st;
    int owned, got;
#if DDL_NATIVE_LAYOUT
    if (H.layout_ok) {
        ddl_native_rlock *rl = (ddl_native_rlock *)self;
        owned = rl->rlock_count > 0 && rl->rlock_owner == me;
        if (owned) {
            if (rl->rlock_count == ULONG_MAX) {
                return call_native(m, self, args, nargs, kwnames);
            }
            rl->rlock_count++;
            got = 1;
        }
        else {
            got = PyThread_acquire_lock_timed(rl->rlock_lock, 0, 0) ==
                  PY_LOCK_ACQUIRED;
            if (got) {
                rl->rlock_owner = me;
                rl->rlock_count = 1;
            }
        }
    }
    else
#endif
    {
        /* whether it re-enters matters only to a hold being tracked or
         * about to be */
        owned = 0;
        if (st != NULL && (holds_pending() || ddl_sample_next(st))) {
            owned = rlock_owned(self, me);
            if (owned < 0) {
                return NULL;
            }
        }
        got = try_native(&H.rm[RM_ACQUIRE], self);
        if (got < 0) {
            return NULL;
        }
    }
    if (got) {
        int sampled = st != NULL && ddl_sample_uncontended(st);
        if (sampled || (owned && holds_pending())) {
            rlock_acquired(self, me, owned, 0, 0,
                           st != NULL ? st->capture_p : 0, sampled, NULL);
        }
        Py_RETURN_TRUE;
    }
    if (simple == 2) {
        Py_RETURN_FALSE;
    }
    return rlock_acquire_timed(m, self, args, nargs, kwnames);
}

static PyObject *
rl_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    return rlock_acquire_impl(&H.rm[RM_ACQUIRE], self, args, nargs, kwnames);
}

static PyObject *
rl_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    return rlock_acquire_impl(&H.rm[RM_ENTER], self, args, nargs, kwnames);
}

/* After a successful release by me: end a level of a tracked hold, or
 * count an inner release the countdown picks (its hold is the outer
 * one's). */
static void
rlock_released(PyObject *self, unsigned long me)
{
    ddl_state *st = H.st;
    if (st == NULL) {
        return;
    }
    ddl_pending *pd =
        holds_pending() ? ddl_pend_find(st->locktab, self, me) : NULL;
    if (pd != NULL && pd->depth <= 1) {
        hold_released(active_state(), self, me, 0); /* the outermost */
        return;
    }
    int inner = -1; /* unknown */
    if (pd != NULL) {
        pd->depth--;
        inner = 1;
    }
    if (!ddl_sample_next(st)) {
        ddl_sample_uncontended(st);
        return;
    }
    if (inner < 0) {
        inner = rlock_owned(self, me);
        if (inner < 0) {
            PyErr_Clear();
            inner = 0;
        }
    }
    ddl_sample_uncontended(st);
    ddl_state *ast = active_state();
    PyObject *target;
    ddl_prof *pr = inner ? prof_of(ast, self, &target) : NULL;
    if (pr != NULL) {
        ddl_record(ast, pr, target, 0, 0, 1, 1.0 / ast->capture_p);
    }
}

static PyObject *
rl_release(PyObject *self, PyObject *unused)
{
    unsigned long me = PyThread_get_thread_ident();
    PyObject *r = call_native0(&H.rm[RM_RELEASE], self);
    if (r != NULL) {
        rlock_released(self, me);
    }
    return r;
}

static PyObject *
rl_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long me = PyThread_get_thread_ident();
    PyObject *r = call_exit(&H.rm[RM_EXIT], self, args, nargs);
    if (r != NULL) {
        rlock_released(self, me);
    }
    return r;
}

/* Condition.wait() releasing every level: the hold ends here. */
static PyObject *
rl_release_save(PyObject *self, PyObject *unused)
{
    unsigned long me = PyThread_get_thread_ident();
    PyObject *r = call_native0(&H.rm[RM_RELEASE_SAVE], self);
    if (r != NULL && holds_pending()) {
        hold_released(active_state(), self, me, 1);
    }
    return r;
}

/* Depth from the state _release_save returned: (count, owner). */
static unsigned long
restored_depth(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *state = nargs >= 1 ? args[0] : NULL;
    if (state != NULL && PyTuple_Check(state) &&
        PyTuple_GET_SIZE(state) >= 1 &&
        PyLong_Check(PyTuple_GET_ITEM(state, 0))) {
        unsigned long n = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(state, 0));
        if (n == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        return n < 1 ? 1 : n;
    }
    return 1;
}

/* Condition.wait() re-acquiring: profiled like any acquire (its contention
 * is seen) and the new hold starts here, at the depth it had. */
static PyObject *
rl_acquire_restore(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ddl_state *st = active_state();
    int64_t t0 = st != NULL ? ddl_monotonic_ns() : 0;
    ddl_wait *w = rlock_wait_begin(st, self, 0);
    PyObject *r =
        call_native(&H.rm[RM_ACQUIRE_RESTORE], self, args, nargs, NULL);
    int64_t now, wait;
    double p;
    if (r != NULL && st != NULL && active_state() != NULL &&
        ddl_sample_timed(st, t0, &now, &wait, &p)) {
        sampled_acquire(st, self, PyThread_get_thread_ident(), now, wait, p,
                        restored_depth(args, nargs), w);
    }
    else if (w != NULL) {
        ddl_wait_end(st, w, NULL, NULL, 0, 0);
    }
    return r;
}

/* ---- lock-order checking
 * ---------------------------------------------------- While
 * start(lock_order=True) runs, the methods installed are these: the ones
 * above, then order.c told of what succeeded. The methods installed otherwise
 * are the ones above alone (no test of a flag). */

static void
order_acquired(PyObject *self, int is_try, unsigned long depth)
{
    ddl_state *st = active_state();
    ddl_prof *p = st != NULL ? ddl_lock_prof(st, self, NULL) : NULL;
    if (p == NULL) {
        return;
    }
    PyObject *target = self;
    if (ddl_order_needs_target(st, self)) {
        ddl_lock_prof(st, self, &target);
    }
    ddl_order_acquired(st, self, p, target,
                       (uintptr_t)PyThread_get_thread_ident(), is_try, depth);
}

static void
order_released(PyObject *self, int full)
{
    ddl_state *st = H.st;
    if (st != NULL && st->lock_order) {
        ddl_order_released(st, self, (uintptr_t)PyThread_get_thread_ident(),
                           full);
    }
}

#define ORDER_ACQUIRE(name, impl)                                             \
    static PyObject *name(PyObject *self, PyObject *const *args,              \
                          Py_ssize_t nargs, PyObject *kwnames)                \
    {                                                                         \
        PyObject *r = impl(self, args, nargs, kwnames);                       \
        if (r == Py_True) {                                                   \
            order_acquired(self, ddl_order_is_try(args, nargs, kwnames), 1);  \
        }                                                                     \
        return r;                                                             \
    }
#define ORDER_RELEASE(name, impl, full)                                       \
    static PyObject *name(PyObject *self, PyObject *unused)                   \
    {                                                                         \
        PyObject *r = impl(self, unused);                                     \
        if (r != NULL) {                                                      \
            order_released(self, full);                                       \
        }                                                                     \
        return r;                                                             \
    }
#define ORDER_EXIT(name, impl)                                                \
    static PyObject *name(PyObject *self, PyObject *const *args,              \
                          Py_ssize_t nargs)                                   \
    {                                                                         \
        PyObject *r = impl(self, args, nargs);                                \
        if (r != NULL) {                                                      \
            order_released(self, 0);                                          \
        }                                                                     \
        return r;                                                             \
    }

ORDER_ACQUIRE(lko_acquire, lk_acquire)
ORDER_ACQUIRE(lko_acquire_lock, lk_acquire_lock)
ORDER_ACQUIRE(lko_enter, lk_enter)
ORDER_RELEASE(lko_release, lk_release, 0)
ORDER_RELEASE(lko_release_lock, lk_release_lock, 0)
ORDER_EXIT(lko_exit, lk_exit)
ORDER_ACQUIRE(rlo_acquire, rl_acquire)
ORDER_ACQUIRE(rlo_enter, rl_enter)
ORDER_RELEASE(rlo_release, rl_release, 0)
ORDER_EXIT(rlo_exit, rl_exit)
ORDER_RELEASE(rlo_release_save, rl_release_save, 1)

/* Condition.wait() re-acquiring: a blocking acquire at the depth saved. */
static PyObject *
rlo_acquire_restore(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *r = rl_acquire_restore(self, args, nargs);
    if (r != NULL) {
        order_acquired(self, 0, restored_depth(args, nargs));
    }
    return r;
}

/* ---- creation and deallocation ------------------------------------------ */

static PyObject *
alloc_hook(PyObject *module, PyObject *unused, int which)
{
    PyObject *r = H.alloc_native[which]->ml_meth(module, unused);
    if (r != NULL) {
        register_new(r, DDL_K_LOCK);
    }
    return r;
}

static PyObject *
alloc_hook0(PyObject *module, PyObject *unused)
{
    return alloc_hook(module, unused, 0);
}

static PyObject *
alloc_hook1(PyObject *module, PyObject *unused)
{
    return alloc_hook(module, unused, 1);
}

static PyObject *
lock_new_hook(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    PyObject *r = H.lock_new(tp, args, kwargs);
    if (r != NULL) {
        register_new(r, DDL_K_LOCK);
    }
    return r;
}

static PyObject *
rlock_new_hook(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    PyObject *r = H.rlock_new(tp, args, kwargs);
    if (r != NULL) {
        register_new(r, DDL_K_RLOCK);
    }
    return r;
}

static PyObject *
lock_vc_hook(PyObject *tp, PyObject *const *args, size_t nargsf,
             PyObject *kwnames)
{
    PyObject *r = H.lock_vc(tp, args, nargsf, kwnames);
    if (r != NULL) {
        register_new(r, DDL_K_LOCK);
    }
    return r;
}

static PyObject *
rlock_vc_hook(PyObject *tp, PyObject *const *args, size_t nargsf,
              PyObject *kwnames)
{
    PyObject *r = H.rlock_vc(tp, args, nargsf, kwnames);
    if (r != NULL) {
        register_new(r, DDL_K_RLOCK);
    }
    return r;
}

/* Before the native dealloc: the entry goes (its address may be reused). */
static void
forget(PyObject *obj)
{
    ddl_state *st = H.st;
    if (st != NULL && st->locktab != NULL) {
        ddl_locktab_forget(st->locktab, obj);
        if (st->lock_order) {
            ddl_order_forget(st, obj);
        }
    }
}

static void
lock_dealloc_hook(PyObject *obj)
{
    forget(obj);
    H.lock_dealloc(obj);
}

static void
rlock_dealloc_hook(PyObject *obj)
{
    forget(obj);
    H.rlock_dealloc(obj);
}

/* ---- installing --------------------------------------------------------- */

/* Replace the methods of tp listed in ms (those with an impl). The native
 * __exit__ (index exit) is called directly when it is the C function of
 * release (index release): it ignores its arguments. */
static int
hook_methods(PyTypeObject *tp, hmethod *ms, int n, int release, int exit,
             int order)
{
    PyObject *dict = ddl_type_dict(tp);
    if (dict == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ddlock: native type has no dict");
        return -1;
    }
    int rc = -1;
    for (int i = 0; i < n; i++) {
        hmethod *m = &ms[i];
        PyObject *orig = PyDict_GetItemString(dict, m->name);
        if (orig == NULL || !Py_IS_TYPE(orig, &PyMethodDescr_Type)) {
            if (m->impl == NULL) {
                continue; /* a helper this version lacks */
            }
            PyErr_Format(PyExc_RuntimeError,
                         "ddlock: %s.%s is not a native method", tp->tp_name,
                         m->name);
            goto done;
        }
        PyMethodDef *nd = ((PyMethodDescrObject *)orig)->d_method;
        Py_XSETREF(m->orig, Py_NewRef(orig));
        m->native =
            (nd->ml_flags & ~METH_COEXIST) == METH_NOARGS ? nd->ml_meth : NULL;
        m->meth = nd->ml_meth;
        m->meth_flags = nd->ml_flags & ~METH_COEXIST;
        if (m->impl == NULL) {
            continue;
        }
        m->def = (PyMethodDef){
            m->name, order && m->impl_order ? m->impl_order : m->impl,
            m->flags, nd->ml_doc};
        PyObject *ours = PyDescr_NewMethod(tp, &m->def);
        if (ours == NULL) {
            goto done;
        }
        int r = PyDict_SetItemString(dict, m->name, ours);
        Py_DECREF(ours);
        if (r < 0) {
            goto done;
        }
    }
    if (ms[release].native != NULL && ms[exit].orig != NULL &&
        ((PyMethodDescrObject *)ms[exit].orig)->d_method->ml_meth ==
            ms[release].native) {
        ms[exit].native = ms[release].native;
    }
    rc = 0;
done:
    PyType_Modified(tp);
    Py_DECREF(dict);
    return rc;
}

static void
unhook_methods(PyTypeObject *tp, hmethod *ms, int n)
{
    PyObject *dict = ddl_type_dict(tp);
    if (dict == NULL) {
        return;
    }
    for (int i = 0; i < n; i++) {
        if (ms[i].impl != NULL && ms[i].orig != NULL &&
            PyDict_SetItemString(dict, ms[i].name, ms[i].orig) < 0) {
            PyErr_Clear();
        }
    }
    PyType_Modified(tp);
    Py_DECREF(dict);
}

/* _thread.allocate_lock and _thread.allocate: our definitions (the native
 * name, flags and doc) in their function objects. */
static void
hook_alloc(PyObject *thread_mod, ddl_state *st)
{
    static const char *names[2] = {"allocate_lock", "allocate"};
    static PyCFunction hooks[2] = {alloc_hook0, alloc_hook1};
    for (int i = 0; i < 2; i++) {
        PyObject *fn = PyObject_GetAttrString(thread_mod, names[i]);
        if (fn == NULL) {
            PyErr_Clear();
            continue;
        }
        if (PyCFunction_CheckExact(fn)) {
            PyCFunctionObject *f = (PyCFunctionObject *)fn;
            PyMethodDef *nd = f->m_ml;
            if (nd != &H.alloc_def[i] &&
                (nd->ml_flags & ~METH_COEXIST) == METH_NOARGS) {
                H.alloc_native[i] = nd;
                H.alloc_def[i] = *nd;
                H.alloc_def[i].ml_meth = hooks[i];
                H.alloc_fn[i] = f;
                f->m_ml = &H.alloc_def[i];
            }
        }
        Py_DECREF(fn); /* the module keeps it */
    }
}

static void
unhook_alloc(void)
{
    for (int i = 0; i < 2; i++) {
        if (H.alloc_fn[i] != NULL && H.alloc_fn[i]->m_ml == &H.alloc_def[i]) {
            H.alloc_fn[i]->m_ml = H.alloc_native[i];
        }
        H.alloc_fn[i] = NULL;
    }
}

static int
check_layout(PyTypeObject *lock_tp, PyTypeObject *rlock_tp)
{
#if DDL_NATIVE_LAYOUT
    return lock_tp->tp_basicsize == (Py_ssize_t)sizeof(ddl_native_lock) &&
           lock_tp->tp_weaklistoffset ==
               (Py_ssize_t)offsetof(ddl_native_lock, in_weakreflist) &&
           rlock_tp->tp_basicsize == (Py_ssize_t)sizeof(ddl_native_rlock) &&
           rlock_tp->tp_weaklistoffset ==
               (Py_ssize_t)offsetof(ddl_native_rlock, in_weakreflist);
#else
    (void)lock_tp;
    (void)rlock_tp;
    return 0;
#endif
}

int
ddl_locks_hook(ddl_state *st, int lock, int rlock)
{
    if (H.st != NULL && H.st != st) {
        PyErr_SetString(PyExc_RuntimeError,
                        "ddlock profiles locks in one interpreter only");
        return -1;
    }
    if (st->native_lock_type == NULL || st->native_rlock_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ddlock: _thread types unknown");
        return -1;
    }
    if (st->locktab == NULL && (st->locktab = ddl_locktab_new()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyTypeObject *ltp = (PyTypeObject *)st->native_lock_type;
    PyTypeObject *rtp = (PyTypeObject *)st->native_rlock_type;
    H.st = st;
    H.interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    H.lock_tp = ltp;
    H.rlock_tp = rtp;
    H.layout_ok = check_layout(ltp, rtp);
    if (H.args_true == NULL) {
        PyObject *e = PyTuple_New(0);
        PyObject *f = PyTuple_Pack(1, Py_False);
        PyObject *t = PyTuple_Pack(1, Py_True);
        if (e == NULL || f == NULL || t == NULL) {
            Py_XDECREF(e);
            Py_XDECREF(f);
            Py_XDECREF(t);
            return -1;
        }
        H.args_empty = e;
        H.args_false = f;
        H.args_true = t;
    }
    H.shared_types = !(ltp->tp_flags & Py_TPFLAGS_HEAPTYPE) ||
                     !(rtp->tp_flags & Py_TPFLAGS_HEAPTYPE);
    if (lock && !H.lock_hooked) {
        PyObject *mod = PyImport_ImportModule("_thread");
        if (mod == NULL) {
            return -1;
        }
        if (hook_methods(ltp, H.lm, LM_COUNT, LM_RELEASE, LM_EXIT,
                         st->lock_order) < 0) {
            Py_DECREF(mod);
            unhook_methods(ltp, H.lm, LM_COUNT);
            return -1;
        }
        hook_alloc(mod, st);
        Py_DECREF(mod);
        if (ltp->tp_new != NULL && ltp->tp_new != lock_new_hook) {
            H.lock_new = ltp->tp_new;
            ltp->tp_new = lock_new_hook;
        }
        if (ltp->tp_vectorcall != NULL && ltp->tp_vectorcall != lock_vc_hook) {
            H.lock_vc = ltp->tp_vectorcall;
            ltp->tp_vectorcall = lock_vc_hook;
        }
        H.lock_dealloc = ltp->tp_dealloc;
        ltp->tp_dealloc = lock_dealloc_hook;
        H.lock_hooked = 1;
    }
    if (rlock && !H.rlock_hooked) {
        if (hook_methods(rtp, H.rm, RM_COUNT, RM_RELEASE, RM_EXIT,
                         st->lock_order) < 0) {
            unhook_methods(rtp, H.rm, RM_COUNT);
            return -1;
        }
        if (rtp->tp_new != NULL && rtp->tp_new != rlock_new_hook) {
            H.rlock_new = rtp->tp_new;
            rtp->tp_new = rlock_new_hook;
        }
        if (rtp->tp_vectorcall != NULL &&
            rtp->tp_vectorcall != rlock_vc_hook) {
            H.rlock_vc = rtp->tp_vectorcall;
            rtp->tp_vectorcall = rlock_vc_hook;
        }
        H.rlock_dealloc = rtp->tp_dealloc;
        rtp->tp_dealloc = rlock_dealloc_hook;
        H.rlock_hooked = 1;
    }
    return 0;
}

void
ddl_locks_unhook(ddl_state *st)
{
    if (H.st != st) {
        return;
    }
    PyTypeObject *ltp = H.lock_tp, *rtp = H.rlock_tp;
    if (H.lock_hooked) {
        unhook_methods(ltp, H.lm, LM_COUNT);
        unhook_alloc();
        if (ltp->tp_new == lock_new_hook) {
            ltp->tp_new = H.lock_new;
        }
        if (ltp->tp_vectorcall == lock_vc_hook) {
            ltp->tp_vectorcall = H.lock_vc;
        }
        if (ltp->tp_dealloc == lock_dealloc_hook) {
            ltp->tp_dealloc = H.lock_dealloc;
        }
        H.lock_hooked = 0;
    }
    if (H.rlock_hooked) {
        unhook_methods(rtp, H.rm, RM_COUNT);
        if (rtp->tp_new == rlock_new_hook) {
            rtp->tp_new = H.rlock_new;
        }
        if (rtp->tp_vectorcall == rlock_vc_hook) {
            rtp->tp_vectorcall = H.rlock_vc;
        }
        if (rtp->tp_dealloc == rlock_dealloc_hook) {
            rtp->tp_dealloc = H.rlock_dealloc;
        }
        H.rlock_hooked = 0;
    }
    /* no more deallocations are seen: every lock is unprofiled */
    ddl_locktab_clear(st->locktab);
}

void
ddl_locks_fork_child(ddl_state *st)
{
    if (st->locktab != NULL) {
        st->locktab->npend = 0; /* the parent's threads' holds */
    }
}

int
ddl_locks_init(PyObject *module, ddl_state *st)
{
    PyObject *mod = PyImport_ImportModule("_thread");
    if (mod == NULL) {
        return -1;
    }
    PyObject *lt = PyObject_GetAttrString(mod, "LockType");
    PyObject *rt = PyObject_GetAttrString(mod, "RLock");
    Py_DECREF(mod);
    if (lt == NULL || rt == NULL || !PyType_Check(lt) || !PyType_Check(rt)) {
        Py_XDECREF(lt);
        Py_XDECREF(rt);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ImportError,
                            "ddlock: _thread has no lock types");
        }
        return -1;
    }
    st->native_lock_type = lt;
    st->native_rlock_type = rt;
    return 0;
}

int
ddl_locks_set_types(ddl_state *st, PyObject *lock_type, PyObject *rlock_type)
{
    if (H.st == st && (H.lock_hooked || H.rlock_hooked) &&
        ((lock_type != NULL && lock_type != st->native_lock_type) ||
         (rlock_type != NULL && rlock_type != st->native_rlock_type))) {
        PyErr_SetString(PyExc_RuntimeError,
                        "ddlock: lock types changed while hooked");
        return -1;
    }
    if (lock_type != NULL) {
        Py_XSETREF(st->native_lock_type, Py_NewRef(lock_type));
    }
    if (rlock_type != NULL) {
        Py_XSETREF(st->native_rlock_type, Py_NewRef(rlock_type));
    }
    return 0;
}

void
ddl_locks_clear(ddl_state *st)
{
    if (H.st == st) {
        ddl_locks_unhook(st);
        H.st = NULL;
    }
    if (st->locktab != NULL) {
        ddl_locktab_clear(st->locktab);
        PyMem_Free(st->locktab->index);
        PyMem_Free(st->locktab);
        st->locktab = NULL;
    }
    Py_CLEAR(st->native_lock_type);
    Py_CLEAR(st->native_rlock_type);
}
