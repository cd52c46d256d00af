/* ddlock exporter: the background export thread, the atomic file writer and
 * the libcurl uploader.
 *
 * Pure C11 + POSIX threads + libcurl: never includes Python.h, never calls
 * Python. See exporter.h for the contract.
 *
 * Threading model. One mutex (mu) protects every mutable field below the
 * "shared state" marker. It is only ever held for short bookkeeping, never
 * across a callback, a file write or a transfer, so fork_prepare() can take
 * it without waiting on I/O. The export thread sleeps on `wake` (a
 * CLOCK_MONOTONIC condition variable) until the next periodic export, a
 * flush request or stop; flush callers sleep on `done` until the generation
 * they asked for has been served.
 *
 * Bounding stop(). Every transfer has CURLOPT_TIMEOUT_MS, so a transfer in
 * flight when stop() is called ends by stop + timeout_ms; retries and the
 * final upload only use what is left of that budget. stop(e, 0) aborts a
 * transfer in flight at once (shutdown() of its sockets plus the progress
 * callback). As a last resort against a transfer that ignores its timeout,
 * stop() waits at most a grace period past the deadline and then abandons a
 * thread that is inside curl_easy_perform(): the thread frees the exporter
 * itself when the transfer returns and never calls a callback again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#include <curl/curl.h>

#include "exporter.h"

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)

/* How long stop() waits past its deadline before giving up on a transfer
 * that does not honour its own timeout. */
#define JOIN_GRACE_NS (2 * NS_PER_S)
/* Retry backoff: 100 ms, 300 ms, 900 ms, then 1 s. */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 1000
/* A retry is only worth starting with at least this much time left. */
#define RETRY_MIN_ATTEMPT_NS (50 * NS_PER_MS)
#define MAX_RETRIES_CAP 10
/* Longer timeouts are clamped (keeps deadline arithmetic far from
 * overflow). */
#define MAX_TIMEOUT_MS (24L * 3600 * 1000)
/* Sockets of one transfer we may need to shut down (happy eyeballs opens
 * one per address family). */
#define MAX_SOCKETS 4
#define TEMP_NAME_ATTEMPTS 16
#define DEFAULT_FILE_MODE 0600

/* Return value of export_once()/upload() when stop() abandoned the thread. */
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
    int64_t interval_ns;
    int upload_enabled;
    char *url;
    char *unix_socket; /* NULL = TCP */
    char *api_key;     /* NULL = none; wiped on free */
    char *tags;
    char *version;
    char *ca_file;    /* NULL = system CAs */
    char *user_agent; /* "ddlock/<version>" */
    char *noproxy;    /* no_proxy from the environment + loopback */
    long timeout_ms;
    int max_retries;
    ddl_produce_fn produce;
    void *produce_ctx;
    ddl_log_fn log;
    void *log_ctx;

    /* Used only by the thread that exports (the export thread, or the
     * caller of stop() when no thread runs). */
    CURL *curl; /* created lazily, reused across uploads */

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
    int sockets[MAX_SOCKETS]; /* sockets of the transfer in flight, or -1 */
    uint64_t seq;             /* sequence number of the last file written */
    uint64_t *seq_store;      /* process-wide copy of seq, or NULL */
    int parked;               /* the thread has reached its wait loop */
    ddl_exporter_stats stats;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

static int64_t
mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t
wall_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static struct timespec
ns_to_timespec(int64_t ns)
{
    struct timespec ts;

    if (ns < 0) {
        ns = 0;
    }
    ts.tv_sec = (time_t)(ns / NS_PER_S);
    ts.tv_nsec = (long)(ns % NS_PER_S);
    return ts;
}

/* Wait on cond (a CLOCK_MONOTONIC condition variable) until abs_ns at most.
 * Called with mu held. */
static void
timedwait_mono(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t abs_ns)
{
    struct timespec ts = ns_to_timespec(abs_ns);

    (void)pthread_cond_timedwait(cond, mu, &ts);
}

/* *dst = copy of src, or NULL when src is NULL or "". -1 when out of
 * memory. */
static int
copy_optional(char **dst, const char *src)
{
    *dst = NULL;
    if (src == NULL || src[0] == '\0') {
        return 0;
    }
    *dst = strdup(src);
    return *dst != NULL ? 0 : -1;
}

