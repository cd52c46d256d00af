/* ddlock pprof encoding: a profile snapshot -> pprof protobuf -> gzip.
 *
 * The message is built with protobuf-c (ext/proto/profile.pb-c.h) from the
 * snapshot's arrays, which already hold pprof's ids (index + 1) and string
 * indices. The string table is the one exception: protobuf-c represents a
 * `string` as a NUL-terminated char *, but our strings carry lengths and may
 * contain NUL bytes, so the string_table entries (field 6) are written by
 * hand, ahead of the packed message (a protobuf message may carry its
 * fields in any order; repeated fields are merged in the order they appear,
 * and this way a reader meets the strings before anything that uses them).
 *
 * Pure C (protobuf-c + zlib): no Python.h.
 */
#include "pprof.h"
#include "profile_internal.h"
#include "proto/profile.pb-c.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* zlib level 1: on pprof data it produces files only ~5% larger than
 * level 6 in a third of the time (see benchmarks/bench_profile.c) */
#define DDL_GZIP_LEVEL 1

/* string_table is field 6, length-delimited: tag (6 << 3) | 2 */
#define STRING_TABLE_TAG 0x32

const char *
ddl_pprof_protobuf_c_version(void)
{
    return protobuf_c_version();
}

const char *
ddl_pprof_zlib_version(void)
{
    return zlibVersion();
}

