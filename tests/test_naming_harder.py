"""Lock names in the harder places (issue 21): containers, three attribute
levels, standard-library frames between the user's code and the acquire,
decorators and thread-locals -- named as a person would, never by running
user code, with bounded cost.

Every expected event checks the exact label and the leaf frame's function,
file and line through ``ddlock.testing``'s markers (see test_naming.py).
"""

import _thread
import contextlib
import os
import threading

import pytest

import ddlock
from conftest import locals_readable, this_thread
from ddlock.testing import LockAcquireEvent, LockReleaseEvent

FILENAME = os.path.basename(__file__)
KINDS = ["Lock", "RLock"]


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def expect(prof, key, lock_name, caller_name, thread=None, count=1):
    __tracebackhide__ = True
    common = dict(caller_name=caller_name, filename=FILENAME, linenos=prof.linenos(key),
                  lock_name=lock_name, count=count, **(thread or this_thread()))
    prof.assert_lock_events(expected_acquire_events=[LockAcquireEvent(**common)],
                            expected_release_events=[LockReleaseEvent(**common)])


def expect_made_by_factory(prof, key, lock_name, caller_name, count=1):
    """The events at ``key`` of locks made by _new_lock."""
    __tracebackhide__ = True
    lines = prof.linenos(key)
    common = dict(caller_name=caller_name, filename=FILENAME,
                  create_line=prof.linenos("factory").create, lock_name=lock_name,
                  count=count, **this_thread())
    prof.assert_lock_events(
        expected_acquire_events=[LockAcquireEvent(acquire_line=lines.acquire, **common)],
        expected_release_events=[LockReleaseEvent(release_line=lines.release, **common)])


def labels_of(prof, create_key):
    """Every distinct lock label created at the line marked ``create_key``."""
    line = prof.linenos(create_key).create
    prefix = "%s:%d" % (FILENAME, line)
    return sorted(n for n in prof.lock_names() if n == prefix or n.startswith(prefix + ":"))


def label(prof, create_key, name):
    return "%s:%d:%s" % (FILENAME, prof.linenos(create_key).create, name)


def _new_lock(LockT):
    # made here and returned: no binding at the site (the name must come
    # from the acquire site)
    return LockT()  # !CREATE! factory


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------


class _Registry:
    def __init__(self, LockT):
        self._locks = {"db": LockT(), 7: LockT()}  # !CREATE! member_dict

    def write(self):
        with self._locks["db"]:  # !ACQUIRE! !RELEASE[>=3.10]! member_dict
            pass  # !RELEASE[<3.10]! member_dict
        self._locks[7].acquire()
        self._locks[7].release()


def test_lock_in_a_member_dict(ddlock_profile, kind):
    with ddlock_profile.run():
        _Registry(getattr(threading, kind)).write()
    # the attribute holding the dict, then the item's key
    expect(ddlock_profile, "member_dict", '_locks["db"]' if locals_readable() else None,
           "_Registry.write")
    if locals_readable():
        assert labels_of(ddlock_profile, "member_dict") == [
            label(ddlock_profile, "member_dict", '_locks["db"]'),
            label(ddlock_profile, "member_dict", "_locks[7]")]


shard_locks = []


def _use_shard(i):
    with shard_locks[i]:  # !ACQUIRE! !RELEASE[>=3.10]! shards
        pass  # !RELEASE[<3.10]! shards


def test_comprehension_of_locks_in_a_global_list(ddlock_profile, kind):
    global shard_locks
    LockT = getattr(threading, kind)
    try:
        with ddlock_profile.run():
            shard_locks = [LockT() for _ in range(4)]  # !CREATE! shards
            for i in (2, 2, 0):
                _use_shard(i)
    finally:
        shard_locks = []
    # one row per item: every lock of the comprehension has its own name
    # (such names are per lock, never taken from the per-site cache)
    ddlock_profile.assert_lock_events(expected_acquire_events=[
        LockAcquireEvent(caller_name="_use_shard", filename=FILENAME,
                         linenos=ddlock_profile.linenos("shards"),
                         lock_name="shard_locks[%d]" % i, count=n, **this_thread())
        for i, n in ((2, 2), (0, 1))])
    assert labels_of(ddlock_profile, "shards") == [
        label(ddlock_profile, "shards", "shard_locks[0]"),
        label(ddlock_profile, "shards", "shard_locks[2]")]


def test_locks_in_a_local_tuple_and_a_dict_of_non_str_keys(ddlock_profile, kind):
    LockT = getattr(threading, kind)
    with ddlock_profile.run():
        pair = (LockT(), LockT())  # !CREATE! tuple
        by_obj = {(1, 2): LockT()}  # !CREATE! odd_key
        with pair[1]:  # !ACQUIRE! !RELEASE[>=3.10]! tuple
            pass  # !RELEASE[<3.10]! tuple
        by_obj[(1, 2)].acquire()  # !ACQUIRE! odd_key
        by_obj[(1, 2)].release()  # !RELEASE! odd_key
    caller = "test_locks_in_a_local_tuple_and_a_dict_of_non_str_keys"
    named = locals_readable()
    expect(ddlock_profile, "tuple", "pair[1]" if named else None, caller)
    # a key that is neither str nor int: the container's name (no repr of
    # the user's key is run)
    expect(ddlock_profile, "odd_key", "by_obj" if named else None, caller)


