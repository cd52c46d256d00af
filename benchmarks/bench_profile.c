/* Micro-benchmark of ddlock's aggregation table and pprof encoder.
 *
 * Build and run by hand from the repository root (not part of any build):
 *
 *   (cd ext/proto && protoc-c --c_out=. profile.proto)
 *   gcc -std=c11 -O2 -D_GNU_SOURCE -Iext -Iext/proto \
 *       benchmarks/bench_profile.c ext/profile.c ext/pprof.c \
 *       ext/proto/profile.pb-c.c \
 *       $(pkg-config --cflags --libs libprotobuf-c zlib) -lpthread \
 *       -o /tmp/bench_profile && /tmp/bench_profile
 *
 * BENCH_ITERS=n sets the adds per timed batch (default 200000).
 *
 * Reports the best of several batches (noise from other processes only
 * inflates numbers, so the minimum is the most faithful):
 *   - ns per ddl_profile_add of an already-present key: 1 key, then 64 keys
 *     in rotation (10 and 20 frames; names ~35 bytes, paths ~65 bytes,
 *     labels lock name, thread id, thread native id, thread name), with
 *     the caller's string buffers stable as CPython's cached UTF-8 is;
 *   - 20 frames with every add passing fresh copies of the strings (the
 *     pointer-keyed cache never hits: the fallback path);
 *   - 2 threads adding at once (wall time per add, mutex contention);
 *   - ns per add of a new key (insertion path);
 *   - ms per encode (raw protobuf, gzip, both) of a snapshot with 10,000
 *     distinct samples of 20-frame stacks, with frames drawn from a pool
 *     of 2,000 functions and with every frame unique, plus the sizes.
 */
#include "profile.h"
#include "profile_internal.h"
#include "pprof.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FRAMES 20
#define NKEYS 64
#define ROUNDS 15 /* timed batches of the add benchmarks */
#define ENCODE_ROUNDS 5

typedef struct {
    ddl_frame frames[MAX_FRAMES];
    ddl_label labels[4];
    char names[MAX_FRAMES][64];
    char files[MAX_FRAMES][96];
    char lock_name[64];
} key_t_;

static uint64_t rng_state = 0x243f6a8885a308d3ULL;

static uint64_t
rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Fill key k with a stack of nframes frames made from function ids. */
static void
make_key(key_t_ *k, size_t nframes, const unsigned *fids, unsigned variant)
{
    size_t i;
    for (i = 0; i < nframes; i++) {
        unsigned f = fids[i];
        memset(&k->frames[i], 0, sizeof k->frames[i]); /* hash and key: none */
        int nl = snprintf(k->names[i], sizeof k->names[i],
                          "service.handlers.Handler%u.method_%u", f % 97, f);
        int fl = snprintf(k->files[i], sizeof k->files[i],
                          "/usr/local/lib/python3.11/site-packages/app/"
                          "pkg%u/module_%u.py",
                          f % 13, f);
        k->frames[i].name.ptr = k->names[i];
        k->frames[i].name.len = (size_t)nl;
        k->frames[i].filename.ptr = k->files[i];
        k->frames[i].filename.len = (size_t)fl;
        k->frames[i].line = 10 + (int64_t)(f % 500);
    }
    snprintf(k->lock_name, sizeof k->lock_name, "module_%u.py:%u:self._lock",
             variant % 50, 100 + variant % 50);
    k->labels[0].key = (ddl_str){"lock name", 9};
    k->labels[0].str = (ddl_str){k->lock_name, strlen(k->lock_name)};
    k->labels[1].key = (ddl_str){"thread id", 9};
    k->labels[1].str = (ddl_str){NULL, 0};
    k->labels[1].num = 140000000000000 + (int64_t)(variant % 8);
    k->labels[2].key = (ddl_str){"thread native id", 16};
    k->labels[2].str = (ddl_str){NULL, 0};
    k->labels[2].num = 4000 + (int64_t)(variant % 8);
    k->labels[3].key = (ddl_str){"thread name", 11};
    k->labels[3].str = (ddl_str){"MainThread", 10};
}

