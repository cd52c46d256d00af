/* Check suite for ext/profile.c: the aggregation table.
 *
 * Reads snapshots through profile_internal.h (the same view pprof.c has).
 * Run: make -C tests/c (or by hand, see the Makefile's compile line).
 */
#include "profile.h"
#include "profile_internal.h"

#include <check.h>
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define S(lit) ((ddl_str){(lit), sizeof(lit) - 1, 0})

static const int64_t ONE[DDL_NVALUES] = {1, 10, 1, 100};

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

static int
str_is(ddl_str s, const void *ptr, size_t len)
{
    return s.len == len && (len == 0 || memcmp(s.ptr, ptr, len) == 0);
}

/* Index of the snapshot sample equal to (frames, labels), or -1. */
static long
find_sample(const ddl_snapshot *s, const ddl_frame *frames, size_t nframes,
            const ddl_label *labels, size_t nlabels)
{
    size_t i, j;
    for (i = 0; i < ddl_snapshot_nsamples(s); i++) {
        const ddl_ssample *smp = &s->samples[i];
        int eq = smp->nframes == nframes && smp->nlabels == nlabels;
        for (j = 0; eq && j < nframes; j++) {
            ddl_frame f = {0};
            ddl__snapshot_frame(s, i, j, &f);
            eq = str_is(f.name, frames[j].name.ptr, frames[j].name.len) &&
                 str_is(f.filename, frames[j].filename.ptr,
                        frames[j].filename.len) &&
                 f.line == frames[j].line;
        }
        for (j = 0; eq && j < nlabels; j++) {
            ddl_label l;
            ddl__snapshot_label(s, i, j, &l);
            eq = str_is(l.key, labels[j].key.ptr, labels[j].key.len);
            if (eq && labels[j].str.ptr == NULL) {
                eq = l.str.ptr == NULL && l.num == labels[j].num;
            }
            else if (eq) {
                eq = l.str.ptr != NULL &&
                     str_is(l.str, labels[j].str.ptr, labels[j].str.len);
            }
        }
        if (eq) {
            return (long)i;
        }
    }
    return -1;
}

/* Distinct strings really are stored once. */
static void
assert_strings_unique(const ddl_snapshot *s)
{
    uint32_t i, j;
    for (i = 1; i < s->nstrs; i++) {
        ck_assert_uint_gt(s->strs[i].len, 0);
        for (j = i + 1; j < s->nstrs; j++) {
            ck_assert(!(
                s->strs[i].len == s->strs[j].len &&
                memcmp(s->strs[i].ptr, s->strs[j].ptr, s->strs[i].len) == 0));
        }
    }
}

START_TEST(test_new_rejects_zero_cap)
{
    ck_assert_ptr_null(ddl_profile_new(0, 0));
    ddl_profile_free(NULL);
}
END_TEST

START_TEST(test_interning)
{
    ddl_profile *p = ddl_profile_new(100, 1000);
    /* separate buffers with equal contents: interning is by content */
    char name_a[] = "handler", name_b[] = "handler";
    char file_a[] = "/app/x.py", file_b[] = "/app/x.py";
    ddl_frame s1[3] = {0}, s2[2] = {0};
    ddl_label l1[1], l2[1];
    ddl_snapshot *s;
    ddl_frame f = {0};

    s1[0] = frame(name_a, file_a, 10);
    s1[1] = frame("main", "/app/main.py", 5);
    s1[2] = frame("handler", "/app/other.py", 10); /* other file */
    s2[0] = frame(name_b, file_b, 10);             /* same location */
    s2[1] = frame(name_b, file_b, 11);             /* same function */
    l1[0] = str_label("lock name", "x.py:3:lock");
    l2[0] = str_label("lock name", "x.py:3:lock");

    ck_assert_int_eq(ddl_profile_add(p, s1, 3, l1, 1, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, s2, 2, l2, 1, ONE), 0);
    s = ddl_profile_swap(p, 2000);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 2);

    /* strings: "", handler, /app/x.py, main, /app/main.py, /app/other.py,
     * lock name, x.py:3:lock */
    ck_assert_uint_eq(s->nstrs, 8);
    assert_strings_unique(s);
    /* functions: handler@x, main@main, handler@other */
    ck_assert_uint_eq(s->nfuncs, 3);
    /* locations: handler@x:10, main:5, handler@other:10, handler@x:11 */
    ck_assert_uint_eq(s->nlocs, 4);

    /* same strings → same ids */
    ck_assert_uint_eq(s->samples[0].locs[0], s->samples[1].locs[0]);
    ck_assert_uint_ne(s->samples[1].locs[0], s->samples[1].locs[1]);
    ck_assert_uint_eq(s->locs[s->samples[1].locs[0]].func,
                      s->locs[s->samples[1].locs[1]].func);
    ck_assert_uint_ne(s->locs[s->samples[0].locs[0]].func,
                      s->locs[s->samples[0].locs[2]].func);
    ck_assert_uint_eq(s->funcs[s->locs[s->samples[0].locs[0]].func].name,
                      s->funcs[s->locs[s->samples[0].locs[2]].func].name);
    ck_assert_uint_eq(s->samples[0].labels[0].key,
                      s->samples[1].labels[0].key);
    ck_assert_uint_eq(s->samples[0].labels[0].str,
                      s->samples[1].labels[0].str);

    /* lookups and resolution */
    ck_assert_int_eq(
        ddl__snapshot_find_str(s, "main", 4),
        (int64_t)s->funcs[s->locs[s->samples[0].locs[1]].func].name);
    ck_assert_int_eq(ddl__snapshot_find_str(s, "", 0), 0);
    ck_assert_int_eq(ddl__snapshot_find_str(s, "absent", 6), -1);
    ddl__snapshot_frame(s, 1, 1, &f);
    ck_assert(str_is(f.name, "handler", 7));
    ck_assert(str_is(f.filename, "/app/x.py", 9));
    ck_assert_int_eq(f.line, 11);
    ck_assert_int_ge(find_sample(s, s1, 3, l1, 1), 0);
    ck_assert_int_ge(find_sample(s, s2, 2, l2, 1), 0);

    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_aggregation)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    char buf1[32], buf2[32];
    ddl_frame st[2] = {0};
    ddl_label lb[2];
    const int64_t v1[DDL_NVALUES] = {1, 100, 0, 0};
    const int64_t v2[DDL_NVALUES] = {0, 0, 1, 5000};
    const int64_t v3[DDL_NVALUES] = {2, 7, 3, 11};
    ddl_profile_stats stats;
    ddl_snapshot *s;
    long i;

    strcpy(buf1, "worker");
    strcpy(buf2, "worker");
    st[0] = frame(buf1, "/w.py", 3);
    st[1] = frame("run", "/t.py", 9);
    lb[0] = str_label("lock name", "w.py:1:mu");
    lb[1] = num_label("thread id", 42);
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 2, v1), 0);
    st[0].name.ptr = buf2; /* same bytes, other address */
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 2, v2), 0);
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 2, v3), 0);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.samples_added, 3);
    ck_assert_uint_eq(stats.samples_dropped, 0);
    ck_assert_uint_eq(stats.current_keys, 1);

    s = ddl_profile_swap(p, 10);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 1);
    i = find_sample(s, st, 2, lb, 2);
    ck_assert_int_eq(i, 0);
    ck_assert_int_eq(s->samples[0].values[DDL_V_ACQUIRE], 3);
    ck_assert_int_eq(s->samples[0].values[DDL_V_WAIT], 107);
    ck_assert_int_eq(s->samples[0].values[DDL_V_RELEASE], 4);
    ck_assert_int_eq(s->samples[0].values[DDL_V_HOLD], 5011);
    ck_assert_uint_eq(s->total_frames, 2);
    ck_assert_uint_eq(s->total_labels, 2);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

