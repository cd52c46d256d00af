"""threading.Semaphore, BoundedSemaphore and Condition as first-class
profiled primitives, profiled in place (ddlock/_primitives.py,
ext/hooks.c, ext/tracker.c).

Semantics: in one fresh interpreter, the same scenario runs on an
unprofiled object and on a profiled one of the same class; every return
value, exception type and message must be the same. Names and stacks: the
scenario functions at the bottom of this file run as a script (a fresh
interpreter each) and their ``# !CREATE!``/``# !ACQUIRE!``/``# !RELEASE!``
markers give the exact ``file:line:name`` label and leaf lines; every sample
also carries the ``lock type`` label.
"""

import os
import threading
import time

import pytest

from _primitives_util import lock_types_of, run_scenario, run_snippet, scenario_main
from conftest import locals_readable, run_python
from ddlock import testing
from ddlock.testing import LineMarkers, LockAcquireEvent, LockReleaseEvent

FILENAME = os.path.basename(__file__)
HERE = os.path.abspath(__file__)


def assert_same(res):
    diffs = {k: (res["native"][k], res["profiled"].get(k)) for k in res["native"]
             if res["native"][k] != res["profiled"].get(k)}
    assert not diffs, "profiled differs from native:\n" + "\n".join(
        "  %s: native=%r profiled=%r" % (k, a, b) for k, (a, b) in sorted(diffs.items()))
    assert set(res["native"]) == set(res["profiled"])


# ---------------------------------------------------------------------------
# Semantics
# ---------------------------------------------------------------------------

SEMAPHORE_SNIPPET = r'''
start()


def scenario(make):
    out = {}
    out["create_negative"] = outcome(make, -1)
    out["create_str"] = outcome(make, "x")
    out["create_too_many"] = outcome(make, 1, 2)
    out["create_kw"] = outcome(lambda: make(value=3)._value)
    s = make(2)
    out["acquire"] = outcome(s.acquire)
    out["acquire_false"] = outcome(s.acquire, False)
    out["acquire_false_empty"] = outcome(s.acquire, False)
    out["acquire_kw_false"] = outcome(s.acquire, blocking=False)
    r, dt = elapsed(s.acquire, timeout=0.05)
    out["acquire_timeout"] = r
    out["acquire_timeout_waited"] = dt >= 0.04
    out["acquire_timeout_pos"] = outcome(s.acquire, True, 0.01)
    out["acquire_timeout_zero"] = outcome(s.acquire, timeout=0)
    out["acquire_timeout_negative"] = outcome(s.acquire, timeout=-1)
    out["acquire_nonblocking_timeout"] = outcome(s.acquire, False, 1)
    out["acquire_bad_bool"] = outcome(s.acquire, BadBool())
    out["acquire_unknown_kw"] = outcome(s.acquire, foo=1)
    out["acquire_too_many"] = outcome(s.acquire, True, 1, 2)
    out["acquire_timeout_str"] = outcome(s.acquire, timeout="x")
    out["value_held"] = s._value
    out["release"] = outcome(s.release)
    out["release_n"] = outcome(s.release, 1)
    out["release_n_kw"] = outcome(s.release, n=1)
    out["release_over"] = outcome(s.release, 2)
    out["release_zero"] = outcome(s.release, 0)
    out["release_negative"] = outcome(s.release, -1)
    out["release_str"] = outcome(s.release, "x")
    out["release_too_many"] = outcome(s.release, 1, 2)
    out["release_unknown_kw"] = outcome(s.release, m=1)
    out["value_end"] = s._value
    with s as entered:
        out["with_value"] = entered
        out["value_in_with"] = s._value
    out["value_after_with"] = s._value
    out["enter"] = outcome(s.__enter__)
    out["exit"] = outcome(s.__exit__, None, None, None)
    out["exit_bad_args"] = outcome(s.__exit__)
    out["repr"] = norepr(s)
    # fails on the lock inside, with the lock's TypeError, although while
    # threading is patched the semaphore's own Condition (of the original
    # class) no longer is what its name leads to
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        out["pickle_%d" % proto] = outcome(pickle.dumps, s, proto)
        out["pickle_cond_%d" % proto] = outcome(pickle.dumps, s._cond, proto)
    c = copy.copy(s)
    out["copy"] = [c._value, c.acquire(False), c._cond is s._cond]
    cc = copy.copy(s._cond)
    out["copy_cond"] = [type(cc) is type(s._cond), cc._lock is s._cond._lock,
                        outcome(cc.acquire, False), outcome(cc.release)]
    out["deepcopy"] = outcome(copy.deepcopy, s)
    # a wait ended by another thread's release; release(n) wakes n waiters
    s0 = make(2)
    s0.acquire()
    s0.acquire()
    threading.Timer(0.05, s0.release).start()
    r, dt = elapsed(s0.acquire, timeout=10)
    out["woken"] = r
    s0.release()
    s0.acquire()
    out["woken_waited"] = dt >= 0.03
    got = []
    threads = [threading.Thread(target=lambda: got.append(s0.acquire(timeout=10)))
               for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    s0.release()   # value 1: one waiter woken, then release(1) the other
    out["release_one"] = outcome(s0.release, 1)
    for t in threads:
        t.join(10)
    out["woken_two"] = got
    # the semaphore's own Condition and lock stay native
    out["internal_cond"] = type(s._cond) is ORIG["Condition"]
    out["internal_lock"] = type(s._cond._lock).__module__ + "." + type(s._cond._lock).__name__
    out["isinstance"] = [isinstance(s, threading.Semaphore), isinstance(s, ORIG["Semaphore"]),
                         isinstance(s, threading.BoundedSemaphore)]
    out["type_name"] = [type(s).__module__, type(s).__qualname__]
    return out


def native(*a, **k):
    obj = unprofiled(ORIG[KIND], *a, **k)
    assert not tracked(obj)
    return obj


def profiled(*a, **k):
    obj = getattr(threading, KIND)(*a, **k)
    assert tracked(obj), type(obj)
    return obj


emit({"native": scenario(native), "profiled": scenario(profiled)})
'''


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_semaphore_semantics(kind):
    res = run_snippet(SEMAPHORE_SNIPPET, params={"KIND": kind})
    assert_same(res)
    assert res["native"]["acquire_timeout"] == ["return", False]
    assert res["native"]["internal_cond"] is True
    assert res["native"]["internal_lock"] == "_thread.lock"
    if kind == "BoundedSemaphore":
        assert res["native"]["release_over"][:2] == ["raise", "ValueError"]
    assert res["native"]["pickle_2"] == ["raise", "TypeError", "cannot pickle '_thread.lock' object"]
    assert res["native"]["copy_cond"] == [True, True, ["return", True], ["return", None]]