def test_containers_are_bounded(ddlock_profile):
    with ddlock_profile.run():
        many = [object()] * 300 + [threading.Lock()]  # !CREATE! far_item
        nested = [[threading.Lock()]]  # !CREATE! nested
        many[300].acquire()  # !ACQUIRE! far_item
        many[300].release()  # !RELEASE! far_item
        nested[0][0].acquire()  # !ACQUIRE! nested
        nested[0][0].release()  # !RELEASE! nested
    # only the first 256 items of a container, one container level deep
    caller = "test_containers_are_bounded"
    expect(ddlock_profile, "far_item", None, caller)
    expect(ddlock_profile, "nested", None, caller)


# ---------------------------------------------------------------------------
# Three attribute levels
# ---------------------------------------------------------------------------


class _Db:
    def __init__(self, LockT):
        self.pool_lock = _new_lock(LockT)


class _Backend:
    def __init__(self, LockT):
        self.db = _Db(LockT)


class _App:
    def __init__(self, LockT):
        self.backend = _Backend(LockT)

    def handle(self):
        with self.backend.db.pool_lock:  # !ACQUIRE! !RELEASE[>=3.10]! three_levels
            pass  # !RELEASE[<3.10]! three_levels


def test_three_attribute_levels(ddlock_profile, kind):
    with ddlock_profile.run():
        _App(getattr(threading, kind)).handle()
    expect_made_by_factory(ddlock_profile, "three_levels",
                           "pool_lock" if locals_readable() else None, "_App.handle")


# ---------------------------------------------------------------------------
# Standard-library frames between the user's code and the acquire
# ---------------------------------------------------------------------------


def _stdlib_events(prof, key, name, count=1):
    """The samples of the lock made at ``key`` whose leaf is contextlib's."""
    want = label(prof, key, name) if name else "%s:%d" % (FILENAME, prof.linenos(key).create)
    samples = [s for s in prof.profile.samples if s.labels.get("lock name") == want]
    leaves = {os.path.basename(s.leaf.filename) for s in samples if s.leaf is not None}
    assert leaves == {"contextlib.py"}, (want, leaves, prof.lock_names())
    assert prof.profile.total("lock-acquire", samples) == count
    assert prof.profile.total("lock-release", samples) == count


def test_exit_stack_enter_context(ddlock_profile, kind):
    LockT = getattr(threading, kind)
    with ddlock_profile.run():
        batch_lock = LockT()  # !CREATE! exit_stack
        with contextlib.ExitStack() as stack:
            stack.enter_context(batch_lock)
        locks = {"batch": LockT()}  # !CREATE! exit_stack_item
        with contextlib.ExitStack() as stack:
            stack.enter_context(locks["batch"])
    # not `cm`, the parameter of contextlib's enter_context: the search
    # skips the standard library's frames (for a lock made outside it) and
    # reads the user's frame
    _stdlib_events(ddlock_profile, "exit_stack", "batch_lock")
    _stdlib_events(ddlock_profile, "exit_stack_item",
                   'locks["batch"]' if locals_readable() else None)
    assert labels_of(ddlock_profile, "exit_stack_item") == [
        label(ddlock_profile, "exit_stack_item", 'locks["batch"]') if locals_readable()
        else "%s:%d" % (FILENAME, ddlock_profile.linenos("exit_stack_item").create)]


def test_stdlib_made_lock_keeps_its_stdlib_name(ddlock_profile):
    import queue

    with ddlock_profile.run():
        q = queue.Queue()
        q.put(1)
        q.get()
    # a lock the standard library made is named where the standard library
    # acquires it (its own frames are not skipped for it)
    names = [n for n in ddlock_profile.lock_names() if n.startswith("queue.py:")]
    assert names and all(n.endswith(":mutex") for n in names), ddlock_profile.lock_names()


# ---------------------------------------------------------------------------
# Decorators and helpers
# ---------------------------------------------------------------------------


def synchronized(lock):
    def decorate(fn):
        def wrapper(*args, **kwargs):
            with lock:  # !ACQUIRE! !RELEASE[>=3.10]! decorator
                return fn(*args, **kwargs)  # !RELEASE[<3.10]! decorator
        return wrapper
    return decorate


counter_lock = None


def test_synchronized_decorator(ddlock_profile, kind):
    global counter_lock
    try:
        with ddlock_profile.run():
            counter_lock = getattr(threading, kind)()  # !CREATE! decorator

            @synchronized(counter_lock)
            def bump():
                return 1

            assert bump() + bump() == 2
    finally:
        counter_lock = None
    # `lock` is the decorator's parameter: the name the lock was bound to
    # where it was made wins
    expect(ddlock_profile, "decorator", "counter_lock",
           "synchronized.<locals>.decorate.<locals>.wrapper", count=2)


