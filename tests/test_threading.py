"""Lock names in the profile, laid out as the seed's unit tests
(/work/shared/seed/rlock-testing.md, dd-trace-py's
``tests/profiling_v2/collector/test_threading.py``)::

    pytest tests/test_threading.py::TestThreadingRLockCollector -v
    pytest tests/test_threading.py::TestThreadingRLockCollector::test_class_member_lock -v

Both collector classes share one base class; ``lock_class`` is looked up on
``threading`` when the test runs, i.e. after ``ddlock.start()`` has patched
it, exactly as user code does.

Every test profiles in-process under a fresh profiler with the
``ddlock_profile`` fixture (``ddlock.start()`` on entering ``run()``,
``ddlock.stop()`` on leaving it) -- the pattern users copy. The autouse
``threading_is_restored`` fixture checks after every test that ddlock is
stopped and ``threading.Lock``/``RLock`` are the originals again, so no
patching leaks from one test into the next.

Every expected event checks the exact ``lock name`` label, the leaf frame's
function, file and line (from the ``# !CREATE!``/``# !ACQUIRE!``/
``# !RELEASE!`` markers), the count and the thread. On 3.9 the ``__exit__``
of a ``with`` block reports the body's last line, hence the
``!RELEASE[<3.10]!`` / ``!RELEASE[>=3.10]!`` marker pairs.
"""

import os
import threading

import pytest

import ddlock
from conftest import locals_readable, this_thread
from ddlock import _ddlock
from ddlock.testing import LockAcquireEvent, LockReleaseEvent

FILENAME = os.path.basename(__file__)

# Globals of test_global_locks (bound while the profiler runs, reset after).
_test_global_lock = None
_test_global_bar_instance = None


@pytest.fixture(autouse=True)
def threading_is_restored():
    assert not ddlock.is_running()
    assert threading.Lock is ddlock._ORIGINAL_LOCK
    assert threading.RLock is ddlock._ORIGINAL_RLOCK
    yield
    assert not ddlock.is_running(), "a test left ddlock running"
    assert threading.Lock is ddlock._ORIGINAL_LOCK, "threading.Lock is still patched"
    assert threading.RLock is ddlock._ORIGINAL_RLOCK, "threading.RLock is still patched"


def assert_acquire_release(prof, key, lock_name, caller_name, thread, count=1):
    """One acquire and one release event of the lock marked ``key``."""
    __tracebackhide__ = True
    linenos = prof.linenos(key)
    common = dict(caller_name=caller_name, filename=FILENAME, linenos=linenos,
                  lock_name=lock_name, count=count, **thread)
    prof.assert_lock_events(
        expected_acquire_events=[LockAcquireEvent(**common)],
        expected_release_events=[LockReleaseEvent(**common)],
    )


def _use_global_lock():
    with _test_global_lock:  # !ACQUIRE! !RELEASE[>=3.10]! _test_global_lock
        pass  # !RELEASE[<3.10]! _test_global_lock


class _GlobalBar:
    def __init__(self, lock_class):
        self.bar_lock = lock_class()  # !CREATE! bar_lock

    def bar(self):
        with self.bar_lock:  # !ACQUIRE! !RELEASE[>=3.10]! bar_lock
            pass  # !RELEASE[<3.10]! bar_lock


class _Foobar:
    def __init__(self, lock_class):
        lock = lock_class()  # !CREATE! test_class_member_lock
        self.foobar_lock = lock

    def bar(self):
        with self.foobar_lock:  # !ACQUIRE! !RELEASE[>=3.10]! test_class_member_lock
            pass  # !RELEASE[<3.10]! test_class_member_lock


class _Foo:
    def __init__(self, lock_class):
        self.__lock = lock_class()  # !CREATE! test_private_lock

    def foo(self):
        with self.__lock:  # !ACQUIRE! !RELEASE[>=3.10]! test_private_lock
            pass  # !RELEASE[<3.10]! test_private_lock


class _Inspected:
    def __init__(self, lock_class):
        # made anonymously, then stored: only looking into the attributes
        # finds the name (the store right after creation would name it)
        self.member_lock = [lock_class()][0]  # !CREATE! inspect_off_member

    def work(self):
        self.member_lock.acquire()  # !ACQUIRE! inspect_off_member
        self.member_lock.release()  # !RELEASE! inspect_off_member