CONDITION_SNIPPET = r'''
start()


def scenario(make):
    out = {}
    c = make()
    out["wait_unowned"] = outcome(c.wait, 0.01)
    out["wait_for_unowned"] = outcome(c.wait_for, lambda: False, 0.01)
    out["notify_unowned"] = outcome(c.notify)
    out["notify_all_unowned"] = outcome(c.notify_all)
    out["release_unowned"] = outcome(c.release)
    out["exit_unowned"] = outcome(c.__exit__, None, None, None)
    out["owned_before"] = c._is_owned()
    with c as entered:
        out["enter_value"] = entered
        out["owned"] = c._is_owned()
        out["notify_nobody"] = outcome(c.notify)
        out["notify_all_nobody"] = outcome(c.notify_all)
        out["wait_timeout"] = outcome(c.wait, 0.02)
        out["wait_zero"] = outcome(c.wait, 0)
        out["wait_for_true"] = outcome(c.wait_for, lambda: 42, 0.05)
        out["wait_for_false"] = outcome(c.wait_for, lambda: 0, 0.02)
        out["owned_after_wait"] = c._is_owned()
    out["owned_after"] = c._is_owned()
    out["acquire"] = outcome(c.acquire)
    out["acquire_again"] = outcome(c.acquire, False)  # re-entrant or not
    if out["acquire_again"] == ["return", True]:
        c.release()
    out["release"] = outcome(c.release)
    out["acquire_timeout"] = outcome(c.acquire, timeout=0.01)
    out["exit"] = outcome(c.__exit__, None, None, None)
    # notify from another thread
    state = {"ready": False}

    def notifier():
        time.sleep(0.05)
        with c:
            state["ready"] = True
            c.notify()

    t = threading.Thread(target=notifier)
    with c:
        t.start()
        r, dt = elapsed(c.wait_for, lambda: state["ready"], 20)
        out["wait_for_notified"] = r
        out["notified_waited"] = dt >= 0.03
        out["owned_after_notified"] = c._is_owned()
    t.join()
    # a held Condition times out an acquire from another thread
    with c:
        box = []
        t = threading.Thread(target=lambda: box.append(c.acquire(timeout=0.05)))
        t.start()
        t.join()
        out["contended_timeout"] = box
    out["isinstance"] = [isinstance(c, threading.Condition), isinstance(c, ORIG["Condition"])]
    out["type_name"] = [type(c).__module__, type(c).__qualname__]
    out["pickle"] = outcome(pickle.dumps, c)
    # `with` enters whatever self._lock is now
    c2 = make()
    replacement = ORIG["RLock"]()
    c2._lock = replacement
    with c2:
        out["replaced_lock"] = [replacement._is_owned(), outcome(replacement.release)]
        replacement.acquire()
    out["replaced_lock_after"] = replacement._is_owned()

    class PropCondition(type(c)):
        seen = 0

        @property
        def _lock(self):
            PropCondition.seen += 1
            return self.__dict__["_lock"]

        @_lock.setter
        def _lock(self, value):
            self.__dict__["_lock"] = value

    if type(c) is ORIG["Condition"]:
        pc = PropCondition()
    else:
        pc = PropCondition()
    with pc:
        pass
    out["property_lock_reads"] = PropCondition.seen
    cc = copy.copy(c)
    with cc:
        out["copy_owned"] = [cc._is_owned(), c._is_owned()]
        out["copy_notify"] = outcome(cc.notify)
    out["copy_after"] = [cc._is_owned(), c._is_owned()]
    return out


def make_native():
    lock = None if LOCK == "default" else unprofiled(getattr(threading, LOCK))
    c = unprofiled(ORIG["Condition"]) if lock is None else unprofiled(ORIG["Condition"], lock)
    assert not tracked(c)
    return c


def make_profiled():
    # a lock ddlock does not profile (made before start(), say): the
    # Condition's own profile
    lock = None if LOCK == "default" else unprofiled(getattr(threading, LOCK))
    c = threading.Condition() if lock is None else threading.Condition(lock)
    assert tracked(c), type(c)
    return c


emit({"native": scenario(lambda: make_native()), "profiled": scenario(lambda: make_profiled())})
'''


