"""Differential tests: the same program natively and under ddlock.

Each case is a small program that prints what it observes as one JSON value
(its last line of output). It runs three times in fresh interpreters:
natively, and under ``python -m ddlock.run`` (the profiler started from the
environment exactly as users start it) at 100% capture and at the default
rate. The three outputs must be identical: whatever the program can see --
values, exceptions and their messages, types, introspection, the moment
objects are freed -- is the same with and without ddlock.

A case can name the Python versions it applies to; everything else runs on
every version the suite runs on (3.9-3.13).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import python_env

RATES = ("100", None)  # None: ddlock's default rate


def _run(src, tmp_path, pct, env=None):
    path = tmp_path / "case.py"
    path.write_text(textwrap.dedent(src))
    extra = {"DD_PROFILING_UPLOAD_ENABLED": "false"}
    extra.update(env or {})
    if pct == "native":
        argv = [sys.executable, str(path)]
    else:
        argv = [sys.executable, "-m", "ddlock.run"]
        if pct is not None:
            argv += ["--capture-pct", pct]
        argv += [sys.executable, str(path)]
    proc = subprocess.run(argv, env=python_env(extra), cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (
        "case failed under %s (rc %d)\n--- stdout\n%s\n--- stderr\n%s"
        % (pct, proc.returncode, proc.stdout, proc.stderr))
    return json.loads(lines[-1]), proc.stderr


def differential(src, tmp_path, env=None, stderr=True):
    """Run src natively and under ddlock; assert identical outcomes. With
    stderr, the program's stderr must be identical too."""
    native, native_err = _run(src, tmp_path, "native", env)
    for pct in RATES:
        profiled, profiled_err = _run(src, tmp_path, pct, env)
        label = "ddlock at %s%%" % (pct or "default ")
        assert profiled == native, "%s differs from native:\nnative:   %s\nprofiled: %s" % (
            label, json.dumps(native), json.dumps(profiled))
        if stderr:
            assert profiled_err == native_err, "%s stderr differs:\n%s\n---\n%s" % (
                label, native_err, profiled_err)
    return native


# ---- cases -----------------------------------------------------------------

# A sampled acquire must not change what an earlier locals() returned (3.9-3.12
# refreshed the frame's locals() dict in place while naming the lock).
LOCALS_SNAPSHOT = r'''
import json, threading
_locks = [threading.Lock()]
def api_call(user, retries=3):
    params = locals()
    for _ in range(1000):
        with _locks[0]:
            pass
    return json.dumps(params, sort_keys=True)
def closure():
    cell_lock = threading.RLock()
    snap = locals()
    def inner():
        with cell_lock:
            pass
        return sorted(locals())
    for _ in range(300):
        inner()
    return sorted(snap)
class Body:
    body_lock = threading.Lock()
    before = sorted(locals())
    for _ in range(300):
        with body_lock:
            pass
    after = sorted(k for k in locals() if k not in ("before", "_"))
print(json.dumps([api_call("bob"), closure(), Body.before, Body.after]))
'''

# Naming reads a frame's variables in place: a local lock (and whatever else
# the frame holds) is freed when the program drops it, not when the function
# returns.
FREED_AT_DEL = r'''
import asyncio, gc, json, threading, weakref
def sync(kind):
    freed = []
    lk = getattr(threading, kind)()
    other = type("Resource", (), {})()
    for _ in range(500):
        with lk:
            pass
    weakref.finalize(lk, freed.append, "lock")
    weakref.finalize(other, freed.append, "other")
    del lk, other
    return sorted(freed)
async def coro():
    freed = []
    lk = asyncio.Lock()
    for _ in range(500):
        async with lk:
            pass
    weakref.finalize(lk, freed.append, "lock")
    del lk
    return freed
gc.disable()
print(json.dumps([sync("Lock"), sync("RLock"), asyncio.run(coro())]))
'''


