/* ddlock profile: thread-safe aggregation of lock samples.
 *
 * One table per interval maps a key (stack of frames leaf first, labels in
 * order) to four summed values. Strings, functions (name + filename) and
 * locations (function + line) are interned so pprof.c can emit them by id.
 *
 * Hot path (key already present), all under the profile mutex, no
 * allocation: each frame is resolved to its location id through a cache
 * keyed by the caller's string pointers and line; a cache hit is accepted
 * only after the caller's bytes compare equal to the interned strings, so a
 * reused pointer can never alias a different string. A miss falls back to
 * hashing the bytes and probing the string/function/location indexes. The
 * sample is then found by a hash of the ids and an integer comparison.
 * Hashing ~2 KB of names and paths per add would cost more than everything
 * else on the path together, which is why the hot path avoids it.
 *
 * New key: everything the insertion can need (array and index capacity,
 * arena bytes for the strings not interned yet) is reserved first; then
 * interning cannot fail, so a refused or failed add never leaves interned
 * strings behind. The cap on keys is checked before any of that.
 *
 * Pure C: no Python.h.
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "profile.h"
#include "profile_internal.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__) && !defined(DDL_NO_SIMD)
#include <emmintrin.h>
#endif

struct ddl_profile {
    pthread_mutex_t mutex;
    ddl_snapshot *table; /* live table, swapped out whole */
    size_t max_samples;
    uint64_t samples_added;
    uint64_t samples_dropped;
    uint64_t snapshots;
    uint32_t epoch; /* of the live table: bumped when it is swapped out,
                       cleared or reset (tickets name it), never 0 */
};

/* ------------------------------------------------------------------ */
/* Hashing                                                              */

#define K0 0x9e3779b97f4a7c15ULL
#define K1 0xc2b2ae3d27d4eb4fULL
#define K2 0x165667b19e3779f9ULL
#define K3 0xd6e8feb86659fd93ULL
#define K4 0xa0761d6478bd642fULL
#define SEED_STR 0x8ebc6af09c88c6e3ULL

