/* ddlock exporter: the background export thread, its schedule, flush and
 * stop, fork handling and the counters (see exporter.h for the contract).
 * Writing files is writer.c's, uploading upload.c's.
 *
 * Pure C11 + POSIX threads: never includes Python.h, never calls Python.
 * The threading model is described in export_internal.h.
 *
 * Bounding stop(). A transfer in flight when stop() is called ends by
 * stop + timeout_ms (see upload.c). As a last resort against a transfer
 * that ignores its timeout, stop() waits at most a grace period past the
 * deadline and then abandons a thread that is inside curl_easy_perform():
 * the thread frees the exporter itself when the transfer returns and never
 * calls a callback again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pprof.h"
#include "upload.h"
#include "writer.h"

/* How long stop() waits past its deadline before giving up on a transfer
 * that does not honour its own timeout. */
#define JOIN_GRACE_NS (2 * NS_PER_S)
#define MAX_RETRIES_CAP 10
/* Longer timeouts are clamped (keeps deadline arithmetic far from
 * overflow). */
#define MAX_TIMEOUT_MS (24L * 3600 * 1000)
#define DEFAULT_FILE_MODE 0600

/* ------------------------------------------------------------------ */
/* One export                                                           */

/* Produce a profile and send it to the configured outputs. Called without
 * mu. Returns 0 on success or when there was nothing to export, -1 when
 * something failed, EXPORT_ABANDONED (see ddl_upload()). */