@pytest.mark.parametrize("lock", ["default", "Lock", "RLock"])
def test_condition_semantics(lock):
    """Condition() (its RLock profiled as the Condition) and Condition(a lock
    ddlock does not profile)."""
    res = run_snippet(CONDITION_SNIPPET, params={"LOCK": lock})
    assert_same(res)
    assert res["native"]["wait_unowned"] == ["raise", "RuntimeError", "cannot wait on un-acquired lock"]
    assert res["native"]["notify_unowned"] == ["raise", "RuntimeError", "cannot notify on un-acquired lock"]
    assert res["native"]["wait_for_notified"] == ["return", True]


def test_no_double_counting_and_internal_locks_stay_native():
    res = run_snippet(r'''
start()
out = {}
sem = threading.Semaphore(2)
out["sem_internal"] = [type(sem._cond) is ORIG["Condition"],
                       _ddlock.profiled(sem._cond._lock) is None]
bsem = threading.BoundedSemaphore(2)
out["bsem_internal"] = [type(bsem._cond) is ORIG["Condition"],
                        _ddlock.profiled(bsem._cond._lock) is None]
ev = threading.Event()
out["event_internal"] = [type(ev._cond) is ORIG["Condition"], tracked(ev._cond)]
cond = threading.Condition()
out["cond_lock"] = [type(cond._lock).__module__ + "." + type(cond._lock).__name__, tracked(cond),
                    cond.acquire == cond._lock.acquire]
# Condition() is profiled through its native RLock alone: nothing of the
# Condition itself is profiled, nothing is added to it
before = ddlock.stats()["primitives_created"]
conds = [threading.Condition() for _ in range(5)]
out["conds_without_tracker"] = [ddlock.stats()["primitives_created"] - before,
                                all(_ddlock.profiled(c) is None and
                                    _ddlock.profiled(c._lock) == "Condition" and
                                    sorted(vars(c)) == sorted(vars(ORIG["Condition"]()))
                                    for c in conds)]
cond.__init__()  # a new RLock, as natively, profiled as the Condition
out["reinit"] = [type(cond._lock) is type(conds[0]._lock), cond._lock is not conds[0]._lock,
                 cond.acquire == cond._lock.acquire, _ddlock.profiled(cond._lock)]
samples_before = ddlock.stats()["events_sampled"]
for _ in range(10):
    with cond:
        pass
    cond.acquire()
    cond.release()
out["events_per_cond_pair"] = (ddlock.stats()["events_sampled"] - samples_before) / 20
# a Condition over a lock ddlock profiles is not profiled again
user_lock = threading.Lock()
over = threading.Condition(user_lock)
out["over_profiled_lock"] = [type(over) is ORIG["Condition"], tracked(over),
                             _ddlock.profiled(user_lock)]
over_kw = threading.Condition(lock=threading.RLock())
out["over_profiled_rlock_kw"] = [type(over_kw) is ORIG["Condition"], tracked(over_kw)]
# isinstance/issubclass against the patched names accept the originals
out["checks"] = [isinstance(unprofiled(ORIG["Semaphore"]), threading.Semaphore),
                 isinstance(unprofiled(ORIG["BoundedSemaphore"]), threading.Semaphore),
                 isinstance(over, threading.Condition),
                 issubclass(threading.BoundedSemaphore, threading.Semaphore),
                 issubclass(ORIG["BoundedSemaphore"], threading.Semaphore)]
samples_before = ddlock.stats()["events_sampled"]
for _ in range(10):
    with sem:
        pass
out["events_per_with"] = (ddlock.stats()["events_sampled"] - samples_before) / 10
ddlock.stop()
out["restored"] = [not hooked(threading.Semaphore, "acquire"),
                   not hooked(threading.BoundedSemaphore, "release"),
                   not hooked(threading.Condition, "__init__"),
                   threading.Lock is ORIG["Lock"], threading.RLock is ORIG["RLock"]]
# objects made while profiling keep working after stop()
with sem:
    pass
with cond:
    cond.notify()
out["after_stop"] = [sem._value, cond._is_owned()]
emit(out)
''')
    assert res["sem_internal"] == [True, True]
    assert res["bsem_internal"] == [True, True]
    assert res["event_internal"] == [True, False]
    # the Condition is profiled through its native RLock, whose samples are
    # the Condition's: its acquire is the RLock's, as natively
    assert res["cond_lock"] == ["_thread.RLock", True, True]
    assert res["conds_without_tracker"] == [5, True]
    assert res["reinit"] == [True, True, True, "Condition"]
    assert res["events_per_cond_pair"] == 2
    assert res["over_profiled_lock"] == [True, False, "Lock"]
    assert res["over_profiled_rlock_kw"] == [True, False]
    assert res["checks"] == [True, True, True, True, True]
    # one acquire and one release sample per `with`, nothing from the
    # semaphore's internal Condition and lock
    assert res["events_per_with"] == 2
    assert res["restored"] == [True] * 5
    assert res["after_stop"] == [2, False]


