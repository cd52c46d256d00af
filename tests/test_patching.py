"""ddlock.start() profiles threading.Lock/RLock in place -- it replaces the
acquire/release methods and the creation and deallocation slots of the
native _thread types, never threading's names -- and ddlock.stop() puts the
native methods back; while it runs, everything that can be done with
threading.Lock/RLock (call, isinstance, `|`, subclass, pickle, store as class
attribute) and every stdlib user of them behaves as natively.

Each test runs in a fresh interpreter (tests/_subproc.py). Expectations are
what the original objects do in the same interpreter, measured first.
"""

import sys

import pytest

from _subproc import run


# ---- patch / unpatch --------------------------------------------------------

def test_start_hooks_and_stop_restores_the_exact_originals():
    res = run(r'''
        import _thread
        import json
        import threading

        def emit(obj):
            print("@@DDLOCK-RESULT@@" + json.dumps(obj))

        L0, R0 = threading.Lock, threading.RLock
        THREADING0 = dict(vars(threading))
        THREAD0 = dict(vars(_thread))
        LT, RT = type(threading.Lock()), type(threading.RLock())
        LD0, RD0 = dict(vars(LT)), dict(vars(RT))
        A0 = _thread.allocate_lock
        import ddlock
        from ddlock import _ddlock
        out = {"originals_recorded": [ddlock._ORIGINAL_LOCK is L0, ddlock._ORIGINAL_RLOCK is R0]}
        cycles = []
        for i in range(3):
            ddlock.start(capture_pct=100, upload_enabled=False)
            lk, rl = threading.Lock(), threading.RLock()
            cycles.append({
                "names_untouched": [threading.Lock is L0, threading.RLock is R0,
                                    _thread.allocate_lock is A0],
                "native_types": [type(lk) is LT, type(rl) is RT],
                "profiled": [_ddlock.profiled(lk), _ddlock.profiled(rl)],
                "methods_hooked": sorted(k for k in LD0 if vars(LT)[k] is not LD0[k]) +
                                  sorted("R." + k for k in RD0 if vars(RT)[k] is not RD0[k]),
                "running": ddlock.is_running(),
            })
            try:
                ddlock.start(capture_pct=100, upload_enabled=False)
                cycles[-1]["second_start"] = "no error"
            except RuntimeError as e:
                cycles[-1]["second_start"] = "RuntimeError"
            ddlock.stop()
            cycles[-1]["restored"] = [dict(vars(LT)) == LD0, dict(vars(RT)) == RD0]
            cycles[-1]["running_after_stop"] = ddlock.is_running()
            cycles[-1]["unprofiled_after_stop"] = [
                _ddlock.profiled(threading.Lock()), _ddlock.profiled(threading.RLock()),
                _ddlock.profiled(lk), _ddlock.profiled(rl)]
        out["cycles"] = cycles
        # nothing in threading or _thread was changed at any point
        out["threading_names_changed"] = sorted(
            k for k in set(THREADING0) | set(vars(threading))
            if vars(threading).get(k, None) is not THREADING0.get(k))
        out["thread_names_changed"] = sorted(
            k for k in set(THREAD0) | set(vars(_thread))
            if vars(_thread).get(k, None) is not THREAD0.get(k))
        # stop() when not running leaves everything alone
        ddlock.stop()
        out["stop_twice"] = [dict(vars(LT)) == LD0, dict(vars(RT)) == RD0]
        # somebody else (gevent, a test double) replaced threading.Lock while
        # we ran: stop() leaves theirs
        ddlock.start(capture_pct=100, upload_enabled=False)
        mine = lambda: "theirs"
        threading.Lock = mine
        ddlock.stop()
        out["foreign_patch_kept"] = [threading.Lock is mine, threading.RLock is R0]
        threading.Lock = L0
        emit(out)
    ''', prelude=False)
    assert res["originals_recorded"] == [True, True]
    hooked = ["__enter__", "__exit__", "acquire", "acquire_lock", "release", "release_lock",
              "R.__enter__", "R.__exit__", "R._acquire_restore", "R._release_save",
              "R.acquire", "R.release"]
    for c in res["cycles"]:
        assert c == {"names_untouched": [True, True, True], "native_types": [True, True],
                     "profiled": ["Lock", "RLock"], "methods_hooked": hooked,
                     "running": True, "second_start": "RuntimeError",
                     "restored": [True, True], "running_after_stop": False,
                     "unprofiled_after_stop": [None] * 4}, c
    assert res["threading_names_changed"] == []
    assert res["thread_names_changed"] == []
    assert res["stop_twice"] == [True, True]
    assert res["foreign_patch_kept"] == [True, True]