/* Overwrite memory in a way the compiler may not drop. */
static void
wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0) {
        *v++ = 0;
    }
}

static void
free_secret(char *s)
{
    if (s != NULL) {
        wipe(s, strlen(s));
        free(s);
    }
}

/* printf into a new malloc'd string, NULL on failure. */
static char *
format_alloc(const char *fmt, ...)
{
    va_list ap;
    int n;
    char *out;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return NULL;
    }
    out = malloc((size_t)n + 1);
    if (out == NULL) {
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return out;
}

/* Thread-safe strerror into buf. */
static const char *
error_text(int err, char *buf, size_t size)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(err, buf, size);
#else
    if (strerror_r(err, buf, size) != 0) {
        snprintf(buf, size, "error %d", err);
    }
    return buf;
#endif
}

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

/* Log through the configured callback. Never called with mu held. */
static void
log_msg(ddl_exporter *e, int level, const char *kind, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (e->log == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->log(e->log_ctx, level, kind, msg);
}

/* Record msg as last_error. Called with mu held. */
static void
set_last_error_locked(ddl_exporter *e, const char *msg)
{
    snprintf(e->stats.last_error, sizeof(e->stats.last_error), "%s", msg);
}

/* ------------------------------------------------------------------ */
/* event.json                                                           */

typedef struct {
    char *p;
    size_t len;
    size_t cap;
    int failed;
} strbuf;

static void
sb_append(strbuf *sb, const char *s, size_t n)
{
    size_t need, cap;
    char *p;

    if (sb->failed) {
        return;
    }
    if (n > SIZE_MAX - sb->len - 1) {
        sb->failed = 1;
        return;
    }
    need = sb->len + n + 1;
    if (need > sb->cap) {
        cap = sb->cap ? sb->cap : 256;
        while (cap < need) {
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        }
        p = realloc(sb->p, cap);
        if (p == NULL) {
            sb->failed = 1;
            return;
        }
        sb->p = p;
        sb->cap = cap;
    }
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

static void
sb_puts(strbuf *sb, const char *s)
{
    sb_append(sb, s, strlen(s));
}

/* Length of the well-formed UTF-8 sequence starting at s (n bytes
 * available), or 0 when it is not well formed. */
static size_t
utf8_sequence_length(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    uint32_t cp, min;
    size_t len, i;

    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
        min = 0x80;
    }
    else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
        min = 0x800;
    }
    else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
        min = 0x10000;
    }
    else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

/* Append s as a JSON string literal: quotes and backslashes escaped,
 * control characters as \u00XX, malformed UTF-8 replaced by U+FFFD. */
static void
sb_json_string(strbuf *sb, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), i = 0, run;
    char esc[8];

    sb_append(sb, "\"", 1);
    while (i < n) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_append(sb, esc, 2);
            i++;
        }
        else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)c);
            sb_append(sb, esc, 6);
            i++;
        }
        else if (c < 0x80) {
            run = 1;
            while (i + run < n && p[i + run] >= 0x20 && p[i + run] < 0x7f &&
                   p[i + run] != '"' && p[i + run] != '\\') {
                run++;
            }
            sb_append(sb, s + i, run);
            i += run;
        }
        else {
            run = utf8_sequence_length(p + i, n - i);
            if (run == 0) {
                sb_puts(sb, "\\ufffd");
                i++;
            }
            else {
                sb_append(sb, s + i, run);
                i += run;
            }
        }
    }
    sb_append(sb, "\"", 1);
}

/* Append "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ" (quoted) for epoch ns. */
static void
sb_rfc3339(strbuf *sb, int64_t ns)
{
    struct tm tm;
    time_t secs;
    long frac;
    char out[80];
    size_t n;

    if (ns < 0) {
        ns = 0;
    }
    secs = (time_t)(ns / NS_PER_S);
    frac = (long)(ns % NS_PER_S);
    if (gmtime_r(&secs, &tm) == NULL) {
        secs = 0;
        frac = 0;
        gmtime_r(&secs, &tm);
    }
    n = strftime(out, sizeof(out), "\"%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, sizeof(out) - n, ".%09ldZ\"", frac);
    sb_puts(sb, out);
}

