/* Internal declarations shared by the parts of ddlock that include Python.h.
 *
 * The files call downward only, in this order (docs/ARCHITECTURE.md):
 *   pycompat.h  version branches: internal paths of the tested minors, the
 *               public API everywhere else
 *   frames.c    stacks, creation sites, lock names (the only frame reader)
 *   tasks.c     who is running: thread, asyncio task, greenlet; their labels
 *   record.c    sampling decisions and the record path into the profile
 *   order.c     lock-order checking (order.h)
 *   lock.c      the native _thread.lock / _thread.RLock, profiled in place
 *   tracker.c   profiling state of the Python-level primitives
 *   hooks.c     method hooks of the Python-level primitives' classes
 *   module.c    module init and the Python-facing functions
 *
 * The GIL. ddlock is not free-threading safe and does not declare itself
 * so: on a free-threaded build CPython turns the GIL back on when it loads
 * (start() says so once). Everything below relies on the GIL: the module
 * state and its caches, the lock and tracker tables, the pending holds, the
 * hook installation (type dicts and slots are changed with the GIL held and
 * no other thread running Python), the per-thread countdown's generation
 * check, and the portable path's uncontended Lock acquire (a lock seen
 * free by its native locked() is taken by the native acquire's first,
 * non-blocking try: no other thread runs in between; without the GIL a
 * wait could go untimed, never wrongly ordered). The pure-C parts (profile,
 * pprof, exporter) have their own mutexes and never need it.
 */
#ifndef DDLOCK_DDLOCK_H
#define DDLOCK_DDLOCK_H

#include "pycompat.h"

#include <stdint.h>

#include "exporter.h"
#include "pprof.h"
#include "profile.h"

#define DDL_VERSION "0.1.0"
#define DDL_MAX_EXCLUDES 32
#define DDL_NAME_CACHE_MAX 131072

/* ---- what is profiled ------------------------------------------------- */

/* The kinds of profiled objects: their `lock type` label. */
enum {
    DDL_K_LOCK = 0,
    DDL_K_RLOCK,
    DDL_K_SEMAPHORE,
    DDL_K_BSEMAPHORE,
    DDL_K_CONDITION,
    DDL_K_ALOCK,
    DDL_K_ASEMAPHORE,
    DDL_K_ABSEMAPHORE,
    DDL_K_ACONDITION,
    DDL_K_COUNT
};
extern const char *const ddl_kind_names[DDL_K_COUNT];

/* One holder at a time (a Lock, RLock, Condition, asyncio Lock or
 * Condition) or a counting semaphore (holds tracked per holder). */
static inline int
ddl_kind_exclusive(int kind)
{
    return kind != DDL_K_SEMAPHORE && kind != DDL_K_BSEMAPHORE &&
           kind != DDL_K_ASEMAPHORE && kind != DDL_K_ABSEMAPHORE;
}

static inline int
ddl_kind_asyncio(int kind)
{
    return kind >= DDL_K_ALOCK;
}

/* The profiling identity of one profiled object (a native lock, kept off
 * the object in lock.c's table; a Python-level primitive's Tracker): where
 * it was made, what it is called, what it is. */
typedef struct {
    PyObject *site_code; /* strong, NULL when unknown */
    PyObject *name;      /* strong: the "file:line:name" label once resolved */
    int site_lasti;      /* byte offset in site_code, -1 unknown */
    unsigned char kind;  /* DDL_K_* */
    unsigned char name_done;
    unsigned char has_target;  /* labelled by another object's name (a
                                  Condition for its lock), kept beside */
    unsigned char site_direct; /* the site's call made the object (not an
                                  outer constructor's): its binding names it */
} ddl_prof;

void ddl_prof_clear(ddl_prof *p);

/* ---- caches (frames.c, record.c) ------------------------------------- */

#define DDL_LINE_CACHE_SIZE 4096 /* power of two */

typedef struct {
    PyObject *code; /* strong reference, NULL when empty */
    int lasti;
    int line;
} ddl_line_entry;

#define DDL_CODE_CACHE_SIZE 1024 /* power of two */

