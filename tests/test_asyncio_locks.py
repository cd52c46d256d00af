"""asyncio.Lock, Semaphore, BoundedSemaphore and Condition, profiled.

Semantics: in one fresh interpreter and one event loop, each scenario runs
on an unprofiled object and on a profiled one of the same class; return values, exception
types and messages, and the order in which tasks get the lock must be the
same. Profiles: the scenario functions at the bottom run as a script; the
waiting task's wait is the holder's hold, samples carry ``task id`` /
``task name`` and the coroutine chain, and the ``lock type`` label.
"""

import os

import pytest

from _primitives_util import lock_types_of, run_scenario, run_snippet, scenario_main
from ddlock import testing
from ddlock.testing import LineMarkers, LockAcquireEvent, LockReleaseEvent

FILENAME = os.path.basename(__file__)
HERE = os.path.abspath(__file__)
KINDS = ["Lock", "Semaphore", "BoundedSemaphore"]


def assert_same(res):
    diffs = {k: (res["native"][k], res["profiled"].get(k)) for k in res["native"]
             if res["native"][k] != res["profiled"].get(k)}
    assert not diffs, "profiled differs from native:\n" + "\n".join(
        "  %s: native=%r profiled=%r" % (k, a, b) for k, (a, b) in sorted(diffs.items()))
    assert set(res["native"]) == set(res["profiled"])


LOCK_SNIPPET = r'''
import inspect
import warnings
warnings.simplefilter("ignore", DeprecationWarning)
start()


async def scenario(cls, make):
    out = {}
    out["create_positional"] = outcome(make, "x")
    out["create_negative"] = outcome(make, -1)
    out["create_loop_kw"] = outcome(lambda: make(loop=None).locked())
    lk = make()
    out["locked0"] = lk.locked()
    out["acquire"] = await aoutcome(lk.acquire())
    out["locked1"] = lk.locked()
    out["repr_held"] = norepr(lk)
    out["release"] = outcome(lk.release)
    out["release_again"] = outcome(lk.release)
    out["repr_free"] = norepr(lk)
    async with lk as entered:
        out["with_value"] = entered
        out["locked_in_with"] = lk.locked()
    out["locked_after_with"] = lk.locked()
    out["acquire_args"] = outcome(lambda: lk.acquire(True))

    # two tasks: the second waits for the first, FIFO after it
    lk = make()
    order = []

    async def holder():
        async with lk:
            order.append("h1")
            await asyncio.sleep(0.05)
            order.append("h2")

    async def waiter(name):
        await asyncio.sleep(0)
        async with lk:
            order.append(name)

    await asyncio.gather(holder(), waiter("w1"), waiter("w2"))
    out["order"] = order
    out["free_after_gather"] = lk.locked()

    # a waiting acquire cancelled: the lock stays usable
    lk = make()
    await lk.acquire()
    task = asyncio.ensure_future(lk.acquire())
    await asyncio.sleep(0.01)
    task.cancel()
    out["cancelled"] = (await aoutcome(task))[:2]
    lk.release()
    out["locked_after_cancel"] = lk.locked()
    out["acquire_after_cancel"] = await aoutcome(lk.acquire())
    lk.release()

    # wait_for and create_task around acquire()
    await lk.acquire()
    out["wait_for_timeout"] = (await aoutcome(asyncio.wait_for(lk.acquire(), 0.02)))[:2]
    lk.release()
    out["wait_for_free"] = await aoutcome(asyncio.wait_for(lk.acquire(), 1))
    lk.release()
    out["create_task"] = await aoutcome(asyncio.create_task(lk.acquire()))
    lk.release()

    # introspection
    coro = lk.acquire()
    out["iscoroutine"] = [inspect.iscoroutine(coro), asyncio.iscoroutine(coro),
                          type(coro).__name__, coro.__qualname__]
    out["acquire_coro"] = await aoutcome(coro)
    lk.release()
    out["iscoroutinefunction"] = [inspect.iscoroutinefunction(lk.acquire),
                                  asyncio.iscoroutinefunction(lk.acquire),
                                  inspect.iscoroutinefunction(cls.acquire)]
    out["signature"] = [str(inspect.signature(lk.acquire)), str(inspect.signature(lk.release))]
    out["pickle_bound"] = outcome(pickle.dumps, lk)[:2]  # bound to the loop now (3.10+)
    out["copy"] = outcome(lambda: copy.copy(lk).locked())
    fresh = make()
    def roundtrip():
        x = pickle.loads(pickle.dumps(fresh))
        return [type(x).__module__, type(x).__qualname__, x.locked(), tracked(x)]

    out["pickle"] = outcome(roundtrip)
    out["pickle_v1"] = outcome(lambda: type(pickle.loads(pickle.dumps(fresh, 1))).__qualname__)
    out["isinstance"] = [isinstance(lk, cls), isinstance(lk, asyncio.Semaphore)]
    out["type"] = [type(lk).__module__, type(lk).__qualname__]
    if PY >= (3, 10):
        out["or_none"] = [str(cls | None), isinstance(lk, cls | None), isinstance(None, cls | None)]
    return out


def native(*a, **k):
    obj = unprofiled(AORIG[KIND], *a, **k)
    assert not tracked(obj)
    return obj


def profiled(*a, **k):
    obj = getattr(asyncio, KIND)(*a, **k)
    assert tracked(obj), type(obj)
    return obj


async def main():
    return {"native": await scenario(AORIG[KIND], native),
            "profiled": await scenario(getattr(asyncio, KIND), profiled)}


emit(asyncio.run(main()))
'''


