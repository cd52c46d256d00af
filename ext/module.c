/* ddlock._ddlock: module init (multi-phase, per-module state) and the
 * Python-facing functions of the native core. The Python layer (ddlock/)
 * parses configuration and installs the hooks; this module owns the
 * profile, the exporter and the hooks' state. */
#include "holder.h"
#include "order.h"
#include "tracker.h"

#include <pthread.h>
#include <string.h>

static inline ddl_state *
get_state(PyObject *module)
{
    return (ddl_state *)PyModule_GetState(module);
}

/* ---- exporter callbacks (export thread, no GIL, no Python) ----------------
 */

static int
produce(void *ctx, ddl_buf *out, int64_t *start_ns, int64_t *end_ns)
{
    ddl_profile *profile = (ddl_profile *)ctx;
    ddl_snapshot *snap = ddl_profile_swap(profile, ddl_wall_ns());
    if (snap == NULL) {
        return -1;
    }
    int rc = 1;
    if (ddl_snapshot_nsamples(snap) > 0 || ddl_snapshot_dropped(snap) > 0) {
        *start_ns = ddl_snapshot_start_ns(snap);
        *end_ns = ddl_snapshot_end_ns(snap);
        rc = ddl_pprof_encode(snap, out) == 0 ? 0 : -1;
    }
    ddl_snapshot_free(snap);
    return rc;
}

/* Runs in the main thread with the GIL, scheduled by on_log: hands queued
 * exporter messages to ddlock's Python logger. Never raises. */
static int
drain_pending(void *unused)
{
    PyObject *name = PyUnicode_FromString("ddlock");
    if (name == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *mod = PyImport_GetModule(name);
    Py_DECREF(name);
    if (mod == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *r = PyObject_CallMethod(mod, "_drain_native_logs", NULL);
    Py_XDECREF(r);
    Py_DECREF(mod);
    PyErr_Clear();
    return 0;
}

static void
on_log(void *ctx, int level, const char *kind, const char *msg)
{
    ddl_state *st = (ddl_state *)ctx;
    int schedule = 0;
    PyThread_acquire_lock(st->log_mutex, WAIT_LOCK);
    if (st->n_logs < (int)(sizeof(st->logs) / sizeof(st->logs[0]))) {
        st->logs[st->n_logs].level = level;
        snprintf(st->logs[st->n_logs].kind, sizeof(st->logs[0].kind), "%s",
                 kind ? kind : "");
        snprintf(st->logs[st->n_logs].msg, sizeof(st->logs[0].msg), "%s",
                 msg ? msg : "");
        st->n_logs++;
    }
    if (!st->log_pending_scheduled) {
        st->log_pending_scheduled = 1;
        schedule = 1;
    }
    PyThread_release_lock(st->log_mutex);
    if (schedule && Py_AddPendingCall(drain_pending, NULL) < 0) {
        PyThread_acquire_lock(st->log_mutex, WAIT_LOCK);
        st->log_pending_scheduled = 0;
        PyThread_release_lock(st->log_mutex);
    }
}

/* ---- start / stop
 * ----------------------------------------------------------- */

static void
free_excludes(ddl_state *st)
{
    for (int i = 0; i < st->n_excludes; i++) {
        PyMem_RawFree(st->excludes[i]);
        st->excludes[i] = NULL;
    }
    st->n_excludes = 0;
}

static int
set_excludes(ddl_state *st, PyObject *seq)
{
    free_excludes(st);
    PyObject *fast = PySequence_Fast(seq, "exclude must be a sequence of str");
    if (fast == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n && st->n_excludes < DDL_MAX_EXCLUDES; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        const char *s = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        if (s == NULL) {
            Py_DECREF(fast);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "exclude items must be str");
            }
            return -1;
        }
        size_t len = strlen(s) + 1;
        char *copy = PyMem_RawMalloc(len);
        if (copy == NULL) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(copy, s, len);
        st->excludes[st->n_excludes++] = copy;
    }
    Py_DECREF(fast);
    return 0;
}

static void
stop_collecting(ddl_state *st, int final_export)
{
    st->running = 0;
    st->lock_order = 0; /* its reports stay until the next start */
    st->generation++;
    ddl_exporter *e = st->exporter;
    ddl_profile *p = st->profile;
    st->exporter = NULL;
    st->profile = NULL;
    ddl_exporter_stats es;
    memset(&es, 0, sizeof(es));
    if (e != NULL) {
        Py_BEGIN_ALLOW_THREADS ddl_exporter_stop_stats(e, final_export, &es);
        Py_END_ALLOW_THREADS
    }
    if (p != NULL) {
        ddl_profile_get_stats(p, &st->last_profile_stats);
        ddl_profile_free(p);
    }
    if (e != NULL || p != NULL) {
        st->last_exporter_stats = es;
        st->has_last_stats = 1;
    }
    ddl_memo_clear(st); /* its tickets name the profile just freed */
}