/* One frame of a raw stack (frames.c's ddl_stack_raw): borrowed. */
typedef struct {
    PyObject *code;
    PyObject *filename; /* the code's co_filename when walked */
    int lasti;
} ddl_raw_frame;

/* The record memo (record.c): for the last keys recorded, the raw stack and
 * the labels they were made from, and the ticket of the profile sample
 * they went to. An event whose raw stack and labels are the same as an
 * entry's goes to that sample without capturing and resolving its stack
 * again. Entries hold references to everything whose identity they
 * compare (codes, filenames, the label strings' owners): the same
 * pointers then mean the same bytes. */
#define DDL_MEMO_SIZE 128  /* entries, power of two */
#define DDL_MEMO_FRAMES 48 /* deeper raw stacks are not memoized */
#define DDL_MEMO_LABELS 10
#define DDL_MEMO_OWNERS 10
typedef struct {
    uint64_t hash;       /* of the key; entries with nframes < 0 are empty */
    uint64_t generation; /* st->generation it was filled in */
    uint64_t ticket;
    int nframes;
    int nlabels;
    int nowners;
    int is_release;
    ddl_raw_frame frames[DDL_MEMO_FRAMES]; /* code, filename: strong */
    ddl_label labels[DDL_MEMO_LABELS];
    PyObject *owners[DDL_MEMO_OWNERS]; /* strong */
} ddl_memo_entry;

/* What a sampled stack needs from a code object (frames.c). */
typedef struct {
    PyObject *code;       /* strong reference, NULL when empty */
    PyObject *name;       /* strong: the str the name view was made from */
    PyObject *filename;   /* strong: the str the filename view was made from */
    PyObject *escaped[2]; /* strong: bytes behind a view of a str that has no
                             UTF-8 form (name, filename), else NULL */
    ddl_str name_s;       /* views with their profile hashes */
    ddl_str filename_s;
    int internal;    /* threading.py, ddlock or asyncio's lock code */
    uint64_t serial; /* unique per fill: the frames' ddl_frame.key */
} ddl_code_entry;

#define DDL_IDENT_CACHE_SIZE 64 /* power of two */

/* A thread ident as the int threading._active is keyed by (tasks.c). */
typedef struct {
    unsigned long ident;
    PyObject *key; /* strong reference to an int equal to ident, or NULL */
} ddl_ident_entry;

#define DDL_SITE_CACHE_SIZE 1024 /* power of two */
enum { DDL_SITE_NATIVE = 0, DDL_SITE_CALLER = 1, DDL_SITE_WALK = 2 };

typedef struct {
    PyObject *code;    /* strong reference, NULL when empty */
    PyObject *globals; /* strong reference */
    int verdict;       /* DDL_SITE_* */
} ddl_site_entry;

/* Creation functions whose frame is not where a lock is made: threading's
 * RLock() (a Python function calling _thread.RLock). */
#define DDL_PASSTHROUGH_MAX 4

/* The running interpreter's opcodes that creation bindings read
 * (frames.c), from its opcode module; -1 when it has none of that name. */
typedef struct {
    int known;                /* the table was given */
    unsigned char cache[256]; /* inline cache entries after each opcode */
    int extended_arg;
    int store_fast, store_fast_store_fast, store_fast_load_fast;
    int store_deref, store_name, store_global, store_attr, store_subscr;
    int load_const, load_fast, load_deref, load_name, load_global, load_attr;
} ddl_opcodes;

typedef struct ddl_locktab ddl_locktab;       /* lock.c */
typedef struct ddl_trackertab ddl_trackertab; /* tracker.c */
typedef struct ddl_order ddl_order;           /* order.c */

/* Per-module state (one per interpreter that imports ddlock._ddlock; only
 * the main interpreter's profiles). */