# ---------------------------------------------------------------------------
# Thread-locals
# ---------------------------------------------------------------------------


tls = threading.local()


class _TLS(threading.local):
    pass


class _InitTLS(threading.local):
    inits = 0

    def __init__(self):
        type(self).inits += 1


def _use_tls(holder):
    with holder.conn_lock:  # !ACQUIRE! !RELEASE[>=3.10]! tls
        pass  # !RELEASE[<3.10]! tls


def test_thread_local(ddlock_profile, kind):
    LockT = getattr(threading, kind)
    sub = _TLS()
    with ddlock_profile.run():
        tls.conn_lock = _new_lock(LockT)
        sub.conn_lock = _new_lock(LockT)
        _use_tls(tls)
        _use_tls(sub)
    del tls.conn_lock
    # the current thread's attribute dict, read without running user code
    # (`tls` is a global: found through the globals on every build; the
    # same site and acquiring function share the name)
    expect_made_by_factory(ddlock_profile, "tls", "conn_lock", "_use_tls", count=2)


def test_thread_local_with_init_is_not_initialised_by_the_search(ddlock_profile):
    init_tls = _InitTLS()
    assert _InitTLS.inits == 1
    result = {}

    def other_thread():
        lock = holder.lock
        lock.acquire()  # !ACQUIRE! init_tls
        lock.release()  # !RELEASE! init_tls
        result.update(this_thread())

    class Holder:
        pass

    holder = Holder()
    with ddlock_profile.run():
        init_tls.own_lock = _new_lock(threading.Lock)
        holder.lock = init_tls.own_lock
        holder.tls = init_tls
        t = threading.Thread(target=other_thread, name="tls-reader")
        t.start()
        t.join()
    # In the other thread init_tls has no attribute dict yet: reading it
    # would run _InitTLS.__init__. The search does not; the lock is found
    # through the closure's holder instead.
    assert _InitTLS.inits == 1
    common = dict(caller_name="test_thread_local_with_init_is_not_initialised_by_the_search"
                  ".<locals>.other_thread", filename=FILENAME,
                  create_line=ddlock_profile.linenos("factory").create,
                  acquire_line=ddlock_profile.linenos("init_tls").acquire,
                  lock_name="lock" if locals_readable() else None, count=1, **result)
    ddlock_profile.assert_lock_events(expected_acquire_events=[LockAcquireEvent(**common)])


# ---------------------------------------------------------------------------
# DD_PROFILING_LOCK_NAME_INSPECT_DIR=false
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("inspect", [True, False], ids=["inspect_on", "inspect_off"])
def test_inspect_dir_off_turns_off_containers_attributes_and_thread_locals(
        ddlock_profile, inspect):
    with ddlock_profile.run(lock_name_inspect_dir=inspect):
        _Registry(threading.Lock).write()
        _App(threading.Lock).handle()
        tls.conn_lock = _new_lock(threading.Lock)
        _use_tls(tls)
        off_lock = threading.Lock()  # !CREATE! still_named
        with off_lock:  # !ACQUIRE! !RELEASE[>=3.10]! still_named
            pass  # !RELEASE[<3.10]! still_named
    del tls.conn_lock
    on = inspect and locals_readable()
    # looking into containers, attributes and thread-locals is what it turns off
    expect(ddlock_profile, "member_dict", '_locks["db"]' if on else None, "_Registry.write")
    anonymous = str(ddlock_profile.linenos("factory").create)
    # tls is a global (read on every build); the App is reached through a local
    expected = {"conn_lock" if inspect else anonymous, "pool_lock" if on else anonymous}
    assert {n.rsplit(":", 1)[-1] for n in labels_of(ddlock_profile, "factory")} == expected
    # variables and creation bindings stay on
    expect(ddlock_profile, "still_named", "off_lock",
           "test_inspect_dir_off_turns_off_containers_attributes_and_thread_locals")


def _use_hostile_tls(h):
    get = _thread._local.__getattribute__
    get(h, "hidden_lock").acquire()  # !ACQUIRE! hostile_tls
    get(h, "hidden_lock").release()  # !RELEASE! hostile_tls


def test_no_user_code_in_thread_local_subclass(ddlock_profile):
    calls = []

    class Hostile(threading.local):
        def __getattribute__(self, name):
            calls.append(name)
            return object.__getattribute__(self, name)

        def __getattr__(self, name):
            calls.append(name)
            raise AttributeError(name)

    h = Hostile()
    with ddlock_profile.run():
        _thread._local.__setattr__(h, "hidden_lock", _new_lock(threading.Lock))
        calls.clear()
        _use_hostile_tls(h)
        seen = list(calls)
    # read through _thread._local's own lookup, not the subclass's
    assert seen == []
    ddlock_profile.assert_lock_events(expected_acquire_events=[LockAcquireEvent(
        caller_name="_use_hostile_tls", filename=FILENAME,
        create_line=ddlock_profile.linenos("factory").create,
        acquire_line=ddlock_profile.linenos("hostile_tls").acquire,
        lock_name="hidden_lock" if locals_readable() else None, count=1, **this_thread())])
