/* Stacks: the frames of a sampled event (leaf first, qualified names,
 * lines), through a per-code-object cache and a (code, offset) -> line
 * cache, and which frames are ddlock's or threading's own (internal). With
 * names.c, the only code in ddlock that reads Python frames (through
 * pycompat.h's walk).
 */
#include "ddlock.h"

#include <string.h>

/* ---- internal frames ------------------------------------------------------
 */

static int
is_internal_code(ddl_state *st, PyCodeObject *co)
{
    PyObject *fn = co->co_filename;
    if (fn == NULL || !PyUnicode_Check(fn)) {
        return 0;
    }
    if (st->threading_file != NULL &&
        (fn == st->threading_file ||
         PyUnicode_Compare(fn, st->threading_file) == 0)) {
        return 1;
    }
    if (st->ddlock_dir != NULL &&
        PyUnicode_Tailmatch(fn, st->ddlock_dir, 0, PY_SSIZE_T_MAX, -1) == 1) {
        return 1;
    }
    /* asyncio's lock code (async with's __aenter__, Condition.wait) */
    if (st->asyncio_locks_file != NULL &&
        (fn == st->asyncio_locks_file ||
         PyUnicode_Compare(fn, st->asyncio_locks_file) == 0)) {
        return 1;
    }
    return 0;
}

static inline int code_lookup(ddl_state *st, PyCodeObject *co, ddl_frame *fr,
                              PyObject **refs, size_t *nrefs);

/* The first frame at or above start (borrowed, as the walk's frames are)
 * whose code is outside threading.py and ddlock; NULL if none. */
ddl_walk_frame *
ddl_user_frame(ddl_state *st, ddl_walk_frame *f)
{
    while (f != NULL && code_lookup(st, ddl_walk_code(f), NULL, NULL, NULL)) {
        f = ddl_walk_back(f);
    }
    return f;
}

static PyObject *
basename_of(PyObject *filename)
{
    Py_ssize_t len = PyUnicode_GetLength(filename);
    Py_ssize_t slash = PyUnicode_FindChar(filename, '/', 0, len, -1);
    if (slash == -2) {
        return NULL;
    }
    if (slash < 0) {
        return Py_NewRef(filename);
    }
    return PyUnicode_Substring(filename, slash + 1, len);
}

PyObject *
ddl_site_label(PyObject *code, int lasti)
{
    if (code == NULL || !PyCode_Check(code)) {
        return PyUnicode_FromString("<unknown>");
    }
    PyCodeObject *co = (PyCodeObject *)code;
    int line = lasti >= 0 ? PyCode_Addr2Line(co, lasti) : co->co_firstlineno;
    PyObject *base = basename_of(co->co_filename);
    if (base == NULL) {
        return NULL;
    }
    PyObject *label = PyUnicode_FromFormat("%U:%d", base, line);
    Py_DECREF(base);
    return label;
}

/* ---- stack capture --------------------------------------------------------
 */

/* Point out at s's UTF-8 (its data for a compact ASCII str, else the UTF-8
 * cached in the str object); out->hash is left 0. A str that has no UTF-8
 * form (lone surrogates) is encoded with backslash escapes into a new bytes
 * object returned in *escaped (NULL otherwise), which must outlive the view.
 */
static void
str_view(ddl_str *out, PyObject *s, PyObject **escaped)
{
    Py_ssize_t len = 0;
    const char *p = NULL;
    *escaped = NULL;
    if (s != NULL && PyUnicode_Check(s)) {
        p = ddl_unicode_ascii_view(s, &len);
        if (p == NULL) {
            p = PyUnicode_AsUTF8AndSize(s, &len);
        }
        if (p == NULL) {
            PyErr_Clear();
            PyObject *b =
                PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace");
            if (b != NULL) {
                *escaped = b;
                p = PyBytes_AS_STRING(b);
                len = PyBytes_GET_SIZE(b);
            }
            else {
                PyErr_Clear();
            }
        }
    }
    if (p == NULL) {
        p = "<?>";
        len = 3;
    }
    *out = (ddl_str){p, (size_t)len, 0};
}

/* str_view, with the escaped bytes (if any) appended to refs[*nrefs] (kept
 * alive by the caller). */
int
ddl_str_from_unicode(ddl_str *out, PyObject *s, PyObject **refs, size_t *nrefs)
{
    PyObject *escaped;
    str_view(out, s, &escaped);
    if (escaped != NULL) {
        refs[(*nrefs)++] = escaped;
    }
    return 0;
}