typedef struct {
    PyObject *threading_active; /* threading._active (thread registry) */
    PyObject *threading_file;   /* co_filename of threading.py */
    PyObject *ddlock_dir;       /* directory prefix of the ddlock package */
    PyObject *passthrough[DDL_PASSTHROUGH_MAX]; /* code objects */
    ddl_opcodes ops;
    PyObject *name_cache; /* (site code, site lasti, user code) -> name */
    ddl_line_entry *line_cache; /* DDL_LINE_CACHE_SIZE entries */
    ddl_memo_entry *memo;       /* DDL_MEMO_SIZE entries, made on first use */
    ddl_site_entry *site_cache; /* DDL_SITE_CACHE_SIZE entries */
    ddl_code_entry *code_cache; /* DDL_CODE_CACHE_SIZE entries */
    uint64_t code_serial;       /* last ddl_code_entry.serial handed out */
    ddl_ident_entry ident_cache[DDL_IDENT_CACHE_SIZE];
    PyObject *str_name;        /* interned "_name" */
    PyObject *str_ident;       /* interned "_ident" */
    PyObject *str_dunder_name; /* interned "__name__" */

    /* configuration, written only with the GIL held by start()/stop() */
    int running;          /* a profile is being collected */
    uint64_t generation;  /* bumped by every start/stop/fork */
    double capture_p;     /* 0..1 */
    int64_t wait_rate_ns; /* contended waits >= rate always sampled */
    int max_frames;
    int inspect_dir;
    int resolve_names; /* 0 only for testing the checker */
    int n_excludes;
    char *excludes[DDL_MAX_EXCLUDES];
    uint64_t seed;  /* 0 = random */
    int lock_order; /* lock-order checking on (order.c) */
    ddl_order *order;

    ddl_profile *profile;
    ddl_exporter *exporter;
    uint64_t file_seq; /* last file sequence number of this process */
    ddl_file_history *file_history; /* files this process wrote (max_files) */
    /* counters of the last session, reported by stats() after stop() */
    int has_last_stats;
    ddl_exporter_stats last_exporter_stats;
    ddl_profile_stats last_profile_stats;

    /* exporter log messages waiting for the GIL (filled without the GIL) */
    PyThread_type_lock log_mutex;
    int log_pending_scheduled;
    int n_logs;
    struct {
        int level;
        char kind[32];
        char msg[256];
    } logs[32];

    /* counters (GIL held) */
    uint64_t locks_created;
    uint64_t primitives_created;
    uint64_t events_sampled;
    uint64_t events_reentrant_skipped;
    uint64_t names_resolved;
    uint64_t names_cache_hits;
    uint64_t names_missed;
    uint64_t holds_dropped; /* sampled holds not tracked (table full) */

    /* lock.c: the profiled native locks */
    ddl_locktab *locktab;
    PyObject *native_lock_type;  /* _thread.LockType */
    PyObject *native_rlock_type; /* _thread.RLock */

    /* tracker.c, hooks.c: the Python-level primitives */
    ddl_trackertab *trackertab;
    PyTypeObject *tracker_type;
    PyTypeObject *hook_type;
    PyTypeObject *waiting_type;   /* an asyncio acquire being waited for */
    PyObject *asyncio_locks_file; /* co_filename of asyncio/locks.py */
    PyObject *get_running_loop;   /* asyncio.events._get_running_loop */
    PyObject *current_task;       /* asyncio.current_task */
    PyObject *current_tasks;      /* asyncio.tasks._current_tasks (dict) */
    PyObject *task_get_name[2];   /* get_name of asyncio's own Task types */
    PyObject *gevent_getcurrent;  /* gevent.getcurrent once gevent patched */
    PyObject *greenlet_name;      /* gevent.Greenlet's own `name` descriptor */
    PyObject *str__locked, *str__value, *str__waiters, *str__lock;
    PyObject *str__owner, *str_acquire;
    PyObject *str__wakeup_scheduled, *str_get_name, *str_name_attr;
    PyObject *str__bound_value;
    /* names.c: the acquire-site search */
    PyObject *stdlib_dirs; /* tuple of str: the standard library's dirs */
    PyObject *local_type;  /* _thread._local */
    PyObject *str_dunder_dict, *str_frozen, *str_packages_dir;
    PyObject *site_modules; /* id(code) -> (code, module name) */
    PyObject *places;       /* (label, module, owner) -> itself: shared */
    /* hooks.c: condition waits */
    PyObject *str_wait, *str__cond, *str__condition, *str__queue;
    PyObject *str__maxsize, *str_future_label;
} ddl_state;

/* ---- frames.c, names.c: the only code that reads frames --------------- */