static int
export_once(ddl_exporter *e, int is_final, char **path_out)
{
    ddl_buf buf = {NULL, 0};
    int64_t start_ns = 0, end_ns = 0;
    int rc, ret = 0;

    rc = e->produce(e->produce_ctx, &buf, &start_ns, &end_ns);
    if (rc != 0) {
        if (buf.data != NULL) {
            ddl_buf_free(&buf);
        }
        if (rc == 1) {
            return 0;
        }
        pthread_mutex_lock(&e->mu);
        ddl_ex_set_error_locked(e, "producing the profile failed");
        pthread_mutex_unlock(&e->mu);
        ddl_ex_log(e, DDL_LOG_WARNING, "export",
                   "producing the profile failed");
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    e->stats.exports++;
    pthread_mutex_unlock(&e->mu);
    if (end_ns <= 0) {
        end_ns = ddl_ex_wall_ns();
    }
    if (start_ns <= 0 || start_ns > end_ns) {
        start_ns = end_ns;
    }

    if (e->output_prefix != NULL && ddl_writer_write(e, &buf, path_out) < 0) {
        ret = -1;
    }
    if (e->upload_enabled) {
        rc = ddl_upload(e, &buf, start_ns, end_ns, is_final);
        if (rc == EXPORT_ABANDONED) {
            ret = EXPORT_ABANDONED;
        }
        else if (rc < 0) {
            ret = -1;
        }
    }
    ddl_buf_free(&buf);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Export thread                                                        */

/* Hand the result of a flush export to every caller waiting for a
 * generation up to target. Called with mu held; takes ownership of path. */
static void
publish_flush_locked(ddl_exporter *e, uint64_t target, int result, char *path)
{
    while (e->pickups > 0) {
        pthread_cond_wait(&e->done, &e->mu);
    }
    free(e->flush_path);
    e->flush_path = path;
    e->flush_result = result;
    e->pickups = target - e->flush_served;
    e->flush_served = target;
    pthread_cond_broadcast(&e->done);
}

static void exporter_free(ddl_exporter *e);

static void *
export_thread_main(void *arg)
{
    ddl_exporter *e = arg;
    char *path = NULL;
    uint64_t target;
    int64_t now;
    int is_flush, rc = -1;

#if defined(__GLIBC__)
    (void)pthread_setname_np(pthread_self(), "ddlock-export");
#endif
    pthread_mutex_lock(&e->mu);
    if (!e->parked) {
        /* start() and fork_child() wait for this: a thread still setting
         * itself up (allocating) when the host forks is avoided */
        e->parked = 1;
        pthread_cond_broadcast(&e->done);
    }
    for (;;) {
        while (!e->stopping && e->flush_requested == e->flush_served &&
               ddl_ex_mono_ns() < e->next_export_ns) {
            ddl_ex_timedwait(&e->wake, &e->mu, e->next_export_ns);
        }
        if (e->stopping) {
            break;
        }
        target = e->flush_requested;
        is_flush = target != e->flush_served;
        e->phase = PHASE_BUSY;
        pthread_mutex_unlock(&e->mu);

        path = NULL;
        rc = export_once(e, 0, &path);

        pthread_mutex_lock(&e->mu);
        e->phase = PHASE_IDLE;
        if (rc == EXPORT_ABANDONED) {
            goto abandoned;
        }
        if (is_flush) {
            publish_flush_locked(e, target, rc, path);
            path = NULL;
        }
        else {
            free(path);
            path = NULL;
            now = ddl_ex_mono_ns();
            e->next_export_ns += e->interval_ns;
            if (e->next_export_ns <= now) {
                e->next_export_ns = now + e->interval_ns;
            }
        }
    }

    /* stopping */
    rc = -1;
    path = NULL;
    if (e->final_export) {
        e->phase = PHASE_BUSY;
        pthread_mutex_unlock(&e->mu);
        rc = export_once(e, 1, &path);
        pthread_mutex_lock(&e->mu);
        e->phase = PHASE_IDLE;
        if (rc == EXPORT_ABANDONED) {
            goto abandoned;
        }
    }
    /* answer flush callers that raced with stop(), then let them all
     * collect their result before stop() frees the exporter */
    if (e->flush_requested != e->flush_served) {
        publish_flush_locked(e, e->flush_requested, rc, path);
        path = NULL;
    }
    while (e->pickups > 0) {
        pthread_cond_wait(&e->done, &e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    free(path);
    return NULL;

abandoned:
    /* stop() returned without us: nobody else references e any more */
    pthread_mutex_unlock(&e->mu);
    free(path);
    exporter_free(e);
    return NULL;
}

static int
start_thread(ddl_exporter *e)
{
    sigset_t all, old;
    int rc;

    /* The export thread takes no asynchronous signals: they belong to the
     * host program's threads. A blocked SIGXFSZ also makes an oversized
     * write() fail with EFBIG instead of killing the process. */
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_mutex_lock(&e->mu);
    e->parked = 0;
    pthread_mutex_unlock(&e->mu);
    rc = pthread_create(&e->thread, NULL, export_thread_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    e->thread_running = 1;
    while (!e->parked) {
        pthread_cond_wait(&e->done, &e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

/* Join the export thread, waiting at most a grace period past the stop
 * deadline while it is inside a transfer. Returns 0 when joined, -1 when
 * the thread was abandoned (it frees e itself). */
static int
join_export_thread(ddl_exporter *e)
{
#if defined(__GLIBC__)
    int64_t limit, left;
    struct timespec abs;
    int rc;

    pthread_mutex_lock(&e->mu);
    limit = e->stop_deadline_ns + JOIN_GRACE_NS;
    pthread_mutex_unlock(&e->mu);
    for (;;) {
        left = limit - ddl_ex_mono_ns();
        abs = ddl_ex_timespec(ddl_ex_wall_ns() + (left > 0 ? left : 0));
        rc = pthread_timedjoin_np(e->thread, NULL, &abs);
        if (rc == 0) {
            return 0;
        }
        if (rc != ETIMEDOUT) {
            break;
        }
        pthread_mutex_lock(&e->mu);
        if (e->phase == PHASE_UPLOAD) {
            e->abandoned = 1;
            ddl_upload_shutdown_locked(e);
            pthread_mutex_unlock(&e->mu);
            ddl_ex_log(e, DDL_LOG_WARNING, "export",
                       "upload did not finish in time; leaving it behind");
            pthread_detach(e->thread);
            return -1;
        }
        pthread_mutex_unlock(&e->mu);
        /* producing or writing a file: that finishes on its own */
        limit = ddl_ex_mono_ns() + JOIN_GRACE_NS;
    }
#endif
    pthread_join(e->thread, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */

static int
init_sync(ddl_exporter *e)
{
    pthread_condattr_t attr;
    int ok;

    if (pthread_condattr_init(&attr) != 0) {
        return -1;
    }
    ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0;
    if (ok && pthread_mutex_init(&e->mu, NULL) != 0) {
        ok = 0;
    }
    else if (ok && pthread_cond_init(&e->wake, &attr) != 0) {
        pthread_mutex_destroy(&e->mu);
        ok = 0;
    }
    else if (ok && pthread_cond_init(&e->done, NULL) != 0) {
        pthread_cond_destroy(&e->wake);
        pthread_mutex_destroy(&e->mu);
        ok = 0;
    }
    pthread_condattr_destroy(&attr);
    return ok ? 0 : -1;
}

static void
exporter_free(ddl_exporter *e)
{
    if (e == NULL) {
        return;
    }
    if (e->sync_ready) {
        pthread_cond_destroy(&e->done);
        pthread_cond_destroy(&e->wake);
        pthread_mutex_destroy(&e->mu);
    }
    ddl_upload_free(e);
    ddl_file_history_free(e->own_history);
    free(e->flush_path);
    free(e->output_prefix);
    free(e->tags);
    free(e->version);
    free(e);
}

ddl_exporter *
ddl_exporter_start(const ddl_exporter_config *cfg, const char **err)
{
    ddl_exporter *e = NULL;
    const char *msg = "out of memory", *bad;
    int i;

    if (err != NULL) {
        *err = NULL;
    }
    if (cfg == NULL || cfg->produce == NULL) {
        msg = "exporter needs a produce callback";
        goto error;
    }
    if (!(cfg->interval_s > 0.0 && cfg->interval_s < 1e9)) {
        msg = "export interval must be a positive number of seconds";
        goto error;
    }
    if (cfg->upload_enabled && (bad = ddl_upload_check_config(cfg)) != NULL) {
        msg = bad;
        goto error;
    }

    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        goto error;
    }
    for (i = 0; i < MAX_SOCKETS; i++) {
        e->sockets[i] = -1;
    }
    e->file_mode =
        cfg->file_mode ? (cfg->file_mode & 0777) : DEFAULT_FILE_MODE;
    e->interval_ns = (int64_t)(cfg->interval_s * (double)NS_PER_S);
    if (e->interval_ns < NS_PER_MS) {
        e->interval_ns = NS_PER_MS;
    }
    e->upload_enabled = cfg->upload_enabled ? 1 : 0;
    e->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 10000;
    if (e->timeout_ms > MAX_TIMEOUT_MS) {
        e->timeout_ms = MAX_TIMEOUT_MS;
    }
    e->max_retries = cfg->max_retries < 0 ? 0 : cfg->max_retries;
    if (e->max_retries > MAX_RETRIES_CAP) {
        e->max_retries = MAX_RETRIES_CAP;
    }
    e->seq_store = cfg->seq_store;
    if (e->seq_store != NULL) {
        e->seq = __atomic_load_n(e->seq_store, __ATOMIC_RELAXED);
    }
    e->max_files = cfg->max_files;
    e->min_free_bytes = cfg->min_free_bytes;
    e->history = cfg->history;
    if (e->history == NULL) {
        e->history = e->own_history = ddl_file_history_new();
        if (e->history == NULL) {
            goto error;
        }
    }
    e->produce = cfg->produce;
    e->produce_ctx = cfg->produce_ctx;
    e->log = cfg->log;
    e->log_ctx = cfg->log_ctx;

    if (ddl_ex_copy_optional(&e->output_prefix, cfg->output_prefix) < 0) {
        goto error;
    }
    e->tags = strdup(cfg->tags ? cfg->tags : "");
    e->version = strdup(cfg->version ? cfg->version : "unknown");
    if (e->tags == NULL || e->version == NULL) {
        goto error;
    }
    if (e->upload_enabled && ddl_upload_configure(e, cfg) < 0) {
        goto error;
    }

    if (init_sync(e) < 0) {
        msg = "cannot initialise exporter locks";
        goto error;
    }
    e->sync_ready = 1;
    e->next_export_ns = ddl_ex_mono_ns() + e->interval_ns;
    if (start_thread(e) < 0) {
        msg = "cannot start the export thread";
        goto error;
    }
    return e;

error:
    exporter_free(e);
    if (err != NULL) {
        *err = msg;
    }
    return NULL;
}

/* A NULL-terminated array holding a copy of path (or nothing). */
static char **
make_paths(const char *path)
{
    char **paths = calloc(2, sizeof(char *));

    if (paths == NULL) {
        return NULL;
    }
    if (path != NULL && (paths[0] = strdup(path)) == NULL) {
        free(paths);
        return NULL;
    }
    return paths;
}

int
ddl_exporter_flush(ddl_exporter *e, char ***paths)
{
    uint64_t gen;
    int result;

    if (paths != NULL) {
        *paths = NULL;
    }
    if (e == NULL) {
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    if (!e->thread_running || e->stopping ||
        pthread_equal(pthread_self(), e->thread)) {
        pthread_mutex_unlock(&e->mu);
        if (paths != NULL) {
            *paths = make_paths(NULL);
        }
        return -1;
    }
    gen = ++e->flush_requested;
    pthread_cond_signal(&e->wake);
    while (e->flush_served < gen) {
        pthread_cond_wait(&e->done, &e->mu);
    }
    result = e->flush_result;
    if (paths != NULL) {
        *paths = make_paths(e->flush_path);
        if (*paths == NULL) {
            result = -1;
        }
    }
    if (--e->pickups == 0) {
        free(e->flush_path);
        e->flush_path = NULL;
        pthread_cond_broadcast(&e->done);
    }
    pthread_mutex_unlock(&e->mu);
    return result;
}

void
ddl_exporter_free_paths(char **paths)
{
    size_t i;

    if (paths == NULL) {
        return;
    }
    for (i = 0; paths[i] != NULL; i++) {
        free(paths[i]);
    }
    free(paths);
}

void
ddl_exporter_stop_stats(ddl_exporter *e, int final_export,
                        ddl_exporter_stats *final_stats)
{
    int running;
    char *path = NULL;

    if (e == NULL) {
        return;
    }
    pthread_mutex_lock(&e->mu);
    running = e->thread_running;
    e->stopping = 1;
    e->final_export = final_export ? 1 : 0;
    e->stop_deadline_ns =
        ddl_ex_mono_ns() + (final_export ? e->timeout_ms * NS_PER_MS : 0);
    if (!final_export) {
        ddl_upload_shutdown_locked(e);
    }
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);

    if (running && pthread_equal(pthread_self(), e->thread)) {
        /* called from a callback on the export thread: it cannot join
         * itself; it stops after this export and e is leaked */
        return;
    }
    if (final_stats != NULL) {
        /* what is known now, in case the thread has to be abandoned */
        ddl_exporter_get_stats(e, final_stats);
    }
    if (running) {
        if (join_export_thread(e) < 0) {
            return; /* abandoned: the export thread frees e */
        }
    }
    else if (final_export) {
        /* no thread (it could not be restarted after fork): export here */
        (void)export_once(e, 1, &path);
        free(path);
    }
    if (final_stats != NULL) {
        *final_stats = e->stats; /* the thread is gone: no lock needed */
    }
    exporter_free(e);
}

void
ddl_exporter_stop(ddl_exporter *e, int final_export)
{
    ddl_exporter_stop_stats(e, final_export, NULL);
}

void
ddl_exporter_get_stats(ddl_exporter *e, ddl_exporter_stats *out)
{
    if (e == NULL) {
        memset(out, 0, sizeof(*out));
        return;
    }
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->mu);
}

void
ddl_exporter_fork_prepare(ddl_exporter *e)
{
    if (e != NULL) {
        pthread_mutex_lock(&e->mu);
    }
}

void
ddl_exporter_fork_parent(ddl_exporter *e)
{
    if (e != NULL) {
        pthread_mutex_unlock(&e->mu);
    }
}

int
ddl_exporter_fork_child(ddl_exporter *e)
{
    int was_stopping;

    if (e == NULL) {
        return -1;
    }
    /* Only the forking thread exists: the mutex it took in prepare and the
     * condition variables other parent threads waited on are re-created. */
    pthread_mutex_init(&e->mu, NULL);
    {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&e->wake, &attr);
        pthread_condattr_destroy(&attr);
    }
    pthread_cond_init(&e->done, NULL);

    ddl_upload_fork_child(e);
    was_stopping = e->stopping;
    e->thread_running = 0;
    e->abandoned = 0;
    e->phase = PHASE_IDLE;
    e->flush_requested = 0;
    e->flush_served = 0;
    e->pickups = 0;
    e->flush_result = 0;
    free(e->flush_path);
    e->flush_path = NULL;
    e->seq = 0;
    if (e->seq_store != NULL) {
        __atomic_store_n(e->seq_store, 0, __ATOMIC_RELAXED);
    }
    /* the parent's files are not the child's to remove */
    ddl_file_history_clear(e->history);
    e->disk_low = 0;
    memset(&e->stats, 0, sizeof(e->stats));
    e->next_export_ns = ddl_ex_mono_ns() + e->interval_ns;
    if (was_stopping) {
        /* forked while the parent was stopping this exporter */
        return -1;
    }
    return start_thread(e);
}

void
ddl_exporter_lib_versions(ddl_lib_versions *out)
{
    out->protobuf_c = ddl_pprof_protobuf_c_version();
    out->libcurl = ddl_upload_curl_version();
    out->zlib = ddl_pprof_zlib_version();
}
