/* ddlock uploader (see upload.h): the multipart body (event.json from
 * event.c), the headers, one libcurl transfer per attempt, the
 * classification of its outcome, the retries with backoff and Retry-After,
 * the upload settings (URL shown redacted, CA certificates).
 *
 * Pure C11 + POSIX threads + libcurl: never includes Python.h, never calls
 * Python.
 *
 * Bounding stop(). Every transfer has CURLOPT_TIMEOUT_MS, so a transfer in
 * flight when stop() is called ends by stop + timeout_ms; retries and the
 * final upload only use what is left of that budget. stop(e, 0) aborts a
 * transfer in flight at once (shutdown() of its sockets plus the progress
 * callback).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "upload.h"

/* Retry backoff: 100 ms, 300 ms, 900 ms, then 1 s. */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 1000
/* A retry is only worth starting with at least this much time left. */
#define RETRY_MIN_ATTEMPT_NS (50 * NS_PER_MS)
/* A longer Retry-After is taken as this (a wrong or hostile agent cannot
 * turn uploads off for longer). */
#define MAX_RETRY_AFTER_S 3600

/* 1 when s contains a byte that must not appear in an HTTP header value. */
static int
has_control_chars(const char *s)
{
    if (s == NULL) {
        return 0;
    }
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) {
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Transfers                                                            */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;
/* The parent's curl handle, deliberately leaked in a forked child (see
 * ddl_exporter_fork_child); kept reachable so leak checkers do not flag it.
 * Only the most recent one is kept. */
static CURL *curl_left_by_fork;

static void
curl_global_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

const char *
ddl_upload_curl_version(void)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    return v != NULL && v->version != NULL ? v->version : "unknown";
}

int
ddl_upload_global_init(void)
{
    pthread_once(&curl_once, curl_global_init_once);
    return curl_init_result == CURLE_OK ? 0 : -1;
}

static size_t
discard_body_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    (void)ptr;
    (void)userdata;
    return size * nmemb;
}

/* Abort the transfer when stop() discards it or gave up on this thread. */
static int
progress_cb(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
            curl_off_t ultotal, curl_off_t ulnow)
{
    ddl_exporter *e = clientp;
    int abort_transfer;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    pthread_mutex_lock(&e->mu);
    abort_transfer = e->abandoned || (e->stopping && !e->final_export);
    pthread_mutex_unlock(&e->mu);
    return abort_transfer;
}

/* Open the transfer's sockets ourselves: close-on-exec, and remembered so
 * stop() can shut them down to interrupt a transfer at once. */
static curl_socket_t
open_socket_cb(void *clientp, curlsocktype purpose,
               struct curl_sockaddr *address)
{
    ddl_exporter *e = clientp;
    int fd, i, abort_now;