def test_subclasses_and_stop_start():
    res = run_snippet(r'''
start()
out = {}


class PoolSemaphore(threading.BoundedSemaphore):
    def __init__(self, value):
        super().__init__(value)
        self.acquired = 0

    def acquire(self, *a, **k):
        r = super().acquire(*a, **k)
        self.acquired += bool(r)
        return r


class MyCondition(threading.Condition):
    pass


pool = PoolSemaphore(2)
with pool:     # __enter__ is the base class's acquire, as in threading.py
    pass
pool.acquire()
pool.release()
cond = MyCondition()
with cond:
    cond.wait(0.001)
out["sub"] = [tracked(pool), pool.acquired, isinstance(pool, threading.Semaphore),
              tracked(cond), isinstance(cond, threading.Condition)]
classes = (threading.Semaphore, threading.Condition)
ddlock.stop()
late = PoolSemaphore(1)   # a subclass used after stop(): native behaviour
late.acquire()
late.release()
out["after_stop"] = [tracked(late), late.acquired, late._value]
start()
out["same_classes"] = [threading.Semaphore is classes[0], threading.Condition is classes[1]]
ddlock.stop()
emit(out)
''')
    assert res["sub"] == [True, 1, True, True, True]
    assert res["after_stop"] == [False, 1, 1]
    assert res["same_classes"] == [True, True]