static PyObject *
mod_start(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"output_prefix",
                             "capture_pct",
                             "max_frames",
                             "interval",
                             "inspect_dir",
                             "exclude",
                             "max_samples",
                             "wait_rate_ns",
                             "seed",
                             "upload_enabled",
                             "url",
                             "unix_socket",
                             "api_key",
                             "timeout_ms",
                             "tags",
                             "version",
                             "ca_file",
                             "file_mode",
                             "resolve_names",
                             "max_files",
                             "min_free_bytes",
                             "lock_order",
                             NULL};
    const char *output_prefix = NULL, *url = NULL, *unix_socket = NULL;
    const char *api_key = NULL, *tags = "", *version = DDL_VERSION;
    const char *ca_file = NULL;
    double capture_pct = 1.0, interval = 60.0;
    int max_frames = 64, inspect_dir = 1, upload_enabled = 0,
        resolve_names = 1, lock_order = 0;
    PyObject *exclude = NULL;
    Py_ssize_t max_samples = 10000;
    long long wait_rate_ns = 1000000, seed = 0;
    long timeout_ms = 10000;
    unsigned int file_mode = 0600, max_files = 0;
    unsigned long long min_free_bytes = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "|$zdidpOnLLpzzzlzzzIpIKp:start", kwlist,
            &output_prefix, &capture_pct, &max_frames, &interval, &inspect_dir,
            &exclude, &max_samples, &wait_rate_ns, &seed, &upload_enabled,
            &url, &unix_socket, &api_key, &timeout_ms, &tags, &version,
            &ca_file, &file_mode, &resolve_names, &max_files, &min_free_bytes,
            &lock_order)) {
        return NULL;
    }
    if (!(capture_pct >= 0.0 && capture_pct <= 100.0)) {
        PyErr_SetString(PyExc_ValueError, "capture_pct must be in [0, 100]");
        return NULL;
    }
    if (max_frames < 1 || max_frames > 4096) {
        PyErr_SetString(PyExc_ValueError, "max_frames must be in [1, 4096]");
        return NULL;
    }
    if (!(interval > 0.0) || max_samples < 1 || wait_rate_ns < 0 ||
        timeout_ms < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid profiler configuration");
        return NULL;
    }
    ddl_state *st = get_state(module);
    if (st->running) {
        PyErr_SetString(PyExc_RuntimeError, "ddlock is already running");
        return NULL;
    }
    ddl_site_cache_clear(st); /* decisions depend on the exclusions */
    if (exclude != NULL && exclude != Py_None &&
        set_excludes(st, exclude) < 0) {
        return NULL;
    }
    if (lock_order && ddl_order_start(st) < 0) {
        return NULL;
    }
    if (st->file_history == NULL &&
        (st->file_history = ddl_file_history_new()) == NULL) {
        return PyErr_NoMemory();
    }
    ddl_profile *profile = ddl_profile_new((size_t)max_samples, ddl_wall_ns());
    if (profile == NULL) {
        return PyErr_NoMemory();
    }
    ddl_exporter_config cfg = {
        .output_prefix = output_prefix,
        .file_mode = file_mode,
        .max_files = max_files,
        .min_free_bytes = min_free_bytes,
        .history = st->file_history,
        .interval_s = interval,
        .upload_enabled = upload_enabled && url != NULL,
        .url = url,
        .unix_socket = unix_socket,
        .api_key = api_key,
        .timeout_ms = timeout_ms,
        .max_retries = 2,
        .tags = tags,
        .version = version,
        .ca_file = ca_file,
        .seq_store = &st->file_seq,
        .produce = produce,
        .produce_ctx = profile,
        .log = on_log,
        .log_ctx = st,
    };
    const char *err = NULL;
    ddl_exporter *exporter = ddl_exporter_start(&cfg, &err);
    if (exporter == NULL) {
        ddl_profile_free(profile);
        PyErr_Format(PyExc_RuntimeError, "ddlock: cannot start exporter: %s",
                     err ? err : "unknown error");
        return NULL;
    }
    st->profile = profile;
    st->exporter = exporter;
    st->capture_p = capture_pct / 100.0;
    st->max_frames = max_frames;
    st->inspect_dir = inspect_dir;
    st->resolve_names = resolve_names;
    st->wait_rate_ns = wait_rate_ns;
    st->seed = (uint64_t)seed;
    st->lock_order = lock_order;
    ddl_reset_seed_sequence();
    st->generation++;
    st->running = 1;
    Py_RETURN_NONE;
}

static PyObject *
mod_stop(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"final_export", NULL};
    int final_export = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:stop", kwlist,
                                     &final_export)) {
        return NULL;
    }
    ddl_state *st = get_state(module);
    stop_collecting(st, final_export);
    if (st->name_cache != NULL) {
        PyDict_Clear(st->name_cache);
    }
    if (st->site_modules != NULL) {
        PyDict_Clear(st->site_modules);
    }
    if (st->places != NULL) {
        PyDict_Clear(st->places);
    }
    Py_RETURN_NONE;
}

static PyObject *
mod_flush(PyObject *module, PyObject *unused)
{
    ddl_state *st = get_state(module);
    PyObject *list = PyList_New(0);
    if (list == NULL || st->exporter == NULL) {
        return list;
    }
    char **paths = NULL;
    int rc;
    ddl_exporter *e = st->exporter;
    Py_BEGIN_ALLOW_THREADS rc = ddl_exporter_flush(e, &paths);
    Py_END_ALLOW_THREADS(void) rc;
    for (char **p = paths; p != NULL && *p != NULL; p++) {
        PyObject *s = PyUnicode_DecodeFSDefault(*p);
        if (s == NULL || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(list);
            ddl_exporter_free_paths(paths);
            return NULL;
        }
        Py_DECREF(s);
    }
    ddl_exporter_free_paths(paths);
    return list;
}

