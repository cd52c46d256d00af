/* Check suite for ext/pprof.c: snapshot -> pprof protobuf -> gzip.
 *
 * Encoded profiles are read back with protobuf-c's generated unpacker and,
 * for exact string bytes (protobuf-c's char * strings stop at NUL), with
 * a small wire-format reader of the string table written here. One test
 * hands a gzip file to `go tool pprof -raw` (skipped when go is absent).
 */
#include "pprof.h"
#include "profile.h"
#include "profile_internal.h"
#include "proto/profile.pb-c.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

/* ---- helpers ---- */

typedef struct {
    const uint8_t *ptr;
    size_t len;
} wstr;

static uint64_t
read_varint(const uint8_t **p, const uint8_t *end)
{
    uint64_t v = 0;
    int shift = 0;
    for (;;) {
        uint8_t b;
        ck_assert(*p < end);
        ck_assert_int_lt(shift, 64);
        b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            return v;
        }
        shift += 7;
    }
}

/* The string_table entries (field 6) of a serialized Profile, in order,
 * as exact bytes. Caller frees the returned array. */
static wstr *
read_string_table(const uint8_t *buf, size_t len, size_t *count)
{
    const uint8_t *p = buf, *end = buf + len;
    size_t n = 0, cap = 16;
    wstr *out = malloc(cap * sizeof *out);

    ck_assert_ptr_nonnull(out);
    while (p < end) {
        uint64_t key = read_varint(&p, end);
        uint64_t field = key >> 3, wt = key & 7, l;
        switch (wt) {
        case 0:
            read_varint(&p, end);
            break;
        case 1:
            ck_assert_int_ge(end - p, 8);
            p += 8;
            break;
        case 5:
            ck_assert_int_ge(end - p, 4);
            p += 4;
            break;
        case 2:
            l = read_varint(&p, end);
            ck_assert_uint_le(l, (uint64_t)(end - p));
            if (field == 6) {
                if (n == cap) {
                    cap *= 2;
                    out = realloc(out, cap * sizeof *out);
                    ck_assert_ptr_nonnull(out);
                }
                out[n].ptr = p;
                out[n].len = (size_t)l;
                n++;
            }
            p += l;
            break;
        default:
            ck_abort_msg("bad wire type %d", (int)wt);
        }
    }
    *count = n;
    return out;
}

static int
wstr_is(const wstr *tab, size_t n, int64_t idx, const void *ptr, size_t len)
{
    return idx >= 0 && (size_t)idx < n && tab[idx].len == len &&
           (len == 0 || memcmp(tab[idx].ptr, ptr, len) == 0);
}

#define WSTR_IS(tab, n, idx, lit)                                             \
    wstr_is((tab), (n), (idx), (lit), strlen(lit))

static ddl_frame
frame(const char *name, const char *file, int64_t line)
{
    ddl_frame f = {0};
    memset(&f, 0, sizeof f);
    f.name.ptr = name;
    f.name.len = strlen(name);
    f.filename.ptr = file;
    f.filename.len = strlen(file);
    f.line = line;
    return f;
}

static ddl_label
str_label(const char *key, const char *value)
{
    ddl_label l;
    memset(&l, 0, sizeof l);
    l.key.ptr = key;
    l.key.len = strlen(key);
    l.str.ptr = value;
    l.str.len = strlen(value);
    l.num = 0;
    return l;
}

static ddl_label
num_label(const char *key, int64_t num)
{
    ddl_label l;
    memset(&l, 0, sizeof l);
    l.key.ptr = key;
    l.key.len = strlen(key);
    l.str.ptr = NULL;
    l.str.len = 0;
    l.num = num;
    return l;
}

/* one input sample */
typedef struct {
    ddl_frame frames[4];
    size_t nframes;
    ddl_label labels[4];
    size_t nlabels;
    int64_t values[DDL_NVALUES];
} spec;

static const Perftools__Profiles__Function *
find_function(const Perftools__Profiles__Profile *m, uint64_t id)
{
    size_t i;
    for (i = 0; i < m->n_function; i++) {
        if (m->function[i]->id == id) {
            return m->function[i];
        }
    }
    return NULL;
}

