/* ddlock profile: thread-safe aggregation of lock samples.
 *
 * Pure C: never includes Python.h, never calls Python. Application threads
 * call ddl_profile_add() (with the GIL held, but the profile does not rely on
 * it: a short native mutex protects the table). The export thread calls
 * ddl_profile_swap() to take the current table out as a snapshot and encodes
 * the snapshot without holding any lock an application thread waits on.
 */
#ifndef DDLOCK_PROFILE_H
#define DDLOCK_PROFILE_H

#include <stddef.h>
#include <stdint.h>

/* A borrowed string: ptr need not be NUL terminated; the profile copies what
 * it keeps. ptr may be NULL only when len is 0.
 *
 * hash is optional: 0 means "not computed" (the profile hashes the bytes
 * when it needs to), anything else must be ddl_str_hash(ptr, len). A caller
 * that passes the same string often (a code object's name and filename)
 * computes it once and spares the profile rehashing the bytes. Initialise
 * a ddl_str as a whole ({ptr, len} leaves hash 0). */
typedef struct {
    const char *ptr;
    size_t len;
    uint64_t hash;
} ddl_str;

/* The profile's hash of len bytes at ptr (what ddl_str.hash caches). */
uint64_t ddl_str_hash(const char *ptr, size_t len);

/* One stack frame. Stacks are passed leaf first. */
typedef struct {
    ddl_str name;     /* function name (qualified name on 3.11+) */
    ddl_str filename; /* code object's filename */
    int64_t line;     /* line number, 0 when unknown */
    uint64_t key;     /* 0, or the caller's promise that every frame it
                         passes with this key has the same name and filename
                         bytes (at the same pointers or not): the profile
                         then trusts a cached frame with the same pointers
                         and key without comparing the bytes again */
} ddl_frame;

/* One label. A label with str.ptr == NULL is numeric (num is used). */
typedef struct {
    ddl_str key;
    ddl_str str;
    int64_t num;
} ddl_label;

/* The values every sample carries, in this order (the pprof sample types).
 * A sample records one event, so all but one or two are zero. */
enum {
    DDL_V_ACQUIRE = 0,     /* lock-acquire / count */
    DDL_V_WAIT = 1,        /* lock-acquire-wait / nanoseconds */
    DDL_V_RELEASE = 2,     /* lock-release / count */
    DDL_V_HOLD = 3,        /* lock-release-hold / nanoseconds */
    DDL_V_HOLDER_WAIT = 4, /* lock-holder-wait / nanoseconds: a wait charged
                              to the holder's stack */
    DDL_V_COND_WAIT = 5,   /* condition-wait / count */
    DDL_V_COND_TIME = 6,   /* condition-wait-time / nanoseconds */
    DDL_NVALUES = 7
};

typedef struct ddl_profile ddl_profile;   /* the live, locked container */
typedef struct ddl_snapshot ddl_snapshot; /* a swapped-out table, owned */

/* max_samples: cap on distinct (stack, labels) keys per interval (> 0).
 * start_ns: wall-clock epoch ns at which the first interval starts.
 * Returns NULL on allocation failure. */
ddl_profile *ddl_profile_new(size_t max_samples, int64_t start_ns);
void ddl_profile_free(ddl_profile *p);

/* Aggregate values into the sample keyed by (frames, labels). Label order is
 * part of the key (callers always pass labels in the same order).
 * Returns 0 when recorded, 1 when dropped because the cap was reached
 * (counted), -1 on allocation failure (counted as dropped). Thread-safe. */
int ddl_profile_add(ddl_profile *p, const ddl_frame *frames, size_t nframes,
                    const ddl_label *labels, size_t nlabels,
                    const int64_t values[DDL_NVALUES]);

/* ddl_profile_add() that also hands out a ticket naming the sample the
 * values went to (*ticket is 0 when they went nowhere): a caller that sees
 * the very same key again (same frames and labels, by content) may add to
 * that sample with ddl_profile_add_ticket() instead of resolving the key.
 * A ticket is valid until the live table is swapped out, cleared or reset
 * in a forked child. */
int ddl_profile_add_ex(ddl_profile *p, const ddl_frame *frames, size_t nframes,
                       const ddl_label *labels, size_t nlabels,
                       const int64_t values[DDL_NVALUES], uint64_t *ticket);

/* Add values to the sample a ticket names. Returns 0 when added, 1 when the
 * ticket is stale or 0 (nothing added, nothing counted: the caller adds
 * with the full key instead). Thread-safe. */
int ddl_profile_add_ticket(ddl_profile *p, uint64_t ticket,
                           const int64_t values[DDL_NVALUES]);

/* Take the current table out and start a new, empty one at now_ns.
 * The snapshot covers [previous start, now_ns). Never returns NULL unless
 * allocation failed (then the current table is kept and NULL returned).
 * Thread-safe; holds the profile mutex only for the pointer swap. */
ddl_snapshot *ddl_profile_swap(ddl_profile *p, int64_t now_ns);

/* Drop everything recorded so far and restart the interval at now_ns. */
void ddl_profile_clear(ddl_profile *p, int64_t now_ns);

/* Counters since creation (thread-safe reads). */
typedef struct {
    uint64_t samples_added;   /* successful ddl_profile_add calls */
    uint64_t samples_dropped; /* add calls refused by the cap or OOM */
    uint64_t snapshots;       /* swaps performed */
    size_t current_keys;      /* distinct keys in the live table */
} ddl_profile_stats;
void ddl_profile_get_stats(ddl_profile *p, ddl_profile_stats *out);

/* fork() support: prepare takes the profile mutex so no thread holds it
 * mid-update at fork time; parent releases it; child re-initialises the
 * mutex and drops the parent's samples (restarting the interval at now_ns). */
void ddl_profile_fork_prepare(ddl_profile *p);
void ddl_profile_fork_parent(ddl_profile *p);
void ddl_profile_fork_child(ddl_profile *p, int64_t now_ns);

/* Snapshot accessors (used by pprof.c and tests). */
int64_t ddl_snapshot_start_ns(const ddl_snapshot *s);
int64_t ddl_snapshot_end_ns(const ddl_snapshot *s);
size_t ddl_snapshot_nsamples(const ddl_snapshot *s);
/* samples dropped by the cap during this snapshot's interval */
uint64_t ddl_snapshot_dropped(const ddl_snapshot *s);
void ddl_snapshot_free(ddl_snapshot *s);

/* Monotonic and wall clocks in ns (shared helpers, no Python). */
int64_t ddl_monotonic_ns(void);
int64_t ddl_wall_ns(void);

#endif /* DDLOCK_PROFILE_H */