def test_default_excluded_modules_keep_native_locks():
    """Defaults (DESIGN.md): threading, asyncio, concurrent, ddlock."""
    res = run(r'''
        import queue
        start()
        import asyncio  # imported while patched: its module-level locks stay native
        import concurrent.futures
        N = lambda lk: _ddlock.profiled(lk) is None
        out = {}
        # a Condition() of the user's is profiled through its native RLock
        out["condition_default"] = _ddlock.profiled(threading.Condition()._lock) == "Condition"
        out["event"] = N(threading.Event()._cond._lock)
        out["semaphore"] = N(threading.Semaphore()._cond._lock)
        out["barrier"] = N(threading.Barrier(2)._cond._lock)
        t = threading.Thread(target=lambda: None)
        out["thread_started_event"] = N(t._started._cond._lock)
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        out["executor_shutdown_lock"] = N(ex._shutdown_lock)
        f = ex.submit(lambda: 1)
        out["future_condition"] = N(f._condition._lock)
        f.result(10)
        ex.shutdown(wait=True)
        out["asyncio_events_lock"] = N(getattr(asyncio.events, "_lock", native("Lock")))
        q = queue.Queue()
        out["queue_mutex_profiled"] = _ddlock.profiled(q.mutex) == "Lock"
        out["queue_condition_shares_mutex"] = q.not_empty._lock is q.mutex
        # an import lock of importlib's (made by _thread.allocate_lock) never is
        import importlib._bootstrap as boot
        out["import_lock"] = N(boot._ModuleLock("ddlock-test-module").lock)
        out["user_code_profiled"] = [_ddlock.profiled(threading.Lock()),
                                     _ddlock.profiled(threading.RLock())]
        emit(out)
    ''')
    assert all(v is True for k, v in res.items() if k != "user_code_profiled"), res
    assert res["user_code_profiled"] == ["Lock", "RLock"]


def test_custom_excluded_modules():
    res = run(r'''
        import types
        start(lock_exclude_modules=["mypkg", "other.sub"])
        out = {}

        def module(name, src="import threading\nL = threading.Lock()\nR = threading.RLock()\n"):
            m = types.ModuleType(name)
            exec(compile(src, name + ".py", "exec"), m.__dict__)
            return [_ddlock.profiled(m.L), _ddlock.profiled(m.R)]

        out["mypkg"] = module("mypkg")
        out["mypkg.sub.deep"] = module("mypkg.sub.deep")
        out["mypkgx"] = module("mypkgx")
        out["other"] = module("other")
        out["other.sub"] = module("other.sub")
        out["other.subx"] = module("other.subx")
        # threading is not in this list: its locks are profiled now
        out["threading_condition"] = _ddlock.profiled(threading.Condition()._lock)
        emit(out)
    ''')
    assert res["mypkg"] == [None, None]
    assert res["mypkg.sub.deep"] == [None, None]
    assert res["other.sub"] == [None, None]
    assert res["mypkgx"] == ["Lock", "RLock"]
    assert res["other"] == ["Lock", "RLock"]
    assert res["other.subx"] == ["Lock", "RLock"]
    # threading is not in this list: a Condition's RLock made there is
    # profiled as a lock of its own, the Condition over it is not again
    assert res["threading_condition"] == "RLock"


# ---- locks made before start / during a session ------------------------------