static const Perftools__Profiles__Location *
find_location(const Perftools__Profiles__Profile *m, uint64_t id)
{
    size_t i;
    for (i = 0; i < m->n_location; i++) {
        if (m->location[i]->id == id) {
            return m->location[i];
        }
    }
    return NULL;
}

/* Does pprof sample ps carry exactly spec sp (frames via location ->
 * function -> strings, labels, values)? */
static int
sample_matches(const Perftools__Profiles__Profile *m, const wstr *tab,
               size_t ntab, const Perftools__Profiles__Sample *ps,
               const spec *sp)
{
    size_t i;
    if (ps->n_location_id != sp->nframes || ps->n_label != sp->nlabels ||
        ps->n_value != DDL_NVALUES) {
        return 0;
    }
    for (i = 0; i < DDL_NVALUES; i++) {
        if (ps->value[i] != sp->values[i]) {
            return 0;
        }
    }
    for (i = 0; i < sp->nframes; i++) {
        const Perftools__Profiles__Location *loc =
            find_location(m, ps->location_id[i]);
        const Perftools__Profiles__Function *fn;
        const ddl_frame *f = &sp->frames[i];
        if (loc == NULL || loc->n_line != 1) {
            return 0;
        }
        fn = find_function(m, loc->line[0]->function_id);
        if (fn == NULL || loc->line[0]->line != f->line ||
            !wstr_is(tab, ntab, fn->name, f->name.ptr, f->name.len) ||
            !wstr_is(tab, ntab, fn->filename, f->filename.ptr,
                     f->filename.len)) {
            return 0;
        }
    }
    for (i = 0; i < sp->nlabels; i++) {
        const Perftools__Profiles__Label *l = ps->label[i];
        const ddl_label *want = &sp->labels[i];
        if (!wstr_is(tab, ntab, l->key, want->key.ptr, want->key.len) ||
            l->num_unit != 0) {
            return 0;
        }
        if (want->str.ptr == NULL) {
            if (l->str != 0 || l->num != want->num) {
                return 0;
            }
        }
        else if (l->num != 0 ||
                 !wstr_is(tab, ntab, l->str, want->str.ptr, want->str.len)) {
            return 0;
        }
    }
    return 1;
}

static ddl_snapshot *
snapshot_of(const spec *specs, size_t n, size_t cap, int64_t start,
            int64_t end, int extra_drops)
{
    ddl_profile *p = ddl_profile_new(cap, start);
    ddl_snapshot *s;
    size_t i;
    int d;

    ck_assert_ptr_nonnull(p);
    for (i = 0; i < n; i++) {
        ck_assert_int_eq(ddl_profile_add(p, specs[i].frames, specs[i].nframes,
                                         specs[i].labels, specs[i].nlabels,
                                         specs[i].values),
                         0);
    }
    for (d = 0; d < extra_drops; d++) {
        char name[32];
        ddl_frame f = {0};
        snprintf(name, sizeof name, "dropped_%d", d);
        f = frame(name, "/dropped.py", d);
        ck_assert_int_eq(ddl_profile_add(p, &f, 1, NULL, 0, specs[0].values),
                         1);
    }
    s = ddl_profile_swap(p, end);
    ck_assert_ptr_nonnull(s);
    ddl_profile_free(p);
    return s;
}

