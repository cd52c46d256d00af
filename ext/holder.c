/* Who made me wait: the holder of a lock when a contended wait on it
 * begins, and the registry of the waits in progress.
 *
 * Holders. An RLock's owner is in its native layout. A Lock has none: the
 * uncontended fast path (lock.c) stores the acquiring thread's slot -- a
 * small number this file hands out per thread, kept thread-local -- in
 * the padding bytes after the native lock's `locked` flag, memory the
 * object already has and CPython never reads (pycompat.h's layout, checked
 * at install). That is one thread-local load and one store into a cache
 * line the acquire has just written: nothing is looked up, allocated or
 * timed on the fast path. On the portable path (no layout) a Lock's holder
 * is unknown.
 *
 * Waits. The contended path of an acquire (lock.c) registers its wait here
 * before blocking: the object (alive: the waiter's call holds it), the
 * lock name (resolved in the waiter's thread, at its acquire site), the
 * waiter, the holder and the holder's stack at that moment (read from the
 * holder's thread state under the GIL: that thread runs no Python code
 * meanwhile). When the wait ends sampled, the waiter's sample carries
 * `holder thread id`/`holder thread name` and a lock-holder-wait sample
 * charges the wait to the holder's stack. The registry is a fixed array
 * (bounded: waits past DDL_WAIT_CAP are not registered) that the stuck
 * lock watchdog (ddlock/_stuck.py) reads through _waits() -- formatting
 * and logging happen there, in its own thread, never in an application
 * thread's acquire.
 *
 * Everything here runs with the GIL held (ddlock.h). The slot table and
 * the registry are process-wide (they describe threads and native lock
 * objects) and not reachable from Python.
 */
#include "holder.h"

#include <string.h>

#define SLOT_CAP 4096 /* slots are reused after this many threads */
#define DDL_WAIT_CAP 256

_Thread_local uint32_t ddl_my_slot __attribute__((tls_model("initial-exec"))) =
    0;

struct ddl_wait {
    int used;
    int heap;              /* ddl_wait_task's: not in the registry */
    PyObject *holder_task; /* strong, or NULL */
    PyObject *task_name;   /* strong, or NULL */
    int how;               /* DDL_HL_* */
    int has_timeout;       /* a timeout or non-blocking: may end without it */
    uint64_t id;           /* unique per wait in this process */
    PyObject *obj;         /* borrowed: the waiter's call holds it */
    PyObject *name;        /* strong, or NULL */
    const char *kind_name;
    unsigned long waiter;
    unsigned long holder;  /* when it began, 0: unknown */
    PyObject *holder_name; /* strong, or NULL */
    int64_t t0;
    /* the holder's stack when the wait began */
    int has_stack;
    ddl_stack stack;
    ddl_frame *frames;
    PyObject **refs;
};

static struct {
    unsigned long idents[SLOT_CAP];
    uint32_t next_slot;
    uint64_t next_id;
    int nused;
    ddl_wait waits[DDL_WAIT_CAP];
} W;

/* ---- thread slots --------------------------------------------------------
 */

uint32_t
ddl_slot_new(void)
{
    uint32_t s = W.next_slot % (SLOT_CAP - 1) + 1;
    W.next_slot = s;
    W.idents[s] = PyThread_get_thread_ident();
    ddl_my_slot = s;
    return s;
}

unsigned long
ddl_slot_ident(uint32_t slot)
{
    return slot != 0 && slot < SLOT_CAP ? W.idents[slot] : 0;
}

/* The holder of obj now, read as how says (0: unknown or free). */
static unsigned long
holder_now(PyObject *obj, int how)
{
#if DDL_NATIVE_LAYOUT
    if (how == DDL_HL_LOCK) {
        ddl_native_lock *lk = (ddl_native_lock *)obj;
        return lk->locked ? ddl_slot_ident(lk->ddl_holder) : 0;
    }
    if (how == DDL_HL_RLOCK) {
        ddl_native_rlock *rl = (ddl_native_rlock *)obj;
        return rl->rlock_count > 0 ? rl->rlock_owner : 0;
    }
#else
    (void)obj;
    (void)how;
#endif
    return 0;
}