LOCK_WORKOUT = r'''
def workout(lk, kind):
    """Uncontended, contended, non-blocking, timeout and Condition use."""
    out = []
    out.append(outcome(lk.acquire))
    out.append(run_thread(lambda: lk.acquire(timeout=0.02)))
    out.append(outcome(lk.release))
    counter = [0]

    def work():
        for _ in range(2000):
            with lk:
                counter[0] += 1

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    out.append([counter[0], any(t.is_alive() for t in ts)])
    cond = threading.Condition(lk)
    box = []

    def notifier():
        with cond:
            box.append(1)
            cond.notify()

    with cond:
        threading.Thread(target=notifier).start()
        out.append(cond.wait_for(lambda: box, timeout=10))
    if kind == "RLock":
        out.append([lk.acquire(), lk.acquire(), outcome(lk.release), outcome(lk.release),
                    outcome(lk.release)])
    else:
        out.append([lk.acquire(), lk.acquire(False), outcome(lk.release),
                    outcome(lk.release)])
    return out
'''


def test_locks_created_before_start_keep_working_during_and_after():
    res = run(helpers=LOCK_WORKOUT, code=r'''
        before = {"Lock": threading.Lock(), "RLock": threading.RLock()}
        held = threading.Lock()
        held.acquire()   # held across start and stop
        types_before = {k: type(v) for k, v in before.items()}
        out = {"before": {k: workout(v, k) for k, v in before.items()}}
        start()
        out["during"] = {k: workout(v, k) for k, v in before.items()}
        out["held_release_during"] = outcome(held.release)
        held.acquire()
        ddlock.stop()
        out["after"] = {k: workout(v, k) for k, v in before.items()}
        out["held_release_after"] = outcome(held.release)
        out["types_unchanged"] = all(type(v) is types_before[k] for k, v in before.items())
        out["native"] = all(_ddlock.profiled(v) is None for v in before.values())
        emit(out)
    ''')
    assert res["during"] == res["before"]
    assert res["after"] == res["before"]
    assert res["before"]["Lock"][3] == [8000, False]
    assert res["held_release_during"] == ["return", None]
    assert res["held_release_after"] == ["return", None]
    assert res["types_unchanged"] and res["native"]


def test_locks_created_while_running_keep_working_after_stop():
    res = run(helpers=LOCK_WORKOUT, code=r'''
        reference = {"Lock": native("Lock"), "RLock": native("RLock")}
        out = {"native": {k: workout(v, k) for k, v in reference.items()}}
        start()
        made = {"Lock": profiled("Lock"), "RLock": profiled("RLock")}
        out["during"] = {k: workout(v, k) for k, v in made.items()}
        # held when the profiler stops: one by us, one by another thread,
        # with a sampled (100%) hold in progress
        made["Lock"].acquire()
        made["RLock"].acquire(); made["RLock"].acquire()
        held, go = threading.Event(), threading.Event()
        other = profiled("RLock")

        def holder():
            other.acquire()
            held.set()
            go.wait(30)
            other.release()

        t = threading.Thread(target=holder)
        t.start()
        held.wait(30)
        ddlock.stop()
        out["release_after_stop"] = [outcome(made["Lock"].release),
                                     outcome(made["RLock"].release),
                                     outcome(made["RLock"].release),
                                     outcome(made["RLock"].release)]
        out["waiter_after_stop"] = run_thread(lambda: other.acquire(timeout=0.02))
        go.set()
        t.join(30)
        out["after"] = {k: workout(v, k) for k, v in made.items()}
        out["types"] = [type(made["Lock"]) is NATIVE_TYPE["Lock"],
                        type(made["RLock"]) is NATIVE_TYPE["RLock"]]
        # and again in a second session, then after it
        start()
        out["second_session"] = {k: workout(v, k) for k, v in made.items()}
        made["Lock"].acquire()
        ddlock.stop()
        out["released_across_sessions"] = outcome(made["Lock"].release)
        out["after_second"] = {k: workout(v, k) for k, v in made.items()}
        emit(out)
    ''')
    for phase in ("during", "after", "second_session", "after_second"):
        assert res[phase] == res["native"], phase
    assert res["release_after_stop"] == [["return", None]] * 3 + [
        ["raise", "RuntimeError", "cannot release un-acquired lock"]]
    assert res["waiter_after_stop"] == ["return", False]
    assert res["types"] == [True, True]
    assert res["released_across_sessions"] == ["return", None]


