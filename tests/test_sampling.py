"""The sampling model: unbiased weighted estimates at any capture rate, long
waits always seen, exact RLock and Condition hold times at 100%."""

import json

import pytest

from conftest import run_python
from ddlock import testing


def lock_samples(profile, suffix, thread_name=None):
    return [s for s in profile.samples
            if str(s.labels.get("lock name", "")).endswith(suffix)
            and (thread_name is None or s.labels.get("thread name") == thread_name)]


def test_uncontended_estimate_is_unbiased_at_10_percent(prefix):
    run_python("""
        import threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=10, sampling_seed=1234, upload_enabled=False,
                     max_samples=100000)
        sampled_lock = threading.Lock()
        for _ in range(100000):
            with sampled_lock:
                pass
        for _ in range(100000):
            sampled_lock.acquire()
            sampled_lock.release()
        ddlock.stop()
    """ % prefix, timeout=300)
    profile = testing.parse_merged_profile(prefix)
    ours = lock_samples(profile, ":sampled_lock")
    acquires = profile.total("lock-acquire", ours)
    releases = profile.total("lock-release", ours)
    assert abs(acquires - 200000) <= 0.05 * 200000, acquires
    assert abs(releases - 200000) <= 0.05 * 200000, releases
    # weighted, not raw: raw sampled events would be ~20,000
    assert all(profile.sample_value(s, "lock-acquire") % 10 == 0 for s in ours)


def test_sampling_is_reproducible_with_a_seed(prefix):
    code = """
        import threading, ddlock, sys
        ddlock.start(output_pprof=sys.argv[1], capture_pct=5, sampling_seed=99, upload_enabled=False)
        seeded_lock = threading.Lock()
        for _ in range(20000):
            with seeded_lock:
                pass
        ddlock.stop()
    """
    totals = []
    for i in range(2):
        run_python(code, args=("%s%d" % (prefix, i),))
        p = testing.parse_merged_profile("%s%d" % (prefix, i))
        totals.append(p.total("lock-acquire", lock_samples(p, ":seeded_lock")))
    assert totals[0] == totals[1] and totals[0] > 0


def test_contended_wait_estimate_within_10_percent(prefix):
    out = run_python("""
        import json, threading, time, ddlock
        # waits of ~1 ms with a 2 ms rate: each kept with p ~ 0.5, weighted 1/p
        ddlock.start(output_pprof=%r, capture_pct=0, lock_wait_rate_ns=2000000, sampling_seed=7,
                     upload_enabled=False)
        hot_lock = threading.Lock()
        held, done = threading.Event(), threading.Event()
        ROUNDS = 1000
        def holder():
            for _ in range(ROUNDS):
                hot_lock.acquire()
                held.set()
                time.sleep(0.001)
                hot_lock.release()
                done.wait(); done.clear()
        measured = 0
        def waiter():
            global measured
            for _ in range(ROUNDS):
                held.wait(); held.clear()
                t0 = time.perf_counter_ns()
                hot_lock.acquire()
                measured += time.perf_counter_ns() - t0
                hot_lock.release()
                done.set()
        threads = [threading.Thread(target=holder, name="holder"),
                   threading.Thread(target=waiter, name="waiter")]
        for t in threads: t.start()
        for t in threads: t.join()
        ddlock.stop()
        print(json.dumps({"measured": measured}))
    """ % prefix, timeout=300).stdout
    measured = json.loads(out.strip().splitlines()[-1])["measured"]
    profile = testing.parse_merged_profile(prefix)
    waits = lock_samples(profile, ":hot_lock", thread_name="waiter")
    estimated = profile.total("lock-acquire-wait", waits)
    assert abs(estimated - measured) <= 0.10 * measured, (estimated, measured)
    # not everything was kept (p < 1 for most waits), yet the total is right
    kept = profile.total("lock-acquire", waits)
    assert 700 <= kept <= 1300, kept


def test_long_waits_are_always_sampled_even_at_zero_percent(prefix):
    run_python("""
        import threading, time, ddlock
        ddlock.start(output_pprof=%r, capture_pct=0, upload_enabled=False)
        slow_lock = threading.Lock()
        def holder():
            with slow_lock:
                time.sleep(0.05)
        for _ in range(5):
            t = threading.Thread(target=holder); t.start()
            time.sleep(0.01)
            with slow_lock:
                pass
            t.join()
        ddlock.stop()
    """ % prefix)
    profile = testing.parse_merged_profile(prefix)
    ours = lock_samples(profile, ":slow_lock", thread_name="MainThread")
    assert profile.total("lock-acquire", ours) == 5
    assert 5 * 0.03e9 <= profile.total("lock-acquire-wait", ours) <= 5 * 0.06e9


def test_rlock_nesting_hold_is_outermost_only(prefix):
    run_python("""
        import threading, time, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        nested_rlock = threading.RLock()
        with nested_rlock:
            time.sleep(0.05)
            with nested_rlock:
                time.sleep(0.05)
                with nested_rlock:
                    pass
            time.sleep(0.05)
        ddlock.stop()
    """ % prefix)
    profile = testing.parse_merged_profile(prefix)
    ours = lock_samples(profile, ":nested_rlock")
    assert profile.total("lock-acquire", ours) == 3      # re-entrant acquires counted
    assert profile.total("lock-release", ours) == 3      # and their releases
    # only the outermost release carries the hold
    hold = profile.total("lock-release-hold", ours)
    assert 0.15e9 <= hold < 0.2e9, hold


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_condition_wait_excluded_from_hold_and_reacquire_contention_seen(prefix, kind):
    run_python("""
        import threading, time, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        cond_lock = threading.%s()
        cond = threading.Condition(cond_lock)
        ready = threading.Event()
        def waiter():
            with cond:
                time.sleep(0.05)             # held 50 ms
                ready.set()
                cond.wait(timeout=5)         # released while waiting (~200 ms)
                time.sleep(0.05)             # held 50 ms again
        def notifier():
            ready.wait()
            time.sleep(0.2)
            with cond:
                cond.notify()
                time.sleep(0.05)             # the waiter re-acquires behind this
        threads = [threading.Thread(target=waiter, name="waiter"),
                   threading.Thread(target=notifier, name="notifier")]
        for t in threads: t.start()
        for t in threads: t.join()
        ddlock.stop()
    """ % (prefix, kind))
    profile = testing.parse_merged_profile(prefix)
    waiter = lock_samples(profile, ":cond_lock", thread_name="waiter")
    hold = profile.total("lock-release-hold", waiter)
    # 50 + 50 ms held, the ~250 ms spent in wait() is not hold
    assert 0.1e9 <= hold < 0.16e9, hold
    assert profile.total("lock-release", waiter) == 2
    assert profile.total("lock-acquire", waiter) == 2
    # the re-acquire in wait() waited behind the notifier's 50 ms hold
    assert 0.03e9 <= profile.total("lock-acquire-wait", waiter) < 0.1e9
    # the waiting frame is the user's, not threading.py's
    assert all(not s.leaf.filename.endswith("threading.py") for s in waiter)