/* frames.c: the first frame at or above f (borrowed) whose code is outside
 * threading.py and ddlock; NULL if none. */
ddl_walk_frame *ddl_user_frame(ddl_state *st, ddl_walk_frame *f);

typedef struct {
    ddl_frame *frames; /* leaf first */
    PyObject **refs;   /* references keeping strings alive
                          (DDL_REFS_PER_FRAME per frame) */
    size_t nframes;
    size_t nrefs;
    char omitted_buf[48];
} ddl_stack;

/* UTF-8 view of a str for the profile; see frames.c. refs needs room for
 * one more reference. */
int ddl_str_from_unicode(ddl_str *out, PyObject *s, PyObject **refs,
                         size_t *nrefs);
/* ddl_str_from_unicode with the common case (a compact ASCII str, whose
 * data is its UTF-8) inline. */
static inline void
ddl_str_of(ddl_str *out, PyObject *s, PyObject **refs, size_t *nrefs)
{
    Py_ssize_t len;
    const char *p;
    if (s != NULL && PyUnicode_Check(s) &&
        (p = ddl_unicode_ascii_view(s, &len)) != NULL) {
        *out = (ddl_str){p, (size_t)len, 0};
        return;
    }
    ddl_str_from_unicode(out, s, refs, nrefs);
}
/* References a stack capture may hold per frame (code + 2 escaped strings) */
#define DDL_REFS_PER_FRAME 3
/* Creation site of an object being created now by the running frame's
 * code: new ref to code + lasti; and the module check against the
 * exclusions. obj, when not NULL, is the object being initialised:
 * __init__ frames whose first argument it is are constructors, not the
 * site. Returns DDL_SITE_DIRECT when the object should be profiled and the
 * site is the call that made it, DDL_SITE_OUTER when the site is an outer
 * call (a constructor's caller), 0 when it must stay native, -1 on error. */
enum { DDL_SITE_DIRECT = 1, DDL_SITE_OUTER = 2 };
int ddl_creation_site(ddl_state *st, PyObject *obj, PyObject **code,
                      int *lasti);

static inline size_t
ddl_site_slot(PyCodeObject *co, PyObject *globals)
{
    uintptr_t h = ((uintptr_t)co >> 4) ^ ((uintptr_t)globals >> 6);
    h ^= h >> 11;
    return (size_t)(h & (DDL_SITE_CACHE_SIZE - 1));
}

/* ddl_creation_site's fast path, inline on the creation path of a lock:
 * the cached verdict of the calling frame (obj NULL), or -1 to ask
 * ddl_creation_site. */
static inline int
ddl_creation_site_cached(ddl_state *st, ddl_walk_frame *caller,
                         PyObject **code, int *lasti)
{
    if (caller == NULL || st->site_cache == NULL) {
        return -1;
    }
    PyCodeObject *co = ddl_walk_code(caller);
    PyObject *globals = ddl_walk_globals(caller);
    ddl_site_entry *e = &st->site_cache[ddl_site_slot(co, globals)];
    if (e->code != (PyObject *)co || e->globals != globals) {
        return -1;
    }
    if (e->verdict == DDL_SITE_CALLER) {
        *code = Py_NewRef(co);
        *lasti = ddl_walk_lasti(caller);
        return DDL_SITE_DIRECT;
    }
    if (e->verdict == DDL_SITE_NATIVE) {
        *code = NULL;
        *lasti = -1;
        return 0;
    }
    return -1;
}
/* Capture the current stack (leaf first, skipping leading threading.py
 * frames). Returns 0, or -1 with no exception set (sample skipped). */
int ddl_stack_capture(ddl_state *st, ddl_stack *stack, ddl_frame *frames,
                      PyObject **refs, size_t cap);
/* The same for another thread (ts: its state; NULL: the running one). */
int ddl_stack_capture_of(ddl_state *st, PyThreadState *ts, ddl_stack *stack,
                         ddl_frame *frames, PyObject **refs, size_t cap);
void ddl_stack_release(ddl_stack *stack);
/* Label for a profiled object ("file:line:name" or "file:line"), new ref;
 * resolves the variable name of target on first use. NULL (no exception)
 * when unknown. */