def test_locals_snapshot_unchanged(tmp_path):
    out = differential(LOCALS_SNAPSHOT, tmp_path)
    assert out[0] == '{"retries": 3, "user": "bob"}'


def test_local_lock_freed_at_del(tmp_path):
    out = differential(FREED_AT_DEL, tmp_path)
    assert out == [["lock", "other"], ["lock", "other"], ["lock"]]


# ---- what libraries and tools see (issue 23) --------------------------------

TYPES = r'''
import _thread, functools, inspect, json, sys, threading, unittest.mock
out = {}
lk, rl = threading.Lock(), threading.RLock()
def o(fn):
    try:
        v = fn()
    except BaseException as e:
        return ["raise", type(e).__name__, str(e)]
    return ["return", v if isinstance(v, (bool, int, str, type(None))) else repr(type(v))]
out["type"] = [type(lk).__module__, type(lk).__qualname__, type(rl).__module__,
               type(rl).__qualname__]
out["LockType"] = [isinstance(lk, _thread.LockType), type(lk) is _thread.LockType,
                   type(rl) is _thread.RLock]
out["lock_is"] = [threading.Lock is _thread.allocate_lock, inspect.isclass(threading.Lock),
                  inspect.isbuiltin(threading.Lock), inspect.isfunction(threading.RLock)]
out["instantiate"] = [o(lambda: type(lk)()), o(lambda: type(rl)())]
out["subclass"] = [o(lambda: type("L", (type(lk),), {})), o(lambda: type("R", (type(rl),), {})().acquire())]
out["dir"] = [sorted(dir(lk)), sorted(dir(rl))]
out["autospec"] = [type(unittest.mock.create_autospec(threading.RLock)).__name__,
                   type(unittest.mock.create_autospec(threading.Lock)).__name__]
@functools.singledispatch
def f(x):
    return "default"
out["singledispatch"] = [o(lambda: f.register(threading.Lock)(lambda x: "lock") and f(lk))]
if sys.version_info >= (3, 10):
    ns = {"threading": threading, "lk": lk}
    exec("def m(x):\n    match x:\n        case threading.Lock():\n            return 'lock'\n"
         "        case _:\n            return 'other'\n", ns)
    out["match"] = o(lambda: ns["m"](lk))
out["or_none"] = o(lambda: str(threading.Lock | None)) if sys.version_info >= (3, 10) else None
print(json.dumps(out))
'''

SIGNATURES = r'''
import asyncio, inspect, json, threading
out = {}
import re
def sig(obj):
    try:
        text = str(inspect.signature(obj))
    except (ValueError, TypeError) as e:
        text = "%s: %s" % (type(e).__name__, e)
    return re.sub(r"0x[0-9a-f]+", "ADDR", text)
lk, rl = threading.Lock(), threading.RLock()
for name, obj in (("lock", lk), ("rlock", rl)):
    for m in ("acquire", "release", "__enter__", "__exit__", "locked", "acquire_lock",
              "release_lock", "_is_owned", "_release_save", "_acquire_restore"):
        meth = getattr(obj, m, None)
        if meth is not None:
            out["%s.%s" % (name, m)] = [sig(meth), meth.__doc__, meth.__qualname__,
                                        repr(type(meth))]
for cls in (threading.Semaphore, threading.BoundedSemaphore, threading.Condition,
            asyncio.Lock, asyncio.Semaphore, asyncio.BoundedSemaphore, asyncio.Condition):
    key = cls.__module__ + "." + cls.__qualname__
    out[key] = [sig(cls), [c.__qualname__ for c in cls.__mro__]]
    for m in ("__init__", "acquire", "release", "__enter__", "__exit__", "wait"):
        meth = cls.__dict__.get(m) and getattr(cls, m)
        if meth is not None:
            out[key + "." + m] = [sig(meth), inspect.getsourcefile(meth).rsplit("/", 1)[-1],
                                  inspect.iscoroutinefunction(meth), meth.__qualname__]
sem = threading.Semaphore(2)
out["bound"] = [sig(sem.acquire), sig(sem.release), sem.acquire.__qualname__,
                inspect.ismethod(sem.acquire), sem.acquire.__self__ is sem]
print(json.dumps(out))
'''

