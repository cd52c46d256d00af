/* ddlock exporter: a native background thread that periodically produces an
 * encoded profile and writes it to a file and/or uploads it with libcurl.
 *
 * Pure C: no Python.h, never calls Python, never needs the GIL. Everything
 * the exporter needs from the rest of ddlock comes through the produce and
 * log callbacks below, both called on the export thread (or on the thread
 * calling ddl_exporter_flush/stop), never with the GIL held.
 */
#ifndef DDLOCK_EXPORTER_H
#define DDLOCK_EXPORTER_H

#include <stddef.h>
#include <stdint.h>

#include "pprof.h"

/* Produce one export: fill *out with gzip pprof bytes and the interval it
 * covers. Return 0 on success, 1 when there is nothing to export (no file is
 * written, nothing uploaded), -1 on failure. */
typedef int (*ddl_produce_fn)(void *ctx, ddl_buf *out, int64_t *start_ns,
                              int64_t *end_ns);

enum {
    DDL_LOG_DEBUG = 10,
    DDL_LOG_INFO = 20,
    DDL_LOG_WARNING = 30,
    DDL_LOG_ERROR = 40
};

/* Log a message. kind is a short stable identifier of the kind of event
 * ("file-write", "upload-connect", "upload-http-4xx", "upload-http-5xx",
 * "upload-timeout", "export", "upload-ok", ...) so the receiver can log each
 * kind of failure once. msg never contains the API key. May be NULL. */
typedef void (*ddl_log_fn)(void *ctx, int level, const char *kind,
                           const char *msg);

/* The files one process wrote, oldest first: what max_files removes from.
 * Owned by the caller so that it spans start/stop/start in one process;
 * ddl_file_history_clear() in a forked child (the parent's files are not
 * the child's). Not thread-safe: only the running exporter touches it. */
typedef struct ddl_file_history ddl_file_history;
ddl_file_history *ddl_file_history_new(void);
void ddl_file_history_clear(ddl_file_history *h);
void ddl_file_history_free(ddl_file_history *h);

typedef struct {
    /* file output: "<prefix>.<pid>.<seq>.pprof", seq from 1, written via a
     * temp file in the same directory + rename; NULL or "" = no files */
    const char *output_prefix;
    unsigned file_mode; /* permissions of written files, e.g. 0600 */
    /* at most this many files of this process are kept: after each file
     * written, the oldest ones it wrote are removed (never another file);
     * 0 = no limit (and none remembered) */
    unsigned max_files;
    /* no file is written while it would leave less than this many bytes
     * available on the filesystem of the prefix's directory (statvfs);
     * 0 = no check */
    uint64_t min_free_bytes;
    /* where the files written are remembered (see ddl_file_history); NULL =
     * the exporter's own, forgotten at stop */
    ddl_file_history *history;

    double interval_s; /* seconds between periodic exports (> 0) */

    /* upload; upload_enabled = 0 turns it off entirely */
    int upload_enabled;
    const char *url;         /* full endpoint, e.g.
                                http://localhost:8126/profiling/v1/input */
    const char *unix_socket; /* NULL, or socket path (url then uses
                                http://localhost/...) */
    const char *api_key;     /* agentless only: sent as DD-API-KEY; never
                                logged, never in errors or stats */
    long timeout_ms;         /* whole-request timeout */
    int max_retries;         /* retries of connection errors/5xx (2) */
    const char *tags;        /* tags_profiler value "k:v,k:v" (JSON-escaped
                                by the exporter) */
    const char *version;     /* ddlock version for DD-EVP-ORIGIN-VERSION,
                                User-Agent and the event "internal" */
    const char *ca_file;     /* CA bundle for TLS verification; wins over
                                everything. NULL = $SSL_CERT_FILE and/or
                                $SSL_CERT_DIR when set, else the system
                                bundle found in the usual places (see
                                upload.c), else libcurl's default */

    /* Sequence numbers are per process, not per exporter: when not NULL,
     * *seq_store holds the last sequence number written (0 = none yet); the
     * exporter continues from it and updates it after each file, so a
     * start/stop/start in one process never overwrites a file. */
    uint64_t *seq_store;

    ddl_produce_fn produce;
    void *produce_ctx;
    ddl_log_fn log;
    void *log_ctx;
} ddl_exporter_config;

typedef struct ddl_exporter ddl_exporter;

/* Copies the config (strings included) and starts the export thread; returns
 * once the thread is parked waiting for work. Returns NULL on failure with a
 * static message in *err. */
ddl_exporter *ddl_exporter_start(const ddl_exporter_config *cfg,
                                 const char **err);

/* Export now (produce + write + upload) on the export thread and wait for it
 * to finish. If paths is not NULL, *paths receives a malloc'd, NULL-terminated
 * array of malloc'd paths written by this flush (free with
 * ddl_exporter_free_paths). Returns 0 on success (also when there was nothing
 * to export), -1 on failure. Safe to call from any thread except the export
 * thread. */
int ddl_exporter_flush(ddl_exporter *e, char ***paths);
void ddl_exporter_free_paths(char **paths);

/* Stop the thread. With final_export, one last export is done first; its
 * upload is bounded by timeout_ms (no retries beyond that bound). Frees e. */
void ddl_exporter_stop(ddl_exporter *e, int final_export);

typedef struct {
    uint64_t exports; /* produce calls that returned data */
    uint64_t files_written;
    uint64_t file_errors;
    uint64_t uploads_ok;
    uint64_t uploads_failed; /* requests that ended in failure after retries */
    uint64_t upload_retries;
    uint64_t bytes_written;
    uint64_t bytes_uploaded;
    uint64_t files_removed;          /* oldest files removed (max_files) */
    uint64_t files_skipped_low_disk; /* not written: below min_free_bytes */
    uint64_t uploads_skipped_retry_after; /* not sent: the agent's
                                             Retry-After had not passed */
    int last_http_status;                 /* 0 when none */
    char last_error[256]; /* "" when none; never contains the API key */
    char last_path[4096]; /* last file written, "" when none */
} ddl_exporter_stats;
void ddl_exporter_get_stats(ddl_exporter *e, ddl_exporter_stats *out);

/* The same, also copying the exporter's final counters (after the final
 * export) to *final_stats, so they outlive the exporter. */
void ddl_exporter_stop_stats(ddl_exporter *e, int final_export,
                             ddl_exporter_stats *final_stats);

/* fork() support. prepare: take the exporter's internal mutexes (called in
 * the forking thread before fork); parent: release them; child: the export
 * thread does not exist in the child: re-initialise mutexes and condition
 * variables, reset sequence numbers to 1 (files now use the child's pid),
 * drop the parent's curl state and start a fresh export thread (*seq_store,
 * when set, is reset to 0; the file history is cleared). Returns 0 on
 * success in the child. */
void ddl_exporter_fork_prepare(ddl_exporter *e);
void ddl_exporter_fork_parent(ddl_exporter *e);
int ddl_exporter_fork_child(ddl_exporter *e);

/* Build the multipart body parts, exposed for tests: event.json for an
 * export covering [start_ns, end_ns). Returns malloc'd NUL-terminated JSON. */
char *ddl_exporter_event_json(const char *tags, int64_t start_ns,
                              int64_t end_ns, const char *version);

/* The versions of the libraries the export side runs with: protobuf-c,
 * libcurl and zlib (static strings). */
typedef struct {
    const char *protobuf_c, *libcurl, *zlib;
} ddl_lib_versions;
void ddl_exporter_lib_versions(ddl_lib_versions *out);

#endif /* DDLOCK_EXPORTER_H */