void
ddl_buf_free(ddl_buf *b)
{
    if (b == NULL) {
        return;
    }
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

static size_t
varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *
varint_put(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* malloc'd array (callers write every element), never 0 bytes, NULL on
 * overflow or failure */
static void *
alloc_array(size_t n, size_t elem)
{
    if (n == 0) {
        n = 1;
    }
    if (n > SIZE_MAX / elem) {
        return NULL;
    }
    return malloc(n * elem);
}

enum {
    FS_LOCK_ACQUIRE,
    FS_COUNT,
    FS_LOCK_ACQUIRE_WAIT,
    FS_NANOSECONDS,
    FS_LOCK_RELEASE,
    FS_LOCK_RELEASE_HOLD,
    FS_LOCK_HOLDER_WAIT,
    FS_CONDITION_WAIT,
    FS_CONDITION_WAIT_TIME,
    FS_N
};

static const char *const fixed_strings[FS_N] = {
    "lock-acquire",     "count",          "lock-acquire-wait",
    "nanoseconds",      "lock-release",   "lock-release-hold",
    "lock-holder-wait", "condition-wait", "condition-wait-time",
};

/* sample_type i (DDL_V_*): name and unit */
static const int value_type[DDL_NVALUES] = {
    FS_LOCK_ACQUIRE,       FS_LOCK_ACQUIRE_WAIT, FS_LOCK_RELEASE,
    FS_LOCK_RELEASE_HOLD,  FS_LOCK_HOLDER_WAIT,  FS_CONDITION_WAIT,
    FS_CONDITION_WAIT_TIME};
static const int value_unit[DDL_NVALUES] = {
    FS_COUNT,       FS_NANOSECONDS, FS_COUNT,      FS_NANOSECONDS,
    FS_NANOSECONDS, FS_COUNT,       FS_NANOSECONDS};

int
ddl_pprof_encode_raw(const ddl_snapshot *s, ddl_buf *out)
{
    Perftools__Profiles__Profile prof = PERFTOOLS__PROFILES__PROFILE__INIT;
    Perftools__Profiles__ValueType vt[DDL_NVALUES + 1];
    Perftools__Profiles__ValueType *vtp[DDL_NVALUES];
    const Perftools__Profiles__ValueType vt_init =
        PERFTOOLS__PROFILES__VALUE_TYPE__INIT;
    const Perftools__Profiles__Sample sample_init =
        PERFTOOLS__PROFILES__SAMPLE__INIT;
    const Perftools__Profiles__Label label_init =
        PERFTOOLS__PROFILES__LABEL__INIT;
    const Perftools__Profiles__Location location_init =
        PERFTOOLS__PROFILES__LOCATION__INIT;
    const Perftools__Profiles__Line line_init =
        PERFTOOLS__PROFILES__LINE__INIT;
    const Perftools__Profiles__Function function_init =
        PERFTOOLS__PROFILES__FUNCTION__INIT;

    Perftools__Profiles__Sample *samples = NULL, **sample_ptrs = NULL;
    Perftools__Profiles__Label *labels = NULL, **label_ptrs = NULL;
    Perftools__Profiles__Location *locations = NULL, **location_ptrs = NULL;
    Perftools__Profiles__Line *lines = NULL, **line_ptrs = NULL;
    Perftools__Profiles__Function *functions = NULL, **function_ptrs = NULL;
    uint64_t *location_ids = NULL;
    uint8_t *buf = NULL;
    int rc = -1;

    int64_t fixed[FS_N];
    ddl_str extra[FS_N + 1]; /* strings appended after the snapshot's */
    size_t nextra = 0;
    int64_t next_index = s->nstrs;
    char comment[128];
    int64_t comment_index;
    size_t i, j, packed, total, strtab;
    uint64_t fi, li;
    uint8_t *p;

    /* fixed strings: reuse the snapshot's copy when there is one */
    for (i = 0; i < FS_N; i++) {
        size_t len = strlen(fixed_strings[i]);
        fixed[i] = ddl__snapshot_find_str(s, fixed_strings[i], len);
        if (fixed[i] < 0) {
            fixed[i] = next_index++;
            extra[nextra].ptr = fixed_strings[i];
            extra[nextra].len = len;
            nextra++;
        }
    }
    if (s->dropped > 0) {
        int n = snprintf(comment, sizeof comment,
                         "ddlock: %llu samples dropped (max samples reached)",
                         (unsigned long long)s->dropped);
        if (n < 0 || (size_t)n >= sizeof comment) {
            goto error;
        }
        comment_index = next_index++;
        extra[nextra].ptr = comment;
        extra[nextra].len = (size_t)n;
        nextra++;
        prof.n_comment = 1;
        prof.comment = &comment_index;
    }

    /* sample types and period type */
    for (i = 0; i < DDL_NVALUES; i++) {
        vt[i] = vt_init;
        vt[i].type = fixed[value_type[i]];
        vt[i].unit = fixed[value_unit[i]];
        vtp[i] = &vt[i];
    }
    vt[DDL_NVALUES] = vt_init;
    vt[DDL_NVALUES].type = fixed[FS_LOCK_ACQUIRE];
    vt[DDL_NVALUES].unit = fixed[FS_COUNT];
    prof.n_sample_type = DDL_NVALUES;
    prof.sample_type = vtp;
    prof.period_type = &vt[DDL_NVALUES];
    prof.period = 1;
    prof.time_nanos = s->start_ns;
    prof.duration_nanos =
        (int64_t)((uint64_t)s->end_ns - (uint64_t)s->start_ns);

    if (s->total_frames > SIZE_MAX || s->total_labels > SIZE_MAX) {
        goto error;
    }
    samples = alloc_array(s->nsamples, sizeof *samples);
    sample_ptrs = alloc_array(s->nsamples, sizeof *sample_ptrs);
    location_ids = alloc_array((size_t)s->total_frames, sizeof *location_ids);
    labels = alloc_array((size_t)s->total_labels, sizeof *labels);
    label_ptrs = alloc_array((size_t)s->total_labels, sizeof *label_ptrs);
    locations = alloc_array(s->nlocs, sizeof *locations);
    location_ptrs = alloc_array(s->nlocs, sizeof *location_ptrs);
    lines = alloc_array(s->nlocs, sizeof *lines);
    line_ptrs = alloc_array(s->nlocs, sizeof *line_ptrs);
    functions = alloc_array(s->nfuncs, sizeof *functions);
    function_ptrs = alloc_array(s->nfuncs, sizeof *function_ptrs);
    if (samples == NULL || sample_ptrs == NULL || location_ids == NULL ||
        labels == NULL || label_ptrs == NULL || locations == NULL ||
        location_ptrs == NULL || lines == NULL || line_ptrs == NULL ||
        functions == NULL || function_ptrs == NULL) {
        goto error;
    }

    /* samples: location ids are index + 1; values point into the snapshot */
    fi = 0;
    li = 0;
    for (i = 0; i < s->nsamples; i++) {
        const ddl_ssample *src = &s->samples[i];
        Perftools__Profiles__Sample *dst = &samples[i];
        *dst = sample_init;
        dst->n_location_id = src->nframes;
        dst->location_id = &location_ids[fi];
        for (j = 0; j < src->nframes; j++) {
            location_ids[fi++] = (uint64_t)src->locs[j] + 1;
        }
        dst->n_value = DDL_NVALUES;
        dst->value = s->samples[i].values;
        dst->n_label = src->nlabels;
        dst->label = &label_ptrs[li];
        for (j = 0; j < src->nlabels; j++) {
            const ddl_slabel *sl = &src->labels[j];
            Perftools__Profiles__Label *l = &labels[li];
            *l = label_init;
            l->key = sl->key;
            if (sl->str == DDL_NUMERIC_LABEL) {
                l->num = sl->num;
            }
            else {
                l->str = sl->str;
            }
            label_ptrs[li++] = l;
        }
        sample_ptrs[i] = dst;
    }
    prof.n_sample = s->nsamples;
    prof.sample = sample_ptrs;

    /* locations: one Line each, no mapping */
    for (i = 0; i < s->nlocs; i++) {
        lines[i] = line_init;
        lines[i].function_id = (uint64_t)s->locs[i].func + 1;
        lines[i].line = s->locs[i].line;
        line_ptrs[i] = &lines[i];
        locations[i] = location_init;
        locations[i].id = (uint64_t)i + 1;
        locations[i].n_line = 1;
        locations[i].line = &line_ptrs[i];
        location_ptrs[i] = &locations[i];
    }
    prof.n_location = s->nlocs;
    prof.location = location_ptrs;

    for (i = 0; i < s->nfuncs; i++) {
        functions[i] = function_init;
        functions[i].id = (uint64_t)i + 1;
        functions[i].name = s->funcs[i].name;
        functions[i].system_name = s->funcs[i].name;
        functions[i].filename = s->funcs[i].filename;
        functions[i].start_line = 0;
        function_ptrs[i] = &functions[i];
    }
    prof.n_function = s->nfuncs;
    prof.function = function_ptrs;

    /* size: hand-written string table + packed message */
    packed = perftools__profiles__profile__get_packed_size(&prof);
    strtab = 2; /* index 0: tag, length 0 */
    for (i = 1; i < s->nstrs + nextra; i++) {
        size_t len = i < s->nstrs ? s->strs[i].len : extra[i - s->nstrs].len;
        size_t add = 1 + varint_size(len) + len;
        if (add < len || strtab > SIZE_MAX - add) {
            goto error;
        }
        strtab += add;
    }
    if (packed > SIZE_MAX - strtab) {
        goto error;
    }
    total = packed + strtab;
    buf = malloc(total ? total : 1);
    if (buf == NULL) {
        goto error;
    }
    p = buf;
    *p++ = STRING_TABLE_TAG;
    *p++ = 0;
    for (i = 1; i < s->nstrs + nextra; i++) {
        const char *sp;
        size_t len;
        if (i < s->nstrs) {
            sp = s->strs[i].ptr;
            len = s->strs[i].len;
        }
        else {
            sp = extra[i - s->nstrs].ptr;
            len = extra[i - s->nstrs].len;
        }
        *p++ = STRING_TABLE_TAG;
        p = varint_put(p, len);
        memcpy(p, sp, len);
        p += len;
    }
    if ((size_t)(p - buf) != strtab ||
        perftools__profiles__profile__pack(&prof, p) != packed) {
        goto error;
    }
    out->data = buf;
    out->len = total;
    buf = NULL;
    rc = 0;

error:
    free(buf);
    free(samples);
    free(sample_ptrs);
    free(location_ids);
    free(labels);
    free(label_ptrs);
    free(locations);
    free(location_ptrs);
    free(lines);
    free(line_ptrs);
    free(functions);
    free(function_ptrs);
    return rc;
}

int
ddl_gzip(const uint8_t *in, size_t len, ddl_buf *out)
{
    z_stream zs;
    uint8_t *buf = NULL, *shrunk;
    size_t cap, used = 0, left = len;
    int zrc, initialized = 0;

    memset(&zs, 0, sizeof zs);
    /* windowBits 15 + 16: gzip (RFC 1952) framing instead of zlib's */
    if (deflateInit2(&zs, DDL_GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        goto error;
    }
    initialized = 1;
    /* deflateBound covers the gzip header and trailer after deflateInit2,
     * so one pass normally suffices; the loop still grows the buffer if
     * needed (inputs beyond uLong, or a bound that falls short) */
    if ((uint64_t)len <= (uint64_t)ULONG_MAX / 2) {
        cap = deflateBound(&zs, (uLong)len);
    }
    else {
        cap = len / 2;
    }
    if (cap < 64) {
        cap = 64;
    }
    buf = malloc(cap);
    if (buf == NULL) {
        goto error;
    }
    zs.next_in = (Bytef *)in;
    for (;;) {
        size_t room = cap - used;
        uInt chunk = left > UINT_MAX ? UINT_MAX : (uInt)left;
        uInt avail_out = room > UINT_MAX ? UINT_MAX : (uInt)room;

        zs.next_out = buf + used;
        zs.avail_out = avail_out;
        zs.avail_in = chunk;
        zrc = deflate(&zs, left == chunk ? Z_FINISH : Z_NO_FLUSH);
        left -= chunk - zs.avail_in;
        used += avail_out - zs.avail_out;
        if (zrc == Z_STREAM_END) {
            break;
        }
        if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
            goto error;
        }
        if (used == cap) {
            uint8_t *bigger;
            if (cap > SIZE_MAX / 2) {
                goto error;
            }
            bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                goto error;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    deflateEnd(&zs);
    shrunk = realloc(buf, used ? used : 1);
    out->data = shrunk != NULL ? shrunk : buf;
    out->len = used;
    return 0;

error:
    if (initialized) {
        deflateEnd(&zs);
    }
    free(buf);
    return -1;
}

int
ddl_pprof_encode(const ddl_snapshot *s, ddl_buf *out)
{
    ddl_buf raw = {NULL, 0};
    int rc;

    if (ddl_pprof_encode_raw(s, &raw) < 0) {
        return -1;
    }
    rc = ddl_gzip(raw.data, raw.len, out);
    ddl_buf_free(&raw);
    return rc;
}