/* 64x64 -> 128 multiply, folded: the mixing step of every hash here. */
static inline uint64_t
fold_mul(uint64_t a, uint64_t b)
{
#if defined(__SIZEOF_INT128__)
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32;
    uint64_t bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    uint64_t lo = (ll & 0xffffffffu) | (mid << 32);
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

static inline uint64_t
load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t
load32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Bytes -> 64-bit hash, one 64x64->128 multiply per 16 bytes. Short
 * inputs are read as (possibly overlapping) words from both ends; longer
 * ones 16 bytes per step, and the last 16 bytes (overlapping) finish the
 * chain, so no byte is read out of bounds. */
static inline uint64_t
hash_bytes(const void *ptr, size_t len, uint64_t seed)
{
    const unsigned char *p = ptr;
    uint64_t a, b;
    /* the length is multiplied in, never xored with data bits: overlapping
     * reads of strings whose lengths differ must not cancel out */
    uint64_t h = seed ^ ((uint64_t)len * K0);

    if (len <= 16) {
        if (len >= 8) {
            a = load64(p);
            b = load64(p + len - 8);
        }
        else if (len >= 4) {
            a = load32(p);
            b = load32(p + len - 4);
        }
        else if (len > 0) {
            a = ((uint64_t)p[0] << 16) | ((uint64_t)p[len >> 1] << 8) |
                p[len - 1];
            b = 0;
        }
        else {
            a = b = 0;
        }
    }
    else {
        size_t n = len;
        while (n > 16) {
            h = fold_mul(load64(p) ^ K1, load64(p + 8) ^ h);
            p += 16;
            n -= 16;
        }
        a = load64(p + n - 16);
        b = load64(p + n - 8);
    }
    return fold_mul(a ^ K2, b ^ h);
}

/* The caller's precomputed hash when it gave one (see ddl_str). */
static inline uint64_t
hash_str(const ddl_str *s)
{
    return s->hash != 0 ? s->hash : hash_bytes(s->ptr, s->len, SEED_STR);
}

uint64_t
ddl_str_hash(const char *ptr, size_t len)
{
    return hash_bytes(ptr, len, SEED_STR);
}

static inline uint64_t
hash_finish(uint64_t h)
{
    h ^= h >> 31;
    h *= K3;
    h ^= h >> 29;
    h *= K1;
    h ^= h >> 32;
    return h;
}

static inline uint64_t
hash_func(uint32_t name, uint32_t filename)
{
    return hash_finish(fold_mul((uint64_t)name ^ K1, (uint64_t)filename ^ K2));
}

static inline uint64_t
hash_loc(uint32_t func, int64_t line)
{
    return hash_finish(fold_mul((uint64_t)func ^ K3, (uint64_t)line ^ K4));
}

/* Hash of a key given as ids. Every term includes its position, so the
 * terms are simply added (no serial multiply chain) yet order matters. */
static uint64_t
hash_ids(const uint32_t *locs, size_t nframes, const ddl_slabel *labels,
         size_t nlabels)
{
    uint64_t h = fold_mul((uint64_t)nframes ^ K0, (uint64_t)nlabels ^ K2);
    uint64_t pos = K3;
    size_t i;

    for (i = 0; i < nframes; i++, pos += K0) {
        h += fold_mul((uint64_t)locs[i] ^ pos, K1);
    }
    for (i = 0; i < nlabels; i++, pos += K0) {
        uint64_t v = labels[i].str == DDL_NUMERIC_LABEL
                         ? (uint64_t)labels[i].num ^ K4
                         : (uint64_t)labels[i].str ^ K2;
        h += fold_mul((uint64_t)labels[i].key ^ pos, v);
    }
    return hash_finish(h);
}

/* cache slots from the caller's pointers */
static inline size_t
frame_slot(const ddl_frame *f, size_t mask)
{
    return (size_t)fold_mul((uint64_t)(uintptr_t)f->name.ptr ^ K1,
                            (uint64_t)(uintptr_t)f->filename.ptr ^
                                (uint64_t)f->line ^ K2) &
           mask;
}

static inline size_t
str_slot(const ddl_str *s, size_t mask)
{
    return (size_t)fold_mul((uint64_t)(uintptr_t)s->ptr ^ K3,
                            (uint64_t)s->len ^ K4) &
           mask;
}

/* ------------------------------------------------------------------ */
/* Arena                                                                */

struct ddl_chunk {
    ddl_chunk *next;
    size_t size;
    /* data follows, 16-byte header keeps it 8-byte aligned */
};

#define ARENA_MIN_CHUNK ((size_t)64 * 1024)
#define ARENA_MAX_CHUNK ((size_t)4 * 1024 * 1024)

static inline size_t
align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* Make sure the current chunk has n free bytes (n already aligned). */
static int
arena_reserve(ddl_arena *a, size_t n)
{
    size_t size;
    ddl_chunk *c;

    if (a->left >= n) {
        return 0;
    }
    size = a->total < ARENA_MIN_CHUNK   ? ARENA_MIN_CHUNK
           : a->total > ARENA_MAX_CHUNK ? ARENA_MAX_CHUNK
                                        : a->total;
    if (size < n) {
        size = n;
    }
    if (size > SIZE_MAX - sizeof(ddl_chunk)) {
        return -1;
    }
    c = malloc(sizeof(ddl_chunk) + size);
    if (c == NULL) {
        return -1;
    }
    c->next = a->head;
    c->size = size;
    a->head = c;
    a->cur = (char *)(c + 1);
    a->left = size;
    a->total += size;
    return 0;
}

/* Take n bytes reserved earlier with arena_reserve (cannot fail). */
static inline void *
arena_take(ddl_arena *a, size_t n)
{
    char *p = a->cur;
    if (n == 0) {
        return p; /* may be NULL: no arithmetic on it */
    }
    n = align8(n);
    a->cur += n;
    a->left -= n;
    return p;
}

static void
arena_free(ddl_arena *a)
{
    ddl_chunk *c = a->head;
    while (c != NULL) {
        ddl_chunk *next = c->next;
        free(c);
        c = next;
    }
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------ */
/* Indexes and arrays                                                   */

#define SLOT_TAG(h) ((h)&0xffffffff00000000ULL)
/* ids must leave room for idx + 1 in 32 bits; keep well clear */
#define MAX_IDS 0x7fffffffu

/* Rebuild ix with capacity for `need` entries, reinserting records
 * [first, n) in id order. Every record type starts with its uint64_t
 * hash: */
_Static_assert(offsetof(ddl_sstr, hash) == 0, "hash first");
_Static_assert(offsetof(ddl_sfunc, hash) == 0, "hash first");
_Static_assert(offsetof(ddl_sloc, hash) == 0, "hash first");
_Static_assert(offsetof(ddl_ssample, hash) == 0, "hash first");
_Static_assert(sizeof(ddl_frame_cache) == 64 || sizeof(void *) != 8,
               "frame cache entries are one cache line on 64-bit");

static int
index_grow(ddl_index *ix, size_t need, const void *records, size_t stride,
           uint32_t first, uint32_t n)
{
    size_t cap = ix->slots ? ix->mask + 1 : 16;
    uint64_t *slots;
    size_t mask;
    uint32_t i;

    while (cap / 2 < need) {
        if (cap > SIZE_MAX / 2 / sizeof(uint64_t)) {
            return -1;
        }
        cap *= 2;
    }
    if (ix->slots != NULL && cap == ix->mask + 1) {
        return 0;
    }
    slots = calloc(cap, sizeof(uint64_t));
    if (slots == NULL) {
        return -1;
    }
    mask = cap - 1;
    for (i = first; i < n; i++) {
        uint64_t h;
        size_t pos;
        memcpy(&h, (const char *)records + (size_t)i * stride, sizeof h);
        pos = h & mask;
        while (slots[pos] != 0) {
            pos = (pos + 1) & mask;
        }
        slots[pos] = SLOT_TAG(h) | ((uint64_t)i + 1);
    }
    free(ix->slots);
    ix->slots = slots;
    ix->mask = mask;
    return 0;
}

/* Grow a record array to hold at least need elements. */
static int
array_reserve(void **arr, uint32_t *cap, size_t need, size_t elem)
{
    size_t newcap;
    void *p;

    if (need <= *cap) {
        return 0;
    }
    if (need > MAX_IDS) {
        return -1;
    }
    newcap = *cap ? (size_t)*cap * 2 : 16;
    if (newcap < need) {
        newcap = need;
    }
    if (newcap > MAX_IDS) {
        newcap = MAX_IDS;
    }
    p = realloc(*arr, newcap * elem);
    if (p == NULL) {
        return -1;
    }
    *arr = p;
    *cap = (uint32_t)newcap;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Table                                                                */

#define FRAME_CACHE_MIN 256
#define FRAME_CACHE_MAX 65536
#define STR_CACHE_MIN 64
#define STR_CACHE_MAX 8192

static ddl_snapshot *
table_new(int64_t start_ns)
{
    ddl_snapshot *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return NULL;
    }
    t->nstrs = 1; /* "" */
    t->start_ns = start_ns;
    t->end_ns = start_ns;
    return t;
}

static void
table_release(ddl_snapshot *t)
{
    free(t->strs);
    free(t->funcs);
    free(t->locs);
    free(t->samples);
    free(t->str_index.slots);
    free(t->func_index.slots);
    free(t->loc_index.slots);
    free(t->sample_index.slots);
    free(t->frame_cache);
    free(t->str_cache);
    arena_free(&t->arena);
}

/* Empty t in place (no allocation) and restart its interval. */
static void
table_reset(ddl_snapshot *t, int64_t start_ns)
{
    table_release(t);
    memset(t, 0, sizeof *t);
    t->nstrs = 1;
    t->start_ns = start_ns;
    t->end_ns = start_ns;
}

static size_t
pow2_clamp(size_t want, size_t lo, size_t hi)
{
    size_t n = lo;
    while (n < want && n < hi) {
        n *= 2;
    }
    return n;
}

/* Size the hot-path caches to the table (4 slots per location, 2 per
 * string, within bounds). On allocation failure the old cache (or none)
 * stays: it is only a shortcut. Resizing drops the entries. */
static void
caches_fit(ddl_snapshot *t)
{
    size_t want =
        pow2_clamp(4 * (size_t)t->nlocs, FRAME_CACHE_MIN, FRAME_CACHE_MAX);
    if (t->frame_cache == NULL || want > t->frame_cache_mask + 1) {
        /* one cache line per entry */
        ddl_frame_cache *c = aligned_alloc(64, want * sizeof *c);
        if (c != NULL) {
            memset(c, 0, want * sizeof *c);
            free(t->frame_cache);
            t->frame_cache = c;
            t->frame_cache_mask = want - 1;
            t->frame_cache_used = 0;
        }
    }
    want = pow2_clamp(2 * (size_t)t->nstrs, STR_CACHE_MIN, STR_CACHE_MAX);
    if (t->str_cache == NULL || want > t->str_cache_mask + 1) {
        ddl_str_cache *c = calloc(want, sizeof *c);
        if (c != NULL) {
            free(t->str_cache);
            t->str_cache = c;
            t->str_cache_mask = want - 1;
            t->str_cache_used = 0;
        }
    }
}

/* Equality of n bytes, inlined: the strings compared on the hot path are
 * short (names, paths) and a libc call per string costs more than this. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int
bytes_eq(const char *x, const char *y, size_t n)
{
    const unsigned char *a = (const unsigned char *)x;
    const unsigned char *b = (const unsigned char *)y;

#if defined(__SSE2__) && !defined(DDL_NO_SIMD)
    if (n >= 16) {
        /* the differences of every 16-byte block (the last one
         * overlapping) are or-ed together and tested once: the strings
         * compared here are nearly always equal */
        __m128i acc = _mm_setzero_si128();
        size_t i;
        for (i = 0; i + 16 < n; i += 16) {
            __m128i va = _mm_loadu_si128((const void *)(a + i));
            __m128i vb = _mm_loadu_si128((const void *)(b + i));
            acc = _mm_or_si128(acc, _mm_xor_si128(va, vb));
        }
        acc = _mm_or_si128(
            acc, _mm_xor_si128(_mm_loadu_si128((const void *)(a + n - 16)),
                               _mm_loadu_si128((const void *)(b + n - 16))));
        return _mm_movemask_epi8(_mm_cmpeq_epi8(acc, _mm_setzero_si128())) ==
               0xffff;
    }
#endif
    if (n >= 8) {
        size_t i;
        for (i = 0; i + 16 <= n; i += 16) {
            if (((load64(a + i) ^ load64(b + i)) |
                 (load64(a + i + 8) ^ load64(b + i + 8))) != 0) {
                return 0;
            }
        }
        if (i == n) {
            return 1;
        }
        /* 1..15 bytes left: compare the last 16 (or 8) bytes overlapped */
        if (n >= 16) {
            return ((load64(a + n - 16) ^ load64(b + n - 16)) |
                    (load64(a + n - 8) ^ load64(b + n - 8))) == 0;
        }
        return ((load64(a) ^ load64(b)) |
                (load64(a + n - 8) ^ load64(b + n - 8))) == 0;
    }
    if (n >= 4) {
        return ((load32(a) ^ load32(b)) |
                (load32(a + n - 4) ^ load32(b + n - 4))) == 0;
    }
    while (n > 0) {
        n--;
        if (a[n] != b[n]) {
            return 0;
        }
    }
    return 1;
}

