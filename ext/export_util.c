/* ddlock exporter helpers: clocks, strings, secrets, logging and the error
 * record, shared by export.c, writer.c, upload.c and event.c
 * (export_internal.h).
 *
 * Pure C11 + POSIX threads: never includes Python.h, never calls Python.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "export_internal.h"

int64_t
ddl_ex_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

int64_t
ddl_ex_wall_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

struct timespec
ddl_ex_timespec(int64_t ns)
{
    struct timespec ts;

    if (ns < 0) {
        ns = 0;
    }
    ts.tv_sec = (time_t)(ns / NS_PER_S);
    ts.tv_nsec = (long)(ns % NS_PER_S);
    return ts;
}

void
ddl_ex_timedwait(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t abs_ns)
{
    struct timespec ts = ddl_ex_timespec(abs_ns);

    (void)pthread_cond_timedwait(cond, mu, &ts);
}

int
ddl_ex_copy_optional(char **dst, const char *src)
{
    *dst = NULL;
    if (src == NULL || src[0] == '\0') {
        return 0;
    }
    *dst = strdup(src);
    return *dst != NULL ? 0 : -1;
}

void
ddl_ex_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0) {
        *v++ = 0;
    }
}

void
ddl_ex_free_secret(char *s)
{
    if (s != NULL) {
        ddl_ex_wipe(s, strlen(s));
        free(s);
    }
}

char *
ddl_ex_format(const char *fmt, ...)
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

const char *
ddl_ex_strerror(int err, char *buf, size_t size)
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

void
ddl_ex_log(ddl_exporter *e, int level, const char *kind, const char *fmt, ...)
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

void
ddl_ex_set_error_locked(ddl_exporter *e, const char *msg)
{
    snprintf(e->stats.last_error, sizeof(e->stats.last_error), "%s", msg);
}

void
ddl_ex_sb_append(ddl_strbuf *sb, const char *s, size_t n)
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

void
ddl_ex_sb_puts(ddl_strbuf *sb, const char *s)
{
    ddl_ex_sb_append(sb, s, strlen(s));
}
