/* ddlock atomic file writer (see writer.h).
 *
 * Pure C11 + POSIX: never includes Python.h, never calls Python.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#include "writer.h"

#define TEMP_NAME_ATTEMPTS 16
#define BYTES_PER_MB (UINT64_C(1) << 20)

/* ------------------------------------------------------------------ */
/* Files written                                                        */

struct ddl_file_history {
    char **paths; /* oldest first */
    size_t n;
    size_t cap;
};

ddl_file_history *
ddl_file_history_new(void)
{
    return calloc(1, sizeof(ddl_file_history));
}

void
ddl_file_history_clear(ddl_file_history *h)
{
    size_t i;

    if (h == NULL) {
        return;
    }
    for (i = 0; i < h->n; i++) {
        free(h->paths[i]);
    }
    h->n = 0;
}

void
ddl_file_history_free(ddl_file_history *h)
{
    if (h != NULL) {
        ddl_file_history_clear(h);
        free(h->paths);
        free(h);
    }
}

/* Remember path (a copy). Called with mu held. -1 when out of memory. */
static int
history_push(ddl_file_history *h, const char *path)
{
    char *copy = strdup(path);

    if (copy == NULL) {
        return -1;
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        char **paths = realloc(h->paths, cap * sizeof(char *));
        if (paths == NULL) {
            free(copy);
            return -1;
        }
        h->paths = paths;
        h->cap = cap;
    }
    h->paths[h->n++] = copy;
    return 0;
}

/* The oldest path when more than max are remembered (the caller frees it
 * and removes the file), else NULL. Called with mu held. */
static char *
history_pop_excess(ddl_file_history *h, unsigned max)
{
    char *oldest;

    if (h->n <= max) {
        return NULL;
    }
    oldest = h->paths[0];
    memmove(h->paths, h->paths + 1, (h->n - 1) * sizeof(char *));
    h->n--;
    return oldest;
}

/* Remove the oldest files this process wrote beyond max_files. */
static void
remove_excess_files(ddl_exporter *e)
{
    char errbuf[128];
    char *oldest;

    for (;;) {
        pthread_mutex_lock(&e->mu);
        oldest = history_pop_excess(e->history, e->max_files);
        pthread_mutex_unlock(&e->mu);
        if (oldest == NULL) {
            return;
        }
        if (unlink(oldest) == 0 || errno == ENOENT) {
            pthread_mutex_lock(&e->mu);
            e->stats.files_removed++;
            pthread_mutex_unlock(&e->mu);
            ddl_ex_log(e, DDL_LOG_DEBUG, "file-removed",
                       "removed %s (keeping the last %u files)", oldest,
                       e->max_files);
        }
        else {
            ddl_ex_log(e, DDL_LOG_WARNING, "file-remove",
                       "cannot remove %s: %s", oldest,
                       ddl_ex_strerror(errno, errbuf, sizeof(errbuf)));
        }
        free(oldest);
    }
}

/* 1 when writing len more bytes would leave less than min_free_bytes
 * available where the files go (then the file is counted as skipped, and
 * the first of a run of them logged), else 0. */
static int
disk_too_full(ddl_exporter *e, size_t len)
{
    struct statvfs sv;
    const char *slash;
    char *dir;
    uint64_t avail;
    char msg[sizeof(e->stats.last_error)];
    int rc;

    if (e->min_free_bytes == 0) {
        return 0;
    }
    slash = strrchr(e->output_prefix, '/');
    if (slash == NULL) {
        dir = strdup(".");
    }
    else if (slash == e->output_prefix) {
        dir = strdup("/");
    }
    else {
        dir = ddl_ex_format("%.*s", (int)(slash - e->output_prefix),
                            e->output_prefix);
    }
    if (dir == NULL) {
        return 0;
    }
    rc = statvfs(dir, &sv);
    if (rc != 0 || sv.f_blocks == 0) {
        /* unknown, or a pseudo filesystem (sysfs, procfs) that counts no
         * blocks: the write itself will tell */
        free(dir);
        return 0;
    }
    avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    if (avail >= e->min_free_bytes && avail - e->min_free_bytes >= len) {
        if (e->disk_low) {
            e->disk_low = 0;
            ddl_ex_log(e, DDL_LOG_INFO, "file-disk-ok",
                       "%" PRIu64 " MB free in %s again: writing profiles",
                       avail / BYTES_PER_MB, dir);
        }
        free(dir);
        return 0;
    }
    snprintf(msg, sizeof(msg),
             "not writing profiles: %" PRIu64 " MB free in %s, the floor is "
             "%" PRIu64 " MB",
             avail / BYTES_PER_MB, dir, e->min_free_bytes / BYTES_PER_MB);
    free(dir);
    pthread_mutex_lock(&e->mu);
    e->stats.files_skipped_low_disk++;
    if (!e->disk_low) {
        ddl_ex_set_error_locked(e, msg);
    }
    pthread_mutex_unlock(&e->mu);
    if (!e->disk_low) {
        e->disk_low = 1;
        ddl_ex_log(e, DDL_LOG_WARNING, "file-disk-low", "%s", msg);
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Writing one file                                                     */

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
    x = (uint64_t)ddl_ex_mono_ns() ^ ((uint64_t)getpid() << 32) ^
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
    return ddl_ex_format("%s.tmp.%s", path, suffix);
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
int
ddl_writer_write(ddl_exporter *e, const ddl_buf *buf, char **path_out)
{
    char *path = NULL, *tmp = NULL;
    const char *step = "create";
    char errbuf[128], msg[sizeof(e->stats.last_error)];
    uint64_t seq;
    int fd = -1, err = 0, i, tracked;

    if (disk_too_full(e, buf->len)) {
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    seq = e->seq + 1;
    pthread_mutex_unlock(&e->mu);

    path = ddl_ex_format("%s.%ld.%" PRIu64 ".pprof", e->output_prefix,
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
    /* out of memory: this file is not remembered, so never removed */
    tracked = e->max_files > 0 && history_push(e->history, path) == 0;
    pthread_mutex_unlock(&e->mu);
    ddl_ex_log(e, DDL_LOG_DEBUG, "file-ok", "wrote %zu bytes to %s", buf->len,
               path);
    if (tracked) {
        remove_excess_files(e);
    }
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
             ddl_ex_strerror(err, errbuf, sizeof(errbuf)));
    free(path);
    pthread_mutex_lock(&e->mu);
    e->stats.file_errors++;
    ddl_ex_set_error_locked(e, msg);
    pthread_mutex_unlock(&e->mu);
    ddl_ex_log(e, DDL_LOG_WARNING, "file-write", "%s", msg);
    return -1;
}
