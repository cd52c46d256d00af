/* order.c: lock-order checking (lockdep for Python), used by lock.c,
 * tracker.c, hooks.c and module.c.
 *
 * While the mode is on (start(lock_order=True)), every successful acquire
 * of a profiled lock pushes it on its holder's list of held locks (per
 * thread; per task for asyncio locks) and, unless it was a try-acquire,
 * adds an edge (held lock class -> acquired lock class) to an order graph
 * for each lock held. A lock class is a creation site and a name. A new
 * edge that closes a cycle is a lock-order inversion, queued as a report;
 * the reports are logged outside the acquire path, by a reporter thread
 * (ddlock/_order.py) that ddl_order_signal wakes. */
#ifndef DDLOCK_ORDER_H
#define DDLOCK_ORDER_H

#include "ddlock.h"

/* Does obj need its class (first acquire in this session)? The caller
 * then passes the object that names it; else target may be NULL. */
int ddl_order_needs_target(ddl_state *st, PyObject *obj);

/* An acquire of obj (profiled as p, named by target) by actor (the thread
 * ident, or the task of an asyncio lock) succeeded. is_try: a non-blocking
 * acquire, which adds no edge into obj (it cannot deadlock) but makes it a
 * held lock. depth: levels taken at once (Condition.wait()'s re-acquire of
 * an RLock restores its count). Never raises. */
void ddl_order_acquired(ddl_state *st, PyObject *obj, ddl_prof *p,
                        PyObject *target, uintptr_t actor, int is_try,
                        unsigned long depth);
/* A release of obj by actor succeeded: one level, or every level (full:
 * Condition.wait()). A lock released by another actor than the one that
 * holds it (a Lock, a semaphore) leaves the holder's list. Never raises. */
void ddl_order_released(ddl_state *st, PyObject *obj, uintptr_t actor,
                        int full);
/* obj is being freed: it leaves every held list. */
void ddl_order_forget(ddl_state *st, PyObject *obj);
/* Is an acquire called with these arguments (after self) a non-blocking
 * one: blocking=False as a bool or int, first positional or keyword? */
int ddl_order_is_try(PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames);

/* Begin a session (start() with lock_order): an empty graph. -1 with an
 * exception set. */
int ddl_order_start(ddl_state *st);
/* After fork, in the child: only the forking thread's held list stays. */
void ddl_order_fork_child(ddl_state *st);
/* Counters into stats()'s dict; -1 with an exception set. */
int ddl_order_stats(ddl_state *st, PyObject *d);
/* Module functions (_order_*) and cleanup. */
int ddl_order_init(PyObject *module, ddl_state *st);
void ddl_order_clear(ddl_state *st);

#endif /* DDLOCK_ORDER_H */