/* Check every field of an encoded profile against its input. */
static void
check_profile(const ddl_buf *raw, const spec *specs, size_t n, int64_t start,
              int64_t end, uint64_t dropped)
{
    Perftools__Profiles__Profile *m;
    wstr *tab;
    size_t ntab, i, j;
    static const char *types[DDL_NVALUES][2] = {
        {"lock-acquire", "count"},
        {"lock-acquire-wait", "nanoseconds"},
        {"lock-release", "count"},
        {"lock-release-hold", "nanoseconds"},
        {"lock-holder-wait", "nanoseconds"},
        {"condition-wait", "count"},
        {"condition-wait-time", "nanoseconds"},
    };
    char *matched;

    m = perftools__profiles__profile__unpack(NULL, raw->len, raw->data);
    ck_assert_ptr_nonnull(m);
    tab = read_string_table(raw->data, raw->len, &ntab);
    ck_assert_uint_eq(m->n_string_table, ntab);
    ck_assert_uint_ge(ntab, 1);
    ck_assert_uint_eq(tab[0].len, 0); /* string_table[0] == "" */
    ck_assert_str_eq(m->string_table[0], "");

    /* sample types, in order, by name and unit */
    ck_assert_uint_eq(m->n_sample_type, DDL_NVALUES);
    for (i = 0; i < DDL_NVALUES; i++) {
        ck_assert(WSTR_IS(tab, ntab, m->sample_type[i]->type, types[i][0]));
        ck_assert(WSTR_IS(tab, ntab, m->sample_type[i]->unit, types[i][1]));
    }
    ck_assert_ptr_nonnull(m->period_type);
    ck_assert(WSTR_IS(tab, ntab, m->period_type->type, "lock-acquire"));
    ck_assert(WSTR_IS(tab, ntab, m->period_type->unit, "count"));
    ck_assert_int_eq(m->period, 1);
    ck_assert_int_eq(m->time_nanos, start);
    ck_assert_int_eq(m->duration_nanos, end - start);
    ck_assert_uint_eq(m->n_mapping, 0);
    ck_assert_int_eq(m->drop_frames, 0);
    ck_assert_int_eq(m->keep_frames, 0);
    ck_assert_int_eq(m->default_sample_type, 0);
    if (dropped == 0) {
        ck_assert_uint_eq(m->n_comment, 0);
    }
    else {
        char want[128];
        snprintf(want, sizeof want,
                 "ddlock: %llu samples dropped (max samples reached)",
                 (unsigned long long)dropped);
        ck_assert_uint_eq(m->n_comment, 1);
        ck_assert_msg(WSTR_IS(tab, ntab, m->comment[0], want),
                      "comment is not \"%s\"", want);
    }

    /* functions: ids 1..n unique, name == system_name, valid strings */
    for (i = 0; i < m->n_function; i++) {
        const Perftools__Profiles__Function *f = m->function[i];
        ck_assert_uint_ge(f->id, 1);
        ck_assert_uint_le(f->id, m->n_function);
        for (j = 0; j < i; j++) {
            ck_assert_uint_ne(m->function[j]->id, f->id);
        }
        ck_assert_int_eq(f->name, f->system_name);
        ck_assert_int_gt(f->name, 0);
        ck_assert_int_lt(f->name, (int64_t)ntab);
        ck_assert_int_ge(f->filename, 0);
        ck_assert_int_lt(f->filename, (int64_t)ntab);
        ck_assert_int_eq(f->start_line, 0);
    }
    /* locations: ids 1..n unique, one line, no mapping, no address */
    for (i = 0; i < m->n_location; i++) {
        const Perftools__Profiles__Location *l = m->location[i];
        ck_assert_uint_ge(l->id, 1);
        ck_assert_uint_le(l->id, m->n_location);
        for (j = 0; j < i; j++) {
            ck_assert_uint_ne(m->location[j]->id, l->id);
        }
        ck_assert_uint_eq(l->mapping_id, 0);
        ck_assert_uint_eq(l->address, 0);
        ck_assert(!l->is_folded);
        ck_assert_uint_eq(l->n_line, 1);
        ck_assert_ptr_nonnull(find_function(m, l->line[0]->function_id));
    }
    /* distinct functions / locations: no duplicates of (name, file) and
     * (function, line) */
    for (i = 0; i < m->n_function; i++) {
        for (j = 0; j < i; j++) {
            ck_assert(!(m->function[i]->name == m->function[j]->name &&
                        m->function[i]->filename == m->function[j]->filename));
        }
    }
    for (i = 0; i < m->n_location; i++) {
        for (j = 0; j < i; j++) {
            ck_assert(!(m->location[i]->line[0]->function_id ==
                            m->location[j]->line[0]->function_id &&
                        m->location[i]->line[0]->line ==
                            m->location[j]->line[0]->line));
        }
    }

    /* samples: a one-to-one match with the input */
    ck_assert_uint_eq(m->n_sample, n);
    matched = calloc(n + 1, 1);
    ck_assert_ptr_nonnull(matched);
    for (i = 0; i < n; i++) {
        int found = 0;
        for (j = 0; j < m->n_sample && !found; j++) {
            if (!matched[j] &&
                sample_matches(m, tab, ntab, m->sample[j], &specs[i])) {
                matched[j] = 1;
                found = 1;
            }
        }
        ck_assert_msg(found, "input sample %zu not found in the profile", i);
    }
    free(matched);
    free(tab);
    perftools__profiles__profile__free_unpacked(m, NULL);
}