@pytest.mark.parametrize("kind", KINDS)
def test_asyncio_lock_semantics(kind):
    res = run_snippet(LOCK_SNIPPET, params={"KIND": kind})
    assert_same(res)
    native = res["native"]
    assert native["order"] == (["h1", "h2", "w1", "w2"] if kind == "Lock" else native["order"])
    if kind == "Lock":
        assert native["release_again"] == ["raise", "RuntimeError", "Lock is not acquired."]
    if kind == "BoundedSemaphore":
        assert native["release_again"] == ["raise", "ValueError",
                                           "BoundedSemaphore released too many times"]
    assert native["cancelled"] == ["raise", "CancelledError"]
    assert native["iscoroutine"][:2] == [True, True]


CONDITION_SNIPPET = r'''
import inspect
start()


async def scenario(cls, make):
    out = {}
    c = make()
    out["wait_unowned"] = await aoutcome(c.wait())
    out["wait_for_unowned"] = await aoutcome(c.wait_for(lambda: True))
    out["notify_unowned"] = outcome(c.notify)
    out["notify_all_unowned"] = outcome(c.notify_all)
    out["release_unowned"] = outcome(c.release)
    out["locked0"] = c.locked()
    async with c as entered:
        out["with_value"] = entered
        out["locked"] = c.locked()
        out["notify_nobody"] = outcome(c.notify)
        out["wait_for_true"] = await aoutcome(c.wait_for(lambda: 7))
    out["acquire"] = await aoutcome(c.acquire())
    out["release"] = outcome(c.release)

    state = []

    async def waiter(name):
        async with c:
            r = await c.wait()
            state.append((name, r, c.locked()))

    tasks = [asyncio.ensure_future(waiter(n)) for n in ("a", "b")]
    await asyncio.sleep(0.01)
    async with c:
        c.notify()
    await asyncio.sleep(0.01)
    out["after_notify"] = list(state)
    async with c:
        c.notify_all()
    await asyncio.gather(*tasks)
    out["after_notify_all"] = state

    # a cancelled wait() re-acquires before raising
    async def cancelled_waiter():
        async with c:
            try:
                await c.wait()
            except asyncio.CancelledError:
                out["locked_in_cancel"] = c.locked()
                raise

    task = asyncio.ensure_future(cancelled_waiter())
    await asyncio.sleep(0.01)
    task.cancel()
    out["cancelled"] = (await aoutcome(task))[:2]
    out["locked_end"] = c.locked()
    out["iscoroutinefunction"] = [inspect.iscoroutinefunction(c.acquire),
                                  asyncio.iscoroutinefunction(c.acquire),
                                  inspect.iscoroutinefunction(c.wait)]
    out["isinstance"] = [isinstance(c, cls), isinstance(c._lock, asyncio.Lock)]
    out["type"] = [type(c).__module__, type(c).__qualname__, type(c._lock).__qualname__]
    return out


def native():
    lock = None if LOCK == "default" else unprofiled(AORIG["Lock"])
    c = unprofiled(AORIG["Condition"]) if lock is None else unprofiled(AORIG["Condition"], lock)
    assert not tracked(c)
    return c


def profiled():
    lock = None if LOCK == "default" else unprofiled(AORIG["Lock"])
    c = asyncio.Condition() if lock is None else asyncio.Condition(lock)
    assert tracked(c), type(c)
    return c


async def main():
    return {"native": await scenario(AORIG["Condition"], native),
            "profiled": await scenario(asyncio.Condition, profiled)}


emit(asyncio.run(main()))
'''