/* ddl_str.hash: a precomputed hash (what ddl_str_hash returns) and none (0)
 * name the same interned string, whichever comes first, on the insertion
 * path and on the hot path (cached by pointer or not). */
START_TEST(test_precomputed_hash)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    char name1[] = "handler", name2[] = "handler";
    char file1[] = "/srv/app/handlers.py", file2[] = "/srv/app/handlers.py";
    char lock1[] = "handlers.py:3:mu", lock2[] = "handlers.py:3:mu";
    ddl_frame st[1] = {0};
    ddl_label lb[1];
    ddl_snapshot *s;
    int round;

    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(ddl_str_hash(name1, 7), ddl_str_hash(name2, 7));
    ck_assert_uint_ne(ddl_str_hash(name1, 7), ddl_str_hash(name1, 6));
    for (round = 0; round < 8; round++) {
        /* alternate buffers and whether each string carries its hash */
        char *n = round & 1 ? name2 : name1;
        char *f = round & 2 ? file2 : file1;
        char *l = round & 4 ? lock2 : lock1;
        st[0] = frame(n, f, 12);
        lb[0] = str_label("lock name", l);
        if (round % 3 != 0) {
            st[0].name.hash = ddl_str_hash(n, st[0].name.len);
            lb[0].str.hash = ddl_str_hash(l, lb[0].str.len);
        }
        if (round % 2 == 0) {
            st[0].filename.hash = ddl_str_hash(f, st[0].filename.len);
            lb[0].key.hash = ddl_str_hash("lock name", 9);
        }
        ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    }
    /* a new key whose strings are all known, given with their hashes */
    st[0] = frame(name2, file1, 13);
    st[0].name.hash = ddl_str_hash(name2, 7);
    st[0].filename.hash = ddl_str_hash(file1, strlen(file1));
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);

    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 2);
    ck_assert_int_eq(s->samples[0].values[DDL_V_ACQUIRE], 8);
    ck_assert_int_eq(s->samples[1].values[DDL_V_ACQUIRE], 1);
    /* "", handler, the file, "lock name", the lock label */
    ck_assert_uint_eq(s->nstrs, 5);
    ck_assert_uint_eq(s->nfuncs, 1);
    ck_assert_uint_eq(s->nlocs, 2);
    ck_assert_int_ge(ddl__snapshot_find_str(s, "handler", 7), 1);
    ck_assert_int_ge(ddl__snapshot_find_str(s, lock1, strlen(lock1)), 1);
    assert_strings_unique(s);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_distinct_label_values)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    ddl_frame st[1] = {0};
    ddl_label lb[1];
    ddl_snapshot *s;

    st[0] = frame("f", "/f.py", 1);
    lb[0] = num_label("thread id", 1);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = num_label("thread id", 2);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = str_label("thread id", "1"); /* string, not numeric */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = str_label("thread id", ""); /* empty string label */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = num_label("thread id", 0); /* numeric 0 is not "" */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = str_label("lock name", "a");
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = str_label("lock name", "b");
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    lb[0] = str_label("lock name", "a"); /* again: aggregates */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
    /* no labels at all is yet another key */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);

    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 8);
    lb[0] = str_label("lock name", "a");
    ck_assert_int_eq(s->samples[find_sample(s, st, 1, lb, 1)].values[0], 2);
    lb[0] = str_label("thread id", "");
    ck_assert_int_ge(find_sample(s, st, 1, lb, 1), 0);
    ck_assert_uint_eq(s->samples[find_sample(s, st, 1, lb, 1)].labels[0].str,
                      0);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_label_order)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    ddl_frame st[1] = {0};
    ddl_label ab[2], ba[2];
    ddl_snapshot *s;

    st[0] = frame("f", "/f.py", 1);
    ab[0] = str_label("lock name", "L");
    ab[1] = num_label("thread id", 7);
    ba[0] = ab[1];
    ba[1] = ab[0];
    ck_assert_int_eq(ddl_profile_add(p, st, 1, ab, 2, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, ba, 2, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, ab, 2, ONE), 0);
    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 2);
    ck_assert_int_eq(s->samples[find_sample(s, st, 1, ab, 2)].values[0], 2);
    ck_assert_int_eq(s->samples[find_sample(s, st, 1, ba, 2)].values[0], 1);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_frame_order_and_depth)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    ddl_frame ab[2] = {0}, ba[2] = {0};
    ddl_snapshot *s;

    ab[0] = frame("a", "/m.py", 1);
    ab[1] = frame("b", "/m.py", 2);
    ba[0] = ab[1];
    ba[1] = ab[0];
    ck_assert_int_eq(ddl_profile_add(p, ab, 2, NULL, 0, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, ba, 2, NULL, 0, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, ab, 1, NULL, 0, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, NULL, 0, NULL, 0, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, NULL, 0, NULL, 0, ONE), 0);
    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 4);
    ck_assert_int_eq(s->samples[find_sample(s, NULL, 0, NULL, 0)].values[0],
                     2);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