/* The stored string at index i compared with in (index 0 is ""). */
static inline int
sid_eq(const ddl_snapshot *t, uint32_t i, const ddl_str *in)
{
    if (i == 0) {
        return in->len == 0;
    }
    return t->strs[i].len == in->len &&
           bytes_eq(t->strs[i].ptr, in->ptr, in->len);
}

/* Find a string by content; *pos_out receives the free slot where it would
 * be inserted. Returns its index or -1. */
static int64_t
str_find(const ddl_snapshot *t, const char *ptr, size_t len, uint64_t h,
         size_t *pos_out)
{
    const uint64_t *slots = t->str_index.slots;
    size_t mask = t->str_index.mask;
    size_t pos;

    if (len == 0) {
        return 0;
    }
    if (slots == NULL) {
        return -1;
    }
    for (pos = h & mask;; pos = (pos + 1) & mask) {
        uint64_t sl = slots[pos];
        if (sl == 0) {
            if (pos_out != NULL) {
                *pos_out = pos;
            }
            return -1;
        }
        if (SLOT_TAG(sl) == SLOT_TAG(h)) {
            const ddl_sstr *s = &t->strs[(uint32_t)sl - 1];
            if (s->hash == h && s->len == len && bytes_eq(s->ptr, ptr, len)) {
                return (uint32_t)sl - 1;
            }
        }
    }
}

