"""The record memo: a sampled event whose raw stack and labels repeat an
earlier one's adds to that sample by ticket instead of capturing and
resolving its stack again. These tests check that it never changes what is
recorded: every difference in stack, line, lock, thread or task is its own
sample with exact counts, an export starts over, and nothing the program
owns is kept alive by it."""

import json

from conftest import run_python
from ddlock import testing


def samples_of(profile, line, **labels):
    """Samples of the lock created at line of the snippet (names are those
    of the parameter the lock is passed as: the creation line tells them
    apart) with these labels."""
    out = []
    for s in profile.samples:
        if not str(s.labels.get("lock name", "")).startswith("<string>:%d:" % line):
            continue
        if all(s.labels.get(k.replace("_", " ")) == v for k, v in labels.items()):
            out.append(s)
    return out


def by_stack(profile, samples, value_type):
    """{(leaf line, function names leaf first): total of value_type}"""
    totals = {}
    for s in samples:
        v = profile.sample_value(s, value_type)
        if v:
            frames = s.frames
            key = (frames[0].line, tuple(f.function_name.rsplit(".", 1)[-1] for f in frames))
            totals[key] = totals.get(key, 0) + v
    return totals


def test_every_difference_is_its_own_sample_with_exact_counts(prefix):
    out = run_python("""
        import json, sys, threading, ddlock
        ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
        memo_lock = threading.Lock(); memo_line = sys._getframe().f_lineno
        other_lock = threading.Lock(); other_line = sys._getframe().f_lineno

        def work(n, lk):
            for _ in range(n):
                lk.acquire()  # ACQ
                lk.release()  # REL

        def deeper(n, lk):
            work(n, lk)

        def outer_a(n, lk):  # stacks that differ below their second frame
            deeper(n, lk)

        def outer_b(n, lk):
            deeper(n, lk)

        work(300, memo_lock)
        threading.current_thread().name = "renamed"
        work(200, memo_lock)
        deeper(50, memo_lock)
        outer_a(9, memo_lock)
        outer_b(4, memo_lock)
        outer_a(2, memo_lock)
        work(100, other_lock)
        for _ in range(70):  # another line of another function
            memo_lock.acquire()
            memo_lock.release()
        stats = ddlock.stats()
        ddlock.stop()
        print(json.dumps([stats["events_sampled"], memo_line, other_line]))
    """, args=(prefix,))
    sampled, memo_line, other_line = json.loads(out.stdout.strip().splitlines()[-1])
    # every acquire and release of the two locks was recorded
    assert sampled >= 2 * (300 + 200 + 50 + 15 + 100 + 70)
    profile = testing.parse_merged_profile(prefix)
    acq_line = rel_line = None
    for s in samples_of(profile, memo_line):
        if profile.sample_value(s, "lock-acquire") and s.frames[0].function_name.endswith("work"):
            acq_line = s.frames[0].line
        if profile.sample_value(s, "lock-release") and s.frames[0].function_name.endswith("work"):
            rel_line = s.frames[0].line
    assert acq_line is not None and rel_line == acq_line + 1

    main = samples_of(profile, memo_line, thread_name="MainThread")
    assert by_stack(profile, main, "lock-acquire") == {
        (acq_line, ("work", "<module>")): 300}
    assert by_stack(profile, main, "lock-release") == {
        (rel_line, ("work", "<module>")): 300}

    renamed = samples_of(profile, memo_line, thread_name="renamed")
    acquires = by_stack(profile, renamed, "lock-acquire")
    releases = by_stack(profile, renamed, "lock-release")
    assert acquires.pop((acq_line, ("work", "<module>"))) == 200
    assert acquires.pop((acq_line, ("work", "deeper", "<module>"))) == 50
    assert acquires.pop((acq_line, ("work", "deeper", "outer_a", "<module>"))) == 11
    assert acquires.pop((acq_line, ("work", "deeper", "outer_b", "<module>"))) == 4
    assert releases.pop((rel_line, ("work", "<module>"))) == 200
    assert releases.pop((rel_line, ("work", "deeper", "<module>"))) == 50
    assert releases.pop((rel_line, ("work", "deeper", "outer_a", "<module>"))) == 11
    assert releases.pop((rel_line, ("work", "deeper", "outer_b", "<module>"))) == 4
    # what is left: the 70 taken by the module's own loop
    assert list(acquires.values()) == [70] and list(releases.values()) == [70]
    ((line_a, stack_a),) = acquires
    ((line_r, stack_r),) = releases
    assert stack_a == stack_r == ("<module>",) and line_r == line_a + 1

    other = samples_of(profile, other_line)
    assert profile.total("lock-acquire", other) == 100
    assert profile.total("lock-release", other) == 100
    assert {s.labels.get("thread name") for s in other} == {"renamed"}


def test_an_export_or_a_new_session_starts_over(prefix):
    run_python("""
        import sys, threading, ddlock
        def session(prefix, rounds):
            ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False)
            export_lock = threading.Lock()
            first_lock = threading.Lock()
            for i, n in enumerate(rounds):
                if i:
                    # the new table's first samples are another lock's, at
                    # the indexes export_lock's had in the previous table:
                    # a ticket of that table must not reach them
                    with first_lock:
                        pass
                for _ in range(n):
                    with export_lock:
                        pass
                ddlock.flush()
            ddlock.stop()
        session(sys.argv[1] + "a", (100, 40, 7))
        session(sys.argv[1] + "b", (11,))
    """, args=(prefix,))
    counts = []
    for p in (prefix + "a", prefix + "b"):
        for profile in testing.parse_profiles(p):
            row = []
            for name in (":export_lock", ":first_lock"):
                ours = [s for s in profile.samples
                        if str(s.labels.get("lock name")).endswith(name)]
                row.append((profile.total("lock-acquire", ours),
                            profile.total("lock-release", ours)))
            if row != [(0, 0), (0, 0)]:
                counts.append(row)
    assert counts == [[(100, 100), (0, 0)], [(40, 40), (1, 1)], [(7, 7), (1, 1)],
                      [(11, 11), (0, 0)]]


def test_tasks_are_told_apart_and_not_kept_alive(prefix):
    out = run_python("""
        import asyncio, gc, json, sys, weakref, ddlock
        ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
        refs = []

        async def worker(lk, n):
            refs.append(weakref.ref(asyncio.current_task()))
            for _ in range(n):
                async with lk:
                    await asyncio.sleep(0)

        async def main():
            task_lock = asyncio.Lock(); print(json.dumps(sys._getframe().f_lineno))
            await asyncio.gather(
                asyncio.create_task(worker(task_lock, 30), name="first-task"),
                asyncio.create_task(worker(task_lock, 20), name="second-task"))
            # one more task at the very same stack, named like the first
            await asyncio.create_task(worker(task_lock, 5), name="first-task")

        asyncio.run(main())
        gc.collect()
        alive = [r() is not None for r in refs]
        ddlock.stop()
        print(json.dumps(alive))
    """, args=(prefix,))
    line, alive = [json.loads(x) for x in out.stdout.strip().splitlines()[-2:]]
    assert alive == [False, False, False]
    profile = testing.parse_merged_profile(prefix)
    first = samples_of(profile, line, task_name="first-task")
    second = samples_of(profile, line, task_name="second-task")
    assert profile.total("lock-acquire", first) == 35
    assert profile.total("lock-release", first) == 35
    assert profile.total("lock-acquire", second) == 20
    assert profile.total("lock-release", second) == 20
    # the two tasks named "first-task" are two task ids
    assert len({s.labels["task id"] for s in first}) == 2
