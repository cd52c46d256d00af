/* Check suite for the exporter (ext/export.c, writer.c, upload.c, event.c):
 * the export thread, the atomic file writer and the libcurl uploader,
 * exercised for real against loopback HTTP servers (TCP on 127.0.0.1 and a
 * unix socket) written here with plain sockets. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exporter.h"
#include "upload.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define API_KEY "SECRET-api-KEY-0123456789abcdef"
#define VERSION "1.2.3"
#define TAGS "service:svc,env:test,language:python"
/* 2025-11-25T18:30:00.123456789Z .. 2025-11-25T18:31:00.000000001Z */
#define START_NS INT64_C(1764095400123456789)
#define END_NS INT64_C(1764095460000000001)

/* ------------------------------------------------------------------ */
/* helpers                                                              */

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static char *
make_tmpdir(void)
{
    char tmpl[] = "/tmp/ddl-exporter-test-XXXXXX";
    char *dir = mkdtemp(tmpl);

    ck_assert_ptr_nonnull(dir);
    return strdup(dir);
}

static int
count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *ent;
    int n = 0;

    ck_assert_ptr_nonnull(d);
    while ((ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") != 0 && strcmp(ent->d_name, "..") != 0) {
            n++;
        }
    }
    closedir(d);
    return n;
}

