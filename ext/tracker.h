/* tracker.c: the profiling state of the Python-level primitives (used by
 * hooks.c and module.c). */
#ifndef DDLOCK_TRACKER_H
#define DDLOCK_TRACKER_H

#include "holder.h"

typedef struct {
    uintptr_t actor;     /* thread ident, task or greenlet address */
    uint64_t generation; /* profiling session of the sample */
    int64_t acquired_ns;
    double weight;
} ddl_pending_hold;

typedef struct {
    PyObject_HEAD ddl_prof prof;
    PyObject *key;    /* the profiled object, borrowed (NULL once gone) */
    PyObject *ref;    /* strong: weak reference to key, calling this tracker */
    PyObject *target; /* strong: weak reference to the object whose name
                         labels the samples (a Condition), or NULL: key */
    /* exclusive kinds: the sampled hold in progress */
    int sampled;
    int depth; /* nesting of the pending hold */
    uint64_t hold_gen;
    int64_t acquired_ns;
    double weight;
    /* semaphores: sampled holds in progress, by holder (made lazily) */
    ddl_pending_hold *ring;
    int nring;
    unsigned long holder; /* thread of the last acquire while it holds, 0:
                             none known (holder.c) */
    unsigned char holder_wanted; /* asyncio: contended once, so the task of
                                    each acquire is noted (holder.c) */
    PyObject *holder_task;       /* asyncio: weak reference to the task of the
                                    last acquire, or NULL */
    /* DDL_W_*: a tracker of condition waits only (not of the object's
     * acquires: ddl_profiled() does not see it); 0 otherwise */
    int wait_type;
} ddl_tracker;

/* What a condition wait waits on: its `lock type` label. */
enum {
    DDL_W_NONE = 0,
    DDL_W_CONDITION,
    DDL_W_EVENT,
    DDL_W_BARRIER,
    DDL_W_FUTURE,
    DDL_W_ACONDITION,
    DDL_W_AEVENT,
    DDL_W_AQUEUE,
    DDL_W_COUNT
};
extern const char *const ddl_wait_names[DDL_W_COUNT];

/* The outcome of a condition wait: its `wait outcome` label. */
enum { DDL_WAIT_NOTIFIED = 0, DDL_WAIT_TIMEOUT, DDL_WAIT_CANCELLED };

/* How an acquire that succeeded is sampled. */
enum {
    DDL_ACQ_UNCONTENDED, /* by the countdown, now */
    DDL_ACQ_SAMPLED,     /* already chosen by the countdown */
    DDL_ACQ_TIMED        /* waited since t0: sampled like a contended one */
};

/* The tracker of obj (borrowed; lives as long as obj), or NULL. */
ddl_tracker *ddl_tracker_of(ddl_state *st, PyObject *obj);
/* Profile obj (which must support weak references) as kind, labelled by
 * target's name (NULL: obj's), made at (code, lasti); obj's existing
 * tracker if it has one. Borrowed, or NULL with an exception set. */
ddl_tracker *ddl_tracker_new(ddl_state *st, PyObject *obj, int kind,
                             PyObject *target, PyObject *code, int lasti,
                             int direct);
/* An acquire of t's object succeeded; restore_depth: the depth a
 * Condition.wait() re-acquire restores (0 otherwise). */
void ddl_tracker_acquired(ddl_state *st, ddl_tracker *t, int mode, int64_t t0,
                          int restore_depth);
/* The same, ending the registered wait w (holder.c; NULL: none). */
void ddl_tracker_acquired_w(ddl_state *st, ddl_tracker *t, int mode,
                            int64_t t0, int restore_depth, ddl_wait *w);
/* The running asyncio task (asyncio) or gevent greenlet acquires t's
 * primitive: its holder now. */
void ddl_tracker_note_task(ddl_state *st, ddl_tracker *t, int asyncio);
/* A release succeeded; full: every level at once (Condition.wait). */
void ddl_tracker_released(ddl_state *st, ddl_tracker *t, int full);
/* The wait tracker of obj (its condition waits labelled as wait_type,
 * named by target's name, NULL: obj's, made at (code, lasti)): obj's own
 * if it has one. Borrowed, or NULL with an exception set. */
ddl_tracker *ddl_wait_tracker_new(ddl_state *st, PyObject *obj, int wait_type,
                                  PyObject *target, PyObject *code, int lasti,
                                  int direct);
/* A condition wait on t's object, begun at t0, ended now with outcome
 * (DDL_WAIT_*): sampled like a contended acquire. Never raises. */
void ddl_tracker_waited(ddl_state *st, ddl_tracker *t, int64_t t0,
                        int outcome);
/* Lock-order checking (order.c) of t's object: an acquire succeeded
 * (is_try: non-blocking; depth: levels restored), a release succeeded. */
void ddl_tracker_order_acquired(ddl_state *st, ddl_tracker *t, int is_try,
                                unsigned long depth);
void ddl_tracker_order_released(ddl_state *st, ddl_tracker *t, int full);
/* What profiles obj: a native lock's entry or a tracker's; NULL if none.
 * *target (when not NULL): the object whose name labels it, borrowed. */
ddl_prof *ddl_profiled(ddl_state *st, PyObject *obj, PyObject **target);

#endif /* DDLOCK_TRACKER_H */
