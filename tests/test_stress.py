"""Profiled locks under load: exact counts, no deadlock, bounded time.

Every test runs in a fresh interpreter (tests/_subproc.py). Threads are
joined with a timeout and must be finished; the subprocess itself has a
timeout too, so a deadlock fails the test instead of hanging the suite.
"""

import glob

import pytest

from _subproc import run

JOIN = 120  # seconds: generous for a loaded 2-core machine

COUNTER_SNIPPET = r'''
start(capture_pct=PCT, output_pprof=PREFIX)
lk = profiled(KIND)
N, THREADS = 100000, 8
counter = [0]
errors = []


def with_statement():
    for _ in range(N):
        with lk:
            counter[0] += 1


def acquire_release():
    acquire, release = lk.acquire, lk.release
    for _ in range(N):
        acquire()
        counter[0] += 1
        release()


def with_timeout():
    for _ in range(N):
        if not lk.acquire(timeout=JOIN):
            errors.append("timed out")
            return
        try:
            counter[0] += 1
        finally:
            lk.release()


def reentrant():
    # RLock: every 8th iteration re-enters (counted once per outer hold)
    for i in range(N):
        with lk:
            if i % 8 == 0:
                with lk:
                    counter[0] += 1
            else:
                counter[0] += 1


def guarded(fn):
    def run():
        try:
            fn()
        except BaseException as e:
            errors.append(repr(e))
    return run


styles = [with_statement, acquire_release, with_timeout]
if KIND == "RLock":
    styles.append(reentrant)
threads = [threading.Thread(target=guarded(styles[i % len(styles)])) for i in range(THREADS)]
t0 = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join(JOIN)
elapsed_s = time.monotonic() - t0
alive = [t.is_alive() for t in threads]
free = lk.acquire(False)  # one more acquire and release
if free:
    lk.release()
stats = ddlock.stats()
ddlock.stop()
emit({"counter": counter[0], "expected": N * THREADS, "alive": alive, "errors": errors,
      "elapsed": elapsed_s, "free": free, "stats": stats})
'''