/* The thread state of the thread ident (this interpreter's), or NULL. */
static PyThreadState *
thread_state_of(unsigned long ident)
{
    if (ident == 0) {
        return NULL;
    }
    PyInterpreterState *interp = PyInterpreterState_Get();
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (ddl_thread_state_ident(ts) == ident) {
            return ts;
        }
    }
    return NULL;
}

/* Capture the stack of thread ident into w (heap, freed by wait_clear). */
static void
capture_holder_stack(ddl_state *st, ddl_wait *w, PyThreadState *ts)
{
    size_t cap = (size_t)st->max_frames + 2;
    w->frames = PyMem_Malloc(cap * sizeof(ddl_frame));
    w->refs =
        PyMem_Malloc((cap * DDL_REFS_PER_FRAME + 4) * sizeof(PyObject *));
    if (w->frames == NULL || w->refs == NULL) {
        return;
    }
    if (ddl_stack_capture_of(st, ts, &w->stack, w->frames, w->refs, cap) ==
        0) {
        w->has_stack = 1;
    }
}

static void
wait_clear(ddl_wait *w)
{
    if (w->heap) {
        PyObject *task = w->holder_task, *tname = w->task_name;
        PyMem_Free(w);
        Py_XDECREF(task);
        Py_XDECREF(tname);
        return;
    }
    PyObject *name = w->name, *hname = w->holder_name;
    if (w->has_stack) {
        ddl_stack_release(&w->stack);
    }
    PyMem_Free(w->frames);
    PyMem_Free(w->refs);
    w->frames = NULL;
    w->refs = NULL;
    w->has_stack = 0;
    w->name = w->holder_name = NULL;
    w->obj = NULL;
    if (w->used) {
        w->used = 0;
        W.nused--;
    }
    Py_XDECREF(name);
    Py_XDECREF(hname);
}

ddl_wait *
ddl_wait_begin(ddl_state *st, PyObject *obj, ddl_prof *p, PyObject *target,
               int how, unsigned long holder, int has_timeout)
{
    if (p == NULL || ddl_tls.busy || W.nused >= DDL_WAIT_CAP || !st->running) {
        return NULL;
    }
    ddl_wait *w = NULL;
    for (int i = 0; i < DDL_WAIT_CAP; i++) {
        if (!W.waits[i].used) {
            w = &W.waits[i];
            break;
        }
    }
    if (w == NULL) {
        return NULL;
    }
    ddl_tls.busy = 1;
    int gc_was_enabled = ddl_gc_pause();
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    memset(w, 0, sizeof(*w));
    w->used = 1;
    W.nused++;
    w->id = ++W.next_id;
    w->how = how;
    w->has_timeout = has_timeout;
    w->obj = obj;
    w->kind_name = ddl_kind_names[p->kind];
    w->waiter = PyThread_get_thread_ident();
    w->holder = holder;
    w->t0 = ddl_monotonic_ns();
    w->name = ddl_lock_name(st, p, target);
    if (holder != 0 && holder != w->waiter) {
        w->holder_name = ddl_thread_name(st, holder);
        PyThreadState *ts = thread_state_of(holder);
        if (ts != NULL) {
            capture_holder_stack(st, w, ts);
        }
    }
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    ddl_gc_resume(gc_was_enabled);
    ddl_tls.busy = 0;
    return w;
}

/* The lock-holder-wait sample of w: the holder's stack and labels. */
static void
record_holder_wait(ddl_state *st, ddl_wait *w, ddl_prof *p, int64_t wait_ns,
                   double weight)
{
    if (!w->has_stack || st->profile == NULL) {
        return;
    }
    PyObject *own[10];
    size_t nown = 0;
    ddl_label labels[7];
    size_t nl = 0;
    ddl_str name_s = {"<unknown>", 9, 0};
    if (w->name != NULL) {
        ddl_str_of(&name_s, w->name, own, &nown);
    }
    labels[nl++] = (ddl_label){{"lock name", 9}, name_s, 0};
    labels[nl++] =
        (ddl_label){{"thread id", 9}, {NULL, 0, 0}, (int64_t)w->holder};
    if (w->holder_name != NULL) {
        ddl_str hs;
        ddl_str_of(&hs, w->holder_name, own, &nown);
        labels[nl++] = (ddl_label){{"thread name", 11}, hs, 0};
    }
    const char *type = ddl_kind_names[p->kind];
    labels[nl++] = (ddl_label){{"lock type", 9}, {type, strlen(type), 0}, 0};
    /* placed like the waiter's sample: the same lock, the same row */
    nl += ddl_place_labels(p, &labels[nl], own, &nown);
    int64_t values[DDL_NVALUES] = {0};
    values[DDL_V_HOLDER_WAIT] = ddl_weighted((double)wait_ns, weight);
    /* the same event as the waiter's sample: not counted again */
    (void)ddl_profile_add(st->profile, w->stack.frames, w->stack.nframes,
                          labels, nl, values);
    for (size_t i = 0; i < nown; i++) {
        Py_DECREF(own[i]);
    }
}

