"""gevent: whether ``gevent.monkey.patch_all()`` runs before or after
``import ddlock.auto``, threading.Lock/RLock (and Semaphore, Condition) stay
profiled -- gevent's own cooperative locks, profiled in place, exactly the
objects gevent makes -- and samples carry the running greenlet as
``task id`` / ``task name``. A program that merely
has gevent installed, or imported but not patched, is unaffected.

Each program runs in a fresh interpreter. gevent is installed by
``make deps`` (scripts/deps.sh) from wheels only; these tests are skipped only
when deps.sh recorded that PyPI has no gevent wheel for this Python.
"""

import os
import sys

import pytest

from conftest import REPO, run_python
from ddlock import testing


def _gevent_or_skip():
    try:
        import gevent  # noqa: F401
    except ImportError:
        marker = os.path.join(REPO, "build", "no-gevent-wheel-%d.%d" % sys.version_info[:2])
        if os.path.exists(marker):
            pytest.skip("gevent has no wheel for this Python (%s)" % marker)
        raise AssertionError("gevent is not installed for %s: run `make deps`" % sys.executable)


# greenlet copies C stacks around, which ASan reports as stack overflows
pytestmark = [pytest.mark.usefixtures("gevent_available"), pytest.mark.no_sanitize]


@pytest.fixture
def gevent_available():
    _gevent_or_skip()


PROGRAM = r'''
import sys
ORDER, PREFIX = sys.argv[1], sys.argv[2]
if ORDER == "before":
    from gevent import monkey
    monkey.patch_all()
import os
os.environ.update(DD_PROFILING_OUTPUT_PPROF=PREFIX, DD_PROFILING_CAPTURE_PCT="100",
                  DD_PROFILING_UPLOAD_ENABLED="false")
import ddlock.auto
if ORDER == "after":
    from gevent import monkey
    monkey.patch_all()
import threading
import gevent
import gevent.lock
import gevent.thread
import ddlock
from ddlock import _primitives

shared_lock = threading.Lock()
shared_rlock = threading.RLock()
work_ready = threading.Condition()
slots = threading.Semaphore(1)
assert _primitives.tracker_of(shared_lock) == "Lock", type(shared_lock)
assert _primitives.tracker_of(shared_rlock) == "RLock", type(shared_rlock)
# cooperative: the locks are gevent's own, as natively
assert threading.Lock is gevent.thread.LockType
assert type(shared_lock) is gevent.thread.LockType
assert isinstance(shared_lock, threading.Lock)
assert type(shared_rlock) is threading._PyRLock
order = []


def worker(n):
    with shared_lock:
        order.append(n)
        gevent.sleep(0.05)      # the other greenlet waits, cooperatively
    with shared_rlock:
        with shared_rlock:
            gevent.sleep(0.001)
    with slots:
        gevent.sleep(0.001)
    with work_ready:
        work_ready.notify_all()


greenlets = [gevent.spawn(worker, n) for n in range(2)]
for n, g in enumerate(greenlets):
    g.name = "worker-%d" % n
gevent.joinall(greenlets, timeout=30)
assert all(g.successful() for g in greenlets), [g.exception for g in greenlets]
with work_ready:
    work_ready.wait(0.01)
ids = sorted(id(g) for g in greenlets)
print("IDS", ids)
print("ORDER", order)
ddlock.stop()
print("RESTORED", threading.Lock is gevent.thread.LockType,
      not isinstance(vars(gevent.thread.LockType)["acquire"], ddlock._ddlock.Hook),
      "release" not in vars(gevent.thread.LockType))
after = threading.Lock()
print("AFTER", type(after).__module__, type(after).__name__)
'''


@pytest.mark.parametrize("order", ["before", "after"])
def test_gevent_patch_before_or_after_ddlock(prefix, order):
    proc = run_python(PROGRAM, args=(order, prefix), timeout=120)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert out["ORDER"] == "[0, 1]"
    assert out["RESTORED"] == "True True True"
    assert out["AFTER"] == "gevent.thread LockType"
    ids = eval(out["IDS"])
    profile = testing.parse_merged_profile(prefix)

    def samples(name):
        return [s for s in profile.samples if str(s.labels.get("lock name")).endswith(":" + name)]

    lock_samples = samples("shared_lock")
    assert {s.labels.get("lock type") for s in lock_samples} == {"Lock"}
    assert {s.labels.get("task name") for s in lock_samples} == {"worker-0", "worker-1"}
    assert sorted({s.labels.get("task id") for s in lock_samples}) == ids
    # the second greenlet waited for the first one's 50 ms hold
    waited = [s for s in lock_samples if s.labels.get("task name") == "worker-1"]
    assert profile.total("lock-acquire-wait", waited) >= 0.04e9
    held = [s for s in lock_samples if s.labels.get("task name") == "worker-0"]
    assert profile.total("lock-release-hold", held) >= 0.04e9
    assert all(s.leaf.function_name.endswith("worker") for s in lock_samples)
    rlock_samples = samples("shared_rlock")
    assert {s.labels.get("lock type") for s in rlock_samples} == {"RLock"}
    assert profile.total("lock-acquire", rlock_samples) == 4   # 2 greenlets x 2 levels
    assert profile.total("lock-release", rlock_samples) == 2   # the outer holds
    assert {s.labels.get("lock type") for s in samples("slots")} == {"Semaphore"}
    cond = samples("work_ready")
    assert {s.labels.get("lock type") for s in cond} == {"Condition"}
    assert {s.labels.get("task name") for s in cond} >= {"worker-0", "worker-1"}