REPRS = r'''
import asyncio, json, re, threading
def r(x):
    return re.sub(r"0x[0-9a-f]+", "ADDR", repr(x))
lk, rl, c, s = threading.Lock(), threading.RLock(), threading.Condition(), threading.Semaphore(2)
out = [r(lk), r(rl), r(c), r(s)]
lk.acquire(); rl.acquire(); rl.acquire(); c.acquire(); s.acquire()
out += [r(lk), r(rl).replace(str(threading.get_ident()), "ME"), r(c).replace(str(threading.get_ident()), "ME"), r(s)]
async def main():
    al = asyncio.Lock()
    await al.acquire()
    return [r(al), r(asyncio.Semaphore(3)), r(asyncio.Condition())]
out += asyncio.run(main())
print(json.dumps(out))
'''

GC_FLAGS = r'''
import gc, json, threading
lk, rl = threading.Lock(), threading.RLock()
print(json.dumps([gc.is_tracked(lk), gc.is_tracked(rl),
                  [type(x).__name__ for x in gc.get_referents(lk)],
                  [type(x).__name__ for x in gc.get_referents(rl)]]))
'''

MESSAGES = r'''
import json, threading
def o(fn, *a, **k):
    try:
        v = fn(*a, **k)
    except BaseException as e:
        return ["raise", type(e).__name__, str(e)]
    return ["return", v]
out = {}
for kind in ("Lock", "RLock"):
    lk = getattr(threading, kind)()
    for name, args, kw in [("x", ("x",), {}), ("none", (None,), {}), ("float", (1.5,), {}),
                           ("bool_false", (False,), {}), ("int0", (0,), {}),
                           ("huge_timeout", (), {"timeout": 1e300}),
                           ("big_timeout", (True, 1e20), {}), ("int_timeout", (True, 10 ** 30), {}),
                           ("neg_timeout", (), {"timeout": -2}), ("nan", (), {"timeout": float("nan")}),
                           ("nonblocking_timeout", (False, 1), {}), ("three", (1, 2, 3), {}),
                           ("kw_unknown", (), {"foo": 1}), ("kw_blocking_str", (), {"blocking": "x"})]:
        r = o(lk.acquire, *args, **kw)
        if r[0] == "return" and r[1]:
            lk.release()
        out["%s.acquire.%s" % (kind, name)] = r
    out[kind + ".release_unheld"] = o(lk.release)
    out[kind + ".release_arg"] = o(lk.release, 1)
    out[kind + ".exit_unheld"] = o(lk.__exit__, None, None, None)
    out[kind + ".enter_args"] = o(lk.__enter__, False)
    if kind == "Lock":
        lk.release()
    else:
        lk.release()
    out[kind + ".locked_arg"] = o(getattr(lk, "locked", lambda *a: None), 1)
print(json.dumps(out))
'''

TRACERS = r'''
import cProfile, json, os, pstats, sys, threading
events = []
def tracer(frame, event, arg):
    events.append([event, frame.f_code.co_name, os.path.basename(frame.f_code.co_filename)])
    return tracer
def work():
    lk, rl, s, c = threading.Lock(), threading.RLock(), threading.Semaphore(2), threading.Condition()
    for _ in range(20):
        with lk:
            pass
        lk.acquire(); lk.release()
        with rl:
            with rl:
                pass
        with s:
            pass
        s.acquire(); s.release()
        with c:
            c.notify()
            c.wait(0)
sys.settrace(tracer)
work()
sys.settrace(None)
prof = cProfile.Profile()
prof.enable()
work()
prof.disable()
keys = sorted("%s:%s" % (os.path.basename(f), n) for f, l, n in pstats.Stats(prof).stats)
calls = sorted("%s:%s:%d" % (os.path.basename(f), n, v[1])
               for (f, l, n), v in pstats.Stats(prof).stats.items())
prof_events = []
def profiler(frame, event, arg):
    name = getattr(arg, "__qualname__", None) if event.startswith("c_") else frame.f_code.co_name
    prof_events.append([event, str(name)])
sys.setprofile(profiler)
work()
sys.setprofile(None)
print(json.dumps([events, keys, calls, prof_events]))
'''