/* A reused caller buffer (same address, same length, new bytes) must not
 * be taken for the string it held before: the pointer-keyed caches only
 * shortcut after comparing bytes. */
START_TEST(test_reused_buffer)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    char name[16], file[16], lock[16];
    ddl_frame st[1] = {0};
    ddl_label lb[1];
    ddl_snapshot *s;
    int round;

    /* fixed lengths: "fn_K", "f_K.p", "L_K" */
    st[0].name = (ddl_str){name, 4, 0};
    st[0].filename = (ddl_str){file, 5, 0};
    st[0].line = 1;
    lb[0].key = S("lock name");
    lb[0].str = (ddl_str){lock, 3, 0};
    for (round = 0; round < 3; round++) {
        int k;
        for (k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "fn_%d", k);
            snprintf(file, sizeof file, "f_%d.p", k % 2);
            snprintf(lock, sizeof lock, "L_%d", k % 3);
            ck_assert_int_eq(ddl_profile_add(p, st, 1, lb, 1, ONE), 0);
        }
    }
    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 4);
    for (round = 0; round < 4; round++) {
        ddl_frame f = {0};
        ddl_label l;
        char want[16];
        long i;
        snprintf(name, sizeof name, "fn_%d", round);
        snprintf(file, sizeof file, "f_%d.p", round % 2);
        snprintf(lock, sizeof lock, "L_%d", round % 3);
        i = find_sample(s, st, 1, lb, 1);
        ck_assert_int_ge(i, 0);
        ck_assert_int_eq(s->samples[i].values[0], 3);
        ddl__snapshot_frame(s, (size_t)i, 0, &f);
        snprintf(want, sizeof want, "fn_%d", round);
        ck_assert(str_is(f.name, want, 4));
        ddl__snapshot_label(s, (size_t)i, 0, &l);
        snprintf(want, sizeof want, "L_%d", round % 3);
        ck_assert(str_is(l.str, want, 3));
    }
    assert_strings_unique(s);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

/* ddl_frame.key: a frame whose pointers, line and non-zero key match a
 * cached frame's is that frame (its bytes are not compared again: the key
 * is the caller's promise); any other change of key or bytes is compared
 * and told apart, as without keys. */
START_TEST(test_frame_keys)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    char name[16], file[16];
    ddl_frame st[1] = {0};
    ddl_snapshot *s;
    int k;

    st[0].name = (ddl_str){name, 4, 0};
    st[0].filename = (ddl_str){file, 5, 0};
    st[0].line = 7;
    /* key 1: "fn_A" in "f_A.p", three times */
    memcpy(name, "fn_A", 4);
    memcpy(file, "f_A.p", 5);
    st[0].key = 1;
    for (k = 0; k < 3; k++) {
        ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    }
    /* the same buffers now hold "fn_B". A broken promise shows the
     * shortcut: under key 1 these bytes are taken for key 1's frame
     * ("fn_A") without comparing */
    memcpy(name, "fn_B", 4);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    /* under another key, or none, the bytes are compared: a new frame */
    st[0].key = 2;
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    st[0].key = 0;
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    st[0].key = 2;
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    /* another line is another location, key or not */
    st[0].line = 8;
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 3);
    {
        ddl_frame a = {0}, b = {0}, c = {0};
        a.name = (ddl_str){"fn_A", 4, 0};
        a.filename = (ddl_str){"f_A.p", 5, 0};
        a.line = 7;
        b = a;
        b.name = (ddl_str){"fn_B", 4, 0};
        c = b;
        c.line = 8;
        long ia = find_sample(s, &a, 1, NULL, 0);
        long ib = find_sample(s, &b, 1, NULL, 0);
        long ic = find_sample(s, &c, 1, NULL, 0);
        ck_assert_int_ge(ia, 0);
        ck_assert_int_ge(ib, 0);
        ck_assert_int_ge(ic, 0);
        ck_assert_int_eq(s->samples[ia].values[0], 4); /* 3 + the broken one */
        ck_assert_int_eq(s->samples[ib].values[0], 3);
        ck_assert_int_eq(s->samples[ic].values[0], 1);
    }
    assert_strings_unique(s);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

/* Thousands of keys: index rebuilds keep every key findable and strings,
 * functions and locations unique. */
