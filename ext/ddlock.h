/* Internal declarations shared by module.c, lock.c and frames.c (the parts
 * of ddlock that include Python.h). */
#ifndef DDLOCK_DDLOCK_H
#define DDLOCK_DDLOCK_H

#include "pycompat.h"

#include <stdint.h>

#include "exporter.h"
#include "pprof.h"
#include "profile.h"

#define DDL_VERSION "0.1.0"
#define DDL_MAX_EXCLUDES 32
#define DDL_NAME_CACHE_MAX 16384

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

/* The record memo (lock.c): for the last keys recorded, the raw stack and
 * the labels they were made from, and the ticket of the profile sample
 * they went to. An event whose raw stack and labels are the same as an
 * entry's goes to that sample without capturing and resolving its stack
 * again. Entries hold references to everything whose identity they
 * compare (codes, filenames, the label strings' owners): the same
 * pointers then mean the same bytes. */
#define DDL_MEMO_SIZE 128  /* entries, power of two */
#define DDL_MEMO_FRAMES 48 /* deeper raw stacks are not memoized */
#define DDL_MEMO_LABELS 8
#define DDL_MEMO_OWNERS 8
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

/* A thread ident as the int threading._active is keyed by (frames.c). */
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

/* Per-module state (one per interpreter that imports ddlock._ddlock). */
typedef struct {
    PyTypeObject *lock_type;
    PyTypeObject *rlock_type;
    PyTypeObject *factory_type;

    PyObject *native_lock_factory;  /* _thread.allocate_lock */
    PyObject *native_rlock_factory; /* _thread.RLock */
    PyObject *threading_active;     /* threading._active (thread registry) */
    PyObject *threading_file;       /* co_filename of threading.py */
    PyObject *ddlock_dir; /* directory prefix of the ddlock package */
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
    uint64_t seed; /* 0 = random */

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
    uint64_t events_sampled;
    uint64_t events_reentrant_skipped;
    uint64_t names_resolved;
    uint64_t names_cache_hits;
    uint64_t names_missed;

    /* primitives.c: Semaphore, Condition, asyncio locks, gevent */
    PyTypeObject *tracker_type;
    PyTypeObject *hook_type;
    PyTypeObject *countdown_type;
    PyObject *prim_countdown;   /* the Python-level primitives' countdown */
    PyObject *prim_holds;       /* list: one item per published sampled hold */
    PyObject *acquire_wrapper;  /* ddlock._primitives._acquire_wrapper */
    PyObject *native_lock_type; /* _thread.lock */
    PyObject *native_rlock_type;  /* _thread.RLock */
    PyObject *asyncio_locks_file; /* co_filename of asyncio/locks.py */
    PyObject *get_running_loop;   /* asyncio.events._get_running_loop */
    PyObject *current_task;       /* asyncio.current_task */
    PyObject *current_tasks;      /* asyncio.tasks._current_tasks (dict) */
    PyObject *task_get_name[2];   /* get_name of asyncio's own Task types */
    PyObject *gevent_getcurrent;  /* gevent.getcurrent once gevent patched */
    PyObject *str__locked, *str__value, *str__waiters;
    PyObject *str__wakeup_scheduled, *str_get_name, *str_name_attr;
    PyObject *str__bound_value, *str__ddl_tracker, *str__ddl_hold, *str__lock;
    PyObject *str_attach[6]; /* a Condition's lock methods, see _attach */
    PyTypeObject *asyncio_lock_cls; /* asyncio.locks.Lock */
    uint64_t primitives_created;
} ddl_state;

/* Common header of the Lock and RLock wrappers. */
typedef struct {
    PyObject_HEAD PyThread_type_lock lock;
    char locked;    /* Lock: held; RLock: unused (count says) */
    char sampled;   /* the current hold comes from a sampled acquire */
    char name_done; /* name resolved (name may still be NULL) */
    char is_rlock;
    int site_lasti;      /* byte offset in site_code, -1 unknown */
    PyObject *site_code; /* creating code object, NULL when unknown */
    PyObject *name;      /* "file:line:name" label once resolved */
    int64_t acquired_ns; /* monotonic time of the sampled acquire */
    double weight;       /* 1/p of the sampled acquire */
    PyObject *weakreflist;
} ddl_lockbase;

typedef struct {
    ddl_lockbase base;
    unsigned long owner; /* thread ident, 0 when free */
    unsigned long count;
    PyObject *cond_ref; /* weak reference to the threading.Condition this
                           is the lock of (its samples are the Condition's),
                           NULL for a plain RLock */
} ddl_rlock;