TRIO = r'''
import json, threading, trio
async def main():
    lock = trio.Lock()
    async with lock:
        await trio.sleep(0)
    async with trio.open_nursery() as n:
        n.start_soon(trio.sleep, 0)
    return [type(threading.RLock()).__module__, "done"]
print(json.dumps(trio.run(main)))
'''

DILL = r'''
import io, json, logging, queue, threading, dill
def o(fn):
    try:
        return ["return", fn()]
    except BaseException as e:
        return ["raise", type(e).__name__, str(e)]
lk, rl = threading.Lock(), threading.RLock()
lk.acquire()
out = {}
out["lock"] = o(lambda: [type(dill.loads(dill.dumps(lk))).__name__, dill.loads(dill.dumps(lk)).locked()])
out["rlock"] = o(lambda: type(dill.loads(dill.dumps(rl))).__name__)
q = queue.Queue()
q.put(3)
out["queue"] = o(lambda: dill.loads(dill.dumps(q)).get_nowait())
h = logging.StreamHandler(io.StringIO())
out["handler"] = o(lambda: type(dill.loads(dill.dumps(h)).lock).__name__)
out["condition"] = o(lambda: type(dill.loads(dill.dumps(threading.Condition()))).__name__)
print(json.dumps(out))
'''

GEVENT_LOGGING = r'''
import io, json, logging
class SlowStream(io.StringIO):
    def write(self, s):
        import gevent
        for ch in s:            # a handler whose emit yields: socket, syslog
            super().write(ch)
            gevent.sleep(0)
stream = SlowStream()
handler = logging.StreamHandler(stream)
handler.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("app")
log.addHandler(handler)
log.setLevel(logging.INFO)
from gevent import monkey
monkey.patch_all()
import gevent, gevent.thread, threading
def emit(word):
    for _ in range(5):
        log.info(word * 10)
gevent.joinall([gevent.spawn(emit, "a"), gevent.spawn(emit, "b")])
lines = stream.getvalue().splitlines()
print(json.dumps([sorted(set(lines)), len(lines), threading.Lock is gevent.thread.LockType,
                  isinstance(threading.Lock(), gevent.thread.LockType),
                  type(handler.lock).__name__, type(logging._lock).__name__ if hasattr(logging, "_lock") else None]))
'''

SUBINTERP = r'''
import json, sys
try:
    import _testcapi
except ImportError:
    _testcapi = None
rc = None
if _testcapi is not None and hasattr(_testcapi, "run_in_subinterp"):
    rc = _testcapi.run_in_subinterp("import threading\nl = threading.Lock()\nwith l: pass\n")
print(json.dumps(rc))
'''

ASYNCIO_TOOLS = r'''
import asyncio, inspect, json
async def main():
    lock = asyncio.Lock()
    out = {}
    out["acquire_free"] = [inspect.iscoroutine(c := lock.acquire()), type(c).__name__]
    await c
    # contended: the acquire works wherever asyncio takes a coroutine
    t1 = asyncio.create_task(lock.acquire())
    t2 = asyncio.ensure_future(lock.acquire())
    w = asyncio.wait_for(lock.acquire(), 0.01)
    out["wait_for"] = [type(e).__name__ for e in await asyncio.gather(w, return_exceptions=True)]
    lock.release()
    out["create_task"] = await t1
    lock.release()
    out["ensure_future"] = await t2
    lock.release()
    out["gather"] = await asyncio.gather(lock.acquire())
    lock.release()
    return out
print(json.dumps(asyncio.run(main())))
'''