static void
inflate_all(const ddl_buf *gz, ddl_buf *out)
{
    z_stream zs;
    size_t cap = gz->len * 4 + 64;
    int rc;

    memset(&zs, 0, sizeof zs);
    ck_assert_int_eq(inflateInit2(&zs, 15 + 16), Z_OK);
    out->data = malloc(cap);
    ck_assert_ptr_nonnull(out->data);
    zs.next_in = gz->data;
    zs.avail_in = (uInt)gz->len;
    for (;;) {
        size_t have = (size_t)(zs.next_out ? zs.next_out - out->data : 0);
        if (have == cap) {
            cap *= 2;
            out->data = realloc(out->data, cap);
            ck_assert_ptr_nonnull(out->data);
        }
        zs.next_out = out->data + have;
        zs.avail_out = (uInt)(cap - have);
        rc = inflate(&zs, Z_NO_FLUSH);
        if (rc == Z_STREAM_END) {
            break;
        }
        ck_assert_int_eq(rc, Z_OK);
    }
    ck_assert_uint_eq(zs.avail_in, 0); /* one member, nothing after it */
    out->len = (size_t)(zs.next_out - out->data);
    inflateEnd(&zs);
}

/* The standard set of input samples used by several tests. */
static size_t
standard_specs(spec *sp)
{
    memset(sp, 0, 3 * sizeof *sp);
    sp[0].frames[0] = frame("Worker.acquire_job", "/app/worker.py", 41);
    sp[0].frames[1] = frame("Worker.run", "/app/worker.py", 12);
    sp[0].frames[2] = frame("Thread._bootstrap_inner",
                            "/usr/lib/python3.11/threading.py", 1038);
    sp[0].nframes = 3;
    sp[0].labels[0] = str_label("lock name", "worker.py:8:self._jobs_lock");
    sp[0].labels[1] = num_label("thread id", 140234567890123);
    sp[0].labels[2] = num_label("thread native id", 4242);
    sp[0].labels[3] = str_label("thread name", "Thread-1 (run)");
    sp[0].nlabels = 4;
    sp[0].values[0] = 3;
    sp[0].values[1] = 123456789;
    sp[0].values[2] = 2;
    sp[0].values[3] = 987654321;

    sp[1] = sp[0]; /* same stack, other thread */
    sp[1].labels[1] = num_label("thread id", -5);
    sp[1].labels[2] = num_label("thread native id", 0);
    sp[1].labels[3] = str_label("thread name", "MainThread");
    sp[1].values[0] = 1;
    sp[1].values[1] = 0;
    sp[1].values[2] = 0;
    sp[1].values[3] = 0;

    sp[2].frames[0] = frame("Worker.run", "/app/worker.py", 13);
    sp[2].frames[1] = frame("<module>", "/app/main.py", 1);
    sp[2].nframes = 2;
    sp[2].labels[0] = str_label("lock name", "main.py:3");
    sp[2].nlabels = 1;
    sp[2].values[0] = 0;
    sp[2].values[1] = 0;
    sp[2].values[2] = 7;
    sp[2].values[3] = INT64_MAX / 4;
    return 3;
}

/* ---- tests ---- */