static void
remove_tmpdir(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *ent;
    char path[4096];

    if (d != NULL) {
        while ((ent = readdir(d)) != NULL) {
            if (strcmp(ent->d_name, ".") == 0 ||
                strcmp(ent->d_name, "..") == 0) {
                continue;
            }
            snprintf(path, sizeof(path), "%s/%s", dir, ent->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

static unsigned char *
read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data;
    long size;

    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(data);
    ck_assert_uint_eq(fread(data, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *len = (size_t)size;
    return data;
}

/* ------------------------------------------------------------------ */
/* produce and log callbacks                                            */

typedef struct {
    pthread_mutex_t mu;
    int calls;
    int result; /* what produce returns: 0, 1 or -1 */
    size_t size;
    unsigned char *last; /* copy of the bytes last produced */
    size_t last_len;
} producer;

static void
producer_init(producer *p, size_t size)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    p->size = size;
}

static void
producer_fini(producer *p)
{
    free(p->last);
    pthread_mutex_destroy(&p->mu);
}

static int
producer_calls(producer *p)
{
    int n;

    pthread_mutex_lock(&p->mu);
    n = p->calls;
    pthread_mutex_unlock(&p->mu);
    return n;
}

static int
produce_cb(void *ctx, ddl_buf *out, int64_t *start_ns, int64_t *end_ns)
{
    producer *p = ctx;
    size_t i;
    int result;

    pthread_mutex_lock(&p->mu);
    p->calls++;
    result = p->result;
    if (result == 0) {
        out->data = malloc(p->size ? p->size : 1);
        if (out->data == NULL) {
            pthread_mutex_unlock(&p->mu);
            return -1;
        }
        out->len = p->size;
        /* gzip magic, then bytes that include CRLF and "--" so a sloppy
         * multipart split would show */
        for (i = 0; i < p->size; i++) {
            static const unsigned char pattern[] = "\x1f\x8b\r\n--x\0\xff";
            out->data[i] =
                i < 2 ? pattern[i]
                      : (unsigned char)(pattern[i % 8] ^
                                        (unsigned char)(i / 8 + p->calls));
        }
        free(p->last);
        p->last = malloc(p->size ? p->size : 1);
        ck_assert_ptr_nonnull(p->last);
        memcpy(p->last, out->data, p->size);
        p->last_len = p->size;
        *start_ns = START_NS;
        *end_ns = END_NS;
    }
    pthread_mutex_unlock(&p->mu);
    return result;
}

typedef struct {
    int level;
    char kind[32];
    char msg[512];
} log_entry;

typedef struct {
    pthread_mutex_t mu;
    int n;
    log_entry entries[64];
} log_sink;

static void
log_cb(void *ctx, int level, const char *kind, const char *msg)
{
    log_sink *s = ctx;

    pthread_mutex_lock(&s->mu);
    if (s->n < 64) {
        log_entry *le = &s->entries[s->n++];
        le->level = level;
        snprintf(le->kind, sizeof(le->kind), "%s", kind);
        snprintf(le->msg, sizeof(le->msg), "%s", msg);
    }
    pthread_mutex_unlock(&s->mu);
}

/* Number of log entries of this kind; with level >= 0, the level must
 * match. */
static int
log_count(log_sink *s, const char *kind, int level)
{
    int i, n = 0;

    pthread_mutex_lock(&s->mu);
    for (i = 0; i < s->n; i++) {
        if (strcmp(s->entries[i].kind, kind) == 0 &&
            (level < 0 || s->entries[i].level == level)) {
            n++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static int
log_contains(log_sink *s, const char *needle)
{
    int i, found = 0;

    pthread_mutex_lock(&s->mu);
    for (i = 0; i < s->n; i++) {
        if (strstr(s->entries[i].msg, needle) != NULL ||
            strstr(s->entries[i].kind, needle) != NULL) {
            found = 1;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

static producer prod;
static log_sink sink;

static void
fixture_setup(void)
{
    producer_init(&prod, 1000);
    memset(&sink, 0, sizeof(sink));
    pthread_mutex_init(&sink.mu, NULL);
}

static void
fixture_teardown(void)
{
    producer_fini(&prod);
    pthread_mutex_destroy(&sink.mu);
}

static ddl_exporter_config
base_config(void)
{
    ddl_exporter_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.file_mode = 0600;
    cfg.interval_s = 3600.0; /* only explicit flushes */
    cfg.timeout_ms = 2000;
    cfg.max_retries = 2;
    cfg.tags = TAGS;
    cfg.version = VERSION;
    cfg.produce = produce_cb;
    cfg.produce_ctx = &prod;
    cfg.log = log_cb;
    cfg.log_ctx = &sink;
    return cfg;
}

static ddl_exporter *
start_ok(const ddl_exporter_config *cfg)
{
    const char *err = NULL;
    ddl_exporter *e = ddl_exporter_start(cfg, &err);

    ck_assert_msg(e != NULL, "start failed: %s", err ? err : "?");
    return e;
}

/* ------------------------------------------------------------------ */
/* loopback HTTP server                                                 */

#define MAX_REQS 16

typedef struct {
    char *head; /* request line and headers, NUL terminated */
    unsigned char *body;
    size_t body_len;
    int64_t at_ms;
} captured;

typedef struct {
    int fd;
    int port;
    char unix_path[108]; /* "" for TCP */
    pthread_t thread;
    pthread_mutex_t mu;
    int stop;
    int statuses[MAX_REQS]; /* reply to request i; after the script, 200 */
    int nstatuses;
    int hang; /* accept and read, never answer */
    int nreq;
    captured reqs[MAX_REQS];
    int held[MAX_REQS];
    int nheld;
} server;

static int
server_stopping(server *s)
{
    int stop;

    pthread_mutex_lock(&s->mu);
    stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

/* Wait up to 50 ms for fd to be readable; 1 readable, 0 not yet, -1 stop */
static int
wait_readable(server *s, int fd)
{
    struct pollfd pfd = {fd, POLLIN, 0};

    if (server_stopping(s)) {
        return -1;
    }
    return poll(&pfd, 1, 50) > 0 ? 1 : 0;
}

static const char *
find_header_line(const char *head, const char *name)
{
    const char *line = strstr(head, "\r\n");
    size_t n = strlen(name);

    while (line != NULL && line[2] != '\0') {
        line += 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            return line;
        }
        line = strstr(line, "\r\n");
    }
    return NULL;
}

/* Value of header `name` in head (malloc'd), or NULL. */
static char *
get_header(const char *head, const char *name)
{
    const char *line = find_header_line(head, name), *v, *end;

    if (line == NULL) {
        return NULL;
    }
    v = line + strlen(name) + 1;
    while (*v == ' ') {
        v++;
    }
    end = strstr(v, "\r\n");
    return strndup(v, (size_t)(end - v));
}

static int
read_request(server *s, int fd, captured *req)
{
    size_t cap = 65536, len = 0, head_len = 0, need = 0;
    unsigned char *buf = malloc(cap);
    char *cl;
    ssize_t n;
    int r;

    ck_assert_ptr_nonnull(buf);
    for (;;) {
        if (head_len == 0) {
            unsigned char *end =
                len >= 4 ? memmem(buf, len, "\r\n\r\n", 4) : NULL;
            if (end != NULL) {
                head_len = (size_t)(end - buf) + 4;
                req->head = strndup((char *)buf, head_len);
                cl = get_header(req->head, "Content-Length");
                need = head_len + (cl ? strtoul(cl, NULL, 10) : 0);
                free(cl);
            }
        }
        if (head_len != 0 && len >= need) {
            break;
        }
        r = wait_readable(s, fd);
        if (r < 0) {
            goto error;
        }
        if (r == 0) {
            continue;
        }
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        n = recv(fd, buf + len, cap - len, 0);
        if (n <= 0) {
            goto error;
        }
        len += (size_t)n;
    }
    req->body_len = need - head_len;
    req->body = malloc(req->body_len + 1);
    ck_assert_ptr_nonnull(req->body);
    memcpy(req->body, buf + head_len, req->body_len);
    req->at_ms = now_ms();
    free(buf);
    return 0;

error:
    free(buf);
    free(req->head);
    req->head = NULL;
    return -1;
}

static void *
server_main(void *arg)
{
    server *s = arg;

    for (;;) {
        captured req = {NULL, NULL, 0, 0};
        char resp[256];
        int r, fd, status = 200, i;

        r = wait_readable(s, s->fd);
        if (r < 0) {
            break;
        }
        if (r == 0) {
            continue;
        }
        fd = accept(s->fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        if (read_request(s, fd, &req) < 0) {
            close(fd);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        i = s->nreq;
        if (i < MAX_REQS) {
            s->reqs[i] = req;
            s->nreq++;
        }
        else {
            free(req.head);
            free(req.body);
        }
        if (i < s->nstatuses) {
            status = s->statuses[i];
        }
        if (s->hang && s->nheld < MAX_REQS) {
            s->held[s->nheld++] = fd;
            fd = -1;
        }
        pthread_mutex_unlock(&s->mu);
        if (fd >= 0) {
            int n =
                snprintf(resp, sizeof(resp),
                         "HTTP/1.1 %d Test\r\nContent-Type: text/plain\r\n"
                         "Content-Length: 2\r\nConnection: close\r\n\r\nok",
                         status);
            (void)send(fd, resp, (size_t)n, MSG_NOSIGNAL);
            close(fd);
        }
    }
    return NULL;
}

static void
server_start(server *s, const char *unix_path)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    if (unix_path != NULL) {
        struct sockaddr_un addr;

        memset(&addr, 0, sizeof(addr));
        addr.sun_family = AF_UNIX;
        ck_assert_uint_lt(strlen(unix_path), sizeof(addr.sun_path));
        strcpy(addr.sun_path, unix_path);
        strcpy(s->unix_path, unix_path);
        s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(s->fd, 0);
        ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&addr, sizeof(addr)),
                         0);
    }
    else {
        struct sockaddr_in addr;
        socklen_t alen = sizeof(addr);
        int one = 1;

        memset(&addr, 0, sizeof(addr));
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(s->fd, 0);
        setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&addr, sizeof(addr)),
                         0);
        ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&addr, &alen),
                         0);
        s->port = ntohs(addr.sin_port);
    }
    ck_assert_int_eq(listen(s->fd, 16), 0);
    ck_assert_int_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void
server_stop(server *s)
{
    int i;

    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    close(s->fd);
    for (i = 0; i < s->nheld; i++) {
        close(s->held[i]);
    }
    if (s->unix_path[0] != '\0') {
        unlink(s->unix_path);
    }
}

/* After server_stop: release the captured requests. */
static void
server_free(server *s)
{
    int i;

    for (i = 0; i < s->nreq; i++) {
        free(s->reqs[i].head);
        free(s->reqs[i].body);
    }
    pthread_mutex_destroy(&s->mu);
}

static int
server_nreq(server *s)
{
    int n;

    pthread_mutex_lock(&s->mu);
    n = s->nreq;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static char *
server_url(server *s)
{
    char *url = malloc(128);

    ck_assert_ptr_nonnull(url);
    snprintf(url, 128, "http://127.0.0.1:%d/profiling/v1/input", s->port);
    return url;
}

/* A TCP port on 127.0.0.1 with nothing listening. */
static int
closed_port(void)
{
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&addr, &alen), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

/* ------------------------------------------------------------------ */
/* multipart parsing                                                    */

typedef struct {
    char *headers; /* part headers, NUL terminated */
    const unsigned char *data;
    size_t len;
} mpart;

/* Split body into parts using the boundary from content_type. Returns the
 * number of parts (at most max). */
static int
parse_multipart(const char *content_type, const unsigned char *body,
                size_t body_len, mpart *parts, int max)
{
    const char *b = strstr(content_type, "boundary=");
    char delim[256];
    size_t dlen;
    const unsigned char *p, *end = body + body_len, *next, *hend;
    int n = 0;

    ck_assert_ptr_nonnull(b);
    b += strlen("boundary=");
    dlen = (size_t)snprintf(delim, sizeof(delim), "--%s", b);
    p = memmem(body, body_len, delim, dlen);
    ck_assert_msg(p == body, "body does not start with the boundary");
    for (;;) {
        p += dlen;
        if (end - p >= 2 && memcmp(p, "--", 2) == 0) {
            break; /* closing delimiter */
        }
        ck_assert(end - p >= 2 && memcmp(p, "\r\n", 2) == 0);
        p += 2;
        hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        ck_assert_ptr_nonnull(hend);
        ck_assert_int_lt(n, max);
        parts[n].headers = strndup((const char *)p, (size_t)(hend - p) + 2);
        parts[n].data = hend + 4;
        /* the part ends at CRLF + delimiter */
        next = parts[n].data;
        for (;;) {
            next = memmem(next, (size_t)(end - next), delim, dlen);
            ck_assert_ptr_nonnull(next);
            if (next - parts[n].data >= 2 && next[-2] == '\r' &&
                next[-1] == '\n') {
                break;
            }
            next++;
        }
        parts[n].len = (size_t)(next - 2 - parts[n].data);
        n++;
        p = next;
    }
    return n;
}

static void
free_parts(mpart *parts, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        free(parts[i].headers);
    }
}

/* ------------------------------------------------------------------ */
/* event.json                                                           */

START_TEST(test_event_json_fields)
{
    char *json = ddl_exporter_event_json(TAGS, START_NS, END_NS, VERSION);

    ck_assert_ptr_nonnull(json);
    ck_assert_str_eq(
        json, "{\"attachments\":[\"profile.pprof\"],"
              "\"tags_profiler\":\"service:svc,env:test,language:python\","
              "\"start\":\"2025-11-25T18:30:00.123456789Z\","
              "\"end\":\"2025-11-25T18:31:00.000000001Z\","
              "\"family\":\"python\",\"version\":\"4\","
              "\"endpoint_counts\":null,"
              "\"internal\":{\"profiler\":\"ddlock\","
              "\"profiler_version\":\"1.2.3\"},\"info\":{}}");
    free(json);

    /* zero fraction still has 9 digits; NULL tags are an empty string */
    json = ddl_exporter_event_json(NULL, 0, INT64_C(1000000000), "v");
    ck_assert_ptr_nonnull(json);
    ck_assert_ptr_nonnull(strstr(json, "\"tags_profiler\":\"\""));
    ck_assert_ptr_nonnull(
        strstr(json, "\"start\":\"1970-01-01T00:00:00.000000000Z\""));
    ck_assert_ptr_nonnull(
        strstr(json, "\"end\":\"1970-01-01T00:00:01.000000000Z\""));
    free(json);
}
END_TEST

START_TEST(test_event_json_escaping)
{
    const char *tags = "a:\"q\",b:back\\slash,c:line\nbreak,d:\x01\x1f\x7f,"
                       "e:caf\xc3\xa9,f:\xff";
    char *json = ddl_exporter_event_json(tags, 0, 0, "1\"\\");

    ck_assert_ptr_nonnull(json);
    ck_assert_ptr_nonnull(
        strstr(json, "\"tags_profiler\":\"a:\\\"q\\\",b:back\\\\slash,"
                     "c:line\\u000abreak,d:\\u0001\\u001f\\u007f,"
                     "e:caf\xc3\xa9,f:\\ufffd\""));
    ck_assert_ptr_nonnull(strstr(json, "\"profiler_version\":\"1\\\"\\\\\""));
    /* no raw control characters anywhere */
    for (const char *p = json; *p; p++) {
        ck_assert_int_ge((unsigned char)*p, 0x20);
    }
    free(json);
}
END_TEST

/* ------------------------------------------------------------------ */
/* files                                                                */

START_TEST(test_file_naming_and_seq)
{
    char *dir = make_tmpdir();
    char prefix[4096], expect[8192];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char **paths;
    int i;

    snprintf(prefix, sizeof(prefix), "%s/prof", dir);
    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    for (i = 1; i <= 3; i++) {
        unsigned char *data;
        size_t len;

        ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
        ck_assert_ptr_nonnull(paths);
        ck_assert_ptr_nonnull(paths[0]);
        ck_assert_ptr_null(paths[1]);
        snprintf(expect, sizeof(expect), "%s.%ld.%d.pprof", prefix,
                 (long)getpid(), i);
        ck_assert_str_eq(paths[0], expect);
        data = read_file(paths[0], &len);
        pthread_mutex_lock(&prod.mu);
        ck_assert_uint_eq(len, prod.last_len);
        ck_assert_mem_eq(data, prod.last, len);
        pthread_mutex_unlock(&prod.mu);
        free(data);
        ddl_exporter_free_paths(paths);
    }
    ddl_exporter_get_stats(e, &st);
    ck_assert_uint_eq(st.exports, 3);
    ck_assert_uint_eq(st.files_written, 3);
    ck_assert_uint_eq(st.file_errors, 0);
    ck_assert_uint_eq(st.bytes_written, 3000);
    ck_assert_str_eq(st.last_path, expect);
    ck_assert_str_eq(st.last_error, "");
    ddl_exporter_stop(e, 0);
    /* exactly the three files: no temp file left behind */
    ck_assert_int_eq(count_dir_entries(dir), 3);
    ck_assert_int_eq(producer_calls(&prod), 3);
    remove_tmpdir(dir);
}
END_TEST

static int
file_exists(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0;
}

/* max_files: after each file the oldest this process wrote go, over
 * start/stop/start when the history is shared; other files stay. */
START_TEST(test_max_files_removes_oldest_own_files)
{
    char *dir = make_tmpdir();
    char prefix[4096], path[8192], decoy[8192];
    ddl_exporter_config cfg = base_config();
    ddl_file_history *history = ddl_file_history_new();
    ddl_exporter_stats st;
    ddl_exporter *e;
    uint64_t seq = 0;
    int i, fd;

    ck_assert_ptr_nonnull(history);
    snprintf(prefix, sizeof(prefix), "%s/prof", dir);
    /* named like one of ours, but not written by this exporter */
    snprintf(decoy, sizeof(decoy), "%s.%ld.99.pprof", prefix, (long)getpid());
    fd = open(decoy, O_CREAT | O_WRONLY, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    cfg.output_prefix = prefix;
    cfg.max_files = 3;
    cfg.history = history;
    cfg.seq_store = &seq;
    e = start_ok(&cfg);
    for (i = 1; i <= 2; i++) {
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    }
    ddl_exporter_stop(e, 0);
    e = start_ok(&cfg); /* a new session of the same process */
    for (i = 3; i <= 5; i++) {
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    }
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    ck_assert_uint_eq(st.files_written, 3);
    ck_assert_uint_eq(st.files_removed, 2);
    for (i = 1; i <= 5; i++) {
        snprintf(path, sizeof(path), "%s.%ld.%d.pprof", prefix, (long)getpid(),
                 i);
        ck_assert_msg(file_exists(path) == (i >= 3), "%s", path);
    }
    ck_assert(file_exists(decoy));
    ck_assert_int_eq(count_dir_entries(dir), 4);
    ck_assert_int_eq(log_count(&sink, "file-removed", DDL_LOG_DEBUG), 2);

    /* 0 = no limit: nothing removed */
    cfg.max_files = 0;
    e = start_ok(&cfg);
    for (i = 6; i <= 9; i++) {
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    }
    ddl_exporter_stop(e, 0);
    ck_assert_int_eq(count_dir_entries(dir), 8);
    ddl_file_history_free(history);
    remove_tmpdir(dir);
}
END_TEST

/* Below min_free_bytes on the target filesystem: nothing written, counted,
 * logged once per run of skipped files. */
START_TEST(test_min_free_bytes_stops_writing)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;

    snprintf(prefix, sizeof(prefix), "%s/prof", dir);
    cfg.output_prefix = prefix;
    cfg.min_free_bytes = UINT64_C(1) << 62; /* more than any disk */
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    ck_assert_int_eq(count_dir_entries(dir), 0);
    ck_assert_uint_eq(st.files_written, 0);
    ck_assert_uint_eq(st.file_errors, 0);
    ck_assert_uint_eq(st.files_skipped_low_disk, 2);
    ck_assert_ptr_nonnull(strstr(st.last_error, "not writing profiles"));
    ck_assert_ptr_nonnull(strstr(st.last_error, dir));
    ck_assert_int_eq(log_count(&sink, "file-disk-low", DDL_LOG_WARNING), 1);

    /* a floor the disk is above: written */
    cfg.min_free_bytes = 1;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ddl_exporter_stop(e, 0);
    ck_assert_int_eq(count_dir_entries(dir), 1);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_file_mode)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    char **paths;
    struct stat st;
    mode_t old = umask(022);

    snprintf(prefix, sizeof(prefix), "%s/m", dir);
    cfg.output_prefix = prefix;
    cfg.file_mode = 0600;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    ck_assert_int_eq(stat(paths[0], &st), 0);
    ck_assert_int_eq(st.st_mode & 07777, 0600);
    ddl_exporter_free_paths(paths);
    ddl_exporter_stop(e, 0);

    cfg.file_mode = 0640;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    ck_assert_int_eq(stat(paths[0], &st), 0);
    ck_assert_int_eq(st.st_mode & 07777, 0640);
    ddl_exporter_free_paths(paths);
    ddl_exporter_stop(e, 0);

    /* 0 (a zeroed config) means the private default 0600 */
    cfg.file_mode = 0;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    ck_assert_int_eq(stat(paths[0], &st), 0);
    ck_assert_int_eq(st.st_mode & 07777, 0600);
    ddl_exporter_free_paths(paths);
    ddl_exporter_stop(e, 0);
    umask(old);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_symlink_replaced_not_followed)
{
    char *dir = make_tmpdir();
    char prefix[4096], victim[4200], target[4200];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    char **paths;
    unsigned char *data;
    size_t len;
    struct stat st;
    FILE *f;

    snprintf(prefix, sizeof(prefix), "%s/p", dir);
    snprintf(victim, sizeof(victim), "%s/victim", dir);
    snprintf(target, sizeof(target), "%s.%ld.1.pprof", prefix, (long)getpid());
    f = fopen(victim, "w");
    ck_assert_ptr_nonnull(f);
    fputs("victim", f);
    fclose(f);
    ck_assert_int_eq(symlink(victim, target), 0);

    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    ck_assert_str_eq(paths[0], target);
    ddl_exporter_free_paths(paths);
    ddl_exporter_stop(e, 0);

    /* the link itself was replaced by a regular file ... */
    ck_assert_int_eq(lstat(target, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    data = read_file(target, &len);
    ck_assert_uint_eq(len, prod.last_len);
    ck_assert_mem_eq(data, prod.last, len);
    free(data);
    /* ... and the file it pointed to is untouched */
    data = read_file(victim, &len);
    ck_assert_uint_eq(len, 6);
    ck_assert_mem_eq(data, "victim", 6);
    free(data);
    ck_assert_int_eq(count_dir_entries(dir), 2);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_missing_directory)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char **paths;

    snprintf(prefix, sizeof(prefix), "%s/no/such/dir/p", dir);
    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), -1);
    ck_assert_ptr_nonnull(paths);
    ck_assert_ptr_null(paths[0]);
    ddl_exporter_free_paths(paths);
    /* a second failure counts again and does not consume a seq number */
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    ck_assert_uint_eq(st.exports, 2);
    ck_assert_uint_eq(st.file_errors, 2);
    ck_assert_uint_eq(st.files_written, 0);
    ck_assert_str_eq(st.last_path, "");
    ck_assert_ptr_nonnull(strstr(st.last_error, "No such file or directory"));
    ck_assert_ptr_nonnull(strstr(st.last_error, ".1.pprof"));
    ck_assert_int_eq(log_count(&sink, "file-write", DDL_LOG_WARNING), 2);
    ck_assert_int_eq(count_dir_entries(dir), 0);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_unwritable_directory)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;

    if (geteuid() == 0) {
        /* root ignores directory permissions: use a read-only path
         * instead (a directory in place of the final file) */
        char target[4200];

        snprintf(prefix, sizeof(prefix), "%s/p", dir);
        snprintf(target, sizeof(target), "%s.%ld.1.pprof", prefix,
                 (long)getpid());
        ck_assert_int_eq(mkdir(target, 0700), 0);
        cfg.output_prefix = prefix;
        e = start_ok(&cfg);
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
        ddl_exporter_get_stats(e, &st);
        ddl_exporter_stop(e, 0);
        ck_assert_uint_eq(st.file_errors, 1);
        ck_assert_ptr_nonnull(strstr(st.last_error, "rename failed"));
        /* the temp file was removed: only the directory remains */
        ck_assert_int_eq(count_dir_entries(dir), 1);
        rmdir(target);
    }
    else {
        ck_assert_int_eq(chmod(dir, 0500), 0);
        snprintf(prefix, sizeof(prefix), "%s/p", dir);
        cfg.output_prefix = prefix;
        e = start_ok(&cfg);
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
        ddl_exporter_get_stats(e, &st);
        ddl_exporter_stop(e, 0);
        ck_assert_uint_eq(st.file_errors, 1);
        ck_assert_ptr_nonnull(strstr(st.last_error, "Permission denied"));
        chmod(dir, 0700);
        ck_assert_int_eq(count_dir_entries(dir), 0);
    }
    remove_tmpdir(dir);
}
END_TEST

/* RLIMIT_FSIZE smaller than the profile: write() fails with EFBIG (the
 * export thread blocks SIGXFSZ, so the process is not killed) and no
 * partial file remains. */
START_TEST(test_file_too_large)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    struct rlimit old, small;

    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 4096;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    prod.size = 64 * 1024;
    snprintf(prefix, sizeof(prefix), "%s/big", dir);
    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    ck_assert_uint_eq(st.file_errors, 1);
    ck_assert_msg(strstr(st.last_error, "File too large") != NULL,
                  "last_error: %s", st.last_error);
    ck_assert_int_eq(count_dir_entries(dir), 0);
    remove_tmpdir(dir);
}
END_TEST

/* ------------------------------------------------------------------ */
/* thread                                                               */

START_TEST(test_start_flush_stop)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    int i;

    snprintf(prefix, sizeof(prefix), "%s/p", dir);
    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    ck_assert_int_eq(producer_calls(&prod), 0);
    for (i = 0; i < 5; i++) {
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
        ck_assert_int_eq(producer_calls(&prod), i + 1);
    }
    ddl_exporter_stop(e, 0);
    ck_assert_int_eq(producer_calls(&prod), 5);
    ck_assert_int_eq(count_dir_entries(dir), 5);

    /* stop with a final export writes one more file */
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ddl_exporter_stop(e, 1);
    ck_assert_int_eq(producer_calls(&prod), 7);
    /* a new exporter starts again at seq 1: .1 and .2 were replaced */
    ck_assert_int_eq(count_dir_entries(dir), 5);

    /* flush after stop is not possible; stop(NULL) is harmless */
    ddl_exporter_stop(NULL, 1);
    ck_assert_int_eq(ddl_exporter_flush(NULL, NULL), -1);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_invalid_config)
{
    ddl_exporter_config cfg = base_config();
    const char *err = NULL;

    cfg.interval_s = 0;
    ck_assert_ptr_null(ddl_exporter_start(&cfg, &err));
    ck_assert_ptr_nonnull(err);

    cfg = base_config();
    cfg.produce = NULL;
    err = NULL;
    ck_assert_ptr_null(ddl_exporter_start(&cfg, &err));
    ck_assert_ptr_nonnull(err);

    cfg = base_config();
    cfg.upload_enabled = 1;
    cfg.url = NULL;
    err = NULL;
    ck_assert_ptr_null(ddl_exporter_start(&cfg, &err));
    ck_assert_ptr_nonnull(err);

    /* a key that would inject a header is refused, and not echoed */
    cfg = base_config();
    cfg.upload_enabled = 1;
    cfg.url = "http://127.0.0.1:1/";
    cfg.api_key = API_KEY "\r\nX-Evil: 1";
    err = NULL;
    ck_assert_ptr_null(ddl_exporter_start(&cfg, &err));
    ck_assert_ptr_nonnull(err);
    ck_assert_ptr_null(strstr(err, API_KEY));
}
END_TEST

START_TEST(test_produce_nothing)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    char **paths;

    snprintf(prefix, sizeof(prefix), "%s/p", dir);
    cfg.output_prefix = prefix;
    cfg.upload_enabled = 1;
    cfg.url = "http://127.0.0.1:1/profiling/v1/input"; /* never contacted */
    prod.result = 1;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    ck_assert_ptr_nonnull(paths);
    ck_assert_ptr_null(paths[0]);
    ddl_exporter_free_paths(paths);
    ddl_exporter_stop(e, 1);
    ck_assert_int_eq(producer_calls(&prod), 2);
    ck_assert_int_eq(count_dir_entries(dir), 0);
    ck_assert_int_eq(sink.n, 0);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_produce_failure)
{
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;

    prod.result = -1;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    ck_assert_uint_eq(st.exports, 0);
    ck_assert_str_ne(st.last_error, "");
    ck_assert_int_eq(log_count(&sink, "export", DDL_LOG_WARNING), 1);
}
END_TEST