def test_start_stop_while_other_threads_create_and_use_locks():
    """Patching and unpatching race with threads calling threading.Lock():
    every lock they get, native or profiled, works."""
    res = run(r'''
        errors = []
        stop_ev = threading.Event()
        made = {"native": 0, "profiled": 0}

        def worker():
            try:
                while not stop_ev.is_set():
                    for factory in (threading.Lock, threading.RLock):
                        lk = factory()
                        with lk:
                            if not lk.acquire(False) and factory is threading.RLock:
                                pass
                        kind = "profiled" if _ddlock.profiled(lk) else "native"
                        made[kind] += 1
                        if hasattr(lk, "_is_owned") and lk._is_owned():
                            lk.release()
            except BaseException as e:
                errors.append(repr(e))

        ts = [threading.Thread(target=worker) for _ in range(3)]
        for t in ts:
            t.start()
        for i in range(20):
            start()
            time.sleep(0.01)
            ddlock.stop(flush=False)
            time.sleep(0.005)
        stop_ev.set()
        for t in ts:
            t.join(30)
        emit({"errors": errors, "alive": [t.is_alive() for t in ts],
              "both_kinds": made["native"] > 0 and made["profiled"] > 0,
              "restored": [threading.Lock is ddlock._ORIGINAL_LOCK,
                           threading.RLock is ddlock._ORIGINAL_RLOCK]})
    ''', timeout=120)
    assert res == {"errors": [], "alive": [False] * 3, "both_kinds": True,
                   "restored": [True, True]}


# ---- what can be done with threading.Lock / threading.RLock themselves -------

# Each probe runs twice: on the originals before start() and on the factories
# while patched. `make_l`/`make_r` make the lock the program would get.
FACTORY_PROBES = r'''
import copy
import inspect
import pickle
import typing
import weakref


def probes(L, R):
    l, r = L(), R()
    old_l, old_r = OLD_L, OLD_R  # made before start(): native
    out = {}
    add = lambda key, fn: out.__setitem__(key, outcome(fn))
    # isinstance / issubclass (3.13: threading.Lock is a type; earlier a function)
    add("isinstance(lock, Lock)", lambda: isinstance(l, L))
    add("isinstance(old native lock, Lock)", lambda: isinstance(old_l, L))
    add("isinstance(rlock, Lock)", lambda: isinstance(r, L))
    add("isinstance(1, Lock)", lambda: isinstance(1, L))
    add("isinstance(lock, (Lock, int))", lambda: isinstance(l, (L, int)))
    add("isinstance(1, (int, Lock))", lambda: isinstance(1, (int, L)))
    add("issubclass(type(lock), Lock)", lambda: issubclass(type(l), L))
    add("issubclass(type(old), Lock)", lambda: issubclass(type(old_l), L))
    add("issubclass(int, Lock)", lambda: issubclass(int, L))
    add("isinstance(rlock, RLock)", lambda: isinstance(r, R))
    add("isinstance(old rlock, RLock)", lambda: isinstance(old_r, R))
    add("issubclass(type(rlock), RLock)", lambda: issubclass(type(r), R))
    return out


def union_probes(L, R):
    out = {}
    add = lambda key, fn: out.__setitem__(key, outcome(fn))
    norm = lambda u: repr(u)
    add("Lock | None", lambda: norm(L | None))
    add("None | Lock", lambda: norm(None | L))
    add("Lock | int", lambda: norm(L | int))
    add("int | Lock", lambda: norm(int | L))
    add("RLock | None", lambda: norm(R | None))
    add("None | RLock", lambda: norm(None | R))
    add("Lock | RLock", lambda: norm(L | R))
    add("(Lock | None) == (orig | None)", lambda: (L | None) == (OLD_LOCK_OBJ | None))
    return out
'''


