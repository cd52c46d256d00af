"""Lock-order checking (issue 19): ``ddlock.start(lock_order=True)``.

Every scenario runs in a fresh interpreter (tests/_subproc.py). Threads run
one after the other (started and joined in turn), so no scenario can
deadlock: the point of the check is to find the inversion from orders that
occurred once, without the deadlock happening.
"""

import textwrap

import pytest

from _subproc import run

HELPERS = r'''
import logging

records = []


class _Collect(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage(), record.threadName))


logging.getLogger("ddlock").addHandler(_Collect())


def seq(*fns):
    """Run each function in its own thread, one after the other."""
    for fn in fns:
        t = threading.Thread(target=fn)
        t.start()
        t.join()


def order_stats():
    return {k: v for k, v in ddlock.stats().items() if k.startswith("order_")}


def result(**extra):
    inv = ddlock.lock_order_inversions()
    every = ddlock.lock_order_inversions(same_class=True)
    out = {
        "inversions": [r["locks"] for r in inv],
        "leaves": [[e["stack"][0][2] if e["stack"] else None for e in r["edges"]]
                   for r in inv],
        "same": [r["locks"] for r in every if r["kind"] == "same-class"],
        "stats": order_stats(),
    }
    ddlock.stop()
    out["warnings"] = [m for lvl, m, _ in records if lvl == "WARNING"]
    out["log_threads"] = [t for lvl, m, t in records if lvl == "WARNING"]
    out.update(extra)
    return out
'''


def order_run(code, **kw):
    return run(textwrap.dedent(code), helpers=HELPERS, **kw)


def names(locks):
    """The variable names of "file:line:name" labels."""
    return sorted(label.rsplit(":", 1)[-1] for label in locks)


@pytest.mark.parametrize("kinds", [("Lock", "Lock"), ("Lock", "RLock"), ("RLock", "RLock")])
def test_classic_inversion_reported_with_both_names(kinds):
    res = order_run('''
        start(lock_order=True)
        first = getattr(threading, KINDS[0])()
        second = getattr(threading, KINDS[1])()

        def forward():
            with first:
                with second:
                    pass

        def backward():
            with second:
                with first:
                    pass

        seq(forward, backward)
        seq(forward, backward)  # reported once
        emit(result())
    ''', params={"KINDS": list(kinds)})
    assert [names(x) for x in res["inversions"]] == [["first", "second"]]
    # each edge with the stack where it was first seen: its leaf is the
    # function that took that order
    assert sorted(res["leaves"][0]) == ["backward", "forward"]
    assert res["stats"]["order_inversions"] == 1
    assert res["stats"]["order_edges"] == 2
    assert res["stats"]["order_held"] == 0
    assert len(res["warnings"]) == 1
    msg = res["warnings"][0]
    assert "lock-order inversion" in msg and ":first" in msg and ":second" in msg
    assert "in forward" in msg and "in backward" in msg


def test_three_lock_cycle_names_every_lock():
    res = order_run('''
        start(lock_order=True)
        a = threading.Lock()
        b = threading.Lock()
        c = threading.Lock()

        def ab():
            with a:
                with b:
                    pass

        def bc():
            with b:
                with c:
                    pass

        def ca():
            with c:
                with a:
                    pass

        seq(ab, bc, ca)
        emit(result())
    ''')
    assert [names(x) for x in res["inversions"]] == [["a", "b", "c"]]
    assert sorted(res["leaves"][0]) == ["ab", "bc", "ca"]


def test_consistent_order_and_rlock_reentry_give_no_report():
    res = order_run('''
        start(lock_order=True)
        a = threading.Lock()
        r = threading.RLock()

        def consistent():
            with r:
                with a:
                    with r:  # re-entry while a is held: no a -> r edge
                        pass
            with r:
                with r:
                    with a:
                        pass

        seq(consistent, consistent)
        emit(result())
    ''')
    assert res["inversions"] == [] and res["same"] == []
    assert res["warnings"] == []
    assert res["stats"]["order_edges"] == 1
    assert res["stats"]["order_held"] == 0


@pytest.mark.parametrize("lock", ["RLock", "Lock"])
def test_condition_wait_gives_no_report(lock):
    # Condition.wait releases its lock while waiting: if the held list kept
    # it, the later `with x` would record cond -> x, and the other thread's
    # x -> cond would close a false cycle.
    res = order_run('''
        start(lock_order=True)
        cond = threading.Condition(getattr(threading, LOCK)())
        x = threading.Lock()

        def wait_twice():
            cond.wait(0.01)
            cond.wait_for(lambda: False, 0.01)

        def waiter():
            with cond:
                if LOCK == "RLock":
                    with cond:   # wait releases every level
                        wait_twice()
                else:
                    wait_twice()
            with x:
                pass

        def other():
            with x:
                with cond:
                    cond.notify_all()

        seq(waiter, other)
        emit(result())
    ''', params={"LOCK": lock})
    assert res["inversions"] == []
    assert res["warnings"] == []
    assert res["stats"]["order_held"] == 0
    assert res["stats"]["order_edges"] == 1  # x -> cond