int64_t
ddl__snapshot_find_str(const ddl_snapshot *s, const char *ptr, size_t len)
{
    return str_find(s, ptr, len, hash_bytes(ptr, len, SEED_STR), NULL);
}

static int64_t
func_find(const ddl_snapshot *t, uint32_t name, uint32_t filename, uint64_t h,
          size_t *pos_out)
{
    const uint64_t *slots = t->func_index.slots;
    size_t mask = t->func_index.mask;
    size_t pos;

    if (slots == NULL) {
        return -1;
    }
    for (pos = h & mask;; pos = (pos + 1) & mask) {
        uint64_t sl = slots[pos];
        if (sl == 0) {
            if (pos_out != NULL) {
                *pos_out = pos;
            }
            return -1;
        }
        if (SLOT_TAG(sl) == SLOT_TAG(h)) {
            const ddl_sfunc *f = &t->funcs[(uint32_t)sl - 1];
            if (f->name == name && f->filename == filename) {
                return (uint32_t)sl - 1;
            }
        }
    }
}

static int64_t
loc_find(const ddl_snapshot *t, uint32_t func, int64_t line, uint64_t h,
         size_t *pos_out)
{
    const uint64_t *slots = t->loc_index.slots;
    size_t mask = t->loc_index.mask;
    size_t pos;

    if (slots == NULL) {
        return -1;
    }
    for (pos = h & mask;; pos = (pos + 1) & mask) {
        uint64_t sl = slots[pos];
        if (sl == 0) {
            if (pos_out != NULL) {
                *pos_out = pos;
            }
            return -1;
        }
        if (SLOT_TAG(sl) == SLOT_TAG(h)) {
            const ddl_sloc *l = &t->locs[(uint32_t)sl - 1];
            if (l->func == func && l->line == line) {
                return (uint32_t)sl - 1;
            }
        }
    }
}

/* The hot-path caches are open-addressing tables keyed by the caller's
 * pointers (and line), never holding two entries for the same key. When
 * one would pass half full it is simply emptied: the working set of a
 * program with stable string buffers is about its number of locations,
 * which the cache is sized for (caches_fit), while callers with unstable
 * buffers would otherwise grow it without bound. */

/* A hot-path cache (mask + 1 entries of entry_size bytes, *used of them
 * taken) is about to be written at a slot that is free (is_new) or already
 * holds the key. A new entry that would pass half full empties the cache
 * first and counts itself: then 1 is returned and the caller writes at its
 * key's own slot of the empty cache. */
static inline int
cache_emptied(void *cache, size_t *used, size_t mask, size_t entry_size,
              int is_new)
{
    if (is_new && ++*used > (mask + 1) / 2) {
        memset(cache, 0, (mask + 1) * entry_size);
        *used = 1;
        return 1;
    }
    return 0;
}

/* resolve_str's miss: the string index, then a cache entry for next time
 * (e: the free or matching slot the probe ended on, NULL without cache). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static int64_t
resolve_str_slow(ddl_snapshot *t, const ddl_str *in, ddl_str_cache *e)
{
    size_t mask = t->str_cache_mask;
    int64_t i = str_find(t, in->ptr, in->len, hash_str(in), NULL);

    if (i > 0 && e != NULL) {
        if (cache_emptied(t->str_cache, &t->str_cache_used, mask, sizeof *e,
                          e->str1 == 0)) {
            e = &t->str_cache[str_slot(in, mask)];
        }
        e->ptr = in->ptr;
        e->str1 = (uint32_t)i + 1;
    }
    return i;
}

/* Resolve a string of the caller to its index without interning: the
 * cache first (validated by content), then the string index. -1 when the
 * string is not interned. */
static inline int64_t
resolve_str(ddl_snapshot *t, const ddl_str *in)
{
    ddl_str_cache *e = NULL;
    size_t pos, mask = t->str_cache_mask;

    if (in->len == 0) {
        return 0;
    }
    if (t->str_cache != NULL) {
        for (pos = str_slot(in, mask);; pos = (pos + 1) & mask) {
            e = &t->str_cache[pos];
            if (e->str1 == 0 || e->ptr == in->ptr) {
                break;
            }
        }
        if (e->str1 != 0 && sid_eq(t, e->str1 - 1, in)) {
            return e->str1 - 1;
        }
    }
    return resolve_str_slow(t, in, e);
}