ABC_MIX_SNIPPET = r'''
import abc
import contextlib


def scenario():
    out = {}

    class Base(abc.ABC):
        @abc.abstractmethod
        def size(self):
            pass

    def build(name, bases, body=None):
        try:
            return type(name, bases, dict(body or {})), None
        except TypeError as e:
            return None, ["raise", "TypeError", str(e)]

    # a primitive mixed with an ABC: abstract until the method is defined
    for kind in ("Semaphore", "BoundedSemaphore", "Condition"):
        base = getattr(threading, kind)
        Pool, err = build("Pool", (base, Base))
        out[kind + "_class"] = err or [type(Pool).__name__ != "", isinstance(Pool, abc.ABCMeta)]
        if Pool is None:
            continue
        out[kind + "_abstract"] = outcome(Pool)
        Sized, err = build("Sized", (Pool,), {"size": lambda self: 3})
        obj = Sized()
        out[kind + "_concrete"] = [obj.size(), isinstance(obj, Base), isinstance(obj, base),
                                   issubclass(Sized, Base), issubclass(Sized, base)]
        with obj:
            out[kind + "_with"] = True
    async def mix_asyncio():  # made in a running loop (3.9 binds them to it)
        res = {}
        for kind in ("Lock", "Semaphore", "BoundedSemaphore", "Condition"):
            base = getattr(asyncio, kind)
            Ctx, err = build("Ctx", (base, contextlib.AbstractAsyncContextManager))
            if Ctx is None:
                res["asyncio_" + kind] = err
                continue
            obj = Ctx()
            res["asyncio_" + kind] = [isinstance(obj, contextlib.AbstractAsyncContextManager),
                                      isinstance(obj, base)]
            async with obj:
                res["asyncio_" + kind + "_with"] = True
        return res

    out.update(asyncio.run(mix_asyncio()))
    # @abstractmethod without an ABC does not make a plain subclass abstract
    Plain, err = build("Plain", (threading.Semaphore,),
                       {"size": abc.abstractmethod(lambda self: 0)})
    out["plain_subclass"] = outcome(lambda: Plain(2)._value)
    # registering with an ABC and virtual subclasses
    Base.register(threading.Condition)
    out["registered"] = isinstance(threading.Condition(), Base)
    return out


native = scenario()
start()
profiled = scenario()
out = {"native": native, "profiled": profiled,
       "metaclasses": [type(threading.Semaphore) is type, type(asyncio.Lock) is type]}
ddlock.stop()
out["dispatch_after_stop"] = [k.__module__ + "." + k.__qualname__ for k in copyreg.dispatch_table
                              if k.__module__ in ("threading", "asyncio.locks")]
emit(out)
'''


def test_primitives_mix_with_abcs():
    """A user's class may derive from a profiled primitive and an ABC
    (abc.ABC, contextlib.AbstractAsyncContextManager): the classes are the
    stdlib's (no metaclass of ddlock's), the same abstract-method checks and
    isinstance answers as natively; nothing in copyreg's dispatch table."""
    res = run_snippet("import copyreg\n" + ABC_MIX_SNIPPET)
    assert res["metaclasses"] == [True, True]
    assert_same(res)
    assert res["native"]["Semaphore_abstract"][:2] == ["raise", "TypeError"]
    assert res["native"]["Condition_concrete"] == [3, True, True, True, True]
    assert res["native"]["asyncio_Lock"] == [True, True]
    assert res["native"]["plain_subclass"] == ["return", 2]
    assert res["dispatch_after_stop"] == []


def test_holds_end_at_their_holders_release(prefix):
    """A sampled hold ends at its holder's release: on a semaphore, a
    release by another thread ends none of this thread's holds; an object
    that dies with a hold pending takes it with it."""
    run_snippet(r'''
start(capture_pct=100, output_pprof=PREFIX)
held_sem = threading.BoundedSemaphore(2)
held_sem.acquire()
held_sem.acquire()
held_sem.release()          # one of this thread's two holds ends
worker = threading.Thread(target=held_sem.release)
worker.start()              # the worker held nothing: no hold ends
worker.join()


async def main():
    held_alock = asyncio.Lock()
    await held_alock.acquire()
    async with asyncio.Semaphore(1):
        pass
    held_alock.release()

asyncio.run(main())
dropped = threading.Semaphore(1)
dropped.acquire()
del dropped
assert ddlock.stats()["holds_dropped"] == 0
ddlock.stop()
emit(True)
''', params={"PREFIX": prefix})
    profile = testing.parse_merged_profile(prefix)

    def ours(name):
        return [s for s in profile.samples if str(s.labels.get("lock name")).endswith(":" + name)]

    assert profile.total("lock-acquire", ours("held_sem")) == 2
    assert profile.total("lock-release", ours("held_sem")) == 1
    assert profile.total("lock-acquire", ours("held_alock")) == 1
    assert profile.total("lock-release", ours("held_alock")) == 1
    assert profile.total("lock-release", ours("dropped")) == 0


def test_sampling_is_unbiased_at_10_percent(prefix):
    """The Python-level primitives' countdown (one for all of them, geometric
    skips) samples every event with probability capture_pct, whichever
    object it is on: the weighted counts estimate the true ones."""
    run_snippet(r'''
start(output_pprof=PREFIX, capture_pct=10, max_samples=100000)
sampled_sem = threading.Semaphore(1)
for _ in range(40000):
    with sampled_sem:
        pass
sampled_cond = threading.Condition()
for _ in range(40000):
    with sampled_cond:
        pass


async def main():
    sampled_alock = asyncio.Lock()
    for _ in range(40000):
        async with sampled_alock:
            pass
    for _ in range(40000):   # one event per object: the first ones too
        one_shot_lock = asyncio.Lock()
        await one_shot_lock.acquire()
        one_shot_lock.release()

asyncio.run(main())
ddlock.stop()
emit(True)
''', params={"PREFIX": prefix}, timeout=300)
    profile = testing.parse_merged_profile(prefix)
    for name in ("sampled_sem", "sampled_cond", "sampled_alock", "one_shot_lock"):
        ours = [s for s in profile.samples
                if str(s.labels.get("lock name")).endswith(":" + name)]
        for value in ("lock-acquire", "lock-release"):
            total = profile.total(value, ours)
            assert abs(total - 40000) <= 0.06 * 40000, (name, value, total)


