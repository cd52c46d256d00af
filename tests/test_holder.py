"""Who made me wait (issue 18): the holder of a contended lock on the
waiter's sample and as a lock-holder-wait sample on the holder's stack;
stuck waits reported while they last; deadlocks named. Each scenario runs
in a fresh interpreter at the DEFAULT sampling rate (contended waits of
1 ms or more are always sampled)."""

import json
import re

import pytest

from conftest import run_python
from ddlock import testing


def _portable():
    import ddlock

    return ddlock.build_info()["frame_walk"] == "public"


# the holder of a native Lock/RLock (and of a Condition, through its RLock)
# is read from the native layout: on the portable build it is unknown
NATIVE = {"Lock", "RLock", "Condition"}
needs_layout = pytest.mark.skipif(_portable(), reason="portable build: native holders unknown")


def native_kind(kind):
    return pytest.param(kind, marks=needs_layout) if kind in NATIVE else kind

MAKE = {
    "Lock": "threading.Lock()",
    "RLock": "threading.RLock()",
    "Semaphore": "threading.Semaphore(1)",
    "BoundedSemaphore": "threading.BoundedSemaphore(1)",
    "Condition": "threading.Condition()",
}

HOLD_AND_WAIT = """
    import json, sys, threading, time, ddlock
    ddlock.start(output_pprof=%(prefix)r, upload_enabled=False)

    shared_lock = %(make)s
    entered = threading.Event()

    def slow_holding_function():
        with shared_lock:
            entered.set()
            time.sleep(%(hold)s)

    def waiting_function():
        entered.wait()
        with shared_lock:
            pass

    holder = threading.Thread(target=slow_holding_function, name="the-holder")
    waiter = threading.Thread(target=waiting_function, name="the-waiter")
    holder.start(); waiter.start()
    time.sleep(%(hold)s / 3)
    during = ddlock.stuck_waits()
    holder.join(); waiter.join()
    paths = ddlock.flush()
    ddlock.stop()
    print(json.dumps({"paths": paths, "during": during}))
"""