def test_lock_types_and_classes_are_native(tmp_path):
    out = differential(TYPES, tmp_path)
    assert out["LockType"] == [True, True, True]
    if sys.version_info >= (3, 13):
        assert out["lock_is"][1] is True and out["match"] == ["return", "lock"]


def test_signatures_docs_sources_and_mro_are_native(tmp_path):
    out = differential(SIGNATURES, tmp_path)
    assert out["threading.Semaphore.acquire"][1] == "threading.py"
    assert out["threading.Condition"][1] == ["Condition", "object"]


def test_reprs_are_native(tmp_path):
    out = differential(REPRS, tmp_path)
    assert out[0] == "<unlocked _thread.lock object at ADDR>"


def test_gc_flags_are_native(tmp_path):
    differential(GC_FLAGS, tmp_path)


def test_argument_and_overflow_errors_are_native(tmp_path):
    out = differential(MESSAGES, tmp_path)
    assert out["Lock.release_unheld"] == ["raise", "RuntimeError", "release unlocked lock"]


def test_tracers_and_profilers_see_the_native_calls(tmp_path):
    """settrace events, cProfile keys and call counts, setprofile events:
    identical at 100% capture and at the default rate (no frame and no
    call of ddlock's)."""
    out = differential(TRACERS, tmp_path)
    events, keys = out[0], out[1]
    assert ["call", "acquire", "threading.py"] in events  # Semaphore.acquire
    assert any(k.endswith("<method 'acquire' of '_thread.lock' objects>") for k in keys)


def test_trio_runs(tmp_path):
    pytest.importorskip("trio")
    out = differential(TRIO, tmp_path)
    assert out == ["_thread", "done"]


def test_dill_pickles_locks_and_what_holds_them(tmp_path):
    pytest.importorskip("dill")
    out = differential(DILL, tmp_path)
    assert out["lock"] == ["return", ["lock", True]]
    assert out["queue"] == ["return", 3]


@pytest.mark.no_sanitize  # greenlet's stack copying is reported by ASan by design
def test_gevent_relocks_logging_and_its_locks_exclude_greenlets(tmp_path):
    """gevent's patch_all re-creates logging's locks after the program set
    up logging; under ddlock they still exclude greenlets (a handler whose
    emit yields never interleaves records) and threading.Lock is gevent's."""
    pytest.importorskip("gevent")
    out = differential(GEVENT_LOGGING, tmp_path)
    assert out[0] == ["a" * 10, "b" * 10] and out[1] == 10
    assert out[2] is True and out[3] is True


def test_sub_interpreters_are_skipped_silently(tmp_path):
    """Under ddlock-run every interpreter imports the sitecustomize; a
    sub-interpreter is not profiled, and prints nothing (stderr compared)."""
    differential(SUBINTERP, tmp_path)


def test_asyncio_acquire_works_wherever_asyncio_takes_a_coroutine(tmp_path):
    if sys.version_info < (3, 8):
        pytest.skip("walrus")
    out = differential(ASYNCIO_TOOLS, tmp_path)
    assert out["create_task"] is True and out["gather"] == [True]


