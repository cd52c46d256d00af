/* locktab.c: the table of profiled native locks and their pending sampled
 * holds (used by lock.c). */
#ifndef DDLOCK_LOCKTAB_H
#define DDLOCK_LOCKTAB_H

#include "ddlock.h"

#define DDL_PEND_CAP 256

typedef struct {
    PyObject *key; /* the lock, borrowed; NULL: free (prof.site_lasti then
                      links the next free entry, +1) */
    ddl_prof prof;
} lt_entry;

/* A sampled hold in progress. */
typedef struct {
    PyObject *obj;       /* the lock, borrowed */
    unsigned long owner; /* RLock: the holding thread; Lock: 0 */
    uint64_t generation; /* profiling session of the sample */
    int64_t acquired_ns;
    double weight;
    unsigned long depth; /* RLock: acquires to release before it ends */
} ddl_pending;

struct ddl_locktab {
    uint32_t *index; /* LT_EMPTY, LT_GONE, or entry number + LT_FIRST */
    size_t mask;
    lt_entry **chunks;
    size_t nchunks;
    size_t used; /* entries handed out (high water) */
    size_t count;
    size_t filled;      /* index slots not empty (entries and removed ones) */
    uint32_t free_head; /* entry number + 1, 0: none */
    PyObject *targets;  /* {address: weak reference to the labelling object}
                           for the entries with has_target (few) */
    int npend;
    ddl_pending pend[DDL_PEND_CAP];
};

ddl_locktab *ddl_locktab_new(void);
/* Every lock unprofiled (the memory kept small). */
void ddl_locktab_clear(ddl_locktab *t);
void ddl_locktab_free(ddl_locktab *t);
/* Profile obj, a new object (no entry can exist for it), made at (code,
 * lasti), whose reference moves to the entry. -1: out of memory (code is
 * then still the caller's). */
int ddl_locktab_add(ddl_locktab *t, PyObject *obj, PyObject *code, int lasti,
                    int kind, int direct);
/* obj is being freed: its entry and pending holds go. */
void ddl_locktab_forget(ddl_locktab *t, PyObject *obj);

/* The pending hold of obj by owner, or NULL. */
ddl_pending *ddl_pend_find(ddl_locktab *t, PyObject *obj, unsigned long owner);
void ddl_pend_remove(ddl_locktab *t, ddl_pending *p);
/* A new pending hold of obj by owner (its other fields the caller's),
 * replacing a stale one; NULL when the list is full. */
ddl_pending *ddl_pend_add(ddl_locktab *t, PyObject *obj, unsigned long owner);

#endif /* DDLOCK_LOCKTAB_H */