START_TEST(test_periodic_export)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    int calls;

    snprintf(prefix, sizeof(prefix), "%s/p", dir);
    cfg.output_prefix = prefix;
    cfg.interval_s = 0.1;
    e = start_ok(&cfg);
    sleep_ms(550);
    calls = producer_calls(&prod);
    ddl_exporter_stop(e, 0);
    ck_assert_msg(calls >= 3 && calls <= 6, "%d periodic exports", calls);
    ck_assert_int_eq(count_dir_entries(dir), calls);
    remove_tmpdir(dir);
}
END_TEST

typedef struct {
    ddl_exporter *e;
    int result;
    int npaths;
} flush_job;

static void *
flush_thread(void *arg)
{
    flush_job *job = arg;
    char **paths = NULL;

    job->result = ddl_exporter_flush(job->e, &paths);
    for (job->npaths = 0; paths && paths[job->npaths]; job->npaths++) {
    }
    ddl_exporter_free_paths(paths);
    return NULL;
}

/* Many threads flushing at once: every call returns with a result, and
 * concurrent requests may share one export. */
START_TEST(test_concurrent_flush)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    pthread_t threads[8];
    flush_job jobs[8];
    int i, round;

    snprintf(prefix, sizeof(prefix), "%s/p", dir);
    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    for (round = 0; round < 5; round++) {
        for (i = 0; i < 8; i++) {
            jobs[i].e = e;
            jobs[i].result = 99;
            ck_assert_int_eq(
                pthread_create(&threads[i], NULL, flush_thread, &jobs[i]), 0);
        }
        for (i = 0; i < 8; i++) {
            pthread_join(threads[i], NULL);
            ck_assert_int_eq(jobs[i].result, 0);
            ck_assert_int_eq(jobs[i].npaths, 1);
        }
    }
    ddl_exporter_stop(e, 0);
    ck_assert_int_ge(producer_calls(&prod), 5);
    ck_assert_int_le(producer_calls(&prod), 40);
    ck_assert_int_eq(count_dir_entries(dir), producer_calls(&prod));
    remove_tmpdir(dir);
}
END_TEST