def test_isinstance_and_issubclass_like_native():
    res = run(helpers=FACTORY_PROBES, code=r'''
        OLD_L, OLD_R = threading.Lock(), threading.RLock()
        native_out = probes(threading.Lock, threading.RLock)
        start()
        prof_out = probes(threading.Lock, threading.RLock)
        assert _ddlock.profiled(threading.Lock()) == "Lock"
        emit({"native": native_out, "profiled": prof_out, "py": list(PY)})
    ''')
    native, profiled = res["native"], res["profiled"]
    diffs = {k: (native[k], profiled[k]) for k in native if native[k] != profiled[k]}
    assert not diffs, diffs
    if tuple(res["py"]) >= (3, 13):
        # threading.Lock is a class: profiled and native locks are instances
        assert native["isinstance(lock, Lock)"] == ["return", True]
        assert profiled["isinstance(old native lock, Lock)"] == ["return", True]
    else:
        assert native["isinstance(lock, Lock)"][:2] == ["raise", "TypeError"]


@pytest.mark.skipif(sys.version_info < (3, 10),
                    reason="X | Y on types and functions does not exist before 3.10")
def test_union_operator_like_native():
    res = run(helpers=FACTORY_PROBES, code=r'''
        OLD_LOCK_OBJ = threading.Lock
        native_out = union_probes(threading.Lock, threading.RLock)
        start()
        prof_out = union_probes(threading.Lock, threading.RLock)
        emit({"native": native_out, "profiled": prof_out, "py": list(PY)})
    ''')
    native, profiled = res["native"], res["profiled"]

    assert profiled == native
    if tuple(res["py"]) >= (3, 13):
        assert native["Lock | None"] == ["return", "_thread.lock | None"]


@pytest.mark.skipif(sys.version_info < (3, 10),
                    reason="X | Y on types and functions does not exist before 3.10")
def test_isinstance_through_a_union_like_native():
    """`Lock | None` made while patched classifies the lock the program gets
    from threading.Lock() as natively (3.13: True; earlier: `|` raises)."""
    res = run(r'''
        def probe(L, R):
            out = {}
            for name, fn in [
                    ("isinstance(Lock(), Lock | None)", lambda: isinstance(L(), L | None)),
                    ("isinstance(None, Lock | None)", lambda: isinstance(None, L | None)),
                    ("isinstance(1, Lock | None)", lambda: isinstance(1, L | None)),
                    ("isinstance(Lock(), None | Lock)", lambda: isinstance(L(), None | L)),
                    ("isinstance(Lock(), int | Lock)", lambda: isinstance(L(), int | L)),
                    ("issubclass(type(Lock()), Lock | None)",
                     lambda: issubclass(type(L()), L | None))]:
                o = outcome(fn)
                out[name] = o
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        emit({"native": n, "profiled": p})
    ''')
    native, profiled = res["native"], res["profiled"]
    diffs = {k: (native[k], profiled[k]) for k in native if native[k] != profiled[k]}
    assert not diffs, diffs


def test_union_operator_errors_like_native_on_every_version():
    """Where `|` raises natively (3.9 for everything, functions on any
    version) the factory raises the same error."""
    res = run(r'''
        def probe(L, R):
            out = {}
            for name, fn in [("L|None", lambda: L | None), ("None|L", lambda: None | L),
                             ("R|None", lambda: R | None), ("None|R", lambda: None | R),
                             ("L|1", lambda: L | 1), ("1|L", lambda: 1 | L),
                             ("L|'x'", lambda: L | "x")]:
                o = outcome(fn)
                out[name] = o if o[0] == "raise" else ["return", repr(o[1])]
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        emit({"native": n, "profiled": p})
    ''')
    assert res["profiled"] == res["native"]


