/* holder.c: who holds a lock that someone waits for (used by lock.c,
 * tracker.c and module.c). */
#ifndef DDLOCK_HOLDER_H
#define DDLOCK_HOLDER_H

#include "ddlock.h"

/* ---- thread slots --------------------------------------------------------
 * A small number naming a thread, stored by the uncontended fast path of a
 * native Lock in the padding of the lock object (ddl_native_lock's
 * ddl_holder): one thread-local load and one store. 0: none yet. */
extern _Thread_local uint32_t ddl_my_slot
    __attribute__((tls_model("initial-exec")));
uint32_t ddl_slot_new(void);

static inline uint32_t
ddl_holder_slot(void)
{
    uint32_t s = ddl_my_slot;
    return s != 0 ? s : ddl_slot_new();
}

/* The thread ident of a slot (0: none). */
unsigned long ddl_slot_ident(uint32_t slot);

/* How the current holder of a waited-for object can be read again (by the
 * stuck-lock watchdog): from the native layout of a Lock or RLock, or not
 * (the holder recorded when the wait began stays). */
enum { DDL_HL_NONE = 0, DDL_HL_LOCK, DDL_HL_RLOCK };

/* ---- contended waits ------------------------------------------------------
 * A registry of the waits in progress, filled on the contended path only:
 * what the stuck-lock watchdog and the deadlock check read. */
typedef struct ddl_wait ddl_wait;

/* The running thread begins a contended wait for obj (profiled as p,
 * labelled by target; p NULL: nothing is registered, NULL), held by holder
 * (thread ident, 0: unknown), read again as `how` says. has_timeout: the wait
 * may end without the lock. Never raises. */
ddl_wait *ddl_wait_begin(ddl_state *st, PyObject *obj, ddl_prof *p,
                         PyObject *target, int how, unsigned long holder,
                         int has_timeout);
/* The wait w (NULL: none registered) ended. With p (the acquire
 * succeeded after wait_ns and is sampled with weight), records the
 * waiter's acquire sample (ddl_record) with the holder's labels and a
 * lock-holder-wait sample on the holder's stack when the wait began.
 * Returns what ddl_record returns (-1 without p). */
int ddl_wait_end(ddl_state *st, ddl_wait *w, ddl_prof *p, PyObject *target,
                 int64_t wait_ns, double weight);

/* An unregistered wait of an asyncio task held by holder_task (borrowed):
 * ddl_wait_end labels the waiter's sample with `holder task id`/`holder
 * task name`. NULL when out of memory. */
ddl_wait *ddl_wait_task(ddl_state *st, PyObject *holder_task);

int ddl_holder_init(PyObject *module, ddl_state *st);
void ddl_waits_fork_child(void);

#endif /* DDLOCK_HOLDER_H */
