"""One benchmark process: start one profiler configuration, time every
workload, print one JSON object on the last line of stdout.

Run by benchmarks/run.py, one fresh interpreter per (configuration, round):

    python3 benchmarks/workloads.py --config ddlock-default [--quick]

The parent sets the environment (PYTHONPATH, and for the ddtrace
configurations the DD_* variables ddtrace reads at import). This file only
uses the standard library and, depending on the configuration, ddlock or
ddtrace.

Timing: each workload is a tight loop around time.perf_counter_ns(); the same
number of iterations of an empty loop is timed right after it and
subtracted, so the figures are the cost of the lock operation itself, not of
the `for` loop. Each workload is repeated; repeats during which this thread
was preempted (CPU time < 95% of wall time) are set aside and the fastest
remaining one is kept; run.py then takes the median over rounds (processes). The garbage collector stays enabled: a
profiler that allocates on the hot path pays for it, as it would in an
application.
"""

import argparse
import gc
import json
import os
import queue
import sys
import threading
import time
import tracemalloc

perf_counter_ns = time.perf_counter_ns
thread_time_ns = time.thread_time_ns

CONFIGS = {
    # name: (kind, capture_pct or None for the profiler's own default)
    "native": ("native", None),
    "ddlock-0": ("ddlock", 0.0),
    "ddlock-default": ("ddlock", None),
    "ddlock-100": ("ddlock", 100.0),
    # the portable build (public C API only: what CPython versions ddlock
    # was not tested on get), built by run.py with DDLOCK_PORTABLE=1
    "portable-default": ("ddlock", None),
    "portable-100": ("ddlock", 100.0),
    "ddtrace-default": ("ddtrace", None),
    "ddtrace-100": ("ddtrace", 100.0),
    "ddlock-order": ("ddlock", None),
}
# ddlock.start() keywords of a configuration beyond its capture
EXTRA = {"ddlock-order": {"lock_order": True}}

# Per-mode knobs: seconds one timed repeat should last (n is calibrated to
# it), repeats per workload, bounds on n, the contention test's size (n per
# thread sized for contention_s per repeat) and locks for the memory test.
MODES = {
    "full": dict(target_s=0.02, repeats=11, min_n=5_000, max_n=3_000_000,
                 contention_n=100_000, contention_min_n=5_000, contention_s=0.4,
                 contention_repeats=3, size_count=10_000, roundtrip_n=5_000),
    "quick": dict(target_s=0.01, repeats=3, min_n=5_000, max_n=300_000,
                  contention_n=20_000, contention_min_n=2_000, contention_s=0.1,
                  contention_repeats=1, size_count=10_000, roundtrip_n=1_000),
}

DEEP_STACK = 10        # Python frames on the stack at the `with lock:`
CONTENTION_THREADS = 4


# ---- the loops (kept minimal and alike: only the body differs) ------------

def loop_empty(n):
    r = range(n)
    t0 = perf_counter_ns()
    for _ in r:
        pass
    return perf_counter_ns() - t0


def loop_with(lock, n):
    r = range(n)
    t0 = perf_counter_ns()
    for _ in r:
        with lock:
            pass
    return perf_counter_ns() - t0


def loop_acquire_release(lock, n):
    r = range(n)
    t0 = perf_counter_ns()
    for _ in r:
        lock.acquire()
        lock.release()
    return perf_counter_ns() - t0


def loop_create_lock(n):
    r = range(n)
    t0 = perf_counter_ns()
    for _ in r:
        threading.Lock()
    return perf_counter_ns() - t0


def loop_create_rlock(n):
    r = range(n)
    t0 = perf_counter_ns()
    for _ in r:
        threading.RLock()
    return perf_counter_ns() - t0


def loop_held_probe(lock, n):
    """acquire(timeout=0) of a Lock another thread holds: each one takes
    the contended path (ddlock registers the wait and reads the holder's
    stack, issue 18) and fails at once, so no sample is recorded."""
    r = range(n)
    acquire = lock.acquire
    t0 = perf_counter_ns()
    for _ in r:
        acquire(True, 0)
    return perf_counter_ns() - t0


