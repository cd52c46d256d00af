/* Sampling decisions and the record path: whether an event is sampled (a
 * per-thread geometric countdown for uncontended events, a probability
 * growing with the wait for contended ones), and turning a sampled event of
 * a profiled object into a profile sample (its stack and labels, through
 * the record memo). The callers are lock.c (native locks) and tracker.c /
 * hooks.c (the Python-level primitives).
 */
#include "ddlock.h"

#include <float.h>
#include <math.h>
#include <string.h>

_Thread_local ddl_tls_t ddl_tls
    __attribute__((tls_model("initial-exec"))) = {0, 0, 0, 0};

#define UNSET_TIMEOUT_NS ((int64_t)-1000000000) /* timeout=-1 seconds */

/* ---- sampling ----------------------------------------------------------- */

static inline uint64_t
mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Uniform in (0, 1]. */
double
ddl_rand_unit(void)
{
    uint64_t x = ddl_tls.rng;
    if (x == 0) {
        x = mix64((uint64_t)ddl_monotonic_ns() ^
                  (uint64_t)PyThread_get_thread_ident());
        if (x == 0) {
            x = 0x9e3779b97f4a7c15ULL;
        }
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    ddl_tls.rng = x;
    return ((double)(x >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* Events to skip before the next sampled one: geometric with parameter p,
 * which makes every event independently sampled with probability p. */
static int64_t
draw_countdown(double p)
{
    if (p >= 1.0) {
        return 0;
    }
    if (p <= 0.0) {
        return INT64_MAX;
    }
    double k = floor(log(ddl_rand_unit()) / log1p(-p));
    if (!(k < 9.0e18)) {
        return INT64_MAX;
    }
    return (int64_t)k;
}

static uint64_t tls_seed_sequence = 0; /* guarded by the GIL */

void
ddl_tls_reset(ddl_state *st)
{
    if (st->seed != 0) {
        /* reproducible: each thread's stream derives from the seed and the
         * order in which threads first sample in this generation */
        ddl_tls.rng =
            mix64(st->seed + 0x9e3779b97f4a7c15ULL * (++tls_seed_sequence));
        if (ddl_tls.rng == 0) {
            ddl_tls.rng = 1;
        }
    }
    ddl_tls.generation = st->generation;
    ddl_tls.countdown =
        st->running ? draw_countdown(st->capture_p) : INT64_MAX;
}

void
ddl_reset_seed_sequence(void)
{
    tls_seed_sequence = 0;
}

/* The slow half of ddl_sample_uncontended (ddlock.h): the countdown ran
 * out. */
int
ddl_sample_uncontended_slow(ddl_state *st)
{
    if (!st->running) {
        ddl_tls.countdown = INT64_MAX;
        return 0;
    }
    ddl_tls.countdown = draw_countdown(st->capture_p);
    return 1;
}

double
ddl_contended_p(ddl_state *st, int64_t wait_ns)
{
    double p = st->capture_p;
    if (st->wait_rate_ns > 0) {
        double q = (double)wait_ns / (double)st->wait_rate_ns;
        if (q > 1.0) {
            q = 1.0;
        }
        if (q > p) {
            p = q;
        }
    }
    return p;
}

int
ddl_sample_timed(ddl_state *st, int64_t t0, int64_t *now_ns, int64_t *wait_ns,
                 double *p)
{
    if (!st->running) {
        return 0;
    }
    int64_t now = ddl_monotonic_ns();
    int64_t wait = now - t0;
    if (wait < 0) {
        wait = 0;
    }
    double q = ddl_contended_p(st, wait);
    if (!(q > 0) || (q < 1.0 && ddl_rand_unit() > q)) {
        return 0;
    }
    *now_ns = now;
    *wait_ns = wait;
    *p = q;
    return 1;
}

/* ---- turning an event into a sample ----------------------------------- */

/* Stochastic rounding keeps weighted counts unbiased. */
int64_t
ddl_weighted(double value, double weight)
{
    double x = value * weight;
    double fl = floor(x);
    if (x - fl > 0 && ddl_rand_unit() <= x - fl) {
        fl += 1;
    }
    return (int64_t)fl;
}

/* The OS thread id, read once per thread and generation (a fork bumps the
 * generation, so the child's forking thread reads its new id). */
static unsigned long
cached_native_id(ddl_state *st)
{
    if (ddl_tls.native_id_generation != st->generation ||
        ddl_tls.native_id == 0) {
        ddl_tls.native_id = PyThread_get_thread_native_id();
        ddl_tls.native_id_generation = st->generation;
    }
    return ddl_tls.native_id;
}

#define STACK_ON_C_STACK 65

/* ---- the record memo (ddlock.h) ------------------------------------------
 * Most sampled events of a program repeat a few keys: the same lock taken
 * at the same line of the same stack by the same thread. Capturing the
 * stack (a code and line cache lookup per frame) and resolving the key in
 * the profile (a cache probe per frame and label, a sample lookup) is then
 * work done again for the same answer, and on a rarely sampled path most
 * of its cost is cold caches. An entry remembers the raw stack and the
 * labels of a key it recorded, and the profile's ticket for its sample: an
 * event with the same raw stack (code, filename and instruction of every
 * frame: what the captured frames are computed from, with the state's
 * configuration, fixed within a generation) and the same labels (strings
 * compared by pointer: the entry owns what they point into) adds its
 * values by ticket. Any difference, a stale ticket (the profile was
 * exported) or a stack deeper than DDL_MEMO_FRAMES takes the full path. */

static uint64_t
memo_mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * 0x9e3779b97f4a7c15ULL;
    return h ^ (h >> 29);
}

/* The slot of a key: from its leaf-most parts only (memo_match compares
 * the whole key). */
static uint64_t
memo_hash(const ddl_raw_frame *raw, int nraw, const ddl_label *labels,
          size_t nl, int is_release)
{
    uint64_t h = memo_mix(0x243f6a8885a308d3ULL,
                          (uint64_t)is_release << 32 | (uint32_t)nraw);
    if (nraw > 0) {
        h = memo_mix(h, (uint64_t)(uintptr_t)raw[0].code ^
                            (uint64_t)(uint32_t)raw[0].lasti << 40);
    }
    if (nl > 1) {
        h = memo_mix(h, (uint64_t)(uintptr_t)labels[0].str.ptr ^
                            (uint64_t)labels[1].num << 20);
    }
    return h;
}

static int
memo_match(ddl_state *st, const ddl_memo_entry *e, uint64_t h,
           const ddl_raw_frame *raw, int nraw, const ddl_label *labels,
           size_t nl, int is_release)
{
    if (e->hash != h || e->nframes != nraw || e->nlabels != (int)nl ||
        e->is_release != is_release || e->generation != st->generation) {
        return 0;
    }
    for (int i = 0; i < nraw; i++) {
        if (e->frames[i].code != raw[i].code ||
            e->frames[i].lasti != raw[i].lasti ||
            e->frames[i].filename != raw[i].filename) {
            return 0;
        }
    }
    for (size_t i = 0; i < nl; i++) {
        const ddl_label *a = &e->labels[i], *b = &labels[i];
        if (a->key.ptr != b->key.ptr || a->key.len != b->key.len ||
            a->str.ptr != b->str.ptr || a->str.len != b->str.len ||
            a->num != b->num) {
            return 0;
        }
    }
    return 1;
}

/* Empty entry e into refs (room for its references); returns how many. */
static size_t
memo_take(ddl_memo_entry *e, PyObject **refs)
{
    size_t n = 0;
    for (int i = 0; i < e->nframes; i++) {
        refs[n++] = e->frames[i].code;
        refs[n++] = e->frames[i].filename;
    }
    for (int i = 0; i < e->nowners; i++) {
        refs[n++] = e->owners[i];
    }
    e->nframes = -1;
    e->nowners = 0;
    e->hash = 0;
    return n;
}

#define MEMO_REFS (2 * DDL_MEMO_FRAMES + DDL_MEMO_OWNERS)
/* a record's labels always fit an entry (ddl_lock_record checks the owners
 * and the stack depth; its ticket is never 0 once added) */
_Static_assert(8 + DDL_TASK_LABELS <= DDL_MEMO_LABELS, "memo labels");

/* Fill e (the references it takes are new ones; the entry's old ones are
 * dropped last, since that may run Python code). */
static void
memo_fill(ddl_state *st, ddl_memo_entry *e, uint64_t h,
          const ddl_raw_frame *raw, int nraw, const ddl_label *labels,
          size_t nl, int is_release, PyObject *const *owners, size_t nowners,
          uint64_t ticket)
{
    PyObject *old[MEMO_REFS];
    size_t nold = memo_take(e, old);
    for (int i = 0; i < nraw; i++) {
        e->frames[i].code = Py_NewRef(raw[i].code);
        e->frames[i].filename = Py_NewRef(raw[i].filename);
        e->frames[i].lasti = raw[i].lasti;
    }
    for (size_t i = 0; i < nowners; i++) {
        e->owners[i] = Py_NewRef(owners[i]);
    }
    memcpy(e->labels, labels, nl * sizeof(ddl_label));
    e->nowners = (int)nowners;
    e->nlabels = (int)nl;
    e->is_release = is_release;
    e->generation = st->generation;
    e->ticket = ticket;
    e->hash = h;
    e->nframes = nraw;
    for (size_t i = 0; i < nold; i++) {
        Py_DECREF(old[i]);
    }
}

static ddl_memo_entry *
memo_table(ddl_state *st)
{
    if (st->memo == NULL) {
        st->memo = PyMem_Calloc(DDL_MEMO_SIZE, sizeof(ddl_memo_entry));
        if (st->memo == NULL) {
            PyErr_Clear();
            return NULL;
        }
        for (size_t i = 0; i < DDL_MEMO_SIZE; i++) {
            st->memo[i].nframes = -1;
        }
    }
    return st->memo;
}

void
ddl_memo_clear(ddl_state *st)
{
    PyObject *refs[MEMO_REFS];
    if (st->memo == NULL) {
        return;
    }
    for (size_t i = 0; i < DDL_MEMO_SIZE; i++) {
        /* each entry is empty before its references go (they may run
         * code that records, even here) */
        size_t n = memo_take(&st->memo[i], refs);
        for (size_t j = 0; j < n; j++) {
            Py_DECREF(refs[j]);
        }
    }
}

/* Record one sampled event with the current stack and the lock's labels.
 * Never raises and never lets an exception escape (the caller's pending
 * exception, e.g. in __exit__, is preserved). Returns 0 when recorded. */

size_t
ddl_place_labels(ddl_prof *p, ddl_label *out, PyObject **own, size_t *nown)
{
    size_t n = 0;
    PyObject *place[2];
    ddl_lock_place(p, &place[0], &place[1]);
    for (int i = 0; i < 2; i++) { /* lock module, lock owner (names.c) */
        if (place[i] != NULL) {
            ddl_str s;
            own[(*nown)++] = Py_NewRef(place[i]);
            ddl_str_of(&s, place[i], own, nown);
            out[n++] = (ddl_label){i == 0 ? (ddl_str){"lock module", 11, 0}
                                          : (ddl_str){"lock owner", 10, 0},
                                   s, 0};
        }
    }
    return n;
}

/* Record one sampled event with the current stack and the lock's labels
 * (type: the `lock type` label, NULL: p's kind; extra: nextra more labels,
 * whose strings the caller keeps alive: static ones when extra_static, the
 * only kind the memo may keep) and values. is_release tells the memo
 * apart: 0 acquire, 1 release, 2 condition wait. Never raises and never
 * lets an exception escape. Returns 0 when recorded. */
static int
record_event(ddl_state *st, ddl_prof *p, PyObject *target, const char *type,
             const ddl_label *extra, size_t nextra, int extra_static,
             const int64_t values[DDL_NVALUES], int is_release)
{
    if (!st->running || st->profile == NULL) {
        return -1;
    }
    if (ddl_tls.busy) {
        /* acquired by something the profiler itself triggered (a __del__
         * run by an allocation, a finalizer): straight through, unrecorded */
        st->events_reentrant_skipped++;
        return -1;
    }
    ddl_tls.busy = 1;
    int gc_was_enabled = ddl_gc_pause();
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);

    int rc = -1;
    PyObject *name = ddl_lock_name(st, p, target);
    unsigned long ident = PyThread_get_thread_ident();
    PyObject *tname = ddl_thread_name(st, ident);

    /* the labels, and the objects their strings point into: own (name,
     * tname and escaped bytes made for them: references of this function)
     * and extra_refs */
    ddl_label labels[7 + DDL_TASK_LABELS + DDL_EXTRA_LABELS];
    ddl_label_refs extra_refs;
    PyObject *own[8];
    size_t nown = 0;
    size_t nl = 0;
    ddl_str name_s = {"<unknown>", 9};
    if (name != NULL) {
        own[nown++] = name;
        ddl_str_of(&name_s, name, own, &nown);
    }
    labels[nl++] = (ddl_label){{"lock name", 9}, name_s, 0};
    labels[nl++] = (ddl_label){{"thread id", 9}, {NULL, 0}, (int64_t)ident};
    labels[nl++] = (ddl_label){
        {"thread native id", 16}, {NULL, 0}, (int64_t)cached_native_id(st)};
    if (tname != NULL) {
        ddl_str tname_s;
        own[nown++] = tname;
        ddl_str_of(&tname_s, tname, own, &nown);
        labels[nl++] = (ddl_label){{"thread name", 11}, tname_s, 0};
    }
    if (type == NULL) {
        type = ddl_kind_names[p->kind];
    }
    labels[nl++] = (ddl_label){{"lock type", 9}, {type, strlen(type)}, 0};
    nl += ddl_place_labels(p, &labels[nl], own, &nown);
    nl += ddl_task_labels(st, &labels[nl], &extra_refs);
    for (size_t i = 0; i < nextra && i < DDL_EXTRA_LABELS; i++) {
        labels[nl++] = extra[i]; /* the caller keeps their strings */
    }

    ddl_raw_frame raw[DDL_MEMO_FRAMES];
    int nraw = -1;
    uint64_t h = 0;
    ddl_memo_entry *entry = NULL;
    /* the memo keeps the strings (and escaped bytes) the labels point
     * into, nothing else: not the task object (its id is a number) */
    PyObject *owners[DDL_MEMO_OWNERS];
    size_t nowners = 0;
    /* extra labels' strings: not owned, unless static */
    int memo_ok = nextra == 0 || extra_static;
    for (size_t i = 0; i < nown + extra_refs.n && memo_ok; i++) {
        PyObject *o = i < nown ? own[i] : extra_refs.refs[i - nown];
        if (PyUnicode_CheckExact(o) || PyBytes_CheckExact(o)) {
            memo_ok = nowners < DDL_MEMO_OWNERS;
            if (memo_ok) {
                owners[nowners++] = o;
            }
        }
        else if (i < nown || PyUnicode_Check(o) || PyBytes_Check(o)) {
            memo_ok = 0; /* a subclass: its instance may own anything */
        }
    }
    if (memo_ok && memo_table(st) != NULL) {
        nraw = ddl_stack_raw(raw, DDL_MEMO_FRAMES);
    }
    if (nraw >= 0) {
        h = memo_hash(raw, nraw, labels, nl, is_release);
        entry = &st->memo[h & (DDL_MEMO_SIZE - 1)];
        if (memo_match(st, entry, h, raw, nraw, labels, nl, is_release) &&
            ddl_profile_add_ticket(st->profile, entry->ticket, values) == 0) {
            st->events_sampled++;
            rc = 0;
            goto labels_done;
        }
    }

    ddl_frame frames_local[STACK_ON_C_STACK];
    PyObject *refs_local[STACK_ON_C_STACK * DDL_REFS_PER_FRAME + 4];
    ddl_frame *frames = frames_local;
    PyObject **refs = refs_local;
    size_t cap = (size_t)st->max_frames + 1;
    if (cap > STACK_ON_C_STACK) {
        frames = PyMem_Malloc(cap * sizeof(ddl_frame));
        refs =
            PyMem_Malloc((cap * DDL_REFS_PER_FRAME + 4) * sizeof(PyObject *));
        if (frames == NULL || refs == NULL) {
            goto frames_done;
        }
    }
    else {
        cap = STACK_ON_C_STACK;
    }
    ddl_stack stack;
    ddl_stack_capture(st, &stack, frames, refs, cap);
    uint64_t ticket = 0;
    /* (the capture may have run a weakref callback, even one that stopped
     * the profiler) */
    if (st->profile != NULL &&
        ddl_profile_add_ex(st->profile, stack.frames, stack.nframes, labels,
                           nl, values, &ticket) == 0) {
        st->events_sampled++;
        rc = 0;
        if (entry != NULL) {
            memo_fill(st, entry, h, raw, nraw, labels, nl, is_release, owners,
                      nowners, ticket);
        }
    }
    ddl_stack_release(&stack);
frames_done:
    if (frames != frames_local) {
        PyMem_Free(frames);
        PyMem_Free(refs);
    }
labels_done:
    for (size_t i = 0; i < nown; i++) {
        Py_DECREF(own[i]);
    }
    ddl_label_refs_release(&extra_refs);
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    ddl_gc_resume(gc_was_enabled);
    ddl_tls.busy = 0;
    return rc;
}

int
ddl_record_ex(ddl_state *st, ddl_prof *p, PyObject *target, int64_t wait_ns,
              int64_t hold_ns, int is_release, double weight,
              const ddl_label *extra, size_t nextra)
{
    int64_t values[DDL_NVALUES] = {0};
    if (is_release) {
        values[DDL_V_RELEASE] = ddl_weighted(1.0, weight);
        values[DDL_V_HOLD] = ddl_weighted((double)hold_ns, weight);
    }
    else {
        values[DDL_V_ACQUIRE] = ddl_weighted(1.0, weight);
        values[DDL_V_WAIT] = ddl_weighted((double)wait_ns, weight);
    }
    return record_event(st, p, target, NULL, extra, nextra, 0, values,
                        is_release);
}

/* Record one sampled event with the current stack and the lock's labels.
 * Never raises and never lets an exception escape (the caller's pending
 * exception, e.g. in __exit__, is preserved). Returns 0 when recorded. */
int
ddl_record(ddl_state *st, ddl_prof *p, PyObject *target, int64_t wait_ns,
           int64_t hold_ns, int is_release, double weight)
{
    return ddl_record_ex(st, p, target, wait_ns, hold_ns, is_release, weight,
                         NULL, 0);
}

int
ddl_record_wait(ddl_state *st, ddl_prof *p, PyObject *target, const char *type,
                const char *outcome, int64_t wait_ns, double weight)
{
    int64_t values[DDL_NVALUES] = {0};
    values[DDL_V_COND_WAIT] = ddl_weighted(1.0, weight);
    values[DDL_V_COND_TIME] = ddl_weighted((double)wait_ns, weight);
    ddl_label label = {{"wait outcome", 12}, {outcome, strlen(outcome)}, 0};
    return record_event(st, p, target, type, &label, 1, 1, values, 2);
}

const char *const ddl_kind_names[DDL_K_COUNT] = {
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "asyncio.Lock",
    "asyncio.Semaphore",
    "asyncio.BoundedSemaphore",
    "asyncio.Condition",
};

void
ddl_prof_clear(ddl_prof *p)
{
    PyObject *code = p->site_code, *name = p->name;
    p->site_code = p->name = NULL;
    p->name_done = 0;
    p->has_target = 0;
    Py_XDECREF(code);
    Py_XDECREF(name);
}
