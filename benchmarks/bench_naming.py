"""Cost of naming locks (prints ns; asserts nothing).

    python benchmarks/bench_naming.py [--quick]

0. Lock()/RLock() creation and free at the default rate, against native
   (target <= 1.3x on 3.11).

1. First-sample name search in a frame with 30 locals (target <= 5 us).
   Every measured function is a fresh code object compiled under its own
   file name (a new creation site and a new acquiring code), so the name
   cache misses and the search runs; calling the same functions again makes
   fresh locks at the same sites, so the cache hits. Timed around
   ``ddlock._ddlock.lock_name(lock)``, which resolves the label in the
   calling frame exactly as the first sampled event does, minus the timer
   overhead (the same pair of clock reads around a no-op C call). Also
   timed end to end: the first sampled acquire of a lock (stack + search +
   record) against the next one (stack + record).

2. Per sampled event at 100% capture, once names are resolved: a lock whose
   label carries a variable name against an unnamed one ("<file>:<line>")
   and against a profiler run with name resolution off, all through the
   same acquire/release loop. A resolved label is a field read on the lock,
   so the three should match within noise.
"""

import gc
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import ddlock  # noqa: E402
from ddlock import _ddlock  # noqa: E402

QUICK = "--quick" in sys.argv


class Holder:
    """An object with a dozen attributes, one of them the lock."""

    def __init__(self, lock):
        for i in range(11):
            setattr(self, "attr_%d" % i, i)
        self.member_lock = lock


# 30 locals of the usual kinds; the lock is bound (or reachable) last.
_LOCALS = "\n".join(
    "    v%02d = %s" % (i, ["%d" % i, "'s%d'" % i, "[%d]" % i, "{'k': %d}" % i,
                           "(%d, %d)" % (i, i), "Holder(None)", "None", "%d.5" % i][i % 8])
    for i in range(28))

_TEMPLATES = {
    # found at level 0: a local variable
    "local variable": "    lk = Lock()\n    t0 = perf()\n    lock_name(lk)\n    t1 = perf()\n",
    # found at level 1: an attribute of a local object (self.member_lock)
    "attribute (self.x)": "    lk = Lock()\n    self_ = Holder(lk)\n    lk = None\n"
                          "    t0 = perf()\n    lock_name(self_.member_lock)\n    t1 = perf()\n",
    # an item of a container a local holds (box[0]): a name per lock, never
    # cached per site
    "container item": "    box = [Lock()]\n    extra = None\n"
                      "    t0 = perf()\n    lock_name(box[0])\n    t1 = perf()\n",
    # three attribute levels down (a.b.c.member_lock)
    "three levels": "    a = Holder(None)\n    a.b = Holder(None)\n    a.b.c = Holder(Lock())\n"
                    "    t0 = perf()\n    lock_name(a.b.c.member_lock)\n    t1 = perf()\n",
    # never found: everything is searched (variables, containers, levels 1-3)
    "not found (nested)": "    box = [[Lock()]]\n    extra = None\n"
                          "    t0 = perf()\n    lock_name(box[0][0])\n    t1 = perf()\n",
}
PER_LOCK = {"container item"}


def _source(body):
    return "def f(lock_name, perf, Lock, Holder):\n%s\n%s    return t1 - t0\n" % (_LOCALS, body)


def _compile_batch(body, count, tag):
    funcs = []
    for i in range(count):
        ns = {}
        exec(compile(_source(body), "bench_%s_%d.py" % (tag, i), "exec"), ns)
        funcs.append(ns["f"])
    return funcs


def _timer_overhead(rounds=20000):
    perf = time.perf_counter_ns
    noop = id
    x = object()
    samples = []
    for _ in range(rounds):
        t0 = perf()
        noop(x)
        t1 = perf()
        samples.append(t1 - t0)
    return statistics.median(samples)


def bench_search():
    n = 300 if QUICK else 2000
    print("1. name resolution in a frame with 30 locals (%d fresh sites each)" % n)
    overhead = _timer_overhead()
    print("   timer overhead (subtracted): %.0f ns" % overhead)
    ddlock.start(capture_pct=100, upload_enabled=False)
    Lock = threading.Lock  # the patched factory
    perf = time.perf_counter_ns
    try:
        print("   %-22s %12s %12s %12s" % ("where the lock is", "miss median", "miss p90", "hit median"))
        for i, (what, body) in enumerate(_TEMPLATES.items()):
            funcs = _compile_batch(body, n, i)
            gc.collect()
            before = ddlock.stats()
            miss = [f(_ddlock.lock_name, perf, Lock, Holder) - overhead for f in funcs]
            mid = ddlock.stats()
            hit = [f(_ddlock.lock_name, perf, Lock, Holder) - overhead for f in funcs]
            after = ddlock.stats()
            assert mid["names_cache_hits"] == before["names_cache_hits"], "cache hit on a fresh site"
            hits = 0 if what in PER_LOCK else n
            assert after["names_cache_hits"] - mid["names_cache_hits"] == hits, "cache"
            miss.sort()
            print("   %-22s %9.0f ns %9.0f ns %9.0f ns" % (
                what, statistics.median(miss), miss[int(len(miss) * 0.9)], statistics.median(hit)))
    finally:
        ddlock.stop(flush=False)


