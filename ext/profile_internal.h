/* ddlock profile internals shared by profile.c, pprof.c and the C tests.
 *
 * A ddl_snapshot is exactly the table the live profile aggregates into: the
 * swap hands the whole table over, so encoding reads these arrays directly.
 * Nothing here is thread-safe: a snapshot is owned by one thread.
 *
 * Ids are 0-based indices into the arrays; pprof ids are index + 1.
 * String index 0 is always "" (pprof's string_table[0]); strs[0] is only
 * valid once strs is allocated, so readers treat index 0 specially.
 */
#ifndef DDLOCK_PROFILE_INTERNAL_H
#define DDLOCK_PROFILE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "profile.h"

/* ddl_slabel.str value of a numeric label */
#define DDL_NUMERIC_LABEL UINT32_MAX

/* Every record type starts with its hash (index rebuilds read it there). */
typedef struct {
    uint64_t hash;
    const char *ptr; /* arena copy, not NUL terminated */
    size_t len;
} ddl_sstr;

typedef struct {
    uint64_t hash;
    uint32_t name;     /* string index */
    uint32_t filename; /* string index */
} ddl_sfunc;

typedef struct {
    uint64_t hash;
    int64_t line;
    uint32_t func; /* function index */
} ddl_sloc;

typedef struct {
    int64_t num;  /* numeric value when str == DDL_NUMERIC_LABEL */
    uint32_t key; /* string index */
    uint32_t str; /* string index, or DDL_NUMERIC_LABEL */
} ddl_slabel;

typedef struct {
    uint64_t hash;
    int64_t values[DDL_NVALUES];
    uint32_t *locs;     /* nframes location indices, leaf first (arena) */
    ddl_slabel *labels; /* nlabels labels, in the caller's order (arena) */
    uint32_t nframes;
    uint32_t nlabels;
} ddl_ssample;

/* open-addressing index: slot = (hash high 32 bits) << 32 | (index + 1),
 * 0 = empty; linear probing, load factor <= 1/2, no deletions */
typedef struct {
    uint64_t *slots;
    size_t mask; /* capacity - 1; slots == NULL when capacity is 0 */
} ddl_index;

typedef struct ddl_chunk ddl_chunk;

/* Hot-path caches keyed by the caller's string pointers (compared for
 * identity only: they may since point to other bytes). An entry is only a
 * hint: a hit is accepted after the caller's bytes compare equal to the
 * interned strings it names, or when the frame carries the same non-zero
 * key as the one the entry was made from (ddl_frame.key: the caller
 * promises the same bytes for the same key). */
typedef struct {
    const char *name_ptr; /* the caller's pointers */
    const char *file_ptr;
    const char *name_copy; /* the interned bytes they must equal */
    const char *file_copy;
    uint32_t name_len;
    uint32_t file_len;
    int64_t line;
    uint64_t key;  /* the frame's key, 0 = none */
    uint32_t loc1; /* location index + 1, 0 = empty entry */
    uint32_t unused;
} ddl_frame_cache;

typedef struct {
    const char *ptr;
    uint32_t str1; /* string index + 1, 0 = empty entry */
} ddl_str_cache;

/* bump allocator for string bytes and per-sample arrays; freed at once */
typedef struct {
    ddl_chunk *head;
    char *cur;
    size_t left;
    size_t total; /* bytes of all chunks */
} ddl_arena;

struct ddl_snapshot {
    ddl_sstr *strs;
    uint32_t nstrs; /* includes "" at index 0: always >= 1 */
    uint32_t cap_strs;
    ddl_sfunc *funcs;
    uint32_t nfuncs;
    uint32_t cap_funcs;
    ddl_sloc *locs;
    uint32_t nlocs;
    uint32_t cap_locs;
    ddl_ssample *samples;
    uint32_t nsamples;
    uint32_t cap_samples;
    ddl_index str_index;
    ddl_index func_index;
    ddl_index loc_index;
    ddl_index sample_index;
    ddl_arena arena;
    ddl_frame_cache *frame_cache; /* NULL until the first insertion;
                                     64-byte entries, 64-byte aligned */
    size_t frame_cache_mask;
    size_t frame_cache_used;
    ddl_str_cache *str_cache;
    size_t str_cache_mask;
    size_t str_cache_used;
    uint64_t total_frames; /* sum of nframes over samples */
    uint64_t total_labels; /* sum of nlabels over samples */
    int64_t start_ns;
    int64_t end_ns;
    uint64_t dropped; /* adds refused during this interval */
};

/* The string at index i ("" for 0). */
static inline ddl_str
ddl__snapshot_str(const ddl_snapshot *s, uint32_t i)
{
    ddl_str out = {"", 0, 0};
    if (i != 0 && i < s->nstrs) {
        out.ptr = s->strs[i].ptr;
        out.len = s->strs[i].len;
    }
    return out;
}

/* Index of an interned string, or -1 when absent ("" is always 0). */
int64_t ddl__snapshot_find_str(const ddl_snapshot *s, const char *ptr,
                               size_t len);

/* Resolve frame i / label i of sample si into borrowed views of the
 * snapshot's strings (valid while the snapshot lives). */
void ddl__snapshot_frame(const ddl_snapshot *s, size_t si, size_t i,
                         ddl_frame *out);
void ddl__snapshot_label(const ddl_snapshot *s, size_t si, size_t i,
                         ddl_label *out);

/* Bytes held by the snapshot's arena (tests check the cap bounds memory). */
size_t ddl__snapshot_arena_bytes(const ddl_snapshot *s);

#endif /* DDLOCK_PROFILE_INTERNAL_H */