START_TEST(test_many_keys)
{
    enum { NKEYS = 3000, DEPTH = 12 };
    ddl_profile *p = ddl_profile_new(NKEYS, 0);
    static char names[DEPTH][32], files[DEPTH][32], lock[32];
    ddl_frame st[DEPTH] = {0};
    ddl_label lb[2];
    ddl_snapshot *s;
    int k, pass, d;

    for (pass = 0; pass < 2; pass++) {
        for (k = 0; k < NKEYS; k++) {
            int64_t v[DDL_NVALUES] = {1, k, 1, 2 * (int64_t)k};
            for (d = 0; d < DEPTH; d++) {
                int fid = (k * 7 + d * 131) % 500;
                snprintf(names[d], sizeof names[d], "mod.Class%d.fn%d",
                         fid % 17, fid);
                snprintf(files[d], sizeof files[d], "/src/m%d.py", fid % 40);
                st[d] = frame(names[d], files[d], fid % 23);
            }
            st[0].line = k; /* keys repeat frames; the leaf line differs */
            snprintf(lock, sizeof lock, "m.py:%d:lock", k % 100);
            lb[0] = str_label("lock name", lock);
            lb[1] = num_label("thread id", k % 5);
            ck_assert_int_eq(ddl_profile_add(p, st, DEPTH, lb, 2, v), 0);
        }
    }
    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), NKEYS);
    ck_assert_uint_eq(ddl_snapshot_dropped(s), 0);
    ck_assert_uint_eq(s->nfuncs, 500);
    /* every key found with the values of its two adds */
    for (k = 0; k < NKEYS; k += 37) {
        long i;
        for (d = 0; d < DEPTH; d++) {
            int fid = (k * 7 + d * 131) % 500;
            snprintf(names[d], sizeof names[d], "mod.Class%d.fn%d", fid % 17,
                     fid);
            snprintf(files[d], sizeof files[d], "/src/m%d.py", fid % 40);
            st[d] = frame(names[d], files[d], fid % 23);
        }
        st[0].line = k;
        snprintf(lock, sizeof lock, "m.py:%d:lock", k % 100);
        lb[0] = str_label("lock name", lock);
        lb[1] = num_label("thread id", k % 5);
        i = find_sample(s, st, DEPTH, lb, 2);
        ck_assert_int_ge(i, 0);
        ck_assert_int_eq(s->samples[i].values[0], 2);
        ck_assert_int_eq(s->samples[i].values[1], 2 * (int64_t)k);
        ck_assert_int_eq(s->samples[i].values[3], 4 * (int64_t)k);
    }
    /* 500 names + 40 files + 100 lock names + 2 keys + "" */
    ck_assert_uint_eq(s->nstrs, 643);
    assert_strings_unique(s);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_cap_and_dropped)
{
    ddl_profile *p = ddl_profile_new(3, 0);
    ddl_frame st[1] = {0};
    ddl_profile_stats stats;
    ddl_snapshot *s;
    char *big = malloc(10000);
    uint32_t nstrs;
    size_t arena;
    int i;

    ck_assert_ptr_nonnull(big);
    for (i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "f%d", i);
        st[0] = frame(name, "/f.py", i);
        ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    }
    /* 1000 refused keys, each with a new 10 KB string */
    for (i = 0; i < 1000; i++) {
        memset(big, 'a' + i % 26, 10000);
        snprintf(big, 10000, "%d", i);
        big[strlen(big)] = '#';
        st[0].name = (ddl_str){big, 10000, 0};
        st[0].filename = S("/dropped.py");
        st[0].line = 1;
        ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 1);
    }
    /* existing keys still aggregate */
    st[0] = frame("f1", "/f.py", 1);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.samples_added, 4);
    ck_assert_uint_eq(stats.samples_dropped, 1000);
    ck_assert_uint_eq(stats.current_keys, 3);

    s = ddl_profile_swap(p, 5);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 3);
    ck_assert_uint_eq(ddl_snapshot_dropped(s), 1000);
    /* nothing of the refused keys stayed behind */
    nstrs = s->nstrs;
    ck_assert_uint_eq(nstrs, 5); /* "", f0, f1, f2, /f.py */
    ck_assert_int_eq(ddl__snapshot_find_str(s, "/dropped.py", 11), -1);
    arena = ddl__snapshot_arena_bytes(s);
    ck_assert_uint_lt(arena, 1000000);
    ck_assert_int_eq(s->samples[find_sample(s, st, 1, NULL, 0)].values[0], 2);
    ddl_snapshot_free(s);

    /* the next interval starts with an empty dropped counter */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    s = ddl_profile_swap(p, 6);
    ck_assert_uint_eq(ddl_snapshot_dropped(s), 0);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 1);
    ddl_snapshot_free(s);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.samples_dropped, 1000); /* since creation */
    free(big);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_swap)
{
    ddl_profile *p = ddl_profile_new(10, 1000);
    ddl_frame st[1] = {0};
    ddl_profile_stats stats;
    ddl_snapshot *s1, *s2, *s3;

    st[0] = frame("f", "/f.py", 1);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    s1 = ddl_profile_swap(p, 5000);
    ck_assert_int_eq(ddl_snapshot_start_ns(s1), 1000);
    ck_assert_int_eq(ddl_snapshot_end_ns(s1), 5000);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s1), 1);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.current_keys, 0);
    ck_assert_uint_eq(stats.snapshots, 1);

    s2 = ddl_profile_swap(p, 9000); /* empty interval */
    ck_assert_int_eq(ddl_snapshot_start_ns(s2), 5000);
    ck_assert_int_eq(ddl_snapshot_end_ns(s2), 9000);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s2), 0);
    ck_assert_uint_eq(s2->nstrs, 1);
    ck_assert_uint_eq(ddl_snapshot_dropped(s2), 0);

    /* the new table works like the first one */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    s3 = ddl_profile_swap(p, 12000);
    ck_assert_int_eq(ddl_snapshot_start_ns(s3), 9000);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s3), 1);
    ck_assert_int_eq(s3->samples[0].values[0], 2);
    /* the first snapshot is untouched by later adds */
    ck_assert_int_eq(s1->samples[0].values[0], 1);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.snapshots, 3);
    ck_assert_uint_eq(stats.samples_added, 3);
    ddl_snapshot_free(s1);
    ddl_snapshot_free(s2);
    ddl_snapshot_free(s3);
    ddl_snapshot_free(NULL);
    ddl_profile_free(p);
}
END_TEST

/* Tickets: add_ex names the sample its values went to; add_ticket adds to
 * exactly that sample while its table is live, and refuses (adding and
 * counting nothing) once the table was swapped out, cleared or reset. */