def hold_in_thread(lock):
    """A thread holding lock DEEP_STACK frames deep until the returned
    event is set."""
    held, done = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            done.wait()

    t = threading.Thread(target=descend, args=(DEEP_STACK, holder), daemon=True)
    t.start()
    held.wait()
    return done, t


def stack_depth():
    f, d = sys._getframe(1), 0
    while f is not None:
        d += 1
        f = f.f_back
    return d


def descend(levels, fn, *args):
    """Call fn(*args) `levels` Python frames below the caller."""
    if levels > 1:
        return descend(levels - 1, fn, *args)
    return fn(*args)


def deep_with(lock, n):
    """`with lock:` with exactly DEEP_STACK Python frames on the stack
    (module frame included), the leaf being the loop itself."""
    # depth at the loop = above + levels (descend) + 1 (_deep_leaf) + 1
    # (loop_with), where `above` counts this frame and everything above it.
    above = stack_depth()
    levels = DEEP_STACK - above - 2
    if levels < 1:
        return loop_with(lock, n)
    return descend(levels, _deep_leaf, lock, n)


def _deep_leaf(lock, n):
    _deep_leaf.depth = stack_depth() + 1  # + the loop_with frame
    return loop_with(lock, n)


# ---- measurement ----------------------------------------------------------

def calibrate(fn, args, target_s, min_n, max_n):
    n = 2000
    while True:
        dt = fn(*args, n)
        if dt >= target_s * 1e9 / 8 or n >= max_n:
            break
        n *= 4
    per = max(dt / n, 1.0)
    n = int(target_s * 1e9 / per)
    return max(min_n, min(max_n, n))


def timed(fn, args, n):
    """(wall ns from the loop's own perf_counter_ns, this thread's CPU ns
    around it). CPU time well below wall time means the thread was
    preempted (or descheduled) while timing: the repeat was disturbed."""
    c0 = thread_time_ns()
    t = fn(*args, n)
    return t, thread_time_ns() - c0