def test_try_acquire_adds_no_edge_but_is_held():
    res = order_run('''
        start(lock_order=True)
        a = threading.Lock()
        b = threading.Lock()
        c = threading.Lock()

        def forward():
            with a:
                with b:
                    pass

        def backward_try():
            with b:
                if a.acquire(False):      # cannot deadlock: no b -> a edge
                    a.release()
                if a.acquire(blocking=False):
                    a.release()

        seq(forward, backward_try)
        mid = order_stats()
        before = ddlock.lock_order_inversions()

        def try_then_block():
            # b taken by a try is still a held lock: b -> c is an edge
            if b.acquire(False):
                with c:
                    pass
                b.release()

        def c_then_b():
            with c:
                with b:
                    pass

        seq(try_then_block, c_then_b)
        emit(result(before=[r["locks"] for r in before], mid_edges=mid["order_edges"]))
    ''')
    assert res["before"] == []
    assert res["mid_edges"] == 1  # a -> b only
    assert [names(x) for x in res["inversions"]] == [["b", "c"]]


def test_lock_released_by_another_thread():
    # A Lock may be released by a thread that does not hold it: it leaves
    # its holder's list (else the holder's ident, reused by the next thread,
    # would carry a stale held lock into false edges).
    res = order_run('''
        start(lock_order=True)
        lk = threading.Lock()
        x = threading.Lock()
        seq(lambda: lk.acquire())
        held_after_acquire = order_stats()["order_held"]
        lk.release()
        held_after_release = order_stats()["order_held"]

        def takes_x():
            with x:
                pass

        def x_then_lk():
            with x:
                with lk:
                    pass

        seq(takes_x, x_then_lk)
        emit(result(held=[held_after_acquire, held_after_release]))
    ''')
    assert res["held"] == [1, 0]
    assert res["stats"]["order_foreign_releases"] == 1
    assert res["inversions"] == []


def test_semaphores_checked_like_locks():
    res = order_run('''
        start(lock_order=True)
        sem = threading.Semaphore(2)
        lk = threading.Lock()

        def twice():
            with sem:
                with sem:   # two slots by one holder: no self-report
                    with lk:
                        pass

        def signal():
            sem.acquire()   # taken here, released by the main thread

        seq(twice, signal)
        sem.release()
        held = order_stats()["order_held"]

        def backward():
            with lk:
                with sem:
                    pass

        seq(backward)
        emit(result(held=held))
    ''')
    assert res["held"] == 0
    assert res["same"] == []
    assert [names(x) for x in res["inversions"]] == [["lk", "sem"]]


def test_same_class_nesting_reported_separately():
    res = order_run('''
        start(lock_order=True)

        class Account(object):
            def __init__(self):
                self.lock = threading.Lock()

        one, two = Account(), Account()

        def transfer(src, dst):
            with src.lock:
                with dst.lock:
                    pass

        seq(lambda: transfer(one, two), lambda: transfer(two, one))
        emit(result())
    ''')
    assert res["inversions"] == []
    assert len(res["same"]) == 1
    assert names(res["same"][0]) == ["lock", "lock"]
    assert res["stats"]["order_same_class"] == 1
    assert len(res["warnings"]) == 1 and "same-class nesting" in res["warnings"][0]


def test_asyncio_locks_per_task():
    res = order_run('''
        import asyncio
        start(lock_order=True)

        async def main():
            a = asyncio.Lock()
            b = asyncio.Lock()
            gate = asyncio.Event()

            async def hold_a():
                async with a:
                    await gate.wait()     # suspended while holding a

            async def take_b():
                async with b:             # another task: no a -> b edge
                    pass

            t1 = asyncio.ensure_future(hold_a())
            await asyncio.sleep(0)
            await take_b()
            gate.set()
            await t1

            async def b_then_a():
                async with b:
                    async with a:
                        pass

            await asyncio.ensure_future(b_then_a())
            clean = ddlock.lock_order_inversions()

            async def a_then_b():
                async with a:
                    async with b:
                        pass

            await asyncio.ensure_future(a_then_b())
            return clean

        clean = asyncio.run(main())
        emit(result(clean=clean))
    ''')
    assert res["clean"] == []
    assert [names(x) for x in res["inversions"]] == [["a", "b"]]
    assert res["stats"]["order_held"] == 0


def test_caps_count_overflow():
    res = order_run('''
        _ddlock._order_set_caps(2, 1)
        start(lock_order=True)
        a = threading.Lock()
        b = threading.Lock()
        c = threading.Lock()

        def nest():
            with a:
                with b:       # the one edge allowed
                    pass
            with b:
                with a:       # past the edge cap: counted, not checked
                    pass
            with a:
                with c:       # c: past the class cap
                    pass

        seq(nest)
        emit(result())
    ''')
    st = res["stats"]
    assert st["order_classes"] == 2 and st["order_classes_overflow"] == 1
    assert st["order_edges"] == 1 and st["order_edges_overflow"] >= 1
    assert st["order_held"] == 0
    assert res["inversions"] == []