char *
ddl_exporter_event_json(const char *tags, int64_t start_ns, int64_t end_ns,
                        const char *version)
{
    strbuf sb = {NULL, 0, 0, 0};

    sb_puts(&sb, "{\"attachments\":[\"profile.pprof\"],\"tags_profiler\":");
    sb_json_string(&sb, tags ? tags : "");
    sb_puts(&sb, ",\"start\":");
    sb_rfc3339(&sb, start_ns);
    sb_puts(&sb, ",\"end\":");
    sb_rfc3339(&sb, end_ns);
    sb_puts(&sb, ",\"family\":\"python\",\"version\":\"4\","
                 "\"endpoint_counts\":null,"
                 "\"internal\":{\"profiler\":\"ddlock\","
                 "\"profiler_version\":");
    sb_json_string(&sb, version ? version : "");
    sb_puts(&sb, "},\"info\":{}}");
    if (sb.failed) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}

/* ------------------------------------------------------------------ */
/* File writer                                                          */

static void
random_bytes(unsigned char *out, size_t n)
{
    static uint64_t counter;
    uint64_t x;
    size_t i;

#if defined(__linux__)
    if (getrandom(out, n, GRND_NONBLOCK) == (ssize_t)n) {
        return;
    }
#endif
    /* Fallback: unpredictability is only a convenience here, O_EXCL and
     * O_NOFOLLOW are what make the temp file safe. */
    x = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32) ^
        (uint64_t)(uintptr_t)out ^ (++counter * UINT64_C(0x9e3779b97f4a7c15));
    for (i = 0; i < n; i++) {
        x += UINT64_C(0x9e3779b97f4a7c15);
        uint64_t z = x;
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        out[i] = (unsigned char)(z ^ (z >> 31));
    }
}

/* "<path>.tmp.<12 random [a-z0-9]>", same directory as path. */
static char *
temp_name(const char *path)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[12];
    char suffix[sizeof(rnd) + 1];
    size_t i;

    random_bytes(rnd, sizeof(rnd));
    for (i = 0; i < sizeof(rnd); i++) {
        suffix[i] = alphabet[rnd[i] % (sizeof(alphabet) - 1)];
    }
    suffix[sizeof(rnd)] = '\0';
    return format_alloc("%s.tmp.%s", path, suffix);
}

static int
write_all(int fd, const uint8_t *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Write buf to "<prefix>.<pid>.<seq>.pprof" through a temp file in the same
 * directory and rename(). On success *path_out receives the path. */
static int
write_profile_file(ddl_exporter *e, const ddl_buf *buf, char **path_out)
{
    char *path = NULL, *tmp = NULL;
    const char *step = "create";
    char errbuf[128], msg[sizeof(e->stats.last_error)];
    uint64_t seq;
    int fd = -1, err = 0, i;

    pthread_mutex_lock(&e->mu);
    seq = e->seq + 1;
    pthread_mutex_unlock(&e->mu);

    path = format_alloc("%s.%ld.%" PRIu64 ".pprof", e->output_prefix,
                        (long)getpid(), seq);
    if (path == NULL) {
        err = ENOMEM;
        goto error;
    }
    for (i = 0; i < TEMP_NAME_ATTEMPTS; i++) {
        free(tmp);
        tmp = temp_name(path);
        if (tmp == NULL) {
            err = ENOMEM;
            goto error;
        }
        fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC,
                  (mode_t)e->file_mode);
        if (fd >= 0 || errno != EEXIST) {
            break;
        }
    }
    if (fd < 0) {
        err = errno;
        free(tmp); /* not ours: never unlink it */
        tmp = NULL;
        goto error;
    }
    step = "write";
    if (buf->len > 0 && write_all(fd, buf->data, buf->len) < 0) {
        err = errno;
        goto error;
    }
    step = "fsync";
    if (fsync(fd) < 0 && errno != EINVAL && errno != EROFS) {
        err = errno;
        goto error;
    }
    step = "close";
    if (close(fd) < 0) {
        fd = -1;
        err = errno;
        goto error;
    }
    fd = -1;
    step = "rename";
    if (rename(tmp, path) < 0) {
        err = errno;
        goto error;
    }
    free(tmp);

    pthread_mutex_lock(&e->mu);
    e->seq = seq;
    if (e->seq_store != NULL) {
        __atomic_store_n(e->seq_store, seq, __ATOMIC_RELAXED);
    }
    e->stats.files_written++;
    e->stats.bytes_written += buf->len;
    snprintf(e->stats.last_path, sizeof(e->stats.last_path), "%s", path);
    pthread_mutex_unlock(&e->mu);
    log_msg(e, DDL_LOG_DEBUG, "file-ok", "wrote %zu bytes to %s", buf->len,
            path);
    *path_out = path;
    return 0;

error:
    if (fd >= 0) {
        close(fd);
    }
    if (tmp != NULL) {
        unlink(tmp);
        free(tmp);
    }
    snprintf(msg, sizeof(msg), "cannot write profile %s: %s failed: %s",
             path ? path : e->output_prefix, step,
             error_text(err, errbuf, sizeof(errbuf)));
    free(path);
    pthread_mutex_lock(&e->mu);
    e->stats.file_errors++;
    set_last_error_locked(e, msg);
    pthread_mutex_unlock(&e->mu);
    log_msg(e, DDL_LOG_WARNING, "file-write", "%s", msg);
    return -1;
}