/* ------------------------------------------------------------------ */
/* upload                                                               */

static void
check_header(const char *head, const char *name, const char *value)
{
    char *v = get_header(head, name);

    ck_assert_msg(v != NULL, "missing header %s", name);
    ck_assert_str_eq(v, value);
    free(v);
}

START_TEST(test_upload_request)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url, *ctype, *json, *cl;
    mpart parts[4];
    int n;
    captured *req;

    server_start(&srv, NULL);
    url = server_url(&srv);
    prod.size = 200 * 1024;
    cfg.upload_enabled = 1;
    cfg.url = url;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);

    ck_assert_uint_eq(st.uploads_ok, 1);
    ck_assert_uint_eq(st.uploads_failed, 0);
    ck_assert_uint_eq(st.upload_retries, 0);
    ck_assert_uint_eq(st.bytes_uploaded, prod.size);
    ck_assert_int_eq(st.last_http_status, 200);
    ck_assert_int_eq(log_count(&sink, "upload-ok", DDL_LOG_DEBUG), 1);

    ck_assert_int_eq(srv.nreq, 1);
    req = &srv.reqs[0];
    ck_assert_msg(
        strncmp(req->head, "POST /profiling/v1/input HTTP/1.1\r\n", 35) == 0,
        "request line: %.60s", req->head);
    check_header(req->head, "DD-EVP-ORIGIN", "ddlock");
    check_header(req->head, "DD-EVP-ORIGIN-VERSION", VERSION);
    check_header(req->head, "User-Agent", "ddlock/" VERSION);
    check_header(req->head, "Connection", "close");
    ck_assert_ptr_null(find_header_line(req->head, "DD-API-KEY"));
    ck_assert_ptr_null(find_header_line(req->head, "Expect"));
    cl = get_header(req->head, "Content-Length");
    ck_assert_ptr_nonnull(cl);
    ck_assert_uint_eq(strtoul(cl, NULL, 10), req->body_len);
    free(cl);
    ctype = get_header(req->head, "Content-Type");
    ck_assert_ptr_nonnull(ctype);
    ck_assert_msg(strncmp(ctype, "multipart/form-data; boundary=", 30) == 0,
                  "content type %s", ctype);

    n = parse_multipart(ctype, req->body, req->body_len, parts, 4);
    ck_assert_int_eq(n, 2);
    ck_assert_ptr_nonnull(strstr(parts[0].headers,
                                 "Content-Disposition: form-data; "
                                 "name=\"event\"; filename=\"event.json\""));
    ck_assert_ptr_nonnull(
        strstr(parts[0].headers, "Content-Type: application/json"));
    json = ddl_exporter_event_json(TAGS, START_NS, END_NS, VERSION);
    ck_assert_uint_eq(parts[0].len, strlen(json));
    ck_assert_mem_eq(parts[0].data, json, parts[0].len);
    free(json);
    ck_assert_ptr_nonnull(strstr(parts[1].headers,
                                 "Content-Disposition: form-data; "
                                 "name=\"profile.pprof\"; "
                                 "filename=\"profile.pprof\""));
    ck_assert_ptr_nonnull(
        strstr(parts[1].headers, "Content-Type: application/octet-stream"));
    ck_assert_uint_eq(parts[1].len, prod.last_len);
    ck_assert_mem_eq(parts[1].data, prod.last, prod.last_len);
    free_parts(parts, n);
    free(ctype);
    server_free(&srv);
    free(url);
}
END_TEST