PyObject *ddl_lock_name(ddl_state *st, ddl_prof *p, PyObject *target);
/* The `lock module` and `lock owner` of a named lock (borrowed from it, NULL
 * when unknown). */
void ddl_lock_place(ddl_prof *p, PyObject **module, PyObject **owner);
/* The `lock module` and `lock owner` labels of p (record.c): written to
 * out (room for 2), their strings' references added to own (room for 4);
 * returns how many. */
size_t ddl_place_labels(ddl_prof *p, ddl_label *out, PyObject **own,
                        size_t *nown);
/* The name the object made by the call at (code, lasti) was bound to
 * there (new ref: "request_lock", "_lock", '_locks["db"]'), or NULL;
 * *local (when not NULL) is set to whether that is a local variable of
 * the creating function (not a global, an attribute or an item). */
PyObject *ddl_creation_binding(ddl_state *st, PyObject *code, int lasti,
                               int *local);
/* Fill st->ops from the opcode module's opmap and cache sizes. */
int ddl_opcodes_set(ddl_state *st, PyObject *opmap, PyObject *caches);
/* Site label "file:line" for a code/lasti pair, new ref or NULL. */
PyObject *ddl_site_label(PyObject *code, int lasti);
/* The raw stack from the top frame: code, filename and lasti of each
 * frame, borrowed. Returns how many (<= cap), or -1 when there are more. */
int ddl_stack_raw(ddl_raw_frame *out, int cap);
/* Empty the (code, lasti) -> line cache (drops its references). */
void ddl_line_cache_clear(ddl_state *st);
/* Empty the per-code-object cache (what counts as internal changed). */
void ddl_code_cache_clear(ddl_state *st);
/* Empty the creation-site decision cache (the exclusions changed). */
void ddl_site_cache_clear(ddl_state *st);

/* ---- tasks.c: who is running ------------------------------------------- */

/* Current thread's name from threading._active, new ref or NULL. */
PyObject *ddl_thread_name(ddl_state *st, unsigned long ident);
/* Drop the cached thread ident keys. */
void ddl_ident_cache_clear(ddl_state *st);
/* The running asyncio task or gevent greenlet, new ref, or NULL (no
 * exception) when there is none. asyncio only when asyncio_first... */
PyObject *ddl_current_task(ddl_state *st, int asyncio);
/* An asyncio task's name (asyncio's own get_name only), new ref or NULL
 * (no exception). */
PyObject *ddl_task_name(ddl_state *st, PyObject *task);
/* Who holds a semaphore: the task for asyncio ones, the greenlet under
 * gevent, else the thread. */
uintptr_t ddl_current_actor(ddl_state *st, int kind);
/* The labels after thread name: task id and task name when an asyncio
 * task or gevent greenlet runs. refs keeps their strings alive until
 * ddl_label_refs_release(). Never raises. */
#define DDL_TASK_LABELS 2
typedef struct {
    PyObject *refs[4];
    size_t n;
} ddl_label_refs;
size_t ddl_task_labels(ddl_state *st, ddl_label *out, ddl_label_refs *refs);
void ddl_label_refs_release(ddl_label_refs *refs);

/* ---- record.c: sampling and recording ---------------------------------- */

/* Thread-local sampling state. */
typedef struct {
    uint64_t generation; /* matches st->generation when valid */
    int64_t countdown;   /* unsampled events left before the next sample */
    uint64_t rng;        /* xorshift state */
    int busy;            /* the profiler is working on this thread */
    uint64_t native_id_generation; /* generation native_id was read in */
    unsigned long native_id;       /* cached: reading it is a syscall */
} ddl_tls_t;

extern _Thread_local ddl_tls_t ddl_tls
    __attribute__((tls_model("initial-exec")));

void ddl_tls_reset(ddl_state *st);
void ddl_reset_seed_sequence(void);
double ddl_rand_unit(void);

int ddl_sample_uncontended_slow(ddl_state *st);
/* Should this uncontended event be sampled? The common answer (no) costs a
 * thread-local compare and decrement. */