#define SET_U64(d, k, v)                                                      \
    do {                                                                      \
        PyObject *o_ = PyLong_FromUnsignedLongLong((unsigned long long)(v));  \
        if (o_ == NULL || PyDict_SetItemString((d), (k), o_) < 0) {           \
            Py_XDECREF(o_);                                                   \
            goto error;                                                       \
        }                                                                     \
        Py_DECREF(o_);                                                        \
    } while (0)

static PyObject *
mod_stats(PyObject *module, PyObject *unused)
{
    ddl_state *st = get_state(module);
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    SET_U64(d, "running", st->running);
    SET_U64(d, "locks_created", st->locks_created);
    SET_U64(d, "primitives_created", st->primitives_created);
    SET_U64(d, "events_sampled", st->events_sampled);
    SET_U64(d, "events_reentrant_skipped", st->events_reentrant_skipped);
    SET_U64(d, "names_resolved", st->names_resolved);
    SET_U64(d, "names_cache_hits", st->names_cache_hits);
    SET_U64(d, "names_missed", st->names_missed);
    SET_U64(d, "holds_dropped", st->holds_dropped);
    if (ddl_order_stats(st, d) < 0) {
        goto error;
    }
    if (st->profile != NULL || st->has_last_stats) {
        ddl_profile_stats ps = st->last_profile_stats;
        if (st->profile != NULL) {
            ddl_profile_get_stats(st->profile, &ps);
        }
        SET_U64(d, "samples_added", ps.samples_added);
        SET_U64(d, "samples_dropped", ps.samples_dropped);
        SET_U64(d, "snapshots", ps.snapshots);
        SET_U64(d, "current_keys", ps.current_keys);
    }
    if (st->exporter != NULL || st->has_last_stats) {
        ddl_exporter_stats es = st->last_exporter_stats;
        if (st->exporter != NULL) {
            ddl_exporter_get_stats(st->exporter, &es);
        }
        SET_U64(d, "exports", es.exports);
        SET_U64(d, "files_written", es.files_written);
        SET_U64(d, "file_errors", es.file_errors);
        SET_U64(d, "uploads_ok", es.uploads_ok);
        SET_U64(d, "uploads_failed", es.uploads_failed);
        SET_U64(d, "upload_retries", es.upload_retries);
        SET_U64(d, "bytes_written", es.bytes_written);
        SET_U64(d, "bytes_uploaded", es.bytes_uploaded);
        SET_U64(d, "files_removed", es.files_removed);
        SET_U64(d, "files_skipped_low_disk", es.files_skipped_low_disk);
        SET_U64(d, "uploads_skipped_retry_after",
                es.uploads_skipped_retry_after);
        SET_U64(d, "last_http_status", (unsigned)es.last_http_status);
        PyObject *s = PyUnicode_DecodeUTF8(es.last_error,
                                           strlen(es.last_error), "replace");
        if (s == NULL || PyDict_SetItemString(d, "last_error", s) < 0) {
            Py_XDECREF(s);
            goto error;
        }
        Py_DECREF(s);
    }
    return d;
error:
    Py_DECREF(d);
    return NULL;
}

static PyObject *
mod_drain_logs(PyObject *module, PyObject *unused)
{
    ddl_state *st = get_state(module);
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    PyThread_acquire_lock(st->log_mutex, WAIT_LOCK);
    int n = st->n_logs;
    int levels[32];
    char kinds[32][32], msgs[32][256];
    for (int i = 0; i < n; i++) {
        levels[i] = st->logs[i].level;
        memcpy(kinds[i], st->logs[i].kind, sizeof(kinds[i]));
        memcpy(msgs[i], st->logs[i].msg, sizeof(msgs[i]));
    }
    st->n_logs = 0;
    st->log_pending_scheduled = 0;
    PyThread_release_lock(st->log_mutex);
    for (int i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(iss)", levels[i], kinds[i], msgs[i]);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(t);
    }
    return list;
}