# ---------------------------------------------------------------------------
# DD_PROFILING_LOCK_TYPES
# ---------------------------------------------------------------------------

def test_lock_types_switches_primitives_off(prefix):
    res = run_snippet(r'''
start(output_pprof=PREFIX)
out = {}
out["patched"] = [_ddlock.profiled(threading.Lock()) is not None,
                  _ddlock.profiled(threading.RLock()) is not None,
                  hooked(threading.Semaphore, "acquire"),
                  hooked(threading.BoundedSemaphore, "release"),
                  hooked(threading.Condition, "__init__"),
                  hooked(asyncio.Lock, "acquire"), hooked(asyncio.Condition, "__init__")]
plain_sem = threading.Semaphore(1)
bounded = threading.BoundedSemaphore(1)
cond = threading.Condition()
out["native"] = [tracked(plain_sem), tracked(bounded), tracked(cond),
                 type(plain_sem) is ORIG["Semaphore"], type(cond) is ORIG["Condition"]]
for obj in (plain_sem, bounded, cond):
    with obj:
        pass
ddlock.stop()
emit(out)
''', params={"PREFIX": prefix},
        env={"DD_PROFILING_LOCK_TYPES": "Lock, BoundedSemaphore,asyncio.Lock"})
    assert res["patched"] == [True, False, False, True, False, True, False]
    assert res["native"] == [False, True, False, True, True]
    profile = testing.parse_merged_profile(prefix)
    assert lock_types_of(profile.samples) == ["BoundedSemaphore"]


def test_lock_types_errors():
    res = run_snippet(r'''
out = {}
for value in ("Lock,Mutex", "lock", "Lock;RLock", 3):
    out[str(value)] = outcome(ddlock.start, lock_types=value, upload_enabled=False)
    if ddlock.is_running():
        ddlock.stop()
out["empty_list"] = outcome(ddlock.start, lock_types=[], upload_enabled=False)
out["empty_patched"] = _ddlock.profiled(threading.Lock()) is not None or \
    hooked(threading.Condition, "__init__")
ddlock.stop()
emit(out)
''')
    for value in ("Lock,Mutex", "lock", "Lock;RLock", "3"):
        assert res[value][:2] == ["raise", "ValueError"], res[value]
    assert "lock_types" in res["Lock,Mutex"][2] and "Mutex" in res["Lock,Mutex"][2]
    assert res["empty_list"] == ["return", None]
    assert res["empty_patched"] is False


def test_lock_types_malformed_under_auto_warns(prefix):
    proc = run_python(r'''
import threading
import ddlock.auto, ddlock
print("RUNNING", ddlock.is_running(),
      isinstance(vars(threading.Semaphore)["acquire"], ddlock._ddlock.Hook))
ddlock.stop()
''', env={"DD_PROFILING_LOCK_TYPES": "Semaphore,Spinlock", "DD_PROFILING_OUTPUT_PPROF": prefix,
          "DD_PROFILING_UPLOAD_ENABLED": "false"})
    assert "RUNNING True True" in proc.stdout  # the default: everything
    assert "DD_PROFILING_LOCK_TYPES" in proc.stderr and "Spinlock" in proc.stderr


# ---------------------------------------------------------------------------
# Names, stacks, lock type
# ---------------------------------------------------------------------------

def check(profile, key, lock_name, caller, lock_type, count=1, acquire=True, release=True,
          markers=None, **lines):
    __tracebackhide__ = True
    markers = markers or LineMarkers.for_file(HERE)
    linenos = markers.linenos(key)
    if lines:
        linenos = linenos._replace(**{k[:-len("_line")]: v for k, v in lines.items()})
    common = dict(caller_name=caller, filename=FILENAME, linenos=linenos, lock_name=lock_name,
                  count=count)
    matched = testing.assert_lock_events(
        profile,
        expected_acquire_events=[LockAcquireEvent(**common)] if acquire else [],
        expected_release_events=[LockReleaseEvent(**common)] if release else [],
    )
    for samples in matched:
        assert lock_types_of(samples) == [lock_type]
    return matched


