/* ddlock exporter internals shared by export.c, writer.c, upload.c,
 * event.c and export_util.c: the exporter's state and the helpers all of
 * them use.
 *
 * Pure C: no Python.h. Calls go one way: export.c uses writer.c and
 * upload.c; upload.c uses event.c; all of them use export_util.c; nothing
 * below calls back up.
 *
 * Threading model. One mutex (mu) protects every mutable field below the
 * "shared state" marker. It is only ever held for short bookkeeping, never
 * across a callback, a file write or a transfer, so fork_prepare() can take
 * it without waiting on I/O. The export thread sleeps on `wake` (a
 * CLOCK_MONOTONIC condition variable) until the next periodic export, a
 * flush request or stop; flush callers sleep on `done` until the generation
 * they asked for has been served.
 */
#ifndef DDLOCK_EXPORT_INTERNAL_H
#define DDLOCK_EXPORT_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "exporter.h"

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)

/* Sockets of one transfer we may need to shut down (happy eyeballs opens
 * one per address family). */
#define MAX_SOCKETS 4

/* Return value of export_once()/ddl_upload() when stop() abandoned the
 * thread. */
#define EXPORT_ABANDONED 2

enum {
    PHASE_IDLE = 0,   /* waiting for work */
    PHASE_BUSY = 1,   /* producing, writing, logging: stop() waits for it */
    PHASE_UPLOAD = 2, /* inside curl_easy_perform(): stop() may abandon */
};

struct ddl_exporter {
    /* Configuration, copied at start and immutable afterwards. */
    char *output_prefix; /* NULL = no files */
    unsigned file_mode;
    unsigned max_files;      /* 0 = no limit */
    uint64_t min_free_bytes; /* 0 = no check */
    int64_t interval_ns;
    int upload_enabled;
    char *url;
    char *unix_socket; /* NULL = TCP */
    char *api_key;     /* NULL = none; wiped on free */
    char *tags;
    char *version;
    char *ca_file;    /* CURLOPT_CAINFO, NULL = libcurl's default */
    char *ca_path;    /* CURLOPT_CAPATH, NULL = libcurl's default */
    char *user_agent; /* "ddlock/<version>" */
    char *noproxy;    /* no_proxy from the environment + loopback */
    char *shown_url;  /* where uploads go, as messages may show it:
                         credentials and query values redacted */
    long timeout_ms;
    int max_retries;
    ddl_produce_fn produce;
    void *produce_ctx;
    ddl_log_fn log;
    void *log_ctx;

    /* Used only by the thread that exports (the export thread, or the
     * caller of stop() when no thread runs). */
    void *curl;   /* the uploader's CURL handle, created lazily, reused */
    int disk_low; /* the last file was not written for want of space */
    /* monotonic time before which no upload may start (the agent's
     * Retry-After), 0 = none */
    int64_t upload_not_before_ns;

    int sync_ready; /* mu, wake and done are initialised */
    pthread_mutex_t mu;
    pthread_cond_t wake; /* export thread waits here (CLOCK_MONOTONIC) */
    pthread_cond_t done; /* flush callers wait here */
    pthread_t thread;

    /* Shared state, protected by mu. */
    int thread_running; /* created and not yet joined or abandoned */
    int stopping;
    int final_export;
    int abandoned;
    int phase;
    int64_t stop_deadline_ns; /* monotonic, valid when stopping */
    int64_t next_export_ns;   /* monotonic time of the next periodic export */
    uint64_t flush_requested; /* generations asked for by flush callers */
    uint64_t flush_served;    /* generations whose result is published */
    uint64_t pickups;         /* callers yet to collect the published result */
    int flush_result;
    char *flush_path; /* file written by the published flush, or NULL */
    int sockets[MAX_SOCKETS];  /* sockets of the transfer in flight, or -1 */
    uint64_t seq;              /* sequence number of the last file written */
    uint64_t *seq_store;       /* process-wide copy of seq, or NULL */
    ddl_file_history *history; /* files written (max_files), or NULL */
    ddl_file_history *own_history; /* history when the caller gave none */
    int parked;                    /* the thread has reached its wait loop */
    ddl_exporter_stats stats;
};

/* ---- export_util.c ---------------------------------------------------- */

int64_t ddl_ex_mono_ns(void);
int64_t ddl_ex_wall_ns(void);
struct timespec ddl_ex_timespec(int64_t ns);

/* Wait on cond (a CLOCK_MONOTONIC condition variable) until abs_ns at most.
 * Called with mu held. */
void ddl_ex_timedwait(pthread_cond_t *cond, pthread_mutex_t *mu,
                      int64_t abs_ns);

/* *dst = copy of src, or NULL when src is NULL or "". -1 when out of
 * memory. */
int ddl_ex_copy_optional(char **dst, const char *src);

/* Overwrite memory in a way the compiler may not drop. */
void ddl_ex_wipe(void *p, size_t n);
void ddl_ex_free_secret(char *s);

/* printf into a new malloc'd string, NULL on failure. */
char *ddl_ex_format(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* Thread-safe strerror into buf. */
const char *ddl_ex_strerror(int err, char *buf, size_t size);

/* A growing NUL-terminated string; after an allocation failure `failed`
 * is set and appends do nothing. Start from {NULL, 0, 0, 0}; free(p). */
typedef struct {
    char *p;
    size_t len;
    size_t cap;
    int failed;
} ddl_strbuf;
void ddl_ex_sb_append(ddl_strbuf *sb, const char *s, size_t n);
void ddl_ex_sb_puts(ddl_strbuf *sb, const char *s);

/* Log through the configured callback. Never called with mu held. */
void ddl_ex_log(ddl_exporter *e, int level, const char *kind, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));

/* Record msg as last_error. Called with mu held. */
void ddl_ex_set_error_locked(ddl_exporter *e, const char *msg);

#endif /* DDLOCK_EXPORT_INTERNAL_H */