@pytest.mark.parametrize("lock", ["default", "native_lock"])
def test_asyncio_condition_semantics(lock):
    res = run_snippet(CONDITION_SNIPPET, params={"LOCK": lock})
    assert_same(res)
    native = res["native"]
    assert native["wait_unowned"] == ["raise", "RuntimeError", "cannot wait on un-acquired lock"]
    assert native["notify_unowned"] == ["raise", "RuntimeError", "cannot notify on un-acquired lock"]
    assert native["after_notify"] == [["a", True, True]]
    assert native["locked_in_cancel"] is True


def test_condition_over_profiled_lock_is_not_profiled_again():
    res = run_snippet(r'''
out = {}
start()
lock = asyncio.Lock()
cond = asyncio.Condition(lock)
out["over_profiled"] = [tracked(lock), tracked(cond), type(cond) is AORIG["Condition"]]
ddlock.stop()
out["restored"] = [asyncio.Lock is AORIG["Lock"], asyncio.Semaphore is AORIG["Semaphore"],
                   asyncio.BoundedSemaphore is AORIG["BoundedSemaphore"],
                   asyncio.Condition is AORIG["Condition"]]
emit(out)
''')
    assert res["over_profiled"] == [True, False, True]
    assert res["restored"] == [True] * 4


def test_asyncio_imported_after_start(prefix):
    from conftest import run_python

    proc = run_python(r'''
import sys, threading
import ddlock
ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
assert "asyncio" not in sys.modules
watchers = [f for f in sys.meta_path if type(f).__name__ == "_PostImportHooks"]
assert len(watchers) == 1, sys.meta_path
import asyncio
from ddlock import _primitives
assert "asyncio" not in watchers[0].hooks  # done; gevent.events may still come
assert asyncio.Lock.__module__ == "asyncio.locks"


async def main():
    late_lock = asyncio.Lock()
    assert _primitives.tracker_of(late_lock) is not None
    async with late_lock:
        pass
    # a threading lock taken inside a task carries the task too
    thread_lock = threading.Lock()
    with thread_lock:
        pass

asyncio.run(main())
ddlock.stop()
print("OK", asyncio.Lock is asyncio.locks.Lock)
''', args=(prefix,))
    assert "OK True" in proc.stdout
    profile = testing.parse_merged_profile(prefix)
    late = [s for s in profile.samples if str(s.labels.get("lock name")).endswith(":late_lock")]
    assert late and lock_types_of(late) == ["asyncio.Lock"]
    assert {s.labels.get("task name") for s in late} == {"Task-1"}
    thread = [s for s in profile.samples if str(s.labels.get("lock name")).endswith(":thread_lock")]
    assert thread and lock_types_of(thread) == ["Lock"]
    assert all(isinstance(s.labels.get("task id"), int) for s in thread)


# ---------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------

def check(profile, key, lock_name, caller, lock_type, count=1, acquire=True, release=True,
          **fields):
    __tracebackhide__ = True
    markers = LineMarkers.for_file(HERE)
    linenos = markers.linenos(key)
    for name in ("acquire_line", "release_line"):
        if name in fields:
            linenos = linenos._replace(**{name[:-5]: fields.pop(name)})
    common = dict(caller_name=caller, filename=FILENAME, linenos=linenos, lock_name=lock_name,
                  count=count, **fields)
    matched = testing.assert_lock_events(
        profile,
        expected_acquire_events=[LockAcquireEvent(**common)] if acquire else [],
        expected_release_events=[LockReleaseEvent(**common)] if release else [],
    )
    for samples in matched:
        assert lock_types_of(samples) == [lock_type]
    return matched


def test_two_tasks_contending(prefix):
    profile = run_scenario(HERE, "scenario_contention", prefix)
    holder = check(profile, "holder", "shared_lock", "hold_shared", "asyncio.Lock",
                   task_name="holder-task")
    waiter = check(profile, "waiter", "shared_lock", "wait_shared", "asyncio.Lock",
                   task_name="waiter-task")
    hold = profile.total("lock-release-hold", holder[1])
    wait = profile.total("lock-acquire-wait", waiter[0])
    assert 0.18e9 <= hold < 0.5e9, hold
    # the waiting task waited for the other's hold
    assert wait >= 0.15e9 and abs(hold - wait) < 0.05e9, (hold, wait)
    assert profile.total("lock-acquire-wait", holder[0]) < 0.01e9
    ids = {s.labels["task id"] for s in holder[0] + waiter[0]}
    assert len(ids) == 2 and all(isinstance(i, int) and i > 0 for i in ids)
    # the coroutine chain: the task's coroutine awaits the acquiring one
    for s in waiter[0]:
        names = [f.function_name.rsplit(".", 1)[-1] for f in s.frames]
        assert names[:2] == ["wait_shared", "waiter_task_body"], names