int
ddl_wait_end(ddl_state *st, ddl_wait *w, ddl_prof *p, PyObject *target,
             int64_t wait_ns, double weight)
{
    int rc = -1;
    if (p != NULL) {
        ddl_label extra[4] = {{{NULL, 0, 0}, {NULL, 0, 0}, 0}};
        size_t nextra = 0;
        PyObject *own[4];
        size_t nown = 0;
        if (w != NULL && w->holder != 0 && w->holder != w->waiter) {
            extra[nextra++] = (ddl_label){
                {"holder thread id", 16}, {NULL, 0, 0}, (int64_t)w->holder};
            if (w->holder_name != NULL) {
                ddl_str hs;
                ddl_str_of(&hs, w->holder_name, own, &nown);
                extra[nextra++] =
                    (ddl_label){{"holder thread name", 18}, hs, 0};
            }
        }
        if (w != NULL && w->holder_task != NULL) {
            extra[nextra++] = (ddl_label){{"holder task id", 14},
                                          {NULL, 0, 0},
                                          (int64_t)(uintptr_t)w->holder_task};
            if (w->task_name != NULL) {
                ddl_str ts;
                ddl_str_of(&ts, w->task_name, own, &nown);
                extra[nextra++] = (ddl_label){{"holder task name", 16}, ts, 0};
            }
        }
        rc =
            ddl_record_ex(st, p, target, wait_ns, 0, 0, weight, extra, nextra);
        if (rc == 0 && nextra > 0 && !w->heap && !ddl_tls.busy) {
            ddl_tls.busy = 1;
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            record_holder_wait(st, w, p, wait_ns, weight);
            PyErr_Clear();
            PyErr_Restore(et, ev, etb);
            ddl_tls.busy = 0;
        }
        for (size_t i = 0; i < nown; i++) {
            Py_DECREF(own[i]);
        }
    }
    if (w != NULL) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        wait_clear(w);
        PyErr_Restore(et, ev, etb);
    }
    return rc;
}

ddl_wait *
ddl_wait_task(ddl_state *st, PyObject *holder_task)
{
    ddl_wait *w = PyMem_Calloc(1, sizeof(*w));
    if (w == NULL) {
        return NULL;
    }
    w->heap = 1;
    w->waiter = PyThread_get_thread_ident();
    w->holder_task = Py_NewRef(holder_task);
    w->task_name = ddl_task_name(st, holder_task);
    return w;
}

void
ddl_waits_fork_child(void)
{
    /* the waiting threads are the parent's: their references are dropped
     * (not freed: the objects may be shared with live code) */
    for (int i = 0; i < DDL_WAIT_CAP; i++) {
        if (W.waits[i].used) {
            wait_clear(&W.waits[i]);
        }
    }
    W.nused = 0;
}

/* ---- reading the registry (the watchdog) -------------------------------- */

static PyObject *
str_of_view(ddl_str s)
{
    return PyUnicode_DecodeUTF8(s.ptr != NULL ? s.ptr : "", (Py_ssize_t)s.len,
                                "replace");
}