def test_lock_factory_as_class_attribute_does_not_bind():
    res = run(r'''
        start()

        class A:
            make = threading.Lock
            make_r = threading.RLock

            def __init__(self):
                self.lock = self.make()
                self.rlock = self.make_r()

        a = A()
        out = {
            "lock_type": _ddlock.profiled(a.lock) == "Lock",
            "rlock_type": _ddlock.profiled(a.rlock) == "RLock",
            "unbound": [A.make is threading.Lock, a.make is threading.Lock,
                        a.make_r is threading.RLock],
            "works": [a.lock.acquire(), outcome(a.lock.release),
                      a.rlock.acquire(), a.rlock.acquire(), outcome(a.rlock.release),
                      outcome(a.rlock.release)],
            "via_class": _ddlock.profiled(A.make()) == "Lock",
        }

        class S:
            __slots__ = ("lock",)
            factory = staticmethod(threading.Lock)

            def __init__(self):
                self.lock = self.factory()

        out["staticmethod"] = _ddlock.profiled(S().lock) == "Lock"
        # dataclass default_factory
        import dataclasses

        @dataclasses.dataclass
        class D:
            lock: object = dataclasses.field(default_factory=threading.Lock)
            rlock: object = dataclasses.field(default_factory=threading.RLock)

        d = D()
        out["dataclass"] = [_ddlock.profiled(d.lock), _ddlock.profiled(d.rlock)]
        emit(out)
    ''')
    # as natively: threading.RLock is a Python function (a method once bound)
    assert res == {"lock_type": True, "rlock_type": True, "unbound": [True, True, False],
                   "works": [True, ["return", None], True, True, ["return", None],
                             ["return", None]],
                   "via_class": True, "staticmethod": True, "dataclass": ["Lock", "RLock"]}


def test_lock_called_with_arguments_behaves_natively():
    res = run(r'''
        def probe(L, R):
            out = {}
            for name, fn in [("Lock(1)", lambda: L(1)), ("Lock(x=1)", lambda: L(x=1)),
                             ("RLock(1)", lambda: R(1)), ("RLock(x=1)", lambda: R(x=1))]:
                o = outcome(fn)
                if o[0] == "return":  # a lock: report what it can do
                    o = ["return", o[1], outcome(lambda: fn().acquire(False))]
                out[name] = o
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        emit({"native": n, "profiled": p})
    ''')
    assert res["profiled"] == res["native"]


def test_lock_factory_attributes_are_the_native_ones():
    res = run(r'''
        import inspect
        import weakref

        def probe(L, R):
            out = {}
            for nm, obj in (("Lock", L), ("RLock", R)):
                for a in ("__name__", "__qualname__", "__module__", "__doc__"):
                    out[nm + a] = outcome(getattr, obj, a)
                out[nm + " callable"] = callable(obj)
                out[nm + " hashable"] = outcome(lambda: hash(obj) == hash(obj))
                out[nm + " equal to itself"] = obj == obj
                out[nm + " signature"] = outcome(lambda: str(inspect.signature(obj)))
                out[nm + " weakref"] = outcome(lambda: weakref.ref(obj)() is obj)
                out[nm + " in WeakKeyDictionary"] = outcome(
                    lambda: weakref.WeakKeyDictionary({obj: 1})[obj])
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        extra = {"same_objects": [threading.Lock is ddlock._ORIGINAL_LOCK,
                                  threading.RLock is ddlock._ORIGINAL_RLOCK]}
        emit({"native": n, "profiled": p, "extra": extra})
    ''')
    native, profiled = res["native"], res["profiled"]
    diffs = {k: (native[k], profiled[k]) for k in native if native[k] != profiled[k]}
    assert not diffs, diffs
    assert res["extra"] == {"same_objects": [True, True]}


def test_subclassing_raises_like_native():
    res = run(r'''
        def probe(L, R):
            out = {}

            def sub(base):
                class X(base):
                    pass
                return X
            out["class X(Lock)"] = outcome(sub, L)
            out["class X(RLock)"] = outcome(sub, R)
            # type() refuses objects with __mro_entries__ in bases: only
            # the error type can match there
            out["type('X', (Lock,), {})"] = outcome(lambda: type("X", (L,), {}))[:2]
            out["type('X', (RLock,), {})"] = outcome(lambda: type("X", (R,), {}))[:2]
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        emit({"native": n, "profiled": p})
    ''')
    native, profiled = res["native"], res["profiled"]
    assert profiled == native
    assert native["class X(Lock)"][0] == "raise"