def profile_totals(prefix):
    from ddlock._pprof import parse_file

    totals = {}
    for path in sorted(glob.glob(prefix + ".*.pprof")):
        prof = parse_file(path)
        for vt in ("lock-acquire", "lock-release", "lock-acquire-wait", "lock-release-hold"):
            totals[vt] = totals.get(vt, 0) + prof.total(vt)
        for s in prof.samples:
            for v in s.values:
                assert v >= 0, (path, s)
    return totals


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_eight_threads_100k_each_sampled(kind, tmp_path):
    """8 threads x 100k acquire/release on one lock at 1% capture."""
    res = run(COUNTER_SNIPPET, timeout=JOIN + 60,
              params={"KIND": kind, "PCT": 1, "JOIN": JOIN,
                      "PREFIX": str(tmp_path / "prof")})
    assert res["alive"] == [False] * 8, res
    assert res["errors"] == []
    assert res["counter"] == res["expected"] == 800000
    assert res["free"] is True
    assert res["stats"]["events_sampled"] > 0


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_eight_threads_100k_each_full_capture(kind, tmp_path):
    """The same at 100% capture: every event goes through the sampler, the
    frame walker and the aggregation table; the profile counts are exact."""
    prefix = str(tmp_path / "prof")
    res = run(COUNTER_SNIPPET, timeout=JOIN + 60,
              params={"KIND": kind, "PCT": 100, "JOIN": JOIN, "PREFIX": prefix})
    assert res["alive"] == [False] * 8, res
    assert res["errors"] == []
    assert res["counter"] == res["expected"] == 800000
    assert res["free"] is True
    st = res["stats"]
    # at 100% every acquire() and every release() is one event; RLock:
    # re-entrant acquires and their releases count too (1 in 8 iterations of
    # the 2 "reentrant" threads), so acquire and release counts balance
    reentries = 2 * (100000 // 8) if kind == "RLock" else 0
    acquires = releases = 800000 + reentries + 1
    assert st["events_sampled"] + st["events_reentrant_skipped"] == acquires + releases, st
    # nothing sampled is lost on the way to the files, and at 100% nothing
    # is scaled: the profile counts every event
    totals = profile_totals(prefix)
    assert totals["lock-acquire"] + totals["lock-release"] == st["events_sampled"], totals
    assert acquires - st["events_reentrant_skipped"] <= totals["lock-acquire"] <= acquires
    assert releases - st["events_reentrant_skipped"] <= totals["lock-release"] <= releases


CONDITION_SNIPPET = r'''
import collections
start(capture_pct=PCT)
lk = profiled(KIND)
not_empty = threading.Condition(lk)
not_full = threading.Condition(lk)
buf = collections.deque()
CAP, TOTAL, PRODUCERS, CONSUMERS = 64, 200000, 2, 2
consumed = [0, 0]  # items, sum
errors = []


def producer(first):
    try:
        for i in range(first, TOTAL, PRODUCERS):
            with not_full:
                while len(buf) >= CAP:
                    if not not_full.wait(timeout=JOIN):
                        errors.append("producer starved")
                        return
                buf.append(i)
                not_empty.notify()
    except BaseException as e:
        errors.append(repr(e))


def consumer():
    try:
        while True:
            with not_empty:
                if not not_empty.wait_for(lambda: buf, timeout=JOIN):
                    errors.append("consumer starved")
                    return
                x = buf.popleft()
                not_full.notify()
                if x is None:
                    return
                consumed[0] += 1
                consumed[1] += x
    except BaseException as e:
        errors.append(repr(e))


t0 = time.monotonic()
producers = [threading.Thread(target=producer, args=(i,)) for i in range(PRODUCERS)]
consumers = [threading.Thread(target=consumer) for _ in range(CONSUMERS)]
for t in producers + consumers:
    t.start()
for t in producers:
    t.join(JOIN)
for _ in consumers:
    with not_full:
        not_full.wait_for(lambda: len(buf) < CAP, timeout=JOIN)
        buf.append(None)
        not_empty.notify()
for t in consumers:
    t.join(JOIN)
emit({"items": consumed[0], "sum_ok": consumed[1] == sum(range(TOTAL)),
      "alive": [t.is_alive() for t in producers + consumers], "errors": errors,
      "elapsed": time.monotonic() - t0, "left": len(buf),
      "lock_free": run_thread(lambda: (lk.acquire(False), lk.release()))})
'''


@pytest.mark.parametrize("kind,pct", [("Lock", 100), ("RLock", 100), ("Lock", 1)])
def test_condition_producer_consumer_200k_items(kind, pct):
    res = run(CONDITION_SNIPPET, timeout=2 * JOIN + 60,
              params={"KIND": kind, "PCT": pct, "JOIN": JOIN})
    assert res["alive"] == [False] * 4, res
    assert res["errors"] == []
    assert res["items"] == 200000 and res["sum_ok"], res
    assert res["left"] == 0
    assert res["lock_free"] == ["return", [True, None]]
    assert res["elapsed"] < JOIN


def test_contended_timeouts_and_nonblocking_attempts():
    """Threads mixing acquire(timeout=...) and acquire(False) on one lock at
    100%: each success is matched by one increment and one release."""
    res = run(r'''
        start()
        lk = profiled("Lock")
        rl = profiled("RLock")
        counts = {"ok": 0, "fail": 0, "rok": 0}
        errors = []
        deadline = time.monotonic() + 1.5

        def worker(i):
            try:
                while time.monotonic() < deadline:
                    got = lk.acquire(timeout=0.0005) if i % 2 else lk.acquire(False)
                    if got:
                        counts["ok"] += 1
                        lk.release()
                    else:
                        counts["fail"] += 1
                    if rl.acquire(timeout=0.001):
                        if rl.acquire(False):  # re-entrant: always succeeds
                            rl.release()
                        else:
                            errors.append("re-entrant acquire failed")
                        counts["rok"] += 1
                        rl.release()
            except BaseException as e:
                errors.append(repr(e))

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
        emit({"alive": [t.is_alive() for t in ts], "errors": errors, "counts": counts,
              "free": [lk.acquire(False), lk.release(), rl.acquire(False), rl._is_owned(),
                       rl.release()]})
    ''', params={"JOIN": JOIN}, timeout=JOIN + 60)
    assert res["alive"] == [False] * 6, res
    assert res["errors"] == []
    assert res["counts"]["ok"] > 0 and res["counts"]["rok"] > 0
    assert res["free"] == [True, None, True, True, None]


def test_many_short_lived_locks_while_exporting(tmp_path):
    """Threads create, use and drop thousands of profiled locks at 100%
    capture while the exporter swaps the profile out every 50 ms."""
    prefix = str(tmp_path / "prof")
    res = run(r'''
        start(output_pprof=PREFIX, upload_interval=0.05)
        errors = []
        made = [0]
        deadline = time.monotonic() + 0.6  # several export intervals

        def worker():
            try:
                i = 0
                while i < 5000 or time.monotonic() < deadline:
                    i += 1
                    lk = threading.Lock() if i % 2 else threading.RLock()
                    with lk:
                        pass
                    if not lk.acquire(False):
                        errors.append("fresh lock not free")
                    lk.release()
                    made[0] += 1
            except BaseException as e:
                errors.append(repr(e))

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
        st = ddlock.stats()
        ddlock.stop()
        emit({"alive": [t.is_alive() for t in ts], "errors": errors, "stats": st,
              "made": made[0]})
    ''', params={"PREFIX": prefix, "JOIN": JOIN}, timeout=JOIN + 60)
    assert res["alive"] == [False] * 4, res
    assert res["errors"] == []
    assert res["stats"]["locks_created"] >= 20000
    files = glob.glob(prefix + ".*.pprof")
    assert len(files) >= 2, files
    totals = profile_totals(prefix)
    assert totals["lock-acquire"] > 0