static PyObject *
mod_setup(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "threading_active", "threading_file", "ddlock_dir", "passthrough",
        "lock_type",        "rlock_type",     "opmap",      "caches",
        "stdlib_dirs",      "local_type",     NULL};
    PyObject *active, *tfile, *ddir, *pass = NULL, *lt = NULL, *rt = NULL;
    PyObject *opmap = NULL, *caches = NULL, *stdlib = NULL, *local = NULL;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OUU|O!O!O!OOO!O!:_setup", kwlist, &active, &tfile,
            &ddir, &PyTuple_Type, &pass, &PyType_Type, &lt, &PyType_Type, &rt,
            &opmap, &caches, &PyTuple_Type, &stdlib, &PyType_Type, &local)) {
        return NULL;
    }
    if (active != Py_None && !PyDict_CheckExact(active)) {
        PyErr_SetString(PyExc_TypeError,
                        "threading_active must be a dict or None");
        return NULL;
    }
    for (Py_ssize_t i = 0; stdlib != NULL && i < PyTuple_GET_SIZE(stdlib);
         i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(stdlib, i))) {
            PyErr_SetString(PyExc_TypeError, "stdlib_dirs: a tuple of str");
            return NULL;
        }
    }
    ddl_state *st = get_state(module);
    if (opmap != NULL && caches != NULL &&
        ddl_opcodes_set(st, opmap, caches) < 0) {
        return NULL;
    }
    if ((lt != NULL || rt != NULL) && ddl_locks_set_types(st, lt, rt) < 0) {
        return NULL;
    }
    for (int i = 0; i < DDL_PASSTHROUGH_MAX; i++) {
        PyObject *co = pass != NULL && i < PyTuple_GET_SIZE(pass)
                           ? PyTuple_GET_ITEM(pass, i)
                           : NULL;
        Py_XSETREF(st->passthrough[i],
                   co != NULL && PyCode_Check(co) ? Py_NewRef(co) : NULL);
    }
    ddl_site_cache_clear(st);
    /* None: threading has no registry we know (a newer CPython), thread
     * names are left out rather than guessed */
    Py_XSETREF(st->threading_active,
               active == Py_None ? NULL : Py_NewRef(active));
    Py_XSETREF(st->threading_file, Py_NewRef(tfile));
    Py_XSETREF(st->ddlock_dir, Py_NewRef(ddir));
    Py_XSETREF(st->stdlib_dirs, Py_XNewRef(stdlib));
    Py_XSETREF(st->local_type, Py_XNewRef(local));
    ddl_code_cache_clear(st); /* which code is internal may have changed */
    ddl_memo_clear(st);       /* so may the stacks its keys stand for */
    Py_RETURN_NONE;
}

/* ---- fork ----------------------------------------------------------------
 *
 * The native mutexes (exporter, profile, log queue) are taken in a
 * pthread_atfork() prepare handler, i.e. inside fork() itself, after every
 * Python before-fork hook has run and with no Python code left to run before
 * the fork. Taking them from a Python os.register_at_fork() hook deadlocks:
 * Python code still runs between that hook and fork() (other hooks, the
 * import lock), the GIL passes to another thread, and that thread blocks on
 * the profile mutex (a sampled acquire) while holding the GIL the forking
 * thread needs. There are no Python before/after-in-parent hooks;
 * fork_child() (the Python after-fork hook) restarts collection. */

static ddl_state *fork_state;            /* the module's state, or NULL */
static ddl_exporter *fork_held_exporter; /* what prepare locked */
static ddl_profile *fork_held_profile;
static PyThread_type_lock fork_held_log_mutex;

static void
atfork_prepare(void)
{
    ddl_state *st = fork_state;
    fork_held_exporter = NULL;
    fork_held_profile = NULL;
    fork_held_log_mutex = NULL;
    if (st == NULL) {
        return;
    }
    fork_held_exporter = st->exporter;
    fork_held_profile = st->profile;
    fork_held_log_mutex = st->log_mutex;
    if (fork_held_exporter != NULL) {
        ddl_exporter_fork_prepare(fork_held_exporter);
    }
    if (fork_held_profile != NULL) {
        ddl_profile_fork_prepare(fork_held_profile);
    }
    if (fork_held_log_mutex != NULL) {
        PyThread_acquire_lock(fork_held_log_mutex, WAIT_LOCK);
    }
}

/* In the parent and in the child alike, the forking thread owns what
 * prepare locked and releases it (in the child, fork_child() then
 * re-initialises the rest). */
static void
atfork_release(void)
{
    if (fork_held_log_mutex != NULL) {
        PyThread_release_lock(fork_held_log_mutex);
    }
    if (fork_held_profile != NULL) {
        ddl_profile_fork_parent(fork_held_profile);
    }
    if (fork_held_exporter != NULL) {
        ddl_exporter_fork_parent(fork_held_exporter);
    }
    fork_held_exporter = NULL;
    fork_held_profile = NULL;
    fork_held_log_mutex = NULL;
}

static PyObject *
mod_fork_child(PyObject *module, PyObject *unused)
{
    ddl_state *st = get_state(module);
    /* the atfork child handler released the mutexes; what other parent
     * threads queued is theirs */
    st->n_logs = 0;
    st->log_pending_scheduled = 0;
    st->file_seq = 0; /* the child's files: <prefix>.<child pid>.1, .2, ... */
    ddl_file_history_clear(st->file_history); /* the parent's files */
    if (st->profile != NULL) {
        ddl_profile_fork_child(st->profile, ddl_wall_ns());
    }
    ddl_locks_fork_child(st);
    ddl_waits_fork_child();
    ddl_order_fork_child(st);
    if (st->exporter != NULL && ddl_exporter_fork_child(st->exporter) != 0) {
        /* no export thread in the child: stop collecting rather than grow */
        st->running = 0;
    }
    st->generation++;
    Py_RETURN_NONE;
}

/* Is this the main interpreter (the only one ddlock profiles)? */
static PyObject *
mod_main_interpreter(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(PyInterpreterState_Get() ==
                           PyInterpreterState_Main());
}

static PyObject *
mod_is_running(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(get_state(module)->running);
}

/* What profiles obj (a native lock's entry, a primitive's tracker), and
 * the object whose name it carries; NULL when obj is not profiled. */
static ddl_prof *
profiled(ddl_state *st, PyObject *obj, PyObject **target)
{
    return ddl_profiled(st, obj, target);
}