def test_report_is_logged_outside_the_acquire():
    # The application holds the logging handler's own (profiled, not
    # re-entrant) lock while it takes the inverted order. Logging from
    # inside that acquire would deadlock on the handler's lock; the report
    # is logged by the reporter thread once the lock is free. The
    # reporter's own acquires (the handler's lock, logging's) are not
    # checked.
    res = order_run('''
        start(lock_order=True)
        handler_lock = threading.Lock()
        seen = []

        class Guarded(logging.Handler):
            def emit(self, record):
                with handler_lock:
                    seen.append((record.getMessage(), threading.current_thread().name))

        logging.getLogger("ddlock").addHandler(Guarded())
        a = threading.Lock()
        b = threading.Lock()

        def forward():
            with a:
                with b:
                    pass

        def backward():
            with handler_lock:
                with b:
                    with a:
                        pass
                time.sleep(0.2)
                early = list(seen)
            return early

        seq(forward)
        box = []
        seq(lambda: box.append(backward()))
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        emit(result(early=box[0], seen=[t for _, t in seen]))
    ''', timeout=60)
    assert res["early"] == []
    assert res["seen"] == ["ddlock-lock-order"]
    assert [names(x) for x in res["inversions"]] == [["a", "b"]]
    assert res["stats"]["order_skipped"] >= 1  # the reporter's acquires


def test_enabled_from_environment_and_off_by_default():
    res = order_run('''
        start()
        off = "order_acquires" in ddlock.stats() and ddlock.stats()["order_acquires"]
        ddlock.stop()
        os.environ["DD_PROFILING_LOCK_ORDER"] = "true"
        start()
        a = threading.Lock()
        b = threading.Lock()
        with a:
            with b:
                pass
        with b:
            with a:
                pass
        emit(result(off=off))
    ''')
    assert not res["off"]
    assert [names(x) for x in res["inversions"]] == [["a", "b"]]


def test_lock_freed_while_held_leaves_the_list():
    res = order_run('''
        import gc
        start(lock_order=True)

        def leak():
            lk = threading.Lock()
            lk.acquire()

        leak()
        gc.collect()
        emit(result())
    ''')
    assert res["stats"]["order_held"] == 0
    assert res["stats"]["order_acquires"] == 1



def test_forked_child_checks_its_own_order():
    res = order_run('''
        start(lock_order=True)
        a = threading.Lock()
        b = threading.Lock()
        with a:
            with b:
                pass
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                with b:
                    with a:   # the child's own graph: b -> a alone
                        pass
                with a:
                    with b:
                        pass
                import json
                inv = ddlock.lock_order_inversions()
                ddlock.stop()
                os.write(w, json.dumps([x["locks"] for x in inv]).encode())
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        os.close(w)
        child = _json.loads(os.read(r, 65536).decode())
        emit(result(child=child))
    ''')
    assert res["inversions"] == []
    assert [names(x) for x in res["child"]] == [["a", "b"]]


# ---- the pytest plugin: --ddlock-lock-order -----------------------------------

pytest_plugins = ["pytester"]

SUITE = '''
import threading

a = threading.Lock()
b = threading.Lock()


def run(fn):
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_forward():
    def forward():
        with a:
            with b:
                pass
    run(forward)


def test_backward():
    def backward():
        with b:
            with a:
                pass
    run(backward)


def test_unrelated():
    assert True
'''


@pytest.fixture
def plugin_env(monkeypatch):
    from _subproc import python_env

    for key, value in python_env().items():
        monkeypatch.setenv(key, value)


def test_plugin_fails_the_session(pytester, plugin_env):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "ddlock.pytest_plugin", "--ddlock-lock-order")
    result.assert_outcomes(passed=3)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*ddlock lock order*",
        "found during test_suite.py::test_backward",
        "*lock-order inversion between 2 locks: test_suite.py:3:a -> test_suite.py:4:b -> test_suite.py:3:a",
        "*test_suite.py:16 in *forward",
        "*test_suite.py:24 in *backward",
        "ddlock lock order: 1 inversion(s), 0 same-class nesting(s)",
    ])


def test_plugin_fails_the_test(pytester, plugin_env):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "ddlock.pytest_plugin", "--ddlock-lock-order",
                                           "--ddlock-lock-order-fail=test")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_suite.py::test_backward*"])
    result.stdout.fnmatch_lines(["*1 lock-order inversion(s) found during call*"])


def test_plugin_passes_a_clean_suite(pytester, plugin_env):
    pytester.makepyfile(test_suite=SUITE.replace("with b:\n            with a:",
                                                 "with a:\n            with b:"))
    result = pytester.runpytest_subprocess("-p", "ddlock.pytest_plugin", "--ddlock-lock-order")
    result.assert_outcomes(passed=3)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["ddlock lock order: no inversion found"])


def test_plugin_off_by_default(pytester, plugin_env):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "ddlock.pytest_plugin")
    result.assert_outcomes(passed=3)
    assert result.ret == 0
    assert "ddlock lock order" not in result.stdout.str()