def test_semaphore_name_and_stack(prefix):
    profile = run_scenario(HERE, "scenario_semaphore", prefix)
    check(profile, "pool_slots", "pool_slots", "scenario_semaphore", "Semaphore")
    check(profile, "pool_slots_with", "pool_slots", "scenario_semaphore", "Semaphore")
    # a worker acquired while the main thread held both slots: it waited
    waited = [s for s in profile.samples if s.labels.get("thread name") == "slot-worker"]
    assert profile.total("lock-acquire-wait", waited) >= 0.04e9
    assert lock_types_of(profile.samples) == ["Semaphore"]


def test_bounded_semaphore_name_and_stack(prefix):
    profile = run_scenario(HERE, "scenario_bounded_semaphore", prefix)
    check(profile, "connection_budget", "connection_budget", "scenario_bounded_semaphore",
          "BoundedSemaphore")
    # the hold from acquire to release
    samples = testing.get_samples_with_label(profile, "lock type", "BoundedSemaphore")
    assert 0.04e9 <= profile.total("lock-release-hold", samples) < 1e9


def test_condition_name_stack_and_wait(prefix):
    profile = run_scenario(HERE, "scenario_condition", prefix)
    markers = LineMarkers.for_file(HERE)
    wait_line = markers.line("WAIT", "work_available")
    with_line = markers.acquire("work_available")
    # entering the with block, then leaving it
    check(profile, "work_available", "work_available", "consumer", "Condition",
          acquire_line=with_line)
    # wait() releases (hold up to here) and re-acquires at its line
    check(profile, "work_available", "work_available", "consumer", "Condition",
          acquire_line=wait_line, release_line=wait_line)
    waiter = [s for s in profile.samples if s.labels.get("thread name") == "consumer"]
    hold = profile.total("lock-release-hold", waiter)
    # held ~20 ms before and ~20 ms after the ~150 ms wait, which is not hold
    assert 0.03e9 <= hold < 0.12e9, hold
    # the re-acquire waited behind the producer's 50 ms hold
    assert 0.03e9 <= profile.total("lock-acquire-wait", waiter) < 0.15e9
    assert lock_types_of(profile.samples) == ["Condition"]
    # never a threading.py frame at the leaf
    assert all(not s.leaf.filename.endswith("threading.py") for s in profile.samples)


def test_condition_over_native_lock_name(prefix):
    profile = run_scenario(HERE, "scenario_condition_native_lock", prefix)
    check(profile, "jobs_ready", "jobs_ready", "scenario_condition_native_lock", "Condition")
    check(profile, "jobs_ready_explicit", "jobs_ready", "scenario_condition_native_lock",
          "Condition")


def test_condition_explicit_acquire_and_orphaned_lock(prefix):
    """cond.acquire()/release() are the Condition's own RLock's C methods
    (as natively), still named and typed as the Condition; a Condition's
    lock that outlives its Condition stays profiled, named after the
    variable that holds it."""
    profile = run_scenario(HERE, "scenario_condition_explicit", prefix)
    check(profile, "orders_ready", "orders_ready", "scenario_condition_explicit", "Condition")
    markers = LineMarkers.for_file(HERE)
    # named by the local that holds it (on the portable build of 3.11, which
    # reads no locals, it has no name: its Condition, which its creation
    # binding named, is gone)
    site = "%s:%d" % (FILENAME, markers.line("CREATE", "orphan"))
    expected = site + ":leftover_lock" if locals_readable() else site
    leftover = [s for s in profile.samples if s.labels.get("lock name", "") == expected]
    assert leftover, sorted(set(s.labels.get("lock name") for s in profile.samples))
    assert lock_types_of(leftover) == ["Condition"]
    assert profile.total("lock-acquire", leftover) == 1
    assert profile.total("lock-release", leftover) == 1


def test_condition_subclass_given_a_native_lock(prefix):
    """A Condition subclass whose __init__ hands threading.Condition a lock
    ddlock does not profile (made before start) is profiled through that
    lock, named and sited as the Condition, as any Condition(native_lock)."""
    profile = run_scenario(HERE, "scenario_condition_subclass", prefix)
    if not locals_readable():
        # the portable build of 3.11 cannot see that the subclass __init__
        # frame's self is the Condition (its arguments are locals): the site
        # is the super().__init__() line, with no name
        markers = LineMarkers.for_file(HERE)
        assert testing.get_lock_names(profile) == [
            "%s:%d" % (FILENAME, markers.line("SUPER", "orders_pending"))]
        return
    check(profile, "orders_pending", "orders_pending", "scenario_condition_subclass", "Condition")
    assert profile.total("lock-acquire", [s for s in profile.samples
                                          if s.labels.get("lock name", "").endswith(
                                              ":orders_pending")]) == 1