def test_gevent_installed_or_imported_but_not_patched_is_unaffected(prefix):
    proc = run_python(r'''
import sys, threading
import ddlock
ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False)
from ddlock import _ddlock
# installed, not imported: ddlock never imports it
print("IMPORTED", "gevent" in sys.modules)
lock = threading.Lock()
print("TYPE", _ddlock.profiled(lock) == "Lock")
import gevent
import gevent.events   # imported, not patched
late = threading.Lock()
with late:
    pass
print("LATE", _ddlock.profiled(late) == "Lock")
g = gevent.spawn(lambda: None)
g.join()
ddlock.stop()
print("MONKEY", "gevent.monkey" in sys.modules and sys.modules["gevent.monkey"].is_module_patched("threading"))
''', args=(prefix,))
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert out == {"IMPORTED": "False", "TYPE": "True", "LATE": "True", "MONKEY": "False"}
    profile = testing.parse_merged_profile(prefix)
    late = [s for s in profile.samples if str(s.labels.get("lock name")).endswith(":late")]
    assert late
    # a plain thread, no greenlet: no task labels
    assert all("task id" not in s.labels for s in late)


HOLDERS = r'''
import sys
from gevent import monkey
monkey.patch_all()
import ddlock
ddlock.start(output_pprof=sys.argv[1], capture_pct=100, upload_enabled=False,
             lock_stuck_s=0.3)
import threading
import gevent

report_lock = threading.Lock()
report_rlock = threading.RLock()
report_slots = threading.Semaphore(1)


def holder():
    with report_lock:
        with report_rlock:
            with report_slots:
                gevent.sleep(1.0)     # held past the stuck threshold


def waiter(lock):
    gevent.sleep(0.05)
    with lock:
        pass


greenlets = [gevent.spawn(holder)] + [gevent.spawn(waiter, lock) for lock in
                                      (report_lock, report_rlock, report_slots)]
for n, g in enumerate(greenlets):
    g.name = "holder" if n == 0 else "waiter-%d" % n
gevent.joinall(greenlets, timeout=30)
assert all(g.successful() for g in greenlets), [g.exception for g in greenlets]
print("DEADLOCKS", len(ddlock.deadlocks()), ddlock.stats()["deadlocks"])
print("HOLDER", id(greenlets[0]))
ddlock.stop()
'''


def test_greenlet_holders_named_and_no_false_deadlock(prefix):
    """Greenlets of one thread waiting for a lock another greenlet holds
    (issue 18: `holder task id`/`holder task name` for greenlets): the
    waiter's sample names the holding greenlet, and a wait past the
    stuck-lock threshold is neither reported as the thread stuck on itself
    nor as a deadlock (the thread runs other greenlets meanwhile)."""
    proc = run_python(HOLDERS, args=(prefix,), timeout=120)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert out["DEADLOCKS"] == "0 0", proc.stderr
    assert "stuck" not in proc.stderr and "deadlock" not in proc.stderr, proc.stderr
    holder = int(out["HOLDER"])
    profile = testing.parse_merged_profile(prefix)
    for name, kind in (("report_lock", "Lock"), ("report_rlock", "RLock"),
                       ("report_slots", "Semaphore")):
        waits = [s for s in profile.samples
                 if str(s.labels.get("lock name")).endswith(":" + name)
                 and s.labels.get("task name", "").startswith("waiter")
                 and profile.total("lock-acquire-wait", [s]) > 0]
        assert waits, (name, [s.labels for s in profile.samples])
        assert profile.total("lock-acquire-wait", waits) >= 0.5e9, name
        assert {s.labels.get("lock type") for s in waits} == {kind}
        assert {s.labels.get("holder task id") for s in waits} == {holder}, name
        assert {s.labels.get("holder task name") for s in waits} == {"holder"}, name
        # one thread: no holder thread (it is the waiter's own)
        assert all("holder thread id" not in s.labels for s in waits), name


LOCK_ORDER = r'''
import sys
from gevent import monkey
monkey.patch_all()
import ddlock
ddlock.start(upload_enabled=False, lock_order=True)
import threading
import gevent

a_lock, b_lock = threading.Lock(), threading.Lock()


def hold_a():
    with a_lock:
        gevent.sleep(0.1)       # the other greenlet runs meanwhile


def b_then_a():
    gevent.sleep(0.01)
    with b_lock:
        with a_lock:
            pass


gevent.joinall([gevent.spawn(hold_a), gevent.spawn(b_then_a)], timeout=30)
print("CONSISTENT", len(ddlock.lock_order_inversions()))


def a_then_b():
    with a_lock:
        gevent.sleep(0)
        with b_lock:
            pass


gevent.joinall([gevent.spawn(a_then_b)], timeout=30)
print("INVERTED", len(ddlock.lock_order_inversions()))
ddlock.stop()
print("DONE", 1)
'''


def test_lock_order_per_greenlet(prefix):
    """Lock-order checking under gevent: what each greenlet holds is its
    own (a lock another greenlet of the same thread holds is no edge), a
    real inversion between greenlets is reported, and the reporter waits
    cooperatively (a wait in C blocked every greenlet of the thread: the
    program hung)."""
    proc = run_python(LOCK_ORDER, timeout=60)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert out == {"CONSISTENT": "0", "INVERTED": "1", "DONE": "1"}, (proc.stdout, proc.stderr)
    assert "lock-order inversion between 2 locks" in proc.stderr
    assert ":b_lock held while acquiring" in proc.stderr