START_TEST(test_upload_api_key_header)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    char *url;

    server_start(&srv, NULL);
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.api_key = API_KEY;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_int_eq(srv.nreq, 1);
    check_header(srv.reqs[0].head, "DD-API-KEY", API_KEY);
    check_header(srv.reqs[0].head, "DD-EVP-ORIGIN", "ddlock");
    server_free(&srv);
    free(url);
}
END_TEST

START_TEST(test_upload_file_and_upload)
{
    server srv;
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url, *ctype;
    mpart parts[4];
    unsigned char *data;
    size_t len;
    char **paths;
    int n;

    server_start(&srv, NULL);
    url = server_url(&srv);
    snprintf(prefix, sizeof(prefix), "%s/both", dir);
    cfg.output_prefix = prefix;
    cfg.upload_enabled = 1;
    cfg.url = url;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_uint_eq(st.files_written, 1);
    ck_assert_uint_eq(st.uploads_ok, 1);
    /* the uploaded bytes are exactly the file's bytes */
    data = read_file(paths[0], &len);
    ctype = get_header(srv.reqs[0].head, "Content-Type");
    n = parse_multipart(ctype, srv.reqs[0].body, srv.reqs[0].body_len, parts,
                        4);
    ck_assert_int_eq(n, 2);
    ck_assert_uint_eq(parts[1].len, len);
    ck_assert_mem_eq(parts[1].data, data, len);
    free_parts(parts, n);
    free(ctype);
    free(data);
    ddl_exporter_free_paths(paths);
    server_free(&srv);
    free(url);
    remove_tmpdir(dir);
}
END_TEST