/* resolve_frame's miss: the indexes, then a cache entry for next time (e:
 * the free or matching slot the probe ended on, NULL without cache). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static int64_t
resolve_frame_slow(ddl_snapshot *t, const ddl_frame *f, ddl_frame_cache *e)
{
    size_t mask = t->frame_cache_mask;
    int64_t name, file, fn, loc;

    name = str_find(t, f->name.ptr, f->name.len, hash_str(&f->name), NULL);
    if (name < 0) {
        return -1;
    }
    file = str_find(t, f->filename.ptr, f->filename.len,
                    hash_str(&f->filename), NULL);
    if (file < 0) {
        return -1;
    }
    fn = func_find(t, (uint32_t)name, (uint32_t)file,
                   hash_func((uint32_t)name, (uint32_t)file), NULL);
    if (fn < 0) {
        return -1;
    }
    loc = loc_find(t, (uint32_t)fn, f->line, hash_loc((uint32_t)fn, f->line),
                   NULL);
    if (loc >= 0 && e != NULL && f->name.len <= UINT32_MAX &&
        f->filename.len <= UINT32_MAX) {
        if (cache_emptied(t->frame_cache, &t->frame_cache_used, mask,
                          sizeof *e, e->loc1 == 0)) {
            e = &t->frame_cache[frame_slot(f, mask)];
        }
        e->name_ptr = f->name.ptr;
        e->file_ptr = f->filename.ptr;
        e->line = f->line;
        e->name_copy = name == 0 ? "" : t->strs[name].ptr;
        e->name_len = (uint32_t)f->name.len;
        e->file_copy = file == 0 ? "" : t->strs[file].ptr;
        e->file_len = (uint32_t)f->filename.len;
        e->key = f->key;
        e->loc1 = (uint32_t)loc + 1;
    }
    return loc;
}

/* Resolve a frame to its location index without interning. -1 when its
 * strings, function or location are not interned. */
static inline int64_t
resolve_frame(ddl_snapshot *t, const ddl_frame *f)
{
    ddl_frame_cache *e = NULL;
    size_t pos, mask = t->frame_cache_mask;

    if (t->frame_cache != NULL) {
        for (pos = frame_slot(f, mask);; pos = (pos + 1) & mask) {
            e = &t->frame_cache[pos];
            if (e->loc1 == 0 ||
                (e->name_ptr == f->name.ptr &&
                 e->file_ptr == f->filename.ptr && e->line == f->line)) {
                break;
            }
        }
        if (e->loc1 != 0 &&
            ((f->key != 0 && e->key == f->key) ||
             (e->name_len == f->name.len && e->file_len == f->filename.len &&
              bytes_eq(e->name_copy, f->name.ptr, f->name.len) &&
              bytes_eq(e->file_copy, f->filename.ptr, f->filename.len)))) {
            return e->loc1 - 1;
        }
    }
    return resolve_frame_slow(t, f, e);
}

/* Resolve the whole key to ids. 0 when every part is interned, -1 when
 * some part is not (then the key is certainly new). */
static int
resolve_key(ddl_snapshot *t, const ddl_frame *frames, size_t nframes,
            const ddl_label *labels, size_t nlabels, uint32_t *locs,
            ddl_slabel *lbl)
{
    size_t i;

    if (t->nsamples == 0) {
        return -1;
    }
    for (i = 0; i < nframes; i++) {
        int64_t loc = resolve_frame(t, &frames[i]);
        if (loc < 0) {
            return -1;
        }
        locs[i] = (uint32_t)loc;
    }
    for (i = 0; i < nlabels; i++) {
        int64_t k = resolve_str(t, &labels[i].key);
        if (k < 0) {
            return -1;
        }
        lbl[i].key = (uint32_t)k;
        if (labels[i].str.ptr == NULL) {
            lbl[i].str = DDL_NUMERIC_LABEL;
            lbl[i].num = labels[i].num;
        }
        else {
            int64_t v = resolve_str(t, &labels[i].str);
            if (v < 0) {
                return -1;
            }
            lbl[i].str = (uint32_t)v;
            lbl[i].num = 0;
        }
    }
    return 0;
}

/* Index of the sample with this resolved key, or -1. */
static int64_t
sample_find(const ddl_snapshot *t, uint64_t h, const uint32_t *locs,
            size_t nframes, const ddl_slabel *lbl, size_t nlabels)
{
    const uint64_t *slots = t->sample_index.slots;
    size_t mask = t->sample_index.mask;
    size_t pos, i;

    if (slots == NULL) {
        return -1;
    }
    for (pos = h & mask;; pos = (pos + 1) & mask) {
        uint64_t sl = slots[pos];
        const ddl_ssample *s;
        if (sl == 0) {
            return -1;
        }
        if (SLOT_TAG(sl) != SLOT_TAG(h)) {
            continue;
        }
        s = &t->samples[(uint32_t)sl - 1];
        if (s->hash != h || s->nframes != nframes || s->nlabels != nlabels) {
            continue;
        }
        for (i = 0; i < nframes && s->locs[i] == locs[i]; i++) {
        }
        if (i < nframes) {
            continue;
        }
        for (i = 0; i < nlabels; i++) {
            if (s->labels[i].key != lbl[i].key ||
                s->labels[i].str != lbl[i].str ||
                s->labels[i].num != lbl[i].num) {
                break;
            }
        }
        if (i == nlabels) {
            return (uint32_t)sl - 1;
        }
    }
}

/* Intern (capacity reserved by the caller: cannot fail). */
static uint32_t
intern_str(ddl_snapshot *t, const ddl_str *in, uint64_t h)
{
    size_t pos = 0;
    int64_t found = str_find(t, in->ptr, in->len, h, &pos);
    uint32_t i;
    char *copy;

    if (found >= 0) {
        return (uint32_t)found;
    }
    copy = arena_take(&t->arena, in->len);
    memcpy(copy, in->ptr, in->len);
    i = t->nstrs++;
    t->strs[i].ptr = copy;
    t->strs[i].len = in->len;
    t->strs[i].hash = h;
    t->str_index.slots[pos] = SLOT_TAG(h) | ((uint64_t)i + 1);
    return i;
}

