/* ddlock atomic file writer: one profile to "<prefix>.<pid>.<seq>.pprof"
 * through a temp file in the same directory + rename. Pure C (no Python.h);
 * used by export.c only. */
#ifndef DDLOCK_WRITER_H
#define DDLOCK_WRITER_H

#include "export_internal.h"

/* Write buf as the exporter's next file (sequence number e->seq + 1). On
 * success *path_out receives the malloc'd path, e->seq (and *seq_store) and
 * the file counters are updated, the file is remembered in e->history and
 * the oldest ones beyond max_files are removed; on failure file_errors and
 * last_error are, and the failure is logged. While the filesystem has less
 * than min_free_bytes available nothing is written (files_skipped_low_disk;
 * logged when it starts). Called without mu. Returns 0 or -1. */
int ddl_writer_write(ddl_exporter *e, const ddl_buf *buf, char **path_out);

#endif /* DDLOCK_WRITER_H */
