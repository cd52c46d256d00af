"""Condition waits (issue 25): time spent inside Condition.wait() and what
waits through a Condition (Event, queue.Queue, Barrier, Future; asyncio's
Condition, Event and Queue) as condition-wait / condition-wait-time,
named by the waited object's binding, with the waiter's stack and a
`wait outcome` label. Each program runs in a fresh interpreter."""

import re
import json

import pytest

from conftest import run_python
from ddlock import testing

CW, CWT = testing.CONDITION_WAIT, testing.CONDITION_WAIT_TIME


def waits(profile, suffix=None, **labels):
    out = []
    for s in profile.samples:
        if profile.sample_value(s, CW) == 0 and profile.sample_value(s, CWT) == 0:
            continue
        if suffix is not None and not str(s.labels.get("lock name", "")).endswith(suffix):
            continue
        if any(s.labels.get(k) != v for k, v in labels.items()):
            continue
        out.append(s)
    return out


def functions(sample):
    return [f.function_name for f in sample.frames]


def result_of(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


POOL = """
    import json, queue, sys, threading, time
    import ddlock
    ddlock.start(output_pprof=sys.argv[1], capture_pct=float(sys.argv[2]), sampling_seed=25,
                 upload_enabled=False)
    connections = queue.Queue()
    for i in range(2):
        connections.put(i)
    measured = {}

    def worker(n):
        total = 0.0
        for _ in range(4):
            t0 = time.monotonic()
            item = connections.get()
            total += time.monotonic() - t0
            time.sleep(0.05)
            connections.put(item)
        measured[threading.current_thread().name] = total

    threads = [threading.Thread(target=worker, args=(i,), name="w%d" % i) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ddlock.stop()
    print(json.dumps(measured))
"""


def check_pool(profile, measured, tolerance):
    ours = waits(profile, ":not_empty", **{"lock type": "Condition"})
    assert ours, sorted(set(testing.get_lock_names(profile)))
    # the getter's stack: Queue.get called by worker (no threading.py frame)
    for s in ours:
        names = functions(s)
        assert names[0].endswith("get") and any(n.endswith("worker") for n in names[:3]), names
        assert s.labels.get("wait outcome") == "notified"
    # per thread: the profile's wait against the time measured around get()
    total_profiled = total_measured = 0
    for thread, seconds in measured.items():
        mine = [s for s in ours if s.labels.get("thread name") == thread]
        total_profiled += profile.total(CWT, mine)
        total_measured += seconds * 1e9
    assert total_measured > 0.5e9, measured  # 6 threads sharing 2 items: they waited
    assert abs(total_profiled - total_measured) <= tolerance * total_measured, (
        total_profiled, total_measured)
    # the wait counts are the gets that waited (weighted)
    assert 0 < profile.total(CW, ours) <= 24


@pytest.mark.parametrize("pct,tolerance", [(100, 0.10), (1, 0.25)])
def test_queue_pool_wait_matches_measured(prefix, pct, tolerance):
    proc = run_python(POOL, args=(prefix, str(pct)), timeout=120)
    check_pool(testing.parse_merged_profile(prefix), result_of(proc), tolerance)


SQLALCHEMY = """
    import json, os, sys, threading, time
    import ddlock
    ddlock.start(output_pprof=sys.argv[1], capture_pct=float(sys.argv[2]), sampling_seed=25,
                 upload_enabled=False)
    import sqlalchemy
    from sqlalchemy.pool import QueuePool
    engine = sqlalchemy.create_engine("sqlite:///" + os.path.join(sys.argv[3], "db.sqlite"),
                                      poolclass=QueuePool, pool_size=2, max_overflow=0,
                                      pool_timeout=60)
    measured = {}

    def handle_request():
        t0 = time.monotonic()
        conn = engine.connect()
        waited = time.monotonic() - t0
        try:
            conn.execute(sqlalchemy.text("select 1"))
            time.sleep(0.05)
        finally:
            conn.close()
        return waited

    def worker():
        total = 0.0
        for _ in range(4):
            total += handle_request()
        measured[threading.current_thread().name] = total

    with engine.connect():
        pass  # the pool's first connection, made before the threads
    threads = [threading.Thread(target=worker, name="w%d" % i) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ddlock.stop()
    print(json.dumps(measured))
"""


@pytest.mark.parametrize("pct,tolerance", [(100, 0.10), (1, 0.25)])
def test_sqlalchemy_queue_pool_exhausted(prefix, tmp_path, pct, tolerance):
    pytest.importorskip("sqlalchemy")
    proc = run_python(SQLALCHEMY, args=(prefix, str(pct), str(tmp_path)), timeout=120)
    measured = result_of(proc)
    profile = testing.parse_merged_profile(prefix)
    ours = waits(profile, ":not_empty", **{"lock type": "Condition"})
    assert ours, sorted(set(testing.get_lock_names(profile)))
    # under the pool's Condition (sqlalchemy/util/queue.py) with the checkout stack
    assert all(str(s.labels["lock name"]).startswith("queue.py:") for s in ours)
    assert all(s.frames[0].filename.endswith("queue.py") for s in ours)
    for s in ours:
        names = functions(s)
        assert any(n.endswith("_do_get") for n in names), names
        assert any(n.endswith("handle_request") for n in names), names
    total_profiled = profile.total(CWT, ours)
    total_measured = sum(measured.values()) * 1e9
    assert total_measured > 0.5e9, measured
    # the checkout does a little more than wait (the pool's bookkeeping,
    # the connection's checkout events): the profiled wait is at most the
    # measured one, and most of it
    assert (1 - tolerance) * total_measured <= total_profiled <= 1.02 * total_measured, (
        total_profiled, total_measured)


def test_event_outcome_timeout_and_notified(prefix):
    run_python("""
        import sys, threading, ddlock
        ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
        never_set = threading.Event()
        assert never_set.wait(0.2) is False
        gets_set = threading.Event()
        threading.Timer(0.1, gets_set.set).start()
        assert gets_set.wait(5) is True
        already_set = threading.Event()
        already_set.set()
        assert already_set.wait(5) is True  # no wait: nothing recorded
        ddlock.stop()
    """, args=(prefix,))
    profile = testing.parse_merged_profile(prefix)
    timeout = waits(profile, ":never_set")
    assert [s.labels.get("wait outcome") for s in timeout] == ["timeout"]
    assert [s.labels.get("lock type") for s in timeout] == ["Event"]
    assert 0.18e9 <= profile.total(CWT, timeout) < 1e9
    assert profile.total(CW, timeout) == 1
    notified = waits(profile, ":gets_set")
    assert [s.labels.get("wait outcome") for s in notified] == ["notified"]
    assert 0.05e9 <= profile.total(CWT, notified) < 1e9
    assert functions(notified[0])[0] == "<module>"
    assert not waits(profile, ":already_set")
    # the Event's inner Condition and lock are not reported of their own
    assert {str(s.labels.get("lock name")).rsplit(":", 1)[-1] for s in waits(profile)} == \
        {"never_set", "gets_set"}


def test_condition_wait_for_barrier_and_future(prefix):
    run_python("""
        import sys, threading, time, ddlock
        from concurrent.futures import ThreadPoolExecutor
        ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
        jobs_ready = threading.Condition()
        ready = []

        def producer():
            time.sleep(0.1)
            with jobs_ready:
                ready.append(1)
                jobs_ready.notify_all()

        threading.Thread(target=producer).start()
        with jobs_ready:
            assert jobs_ready.wait_for(lambda: ready, timeout=5)
        with jobs_ready:
            assert jobs_ready.wait(0.05) is False
        start_line = threading.Barrier(2)
        t = threading.Thread(target=lambda: (time.sleep(0.1), start_line.wait()))
        t.start()
        start_line.wait()
        t.join()
        with ThreadPoolExecutor(1) as ex:
            report = ex.submit(time.sleep, 0.1)
            report.result()
        ddlock.stop()
    """, args=(prefix,))
    profile = testing.parse_merged_profile(prefix)
    cond = waits(profile, ":jobs_ready", **{"lock type": "Condition"})
    outcomes = sorted(s.labels.get("wait outcome") for s in cond)
    assert "notified" in outcomes and "timeout" in outcomes, outcomes
    assert 0.1e9 <= profile.total(CWT, cond) < 1e9
    barrier = waits(profile, ":start_line", **{"lock type": "Barrier"})
    assert barrier and 0.05e9 <= profile.total(CWT, barrier) < 1e9
    future = waits(profile, **{"lock type": "Future"})
    assert future and 0.05e9 <= profile.total(CWT, future) < 1e9
    # made by the executor (an excluded module): no binding of the user's
    assert {s.labels.get("lock name") for s in future} == {"concurrent.futures.Future"}
    assert any(any(n.endswith("result") for n in functions(s)) for s in future)


def test_asyncio_condition_event_queue_per_task(prefix):
    run_python("""
        import asyncio, sys, ddlock
        ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)

        async def main():
            go = asyncio.Event()
            results = asyncio.Queue()
            bounded = asyncio.Queue(maxsize=1)
            changed = asyncio.Condition()

            async def waiter():
                await go.wait()
                async with changed:
                    await changed.wait()
                await bounded.put(1)
                await bounded.put(2)  # waits for the getter
                return await results.get()

            task = asyncio.ensure_future(waiter())
            task.set_name("the-waiter") if hasattr(task, "set_name") else None
            await asyncio.sleep(0.1)
            go.set()
            await asyncio.sleep(0.1)
            async with changed:
                changed.notify_all()
            await asyncio.sleep(0.1)
            assert await bounded.get() == 1
            await asyncio.sleep(0.1)
            results.put_nowait("done")
            assert await task == "done"
            assert go.is_set() and await go.wait() is True  # set: no wait
            never = asyncio.Event()
            try:
                await asyncio.wait_for(never.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

        asyncio.run(main())
        ddlock.stop()
    """, args=(prefix,))
    profile = testing.parse_merged_profile(prefix)
    for suffix, kind, outcome in ((":go", "asyncio.Event", "notified"),
                                  (":changed", "asyncio.Condition", "notified"),
                                  (":bounded", "asyncio.Queue", "notified"),
                                  (":results", "asyncio.Queue", "notified"),
                                  (":never", "asyncio.Event", "cancelled")):
        mine = waits(profile, suffix)
        assert [s.labels.get("lock type") for s in mine] == [kind], (suffix, mine)
        assert [s.labels.get("wait outcome") for s in mine] == [outcome], suffix
        assert 0.05e9 <= profile.total(CWT, mine) < 1e9, suffix
        assert profile.total(CW, mine) == 1, suffix
        assert mine[0].labels.get("task name"), suffix
    assert {s.labels.get("task name") for s in waits(profile, ":go")} == {"the-waiter"}


def test_switch_off(prefix):
    run_python("""
        import queue, sys, threading, time, ddlock
        ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
        jobs = queue.Queue()
        threading.Timer(0.05, jobs.put, (1,)).start()
        jobs.get()
        ev = threading.Event()
        ev.wait(0.05)
        with jobs.mutex:  # the Queue's lock is still profiled
            pass
        ddlock.stop()
    """, args=(prefix,), env={"DD_PROFILING_LOCK_CONDITION_WAIT": "false"})
    profile = testing.parse_merged_profile(prefix)
    assert not waits(profile)
    assert profile.total("lock-acquire") > 0


def test_hooks_removed_at_stop():
    proc = run_python("""
        import asyncio, queue, threading, ddlock
        from ddlock import _ddlock
        ddlock.start(capture_pct=100, upload_enabled=False)
        on = [isinstance(vars(c)[n], _ddlock.Hook) for c, n in
              ((threading.Condition, "wait"), (threading.Event, "__init__"),
               (asyncio.Event, "wait"), (asyncio.Queue, "get"))]
        ddlock.stop()
        off = [isinstance(vars(c)[n], _ddlock.Hook) for c, n in
               ((threading.Condition, "wait"), (threading.Event, "__init__"),
                (asyncio.Event, "wait"), (asyncio.Queue, "get"))]
        print(on, off)
    """)
    assert proc.stdout.strip() == "[True, True, True, True] [False, False, False, False]"


def test_report_section_svg_and_go_pprof(prefix, tmp_path):
    import shutil
    import subprocess

    run_python(POOL, args=(prefix, "100"))
    # python -m ddlock report: condition waits in their own section, not
    # among the locks; the flame graph of condition-wait-time
    svg = str(tmp_path / "waits.svg")
    proc = run_python("""
        import sys
        from ddlock.__main__ import main
        sys.exit(main(["report", sys.argv[1], "--svg", sys.argv[2],
                       "--value", "condition-wait-time"]))
    """, args=(prefix, svg))
    text = proc.stdout
    head, _, section = text.partition("Condition waits")
    assert section, text
    assert "not_empty" in section and "notified" in section
    # (qualified function names from 3.11 on)
    assert re.search(r"\bget +queue\.py:", section) and "worker" in section
    # the lock tables above list the queue's lock (mutex), not its Condition
    assert "not_empty" not in head.split("Top locks by wait", 1)[1].split("Hottest", 1)[0]
    with open(svg) as f:
        drawn = f.read()
    assert "condition wait time" in drawn and "not_empty" in drawn and "worker" in drawn
    # go tool pprof reads the new sample types
    go = shutil.which("go")
    assert go, "golang-go is installed by `make deps`"
    path = testing.list_profile_files(prefix)[0]
    raw = subprocess.run([go, "tool", "pprof", "-raw", path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    assert "condition-wait/count condition-wait-time/nanoseconds" in raw.stdout
    top = subprocess.run([go, "tool", "pprof", "-top", "-sample_index=condition-wait-time",
                          path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=120)
    assert top.returncode == 0, top.stderr
    assert "worker" in top.stdout and "get" in top.stdout