/* lock_name(obj): the profile label of a profiled lock or primitive
 * (resolving it now, from the calling frame), None when not profiled. */
static PyObject *
mod_lock_name(PyObject *module, PyObject *obj)
{
    ddl_state *st = get_state(module);
    PyObject *target;
    ddl_prof *p = profiled(st, obj, &target);
    PyObject *name = p != NULL ? ddl_lock_name(st, p, target) : NULL;
    if (name == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return name;
}

/* profiled(obj): the `lock type` of obj's samples ("Lock", "Condition",
 * "asyncio.Lock", ...) when ddlock profiles it, else None. */
static PyObject *
mod_profiled(PyObject *module, PyObject *obj)
{
    ddl_state *st = get_state(module);
    PyObject *target;
    ddl_prof *p = profiled(st, obj, &target);
    if (p == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(ddl_kind_names[p->kind]);
}

/* lock_site(obj): "file:line" where obj was made, None when not profiled
 * or unknown. */
static PyObject *
mod_lock_site(PyObject *module, PyObject *obj)
{
    ddl_state *st = get_state(module);
    PyObject *target;
    ddl_prof *p = profiled(st, obj, &target);
    if (p == NULL || p->site_code == NULL) {
        Py_RETURN_NONE;
    }
    return ddl_site_label(p->site_code, p->site_lasti);
}

/* _hook_locks(lock, rlock): profile threading.Lock / threading.RLock
 * objects in place (lock.c). */
static PyObject *
mod_hook_locks(PyObject *module, PyObject *args)
{
    int lock, rlock;
    if (!PyArg_ParseTuple(args, "pp:_hook_locks", &lock, &rlock)) {
        return NULL;
    }
    if (ddl_locks_hook(get_state(module), lock, rlock) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
mod_unhook_locks(PyObject *module, PyObject *unused)
{
    ddl_locks_unhook(get_state(module));
    Py_RETURN_NONE;
}

/* _set_asyncio(locks_file, get_running_loop, current_task, current_tasks,
 *              task_types): current_tasks is the dict current_task(loop)
 * reads (or None: it is called); task_types asyncio's own Task classes (at
 * most two), whose get_name is trusted. */
static PyObject *
mod_set_asyncio(PyObject *module, PyObject *args)
{
    PyObject *file, *grl, *ct, *tasks, *types;
    if (!PyArg_ParseTuple(args, "UOOOO!:_set_asyncio", &file, &grl, &ct,
                          &tasks, &PyTuple_Type, &types)) {
        return NULL;
    }
    if (tasks != Py_None && !PyDict_CheckExact(tasks)) {
        PyErr_SetString(PyExc_TypeError, "current_tasks must be a dict");
        return NULL;
    }
    if (PyTuple_GET_SIZE(types) > 2) {
        PyErr_SetString(PyExc_ValueError, "at most two Task types");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        if (!PyType_Check(PyTuple_GET_ITEM(types, i))) {
            PyErr_SetString(PyExc_TypeError, "Task types expected");
            return NULL;
        }
    }
    ddl_state *st = get_state(module);
    PyObject *get_name[2] = {NULL, NULL};
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        PyTypeObject *tp = (PyTypeObject *)PyTuple_GET_ITEM(types, i);
        get_name[i] = ddl_type_lookup(tp, st->str_get_name);
    }
    for (int i = 0; i < 2; i++) {
        Py_XSETREF(st->task_get_name[i], Py_XNewRef(get_name[i]));
    }
    Py_XSETREF(st->current_tasks, tasks == Py_None ? NULL : Py_NewRef(tasks));
    Py_XSETREF(st->asyncio_locks_file, Py_NewRef(file));
    ddl_code_cache_clear(st); /* asyncio's lock code is internal */
    ddl_memo_clear(st);
    Py_XSETREF(st->get_running_loop, Py_NewRef(grl));
    Py_XSETREF(st->current_task, Py_NewRef(ct));
    Py_RETURN_NONE;
}

/* _set_gevent(getcurrent or None, name descriptor of gevent.Greenlet or
 * None) */
static PyObject *
mod_set_gevent(PyObject *module, PyObject *args)
{
    ddl_state *st = get_state(module);
    PyObject *getcurrent, *name = Py_None;
    if (!PyArg_ParseTuple(args, "O|O:_set_gevent", &getcurrent, &name)) {
        return NULL;
    }
    Py_XSETREF(st->gevent_getcurrent,
               getcurrent == Py_None ? NULL : Py_NewRef(getcurrent));
    Py_XSETREF(st->greenlet_name, name == Py_None ? NULL : Py_NewRef(name));
    Py_RETURN_NONE;
}

/* _idle_loop(stop, interval, callback, done): the body of a background
 * thread (the stuck-lock watchdog) that has no Python frame while it waits,
 * so the program's sys._current_frames() sees it only during a callback:
 * until stop.acquire(True, interval) succeeds, callback() after each
 * timeout (an exception it raises is dropped: it logs its own); at the
 * end, done.release(). */
static PyObject *
mod_idle_loop(PyObject *module, PyObject *args)
{
    PyObject *stop, *callback, *done, *result = NULL;
    double interval;
    if (!PyArg_ParseTuple(args, "OdOO:_idle_loop", &stop, &interval, &callback,
                          &done)) {
        return NULL;
    }
    for (;;) {
        PyObject *r =
            PyObject_CallMethod(stop, "acquire", "Od", Py_True, interval);
        if (r == NULL) {
            break;
        }
        int got = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (got != 0) {
            result = got > 0 ? Py_NewRef(Py_None) : NULL;
            break;
        }
        r = PyObject_CallNoArgs(callback);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *r = PyObject_CallMethod(done, "release", NULL);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    PyErr_Restore(et, ev, etb);
    return result;
}

/* _now(): the monotonic clock of waits and holds, in ns. */
static PyObject *
mod_now(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong(ddl_monotonic_ns());
}

static PyObject *
mod_event_json(PyObject *module, PyObject *args)
{
    const char *tags;
    long long start, end;
    if (!PyArg_ParseTuple(args, "sLL:event_json", &tags, &start, &end)) {
        return NULL;
    }
    char *json = ddl_exporter_event_json(tags, start, end, DDL_VERSION);
    if (json == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *r = PyUnicode_FromString(json);
    free(json);
    return r;
}

/* _encode_profile(samples, max_samples=10000, gzip=True) -> bytes
 * Test hook for the pure-C encoder: samples is a sequence of
 * (frames, labels, values) with frames [(name, filename, line)], labels
 * [(key, str or int)] and values (4 ints). Strings go through the same UTF-8
 * conversion as sampled lock events. */
static int
fill_str(ddl_str *out, PyObject *s, PyObject *keep)
{
    PyObject *refs[1];
    size_t n = 0;
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "strings expected");
        return -1;
    }
    ddl_str_from_unicode(out, s, refs, &n);
    if (n > 0) {
        int rc = PyList_Append(keep, refs[0]);
        Py_DECREF(refs[0]);
        return rc;
    }
    return 0;
}

static PyObject *
mod_encode_profile(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"samples", "max_samples", "gzip", NULL};
    PyObject *samples, *result = NULL, *keep = NULL, *fast = NULL;
    Py_ssize_t max_samples = 10000;
    int gzip = 1;
    ddl_profile *profile = NULL;
    ddl_snapshot *snap = NULL;
    ddl_frame *frames = NULL;
    ddl_label *labels = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|np:_encode_profile",
                                     kwlist, &samples, &max_samples, &gzip)) {
        return NULL;
    }
    if (max_samples < 1) {
        PyErr_SetString(PyExc_ValueError, "max_samples must be >= 1");
        return NULL;
    }
    keep = PyList_New(0);
    fast = PySequence_Fast(samples, "samples must be a sequence");
    profile = ddl_profile_new((size_t)max_samples, ddl_wall_ns());
    if (keep == NULL || fast == NULL || profile == NULL) {
        if (profile == NULL && !PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto error;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *fr_seq, *lb_seq, *vals;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "OOO",
                              &fr_seq, &lb_seq, &vals)) {
            goto error;
        }
        Py_ssize_t nf = PySequence_Size(fr_seq);
        Py_ssize_t nl = PySequence_Size(lb_seq);
        if (nf < 0 || nl < 0 || PySequence_Size(vals) != DDL_NVALUES) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError,
                                "7 values expected (one per sample type)");
            }
            goto error;
        }
        PyMem_Free(frames);
        PyMem_Free(labels);
        frames = PyMem_Calloc((size_t)nf + 1, sizeof(ddl_frame));
        labels = PyMem_Calloc((size_t)nl + 1, sizeof(ddl_label));
        if (frames == NULL || labels == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        for (Py_ssize_t j = 0; j < nf; j++) {
            PyObject *item = PySequence_GetItem(fr_seq, j);
            PyObject *name, *file;
            long long line;
            int ok = item != NULL &&
                     PyArg_ParseTuple(item, "UUL", &name, &file, &line) &&
                     fill_str(&frames[j].name, name, keep) == 0 &&
                     fill_str(&frames[j].filename, file, keep) == 0;
            Py_XDECREF(item);
            if (!ok) {
                goto error;
            }
            frames[j].line = line;
        }
        for (Py_ssize_t j = 0; j < nl; j++) {
            PyObject *item = PySequence_GetItem(lb_seq, j);
            PyObject *key, *value;
            int ok = item != NULL &&
                     PyArg_ParseTuple(item, "UO", &key, &value) &&
                     fill_str(&labels[j].key, key, keep) == 0;
            if (ok && PyUnicode_Check(value)) {
                ok = fill_str(&labels[j].str, value, keep) == 0;
            }
            else if (ok) {
                labels[j].str.ptr = NULL;
                labels[j].num = PyLong_AsLongLong(value);
                ok = !PyErr_Occurred();
            }
            Py_XDECREF(item);
            if (!ok) {
                goto error;
            }
        }
        int64_t v[DDL_NVALUES];
        for (int k = 0; k < DDL_NVALUES; k++) {
            PyObject *o = PySequence_GetItem(vals, k);
            v[k] = o ? PyLong_AsLongLong(o) : -1;
            Py_XDECREF(o);
            if (PyErr_Occurred()) {
                goto error;
            }
        }
        ddl_profile_add(profile, frames, (size_t)nf, labels, (size_t)nl, v);
    }
    snap = ddl_profile_swap(profile, ddl_wall_ns() + 1);
    if (snap == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    ddl_buf buf = {NULL, 0};
    int rc =
        gzip ? ddl_pprof_encode(snap, &buf) : ddl_pprof_encode_raw(snap, &buf);
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pprof encoding failed");
        goto error;
    }
    result =
        PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
    ddl_buf_free(&buf);