static inline int
ddl_sample_uncontended(ddl_state *st)
{
    if (ddl_tls.generation != st->generation) {
        ddl_tls_reset(st);
    }
    if (ddl_tls.countdown > 0) {
        ddl_tls.countdown--;
        return 0;
    }
    return ddl_sample_uncontended_slow(st);
}
/* Will the next uncontended event be sampled (without counting it)? */
static inline int
ddl_sample_next(ddl_state *st)
{
    return ddl_tls.generation == st->generation && ddl_tls.countdown == 0 &&
           st->running;
}
/* Probability of sampling a contended acquire that waited wait_ns. */
double ddl_contended_p(ddl_state *st, int64_t wait_ns);
/* Decide on an acquire that waited since t0 (the clock read now): 1 and
 * *wait_ns, *p when it is to be sampled. */
int ddl_sample_timed(ddl_state *st, int64_t t0, int64_t *now_ns,
                     int64_t *wait_ns, double *p);

/* Record one sampled event of an object profiled as p with the current
 * stack and labels; target (borrowed) is the object whose name labels it.
 * Never raises and never lets an exception escape (the caller's pending
 * exception, e.g. in __exit__, is preserved). Returns 0 when recorded. */
int ddl_record(ddl_state *st, ddl_prof *p, PyObject *target, int64_t wait_ns,
               int64_t hold_ns, int is_release, double weight);
/* ddl_record with labels after the usual ones (at most
 * DDL_EXTRA_LABELS; the caller keeps their strings alive). */
#define DDL_EXTRA_LABELS 4
int ddl_record_ex(ddl_state *st, ddl_prof *p, PyObject *target,
                  int64_t wait_ns, int64_t hold_ns, int is_release,
                  double weight, const ddl_label *extra, size_t nextra);
/* value * weight, rounded stochastically (unbiased). */
int64_t ddl_weighted(double value, double weight);
/* Record one sampled condition wait (condition-wait, condition-wait-time)
 * of an object profiled as p, labelled `lock type` type (NULL: p's kind)
 * and `wait outcome` outcome (a static string). As ddl_record. */
int ddl_record_wait(ddl_state *st, ddl_prof *p, PyObject *target,
                    const char *type, const char *outcome, int64_t wait_ns,
                    double weight);
/* Empty the record memo (drops its references); may run Python code. */
void ddl_memo_clear(ddl_state *st);

/* ---- lock.c: native locks profiled in place ---------------------------- */

/* Install (running) / remove (not) the hooks of _thread.lock and
 * _thread.RLock for the kinds asked. Returns -1 with an exception set. */
int ddl_locks_hook(ddl_state *st, int lock, int rlock);
void ddl_locks_unhook(ddl_state *st);
/* The profile of a native lock (NULL: not profiled), borrowed: valid while
 * obj lives; *target (when not NULL) gets the object whose name labels it
 * (borrowed: obj, or its Condition while that lives). */
ddl_prof *ddl_lock_prof(ddl_state *st, PyObject *obj, PyObject **target);
/* Is obj a _thread.lock or _thread.RLock (exactly, or a subclass)? */
int ddl_is_native_lock(ddl_state *st, PyObject *obj);
/* Profile native lock obj as kind, labelled by target's name (borrowed, a
 * weak reference is kept; NULL: obj's own), created at (code, lasti).
 * Returns 0, or -1 with an exception set. */
int ddl_lock_register(ddl_state *st, PyObject *obj, int kind, PyObject *target,
                      PyObject *code, int lasti, int direct);
int ddl_locks_init(PyObject *module, ddl_state *st);
/* The native types to profile (NULL: unchanged): _thread's, as they were
 * before anything (gevent) replaced them in the _thread module. Refused
 * (-1, exception set) while the hooks are installed. */
int ddl_locks_set_types(ddl_state *st, PyObject *lock_type,
                        PyObject *rlock_type);
void ddl_locks_clear(ddl_state *st);
void ddl_locks_fork_child(ddl_state *st);

/* ---- tracker.c, hooks.c: the Python-level primitives ------------------- */

int ddl_trackers_init(PyObject *module, ddl_state *st);
int ddl_hooks_init(PyObject *module, ddl_state *st);
void ddl_trackers_clear(ddl_state *st);

#endif /* DDLOCK_DDLOCK_H */