START_TEST(test_tickets)
{
    ddl_profile *p = ddl_profile_new(2, 0);
    ddl_frame a[2] = {0}, b[1] = {0}, c[1] = {0};
    ddl_label l[1];
    ddl_profile_stats stats;
    uint64_t ta = 0, tb = 0, tc = 7, ta2 = 0;
    ddl_snapshot *s;
    static const int64_t TWO[DDL_NVALUES] = {2, 20, 0, 0};

    a[0] = frame("leaf", "/a.py", 1);
    a[1] = frame("root", "/a.py", 9);
    b[0] = frame("other", "/b.py", 2);
    c[0] = frame("third", "/c.py", 3);
    l[0] = str_label("lock name", "a.py:1:x");
    ck_assert_int_eq(ddl_profile_add_ex(p, a, 2, l, 1, ONE, &ta), 0);
    ck_assert_int_eq(ddl_profile_add_ex(p, b, 1, NULL, 0, ONE, &tb), 0);
    ck_assert_uint_ne(ta, 0);
    ck_assert_uint_ne(tb, 0);
    ck_assert_uint_ne(ta, tb);
    /* the same key again: the same ticket */
    ck_assert_int_eq(ddl_profile_add_ex(p, a, 2, l, 1, ONE, &ta2), 0);
    ck_assert_uint_eq(ta2, ta);
    /* dropped by the cap: no ticket */
    ck_assert_int_eq(ddl_profile_add_ex(p, c, 1, NULL, 0, ONE, &tc), 1);
    ck_assert_uint_eq(tc, 0);
    ck_assert_int_eq(ddl_profile_add_ticket(p, 0, ONE), 1);

    ck_assert_int_eq(ddl_profile_add_ticket(p, tb, TWO), 0);
    ck_assert_int_eq(ddl_profile_add_ticket(p, ta, TWO), 0);
    /* an index past the table's samples is refused */
    ck_assert_int_eq(ddl_profile_add_ticket(p, (ta & ~0xffffffffULL) | 3, ONE),
                     1);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.samples_added, 5);
    ck_assert_uint_eq(stats.samples_dropped, 1);

    s = ddl_profile_swap(p, 10);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 2);
    long ia = find_sample(s, a, 2, l, 1), ib = find_sample(s, b, 1, NULL, 0);
    ck_assert_int_ge(ia, 0);
    ck_assert_int_ge(ib, 0);
    ck_assert_int_eq(s->samples[ia].values[0], 4);
    ck_assert_int_eq(s->samples[ia].values[1], 40);
    ck_assert_int_eq(s->samples[ia].values[2], 2);
    ck_assert_int_eq(s->samples[ib].values[0], 3);
    ck_assert_int_eq(s->samples[ib].values[3], 100);

    /* the live table is a new one: old tickets are stale, even though the
     * new table has a sample at the same index */
    ck_assert_int_eq(ddl_profile_add_ex(p, b, 1, NULL, 0, ONE, &tc), 0);
    ck_assert_uint_ne(tc, 0);
    ck_assert_uint_ne(tc, tb);
    ck_assert_int_eq(ddl_profile_add_ticket(p, ta, ONE), 1);
    ck_assert_int_eq(ddl_profile_add_ticket(p, tc, ONE), 0);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.samples_added, 7);
    ck_assert_uint_eq(stats.current_keys, 1);

    ddl_profile_clear(p, 20);
    ck_assert_int_eq(ddl_profile_add_ticket(p, tc, ONE), 1);
    ck_assert_int_eq(ddl_profile_add_ex(p, b, 1, NULL, 0, ONE, &tb), 0);
    ck_assert_int_eq(ddl_profile_add_ticket(p, tb, ONE), 0);
    ddl_profile_fork_prepare(p);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* child (exit code reports): the parent's tickets are stale */
        ddl_profile_fork_child(p, 30);
        _exit(ddl_profile_add_ticket(p, tb, ONE) == 1 ? 0 : 1);
    }
    ddl_profile_fork_parent(p);
    int status = -1;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* the parent's ticket still holds */
    ck_assert_int_eq(ddl_profile_add_ticket(p, tb, ONE), 0);

    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_clear)
{
    ddl_profile *p = ddl_profile_new(2, 0);
    ddl_frame st[1] = {0};
    ddl_profile_stats stats;
    ddl_snapshot *s;
    int i;

    for (i = 0; i < 3; i++) {
        char name[4] = {'f', (char)('0' + i), 0, 0};
        st[0] = frame(name, "/f.py", 1);
        ddl_profile_add(p, st, 1, NULL, 0, ONE);
    }
    ddl_profile_clear(p, 777);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.current_keys, 0);
    st[0] = frame("g", "/g.py", 2);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    s = ddl_profile_swap(p, 800);
    ck_assert_int_eq(ddl_snapshot_start_ns(s), 777);
    ck_assert_int_eq(ddl_snapshot_end_ns(s), 800);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 1);
    ck_assert_uint_eq(ddl_snapshot_dropped(s), 0);
    ck_assert_int_eq(ddl__snapshot_find_str(s, "f0", 2), -1);
    ck_assert_int_ge(find_sample(s, st, 1, NULL, 0), 0);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_binary_and_large_strings)
{
    ddl_profile *p = ddl_profile_new(10, 0);
    static const char nul_a[] = "a\0b", nul_b[] = "a\0c";
    static const char bytes[] = {'\xff', '\x00', '\x80', 'z', '\xc3'};
    size_t big_len = 1024 * 1024;
    char *big = malloc(big_len), *big2 = malloc(big_len);
    ddl_frame st[2] = {0};
    ddl_label lb[1];
    ddl_snapshot *s;
    ddl_frame f = {0};
    ddl_label l;
    size_t i;
    long si;

    ck_assert_ptr_nonnull(big);
    ck_assert_ptr_nonnull(big2);
    for (i = 0; i < big_len; i++) {
        big[i] = (char)(i * 31 + (i >> 8));
    }
    memcpy(big2, big, big_len);

    st[0].name = (ddl_str){nul_a, 3, 0};
    st[0].filename = (ddl_str){bytes, sizeof bytes, 0};
    st[0].line = 1;
    st[1].name = (ddl_str){big, big_len, 0};
    st[1].filename = (ddl_str){NULL, 0, 0}; /* empty, NULL pointer */
    st[1].line = 0;
    lb[0].key = (ddl_str){nul_b, 3, 0};
    lb[0].str = (ddl_str){big, 1000, 0};
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 1, ONE), 0);
    st[0].name = (ddl_str){nul_b, 3, 0}; /* differs only after the NUL */
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 1, ONE), 0);
    st[1].name = (ddl_str){big2, big_len, 0}; /* same MB, other buffer */
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 1, ONE), 0);
    big2[big_len / 2] ^= 1; /* one byte in the middle differs */
    ck_assert_int_eq(ddl_profile_add(p, st, 2, lb, 1, ONE), 0);

    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 3);
    st[1].name = (ddl_str){big, big_len, 0};
    si = find_sample(s, st, 2, lb, 1);
    ck_assert_int_ge(si, 0);
    ck_assert_int_eq(s->samples[si].values[0], 2);
    ddl__snapshot_frame(s, (size_t)si, 0, &f);
    ck_assert(str_is(f.name, nul_b, 3));
    ck_assert(str_is(f.filename, bytes, sizeof bytes));
    ddl__snapshot_frame(s, (size_t)si, 1, &f);
    ck_assert(str_is(f.name, big, big_len));
    ck_assert_uint_eq(f.filename.len, 0);
    ddl__snapshot_label(s, (size_t)si, 0, &l);
    ck_assert(str_is(l.key, nul_b, 3));
    ck_assert(str_is(l.str, big, 1000));
    st[0].name = (ddl_str){nul_a, 3, 0};
    ck_assert_int_ge(find_sample(s, st, 2, lb, 1), 0);
    /* strings: "", a\0b, bytes, big, a\0c, big[:1000], big2 */
    ck_assert_uint_eq(s->nstrs, 7);
    assert_strings_unique(s);
    ddl_snapshot_free(s);
    free(big);
    free(big2);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_deep_stack_heap_scratch)
{
    /* more frames and labels than the stack scratch space */
    enum { DEPTH = 300, NLAB = 40 };
    ddl_profile *p = ddl_profile_new(10, 0);
    static char names[DEPTH][16], keys[NLAB][16];
    ddl_frame st[DEPTH] = {0};
    ddl_label lb[NLAB];
    ddl_snapshot *s;
    int i;

    for (i = 0; i < DEPTH; i++) {
        snprintf(names[i], sizeof names[i], "f%d", i % 50);
        st[i] = frame(names[i], "/deep.py", i);
    }
    for (i = 0; i < NLAB; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        lb[i] = num_label(keys[i], i);
    }
    ck_assert_int_eq(ddl_profile_add(p, st, DEPTH, lb, NLAB, ONE), 0);
    ck_assert_int_eq(ddl_profile_add(p, st, DEPTH, lb, NLAB, ONE), 0);
    s = ddl_profile_swap(p, 1);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 1);
    ck_assert_int_eq(s->samples[0].values[0], 2);
    ck_assert_uint_eq(s->nlocs, DEPTH);
    ck_assert_uint_eq(s->nfuncs, 50);
    ck_assert_int_eq(find_sample(s, st, DEPTH, lb, NLAB), 0);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