def test_lock_and_rlock_samples_have_lock_type(prefix):
    profile = run_scenario(HERE, "scenario_lock_rlock", prefix)
    check(profile, "plain_lock", "plain_lock", "scenario_lock_rlock", "Lock")
    check(profile, "reentrant_lock", "reentrant_lock", "scenario_lock_rlock", "RLock")


# ---------------------------------------------------------------------------
# Scenarios (run as a script: python test_primitives.py NAME PREFIX)
# ---------------------------------------------------------------------------

def _start(prefix):
    import ddlock

    ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False)


def _stop():
    import ddlock

    ddlock.stop()


def scenario_semaphore(prefix):
    _start(prefix)
    pool_slots = threading.Semaphore(2)  # !CREATE! pool_slots !CREATE! pool_slots_with
    pool_slots.acquire()  # !ACQUIRE! pool_slots
    pool_slots.release()  # !RELEASE! pool_slots
    with pool_slots:  # !ACQUIRE! !RELEASE[>=3.10]! pool_slots_with
        pass  # !RELEASE[<3.10]! pool_slots_with
    pool_slots.acquire()
    pool_slots.acquire()
    worker = threading.Thread(target=_take_slot, args=(pool_slots,), name="slot-worker")
    worker.start()
    time.sleep(0.05)
    pool_slots.release()
    worker.join()
    pool_slots.release()
    _stop()


def _take_slot(pool_slots):
    with pool_slots:
        pass


def scenario_bounded_semaphore(prefix):
    _start(prefix)
    connection_budget = threading.BoundedSemaphore(3)  # !CREATE! connection_budget
    connection_budget.acquire()  # !ACQUIRE! connection_budget
    time.sleep(0.05)
    connection_budget.release()  # !RELEASE! connection_budget
    _stop()


def consumer(work_available, items):
    with work_available:  # !ACQUIRE! !RELEASE[>=3.10]! work_available
        time.sleep(0.02)
        work_available.wait(timeout=10)  # !WAIT! work_available
        items.pop()
        time.sleep(0.02)  # !RELEASE[<3.10]! work_available


def scenario_condition(prefix):
    _start(prefix)
    work_available = threading.Condition()  # !CREATE! work_available
    items = []
    t = threading.Thread(target=consumer, args=(work_available, items), name="consumer")
    t.start()
    time.sleep(0.15)
    with work_available:
        items.append(1)
        work_available.notify()
        time.sleep(0.05)
    t.join()
    _stop()


def scenario_condition_native_lock(prefix):
    import ddlock

    native_lock = ddlock._ORIGINAL_LOCK()
    _start(prefix)
    jobs_ready = threading.Condition(native_lock)  # !CREATE! jobs_ready !CREATE! jobs_ready_explicit
    with jobs_ready:  # !ACQUIRE! !RELEASE[>=3.10]! jobs_ready
        jobs_ready.notify()  # !RELEASE[<3.10]! jobs_ready
    jobs_ready.acquire()  # !ACQUIRE! jobs_ready_explicit
    jobs_ready.release()  # !RELEASE! jobs_ready_explicit
    _stop()


def scenario_condition_explicit(prefix):
    import gc

    _start(prefix)
    orders_ready = threading.Condition()  # !CREATE! orders_ready
    orders_ready.acquire()  # !ACQUIRE! orders_ready
    orders_ready.notify_all()
    orders_ready.release()  # !RELEASE! orders_ready
    orphan = threading.Condition()  # !CREATE! orphan
    leftover_lock = orphan._lock
    del orphan
    gc.collect()
    leftover_lock.acquire()
    leftover_lock.release()
    _stop()


def scenario_condition_subclass(prefix):
    early = threading.Lock()  # made before start(): native

    _start(prefix)

    class Orders(threading.Condition):
        def __init__(self):
            super().__init__(early)  # !SUPER! orders_pending

    orders_pending = Orders()  # !CREATE! orders_pending
    assert type(orders_pending._lock) is type(early)
    orders_pending.acquire()  # !ACQUIRE! orders_pending
    orders_pending.release()  # !RELEASE! orders_pending
    _stop()


def scenario_lock_rlock(prefix):
    _start(prefix)
    plain_lock = threading.Lock()  # !CREATE! plain_lock
    reentrant_lock = threading.RLock()  # !CREATE! reentrant_lock
    plain_lock.acquire()  # !ACQUIRE! plain_lock
    plain_lock.release()  # !RELEASE! plain_lock
    reentrant_lock.acquire()  # !ACQUIRE! reentrant_lock
    reentrant_lock.release()  # !RELEASE! reentrant_lock
    _stop()


if __name__ == "__main__":
    scenario_main(globals())