static key_t_ keys[NKEYS];
static const int64_t one[DDL_NVALUES] = {1, 1500, 1, 2500};

/* copy_strings: every add passes freshly copied strings (same bytes, other
 * addresses), defeating the pointer-keyed cache: the worst case for a
 * caller whose string buffers are not stable. */
static double
bench_hot(size_t nframes, size_t nkeys, long iters, int copy_strings)
{
    double best = 1e30;
    int r;
    size_t k;

    for (k = 0; k < NKEYS; k++) {
        unsigned fids[MAX_FRAMES];
        size_t i;
        for (i = 0; i < nframes; i++) {
            fids[i] = (unsigned)(rng() % 2000);
        }
        make_key(&keys[k], nframes, fids, (unsigned)k);
    }
    for (r = 0; r < ROUNDS; r++) {
        ddl_profile *p = ddl_profile_new(100000, ddl_wall_ns());
        int64_t t0, t1;
        long it;
        for (k = 0; k < nkeys; k++) {
            ddl_profile_add(p, keys[k].frames, nframes, keys[k].labels, 4,
                            one);
        }
        t0 = ddl_monotonic_ns();
        for (it = 0; it < iters; it++) {
            key_t_ *kk = &keys[(size_t)it % nkeys];
            if (copy_strings) {
                static key_t_ copies[3];
                key_t_ *c = &copies[it % 3];
                size_t i;
                *c = *kk;
                for (i = 0; i < nframes; i++) {
                    c->frames[i].name.ptr = c->names[i];
                    c->frames[i].filename.ptr = c->files[i];
                }
                c->labels[0].str.ptr = c->lock_name;
                kk = c;
            }
            ddl_profile_add(p, kk->frames, nframes, kk->labels, 4, one);
        }
        t1 = ddl_monotonic_ns();
        if ((double)(t1 - t0) / (double)iters < best) {
            best = (double)(t1 - t0) / (double)iters;
        }
        ddl_profile_free(p);
    }
    return best;
}

typedef struct {
    ddl_profile *p;
    long iters;
    size_t offset;
} thread_arg;

static void *
hot_thread(void *arg)
{
    thread_arg *a = arg;
    long it;
    for (it = 0; it < a->iters; it++) {
        key_t_ *kk = &keys[(a->offset + (size_t)it) % NKEYS];
        ddl_profile_add(a->p, kk->frames, MAX_FRAMES, kk->labels, 4, one);
    }
    return NULL;
}

/* wall time per add with two threads adding at once (keys from the last
 * bench_hot(20) call) */
static double
bench_contended(long iters)
{
    double best = 1e30;
    int r;
    for (r = 0; r < ROUNDS; r++) {
        ddl_profile *p = ddl_profile_new(100000, ddl_wall_ns());
        pthread_t th[2];
        thread_arg args[2];
        int64_t t0, t1;
        int i;
        for (i = 0; i < 2; i++) {
            args[i].p = p;
            args[i].iters = iters;
            args[i].offset = (size_t)i * 7;
        }
        t0 = ddl_monotonic_ns();
        for (i = 0; i < 2; i++) {
            pthread_create(&th[i], NULL, hot_thread, &args[i]);
        }
        for (i = 0; i < 2; i++) {
            pthread_join(th[i], NULL);
        }
        t1 = ddl_monotonic_ns();
        if ((double)(t1 - t0) / (double)(2 * iters) < best) {
            best = (double)(t1 - t0) / (double)(2 * iters);
        }
        ddl_profile_free(p);
    }
    return best;
}

/* A snapshot with nsamples distinct 20-frame samples. pool = 0: every
 * frame is a distinct function; otherwise frames come from pool functions. */