/* ---- randomized comparison with a naive model ---- */

/* A key serialized to bytes (length-prefixed fields): equal keys, equal
 * bytes. */
static size_t
serialize_key(char *out, const ddl_frame *frames, size_t nframes,
              const ddl_label *labels, size_t nlabels)
{
    size_t n = 0, i;
#define PUT(ptr, len)                                                         \
    do {                                                                      \
        size_t l_ = (len);                                                    \
        memcpy(out + n, &l_, sizeof l_);                                      \
        n += sizeof l_;                                                       \
        if (l_ > 0) {                                                         \
            memcpy(out + n, (ptr), l_);                                       \
        }                                                                     \
        n += l_;                                                              \
    } while (0)
#define PUTN(count)                                                           \
    do {                                                                      \
        size_t c_ = (count);                                                  \
        memcpy(out + n, &c_, sizeof c_);                                      \
        n += sizeof c_;                                                       \
    } while (0)
    PUTN(nframes);
    for (i = 0; i < nframes; i++) {
        PUT(frames[i].name.ptr, frames[i].name.len);
        PUT(frames[i].filename.ptr, frames[i].filename.len);
        PUT(&frames[i].line, sizeof frames[i].line);
    }
    PUTN(nlabels);
    for (i = 0; i < nlabels; i++) {
        PUT(labels[i].key.ptr, labels[i].key.len);
        if (labels[i].str.ptr == NULL) {
            PUT(&labels[i].num, sizeof labels[i].num);
        }
        else {
            PUTN(0);
            PUT(labels[i].str.ptr, labels[i].str.len);
        }
    }
#undef PUT
#undef PUTN
    return n;
}

typedef struct {
    char *key;
    size_t len;
    int64_t values[DDL_NVALUES];
    int seen;
} model_entry;

static uint64_t rng_state;

static uint32_t
rnd(uint32_t n)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33) % n;
}

/* Compare a snapshot with the model, then empty the model. */
static void
check_against_model(ddl_snapshot *s, model_entry *model, size_t *nmodel,
                    char *buf)
{
    size_t i, j, k;
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), *nmodel);
    for (i = 0; i < ddl_snapshot_nsamples(s); i++) {
        ddl_frame fr[8] = {0};
        ddl_label lb[4];
        size_t len;
        const ddl_ssample *smp = &s->samples[i];
        int found = 0;
        ck_assert_uint_le(smp->nframes, 8);
        ck_assert_uint_le(smp->nlabels, 4);
        for (j = 0; j < smp->nframes; j++) {
            ddl__snapshot_frame(s, i, j, &fr[j]);
        }
        for (j = 0; j < smp->nlabels; j++) {
            ddl__snapshot_label(s, i, j, &lb[j]);
        }
        len = serialize_key(buf, fr, smp->nframes, lb, smp->nlabels);
        for (j = 0; j < *nmodel && !found; j++) {
            if (!model[j].seen && model[j].len == len &&
                memcmp(model[j].key, buf, len) == 0) {
                found = 1;
                model[j].seen = 1;
                for (k = 0; k < DDL_NVALUES; k++) {
                    ck_assert_int_eq(smp->values[k], model[j].values[k]);
                }
            }
        }
        ck_assert_msg(found, "snapshot sample %zu is not in the model", i);
    }
    assert_strings_unique(s);
    for (j = 0; j < *nmodel; j++) {
        free(model[j].key);
    }
    *nmodel = 0;
}

