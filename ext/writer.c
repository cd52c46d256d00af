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
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#include "writer.h"

#define TEMP_NAME_ATTEMPTS 16

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
    int fd = -1, err = 0, i;

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
    pthread_mutex_unlock(&e->mu);
    ddl_ex_log(e, DDL_LOG_DEBUG, "file-ok", "wrote %zu bytes to %s", buf->len,
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
             ddl_ex_strerror(err, errbuf, sizeof(errbuf)));
    free(path);
    pthread_mutex_lock(&e->mu);
    e->stats.file_errors++;
    ddl_ex_set_error_locked(e, msg);
    pthread_mutex_unlock(&e->mu);
    ddl_ex_log(e, DDL_LOG_WARNING, "file-write", "%s", msg);
    return -1;
}