static uint32_t
intern_func(ddl_snapshot *t, uint32_t name, uint32_t filename)
{
    uint64_t h = hash_func(name, filename);
    size_t pos = 0;
    int64_t found = func_find(t, name, filename, h, &pos);
    uint32_t i;

    if (found >= 0) {
        return (uint32_t)found;
    }
    i = t->nfuncs++;
    t->funcs[i].hash = h;
    t->funcs[i].name = name;
    t->funcs[i].filename = filename;
    t->func_index.slots[pos] = SLOT_TAG(h) | ((uint64_t)i + 1);
    return i;
}

static uint32_t
intern_loc(ddl_snapshot *t, uint32_t func, int64_t line)
{
    uint64_t h = hash_loc(func, line);
    size_t pos = 0;
    int64_t found = loc_find(t, func, line, h, &pos);
    uint32_t i;

    if (found >= 0) {
        return (uint32_t)found;
    }
    i = t->nlocs++;
    t->locs[i].hash = h;
    t->locs[i].line = line;
    t->locs[i].func = func;
    t->loc_index.slots[pos] = SLOT_TAG(h) | ((uint64_t)i + 1);
    return i;
}

/* String j of a key: frames' (name, filename) pairs then labels' (key, str)
 * pairs; NULL for the value of a numeric label. */
static inline const ddl_str *
key_string(const ddl_frame *frames, size_t nframes, const ddl_label *labels,
           size_t j)
{
    if (j < 2 * nframes) {
        return (j & 1) ? &frames[j / 2].filename : &frames[j / 2].name;
    }
    j -= 2 * nframes;
    if (j & 1) {
        return labels[j / 2].str.ptr ? &labels[j / 2].str : NULL;
    }
    return &labels[j / 2].key;
}

/* Insert a new key (mutex held, cap checked). sh: scratch for
 * 2 * (nframes + nlabels) hashes. 0 ok, -1 allocation failure with
 * nothing interned. */