START_TEST(test_randomized_against_model)
{
    enum { ADDS = 30000, MAXKEYS = 1500, NBUF = 6, POOL = 24 };
    static const char *pool[POOL] = {"a",
                                     "b",
                                     "ab",
                                     "ba",
                                     "",
                                     "handler",
                                     "handlers",
                                     "Handler",
                                     "x\0y",
                                     "x\0z",
                                     "/app/a.py",
                                     "/app/b.py",
                                     "/app/ab.py",
                                     "<module>",
                                     "run",
                                     "Thread.run",
                                     "0123456789abcdef",
                                     "0123456789abcdeF",
                                     "0123456789abcdef0",
                                     "lock",
                                     "lock name",
                                     "thread id",
                                     "MainThread",
                                     "Thread-1"};
    static size_t pool_len[POOL];
    /* caller buffers reused with changing contents */
    static char bufs[8 * 2 + 4 * 2][NBUF][32];
    model_entry *model = calloc(MAXKEYS, sizeof *model);
    char *ser = malloc(1 << 16);
    ddl_profile *p = ddl_profile_new(MAXKEYS, 0);
    size_t nmodel = 0;
    uint64_t dropped = 0;
    int64_t now = 0;
    int i, swaps = 0;

    ck_assert_ptr_nonnull(model);
    ck_assert_ptr_nonnull(ser);
    for (i = 0; i < POOL; i++) {
        pool_len[i] = strlen(pool[i]);
    }
    pool_len[8] = pool_len[9] = 3; /* the ones with a NUL */
    rng_state = 0x5eed;
    for (i = 0; i < ADDS; i++) {
        ddl_frame fr[8] = {0};
        ddl_label lb[4];
        size_t nf = rnd(5) + (rnd(4) == 0 ? 3 : 0), nl = rnd(4), j;
        int64_t v[DDL_NVALUES] = {1, rnd(100), rnd(2), rnd(1000)};
        size_t len, m;
        int rc;

        if (rnd(3000) == 0) {
            ddl_snapshot *s = ddl_profile_swap(p, ++now);
            ck_assert_uint_eq(ddl_snapshot_dropped(s), dropped);
            check_against_model(s, model, &nmodel, ser);
            ddl_snapshot_free(s);
            dropped = 0;
            swaps++;
        }
        for (j = 0; j < nf + nl; j++) {
            /* two strings per slot, each in one of NBUF buffers */
            int w;
            for (w = 0; w < 2; w++) {
                uint32_t pi = rnd(POOL);
                char *b = bufs[2 * j + (size_t)w][rnd(NBUF)];
                ddl_str str;
                memcpy(b, pool[pi], pool_len[pi]);
                str.ptr = b;
                str.len = pool_len[pi];
                /* callers may pass the hash precomputed, or not */
                str.hash = rnd(2) ? ddl_str_hash(b, str.len) : 0;
                if (j < nf) {
                    if (w == 0) {
                        fr[j].name = str;
                    }
                    else {
                        fr[j].filename = str;
                    }
                }
                else if (w == 0) {
                    lb[j - nf].key = str;
                }
                else {
                    lb[j - nf].str = str;
                }
            }
            if (j < nf) {
                fr[j].line = rnd(3);
            }
            else if (rnd(2) == 0) {
                lb[j - nf].str.ptr = NULL; /* numeric */
                lb[j - nf].str.len = 0;
                lb[j - nf].num = (int64_t)rnd(3) - 1;
            }
        }
        rc = ddl_profile_add(p, fr, nf, lb, nl, v);
        len = serialize_key(ser, fr, nf, lb, nl);
        for (m = 0; m < nmodel; m++) {
            if (model[m].len == len && memcmp(model[m].key, ser, len) == 0) {
                break;
            }
        }
        if (rc == 1) { /* refused: only a new key when the cap is full */
            ck_assert_uint_eq(m, nmodel);
            ck_assert_uint_eq(nmodel, MAXKEYS);
            dropped++;
            continue;
        }
        ck_assert_int_eq(rc, 0);
        if (m == nmodel) {
            ck_assert_uint_lt(nmodel, MAXKEYS);
            model[m].key = malloc(len);
            ck_assert_ptr_nonnull(model[m].key);
            memcpy(model[m].key, ser, len);
            model[m].len = len;
            memset(model[m].values, 0, sizeof model[m].values);
            model[m].seen = 0;
            nmodel++;
        }
        for (j = 0; j < DDL_NVALUES; j++) {
            model[m].values[j] += v[j];
        }
    }
    {
        ddl_snapshot *s = ddl_profile_swap(p, ++now);
        ck_assert_uint_eq(ddl_snapshot_dropped(s), dropped);
        check_against_model(s, model, &nmodel, ser);
        ddl_snapshot_free(s);
    }
    ck_assert_int_gt(swaps, 3);
    free(model);
    free(ser);
    ddl_profile_free(p);
}
END_TEST

/* ---- concurrency ---- */

enum { NTHREADS = 4, PER_THREAD = 20000, CKEYS = 50 };

typedef struct {
    ddl_profile *p;
    int id;
    int failures;
} adder_arg;

typedef struct {
    ddl_profile *p;
    atomic_int *stop;
    int64_t totals[DDL_NVALUES];
    long swaps;
    long bad_intervals;
} swapper_arg;

static void *
adder(void *arg)
{
    adder_arg *a = arg;
    char name[32], lock[32];
    int i;
    for (i = 0; i < PER_THREAD; i++) {
        int k = (i * 7 + a->id) % CKEYS;
        int64_t v[DDL_NVALUES] = {1, i % 13, 1, a->id + 1};
        ddl_frame st[3] = {0};
        ddl_label lb[2];
        snprintf(name, sizeof name, "fn_%d", k);
        snprintf(lock, sizeof lock, "lock_%d", k % 7);
        st[0] = frame(name, "/c.py", k);
        st[1] = frame("worker", "/c.py", 100);
        st[2] = frame("run", "/threading.py", 1);
        lb[0] = str_label("lock name", lock);
        /* half the keys are shared between threads */
        lb[1] = num_label("thread id", k % 2 ? a->id : -1);
        if (ddl_profile_add(a->p, st, 3, lb, 2, v) != 0) {
            a->failures++;
        }
    }
    return NULL;
}

static void
sum_snapshot(ddl_snapshot *s, int64_t totals[DDL_NVALUES])
{
    size_t i, j;
    for (i = 0; i < ddl_snapshot_nsamples(s); i++) {
        for (j = 0; j < DDL_NVALUES; j++) {
            totals[j] += s->samples[i].values[j];
        }
    }
}