/* ------------------------------------------------------------------ */
/* Uploader                                                             */

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

static int
curl_ready(void)
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

/* Interrupt the transfer in flight, if any. Called with mu held. */
static void
shutdown_sockets_locked(ddl_exporter *e)
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
    char *line = format_alloc("%s: %s", name, value);

    if (line == NULL) {
        return -1;
    }
    tmp = curl_slist_append(*list, line);
    wipe(line, strlen(line)); /* may hold the API key */
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
    int64_t now = mono_ns(), limit = INT64_MAX, left;
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
    wake_at = mono_ns() + delay_ms * NS_PER_MS;

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
        if (mono_ns() >= wake_at) {
            slept = 1;
            break;
        }
        timedwait_mono(&e->wake, &e->mu, wake_at);
    }
    pthread_mutex_unlock(&e->mu);
    return slept;
}

/* Upload one profile, with retries. Returns 0 on success, -1 on failure,
 * EXPORT_ABANDONED when stop() gave up on this thread mid-transfer (then
 * nothing else may be touched but e's own memory). */
static int
upload(ddl_exporter *e, const ddl_buf *buf, int64_t start_ns, int64_t end_ns,
       int is_final)
{
    char *json = NULL;
    curl_mime *mime = NULL;
    struct curl_slist *headers = NULL;
    attempt_outcome outcome = {0, 0, "upload-error"};
    CURLcode rc = CURLE_OK;
    long status = 0, timeout_ms;
    int64_t started_ns = mono_ns();
    int attempt = 0, ret = -1, abandoned, discarded = 0;
    char msg[sizeof(e->stats.last_error)];

    msg[0] = '\0';
    if (e->curl == NULL) {
        if (curl_ready() < 0 || (e->curl = curl_easy_init()) == NULL) {
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
        curl_easy_reset(e->curl); /* unbinds mime and headers */
        curl_mime_free(mime);
        mime = NULL;
        outcome = classify(rc, status);
        if (outcome.ok) {
            ret = 0;
            break;
        }
        /* Messages are built from the status or the curl code only: never
         * from headers, the URL or libcurl's error buffer. */
        if (rc == CURLE_OK) {
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
        log_msg(e, DDL_LOG_DEBUG, "upload-retry", "%s; retry %d of %d", msg,
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
            if (attempt > 0) {
                size_t n = strlen(msg);
                snprintf(msg + n, sizeof(msg) - n, " (after %d attempts)",
                         attempt + 1);
            }
            set_last_error_locked(e, msg);
        }
        pthread_mutex_unlock(&e->mu);
        if (ret == 0) {
            log_msg(e, DDL_LOG_DEBUG, "upload-ok",
                    "profile uploaded: HTTP %ld, %zu bytes", status, buf->len);
        }
        else if (discarded) {
            log_msg(e, DDL_LOG_DEBUG, "upload-aborted", "%s", msg);
        }
        else {
            log_msg(e, DDL_LOG_WARNING, outcome.kind, "%s", msg);
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

/* ------------------------------------------------------------------ */
/* One export                                                           */

/* Produce a profile and send it to the configured outputs. Called without
 * mu. Returns 0 on success or when there was nothing to export, -1 when
 * something failed, EXPORT_ABANDONED (see upload()). */
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
        set_last_error_locked(e, "producing the profile failed");
        pthread_mutex_unlock(&e->mu);
        log_msg(e, DDL_LOG_WARNING, "export", "producing the profile failed");
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    e->stats.exports++;
    pthread_mutex_unlock(&e->mu);
    if (end_ns <= 0) {
        end_ns = wall_ns();
    }
    if (start_ns <= 0 || start_ns > end_ns) {
        start_ns = end_ns;
    }

    if (e->output_prefix != NULL &&
        write_profile_file(e, &buf, path_out) < 0) {
        ret = -1;
    }
    if (e->upload_enabled) {
        rc = upload(e, &buf, start_ns, end_ns, is_final);
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
               mono_ns() < e->next_export_ns) {
            timedwait_mono(&e->wake, &e->mu, e->next_export_ns);
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
            now = mono_ns();
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
        left = limit - mono_ns();
        abs = ns_to_timespec(wall_ns() + (left > 0 ? left : 0));
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
            shutdown_sockets_locked(e);
            pthread_mutex_unlock(&e->mu);
            log_msg(e, DDL_LOG_WARNING, "export",
                    "upload did not finish in time; leaving it behind");
            pthread_detach(e->thread);
            return -1;
        }
        pthread_mutex_unlock(&e->mu);
        /* producing or writing a file: that finishes on its own */
        limit = mono_ns() + JOIN_GRACE_NS;
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
    if (e->curl != NULL) {
        curl_easy_cleanup(e->curl);
    }
    free(e->flush_path);
    free(e->output_prefix);
    free(e->url);
    free(e->unix_socket);
    free_secret(e->api_key);
    free(e->tags);
    free(e->version);
    free(e->ca_file);
    free(e->user_agent);
    free(e->noproxy);
    free(e);
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
    return format_alloc("%s,localhost,127.0.0.1,::1", env);
}

ddl_exporter *
ddl_exporter_start(const ddl_exporter_config *cfg, const char **err)
{
    ddl_exporter *e = NULL;
    const char *msg = "out of memory";
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
    if (cfg->upload_enabled) {
        if (cfg->url == NULL || cfg->url[0] == '\0') {
            msg = "upload enabled but no URL given";
            goto error;
        }
        if (cfg->timeout_ms <= 0) {
            msg = "upload timeout must be positive";
            goto error;
        }
        if (has_control_chars(cfg->api_key)) {
            msg = "API key contains invalid characters";
            goto error;
        }
        if (has_control_chars(cfg->version)) {
            msg = "version contains invalid characters";
            goto error;
        }
        if (curl_ready() < 0) {
            msg = "libcurl initialisation failed";
            goto error;
        }
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
    e->produce = cfg->produce;
    e->produce_ctx = cfg->produce_ctx;
    e->log = cfg->log;
    e->log_ctx = cfg->log_ctx;

    if (copy_optional(&e->output_prefix, cfg->output_prefix) < 0) {
        goto error;
    }
    e->tags = strdup(cfg->tags ? cfg->tags : "");
    e->version = strdup(cfg->version ? cfg->version : "unknown");
    if (e->tags == NULL || e->version == NULL) {
        goto error;
    }
    if (e->upload_enabled) {
        e->url = strdup(cfg->url);
        e->user_agent = format_alloc("ddlock/%s", e->version);
        e->noproxy = build_noproxy();
        if (e->url == NULL || e->user_agent == NULL || e->noproxy == NULL) {
            goto error;
        }
        if (copy_optional(&e->unix_socket, cfg->unix_socket) < 0 ||
            copy_optional(&e->api_key, cfg->api_key) < 0 ||
            copy_optional(&e->ca_file, cfg->ca_file) < 0) {
            goto error;
        }
    }

    if (init_sync(e) < 0) {
        msg = "cannot initialise exporter locks";
        goto error;
    }
    e->sync_ready = 1;
    e->next_export_ns = mono_ns() + e->interval_ns;
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
        mono_ns() + (final_export ? e->timeout_ms * NS_PER_MS : 0);
    if (!final_export) {
        shutdown_sockets_locked(e);
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
    int i, was_stopping;

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
    memset(&e->stats, 0, sizeof(e->stats));
    e->next_export_ns = mono_ns() + e->interval_ns;
    if (was_stopping) {
        /* forked while the parent was stopping this exporter */
        return -1;
    }
    return start_thread(e);
}