static int
sample_insert(ddl_snapshot *t, const ddl_frame *frames, size_t nframes,
              const ddl_label *labels, size_t nlabels,
              const int64_t values[DDL_NVALUES], uint64_t *sh)
{
    size_t nkeystr = 2 * nframes + 2 * nlabels;
    size_t nnew = 0, bytes = 0, j, k, pos;
    ddl_ssample *s;
    uint32_t i;

    if (nframes > MAX_IDS || nlabels > MAX_IDS) {
        return -1;
    }
    /* Phase 1: count the distinct strings not interned yet and their
     * bytes, then reserve everything the insertion may need. */
    for (j = 0; j < nkeystr; j++) {
        const ddl_str *sj = key_string(frames, nframes, labels, j);
        int dup = 0;
        sh[j] = sj != NULL ? hash_str(sj) : 0;
        if (sj == NULL || sj->len == 0 ||
            str_find(t, sj->ptr, sj->len, sh[j], NULL) >= 0) {
            continue;
        }
        for (k = 0; k < j && !dup; k++) {
            const ddl_str *sk;
            if (sh[k] != sh[j]) {
                continue;
            }
            sk = key_string(frames, nframes, labels, k);
            dup = sk != NULL && sk->len == sj->len &&
                  bytes_eq(sk->ptr, sj->ptr, sj->len);
        }
        if (!dup) {
            nnew++;
            if (bytes > SIZE_MAX / 2 - align8(sj->len)) {
                return -1;
            }
            bytes += align8(sj->len);
        }
    }
    if (nframes > (SIZE_MAX / 2 - bytes) / 16 ||
        nlabels > (SIZE_MAX / 2 - bytes) / 64) {
        return -1;
    }
    bytes += align8(nframes * sizeof(uint32_t)) +
             align8(nlabels * sizeof(ddl_slabel));

    if ((size_t)t->nstrs + nnew > MAX_IDS ||
        (size_t)t->nfuncs + nframes > MAX_IDS ||
        (size_t)t->nlocs + nframes > MAX_IDS ||
        (size_t)t->nsamples + 1 > MAX_IDS) {
        return -1;
    }
    if (array_reserve((void **)&t->strs, &t->cap_strs, t->nstrs + nnew,
                      sizeof(ddl_sstr)) < 0 ||
        array_reserve((void **)&t->funcs, &t->cap_funcs, t->nfuncs + nframes,
                      sizeof(ddl_sfunc)) < 0 ||
        array_reserve((void **)&t->locs, &t->cap_locs, t->nlocs + nframes,
                      sizeof(ddl_sloc)) < 0 ||
        array_reserve((void **)&t->samples, &t->cap_samples,
                      (size_t)t->nsamples + 1, sizeof(ddl_ssample)) < 0) {
        return -1;
    }
    /* the "" entry at index 0 (never in the index) */
    t->strs[0].ptr = "";
    t->strs[0].len = 0;
    t->strs[0].hash = 0;
    if (index_grow(&t->str_index, t->nstrs + nnew, t->strs, sizeof(ddl_sstr),
                   1, t->nstrs) < 0 ||
        index_grow(&t->func_index, (size_t)t->nfuncs + nframes, t->funcs,
                   sizeof(ddl_sfunc), 0, t->nfuncs) < 0 ||
        index_grow(&t->loc_index, (size_t)t->nlocs + nframes, t->locs,
                   sizeof(ddl_sloc), 0, t->nlocs) < 0 ||
        index_grow(&t->sample_index, (size_t)t->nsamples + 1, t->samples,
                   sizeof(ddl_ssample), 0, t->nsamples) < 0 ||
        arena_reserve(&t->arena, bytes) < 0) {
        return -1;
    }

    /* Phase 2: commit; nothing below can fail. */
    i = t->nsamples++;
    s = &t->samples[i];
    memcpy(s->values, values, sizeof s->values);
    s->nframes = (uint32_t)nframes;
    s->nlabels = (uint32_t)nlabels;
    s->locs = arena_take(&t->arena, nframes * sizeof(uint32_t));
    s->labels = arena_take(&t->arena, nlabels * sizeof(ddl_slabel));
    for (j = 0; j < nframes; j++) {
        uint32_t name = intern_str(t, &frames[j].name, sh[2 * j]);
        uint32_t file = intern_str(t, &frames[j].filename, sh[2 * j + 1]);
        uint32_t fn = intern_func(t, name, file);
        s->locs[j] = intern_loc(t, fn, frames[j].line);
    }
    sh += 2 * nframes;
    for (j = 0; j < nlabels; j++) {
        ddl_slabel *l = &s->labels[j];
        l->key = intern_str(t, &labels[j].key, sh[2 * j]);
        if (labels[j].str.ptr == NULL) {
            l->str = DDL_NUMERIC_LABEL;
            l->num = labels[j].num;
        }
        else {
            l->str = intern_str(t, &labels[j].str, sh[2 * j + 1]);
            l->num = 0;
        }
    }
    s->hash = hash_ids(s->locs, nframes, s->labels, nlabels);
    {
        uint64_t *slots = t->sample_index.slots;
        size_t mask = t->sample_index.mask;
        for (pos = s->hash & mask; slots[pos] != 0; pos = (pos + 1) & mask) {
        }
        slots[pos] = SLOT_TAG(s->hash) | ((uint64_t)i + 1);
    }
    t->total_frames += nframes;
    t->total_labels += nlabels;
    caches_fit(t);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */

ddl_profile *
ddl_profile_new(size_t max_samples, int64_t start_ns)
{
    ddl_profile *p;

    if (max_samples == 0) {
        errno = EINVAL;
        return NULL;
    }
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->table = table_new(start_ns);
    if (p->table == NULL) {
        goto error;
    }
    if (pthread_mutex_init(&p->mutex, NULL) != 0) {
        goto error;
    }
    p->max_samples = max_samples > MAX_IDS - 1 ? MAX_IDS - 1 : max_samples;
    p->epoch = 1;
    return p;

error:
    ddl_snapshot_free(p->table);
    free(p);
    return NULL;
}

void
ddl_profile_free(ddl_profile *p)
{
    if (p == NULL) {
        return;
    }
    pthread_mutex_destroy(&p->mutex);
    ddl_snapshot_free(p->table);
    free(p);
}

/* keys up to this many frames / labels use stack scratch space */
#define STACK_FRAMES 128
#define STACK_LABELS 32

/* Add values to a sample's (wrapping, never undefined). */
static inline void
values_add(int64_t *v, const int64_t values[DDL_NVALUES])
{
    for (size_t j = 0; j < DDL_NVALUES; j++) {
        v[j] = (int64_t)((uint64_t)v[j] + (uint64_t)values[j]);
    }
}

/* The next table's epoch (0 is skipped: no ticket is 0). */
static void
next_epoch(ddl_profile *p)
{
    if (++p->epoch == 0) {
        p->epoch = 1;
    }
}

int
ddl_profile_add(ddl_profile *p, const ddl_frame *frames, size_t nframes,
                const ddl_label *labels, size_t nlabels,
                const int64_t values[DDL_NVALUES])
{
    uint64_t ticket;
    return ddl_profile_add_ex(p, frames, nframes, labels, nlabels, values,
                              &ticket);
}

int
ddl_profile_add_ticket(ddl_profile *p, uint64_t ticket,
                       const int64_t values[DDL_NVALUES])
{
    uint64_t index1 = ticket & 0xffffffffu;
    int rc = 1;

    pthread_mutex_lock(&p->mutex);
    ddl_snapshot *t = p->table;
    if (index1 != 0 && (uint32_t)(ticket >> 32) == p->epoch &&
        index1 <= t->nsamples) {
        values_add(t->samples[index1 - 1].values, values);
        p->samples_added++;
        rc = 0;
    }
    pthread_mutex_unlock(&p->mutex);
    return rc;
}

int
ddl_profile_add_ex(ddl_profile *p, const ddl_frame *frames, size_t nframes,
                   const ddl_label *labels, size_t nlabels,
                   const int64_t values[DDL_NVALUES], uint64_t *ticket)
{
    uint32_t stack_locs[STACK_FRAMES];
    ddl_slabel stack_lbl[STACK_LABELS];
    uint64_t stack_sh[2 * (STACK_FRAMES + STACK_LABELS)];
    uint32_t *locs = stack_locs;
    ddl_slabel *lbl = stack_lbl;
    uint64_t *sh = stack_sh;
    void *heap = NULL;
    ddl_snapshot *t;
    int64_t found = -1;
    int rc;

    if (nframes > STACK_FRAMES || nlabels > STACK_LABELS) {
        /* one block: hashes, then labels, then location ids */
        size_t n = nframes + nlabels;
        if (nframes < SIZE_MAX / 64 && nlabels < SIZE_MAX / 64) {
            heap = malloc(2 * n * sizeof(uint64_t) +
                          nlabels * sizeof(ddl_slabel) +
                          nframes * sizeof(uint32_t));
        }
        if (heap == NULL) {
            pthread_mutex_lock(&p->mutex);
            p->table->dropped++;
            p->samples_dropped++;
            pthread_mutex_unlock(&p->mutex);
            return -1;
        }
        sh = heap;
        lbl = (ddl_slabel *)(sh + 2 * n);
        locs = (uint32_t *)(lbl + nlabels);
    }

    pthread_mutex_lock(&p->mutex);
    t = p->table;
    if (resolve_key(t, frames, nframes, labels, nlabels, locs, lbl) == 0) {
        found = sample_find(t, hash_ids(locs, nframes, lbl, nlabels), locs,
                            nframes, lbl, nlabels);
    }
    if (found >= 0) {
        values_add(t->samples[found].values, values);
        rc = 0;
    }
    else if (t->nsamples >= p->max_samples) {
        rc = 1;
    }
    else {
        rc = sample_insert(t, frames, nframes, labels, nlabels, values, sh);
        found = (int64_t)t->nsamples - 1; /* inserted last (when rc == 0) */
    }
    *ticket = 0;
    if (rc == 0) {
        p->samples_added++;
        *ticket = (uint64_t)p->epoch << 32 | (uint64_t)(found + 1);
    }
    else {
        t->dropped++;
        p->samples_dropped++;
    }
    pthread_mutex_unlock(&p->mutex);

    free(heap);
    return rc;
}

ddl_snapshot *
ddl_profile_swap(ddl_profile *p, int64_t now_ns)
{
    ddl_snapshot *fresh = table_new(now_ns);
    ddl_snapshot *old;

    if (fresh == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&p->mutex);
    old = p->table;
    p->table = fresh;
    p->snapshots++;
    next_epoch(p);
    pthread_mutex_unlock(&p->mutex);
    old->end_ns = now_ns;
    /* the hot-path caches are of no use to a snapshot */
    free(old->frame_cache);
    free(old->str_cache);
    old->frame_cache = NULL;
    old->str_cache = NULL;
    old->frame_cache_mask = old->str_cache_mask = 0;
    old->frame_cache_used = old->str_cache_used = 0;
    return old;
}

void
ddl_profile_clear(ddl_profile *p, int64_t now_ns)
{
    ddl_snapshot *fresh = table_new(now_ns);
    ddl_snapshot *old;

    pthread_mutex_lock(&p->mutex);
    if (fresh == NULL) {
        /* out of memory: empty the live table in place (rare, slow) */
        table_reset(p->table, now_ns);
        next_epoch(p);
        pthread_mutex_unlock(&p->mutex);
        return;
    }
    old = p->table;
    p->table = fresh;
    next_epoch(p);
    pthread_mutex_unlock(&p->mutex);
    ddl_snapshot_free(old);
}

void
ddl_profile_get_stats(ddl_profile *p, ddl_profile_stats *out)
{
    pthread_mutex_lock(&p->mutex);
    out->samples_added = p->samples_added;
    out->samples_dropped = p->samples_dropped;
    out->snapshots = p->snapshots;
    out->current_keys = p->table->nsamples;
    pthread_mutex_unlock(&p->mutex);
}

void
ddl_profile_fork_prepare(ddl_profile *p)
{
    pthread_mutex_lock(&p->mutex);
}

void
ddl_profile_fork_parent(ddl_profile *p)
{
    pthread_mutex_unlock(&p->mutex);
}

void
ddl_profile_fork_child(ddl_profile *p, int64_t now_ns)
{
    /* only the forking thread exists; the mutex copied from the parent is
     * held by it (prepare): start over with a fresh one */
    pthread_mutex_init(&p->mutex, NULL);
    table_reset(p->table, now_ns);
    next_epoch(p);
}

int64_t
ddl_snapshot_start_ns(const ddl_snapshot *s)
{
    return s->start_ns;
}

int64_t
ddl_snapshot_end_ns(const ddl_snapshot *s)
{
    return s->end_ns;
}

size_t
ddl_snapshot_nsamples(const ddl_snapshot *s)
{
    return s->nsamples;
}

uint64_t
ddl_snapshot_dropped(const ddl_snapshot *s)
{
    return s->dropped;
}

void
ddl_snapshot_free(ddl_snapshot *s)
{
    if (s == NULL) {
        return;
    }
    table_release(s);
    free(s);
}

void
ddl__snapshot_frame(const ddl_snapshot *s, size_t si, size_t i, ddl_frame *out)
{
    const ddl_sloc *loc = &s->locs[s->samples[si].locs[i]];
    const ddl_sfunc *fn = &s->funcs[loc->func];
    out->name = ddl__snapshot_str(s, fn->name);
    out->filename = ddl__snapshot_str(s, fn->filename);
    out->line = loc->line;
    out->key = 0;
}

void
ddl__snapshot_label(const ddl_snapshot *s, size_t si, size_t i, ddl_label *out)
{
    const ddl_slabel *l = &s->samples[si].labels[i];
    out->key = ddl__snapshot_str(s, l->key);
    if (l->str == DDL_NUMERIC_LABEL) {
        out->str.ptr = NULL;
        out->str.len = 0;
        out->num = l->num;
    }
    else {
        out->str = ddl__snapshot_str(s, l->str);
        out->num = 0;
    }
}

size_t
ddl__snapshot_arena_bytes(const ddl_snapshot *s)
{
    return s->arena.total;
}

/* ------------------------------------------------------------------ */
/* Clocks                                                               */

int64_t
ddl_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t
ddl_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
