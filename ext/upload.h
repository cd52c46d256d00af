/* ddlock uploader: one profile POSTed with libcurl as the agent's (or the
 * intake's) multipart request, with retries bounded by the export interval
 * and by stop(). Pure C (no Python.h); used by export.c only. The curl
 * handle and every upload setting live in the ddl_exporter. */
#ifndef DDLOCK_UPLOAD_H
#define DDLOCK_UPLOAD_H

#include "export_internal.h"

/* libcurl's global initialisation, once per process. 0 or -1. */
int ddl_upload_global_init(void);

/* The libcurl version this build runs with (a static string). */
const char *ddl_upload_curl_version(void);

/* Why cfg's upload settings cannot be used (a static message), or NULL. */
const char *ddl_upload_check_config(const ddl_exporter_config *cfg);

/* Copy cfg's upload settings into e. 0, or -1 when out of memory. */
int ddl_upload_configure(ddl_exporter *e, const ddl_exporter_config *cfg);

/* Upload one profile, with retries. Returns 0 on success, -1 on failure,
 * EXPORT_ABANDONED when stop() gave up on this thread mid-transfer (then
 * nothing else may be touched but e's own memory). Called without mu. */
int ddl_upload(ddl_exporter *e, const ddl_buf *buf, int64_t start_ns,
               int64_t end_ns, int is_final);

/* Interrupt the transfer in flight, if any. Called with mu held. */
void ddl_upload_shutdown_locked(ddl_exporter *e);

/* In a forked child: leave the parent's curl handle alone and close the
 * child's copies of the transfer's sockets. */
void ddl_upload_fork_child(ddl_exporter *e);

/* url as messages and stats may show it: "user:password@" becomes "***@",
 * every query value "***" ("?token=***&flag" -> "?token=***&***"), the
 * fragment is dropped. malloc'd; NULL when out of memory. */
char *ddl_upload_redact_url(const char *url);

/* The first of files that is a readable regular file, else the first of
 * dirs that is a directory (then *is_dir = 1); NULL when none is. Both
 * lists end with NULL. How the system's CA certificates are found. */
const char *ddl_upload_pick_ca(const char *const *files,
                               const char *const *dirs, int *is_dir);

/* Free the curl handle and the upload settings (the API key wiped). */
void ddl_upload_free(ddl_exporter *e);

#endif /* DDLOCK_UPLOAD_H */