error:
    if (snap != NULL) {
        ddl_snapshot_free(snap);
    }
    if (profile != NULL) {
        ddl_profile_free(profile);
    }
    PyMem_Free(frames);
    PyMem_Free(labels);
    Py_XDECREF(fast);
    Py_XDECREF(keep);
    return result;
}

/* Which paths this build compiled (ext/pycompat.h): the internal one of a
 * tested minor, or the public API of any other version (or forced with
 * DDLOCK_PORTABLE=1). ddlock.build_info() adds what Python knows. */
static PyObject *
mod_build_info(PyObject *module, PyObject *unused)
{
    ddl_lib_versions libs;
    ddl_exporter_lib_versions(&libs);
    return Py_BuildValue("{s:s,s:s,s:s,s:i,s:{s:s,s:s,s:s}}", "frame_walk",
                         DDL_PATH_NAME, "python_built_for", PY_VERSION,
                         "ddlock", DDL_VERSION, "portable_forced",
#ifdef DDL_PORTABLE
                         1,
#else
                         0,
#endif
                         "libraries", "protobuf-c", libs.protobuf_c, "libcurl",
                         libs.libcurl, "zlib", libs.zlib);
}

static PyMethodDef module_methods[] = {
    {"start", (PyCFunction)(void (*)(void))mod_start,
     METH_VARARGS | METH_KEYWORDS, "Start collecting (configured by ddlock)."},
    {"stop", (PyCFunction)(void (*)(void))mod_stop,
     METH_VARARGS | METH_KEYWORDS, "Stop collecting, exporting once more."},
    {"flush", mod_flush, METH_NOARGS, "Export now; returns paths written."},
    {"stats", mod_stats, METH_NOARGS, "Counters of the native core."},
    {"drain_logs", mod_drain_logs, METH_NOARGS, NULL},
    {"_setup", (PyCFunction)(void (*)(void))mod_setup,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"fork_child", mod_fork_child, METH_NOARGS, NULL},
    {"is_running", mod_is_running, METH_NOARGS, NULL},
    {"main_interpreter", mod_main_interpreter, METH_NOARGS,
     "Whether this is the main interpreter (the one ddlock profiles)."},
    {"build_info", mod_build_info, METH_NOARGS,
     "Which internal or public-API paths this build uses."},
    {"lock_name", mod_lock_name, METH_O,
     "The profile label of a profiled lock (resolving it now)."},
    {"profiled", mod_profiled, METH_O,
     "The lock type ddlock profiles an object as, or None."},
    {"lock_site", mod_lock_site, METH_O,
     "Where a profiled lock was made (file:line), or None."},
    {"_hook_locks", mod_hook_locks, METH_VARARGS, NULL},
    {"_unhook_locks", mod_unhook_locks, METH_NOARGS, NULL},
    {"_set_asyncio", mod_set_asyncio, METH_VARARGS, NULL},
    {"_set_gevent", mod_set_gevent, METH_VARARGS, NULL},
    {"_idle_loop", mod_idle_loop, METH_VARARGS, NULL},
    {"_now", mod_now, METH_NOARGS, NULL},
    {"event_json", mod_event_json, METH_VARARGS, NULL},
    {"_encode_profile", (PyCFunction)(void (*)(void))mod_encode_profile,
     METH_VARARGS | METH_KEYWORDS,
     "Test hook: encode samples with the native profile and pprof code."},
    {NULL},
};