static ddl_snapshot *
build_snapshot(size_t nsamples, unsigned pool, double *ns_per_insert)
{
    ddl_profile *p = ddl_profile_new(nsamples, 1700000000000000000);
    ddl_snapshot *s;
    size_t n;
    int64_t t, total = 0;
    key_t_ *k = malloc(sizeof *k);

    for (n = 0; n < nsamples; n++) {
        unsigned fids[MAX_FRAMES];
        size_t i;
        for (i = 0; i < MAX_FRAMES; i++) {
            fids[i] = pool ? (unsigned)(rng() % pool)
                           : (unsigned)(n * MAX_FRAMES + i);
        }
        make_key(k, MAX_FRAMES, fids, (unsigned)n);
        t = ddl_monotonic_ns();
        if (ddl_profile_add(p, k->frames, MAX_FRAMES, k->labels, 4, one) !=
            0) {
            fprintf(stderr, "add failed\n");
            exit(1);
        }
        total += ddl_monotonic_ns() - t;
    }
    *ns_per_insert = (double)total / (double)nsamples;
    s = ddl_profile_swap(p, 1700000060000000000);
    ddl_profile_free(p);
    free(k);
    return s;
}

static void
bench_encode(const char *what, unsigned pool)
{
    double ins, best_raw = 1e30, best_gz = 1e30, best_all = 1e30;
    ddl_snapshot *s = build_snapshot(10000, pool, &ins);
    size_t raw_len = 0, gz_len = 0;
    int r;

    for (r = 0; r < ENCODE_ROUNDS; r++) {
        ddl_buf raw = {0}, gz = {0}, all = {0};
        int64_t t0 = ddl_monotonic_ns(), t1, t2, t3;
        if (ddl_pprof_encode_raw(s, &raw) != 0) {
            exit(1);
        }
        t1 = ddl_monotonic_ns();
        if (ddl_gzip(raw.data, raw.len, &gz) != 0) {
            exit(1);
        }
        t2 = ddl_monotonic_ns();
        if (ddl_pprof_encode(s, &all) != 0) {
            exit(1);
        }
        t3 = ddl_monotonic_ns();
        if ((t1 - t0) / 1e6 < best_raw) {
            best_raw = (t1 - t0) / 1e6;
        }
        if ((t2 - t1) / 1e6 < best_gz) {
            best_gz = (t2 - t1) / 1e6;
        }
        if ((t3 - t2) / 1e6 < best_all) {
            best_all = (t3 - t2) / 1e6;
        }
        raw_len = raw.len;
        gz_len = all.len;
        ddl_buf_free(&raw);
        ddl_buf_free(&gz);
        ddl_buf_free(&all);
    }
    printf("encode 10k x 20 frames, %s:\n"
           "  %u strings, %u functions, %u locations, arena %zu KiB\n"
           "  insert (new key)   %8.0f ns/add\n"
           "  encode_raw         %8.2f ms  (%zu bytes)\n"
           "  gzip               %8.2f ms\n"
           "  encode (raw+gzip)  %8.2f ms  (%zu bytes gzip)\n",
           what, s->nstrs, s->nfuncs, s->nlocs,
           ddl__snapshot_arena_bytes(s) / 1024, ins, best_raw, raw_len,
           best_gz, best_all, gz_len);
    ddl_snapshot_free(s);
}

int
main(void)
{
    const char *env = getenv("BENCH_ITERS");
    long iters = env != NULL ? atol(env) : 200000;
    if (iters <= 0) {
        iters = 200000;
    }
    printf("ddl_profile_add, key present, 4 labels (best of %d batches of "
           "%ld):\n",
           ROUNDS, iters);
    printf("  10 frames, 1 key            %8.1f ns/add\n",
           bench_hot(10, 1, iters, 0));
    printf("  20 frames, 1 key            %8.1f ns/add\n",
           bench_hot(20, 1, iters, 0));
    printf("  10 frames, 64 keys          %8.1f ns/add\n",
           bench_hot(10, NKEYS, iters, 0));
    printf("  20 frames, 64 keys          %8.1f ns/add\n",
           bench_hot(20, NKEYS, iters, 0));
    printf("  20 frames, 64 keys, 2 threads %6.1f ns/add (wall)\n",
           bench_contended(iters));
    printf("  20 frames, 64 keys, strings copied before every add "
           "(fallback path) %.1f ns/add, copying included\n",
           bench_hot(20, NKEYS, iters / 4, 1));
    bench_encode("frames from a pool of 2000 functions", 2000);
    bench_encode("every frame a distinct function", 0);
    return 0;
}