START_TEST(test_retry_500_then_200)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url;
    int64_t gap;
    int rc;

    server_start(&srv, NULL);
    srv.statuses[0] = 500;
    srv.statuses[1] = 200;
    srv.nstatuses = 2;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    e = start_ok(&cfg);
    rc = ddl_exporter_flush(e, NULL);
    ddl_exporter_get_stats(e, &st);
    ck_assert_msg(rc == 0, "flush failed: %s", st.last_error);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_int_eq(srv.nreq, 2);
    ck_assert_uint_eq(st.uploads_ok, 1);
    ck_assert_uint_eq(st.uploads_failed, 0);
    ck_assert_uint_eq(st.upload_retries, 1);
    ck_assert_int_eq(st.last_http_status, 200);
    gap = srv.reqs[1].at_ms - srv.reqs[0].at_ms;
    printf("retry after HTTP 500: second request %" PRId64 " ms after the "
           "first\n",
           gap);
    ck_assert_int_ge(gap, 90);
    ck_assert_int_eq(log_count(&sink, "upload-ok", DDL_LOG_DEBUG), 1);
    ck_assert_int_eq(log_count(&sink, "upload-http-5xx", -1), 0);
    server_free(&srv);
    free(url);
}
END_TEST

START_TEST(test_no_retry_on_400)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url;

    server_start(&srv, NULL);
    srv.statuses[0] = 400;
    srv.statuses[1] = 200;
    srv.nstatuses = 2;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.api_key = API_KEY;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_int_eq(srv.nreq, 1);
    ck_assert_uint_eq(st.uploads_ok, 0);
    ck_assert_uint_eq(st.uploads_failed, 1);
    ck_assert_uint_eq(st.upload_retries, 0);
    ck_assert_int_eq(st.last_http_status, 400);
    ck_assert_ptr_nonnull(strstr(st.last_error, "HTTP 400"));
    ck_assert_ptr_null(strstr(st.last_error, API_KEY));
    ck_assert_int_eq(log_count(&sink, "upload-http-4xx", DDL_LOG_WARNING), 1);
    ck_assert(!log_contains(&sink, API_KEY));
    server_free(&srv);
    free(url);
}
END_TEST

START_TEST(test_redact_url)
{
    static const char *cases[][2] = {
        {"http://user:s3cret@host:8126/?token=qv1&flag&x=",
         "http://***@host:8126/?token=***&***&x=***"},
        {"http://127.0.0.1:8126/profiling/v1/input",
         "http://127.0.0.1:8126/profiling/v1/input"},
        {"https://u@h/p/a?k=v#frag", "https://***@h/p/a?k=***"},
        {"http://a@b@h/x@y?e=m@n", "http://***@h/x@y?e=***"},
        {"http://[::1]:1/", "http://[::1]:1/"},
        {"http://h/?", "http://h/?"},
        {"", ""},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = ddl_upload_redact_url(cases[i][0]);
        ck_assert_ptr_nonnull(got);
        ck_assert_str_eq(got, cases[i][1]);
        free(got);
    }
}
END_TEST

/* The system CA search: the first readable regular file, else the first
 * directory, in list order. */
START_TEST(test_pick_ca)
{
    char *dir = make_tmpdir();
    char missing[4096], bundle[4096], later[4096];
    const char *none[] = {NULL};
    int is_dir = -1, fd;

    snprintf(missing, sizeof(missing), "%s/missing.pem", dir);
    snprintf(bundle, sizeof(bundle), "%s/bundle.pem", dir);
    snprintf(later, sizeof(later), "%s/later.pem", dir);
    fd = open(bundle, O_CREAT | O_WRONLY, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    fd = open(later, O_CREAT | O_WRONLY, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    {
        /* a directory where a file is expected is skipped */
        const char *files[] = {missing, dir, bundle, later, NULL};
        const char *dirs[] = {dir, NULL};
        ck_assert_ptr_eq(ddl_upload_pick_ca(files, dirs, &is_dir), bundle);
        ck_assert_int_eq(is_dir, 0);
    }
    {
        const char *files[] = {missing, NULL};
        const char *dirs[] = {missing, bundle, dir, NULL};
        ck_assert_ptr_eq(ddl_upload_pick_ca(files, dirs, &is_dir), dir);
        ck_assert_int_eq(is_dir, 1);
    }
    {
        const char *files[] = {missing, NULL};
        ck_assert_ptr_null(ddl_upload_pick_ca(files, none, &is_dir));
        ck_assert_int_eq(is_dir, 0);
    }
    remove_tmpdir(dir);
}
END_TEST

/* Credentials and a query in the agent URL: the request goes to the path
 * with its query, the failure message names the URL redacted. */
START_TEST(test_failure_message_redacts_url)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char url[160], shown[160];

    server_start(&srv, NULL);
    srv.statuses[0] = 403;
    srv.nstatuses = 1;
    snprintf(url, sizeof(url),
             "http://agent:s3cret@127.0.0.1:%d/profiling/v1/input?token=qv1",
             srv.port);
    snprintf(shown, sizeof(shown),
             "upload failed: HTTP 403 to http://***@127.0.0.1:%d"
             "/profiling/v1/input?token=***",
             srv.port);
    cfg.upload_enabled = 1;
    cfg.url = url;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_int_eq(srv.nreq, 1);
    ck_assert_msg(strncmp(srv.reqs[0].head,
                          "POST /profiling/v1/input?token=qv1 HTTP/1.1\r\n",
                          44) == 0,
                  "request line: %.60s", srv.reqs[0].head);
    /* libcurl sends the URL's credentials as basic authentication */
    ck_assert_ptr_nonnull(
        strcasestr(srv.reqs[0].head, "Authorization: Basic"));
    ck_assert_str_eq(st.last_error, shown);
    ck_assert_int_eq(log_count(&sink, "upload-http-4xx", DDL_LOG_WARNING), 1);
    ck_assert(!log_contains(&sink, "s3cret"));
    ck_assert(!log_contains(&sink, "qv1"));
    ck_assert(log_contains(&sink, shown));
    server_free(&srv);
}
END_TEST

START_TEST(test_5xx_exhausts_retries)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url;
    int64_t t0, elapsed;

    server_start(&srv, NULL);
    srv.statuses[0] = srv.statuses[1] = srv.statuses[2] = 503;
    srv.statuses[3] = 200;
    srv.nstatuses = 4;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.max_retries = 2;
    e = start_ok(&cfg);
    t0 = now_ms();
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    elapsed = now_ms() - t0;
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    printf("HTTP 503 x3 (2 retries): flush took %" PRId64 " ms\n", elapsed);
    ck_assert_int_eq(srv.nreq, 3);
    ck_assert_uint_eq(st.uploads_failed, 1);
    ck_assert_uint_eq(st.upload_retries, 2);
    ck_assert_int_eq(st.last_http_status, 503);
    ck_assert_ptr_nonnull(strstr(st.last_error, "HTTP 503"));
    ck_assert_int_eq(log_count(&sink, "upload-http-5xx", DDL_LOG_WARNING), 1);
    ck_assert_int_ge(elapsed, 400); /* 100 ms + 300 ms backoff */
    server_free(&srv);
    free(url);
}
END_TEST

/* Retries never run past the next interval: with a 350 ms interval only the
 * 100 ms retry fits (the next one would wake at >= 400 ms). */