def test_copy_and_pickle_of_locks_like_native():
    res = run(r'''
        import copy
        import pickle

        def probe(L, R):
            out = {}
            l, r = L(), R()
            for proto in range(pickle.HIGHEST_PROTOCOL + 1):
                out["dumps lock %d" % proto] = outcome(pickle.dumps, l, proto)
                out["dumps rlock %d" % proto] = outcome(pickle.dumps, r, proto)
            out["copy lock"] = outcome(copy.copy, l)
            out["deepcopy lock"] = outcome(copy.deepcopy, l)
            out["copy rlock"] = outcome(copy.copy, r)
            out["deepcopy rlock"] = outcome(copy.deepcopy, r)
            out["deepcopy {'lock': lock}"] = outcome(copy.deepcopy, {"lock": l})
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        emit({"native": n, "profiled": p})
    ''')
    native, profiled = res["native"], res["profiled"]
    diffs = {k: (native[k], profiled[k]) for k in native if native[k] != profiled[k]}
    assert not diffs, "\n".join("%s: native=%r profiled=%r" % (k, v[0], v[1])
                                for k, v in sorted(diffs.items()))
    assert native["dumps lock 2"][0] == "raise"


def test_copy_and_pickle_of_the_lock_factories_like_native():
    """pickle.dumps(threading.Lock) works natively (pickled by reference);
    so does copying it."""
    res = run(r'''
        import copy
        import pickle

        def probe(L, R):
            out = {}
            out["copy Lock is Lock"] = outcome(lambda: copy.copy(L) is L)
            out["deepcopy Lock is Lock"] = outcome(lambda: copy.deepcopy(L) is L)
            out["deepcopy RLock is RLock"] = outcome(lambda: copy.deepcopy(R) is R)
            out["deepcopy [Lock]"] = outcome(lambda: copy.deepcopy([L])[0] is L)
            for proto in range(pickle.HIGHEST_PROTOCOL + 1):
                for nm, f in (("Lock", L), ("RLock", R)):
                    def roundtrip():
                        g = pickle.loads(pickle.dumps(f, proto))
                        lk = g()
                        return [callable(g), lk.acquire(False), outcome(lk.release)]
                    out["roundtrip %s %d" % (nm, proto)] = outcome(roundtrip)
            out["dumps {'f': Lock}"] = outcome(lambda: type(pickle.dumps({"f": L})).__name__)
            return out

        n = probe(threading.Lock, threading.RLock)
        start()
        p = probe(threading.Lock, threading.RLock)
        emit({"native": n, "profiled": p})
    ''')
    native, profiled = res["native"], res["profiled"]
    diffs = {k: (native[k], profiled[k]) for k in native if native[k] != profiled[k]}
    assert not diffs, "\n".join("%s: native=%r profiled=%r" % (k, v[0], v[1])
                                for k, v in sorted(diffs.items()))
    assert native["roundtrip Lock 2"][0] == "return"


# ---- stdlib users of threading.Lock / RLock while patched --------------------

@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_condition_over_a_profiled_lock(kind):
    res = run(r'''
        start()
        lk = profiled(KIND)
        cond = threading.Condition(lk)
        items, got = [], []

        def producer():
            for i in range(1000):
                with cond:
                    items.append(i)
                    cond.notify()

        def consumer():
            while len(got) < 1000:
                with cond:
                    if not cond.wait_for(lambda: items, timeout=10):
                        return
                    got.extend(items)
                    del items[:]

        ts = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        with cond:
            r, dt = elapsed(cond.wait, 0.05)
        emit({"got": got == list(range(1000)), "alive": [t.is_alive() for t in ts],
              "wait_timeout": r, "timed": 0.045 <= dt < 2.0, "cond_lock": cond._lock is lk})
    ''', params={"KIND": kind})
    assert res == {"got": True, "alive": [False, False], "wait_timeout": ["return", False],
                   "timed": True, "cond_lock": True}