_FIRST_SRC = """
def f(Lock, perf):
%s
    lk = Lock()
    t0 = perf()
    lk.acquire()          # first sampled event: the search runs
    t1 = perf()
    lk.release()
    t2 = perf()
    lk.acquire()          # name already on the lock
    t3 = perf()
    lk.release()
    return t1 - t0, t3 - t2
"""


def bench_first_acquire():
    n = 300 if QUICK else 2000
    ddlock.start(capture_pct=100, upload_enabled=False)
    Lock = threading.Lock
    perf = time.perf_counter_ns
    first, later = [], []
    try:
        for i in range(n):
            ns = {"Holder": Holder}
            exec(compile(_FIRST_SRC % _LOCALS, "bench_first_%d.py" % i, "exec"), ns)
            a, b = ns["f"](Lock, perf)
            first.append(a)
            later.append(b)
    finally:
        ddlock.stop(flush=False)
    print("   sampled acquire, end to end (local variable, 30 locals): first %.0f ns, "
          "next %.0f ns -> search + caching %.0f ns"
          % (statistics.median(first), statistics.median(later),
             statistics.median(first) - statistics.median(later)))


def _loop(lock, n):
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter_ns() - t0) / (2 * n)


def _resolved_locks():
    named_lock = threading.Lock()
    named_lock.acquire()  # first sampled event: resolves "...:named_lock"
    named_lock.release()
    box = [threading.Lock()]
    box[0].acquire()  # resolves to "<file>:<line>" (nothing names it)
    box[0].release()
    return named_lock, box[0]


def bench_events():
    n = 10000 if QUICK else 50000
    reps = 5 if QUICK else 15
    print("2. per sampled event at 100%% capture, label already resolved (%d x %d events each)"
          % (reps, 2 * n))
    results = {"named": [], "unnamed": [], "names off": [], "0% capture": [], "native": []}
    native = ddlock._ORIGINAL_LOCK()
    labels = {}
    # Interleaved, so that drift on a shared machine hits every variant alike.
    ddlock.start(capture_pct=100, upload_enabled=False)
    try:
        named, unnamed = _resolved_locks()
        labels["named"], labels["unnamed"] = _ddlock.lock_name(named), _ddlock.lock_name(unnamed)
        gc.disable()
        for _ in range(reps):
            results["named"].append(_loop(named, n))
            results["unnamed"].append(_loop(unnamed, n))
        gc.enable()
    finally:
        ddlock.stop(flush=False)
    ddlock.start(capture_pct=100, upload_enabled=False, resolve_names=False)
    try:
        off, _ = _resolved_locks()
        labels["names off"] = _ddlock.lock_name(off)
        gc.disable()
        for _ in range(reps):
            results["names off"].append(_loop(off, n))
            results["named"].append(_loop(named, n))  # resolved in the first run
        gc.enable()
    finally:
        ddlock.stop(flush=False)
    ddlock.start(capture_pct=0, upload_enabled=False)
    try:
        unsampled = threading.Lock()
        for _ in range(reps):
            results["0% capture"].append(_loop(unsampled, n))
            results["native"].append(_loop(native, n))
    finally:
        ddlock.stop(flush=False)
    print("   labels: %s" % ", ".join("%s %r" % kv for kv in labels.items()))
    for what, values in results.items():
        print("   %-12s min %7.1f ns  median %7.1f ns per event" % (
            what, min(values), statistics.median(values)))
    print("   named - unnamed: %+.1f ns (min), %+.1f ns (median); named - names off: %+.1f ns (min)"
          % (min(results["named"]) - min(results["unnamed"]),
             statistics.median(results["named"]) - statistics.median(results["unnamed"]),
             min(results["named"]) - min(results["names off"])))


def _create_loop(factory, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        factory()
    return (time.perf_counter_ns() - t0) / n


def bench_create():
    """Lock() creation and free (the creation site, the table insert and
    removal) against native: ddlock profiles the native types in place, so
    native is timed with ddlock stopped; rounds interleaved, min taken.
    Instruction counts (callgrind) are steadier: benchmarks/README.md."""
    n = 20000 if QUICK else 200000
    reps = 5 if QUICK else 15
    res = {k: ([], []) for k in ("Lock", "RLock")}
    for _ in range(reps):
        for k, (nat, prof) in res.items():
            nat.append(_create_loop(getattr(threading, k), n))
        ddlock.start(upload_enabled=False)
        try:
            for k, (nat, prof) in res.items():
                prof.append(_create_loop(getattr(threading, k), n))
        finally:
            ddlock.stop(flush=False)
    print("0. creation + free, default rate (%d x %d each)" % (reps, n))
    for k, (nat, prof) in res.items():
        print("   %-5s native %6.1f ns  ddlock %6.1f ns  ratio %.2fx (min of rounds)"
              % (k, min(nat), min(prof), min(prof) / min(nat)))


def main():
    print("ddlock %s, CPython %s" % (ddlock.__version__, sys.version.split()[0]))
    bench_create()
    bench_search()
    bench_first_acquire()
    bench_events()


if __name__ == "__main__":
    main()