def best_clean(samples):
    """Fastest wall time among the repeats that ran undisturbed (CPU time
    >= 95% of wall time); when every repeat was disturbed, the fastest of
    the least disturbed third. Returns (wall ns, clean repeats)."""
    clean = [t for t, c in samples if c >= 0.95 * t]
    if clean:
        return min(clean), len(clean)
    ranked = sorted(samples, key=lambda tc: tc[1] / tc[0] if tc[0] else 0,
                    reverse=True)
    return min(t for t, _ in ranked[:max(1, len(ranked) // 3)]), 0


def measure(fn, args, knobs):
    """ns per operation, empty-loop subtracted: the fastest undisturbed
    repeat of the workload minus the fastest undisturbed empty loop."""
    t0 = time.monotonic()
    fn(*args, 2000)  # warm up (specialising interpreter, first samples)
    n = calibrate(fn, args, knobs["target_s"], knobs["min_n"], knobs["max_n"])
    ops, empties = [], []
    for _ in range(knobs["repeats"]):
        ops.append(timed(fn, args, n))
        empties.append(timed(loop_empty, (), n))
    best_op, clean_op = best_clean(ops)
    best_empty, clean_empty = best_clean(empties)
    return {"ns": (best_op - best_empty) / n, "n": n,
            "loop_ns": best_empty / n, "s": round(time.monotonic() - t0, 2),
            "clean": [clean_op, clean_empty, knobs["repeats"]],
            "repeats": [[round(t / n, 2), round(c / n, 2)] for t, c in ops]}


counter = 0


def contention(lock, nthreads, n):
    """nthreads threads each doing n `with lock: counter += 1`; returns
    total operations per second (wall clock from the common start)."""
    global counter
    counter = 0
    go = threading.Event()
    ready = threading.Semaphore(0)

    def work():
        global counter
        ready.release()
        go.wait()
        for _ in range(n):
            with lock:
                counter += 1

    threads = [threading.Thread(target=work) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for _ in threads:
        ready.acquire()
    t0 = perf_counter_ns()
    go.set()
    for t in threads:
        t.join()
    dt = perf_counter_ns() - t0
    if counter != nthreads * n:
        raise AssertionError("lost updates: %d != %d" % (counter, nthreads * n))
    return nthreads * n / (dt / 1e9)


def cond_roundtrip(n):
    """Two threads taking turns through one Condition (wait/notify both
    ways); wall ns for n round trips (two condition waits each)."""
    cond = threading.Condition()
    turn = [0]

    def peer():
        with cond:
            for _ in range(n):
                while turn[0] % 2 == 0:
                    cond.wait()
                turn[0] += 1
                cond.notify()

    t = threading.Thread(target=peer)
    t.start()
    t0 = perf_counter_ns()
    with cond:
        for _ in range(n):
            turn[0] += 1
            cond.notify()
            while turn[0] % 2 == 1:
                cond.wait()
    dt = perf_counter_ns() - t0
    t.join()
    return dt


def queue_roundtrip(n):
    """A request put on one queue.Queue and its reply got from another,
    served by a second thread; wall ns for n put/get pairs."""
    requests, replies = queue.Queue(), queue.Queue()

    def server():
        for _ in range(n):
            replies.put(requests.get())

    t = threading.Thread(target=server)
    t.start()
    t0 = perf_counter_ns()
    for i in range(n):
        requests.put(i)
        replies.get()
    dt = perf_counter_ns() - t0
    t.join()
    return dt


def measure_roundtrip(fn, knobs):
    """ns per round trip between two threads: the median of the repeats
    (the machine's scheduling decides much of it: the fastest is luck)."""
    fn(200)  # warm up
    n = knobs["roundtrip_n"]
    walls = sorted(fn(n) / n for _ in range(knobs["repeats"]))
    return {"ns": walls[len(walls) // 2], "n": n, "all": [round(w) for w in walls]}


def traced_bytes_per_lock(factory, count):
    """Bytes tracemalloc sees allocated per lock for `count` live locks
    (object, underlying OS lock, anything the profiler attaches)."""
    holder = [None] * count
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        holder[i] = factory()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del holder
    return (after - before) / count


# ---- profiler start/verification -------------------------------------------

def start_profiler(name):
    kind, pct = CONFIGS[name]
    info = {"kind": kind}
    if kind == "native":
        return info
    if kind == "ddlock":
        import ddlock
        kwargs = dict(upload_enabled=False, output_pprof=None,
                      upload_interval=600.0)
        if pct is not None:
            kwargs["capture_pct"] = pct
        kwargs.update(EXTRA.get(name, {}))
        ddlock.start(**kwargs)
        cfg = ddlock._state["config"]
        info["version"] = ddlock.__version__
        info["capture_pct"] = cfg.capture_pct if cfg is not None else None
        info["module"] = os.path.dirname(ddlock.__file__)
    else:
        # Started the way users start it: importing the auto module, which
        # reads DD_PROFILING_* from the environment run.py prepared.
        import ddtrace
        import ddtrace.profiling.auto  # noqa: F401
        info["version"] = ddtrace.__version__
        info["module"] = os.path.dirname(ddtrace.__file__)
        try:
            from ddtrace.internal.settings.profiling import config as pcfg
            info["capture_pct"] = pcfg.capture_pct
            info["collectors"] = {
                "lock": pcfg.lock.enabled, "stack": pcfg.stack.enabled,
                "memory": pcfg.memory.enabled,
                "heap_sample_size": pcfg.heap.sample_size,
                "exception": pcfg.exception.enabled,
                "pytorch": pcfg.pytorch.enabled,
            }
        except Exception as e:  # settings moved in another version
            info["config_error"] = repr(e)
    # Is the lock collector really there? ddtrace replaces the factories: the
    # locks they make are its own type. ddlock profiles the native locks in
    # place: they stay native, and ddlock says it profiles them.
    lock, rlock = threading.Lock(), threading.RLock()
    lock_t, rlock_t = type(lock), type(rlock)
    info["lock_type"] = "%s.%s" % (lock_t.__module__, lock_t.__qualname__)
    info["rlock_type"] = "%s.%s" % (rlock_t.__module__, rlock_t.__qualname__)
    if kind == "ddlock":
        from ddlock import _ddlock
        active = _ddlock.profiled(lock) == "Lock" and _ddlock.profiled(rlock) == "RLock"
        info["frame_walk"] = _ddlock.build_info()["frame_walk"]
        if name.startswith("portable") != (info["frame_walk"] == "public"):
            raise RuntimeError("%s runs the %s build" % (name, info["frame_walk"]))
    else:
        active = all(t.__module__.startswith(kind) for t in (lock_t, rlock_t))
    if not active:
        raise RuntimeError(
            "%s lock collector not active: threading.Lock()/RLock() make %s "
            "objects" % (kind, info["lock_type"] + "/" + info["rlock_type"]))
    return info


def stop_profiler(name):
    kind, _ = CONFIGS[name]
    if kind == "ddlock":
        import ddlock
        st = ddlock.stats()
        ddlock.stop(flush=False)
        return {k: st[k] for k in ("events_sampled", "locks_created",
                                   "samples_dropped", "current_keys",
                                   "order_acquires", "order_edges",
                                   "order_skipped")
                if k in st}
    return {}


# ---- main -------------------------------------------------------------------

def run(name, mode):
    knobs = MODES[mode]
    out = {"config": name, "mode": mode, "pid": os.getpid(),
           "python": sys.version.split()[0]}
    try:
        out["profiler"] = start_profiler(name)
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        return out

    lock = threading.Lock()
    rlock = threading.RLock()
    res = {}
    res["empty_loop"] = {"ns": loop_empty(1_000_000) / 1e6}
    res["with_lock"] = measure(loop_with, (lock,), knobs)
    res["with_rlock"] = measure(loop_with, (rlock,), knobs)
    res["acqrel_lock"] = measure(loop_acquire_release, (lock,), knobs)
    res["acqrel_rlock"] = measure(loop_acquire_release, (rlock,), knobs)
    res["create_lock"] = measure(loop_create_lock, (), knobs)
    res["create_rlock"] = measure(loop_create_rlock, (), knobs)
    deep_lock = threading.Lock()
    res["deep10_with_lock"] = measure(deep_with, (deep_lock,), knobs)
    res["deep10_with_lock"]["depth"] = getattr(_deep_leaf, "depth", None)
    # `with lock:` while 3 other locks are held (each its own lock class):
    # what lock-order checking costs an acquire (3 pairs looked up)
    held1 = threading.Lock()
    held2 = threading.RLock()
    held3 = threading.Lock()
    with held1, held2, held3:
        res["with_lock_3held"] = measure(loop_with, (threading.Lock(),), knobs)

    probe_lock = threading.Lock()
    done, holder = hold_in_thread(probe_lock)
    res["held_probe"] = measure(loop_held_probe, (probe_lock,), knobs)
    done.set()
    holder.join()

    t0 = time.monotonic()
    clock = threading.Lock()
    # warm up, and size n so one repeat lasts about contention_s
    pilot = contention(clock, CONTENTION_THREADS, 2000)
    n = int(pilot * knobs["contention_s"] / CONTENTION_THREADS)
    n = max(knobs["contention_min_n"], min(knobs["contention_n"], n))
    rates = [contention(clock, CONTENTION_THREADS, n)
             for _ in range(knobs["contention_repeats"])]
    res["contention4"] = {"ops_per_s": max(rates), "all": rates,
                          "n_per_thread": n,
                          "s": round(time.monotonic() - t0, 2)}

    # condition waits (issue 25): a wait costs a thread switch anyway
    res["cond_roundtrip"] = measure_roundtrip(cond_roundtrip, knobs)
    res["queue_roundtrip"] = measure_roundtrip(queue_roundtrip, knobs)

    res["size_lock"] = {"getsizeof": sys.getsizeof(threading.Lock()),
                        "traced": traced_bytes_per_lock(threading.Lock,
                                                        knobs["size_count"])}
    res["size_rlock"] = {"getsizeof": sys.getsizeof(threading.RLock()),
                         "traced": traced_bytes_per_lock(threading.RLock,
                                                         knobs["size_count"])}
    out["results"] = res
    out["profiler"]["after"] = stop_profiler(name)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    out = run(args.config, "quick" if args.quick else "full")
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 3 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