/* Per-code-object cache: whether a code object is internal and the views
 * of its function name and filename with their profile hashes, so a frame
 * of a sampled stack costs a lookup instead of file name matching, two
 * UTF-8 conversions and the profile hashing the bytes. Two-way set
 * associative (the set's first entry is its most recently used: two hot
 * code objects whose sets collide do not evict each other on every sample),
 * keyed by the code's identity; bounded (DDL_CODE_CACHE_SIZE entries). Entries
 * hold references to the code and to the two str objects the views were
 * made from (and to the escaped bytes behind a view, if any), and a hit
 * also checks the code still names those str objects: a view never
 * outlives, or stands for something other than, what it points into. */
static size_t
code_slot(PyCodeObject *co)
{
    uintptr_t h = (uintptr_t)co >> 4;
    h ^= h >> 10;
    return (size_t)(h & (DDL_CODE_CACHE_SIZE - 2));
}

static void
code_entry_clear(ddl_code_entry *e)
{
    PyObject *code = e->code, *name = e->name, *file = e->filename;
    PyObject *esc0 = e->escaped[0], *esc1 = e->escaped[1];
    memset(e, 0, sizeof(*e));
    Py_XDECREF(code);
    Py_XDECREF(name);
    Py_XDECREF(file);
    Py_XDECREF(esc0);
    Py_XDECREF(esc1);
}

void
ddl_code_cache_clear(ddl_state *st)
{
    if (st->code_cache == NULL) {
        return;
    }
    for (size_t i = 0; i < DDL_CODE_CACHE_SIZE; i++) {
        code_entry_clear(&st->code_cache[i]);
    }
}

static inline void
code_entry_views(const ddl_code_entry *e, ddl_frame *fr, PyObject **refs,
                 size_t *nrefs)
{
    fr->name = e->name_s;
    fr->filename = e->filename_s;
    fr->key = e->serial;
    if (e->escaped[0] != NULL) {
        refs[(*nrefs)++] = Py_NewRef(e->escaped[0]);
    }
    if (e->escaped[1] != NULL) {
        refs[(*nrefs)++] = Py_NewRef(e->escaped[1]);
    }
}

/* Fill set[0] for co (a miss): the entry there moves to set[1], whose
 * entry goes; the views go to fr when not NULL. */
static int
code_fill(ddl_state *st, ddl_code_entry *set, PyCodeObject *co, ddl_frame *fr,
          PyObject **refs, size_t *nrefs)
{
    PyObject *name = ddl_code_name(co), *file = co->co_filename;
    ddl_code_entry fresh = {0};
    fresh.code = Py_NewRef(co);
    fresh.name = Py_NewRef(name);
    fresh.filename = Py_NewRef(file);
    str_view(&fresh.name_s, name, &fresh.escaped[0]);
    str_view(&fresh.filename_s, file, &fresh.escaped[1]);
    fresh.name_s.hash = ddl_str_hash(fresh.name_s.ptr, fresh.name_s.len);
    fresh.filename_s.hash =
        ddl_str_hash(fresh.filename_s.ptr, fresh.filename_s.len);
    fresh.internal = is_internal_code(st, co);
    /* never reused: the profile may trust a frame with this key to have
     * these name and filename bytes (ddl_frame.key) */
    fresh.serial = ++st->code_serial;
    ddl_code_entry old = set[1];
    set[1] = set[0];
    set[0] = fresh; /* the references move to the entry */
    if (fr != NULL) {
        code_entry_views(&fresh, fr, refs, nrefs);
    }
    /* released last: dropping the old code may run a weakref callback,
     * which may even refill the set */
    code_entry_clear(&old);
    return fresh.internal;
}

static inline int
code_entry_hit(const ddl_code_entry *e, PyCodeObject *co)
{
    return e->code == (PyObject *)co && e->name == ddl_code_name(co) &&
           e->filename == co->co_filename;
}

/* Is co internal? With fr != NULL, also fill fr's name and filename views
 * (the caller keeps co alive while they are used): escaped bytes behind
 * them get a new reference in refs[*nrefs] (room for two). */
static inline int
code_lookup(ddl_state *st, PyCodeObject *co, ddl_frame *fr, PyObject **refs,
            size_t *nrefs)
{
    if (st->code_cache == NULL) {
        if (fr != NULL) {
            ddl_str_from_unicode(&fr->name, ddl_code_name(co), refs, nrefs);
            ddl_str_from_unicode(&fr->filename, co->co_filename, refs, nrefs);
            fr->key = 0;
        }
        return is_internal_code(st, co);
    }
    ddl_code_entry *set = &st->code_cache[code_slot(co)];
    ddl_code_entry *e = &set[0];
    if (!code_entry_hit(e, co)) {
        if (!code_entry_hit(&set[1], co)) {
            return code_fill(st, set, co, fr, refs, nrefs);
        }
        /* most recently used first (the references move with the entries) */
        ddl_code_entry hit = set[1];
        set[1] = set[0];
        set[0] = hit;
    }
    if (fr != NULL) {
        code_entry_views(e, fr, refs, nrefs);
    }
    return e->internal;
}