/* lock.c */
int ddl_lock_types_init(PyObject *module, ddl_state *st);
int ddl_lock_record(ddl_state *st, ddl_lockbase *lk, int64_t wait_ns,
                    int64_t hold_ns, int is_release, double weight);
/* A profiled RLock that is cond's lock (threading.Condition()), created at
 * the creation site (site_code: borrowed, may be NULL; site_lasti), its
 * samples labelled as the Condition's. */
PyObject *ddl_condition_rlock(ddl_state *st, PyObject *site_code,
                              int site_lasti, PyObject *cond);
/* `with` on a ddlock RLock, from C: __enter__() and __exit__(...). */
PyObject *ddl_rlock_enter(PyObject *rlock);
PyObject *ddl_rlock_exit(PyObject *rlock);
/* Should this uncontended event be sampled (the per-thread countdown)? */
int ddl_sample_uncontended(ddl_state *st);
/* Probability of sampling a contended acquire that waited wait_ns. */
double ddl_contended_p(ddl_state *st, int64_t wait_ns);

/* primitives.c: a Tracker is a ddl_lockbase with lock == NULL that profiles
 * a Python-level primitive (its owner) */
int ddl_primitives_init(PyObject *module, ddl_state *st);
int ddl_primitives_traverse(ddl_state *st, visitproc visit, void *arg);
void ddl_primitives_clear(ddl_state *st);
/* The object whose name labels lk's samples (borrowed): lk, a Tracker's
 * owner, or the Condition an RLock is the lock of. */
PyObject *ddl_name_target(ddl_lockbase *lk);
/* Labels after thread name: lock type, then task id and task name when an
 * asyncio task or gevent greenlet runs. refs keeps their strings alive
 * until ddl_label_refs_release(). Never raises. */
#define DDL_EXTRA_LABELS 3
typedef struct {
    PyObject *refs[4];
    size_t n;
} ddl_label_refs;
size_t ddl_sample_extra_labels(ddl_state *st, ddl_lockbase *lk, ddl_label *out,
                               ddl_label_refs *refs);
void ddl_label_refs_release(ddl_label_refs *refs);

/* frames.c: the only code that reads frames */
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
/* Creation site of a lock being created now: new ref to code + lasti; and
 * the top-level module name check against the exclusions. Returns 1 when
 * the lock should be profiled, 0 when it must stay native, -1 on error. */
int ddl_creation_site(ddl_state *st, PyObject **code, int *lasti);
/* The same for a primitive ddlock's Python layer creates for its caller:
 * frames of the ddlock package are skipped before the exclusion check. */
int ddl_creation_site_outside_ddlock(ddl_state *st, PyObject **code,
                                     int *lasti);
/* Capture the current stack (leaf first, skipping leading threading.py
 * frames). Returns 0, or -1 with no exception set (sample skipped). */
int ddl_stack_capture(ddl_state *st, ddl_stack *stack, ddl_frame *frames,
                      PyObject **refs, size_t cap);
void ddl_stack_release(ddl_stack *stack);
/* Label for the lock ("file:line:name" or "file:line"), new ref; resolves
 * the variable name on first use. NULL (no exception) when unknown. */
PyObject *ddl_lock_name(ddl_state *st, ddl_lockbase *lk);
/* Site label "file:line" for a code/lasti pair, new ref or NULL. */
PyObject *ddl_site_label(PyObject *code, int lasti);
/* The raw stack from the top frame: code, filename and lasti of each
 * frame, borrowed. Returns how many (<= cap), or -1 when there are more. */
int ddl_stack_raw(ddl_raw_frame *out, int cap);
/* Empty the record memo (drops its references); may run Python code. */
void ddl_memo_clear(ddl_state *st);
/* Empty the (code, lasti) -> line cache (drops its references). */
void ddl_line_cache_clear(ddl_state *st);
/* Empty the per-code-object cache (what counts as internal changed). */
void ddl_code_cache_clear(ddl_state *st);
/* Empty the creation-site decision cache (the exclusions changed). */
void ddl_site_cache_clear(ddl_state *st);
/* Drop the cached thread ident keys. */
void ddl_ident_cache_clear(ddl_state *st);
/* Current thread's name from threading._active, new ref or NULL. */
PyObject *ddl_thread_name(ddl_state *st, unsigned long ident);

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

#endif /* DDLOCK_DDLOCK_H */