START_TEST(test_retries_bounded_by_interval)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url;
    int i;

    server_start(&srv, NULL);
    for (i = 0; i < MAX_REQS; i++) {
        srv.statuses[i] = 502;
    }
    srv.nstatuses = MAX_REQS;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.max_retries = 10;
    cfg.interval_s = 0.35;
    prod.result = 1; /* periodic exports find nothing */
    e = start_ok(&cfg);
    pthread_mutex_lock(&prod.mu);
    prod.result = 0;
    pthread_mutex_unlock(&prod.mu);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    ddl_exporter_get_stats(e, &st);
    pthread_mutex_lock(&prod.mu);
    prod.result = 1;
    pthread_mutex_unlock(&prod.mu);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_uint_eq(st.upload_retries, 1);
    ck_assert_uint_eq(st.uploads_failed, 1);
    server_free(&srv);
    free(url);
}
END_TEST

START_TEST(test_connection_refused)
{
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char url[128];
    int64_t t0, elapsed;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/profiling/v1/input",
             closed_port());
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.api_key = API_KEY;
    e = start_ok(&cfg);
    t0 = now_ms();
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
    elapsed = now_ms() - t0;
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    printf("connection refused, 2 retries: flush took %" PRId64 " ms\n",
           elapsed);
    ck_assert_uint_eq(st.uploads_ok, 0);
    ck_assert_uint_eq(st.uploads_failed, 1);
    ck_assert_uint_eq(st.upload_retries, 2);
    ck_assert_int_eq(st.last_http_status, 0);
    ck_assert_ptr_nonnull(strstr(st.last_error, "curl error 7"));
    ck_assert_ptr_null(strstr(st.last_error, API_KEY));
    ck_assert_int_eq(log_count(&sink, "upload-connect", DDL_LOG_WARNING), 1);
    ck_assert(!log_contains(&sink, API_KEY));
    ck_assert_int_lt(elapsed, 3000);
}
END_TEST

/* An agent that accepts and never answers: stop(final=1) is bounded by
 * timeout_ms. */
START_TEST(test_hung_server_final_stop)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    char *url;
    int64_t t0, elapsed;

    server_start(&srv, NULL);
    srv.hang = 1;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.timeout_ms = 500;
    cfg.max_retries = 5;
    cfg.api_key = API_KEY;
    e = start_ok(&cfg);
    t0 = now_ms();
    ddl_exporter_stop(e, 1);
    elapsed = now_ms() - t0;
    printf("hung agent, timeout_ms=500: stop(final=1) took %" PRId64 " ms\n",
           elapsed);
    ck_assert_int_eq(server_nreq(&srv), 1);
    server_stop(&srv);
    ck_assert_int_ge(elapsed, 450);
    ck_assert_int_le(elapsed, 500 + 1000);
    ck_assert_int_eq(log_count(&sink, "upload-timeout", DDL_LOG_WARNING), 1);
    ck_assert(!log_contains(&sink, API_KEY));
    server_free(&srv);
    free(url);
}
END_TEST

/* A periodic upload is hanging when stop(final=1) comes: the hung upload
 * and the final one share the timeout_ms budget. */
START_TEST(test_hung_server_stop_during_upload)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    char *url;
    int64_t t0, elapsed;

    server_start(&srv, NULL);
    srv.hang = 1;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.timeout_ms = 800;
    cfg.interval_s = 0.05;
    e = start_ok(&cfg);
    while (server_nreq(&srv) < 1) {
        sleep_ms(10);
    }
    sleep_ms(100);
    t0 = now_ms();
    ddl_exporter_stop(e, 1);
    elapsed = now_ms() - t0;
    printf("hung periodic upload, timeout_ms=800: stop(final=1) took "
           "%" PRId64 " ms\n",
           elapsed);
    server_stop(&srv);
    ck_assert_int_le(elapsed, 800 + 1000);
    server_free(&srv);
    free(url);
}
END_TEST

/* stop(final=0) interrupts a hanging upload at once. */
START_TEST(test_hung_server_stop_discard)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url;
    int64_t t0, elapsed;

    server_start(&srv, NULL);
    srv.hang = 1;
    url = server_url(&srv);
    cfg.upload_enabled = 1;
    cfg.url = url;
    cfg.timeout_ms = 10000;
    cfg.interval_s = 0.05;
    e = start_ok(&cfg);
    while (server_nreq(&srv) < 1) {
        sleep_ms(10);
    }
    ddl_exporter_get_stats(e, &st);
    t0 = now_ms();
    ddl_exporter_stop(e, 0);
    elapsed = now_ms() - t0;
    printf("hung upload, timeout_ms=10000: stop(final=0) took %" PRId64
           " ms\n",
           elapsed);
    server_stop(&srv);
    ck_assert_int_lt(elapsed, 1000);
    server_free(&srv);
    free(url);
}
END_TEST

START_TEST(test_unix_socket_upload)
{
    server srv;
    char *dir = make_tmpdir();
    char sock[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *ctype;
    mpart parts[4];
    int n;

    snprintf(sock, sizeof(sock), "%s/apm.socket", dir);
    server_start(&srv, sock);
    cfg.upload_enabled = 1;
    cfg.url = "http://localhost/profiling/v1/input";
    cfg.unix_socket = sock;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    server_stop(&srv);
    ck_assert_uint_eq(st.uploads_ok, 1);
    ck_assert_int_eq(srv.nreq, 1);
    ck_assert(strncmp(srv.reqs[0].head, "POST /profiling/v1/input ", 25) == 0);
    check_header(srv.reqs[0].head, "Host", "localhost");
    ctype = get_header(srv.reqs[0].head, "Content-Type");
    n = parse_multipart(ctype, srv.reqs[0].body, srv.reqs[0].body_len, parts,
                        4);
    ck_assert_int_eq(n, 2);
    ck_assert_uint_eq(parts[1].len, prod.last_len);
    ck_assert_mem_eq(parts[1].data, prod.last, prod.last_len);
    free_parts(parts, n);
    free(ctype);
    server_free(&srv);
    remove_tmpdir(dir);
}
END_TEST

/* The API key never reaches last_error or a log message, whatever fails. */
START_TEST(test_api_key_never_in_errors)
{
    server srv;
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url, bad[128];
    int statuses[] = {401, 403, 500, 302};
    size_t i;

    cfg.upload_enabled = 1;
    cfg.api_key = API_KEY;
    cfg.max_retries = 0;
    for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        server_start(&srv, NULL);
        srv.statuses[0] = statuses[i];
        srv.nstatuses = 1;
        url = server_url(&srv);
        cfg.url = url;
        e = start_ok(&cfg);
        ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
        ddl_exporter_get_stats(e, &st);
        ddl_exporter_stop(e, 0);
        server_stop(&srv);
        server_free(&srv);
        ck_assert_str_ne(st.last_error, "");
        ck_assert_ptr_null(strstr(st.last_error, API_KEY));
        free(url);
    }
    /* unresolvable host, https against a plain port */
    snprintf(bad, sizeof(bad), "https://127.0.0.1:%d/x", closed_port());
    {
        const char *urls[] = {"http://no-such-host.invalid/x", bad};
        for (i = 0; i < 2; i++) {
            cfg.url = urls[i];
            e = start_ok(&cfg);
            ck_assert_int_eq(ddl_exporter_flush(e, NULL), -1);
            ddl_exporter_get_stats(e, &st);
            ddl_exporter_stop(e, 0);
            ck_assert_str_ne(st.last_error, "");
            ck_assert_ptr_null(strstr(st.last_error, API_KEY));
        }
    }
    ck_assert(!log_contains(&sink, API_KEY));
}
END_TEST

