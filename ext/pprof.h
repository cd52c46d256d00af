/* ddlock pprof encoding: a profile snapshot → pprof protobuf → gzip.
 * Pure C (protobuf-c + zlib): no Python.h. */
#ifndef DDLOCK_PPROF_H
#define DDLOCK_PPROF_H

#include <stddef.h>
#include <stdint.h>

#include "profile.h"

/* An owned byte buffer (free with ddl_buf_free). */
typedef struct {
    uint8_t *data;
    size_t len;
} ddl_buf;

void ddl_buf_free(ddl_buf *b);

/* Encode the snapshot as an uncompressed pprof Profile message:
 * sample types lock-acquire/count, lock-acquire-wait/nanoseconds,
 * lock-release/count, lock-release-hold/nanoseconds; string_table[0] = "";
 * ids from 1; time_nanos = start, duration_nanos = end - start; when samples
 * were dropped, a comment "ddlock: N samples dropped (max samples reached)".
 * Returns 0 on success, -1 on failure (out untouched). */
int ddl_pprof_encode_raw(const ddl_snapshot *s, ddl_buf *out);

/* The versions of protobuf-c and zlib this encoder runs with (static
 * strings of the libraries themselves). */
const char *ddl_pprof_protobuf_c_version(void);
const char *ddl_pprof_zlib_version(void);

/* Same, gzip-compressed (RFC 1952 framing, what `go tool pprof` reads). */
int ddl_pprof_encode(const ddl_snapshot *s, ddl_buf *out);

/* gzip helper, exposed for tests: compress in → out. 0 ok, -1 failure. */
int ddl_gzip(const uint8_t *in, size_t len, ddl_buf *out);

#endif /* DDLOCK_PPROF_H */