class BaseThreadingLockCollectorTest:
    """The tests of one lock kind; subclasses set ``lock_class_name``."""

    lock_class_name = ""

    @property
    def lock_class(self):
        return getattr(threading, self.lock_class_name)

    @property
    def native_type(self):
        return type(self.lock_class())

    def test_lock_events(self, ddlock_profile):
        with ddlock_profile.run():
            lock = self.lock_class()  # !CREATE! test_lock_events
            # profiled in place: the native type, and profiled
            assert type(lock) is self.native_type
            assert _ddlock.profiled(lock) == self.lock_class_name
            lock.acquire()  # !ACQUIRE! test_lock_events
            lock.release()  # !RELEASE! test_lock_events
        assert_acquire_release(ddlock_profile, "test_lock_events", "lock", "test_lock_events",
                               this_thread())

    def test_lock_events_with_statement(self, ddlock_profile):
        with ddlock_profile.run():
            with_lock = self.lock_class()  # !CREATE! test_lock_events_with
            for _ in range(3):
                with with_lock:  # !ACQUIRE! !RELEASE[>=3.10]! test_lock_events_with
                    pass  # !RELEASE[<3.10]! test_lock_events_with
        assert_acquire_release(ddlock_profile, "test_lock_events_with", "with_lock",
                               "test_lock_events_with_statement", this_thread(), count=3)

    def test_global_locks(self, ddlock_profile):
        global _test_global_lock, _test_global_bar_instance
        try:
            with ddlock_profile.run():
                _test_global_lock = self.lock_class()  # !CREATE! _test_global_lock
                _test_global_bar_instance = _GlobalBar(self.lock_class)
                _use_global_lock()
                _test_global_bar_instance.bar()
        finally:
            _test_global_lock = _test_global_bar_instance = None
        thread = this_thread()
        assert_acquire_release(ddlock_profile, "_test_global_lock", "_test_global_lock",
                               "_use_global_lock", thread)
        assert_acquire_release(ddlock_profile, "bar_lock", "bar_lock", "_GlobalBar.bar", thread)

    def test_class_member_lock(self, ddlock_profile):
        with ddlock_profile.run():
            foobar = _Foobar(self.lock_class)
            foobar.bar()
        # found through self (a local); else the binding where it was made
        assert_acquire_release(ddlock_profile, "test_class_member_lock",
                               "foobar_lock" if locals_readable() else "lock",
                               "_Foobar.bar", this_thread())

    def test_private_lock(self, ddlock_profile):
        with ddlock_profile.run():
            foo = _Foo(self.lock_class)
            foo.foo()
        assert_acquire_release(ddlock_profile, "test_private_lock", "_Foo__lock", "_Foo.foo",
                               this_thread())

    def test_anonymous_lock(self, ddlock_profile):
        with ddlock_profile.run():
            with self.lock_class():  # !CREATE! !ACQUIRE! !RELEASE[>=3.10]! test_anonymous_lock
                pass  # !RELEASE[<3.10]! test_anonymous_lock
        # no variable holds it: the label is "<file>:<line>"
        assert_acquire_release(ddlock_profile, "test_anonymous_lock", None, "test_anonymous_lock",
                               this_thread())

    def test_lock_events_in_thread(self, ddlock_profile):
        seen = {}

        def worker():
            thread_lock = self.lock_class()  # !CREATE! test_lock_events_in_thread
            thread_lock.acquire()  # !ACQUIRE! test_lock_events_in_thread
            thread_lock.release()  # !RELEASE! test_lock_events_in_thread
            seen.update(this_thread())

        with ddlock_profile.run():
            t = threading.Thread(target=worker, name="ddlock-test-worker")
            t.start()
            t.join()
        assert seen["thread_name"] == "ddlock-test-worker"
        assert seen["thread_id"] == t.ident and seen["thread_native_id"] == t.native_id
        assert_acquire_release(ddlock_profile, "test_lock_events_in_thread", "thread_lock",
                               "worker", seen)

    def test_inspect_dir_off(self, ddlock_profile):
        with ddlock_profile.run(lock_name_inspect_dir=False):
            obj = _Inspected(self.lock_class)
            obj.work()
            local_lock = self.lock_class()  # !CREATE! inspect_off_local
            local_lock.acquire()  # !ACQUIRE! inspect_off_local
            local_lock.release()  # !RELEASE! inspect_off_local
        thread = this_thread()
        # attributes are not looked into: the member is "<file>:<line>" ...
        assert_acquire_release(ddlock_profile, "inspect_off_member", None, "_Inspected.work", thread)
        # ... while variables of the acquiring frame still name their lock
        assert_acquire_release(ddlock_profile, "inspect_off_local", "local_lock",
                               "test_inspect_dir_off", thread)

    def _one_fresh_lock(self):
        fresh_lock = self.lock_class()  # !CREATE! fresh_run
        fresh_lock.acquire()  # !ACQUIRE! fresh_run
        fresh_lock.release()  # !RELEASE! fresh_run

    def test_each_run_starts_fresh(self, ddlock_profile):
        deltas = []
        for _ in range(2):
            with ddlock_profile.run():
                before = ddlock.stats()
                self._one_fresh_lock()
                after = ddlock.stats()
            deltas.append({k: after[k] - before[k]
                           for k in ("names_resolved", "names_cache_hits")})
            # only this run's events are in this run's profile
            assert_acquire_release(ddlock_profile, "fresh_run", "fresh_lock", "_one_fresh_lock",
                                   this_thread())
        # the second run searched again: nothing cached survived ddlock.stop()
        assert deltas == [{"names_resolved": 1, "names_cache_hits": 0}] * 2

    def test_patching_is_undone_after_run(self, ddlock_profile):
        native_type = self.native_type
        native_acquire = vars(native_type)["acquire"]
        with ddlock_profile.run():
            # nothing of threading is replaced; the native type's methods are
            assert threading.Lock is ddlock._ORIGINAL_LOCK
            assert threading.RLock is ddlock._ORIGINAL_RLOCK
            assert vars(native_type)["acquire"] is not native_acquire
            during = self.lock_class()
            assert type(during) is native_type
            assert _ddlock.profiled(during) == self.lock_class_name
        assert not ddlock.is_running()
        assert vars(native_type)["acquire"] is native_acquire
        after = self.lock_class()
        assert type(after) is native_type and _ddlock.profiled(after) is None
        # a lock made during the run keeps working, unprofiled, and records
        # nothing more
        assert _ddlock.profiled(during) is None
        before = ddlock.stats()["events_sampled"]
        with during:
            pass
        assert ddlock.stats()["events_sampled"] == before


class TestThreadingLockCollector(BaseThreadingLockCollectorTest):
    lock_class_name = "Lock"


class TestThreadingRLockCollector(BaseThreadingLockCollectorTest):
    lock_class_name = "RLock"