def test_stdlib_primitives_work_while_profiled():
    res = run(r'''
        import concurrent.futures
        import logging
        import queue
        start()
        out = {}
        # Semaphore / BoundedSemaphore
        s = threading.Semaphore(2)
        out["semaphore"] = [s.acquire(), s.acquire(), s.acquire(timeout=0.02),
                            s.acquire(blocking=False), outcome(s.release), s.acquire(False)]
        b = threading.BoundedSemaphore(1)
        out["bounded"] = [b.acquire(), outcome(b.release), outcome(b.release)[:2]]
        # Event
        ev = threading.Event()
        threading.Timer(0.05, ev.set).start()
        out["event"] = [ev.wait(0.01), ev.wait(10), ev.is_set()]
        # Barrier
        bar = threading.Barrier(3, timeout=10)
        ids = []
        ts = [threading.Thread(target=lambda: ids.append(bar.wait())) for _ in range(2)]
        for t in ts:
            t.start()
        ids.append(bar.wait())
        for t in ts:
            t.join(10)
        out["barrier"] = sorted(ids)
        # queue.Queue: its mutex is a profiled Lock (queue is not excluded)
        q = queue.Queue(maxsize=10)
        out["queue_mutex"] = type(q.mutex).__name__
        def produce():
            for i in range(2000):
                q.put(i, timeout=10)
        t = threading.Thread(target=produce)
        t.start()
        total = sum(q.get(timeout=10) for _ in range(2000))
        t.join(10)
        out["queue"] = [total, outcome(q.get, timeout=0.02)[:2], outcome(q.get_nowait)[:2]]
        for _ in range(10):
            q.put_nowait(1)
        out["queue_full"] = [outcome(q.put, 1, timeout=0.02)[:2], outcome(q.put_nowait, 1)[:2]]
        jq = queue.Queue()
        def jworker():
            while True:
                item = jq.get()
                jq.task_done()
                if item is None:
                    return
        jt = threading.Thread(target=jworker)
        jt.start()
        for i in range(100):
            jq.put(i)
        jq.put(None)
        jq.join()
        jt.join(10)
        out["queue_join"] = not jt.is_alive()
        out["lifo_priority"] = [type(queue.LifoQueue().mutex).__name__,
                                type(queue.PriorityQueue().mutex).__name__]
        # ThreadPoolExecutor
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
            out["executor_map"] = sum(ex.map(lambda x: x * x, range(100)))
            fs = [ex.submit(time.sleep, 0.001) for _ in range(20)]
            done, not_done = concurrent.futures.wait(fs, timeout=30)
            out["executor_wait"] = [len(done), len(not_done)]
            out["as_completed"] = len(list(concurrent.futures.as_completed(
                [ex.submit(lambda: 1) for _ in range(10)], timeout=30)))
        # logging, imported before start but handlers made now
        import io
        stream = io.StringIO()
        logger = logging.getLogger("ddlock-test")
        h = logging.StreamHandler(stream)
        logger.addHandler(h)
        logger.warning("hello %s", "world")
        out["logging"] = [stream.getvalue().strip(), _ddlock.profiled(h.lock) == "RLock"]
        # Timer cancel, local()
        tm = threading.Timer(10, lambda: None)
        tm.start(); tm.cancel(); tm.join(10)
        out["timer_cancel"] = not tm.is_alive()
        out["threads_left"] = threading.active_count()
        emit(out)
    ''', timeout=120)
    assert res["semaphore"] == [True, True, False, False, ["return", None], True]
    assert res["bounded"] == [True, ["return", None], ["raise", "ValueError"]]
    assert res["event"] == [False, True, True]
    assert res["barrier"] == [0, 1, 2]
    assert res["queue_mutex"] == "lock"
    assert res["queue"] == [sum(range(2000)), ["raise", "Empty"], ["raise", "Empty"]]
    assert res["queue_full"] == [["raise", "Full"], ["raise", "Full"]]
    assert res["queue_join"] is True
    assert res["lifo_priority"] == ["lock", "lock"]
    assert res["executor_map"] == sum(x * x for x in range(100))
    assert res["executor_wait"] == [20, 0]
    assert res["as_completed"] == 10
    assert res["logging"] == ["hello world", True]
    assert res["timer_cancel"] is True