/* ---- module lifecycle
 * ------------------------------------------------------- */

#define STRINGS(X)                                                            \
    X(str__locked, "_locked")                                                 \
    X(str__value, "_value")                                                   \
    X(str__waiters, "_waiters")                                               \
    X(str__lock, "_lock")                                                     \
    X(str__owner, "_owner")                                                   \
    X(str_acquire, "acquire")                                                 \
    X(str__wakeup_scheduled, "_wakeup_scheduled")                             \
    X(str_get_name, "get_name")                                               \
    X(str_name_attr, "name")                                                  \
    X(str__bound_value, "_bound_value")                                       \
    X(str_dunder_dict, "__dict__")                                            \
    X(str_frozen, "<frozen ")                                                 \
    X(str_packages_dir, "-packages/")                                         \
    X(str_wait, "wait")                                                       \
    X(str__cond, "_cond")                                                     \
    X(str__condition, "_condition")                                           \
    X(str__queue, "_queue")                                                   \
    X(str__maxsize, "_maxsize")                                               \
    X(str_future_label, "concurrent.futures.Future")

static int
intern_strings(ddl_state *st)
{
#define INTERN(field, text)                                                   \
    if ((st->field = PyUnicode_InternFromString(text)) == NULL) {             \
        return -1;                                                            \
    }
    STRINGS(INTERN)
#undef INTERN
    return 0;
}