/* Line of a frame, through a cache keyed by (code, lasti): computing it
 * scans the code's line table, which dominated sampled events. Two-way set
 * associative, most recently used first: with a direct-mapped cache, two
 * frames of a hot stack whose slots collided (a matter of addresses, so of
 * the run) rescanned both line tables on every sample. Entries hold a
 * reference to their code object, so a key never outlives the code it
 * names; the cache is bounded (DDL_LINE_CACHE_SIZE entries). */
static int64_t
ddl_cached_line(ddl_state *st, PyCodeObject *co, int lasti)
{
    if (st->line_cache == NULL || lasti < 0) {
        return PyCode_Addr2Line(co, lasti);
    }
    uintptr_t h = ((uintptr_t)co >> 4) ^ ((uintptr_t)lasti * 0x9e3779b1u);
    h ^= h >> 13;
    ddl_line_entry *set = &st->line_cache[h & (DDL_LINE_CACHE_SIZE - 2)];
    if (set[0].code == (PyObject *)co && set[0].lasti == lasti) {
        return set[0].line;
    }
    if (set[1].code == (PyObject *)co && set[1].lasti == lasti) {
        ddl_line_entry hit = set[1]; /* the reference moves with it */
        set[1] = set[0];
        set[0] = hit;
        return hit.line;
    }
    int line = PyCode_Addr2Line(co, lasti);
    PyObject *old = set[1].code;
    set[1] = set[0];
    set[0] = (ddl_line_entry){Py_NewRef(co), lasti, line};
    Py_XDECREF(old);
    return line;
}

void
ddl_line_cache_clear(ddl_state *st)
{
    if (st->line_cache == NULL) {
        return;
    }
    for (size_t i = 0; i < DDL_LINE_CACHE_SIZE; i++) {
        Py_CLEAR(st->line_cache[i].code);
    }
}

int
ddl_stack_capture(ddl_state *st, ddl_stack *stack, ddl_frame *frames,
                  PyObject **refs, size_t cap)
{
    return ddl_stack_capture_of(st, NULL, stack, frames, refs, cap);
}

int
ddl_stack_capture_of(ddl_state *st, PyThreadState *ts, ddl_stack *stack,
                     ddl_frame *frames, PyObject **refs, size_t cap)
{
    stack->frames = frames;
    stack->refs = refs;
    stack->nframes = 0;
    stack->nrefs = 0;
    size_t max = (size_t)st->max_frames;
    if (max + 1 > cap) {
        max = cap - 1;
    }
    /* borrowed frames and codes (ddl_walk_top); each code kept in refs */
    ddl_walk_frame *f = ts != NULL ? ddl_walk_top_of(ts) : ddl_walk_top();
    /* leading threading.py / ddlock frames (Condition.__enter__, ...) are
     * not the user's: the leaf is the user's code */
    while (f != NULL && code_lookup(st, ddl_walk_code(f), NULL, NULL, NULL)) {
        f = ddl_walk_back(f);
    }
    size_t omitted = 0;
    for (; f != NULL; f = ddl_walk_back(f)) {
        if (stack->nframes < max) {
            PyCodeObject *co = ddl_walk_code(f);
            refs[stack->nrefs++] = Py_NewRef(co);
            ddl_frame *fr = &frames[stack->nframes++];
            code_lookup(st, co, fr, refs, &stack->nrefs);
            fr->line = ddl_cached_line(st, co, ddl_walk_lasti(f));
        }
        else if (++omitted > 100000) {
            break;
        }
    }
    if (omitted > 0) {
        ddl_frame *fr = &frames[stack->nframes++];
        int n = snprintf(stack->omitted_buf, sizeof(stack->omitted_buf),
                         "<%zu frames omitted>", omitted);
        fr->name = (ddl_str){stack->omitted_buf, (size_t)n, 0};
        fr->filename = (ddl_str){"", 0, 0};
        fr->line = 0;
        fr->key = 0;
    }
    return 0;
}

int
ddl_stack_raw(ddl_raw_frame *out, int cap)
{
    int n = 0;
    for (ddl_walk_frame *f = ddl_walk_top(); f != NULL; f = ddl_walk_back(f)) {
        if (n == cap) {
            return -1;
        }
        PyCodeObject *co = ddl_walk_code(f);
        out[n].code = (PyObject *)co;
        out[n].filename = co->co_filename;
        out[n].lasti = ddl_walk_lasti(f);
        n++;
    }
    return n;
}

void
ddl_stack_release(ddl_stack *stack)
{
    for (size_t i = 0; i < stack->nrefs; i++) {
        Py_DECREF(stack->refs[i]);
    }
    stack->nrefs = 0;
    stack->nframes = 0;
}