START_TEST(test_roundtrip_every_field)
{
    spec sp[3] = {0};
    size_t n = standard_specs(sp);
    int64_t start = 1700000000123456789, end = 1700000060987654321;
    ddl_snapshot *s = snapshot_of(sp, n, 100, start, end, 0);
    ddl_buf raw = {NULL, 0};
    Perftools__Profiles__Profile *m;

    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    ck_assert_ptr_nonnull(raw.data);
    check_profile(&raw, sp, n, start, end, 0);

    /* counts: functions acquire_job, run, _bootstrap_inner, <module>;
     * locations: 5 distinct (function, line) */
    m = perftools__profiles__profile__unpack(NULL, raw.len, raw.data);
    ck_assert_uint_eq(m->n_function, 4);
    ck_assert_uint_eq(m->n_location, 5);
    perftools__profiles__profile__free_unpacked(m, NULL);
    ddl_buf_free(&raw);
    ck_assert_ptr_null(raw.data);
    ck_assert_uint_eq(raw.len, 0);
    ddl_snapshot_free(s);
}
END_TEST

START_TEST(test_comment_on_drop)
{
    spec sp[3] = {0};
    size_t n = standard_specs(sp);
    ddl_snapshot *s = snapshot_of(sp, n, 3, 10, 20, 5);
    ddl_buf raw = {NULL, 0};

    ck_assert_uint_eq(ddl_snapshot_dropped(s), 5);
    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    check_profile(&raw, sp, n, 10, 20, 5);
    ddl_buf_free(&raw);
    ddl_snapshot_free(s);
}
END_TEST