/* [(function, filename, line), ...] leaf first. */
static PyObject *
stack_list(const ddl_stack *stack)
{
    PyObject *list = PyList_New((Py_ssize_t)stack->nframes);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < stack->nframes; i++) {
        const ddl_frame *fr = &stack->frames[i];
        PyObject *t = Py_BuildValue("(NNl)", str_of_view(fr->name),
                                    str_of_view(fr->filename), (long)fr->line);
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

/* The current stack of thread ident as a list, or None. */
static PyObject *
current_stack(ddl_state *st, unsigned long ident)
{
    PyThreadState *ts = thread_state_of(ident);
    if (ts == NULL) {
        Py_RETURN_NONE;
    }
    size_t cap = (size_t)st->max_frames + 2;
    ddl_frame *frames = PyMem_Malloc(cap * sizeof(ddl_frame));
    PyObject **refs =
        PyMem_Malloc((cap * DDL_REFS_PER_FRAME + 4) * sizeof(PyObject *));
    PyObject *r = NULL;
    ddl_stack stack;
    if (frames == NULL || refs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (ddl_stack_capture_of(st, ts, &stack, frames, refs, cap) != 0) {
        r = Py_NewRef(Py_None);
        goto done;
    }
    r = stack_list(&stack);
    ddl_stack_release(&stack);
done:
    PyMem_Free(frames);
    PyMem_Free(refs);
    return r;
}

static PyObject *
opt_str(PyObject *s)
{
    return s != NULL ? Py_NewRef(s) : Py_NewRef(Py_None);
}

static PyObject *
wait_dict(ddl_state *st, ddl_wait *w, int64_t now)
{
    unsigned long holder = holder_now(w->obj, w->how);
    if (holder == 0 && w->how == DDL_HL_NONE) {
        holder = w->holder; /* nothing to read again: the one recorded */
    }
    PyObject *hname = NULL;
    if (holder != 0) {
        hname = holder == w->holder && w->holder_name != NULL
                    ? Py_NewRef(w->holder_name)
                    : ddl_thread_name(st, holder);
    }
    PyObject *wname = ddl_thread_name(st, w->waiter);
    PyObject *d = Py_BuildValue(
        "{s:K,s:N,s:s,s:n,s:k,s:N,s:N,s:N,s:d,s:O,s:N,s:N,s:N}", "id",
        (unsigned long long)w->id, "lock", opt_str(w->name), "lock_type",
        w->kind_name, "lock_id", (Py_ssize_t)(uintptr_t)w->obj, "waiter_id",
        w->waiter, "waiter_name", opt_str(wname), "holder_id",
        holder != 0 ? PyLong_FromUnsignedLong(holder) : Py_NewRef(Py_None),
        "holder_name", opt_str(hname), "waited_s", (double)(now - w->t0) / 1e9,
        "has_timeout", w->has_timeout ? Py_True : Py_False, "waiter_stack",
        current_stack(st, w->waiter), "holder_stack",
        holder != 0 ? current_stack(st, holder) : Py_NewRef(Py_None),
        "holder_stack_at_start",
        w->has_stack ? stack_list(&w->stack) : Py_NewRef(Py_None));
    Py_XDECREF(wname);
    Py_XDECREF(hname);
    return d;
}

/* _waits(min_age_s): the registered waits older than min_age_s. */
static PyObject *
mod_waits(PyObject *module, PyObject *arg)
{
    ddl_state *st = (ddl_state *)PyModule_GetState(module);
    double min_age = PyFloat_AsDouble(arg);
    if (min_age == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL || st == NULL) {
        return list;
    }
    int64_t now = ddl_monotonic_ns();
    /* ids first: building the dicts allocates (a finalizer may run and end
     * or begin waits meanwhile) */
    uint64_t ids[DDL_WAIT_CAP];
    int n = 0;
    for (int i = 0; i < DDL_WAIT_CAP; i++) {
        ddl_wait *w = &W.waits[i];
        if (w->used && (double)(now - w->t0) / 1e9 >= min_age) {
            ids[n++] = w->id;
        }
    }
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < DDL_WAIT_CAP; i++) {
            ddl_wait *w = &W.waits[i];
            if (!w->used || w->id != ids[k]) {
                continue;
            }
            PyObject *d = wait_dict(st, w, now);
            if (d == NULL || PyList_Append(list, d) < 0) {
                Py_XDECREF(d);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(d);
            break;
        }
    }
    return list;
}

static PyMethodDef holder_methods[] = {
    {"_waits", mod_waits, METH_O,
     "The contended waits in progress older than min_age_s, as dicts."},
    {NULL},
};

int
ddl_holder_init(PyObject *module, ddl_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, holder_methods);
}