# Condition waits (issue 25): what Condition.wait/wait_for, Event.wait,
# Queue.get/put, Barrier.wait, Future.result and asyncio's waits return and
# raise is unchanged by the wait hooks.
CONDITION_WAITS = r'''
import asyncio, json, queue, threading, time
from concurrent.futures import ThreadPoolExecutor
def o(fn, *a, **k):
    try:
        v = fn(*a, **k)
    except BaseException as e:
        return ["raise", type(e).__name__, str(e)]
    return ["return", v if isinstance(v, (bool, int, str, type(None))) else type(v).__name__]
out = {}
cond = threading.Condition()
out["wait_unowned"] = o(cond.wait, 0.01)
out["wait_for_unowned"] = o(cond.wait_for, lambda: True, 0.01)
with cond:
    out["wait_timeout"] = o(cond.wait, 0.02)
    out["wait_zero"] = o(cond.wait, 0)
    out["wait_bad_timeout"] = o(cond.wait, "x")
    out["wait_kw"] = o(cond.wait, timeout=0.01)
    out["wait_extra"] = o(cond.wait, 0.01, 2)
    out["wait_for_value"] = o(cond.wait_for, lambda: 42, 0.01)
    out["wait_for_false"] = o(cond.wait_for, lambda: 0, 0.02)
    out["wait_for_raises"] = o(cond.wait_for, lambda: 1 / 0, 0.01)
threading.Timer(0.05, lambda: (cond.acquire(), cond.notify(), cond.release())).start()
with cond:
    out["wait_notified"] = o(cond.wait, 5)
ev = threading.Event()
out["event_timeout"] = o(ev.wait, 0.02)
out["event_bad"] = o(ev.wait, "x")
threading.Timer(0.05, ev.set).start()
out["event_set"] = o(ev.wait, 5)
q = queue.Queue(maxsize=1)
out["get_empty"] = o(q.get, timeout=0.02)
out["get_nowait"] = o(q.get, False)
out["put"] = o(q.put, "a")
out["put_full"] = o(q.put, "b", timeout=0.02)
out["put_bad"] = o(q.put, "b", True, -1)
out["get"] = o(q.get)
threading.Timer(0.05, q.put, ("late",)).start()
out["get_late"] = o(q.get, timeout=5)
b = threading.Barrier(2, timeout=0.02)
out["barrier_timeout"] = o(b.wait)
out["barrier_broken"] = o(b.wait)
with ThreadPoolExecutor(1) as ex:
    f = ex.submit(time.sleep, 0.2)
    out["future_timeout"] = o(f.result, 0.01)
    out["future_value"] = o(ex.submit(lambda: 7).result, 5)
    out["future_raises"] = o(ex.submit(lambda: 1 / 0).result, 5)
async def amain():
    r = {}
    ev, q, c = asyncio.Event(), asyncio.Queue(maxsize=1), asyncio.Condition()
    async def ao(coro):
        try:
            v = await coro
        except BaseException as e:
            return ["raise", type(e).__name__, str(e)]
        return ["return", v]
    r["event_timeout"] = await ao(asyncio.wait_for(ev.wait(), 0.02))
    asyncio.get_running_loop().call_later(0.02, ev.set)
    r["event_set"] = await ao(ev.wait())
    r["cond_unlocked"] = await ao(c.wait())
    async def notifier():
        async with c:
            c.notify_all()
    async with c:
        asyncio.ensure_future(notifier())
        r["cond_notified"] = await ao(c.wait())
        r["cond_wait_for"] = await ao(c.wait_for(lambda: "yes"))
    r["get_timeout"] = await ao(asyncio.wait_for(q.get(), 0.02))
    await q.put(1)
    r["put_timeout"] = await ao(asyncio.wait_for(q.put(2), 0.02))
    r["get"] = await ao(q.get())
    asyncio.get_running_loop().call_later(0.02, q.put_nowait, 3)
    r["get_late"] = await ao(q.get())
    task = asyncio.ensure_future(q.get())
    await asyncio.sleep(0.01)
    task.cancel()
    r["get_cancelled"] = await ao(task)
    return r
out["asyncio"] = asyncio.run(amain())
print(json.dumps(out))
'''


def test_condition_waits_return_and_raise_natively(tmp_path):
    out = differential(CONDITION_WAITS, tmp_path)
    assert out["wait_timeout"] == ["return", False]
    assert out["event_set"] == ["return", True]
    assert out["get_empty"][:2] == ["raise", "Empty"]
    assert out["asyncio"]["get_cancelled"][:2] == ["raise", "CancelledError"]