def run_hold_and_wait(tmp_path, kind, hold=0.4, env=None):
    prefix = str(tmp_path / "prof")
    proc = run_python(HOLD_AND_WAIT % dict(prefix=prefix, make=MAKE[kind], hold=hold),
                      env=env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return testing.merge_profiles([testing.parse_profile(p) for p in out["paths"]]), out, proc


def functions(sample):
    return [ln.function_name for loc in sample.locations for ln in loc.lines]


@pytest.mark.parametrize("kind", [native_kind(k) for k in sorted(MAKE)])
def test_wait_sample_names_the_holder(tmp_path, kind):
    profile, _, _ = run_hold_and_wait(tmp_path, kind)
    waits = [s for s in profile.samples_with_value("lock-acquire-wait")
             if s.labels.get("thread name") == "the-waiter"
             and str(s.labels.get("lock name", "")).endswith("shared_lock")]
    assert waits, profile.samples
    assert profile.total("lock-acquire-wait", waits) >= 0.3e9
    for s in waits:
        assert s.labels["holder thread name"] == "the-holder"
        assert isinstance(s.labels["holder thread id"], int)
    # the holder's own samples carry no holder labels
    mine = [s for s in profile.samples if s.labels.get("thread name") == "the-holder"]
    assert mine and not any("holder thread name" in s.labels for s in mine)


@pytest.mark.parametrize("kind", [native_kind(k) for k in sorted(MAKE)])
def test_holder_wait_sample_on_holders_stack(tmp_path, kind):
    profile, _, _ = run_hold_and_wait(tmp_path, kind)
    hw = profile.samples_with_value("lock-holder-wait")
    assert hw, profile.samples
    for s in hw:
        assert s.labels["thread name"] == "the-holder"
        assert str(s.labels["lock name"]).endswith("shared_lock")
        assert s.labels["lock type"] == kind
        # where the holder was when the wait began: inside the holding function
        assert functions(s)[0] == "slow_holding_function", functions(s)
        assert "waiting_function" not in functions(s)
    charged = profile.total("lock-holder-wait", hw)
    waited = profile.total("lock-acquire-wait", [
        s for s in profile.samples if s.labels.get("thread name") == "the-waiter"])
    assert charged == waited and charged >= 0.3e9


def test_uncontended_has_no_holder(tmp_path):
    prefix = str(tmp_path / "prof")
    proc = run_python("""
        import threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        quiet_lock = threading.Lock()
        for _ in range(100):
            with quiet_lock:
                pass
        print(ddlock.flush()[0]); ddlock.stop()
    """ % prefix)
    profile = testing.parse_profile(proc.stdout.split()[-1])
    assert profile.samples
    assert not profile.samples_with_value("lock-holder-wait")
    assert not any("holder thread id" in s.labels for s in profile.samples)


STUCK = """
    import sys, threading, time, ddlock
    ddlock.start(upload_enabled=False, lock_stuck_s=0.5)

    stuck_lock = %(make)s
    entered = threading.Event()

    def slow_holding_function():
        with stuck_lock:
            entered.set()
            time.sleep(2)

    def waiting_function():
        entered.wait()
        %(acquire)s

    holder = threading.Thread(target=slow_holding_function, name="the-holder")
    waiter = threading.Thread(target=waiting_function, name="the-waiter")
    holder.start(); waiter.start()
    time.sleep(1.2)
    waits = ddlock.stuck_waits()
    assert len(waits) == 1, waits
    w = waits[0]
    print("DATA", w["lock"], w["waiter_name"], w["holder_name"], w["has_timeout"],
          w["holder_stack"][0][0], w["waiter_stack"][0][0], w["waited_s"] > 0.5)
    sys.stdout.flush()
    holder.join(); waiter.join()
    print("DEADLOCKS", ddlock.stats()["deadlocks"], len(ddlock.deadlocks()))
    ddlock.stop()
"""


@pytest.mark.parametrize("kind", [native_kind(k) for k in ["Lock", "RLock", "Semaphore", "Condition"]])
def test_stuck_lock_is_reported_while_stuck(kind):
    proc = run_python(STUCK % dict(make=MAKE[kind], acquire="with stuck_lock: pass"))
    err = proc.stderr
    # no logging configured: logging.lastResort writes the WARNING to stderr
    assert err.count("is stuck") == 1, err  # once per wait
    assert "stuck_lock" in err and "the-holder" in err and "the-waiter" in err, err
    assert "slow_holding_function" in err and "waiting_function" in err, err
    assert "with a timeout" not in err
    data = [ln for ln in proc.stdout.splitlines() if ln.startswith("DATA")][0].split()
    assert data[1].endswith(":stuck_lock")
    assert data[2:] == ["the-waiter", "the-holder", "False", "slow_holding_function",
                        "waiting_function", "True"], data
    assert "DEADLOCKS 0 0" in proc.stdout


@needs_layout
def test_stuck_wait_with_timeout_is_labelled():
    proc = run_python(STUCK % dict(make=MAKE["Lock"],
                                   acquire="stuck_lock.acquire(timeout=5); stuck_lock.release()"))
    assert proc.stderr.count("is stuck") == 1, proc.stderr
    assert "(with a timeout)" in proc.stderr
    assert " True slow_holding_function" in proc.stdout


def test_stuck_off():
    proc = run_python("""
        import threading, time, ddlock
        ddlock.start(upload_enabled=False, lock_stuck_s=0)
        from ddlock import _stuck
        assert _stuck._state["thread"] is None  # no watchdog
        held = threading.Lock(); held.acquire()
        t = threading.Thread(target=lambda: held.acquire(timeout=0.6)); t.start(); t.join()
        assert ddlock.stuck_waits() == []
        ddlock.stop()
        print("OK")
    """)
    assert "is stuck" not in proc.stderr and "OK" in proc.stdout


DEADLOCK = """
    import os, sys, threading, time, ddlock
    ddlock.start(upload_enabled=False, lock_stuck_s=0.3)  # default capture_pct

    accounts_lock = %(a)s
    ledger_lock = %(b)s
    barrier = threading.Barrier(2)

    def transfer():
        with accounts_lock:
            barrier.wait()
            with ledger_lock:
                pass

    def audit():
        with ledger_lock:
            barrier.wait()
            with accounts_lock:
                pass

    for f in (transfer, audit):
        threading.Thread(target=f, name=f.__name__ + "-thread", daemon=True).start()
    deadline = time.monotonic() + 20
    while not ddlock.deadlocks() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a second look must not report it again
    found = ddlock.deadlocks()
    print("FOUND", len(found), ddlock.stats()["deadlocks"])
    for d in found:
        print("LOCKS", " ".join(sorted(d["locks"])))
        print("THREADS", " ".join(sorted(d["threads"])))
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)  # the two threads stay deadlocked: leave without joining them
"""


@needs_layout
@pytest.mark.parametrize("a,b", [("Lock", "Lock"), ("RLock", "Lock"), ("RLock", "RLock")])
def test_two_lock_deadlock_is_named(a, b):
    proc = run_python(DEADLOCK % dict(a=MAKE[a], b=MAKE[b]), timeout=60)
    out = proc.stdout
    assert "FOUND 1 1" in out, (out, proc.stderr)
    locks = [ln for ln in out.splitlines() if ln.startswith("LOCKS")][0].split()[1:]
    assert [x.rsplit(":", 1)[1] for x in locks] == ["accounts_lock", "ledger_lock"], locks
    assert "THREADS audit-thread transfer-thread" in out
    err = proc.stderr
    assert err.count("deadlock:") == 1, err
    for needle in ("accounts_lock", "ledger_lock", "in transfer", "in audit"):
        assert needle in err, err


def test_no_false_alarms():
    """Condition.wait releases its lock, RLock re-entry and a semaphore
    with a free slot do not wait: nothing stuck, no deadlock."""
    proc = run_python("""
        import threading, time, ddlock
        ddlock.start(upload_enabled=False, lock_stuck_s=0.2)
        cond = threading.Condition()
        rl = threading.RLock()
        sem = threading.Semaphore(2)
        done = threading.Event()

        def cond_waiter():
            with cond:
                cond.wait(1.0)  # lock released while waiting

        def reenter():
            with rl:
                with rl:
                    time.sleep(1.0)

        def sem_holder():
            with sem:
                time.sleep(1.0)

        ts = [threading.Thread(target=f) for f in (cond_waiter, reenter, sem_holder, sem_holder)]
        for t in ts: t.start()
        time.sleep(0.6)
        print("STUCK", len(ddlock.stuck_waits()))
        for t in ts: t.join()
        print("DEADLOCKS", ddlock.stats()["deadlocks"])
        ddlock.stop()
    """)
    assert "STUCK 0" in proc.stdout and "DEADLOCKS 0" in proc.stdout, proc.stdout
    assert "is stuck" not in proc.stderr and "deadlock" not in proc.stderr, proc.stderr


@needs_layout
@pytest.mark.no_sanitize  # forks while threads run (GCC 12's ASan allocator has no at-fork lock)
def test_watchdog_after_fork():
    """A forked child watches its own waits (the parent's watchdog thread
    does not exist there)."""
    proc = run_python("""
        import os, sys, threading, time, ddlock
        ddlock.start(upload_enabled=False, lock_stuck_s=0.3)
        pid = os.fork()
        if pid == 0:
            child_lock = threading.Lock()
            child_lock.acquire()
            t = threading.Thread(target=lambda: child_lock.acquire(timeout=1.0), name="child-waiter")
            t.start(); t.join()
            sys.stderr.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        ddlock.stop()
    """)
    assert proc.stderr.count("is stuck") == 1, proc.stderr
    assert "child_lock" in proc.stderr and "child-waiter" in proc.stderr


def test_report_lists_holders_and_draws_their_flame_graph(tmp_path):
    prefix = str(tmp_path / "prof")
    run_python(HOLD_AND_WAIT % dict(prefix=prefix, make=MAKE["Semaphore"], hold=0.4))
    svg = str(tmp_path / "holders.svg")
    proc = run_python("""
        import sys
        from ddlock.__main__ import main
        sys.exit(main(["report", %r, "--svg", %r, "--value", "holder"]))
    """ % (prefix, svg))
    out = proc.stdout
    assert "Holders that made others wait" in out, out
    section = out.split("Holders that made others wait", 1)[1]
    assert "shared_lock" in section
    assert "held by thread the-holder in slow_holding_function: caused" in section, section
    assert "flame graph (holder)" in out
    with open(svg) as f:
        drawing = f.read()
    assert "held by the-holder" in drawing and "slow_holding_function" in drawing
    assert "waiting_function" not in drawing  # the waiter's stack is not the holder's


def test_report_without_holder_waits_has_no_holder_section(tmp_path):
    prefix = str(tmp_path / "prof")
    run_python("""
        import threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        quiet_lock = threading.Lock()
        with quiet_lock:
            pass
        ddlock.stop()
    """ % prefix)
    proc = run_python("""
        import sys
        from ddlock.__main__ import main
        sys.exit(main(["report", %r]))
    """ % prefix)
    assert "quiet_lock" in proc.stdout and "Holders that made others wait" not in proc.stdout


PYTEST_DEADLOCK = '''
import threading, time
import pytest
import ddlock


def test_deadlocks(ddlock_profile):
    with ddlock_profile.run(capture_pct=1):
        orders_lock = threading.Lock()
        stock_lock = threading.Lock()
        both = threading.Barrier(2)

        def worker():
            with stock_lock:
                both.wait()
                with orders_lock:
                    pass

        t = threading.Thread(target=worker, name="stock-worker", daemon=True)
        t.start()
        with orders_lock:
            both.wait()
            with stock_lock:  # deadlock: the worker holds it and waits for orders_lock
                pass


def test_after_it_runs():
    assert True
'''


@needs_layout
def test_pytest_plugin_fails_a_deadlocked_test(tmp_path):
    """A deadlocked test fails with the deadlock report after the timeout;
    the suite goes on."""
    (tmp_path / "test_dl.py").write_text(PYTEST_DEADLOCK)
    proc = run_python("""
        import sys, pytest
        sys.exit(pytest.main(["-q", "-p", "ddlock.pytest_plugin", "-p", "no:cacheprovider",
                              "--ddlock-deadlock-timeout=1", %r]))
    """ % str(tmp_path / "test_dl.py"), check=False, timeout=120)
    out = proc.stdout
    assert "1 failed, 1 passed" in out, out + proc.stderr
    assert "DeadlockError" in out and "deadlock:" in out, out
    assert "orders_lock" in out and "stock_lock" in out and "stock-worker" in out, out
    # qualified names on 3.11+ (test_deadlocks.<locals>.worker)
    assert re.search(r"in (test_deadlocks\.<locals>\.)?worker\n", out), out
    assert "in test_deadlocks\n" in out, out


ASYNC_HOLD_AND_WAIT = """
    import asyncio, json, ddlock
    ddlock.start(output_pprof=%(prefix)r, upload_enabled=False)

    async def slow_holding_task(shared_lock, entered):
        async with shared_lock:
            entered.set()
            await asyncio.sleep(0.3)

    async def waiting_task(shared_lock, entered):
        await entered.wait()
        async with shared_lock:
            pass

    async def main():
        shared_lock = %(make)s
        # an asyncio lock's holder task is noted from its first contention
        # on (reading the running task costs more than an acquire): a first
        # round makes it contended, the second is the one checked
        for holder, waiter in (("warm-holder", "warm-waiter"), ("holder-task", "waiter-task")):
            entered = asyncio.Event()
            await asyncio.gather(
                asyncio.create_task(slow_holding_task(shared_lock, entered), name=holder),
                asyncio.create_task(waiting_task(shared_lock, entered), name=waiter))

    asyncio.run(main())
    paths = ddlock.flush()
    ddlock.stop()
    print(json.dumps(paths))
"""


@pytest.mark.parametrize("make", ["asyncio.Lock()", "asyncio.Semaphore(1)", "asyncio.Condition()"])
def test_asyncio_wait_names_the_holder_task(tmp_path, make):
    prefix = str(tmp_path / "prof")
    proc = run_python(ASYNC_HOLD_AND_WAIT % dict(prefix=prefix, make=make))
    profile = testing.merge_profiles([testing.parse_profile(p)
                                      for p in json.loads(proc.stdout.strip().splitlines()[-1])])
    waits = [s for s in profile.samples_with_value("lock-acquire-wait")
             if s.labels.get("task name") == "waiter-task"]
    assert waits and profile.total("lock-acquire-wait", waits) >= 0.2e9, profile.samples
    for s in waits:
        assert s.labels["holder task name"] == "holder-task"
        assert isinstance(s.labels["holder task id"], int)
        assert s.labels["holder task id"] != s.labels["task id"]


@pytest.mark.no_sanitize  # forks while the watchdog thread runs (as test_watchdog_after_fork)
def test_watchdog_has_no_frame_while_idle():
    """The stuck-lock watchdog waits in C: the program's
    sys._current_frames() (here and in a forked child right after fork,
    as CPython's test_clear_threads_states_after_fork checks) holds only the
    program's own threads while it is idle. A Python loop there showed up
    as a second thread, and a child saw it when the watchdog, restarted by
    the at-fork handler, got the GIL first (under load)."""
    proc = run_python("""
        import os, sys, threading, time, ddlock
        ddlock.start(upload_enabled=False, lock_stuck_s=0.2)
        time.sleep(0.35)             # the watchdog has looked at least once
        print("PARENT", len(sys._current_frames()))
        pid = os.fork()
        if pid == 0:
            time.sleep(0.3)          # the child's own watchdog runs, idle
            os._exit(51 if len(sys._current_frames()) == 1 else 52)
        _, status = os.waitpid(pid, 0)
        print("CHILD", os.WEXITSTATUS(status))
        lock = threading.Lock()
        lock.acquire()
        t = threading.Thread(target=lambda: lock.acquire(timeout=0.6), name="still-waiting")
        t.start(); t.join()
        ddlock.stop()
    """)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert out == {"PARENT": "1", "CHILD": "51"}, (proc.stdout, proc.stderr)
    # and it still watches
    assert proc.stderr.count("is stuck") == 1 and "still-waiting" in proc.stderr, proc.stderr