    (void)purpose;
#ifdef SOCK_CLOEXEC
    fd = socket(address->family, address->socktype | SOCK_CLOEXEC,
                address->protocol);
#else
    fd = socket(address->family, address->socktype, address->protocol);
    if (fd >= 0) {
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
#endif
    if (fd < 0) {
        return CURL_SOCKET_BAD;
    }
    pthread_mutex_lock(&e->mu);
    for (i = 0; i < MAX_SOCKETS; i++) {
        if (e->sockets[i] < 0) {
            e->sockets[i] = fd;
            break;
        }
    }
    abort_now = e->abandoned || (e->stopping && !e->final_export);
    pthread_mutex_unlock(&e->mu);
    if (abort_now) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    return fd;
}

static int
close_socket_cb(void *clientp, curl_socket_t fd)
{
    ddl_exporter *e = clientp;
    int i;

    pthread_mutex_lock(&e->mu);
    for (i = 0; i < MAX_SOCKETS; i++) {
        if (e->sockets[i] == fd) {
            e->sockets[i] = -1;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return close(fd);
}

void
ddl_upload_shutdown_locked(ddl_exporter *e)
{
    int i;

    for (i = 0; i < MAX_SOCKETS; i++) {
        if (e->sockets[i] >= 0) {
            (void)shutdown(e->sockets[i], SHUT_RDWR);
        }
    }
}

static int
append_header(struct curl_slist **list, const char *name, const char *value)
{
    struct curl_slist *tmp;
    char *line = ddl_ex_format("%s: %s", name, value);

    if (line == NULL) {
        return -1;
    }
    tmp = curl_slist_append(*list, line);
    ddl_ex_wipe(line, strlen(line)); /* may hold the API key */
    free(line);
    if (tmp == NULL) {
        return -1;
    }
    *list = tmp;
    return 0;
}

static struct curl_slist *
build_headers(const ddl_exporter *e)
{
    struct curl_slist *list = NULL, *tmp;

    if (append_header(&list, "DD-EVP-ORIGIN", "ddlock") < 0 ||
        append_header(&list, "DD-EVP-ORIGIN-VERSION", e->version) < 0 ||
        append_header(&list, "Connection", "close") < 0) {
        goto error;
    }
    /* no "Expect: 100-continue" round trip for large bodies */
    tmp = curl_slist_append(list, "Expect:");
    if (tmp == NULL) {
        goto error;
    }
    list = tmp;
    if (e->api_key != NULL &&
        append_header(&list, "DD-API-KEY", e->api_key) < 0) {
        goto error;
    }
    return list;

error:
    curl_slist_free_all(list);
    return NULL;
}

static curl_mime *
build_mime(CURL *curl, const char *event_json, const ddl_buf *buf)
{
    curl_mime *mime = curl_mime_init(curl);
    curl_mimepart *part;
    static const char empty[1] = {0};

    if (mime == NULL) {
        return NULL;
    }
    part = curl_mime_addpart(mime);
    if (part == NULL || curl_mime_name(part, "event") != CURLE_OK ||
        curl_mime_filename(part, "event.json") != CURLE_OK ||
        curl_mime_type(part, "application/json") != CURLE_OK ||
        curl_mime_data(part, event_json, CURL_ZERO_TERMINATED) != CURLE_OK) {
        goto error;
    }
    part = curl_mime_addpart(mime);
    if (part == NULL || curl_mime_name(part, "profile.pprof") != CURLE_OK ||
        curl_mime_filename(part, "profile.pprof") != CURLE_OK ||
        curl_mime_type(part, "application/octet-stream") != CURLE_OK ||
        curl_mime_data(part, buf->len > 0 ? (const char *)buf->data : empty,
                       buf->len) != CURLE_OK) {
        goto error;
    }
    return mime;

error:
    curl_mime_free(mime);
    return NULL;
}

#define SETOPT(curl, opt, val)                                                \
    do {                                                                      \
        if (curl_easy_setopt((curl), (opt), (val)) != CURLE_OK) {             \
            goto error;                                                       \
        }                                                                     \
    } while (0)

/* Configure e->curl for one attempt. Returns 0, or -1 when an option was
 * refused (e.g. libcurl built without unix socket support). */
static int
setup_request(ddl_exporter *e, curl_mime *mime, struct curl_slist *headers,
              long attempt_timeout_ms)
{
    CURL *c = e->curl;

    curl_easy_reset(c);
    SETOPT(c, CURLOPT_URL, e->url);
    SETOPT(c, CURLOPT_MIMEPOST, mime);
    SETOPT(c, CURLOPT_HTTPHEADER, headers);
    SETOPT(c, CURLOPT_USERAGENT, e->user_agent);
    SETOPT(c, CURLOPT_NOSIGNAL, 1L);
    SETOPT(c, CURLOPT_TIMEOUT_MS, attempt_timeout_ms);
    SETOPT(c, CURLOPT_CONNECTTIMEOUT_MS, attempt_timeout_ms);
    SETOPT(c, CURLOPT_FOLLOWLOCATION, 0L);
    /* HTTP/1.1 even over TLS: one request per connection, as the agent and
     * the intake expect ("Connection: close") */
    SETOPT(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SETOPT(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SETOPT(c, CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (e->ca_file != NULL) {
        SETOPT(c, CURLOPT_CAINFO, e->ca_file);
    }
    if (e->ca_path != NULL) {
        SETOPT(c, CURLOPT_CAPATH, e->ca_path);
    }
    if (e->unix_socket != NULL) {
        SETOPT(c, CURLOPT_UNIX_SOCKET_PATH, e->unix_socket);
    }
    if (e->noproxy != NULL) {
        SETOPT(c, CURLOPT_NOPROXY, e->noproxy);
    }
    SETOPT(c, CURLOPT_FORBID_REUSE, 1L);
    SETOPT(c, CURLOPT_WRITEFUNCTION, discard_body_cb);
    SETOPT(c, CURLOPT_NOPROGRESS, 0L);
    SETOPT(c, CURLOPT_XFERINFOFUNCTION, progress_cb);
    SETOPT(c, CURLOPT_XFERINFODATA, (void *)e);
    SETOPT(c, CURLOPT_OPENSOCKETFUNCTION, open_socket_cb);
    SETOPT(c, CURLOPT_OPENSOCKETDATA, (void *)e);
    SETOPT(c, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb);
    SETOPT(c, CURLOPT_CLOSESOCKETDATA, (void *)e);
    return 0;

error:
    return -1;
}

#undef SETOPT

typedef struct {
    int ok;
    int retryable;
    const char *kind;
} attempt_outcome;

static attempt_outcome
classify(CURLcode rc, long status)
{
    attempt_outcome o = {0, 0, "upload-error"};

    if (rc == CURLE_OK) {
        if (status >= 200 && status < 300) {
            o.ok = 1;
            o.kind = "upload-ok";
        }
        else if (status >= 500 && status < 600) {
            o.retryable = 1;
            o.kind = "upload-http-5xx";
        }
        else if (status >= 400 && status < 500) {
            /* 429 Too Many Requests: later, not never */
            o.retryable = status == 429;
            o.kind = "upload-http-4xx";
        }
        return o;
    }
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        o.retryable = 1;
        o.kind = "upload-connect";
        break;
    case CURLE_OPERATION_TIMEDOUT:
        o.retryable = 1;
        o.kind = "upload-timeout";
        break;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        /* the connection dropped mid-request */
        o.retryable = 1;
        break;
    default:
        break;
    }
    return o;
}

/* Time budget for attempt number `attempt` (0 = first) of an upload that
 * started at started_ns. Returns the attempt's timeout in ms, or 0 when no
 * attempt may be made. Retries must end before the next interval and, once
 * stop() was called, before its deadline (and only for the final export). */
static long
attempt_budget_ms(ddl_exporter *e, int attempt, int64_t started_ns,
                  int is_final)
{
    int64_t now = ddl_ex_mono_ns(), limit = INT64_MAX, left;
    long timeout_ms = e->timeout_ms;

    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        if (!e->final_export || e->abandoned || (attempt > 0 && !is_final)) {
            pthread_mutex_unlock(&e->mu);
            return 0;
        }
        limit = e->stop_deadline_ns;
    }
    pthread_mutex_unlock(&e->mu);
    if (attempt > 0 && started_ns + e->interval_ns < limit) {
        limit = started_ns + e->interval_ns;
    }
    if (limit == INT64_MAX) {
        return timeout_ms;
    }
    left = limit - now;
    if (left <= 0 || (attempt > 0 && left < RETRY_MIN_ATTEMPT_NS)) {
        return 0;
    }
    if (left / NS_PER_MS < timeout_ms) {
        timeout_ms = (long)(left / NS_PER_MS);
        if (timeout_ms < 1) {
            timeout_ms = 1;
        }
    }
    return timeout_ms;
}

/* Sleep before retry number `retry` (1-based). Returns 1 after sleeping, 0
 * when the retry would end past its limit or stop() interrupted. */
static int
backoff_wait(ddl_exporter *e, int retry, int64_t started_ns, int is_final)
{
    int64_t delay_ms = BACKOFF_FIRST_MS, wake_at, limit;
    int i, slept = 0;

    for (i = 1; i < retry && delay_ms < BACKOFF_MAX_MS; i++) {
        delay_ms *= 3;
    }
    if (delay_ms > BACKOFF_MAX_MS) {
        delay_ms = BACKOFF_MAX_MS;
    }
    wake_at = ddl_ex_mono_ns() + delay_ms * NS_PER_MS;
    if (wake_at < e->upload_not_before_ns) {
        wake_at = e->upload_not_before_ns; /* the agent's Retry-After */
    }

    pthread_mutex_lock(&e->mu);
    for (;;) {
        limit = started_ns + e->interval_ns;
        if (e->stopping) {
            if (!e->final_export || e->abandoned || !is_final) {
                break;
            }
            if (e->stop_deadline_ns < limit) {
                limit = e->stop_deadline_ns;
            }
        }
        if (wake_at + RETRY_MIN_ATTEMPT_NS > limit) {
            break;
        }
        if (ddl_ex_mono_ns() >= wake_at) {
            slept = 1;
            break;
        }
        ddl_ex_timedwait(&e->wake, &e->mu, wake_at);
    }
    pthread_mutex_unlock(&e->mu);
    return slept;
}

/* After a 429 or 503: the agent's Retry-After (seconds or an HTTP date,
 * as libcurl reads it) becomes the time before which no upload starts.
 * Returns it in seconds, 0 when there is none. */
static long
note_retry_after(ddl_exporter *e)
{
#if LIBCURL_VERSION_NUM >= 0x074200
    curl_off_t secs = 0;

    if (curl_easy_getinfo(e->curl, CURLINFO_RETRY_AFTER, &secs) != CURLE_OK ||
        secs <= 0) {
        return 0;
    }
    if (secs > MAX_RETRY_AFTER_S) {
        secs = MAX_RETRY_AFTER_S;
    }
    e->upload_not_before_ns = ddl_ex_mono_ns() + (int64_t)secs * NS_PER_S;
    return (long)secs;
#else
    (void)e;
    return 0; /* libcurl < 7.66 does not read Retry-After */
#endif
}

/* 1 when the agent's Retry-After has not passed: the upload is skipped
 * (counted, logged at debug level). */
static int
skip_for_retry_after(ddl_exporter *e)
{
    int64_t left = e->upload_not_before_ns - ddl_ex_mono_ns();

    if (left <= 0) {
        return 0;
    }
    pthread_mutex_lock(&e->mu);
    e->stats.uploads_skipped_retry_after++;
    pthread_mutex_unlock(&e->mu);
    ddl_ex_log(e, DDL_LOG_DEBUG, "upload-retry-after",
               "upload skipped: the agent asked to wait %lld s more "
               "(Retry-After)",
               (long long)((left + NS_PER_S - 1) / NS_PER_S));
    return 1;
}

int
ddl_upload(ddl_exporter *e, const ddl_buf *buf, int64_t start_ns,
           int64_t end_ns, int is_final)
{
    char *json = NULL;
    curl_mime *mime = NULL;
    struct curl_slist *headers = NULL;
    attempt_outcome outcome = {0, 0, "upload-error"};
    CURLcode rc = CURLE_OK;
    long status = 0, timeout_ms;
    int64_t started_ns = ddl_ex_mono_ns();
    int attempt = 0, ret = -1, abandoned, discarded = 0;
    long retry_after_s;
    char msg[sizeof(e->stats.last_error)];

    msg[0] = '\0';
    if (skip_for_retry_after(e)) {
        return -1;
    }
    if (e->curl == NULL) {
        if (ddl_upload_global_init() < 0 ||
            (e->curl = curl_easy_init()) == NULL) {
            snprintf(msg, sizeof(msg),
                     "upload failed: cannot initialise libcurl");
            goto done;
        }
    }
    json = ddl_exporter_event_json(e->tags, start_ns, end_ns, e->version);
    headers = json ? build_headers(e) : NULL;
    if (headers == NULL) {
        snprintf(msg, sizeof(msg), "upload failed: out of memory");
        goto done;
    }

    for (;;) {
        timeout_ms = attempt_budget_ms(e, attempt, started_ns, is_final);
        if (timeout_ms == 0) {
            if (attempt == 0) {
                pthread_mutex_lock(&e->mu);
                discarded = !e->final_export;
                pthread_mutex_unlock(&e->mu);
                outcome.kind = "upload-timeout";
                snprintf(msg, sizeof(msg), "%s",
                         discarded ? "upload aborted: exporter stopping"
                                   : "upload skipped: no time left before "
                                     "the stop deadline");
            }
            break;
        }
        /* a fresh body per attempt: libcurl does not rewind a mime
         * structure reused after curl_easy_reset() */
        mime = build_mime(e->curl, json, buf);
        if (mime == NULL) {
            outcome.kind = "upload-error";
            snprintf(msg, sizeof(msg), "upload failed: out of memory");
            break;
        }
        if (setup_request(e, mime, headers, timeout_ms) < 0) {
            outcome.kind = "upload-error";
            snprintf(msg, sizeof(msg),
                     "upload failed: libcurl refused an option");
            break;
        }
        pthread_mutex_lock(&e->mu);
        e->phase = PHASE_UPLOAD;
        pthread_mutex_unlock(&e->mu);

        rc = curl_easy_perform(e->curl);

        pthread_mutex_lock(&e->mu);
        e->phase = PHASE_BUSY;
        abandoned = e->abandoned;
        /* stop(e, 0) shut the transfer down: whatever curl reports */
        discarded = rc != CURLE_OK && e->stopping && !e->final_export;
        pthread_mutex_unlock(&e->mu);
        if (abandoned) {
            ret = EXPORT_ABANDONED;
            goto done;
        }
        status = 0;
        if (rc == CURLE_OK &&
            curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &status) !=
                CURLE_OK) {
            status = 0;
        }
        retry_after_s =
            status == 429 || status == 503 ? note_retry_after(e) : 0;
        curl_easy_reset(e->curl); /* unbinds mime and headers */
        curl_mime_free(mime);
        mime = NULL;
        outcome = classify(rc, status);
        if (outcome.ok) {
            ret = 0;
            break;
        }
        /* Messages are built from the status or the curl code only: never
         * from headers, the URL (only its redacted form is appended) or
         * libcurl's error buffer. */
        if (rc == CURLE_OK && retry_after_s > 0) {
            snprintf(msg, sizeof(msg),
                     "upload failed: HTTP %ld (Retry-After: %ld s)", status,
                     retry_after_s);
        }
        else if (rc == CURLE_OK) {
            snprintf(msg, sizeof(msg), "upload failed: HTTP %ld", status);
        }
        else if (discarded) {
            snprintf(msg, sizeof(msg), "upload aborted: exporter stopping");
        }
        else {
            snprintf(msg, sizeof(msg), "upload failed: %s (curl error %d)",
                     curl_easy_strerror(rc), (int)rc);
        }
        if (!outcome.retryable || attempt >= e->max_retries ||
            !backoff_wait(e, attempt + 1, started_ns, is_final)) {
            break;
        }
        attempt++;
        pthread_mutex_lock(&e->mu);
        e->stats.upload_retries++;
        pthread_mutex_unlock(&e->mu);
        ddl_ex_log(e, DDL_LOG_DEBUG, "upload-retry", "%s; retry %d of %d", msg,
                   attempt, e->max_retries);
    }

done:
    if (ret != EXPORT_ABANDONED) {
        pthread_mutex_lock(&e->mu);
        e->stats.last_http_status = (int)status;
        if (ret == 0) {
            e->stats.uploads_ok++;
            e->stats.bytes_uploaded += buf->len;
        }
        else {
            e->stats.uploads_failed++;
            size_t n = strlen(msg);
            if (attempt > 0) {
                snprintf(msg + n, sizeof(msg) - n, " (after %d attempts)",
                         attempt + 1);
                n = strlen(msg);
            }
            if (!discarded && e->shown_url != NULL) {
                snprintf(msg + n, sizeof(msg) - n, " to %s", e->shown_url);
            }
            ddl_ex_set_error_locked(e, msg);
        }
        pthread_mutex_unlock(&e->mu);
        if (ret == 0) {
            ddl_ex_log(e, DDL_LOG_DEBUG, "upload-ok",
                       "profile uploaded to %s: HTTP %ld, %zu bytes",
                       e->shown_url ? e->shown_url : "?", status, buf->len);
        }
        else if (discarded) {
            ddl_ex_log(e, DDL_LOG_DEBUG, "upload-aborted", "%s", msg);
        }
        else {
            ddl_ex_log(e, DDL_LOG_WARNING, outcome.kind, "%s", msg);
        }
    }
    if (e->curl != NULL) {
        curl_easy_reset(e->curl); /* unbinds mime and headers */
    }
    curl_mime_free(mime);
    curl_slist_free_all(headers);
    free(json);
    return ret;
}

const char *
ddl_upload_check_config(const ddl_exporter_config *cfg)
{
    if (cfg->url == NULL || cfg->url[0] == '\0') {
        return "upload enabled but no URL given";
    }
    if (cfg->timeout_ms <= 0) {
        return "upload timeout must be positive";
    }
    if (has_control_chars(cfg->api_key)) {
        return "API key contains invalid characters";
    }
    if (has_control_chars(cfg->version)) {
        return "version contains invalid characters";
    }
    if (ddl_upload_global_init() < 0) {
        return "libcurl initialisation failed";
    }
    return NULL;
}

/* no_proxy from the environment plus the loopback names: a local agent is
 * never reached through a proxy. */
static char *
build_noproxy(void)
{
    const char *env = getenv("no_proxy");

    if (env == NULL || env[0] == '\0') {
        env = getenv("NO_PROXY");
    }
    if (env != NULL && strcmp(env, "*") == 0) {
        return strdup("*");
    }
    if (env == NULL || env[0] == '\0') {
        return strdup("localhost,127.0.0.1,::1");
    }
    return ddl_ex_format("%s,localhost,127.0.0.1,::1", env);
}

char *
ddl_upload_redact_url(const char *url)
{
    ddl_strbuf sb = {NULL, 0, 0, 0};
    const char *p = url, *auth, *auth_end, *at, *q, *end;

    /* scheme and "://" */
    auth = strstr(url, "://");
    auth = auth != NULL ? auth + 3 : url;
    ddl_ex_sb_append(&sb, url, (size_t)(auth - url));
    auth_end = auth + strcspn(auth, "/?#");
    at = NULL;
    for (p = auth; p < auth_end; p++) {
        if (*p == '@') {
            at = p;
        }
    }
    if (at != NULL) {
        ddl_ex_sb_puts(&sb, "***");
        auth = at;
    }
    /* authority (from the '@'), then the path */
    q = auth_end + strcspn(auth_end, "?#");
    ddl_ex_sb_append(&sb, auth, (size_t)(q - auth));
    if (*q == '?') {
        end = q + 1 + strcspn(q + 1, "#");
        p = q + 1;
        ddl_ex_sb_puts(&sb, "?");
        while (p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *stop = amp != NULL ? amp : end;
            const char *eq = memchr(p, '=', (size_t)(stop - p));

            if (eq != NULL) {
                ddl_ex_sb_append(&sb, p, (size_t)(eq + 1 - p));
            }
            ddl_ex_sb_puts(&sb, "***");
            if (amp == NULL) {
                break;
            }
            ddl_ex_sb_puts(&sb, "&");
            p = amp + 1;
        }
    }
    if (sb.failed || sb.p == NULL) {
        free(sb.p);
        return sb.failed ? NULL : strdup("");
    }
    return sb.p;
}

/* Where the CA certificates of the common Linux distributions (and a few
 * others) are, for a libcurl built elsewhere whose compiled-in paths may
 * not exist here: bundles first, then hashed directories. */
static const char *const system_ca_files[] = {
    "/etc/ssl/certs/ca-certificates.crt", /* Debian, Ubuntu, Arch, Gentoo */
    "/etc/pki/tls/certs/ca-bundle.crt",   /* Fedora, RHEL, CentOS */
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", /* RHEL, Amazon */
    "/etc/ssl/ca-bundle.pem",                            /* openSUSE, SLES */
    "/etc/ssl/cert.pem",                      /* Alpine, the BSDs, macOS */
    "/etc/pki/tls/cacert.pem",                /* OpenELEC */
    "/usr/local/share/certs/ca-root-nss.crt", /* FreeBSD */
    NULL,
};
static const char *const system_ca_dirs[] = {
    "/etc/ssl/certs",
    "/etc/pki/tls/certs",
    "/system/etc/security/cacerts", /* Android */
    NULL,
};

const char *
ddl_upload_pick_ca(const char *const *files, const char *const *dirs,
                   int *is_dir)
{
    struct stat sb;
    size_t i;

    *is_dir = 0;
    for (i = 0; files[i] != NULL; i++) {
        if (stat(files[i], &sb) == 0 && S_ISREG(sb.st_mode) &&
            access(files[i], R_OK) == 0) {
            return files[i];
        }
    }
    for (i = 0; dirs[i] != NULL; i++) {
        if (stat(dirs[i], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            *is_dir = 1;
            return dirs[i];
        }
    }
    return NULL;
}

static const char *
nonempty_env(const char *name)
{
    const char *v = getenv(name);

    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* The CA certificates TLS verification uses: the configured ca_file wins;
 * else SSL_CERT_FILE and/or SSL_CERT_DIR (OpenSSL's variables, which
 * Python's ssl and requests follow too); else the system's, found in the
 * usual places. Logged once for https. -1 when out of memory. */
static int
resolve_ca(ddl_exporter *e, const ddl_exporter_config *cfg)
{
    const char *file = NULL, *dir = NULL, *from, *found;
    int is_dir;

    if (cfg->ca_file != NULL && cfg->ca_file[0] != '\0') {
        file = cfg->ca_file;
        from = "the ca_file setting";
    }
    else {
        file = nonempty_env("SSL_CERT_FILE");
        dir = nonempty_env("SSL_CERT_DIR");
        from = "SSL_CERT_FILE/SSL_CERT_DIR";
        if (file == NULL && dir == NULL) {
            found =
                ddl_upload_pick_ca(system_ca_files, system_ca_dirs, &is_dir);
            if (is_dir) {
                dir = found;
            }
            else {
                file = found;
            }
            from = found != NULL ? "the system's usual place"
                                 : "none found: libcurl's default";
        }
    }
    if (ddl_ex_copy_optional(&e->ca_file, file) < 0 ||
        ddl_ex_copy_optional(&e->ca_path, dir) < 0) {
        return -1;
    }
    if (strncmp(cfg->url, "https:", 6) == 0) {
        ddl_ex_log(e, DDL_LOG_DEBUG, "upload-tls",
                   "TLS CA certificates: file %s, directory %s (%s)",
                   file ? file : "-", dir ? dir : "-", from);
    }
    return 0;
}

int
ddl_upload_configure(ddl_exporter *e, const ddl_exporter_config *cfg)
{
    e->url = strdup(cfg->url);
    e->user_agent = ddl_ex_format("ddlock/%s", e->version);
    e->noproxy = build_noproxy();
    if (cfg->unix_socket != NULL && cfg->unix_socket[0] != '\0') {
        e->shown_url = ddl_ex_format("unix://%s", cfg->unix_socket);
    }
    else {
        e->shown_url = ddl_upload_redact_url(cfg->url);
    }
    if (e->url == NULL || e->user_agent == NULL || e->noproxy == NULL ||
        e->shown_url == NULL) {
        return -1;
    }
    if (ddl_ex_copy_optional(&e->unix_socket, cfg->unix_socket) < 0 ||
        ddl_ex_copy_optional(&e->api_key, cfg->api_key) < 0 ||
        resolve_ca(e, cfg) < 0) {
        return -1;
    }
    return 0;
}

void
ddl_upload_fork_child(ddl_exporter *e)
{
    int i;

    /* The parent's curl handle may be mid-transfer in a thread that does
     * not exist here, and cleaning it up could write a TLS close_notify
     * into the parent's connection or take a lock that thread held: leak it
     * rather than touch it. Its sockets are our copies of the parent's
     * connection: close them. */
    if (e->curl != NULL) {
        curl_left_by_fork = e->curl;
        e->curl = NULL;
    }
    for (i = 0; i < MAX_SOCKETS; i++) {
        if (e->sockets[i] >= 0) {
            close(e->sockets[i]);
            e->sockets[i] = -1;
        }
    }
}

void
ddl_upload_free(ddl_exporter *e)
{
    if (e->curl != NULL) {
        curl_easy_cleanup(e->curl);
        e->curl = NULL;
    }
    free(e->url);
    free(e->unix_socket);
    ddl_ex_free_secret(e->api_key);
    free(e->ca_file);
    free(e->ca_path);
    free(e->user_agent);
    free(e->noproxy);
    free(e->shown_url);
    e->url = e->unix_socket = e->api_key = e->ca_file = e->ca_path = NULL;
    e->user_agent = e->noproxy = e->shown_url = NULL;
}