static int
module_exec(PyObject *module)
{
    ddl_state *st = get_state(module);
    st->max_frames = 64;
    st->inspect_dir = 1;
    st->resolve_names = 1;
    st->wait_rate_ns = 1000000;
    st->generation = 1;
    st->log_mutex = PyThread_allocate_lock();
    if (st->log_mutex == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (fork_state == NULL) {
        static int atfork_registered = 0;
        if (!atfork_registered) {
            if (pthread_atfork(atfork_prepare, atfork_release,
                               atfork_release) != 0) {
                PyErr_SetString(PyExc_RuntimeError,
                                "ddlock: pthread_atfork failed");
                return -1;
            }
            atfork_registered = 1;
        }
        fork_state = st;
    }
    st->name_cache = PyDict_New();
    st->site_modules = PyDict_New();
    st->places = PyDict_New();
    st->line_cache = PyMem_Calloc(DDL_LINE_CACHE_SIZE, sizeof(ddl_line_entry));
    st->site_cache = PyMem_Calloc(DDL_SITE_CACHE_SIZE, sizeof(ddl_site_entry));
    st->code_cache = PyMem_Calloc(DDL_CODE_CACHE_SIZE, sizeof(ddl_code_entry));
    if (st->line_cache == NULL || st->site_cache == NULL ||
        st->code_cache == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->str_name = PyUnicode_InternFromString("_name");
    st->str_dunder_name = PyUnicode_InternFromString("__name__");
    st->str_ident = PyUnicode_InternFromString("_ident");
    if (st->name_cache == NULL || st->site_modules == NULL ||
        st->places == NULL || st->str_name == NULL ||
        st->str_dunder_name == NULL || st->str_ident == NULL) {
        return -1;
    }
    if (intern_strings(st) < 0 || ddl_locks_init(module, st) < 0 ||
        ddl_trackers_init(module, st) < 0 || ddl_hooks_init(module, st) < 0 ||
        ddl_holder_init(module, st) < 0 || ddl_order_init(module, st) < 0) {
        return -1;
    }
    if (PyModule_AddStringConstant(module, "__version__", DDL_VERSION) < 0) {
        return -1;
    }
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ddl_state *st = get_state(module);
    Py_VISIT(st->threading_active);
    Py_VISIT(st->name_cache);
    Py_VISIT(st->native_lock_type);
    Py_VISIT(st->native_rlock_type);
    Py_VISIT(st->tracker_type);
    Py_VISIT(st->hook_type);
    Py_VISIT(st->waiting_type);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->current_task);
    Py_VISIT(st->current_tasks);
    Py_VISIT(st->task_get_name[0]);
    Py_VISIT(st->task_get_name[1]);
    Py_VISIT(st->gevent_getcurrent);
    Py_VISIT(st->greenlet_name);
    Py_VISIT(st->local_type);
    Py_VISIT(st->site_modules);
    Py_VISIT(st->places);
    return 0;
}

static int
module_clear(PyObject *module)
{
    ddl_state *st = get_state(module);
    ddl_memo_clear(st);
    ddl_line_cache_clear(st);
    ddl_site_cache_clear(st);
    ddl_code_cache_clear(st);
    ddl_ident_cache_clear(st);
    ddl_locks_clear(st);
    ddl_trackers_clear(st);
    ddl_order_clear(st);
    Py_CLEAR(st->threading_active);
    Py_CLEAR(st->threading_file);
    Py_CLEAR(st->ddlock_dir);
    for (int i = 0; i < DDL_PASSTHROUGH_MAX; i++) {
        Py_CLEAR(st->passthrough[i]);
    }
    Py_CLEAR(st->name_cache);
    Py_CLEAR(st->str_name);
    Py_CLEAR(st->str_dunder_name);
    Py_CLEAR(st->str_ident);
    Py_CLEAR(st->hook_type);
    Py_CLEAR(st->waiting_type);
    Py_CLEAR(st->asyncio_locks_file);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->current_task);
    Py_CLEAR(st->current_tasks);
    Py_CLEAR(st->task_get_name[0]);
    Py_CLEAR(st->task_get_name[1]);
    Py_CLEAR(st->gevent_getcurrent);
    Py_CLEAR(st->greenlet_name);
    Py_CLEAR(st->stdlib_dirs);
    Py_CLEAR(st->local_type);
    Py_CLEAR(st->site_modules);
    Py_CLEAR(st->places);
#define CLEAR(field, text) Py_CLEAR(st->field);
    STRINGS(CLEAR)
#undef CLEAR
    return 0;
}

static void
module_free(void *module)
{
    ddl_state *st = get_state((PyObject *)module);
    if (fork_state == st) {
        fork_state = NULL;
    }
    stop_collecting(st, 0);
    ddl_file_history_free(st->file_history);
    st->file_history = NULL;
    free_excludes(st);
    module_clear((PyObject *)module);
    PyMem_Free(st->line_cache);
    st->line_cache = NULL;
    PyMem_Free(st->memo);
    st->memo = NULL;
    PyMem_Free(st->site_cache);
    st->site_cache = NULL;
    PyMem_Free(st->code_cache);
    st->code_cache = NULL;
    /* log_mutex is left allocated: a pending drain may still look at it */
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ddlock._ddlock",
    .m_doc = "ddlock native core: profiled locks, profile, pprof, exporter.",
    .m_size = sizeof(ddl_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__ddlock(void)
{
    return PyModuleDef_Init(&module_def);
}