START_TEST(test_empty_snapshot)
{
    ddl_profile *p = ddl_profile_new(10, 5);
    ddl_snapshot *s = ddl_profile_swap(p, 9);
    ddl_buf raw = {NULL, 0}, gz = {NULL, 0};

    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    check_profile(&raw, NULL, 0, 5, 9, 0);
    ck_assert_int_eq(ddl_pprof_encode(s, &gz), 0);
    ck_assert_uint_gt(gz.len, 18);
    ddl_buf_free(&raw);
    ddl_buf_free(&gz);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

/* Function names equal to the encoder's own strings share their index. */
START_TEST(test_fixed_strings_shared)
{
    spec sp[1] = {0};
    ddl_snapshot *s;
    ddl_buf raw = {NULL, 0};
    wstr *tab;
    size_t ntab, i, j;

    memset(sp, 0, sizeof sp);
    sp[0].frames[0] = frame("count", "nanoseconds", 1);
    sp[0].frames[1] = frame("lock-acquire", "", 2);
    sp[0].nframes = 2;
    sp[0].labels[0] = str_label("", "lock-release-hold"); /* empty key */
    sp[0].nlabels = 1;
    sp[0].values[0] = 1;
    s = snapshot_of(sp, 1, 10, 0, 1, 0);
    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    check_profile(&raw, sp, 1, 0, 1, 0);
    tab = read_string_table(raw.data, raw.len, &ntab);
    for (i = 0; i < ntab; i++) {
        for (j = 0; j < i; j++) {
            ck_assert(!(tab[i].len == tab[j].len &&
                        memcmp(tab[i].ptr, tab[j].ptr, tab[i].len) == 0));
        }
    }
    free(tab);
    ddl_buf_free(&raw);
    ddl_snapshot_free(s);
}
END_TEST

START_TEST(test_gzip_framing)
{
    spec sp[3] = {0};
    size_t n = standard_specs(sp);
    ddl_snapshot *s = snapshot_of(sp, n, 100, 1, 2, 0);
    ddl_buf raw = {NULL, 0}, gz = {NULL, 0}, back = {NULL, 0};

    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    ck_assert_int_eq(ddl_pprof_encode(s, &gz), 0);
    ck_assert_uint_ge(gz.len, 18);
    ck_assert_uint_eq(gz.data[0], 0x1f); /* gzip magic */
    ck_assert_uint_eq(gz.data[1], 0x8b);
    ck_assert_uint_eq(gz.data[2], 8); /* deflate */
    inflate_all(&gz, &back);
    ck_assert_uint_eq(back.len, raw.len);
    ck_assert_mem_eq(back.data, raw.data, raw.len);
    ddl_buf_free(&raw);
    ddl_buf_free(&gz);
    ddl_buf_free(&back);
    ddl_snapshot_free(s);
}
END_TEST

START_TEST(test_gzip_helper)
{
    static const size_t sizes[] = {0, 1, 100, 70000, 3 * 1024 * 1024};
    size_t k;
    for (k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t len = sizes[k], i;
        uint8_t *in = malloc(len ? len : 1);
        uint32_t x = 12345;
        ddl_buf gz = {NULL, 0}, back = {NULL, 0};
        ck_assert_ptr_nonnull(in);
        for (i = 0; i < len; i++) { /* incompressible half, text half */
            x = x * 1103515245u + 12345u;
            in[i] = i < len / 2 ? (uint8_t)(x >> 24) : (uint8_t)('a' + i % 7);
        }
        ck_assert_int_eq(ddl_gzip(in, len, &gz), 0);
        ck_assert_uint_eq(gz.data[0], 0x1f);
        ck_assert_uint_eq(gz.data[1], 0x8b);
        inflate_all(&gz, &back);
        ck_assert_uint_eq(back.len, len);
        if (len > 0) {
            ck_assert_mem_eq(back.data, in, len);
        }
        ddl_buf_free(&gz);
        ddl_buf_free(&back);
        free(in);
    }
    ddl_buf_free(NULL);
}
END_TEST

START_TEST(test_binary_and_large_strings)
{
    static const char nul_name[] = "fn\0with\0nuls";
    static const char bin_file[] = {'/', '\xff', '\x00', '\xc3', '(', 'x'};
    static const char nul_key[] = "k\0ey";
    size_t big_len = 1024 * 1024, i;
    char *big = malloc(big_len);
    spec sp[2] = {0};
    ddl_snapshot *s;
    ddl_buf raw = {NULL, 0}, gz = {NULL, 0}, back = {NULL, 0};

    ck_assert_ptr_nonnull(big);
    for (i = 0; i < big_len; i++) {
        big[i] = (char)((i * 7) ^ (i >> 9));
    }
    memset(sp, 0, sizeof sp);
    sp[0].frames[0].name = (ddl_str){nul_name, sizeof nul_name - 1, 0};
    sp[0].frames[0].filename = (ddl_str){bin_file, sizeof bin_file, 0};
    sp[0].frames[0].line = 3;
    sp[0].frames[1].name = (ddl_str){big, big_len, 0};
    sp[0].frames[1].filename = (ddl_str){"/big.py", 7, 0};
    sp[0].frames[1].line = 4;
    sp[0].nframes = 2;
    sp[0].labels[0].key = (ddl_str){nul_key, sizeof nul_key - 1, 0};
    sp[0].labels[0].str = (ddl_str){big + 10, 300000, 0};
    sp[0].labels[1].key = (ddl_str){"thread name", 11, 0};
    sp[0].labels[1].str = (ddl_str){"\0", 1, 0};
    sp[0].nlabels = 2;
    sp[0].values[0] = 1;
    sp[1] = sp[0];
    sp[1].frames[0].name = (ddl_str){nul_name, 2, 0}; /* "fn" */
    sp[1].values[0] = 2;

    s = snapshot_of(sp, 2, 10, 100, 200, 0);
    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    ck_assert_uint_gt(raw.len, big_len + 300000);
    check_profile(&raw, sp, 2, 100, 200, 0);
    /* and through gzip */
    ck_assert_int_eq(ddl_pprof_encode(s, &gz), 0);
    inflate_all(&gz, &back);
    ck_assert_uint_eq(back.len, raw.len);
    ck_assert_mem_eq(back.data, raw.data, raw.len);
    ddl_buf_free(&raw);
    ddl_buf_free(&gz);
    ddl_buf_free(&back);
    ddl_snapshot_free(s);
    free(big);
}
END_TEST

/* Many samples over a shared pool of frames: ids stay unique and every
 * sample reads back. */
START_TEST(test_many_samples)
{
    enum { N = 400 };
    static spec sp[N];
    static char names[N][4][24];
    ddl_snapshot *s;
    ddl_buf raw = {NULL, 0};
    size_t i, d;

    memset(sp, 0, sizeof sp);
    for (i = 0; i < N; i++) {
        for (d = 0; d < 4; d++) {
            snprintf(names[i][d], sizeof names[i][d], "f%zu",
                     (i * 3 + d * 17) % 60);
            sp[i].frames[d] = frame(names[i][d], d % 2 ? "/a.py" : "/b.py",
                                    (int64_t)((i + d) % 9));
        }
        sp[i].nframes = 4;
        sp[i].labels[0] = num_label("thread id", (int64_t)i);
        sp[i].nlabels = 1;
        sp[i].values[0] = (int64_t)i;
        sp[i].values[3] = (int64_t)i * 1000;
    }
    s = snapshot_of(sp, N, N, 0, 1, 0);
    ck_assert_int_eq(ddl_pprof_encode_raw(s, &raw), 0);
    check_profile(&raw, sp, N, 0, 1, 0);
    ddl_buf_free(&raw);
    ddl_snapshot_free(s);
}
END_TEST

START_TEST(test_go_tool_pprof_reads_it)
{
    spec sp[3] = {0};
    size_t n = standard_specs(sp);
    ddl_snapshot *s;
    ddl_buf gz = {NULL, 0};
    char path[] = "/tmp/ddlock_test_pprof_XXXXXX";
    char cmd[256], chunk[4096];
    char *output = NULL;
    size_t outlen = 0;
    FILE *f, *pipe;
    int fd, status;

    if (system("command -v go >/dev/null 2>&1") != 0) {
        printf("test_go_tool_pprof_reads_it: SKIPPED (go not on PATH)\n");
        return;
    }
    s = snapshot_of(sp, n, n, 1700000000000000000, 1700000060000000000, 2);
    ck_assert_int_eq(ddl_pprof_encode(s, &gz), 0);
    fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    f = fdopen(fd, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(gz.data, 1, gz.len, f), gz.len);
    ck_assert_int_eq(fclose(f), 0);

    snprintf(cmd, sizeof cmd, "go tool pprof -raw %s 2>&1", path);
    pipe = popen(cmd, "r");
    ck_assert_ptr_nonnull(pipe);
    for (;;) {
        size_t got = fread(chunk, 1, sizeof chunk, pipe);
        if (got == 0) {
            break;
        }
        output = realloc(output, outlen + got + 1);
        ck_assert_ptr_nonnull(output);
        memcpy(output + outlen, chunk, got);
        outlen += got;
        output[outlen] = '\0';
    }
    status = pclose(pipe);
    unlink(path);
    ck_assert_ptr_nonnull(output);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "go tool pprof failed (status %d):\n%s", status, output);
    ck_assert_msg(strstr(output, "Worker.acquire_job") != NULL,
                  "function name missing from go tool pprof output:\n%s",
                  output);
    ck_assert_msg(strstr(output, "lock-acquire-wait/nanoseconds") != NULL,
                  "sample type missing from go tool pprof output:\n%s",
                  output);
    ck_assert_msg(strstr(output, "worker.py:8:self._jobs_lock") != NULL,
                  "label missing from go tool pprof output:\n%s", output);
    free(output);
    ddl_buf_free(&gz);
    ddl_snapshot_free(s);
}
END_TEST

static Suite *
pprof_suite(void)
{
    Suite *s = suite_create("pprof");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_roundtrip_every_field);
    tcase_add_test(tc, test_comment_on_drop);
    tcase_add_test(tc, test_empty_snapshot);
    tcase_add_test(tc, test_fixed_strings_shared);
    tcase_add_test(tc, test_gzip_framing);
    tcase_add_test(tc, test_gzip_helper);
    tcase_add_test(tc, test_binary_and_large_strings);
    tcase_add_test(tc, test_many_samples);
    tcase_add_test(tc, test_go_tool_pprof_reads_it);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(pprof_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