static void *
swapper(void *arg)
{
    swapper_arg *a = arg;
    int64_t now = 1;
    while (!atomic_load(a->stop)) {
        ddl_snapshot *s = ddl_profile_swap(a->p, ++now);
        if (s == NULL) {
            continue;
        }
        if (ddl_snapshot_end_ns(s) != now ||
            ddl_snapshot_start_ns(s) != now - 1) {
            a->bad_intervals++;
        }
        sum_snapshot(s, a->totals);
        ddl_snapshot_free(s);
        a->swaps++;
        /* a pause between swaps (each makes a table): under valgrind, which
         * runs one thread at a time, a swapper that never pauses could take
         * most of the run (1 to 10 minutes, by scheduling) */
        struct timespec pause = {0, 20000};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

START_TEST(test_concurrent_add_and_swap)
{
    ddl_profile *p = ddl_profile_new(100000, 1);
    pthread_t th[NTHREADS], sw;
    adder_arg args[NTHREADS];
    swapper_arg sa;
    atomic_int stop = 0;
    int64_t expect[DDL_NVALUES] = {0, 0, 0, 0};
    ddl_profile_stats stats;
    ddl_snapshot *last;
    int t, i;

    memset(&sa, 0, sizeof sa);
    sa.p = p;
    sa.stop = &stop;
    ck_assert_int_eq(pthread_create(&sw, NULL, swapper, &sa), 0);
    for (t = 0; t < NTHREADS; t++) {
        args[t].p = p;
        args[t].id = t;
        args[t].failures = 0;
        ck_assert_int_eq(pthread_create(&th[t], NULL, adder, &args[t]), 0);
    }
    for (t = 0; t < NTHREADS; t++) {
        pthread_join(th[t], NULL);
        ck_assert_int_eq(args[t].failures, 0);
        for (i = 0; i < PER_THREAD; i++) {
            expect[0] += 1;
            expect[1] += i % 13;
            expect[2] += 1;
            expect[3] += t + 1;
        }
    }
    atomic_store(&stop, 1);
    pthread_join(sw, NULL);
    last = ddl_profile_swap(p, 1000000000);
    sum_snapshot(last, sa.totals);
    ddl_snapshot_free(last);

    for (i = 0; i < DDL_NVALUES; i++) {
        ck_assert_int_eq(sa.totals[i], expect[i]);
    }
    ck_assert_int_eq(sa.bad_intervals, 0);
    ck_assert_int_gt(sa.swaps, 0);
    ddl_profile_get_stats(p, &stats);
    ck_assert_uint_eq(stats.samples_added, NTHREADS * PER_THREAD);
    ck_assert_uint_eq(stats.samples_dropped, 0);
    ck_assert_uint_eq(stats.snapshots, (uint64_t)sa.swaps + 1);
    ddl_profile_free(p);
}
END_TEST

/* ---- fork ---- */

START_TEST(test_fork_child_clears)
{
    ddl_profile *p = ddl_profile_new(100, 0);
    ddl_frame st[1] = {0};
    ddl_snapshot *s;
    pid_t pid;
    int status = -1;

    st[0] = frame("parent", "/p.py", 1);
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    ddl_profile_fork_prepare(p);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* child: no Check assertions (exit code reports) */
        ddl_profile_stats stats;
        ddl_frame cst[1] = {0};
        int rc = 0;
        ddl_profile_fork_child(p, 555);
        ddl_profile_get_stats(p, &stats);
        if (stats.current_keys != 0) {
            rc |= 1;
        }
        cst[0] = frame("child", "/c.py", 2);
        if (ddl_profile_add(p, cst, 1, NULL, 0, ONE) != 0) {
            rc |= 2;
        }
        s = ddl_profile_swap(p, 600);
        if (s == NULL || ddl_snapshot_nsamples(s) != 1 ||
            ddl_snapshot_start_ns(s) != 555 ||
            find_sample(s, cst, 1, NULL, 0) != 0 ||
            ddl__snapshot_find_str(s, "parent", 6) != -1) {
            rc |= 4;
        }
        ddl_snapshot_free(s);
        ddl_profile_free(p);
        _exit(rc);
    }
    ddl_profile_fork_parent(p);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    /* the parent keeps its samples and its mutex works */
    ck_assert_int_eq(ddl_profile_add(p, st, 1, NULL, 0, ONE), 0);
    s = ddl_profile_swap(p, 10);
    ck_assert_uint_eq(ddl_snapshot_nsamples(s), 1);
    ck_assert_int_eq(s->samples[0].values[0], 2);
    ddl_snapshot_free(s);
    ddl_profile_free(p);
}
END_TEST

START_TEST(test_clocks)
{
    int64_t m1 = ddl_monotonic_ns(), m2 = ddl_monotonic_ns();
    int64_t w = ddl_wall_ns();
    int64_t now_s = (int64_t)time(NULL);
    ck_assert_int_ge(m2, m1);
    ck_assert_int_gt(m1, 0);
    ck_assert_int_ge(w / 1000000000, now_s - 2);
    ck_assert_int_le(w / 1000000000, now_s + 2);
}
END_TEST

static Suite *
profile_suite(void)
{
    Suite *s = suite_create("profile");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_new_rejects_zero_cap);
    tcase_add_test(tc, test_interning);
    tcase_add_test(tc, test_aggregation);
    tcase_add_test(tc, test_precomputed_hash);
    tcase_add_test(tc, test_distinct_label_values);
    tcase_add_test(tc, test_label_order);
    tcase_add_test(tc, test_frame_order_and_depth);
    tcase_add_test(tc, test_reused_buffer);
    tcase_add_test(tc, test_frame_keys);
    tcase_add_test(tc, test_many_keys);
    tcase_add_test(tc, test_cap_and_dropped);
    tcase_add_test(tc, test_swap);
    tcase_add_test(tc, test_clear);
    tcase_add_test(tc, test_tickets);
    tcase_add_test(tc, test_binary_and_large_strings);
    tcase_add_test(tc, test_deep_stack_heap_scratch);
    tcase_add_test(tc, test_randomized_against_model);
    tcase_add_test(tc, test_concurrent_add_and_swap);
    tcase_add_test(tc, test_fork_child_clears);
    tcase_add_test(tc, test_clocks);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(profile_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