/* ------------------------------------------------------------------ */
/* fork                                                                 */

/* In a forked child: restart the exporter, flush once and check the file
 * name (child pid, seq 1) and, when uploading, that the upload went
 * through. Returns 0 when all is well, else a code naming the failure. */
static int
fork_child_checks(ddl_exporter *e, const char *prefix, int uploads)
{
    char expect[8192];
    char **paths = NULL;
    ddl_exporter_stats st;
    int code = 0;

    if (ddl_exporter_fork_child(e) != 0) {
        return 10;
    }
    if (ddl_exporter_flush(e, &paths) != 0) {
        code = 11;
    }
    else {
        snprintf(expect, sizeof(expect), "%s.%ld.1.pprof", prefix,
                 (long)getpid());
        if (paths == NULL || paths[0] == NULL ||
            strcmp(paths[0], expect) != 0) {
            code = 12;
        }
    }
    ddl_exporter_free_paths(paths);
    ddl_exporter_get_stats(e, &st);
    if (code == 0 && (st.exports != 1 || st.files_written != 1 ||
                      st.uploads_ok != (uint64_t)uploads)) {
        code = 13;
    }
    ddl_exporter_stop(e, 0);
    return code;
}

/* The parent's exporter carries on after fork: seq goes on at 3. */
static void
fork_parent_checks(ddl_exporter *e, const char *prefix)
{
    char expect[8192];
    char **paths;

    ddl_exporter_fork_parent(e);
    ck_assert_int_eq(ddl_exporter_flush(e, &paths), 0);
    snprintf(expect, sizeof(expect), "%s.%ld.3.pprof", prefix, (long)getpid());
    ck_assert_str_eq(paths[0], expect);
    ddl_exporter_free_paths(paths);
}

/* After the child exited: it wrote "<prefix>.<child pid>.1.pprof". */
static void
check_child_file(const char *prefix, pid_t child)
{
    char expect[8192];

    snprintf(expect, sizeof(expect), "%s.%ld.1.pprof", prefix, (long)child);
    ck_assert_int_eq(access(expect, F_OK), 0);
}

/* Fork a file exporter: the child gets a fresh thread, its own pid in file
 * names and seq back at 1; the parent carries on. The child's exit status
 * is its verdict, so under valgrind its own leak check counts too. */
START_TEST(test_fork_child_restarts)
{
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter *e;
    pid_t pid;
    int status;

    snprintf(prefix, sizeof(prefix), "%s/f", dir);
    cfg.output_prefix = prefix;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0); /* parent: seq 1 */
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0); /* parent: seq 2 */

    fflush(stdout);
    ddl_exporter_fork_prepare(e);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int code = fork_child_checks(e, prefix, 0);
        free(dir);
        _exit(code);
    }
    fork_parent_checks(e, prefix);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    check_child_file(prefix, pid);
    ddl_exporter_stop(e, 0);
    ck_assert_int_eq(count_dir_entries(dir), 4);
    remove_tmpdir(dir);
}
END_TEST

/* Fork after the parent uploaded (its curl handle exists): the child
 * leaves that handle alone, uploads with a new one, and the parent's
 * uploads carry on. The verdict comes back through a pipe: under valgrind
 * the child leaves through exec, because OpenSSL's per-thread state of the
 * parent's export thread (a thread the child does not have) would be
 * reported as lost. */
START_TEST(test_fork_after_upload)
{
    server srv;
    char *dir = make_tmpdir();
    char prefix[4096];
    ddl_exporter_config cfg = base_config();
    ddl_exporter_stats st;
    ddl_exporter *e;
    char *url;
    pid_t pid;
    int status, fds[2], verdict = -1;

    server_start(&srv, NULL);
    url = server_url(&srv);
    snprintf(prefix, sizeof(prefix), "%s/u", dir);
    cfg.output_prefix = prefix;
    cfg.upload_enabled = 1;
    cfg.url = url;
    e = start_ok(&cfg);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ck_assert_int_eq(ddl_exporter_flush(e, NULL), 0);
    ck_assert_int_eq(pipe(fds), 0);

    fflush(stdout);
    ddl_exporter_fork_prepare(e);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int code = fork_child_checks(e, prefix, 1);
        ssize_t n = write(fds[1], &code, sizeof(code));

        (void)n;
        if (RUNNING_ON_VALGRIND) {
            execl("/bin/true", "true", (char *)NULL);
        }
        _exit(0);
    }
    close(fds[1]);
    fork_parent_checks(e, prefix);
    ck_assert_int_eq(read(fds[0], &verdict, sizeof(verdict)),
                     (ssize_t)sizeof(verdict));
    close(fds[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_int_eq(verdict, 0);
    check_child_file(prefix, pid);
    ddl_exporter_get_stats(e, &st);
    ddl_exporter_stop(e, 0);
    ck_assert_uint_eq(st.uploads_ok, 3);
    ck_assert_uint_eq(st.files_written, 3);
    ck_assert_int_eq(server_nreq(&srv), 4); /* 3 parent + 1 child */
    server_stop(&srv);
    server_free(&srv);
    ck_assert_int_eq(count_dir_entries(dir), 4);
    free(url);
    remove_tmpdir(dir);
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *
exporter_suite(void)
{
    Suite *s = suite_create("exporter");
    TCase *tc;

    tc = tcase_create("event_json");
    tcase_add_test(tc, test_event_json_fields);
    tcase_add_test(tc, test_event_json_escaping);
    tcase_add_test(tc, test_redact_url);
    tcase_add_test(tc, test_pick_ca);
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_file_naming_and_seq);
    tcase_add_test(tc, test_max_files_removes_oldest_own_files);
    tcase_add_test(tc, test_min_free_bytes_stops_writing);
    tcase_add_test(tc, test_file_mode);
    tcase_add_test(tc, test_symlink_replaced_not_followed);
    tcase_add_test(tc, test_missing_directory);
    tcase_add_test(tc, test_unwritable_directory);
    tcase_add_test(tc, test_file_too_large);
    suite_add_tcase(s, tc);

    tc = tcase_create("thread");
    tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_start_flush_stop);
    tcase_add_test(tc, test_invalid_config);
    tcase_add_test(tc, test_produce_nothing);
    tcase_add_test(tc, test_produce_failure);
    tcase_add_test(tc, test_periodic_export);
    tcase_add_test(tc, test_concurrent_flush);
    suite_add_tcase(s, tc);

    tc = tcase_create("upload");
    tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_upload_request);
    tcase_add_test(tc, test_upload_api_key_header);
    tcase_add_test(tc, test_upload_file_and_upload);
    tcase_add_test(tc, test_retry_500_then_200);
    tcase_add_test(tc, test_no_retry_on_400);
    tcase_add_test(tc, test_failure_message_redacts_url);
    tcase_add_test(tc, test_5xx_exhausts_retries);
    tcase_add_test(tc, test_retries_bounded_by_interval);
    tcase_add_test(tc, test_connection_refused);
    tcase_add_test(tc, test_hung_server_final_stop);
    tcase_add_test(tc, test_hung_server_stop_during_upload);
    tcase_add_test(tc, test_hung_server_stop_discard);
    tcase_add_test(tc, test_unix_socket_upload);
    tcase_add_test(tc, test_api_key_never_in_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("fork");
    tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_fork_child_restarts);
    tcase_add_test(tc, test_fork_after_upload);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(exporter_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