def test_asyncio_names_and_lock_types(prefix):
    profile = run_scenario(HERE, "scenario_names", prefix)
    check(profile, "request_slots", "request_slots", "scenario_names_main", "asyncio.Semaphore",
          task_name="main-task")
    check(profile, "db_budget", "db_budget", "scenario_names_main", "asyncio.BoundedSemaphore",
          task_name="main-task")
    check(profile, "state_lock", "state_lock", "inner_step", "asyncio.Lock",
          task_name="main-task")
    chain = testing.get_samples_with_label(profile, "lock type", "asyncio.Lock")
    for s in chain:
        names = [f.function_name.rsplit(".", 1)[-1] for f in s.frames]
        assert names[:3] == ["inner_step", "outer_step", "scenario_names_main"], names
    markers = LineMarkers.for_file(HERE)
    wait_line = markers.line("WAIT", "new_data")
    check(profile, "new_data", "new_data", "consume", "asyncio.Condition", task_name="consumer")
    check(profile, "new_data", "new_data", "consume", "asyncio.Condition", task_name="consumer",
          acquire_line=wait_line, release_line=wait_line)
    assert lock_types_of(profile.samples) == ["asyncio.BoundedSemaphore", "asyncio.Condition",
                                              "asyncio.Lock", "asyncio.Semaphore"]


# ---------------------------------------------------------------------------
# Scenarios (run as a script: python test_asyncio_locks.py NAME PREFIX)
# ---------------------------------------------------------------------------

def _start(prefix):
    import ddlock

    ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False)


async def hold_shared(shared_lock, entered):
    await shared_lock.acquire()  # !ACQUIRE! holder
    entered.set()
    await asyncio.sleep(0.2)
    shared_lock.release()  # !RELEASE! holder


async def wait_shared(shared_lock, entered):
    await entered.wait()
    await shared_lock.acquire()  # !ACQUIRE! waiter
    shared_lock.release()  # !RELEASE! waiter


async def waiter_task_body(shared_lock, entered):
    await wait_shared(shared_lock, entered)


async def contention_main():
    shared_lock = asyncio.Lock()  # !CREATE! holder !CREATE! waiter
    entered = asyncio.Event()
    await asyncio.gather(
        asyncio.create_task(hold_shared(shared_lock, entered), name="holder-task"),
        asyncio.create_task(waiter_task_body(shared_lock, entered), name="waiter-task"))


def scenario_contention(prefix):
    import ddlock

    _start(prefix)
    asyncio.run(contention_main())
    ddlock.stop()


async def inner_step(state_lock):
    async with state_lock:  # !ACQUIRE! !RELEASE[>=3.10]! state_lock
        pass  # !RELEASE[<3.10]! state_lock


async def outer_step(state_lock):
    await inner_step(state_lock)


async def consume(new_data, items):
    async with new_data:  # !ACQUIRE! !RELEASE[>=3.10]! new_data
        await new_data.wait()  # !WAIT! new_data
        items.pop()  # !RELEASE[<3.10]! new_data


async def scenario_names_main():
    request_slots = asyncio.Semaphore(2)  # !CREATE! request_slots
    db_budget = asyncio.BoundedSemaphore(1)  # !CREATE! db_budget
    state_lock = asyncio.Lock()  # !CREATE! state_lock
    new_data = asyncio.Condition()  # !CREATE! new_data
    await request_slots.acquire()  # !ACQUIRE! request_slots
    request_slots.release()  # !RELEASE! request_slots
    await db_budget.acquire()  # !ACQUIRE! db_budget
    db_budget.release()  # !RELEASE! db_budget
    await outer_step(state_lock)
    items = []
    consumer = asyncio.create_task(consume(new_data, items), name="consumer")
    await asyncio.sleep(0.02)
    async with new_data:
        items.append(1)
        new_data.notify()
    await consumer


def scenario_names(prefix):
    import ddlock

    _start(prefix)

    async def runner():
        await asyncio.create_task(scenario_names_main(), name="main-task")

    asyncio.run(runner())
    ddlock.stop()


import asyncio  # noqa: E402  (the scenarios' module global)

if __name__ == "__main__":
    scenario_main(globals())
