"""Lock names: every way user code binds a lock, hostile objects next to the
lock, and finalizers that acquire profiled locks while a sample is taken.

A lock's name is searched once, at its first sampled event, in the first
frame outside threading.py and ddlock that acquires it (DESIGN.md): that
frame's locals, then its globals, then one level of attributes, then a
second (``self.pool.conn_lock``). The label is ``<file>:<line>:<name>``
with the creation site's file and line, or ``<file>:<line>`` when no name is
found.

In-process tests use the ``ddlock_profile`` fixture (a fresh ``ddlock.start``
/ ``ddlock.stop`` per test); the autouse ``threading_is_restored`` fixture
checks that nothing stays patched afterwards. Tests that could crash or hang
the interpreter if a regression came back (a stolen ``__slots__``
descriptor, finalizers during sampling) run in a subprocess with timeouts.

Every expected event checks the exact label, the leaf frame's function, file
and line (``# !CREATE!``/``# !ACQUIRE!``/``# !RELEASE!`` markers; on 3.9 a
``with`` block's exit reports the body's last line, hence
``!RELEASE[<3.10]!``), the count and the thread.
"""

import collections.abc
import dataclasses
import json
import os
import sys
import textwrap
import threading
import time

import pytest

import ddlock
from conftest import locals_readable, run_script, this_thread
from ddlock import testing
from ddlock.testing import LineMarkers, LockAcquireEvent, LockReleaseEvent

FILENAME = os.path.basename(__file__)
KINDS = ["Lock", "RLock"]


@pytest.fixture(autouse=True)
def threading_is_restored():
    assert not ddlock.is_running()
    yield
    assert not ddlock.is_running(), "a test left ddlock running"
    assert threading.Lock is ddlock._ORIGINAL_LOCK, "threading.Lock is still patched"
    assert threading.RLock is ddlock._ORIGINAL_RLOCK, "threading.RLock is still patched"


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def expect(prof, key, lock_name, caller_name, thread=None, count=1, acquire=True, release=True,
           linenos=None, filename=FILENAME):
    """Assert the acquire and/or release event of the lock marked ``key``."""
    __tracebackhide__ = True
    common = dict(caller_name=caller_name, filename=filename,
                  linenos=linenos or prof.linenos(key), lock_name=lock_name, count=count,
                  **(thread or this_thread()))
    prof.assert_lock_events(
        expected_acquire_events=[LockAcquireEvent(**common)] if acquire else [],
        expected_release_events=[LockReleaseEvent(**common)] if release else [],
    )


def labels_of(prof, create_key):
    """Every distinct lock label created at the line marked ``create_key``."""
    line = prof.linenos(create_key).create
    prefix = "%s:%d" % (FILENAME, line)
    return sorted(n for n in prof.lock_names() if n == prefix or n.startswith(prefix + ":"))


# ---------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------


def test_local_variable(ddlock_profile, kind):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)
        request_lock = LockT()  # !CREATE! local
        request_lock.acquire()  # !ACQUIRE! local
        request_lock.release()  # !RELEASE! local
    expect(ddlock_profile, "local", "request_lock", "test_local_variable")


global_lock = None


def _acquire_global():
    global_lock.acquire()  # !ACQUIRE! global
    global_lock.release()  # !RELEASE! global


def test_global_variable(ddlock_profile, kind):
    global global_lock
    try:
        with ddlock_profile.run():
            global_lock = getattr(threading, kind)()  # !CREATE! global
            _acquire_global()
    finally:
        global_lock = None
    expect(ddlock_profile, "global", "global_lock", "_acquire_global")


def test_explicit_acquire_release_and_with_statement(ddlock_profile, kind):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)
        state_lock = LockT()  # !CREATE! explicit !CREATE! with_statement
        state_lock.acquire()  # !ACQUIRE! explicit
        state_lock.release()  # !RELEASE! explicit
        with state_lock:  # !ACQUIRE! !RELEASE[>=3.10]! with_statement
            pass  # !RELEASE[<3.10]! with_statement
    caller = "test_explicit_acquire_release_and_with_statement"
    expect(ddlock_profile, "explicit", "state_lock", caller)
    expect(ddlock_profile, "with_statement", "state_lock", caller)


def _make_counter(LockT):
    counter_lock = LockT()  # !CREATE! closure

    def bump():
        with counter_lock:  # !ACQUIRE! !RELEASE[>=3.10]! closure
            pass  # !RELEASE[<3.10]! closure

    return bump


def test_closure_variable(ddlock_profile, kind):
    with ddlock_profile.run():
        bump = _make_counter(getattr(threading, kind))
        bump()
        bump()
    # the free variable of the acquiring frame names it
    expect(ddlock_profile, "closure", "counter_lock", "_make_counter.<locals>.bump", count=2)


def _transfer(src_lock):
    src_lock.acquire()  # !ACQUIRE! argument
    src_lock.release()  # !RELEASE! argument


def test_lock_passed_as_argument(ddlock_profile, kind):
    with ddlock_profile.run():
        account_lock = getattr(threading, kind)()  # !CREATE! argument
        _transfer(account_lock)
    # The search runs in the first frame outside threading.py/ddlock that
    # acquires the lock, the callee, where only a parameter holds it: the
    # name the lock was bound to where it was made wins over what another
    # function was handed.
    expect(ddlock_profile, "argument", "account_lock", "_transfer")
    assert labels_of(ddlock_profile, "argument") == [
        "%s:%d:account_lock" % (FILENAME, ddlock_profile.linenos("argument").create)]


def _produce(LockT):
    gen_lock = LockT()  # !CREATE! generator
    for i in range(2):
        with gen_lock:  # !ACQUIRE! !RELEASE[>=3.10]! generator
            yield i  # !RELEASE[<3.10]! generator


def test_generator(ddlock_profile, kind):
    with ddlock_profile.run():
        assert list(_produce(getattr(threading, kind))) == [0, 1]
    expect(ddlock_profile, "generator", "gen_lock", "_produce", count=2)


def test_import_alias_after_start(ddlock_profile):
    with ddlock_profile.run():
        from threading import Lock as L
        from threading import RLock as RL

        assert L is threading.Lock and RL is threading.RLock  # the patched factories
        alias_lock = L()  # !CREATE! alias_lock
        alias_rlock = RL()  # !CREATE! alias_rlock
        alias_lock.acquire()  # !ACQUIRE! alias_lock
        alias_lock.release()  # !RELEASE! alias_lock
        alias_rlock.acquire()  # !ACQUIRE! alias_rlock
        alias_rlock.release()  # !RELEASE! alias_rlock
    expect(ddlock_profile, "alias_lock", "alias_lock", "test_import_alias_after_start")
    expect(ddlock_profile, "alias_rlock", "alias_rlock", "test_import_alias_after_start")


def test_anonymous_with(ddlock_profile, kind):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)
        with LockT():  # !CREATE! !ACQUIRE! !RELEASE[>=3.10]! anonymous
            pass  # !RELEASE[<3.10]! anonymous
    expect(ddlock_profile, "anonymous", None, "test_anonymous_with")


def test_locks_in_a_dict_and_a_list(ddlock_profile, kind):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)
        by_key = {"shard-1": LockT()}  # !CREATE! in_dict
        stripes = [LockT()]  # !CREATE! in_list
        with by_key["shard-1"]:  # !ACQUIRE! !RELEASE[>=3.10]! in_dict
            pass  # !RELEASE[<3.10]! in_dict
        stripes[0].acquire()  # !ACQUIRE! in_list
        stripes[0].release()  # !RELEASE! in_list
    # the items of the containers a variable holds: name[key], name[index]
    caller = "test_locks_in_a_dict_and_a_list"
    expect(ddlock_profile, "in_dict", 'by_key["shard-1"]' if locals_readable() else None, caller)
    expect(ddlock_profile, "in_list", "stripes[0]" if locals_readable() else None, caller)


def test_per_request_locks_made_in_a_loop(ddlock_profile, kind):
    n = 50
    with ddlock_profile.run():
        LockT = getattr(threading, kind)
        before = ddlock.stats()
        for _ in range(n):
            per_request_lock = LockT()  # !CREATE! per_request
            with per_request_lock:  # !ACQUIRE! !RELEASE[>=3.10]! per_request
                pass  # !RELEASE[<3.10]! per_request
        after = ddlock.stats()
    # one name for all of them, found once and then taken from the cache
    expect(ddlock_profile, "per_request", "per_request_lock",
           "test_per_request_locks_made_in_a_loop", count=n)
    assert labels_of(ddlock_profile, "per_request") == [
        "%s:%d:per_request_lock" % (FILENAME, ddlock_profile.linenos("per_request").create)]
    assert after["names_resolved"] - before["names_resolved"] == 1
    assert after["names_cache_hits"] - before["names_cache_hits"] == n - 1
    assert after["names_cache_hits"] > 0


# ---------------------------------------------------------------------------
# Attributes
# ---------------------------------------------------------------------------


class _Service:
    def __init__(self, LockT):
        self.session_lock = LockT()  # !CREATE! member
        self.adopted_lock = [LockT()][0]  # !CREATE! adopted

    def handle(self):
        with self.session_lock:  # !ACQUIRE! !RELEASE[>=3.10]! member
            pass  # !RELEASE[<3.10]! member
        with self.adopted_lock:  # !ACQUIRE! !RELEASE[>=3.10]! adopted
            pass  # !RELEASE[<3.10]! adopted


@pytest.mark.parametrize("inspect", [True, False], ids=["inspect_on", "inspect_off"])
def test_class_member(ddlock_profile, kind, inspect):
    with ddlock_profile.run(lock_name_inspect_dir=inspect):
        _Service(getattr(threading, kind)).handle()
        member_local = getattr(threading, kind)()  # !CREATE! member_local
        member_local.acquire()  # !ACQUIRE! member_local
        member_local.release()  # !RELEASE! member_local
    # inspection off: attributes are not looked into; a member is still
    # named by the attribute it was bound to where it was made, but one
    # made anonymously and stored in an attribute later is found only by
    # looking into the attributes
    expect(ddlock_profile, "member", "session_lock", "_Service.handle")
    expect(ddlock_profile, "adopted", "adopted_lock" if inspect and locals_readable() else None,
           "_Service.handle")
    # variables are named either way
    expect(ddlock_profile, "member_local", "member_local", "test_class_member")


class _Account:
    def __init__(self, LockT):
        self.__lock = LockT()  # !CREATE! private

    def deposit(self):
        with self.__lock:  # !ACQUIRE! !RELEASE[>=3.10]! private
            pass  # !RELEASE[<3.10]! private


def test_private_member(ddlock_profile, kind):
    with ddlock_profile.run():
        _Account(getattr(threading, kind)).deposit()
    expect(ddlock_profile, "private", "_Account__lock", "_Account.deposit")


class _Slotted:
    __slots__ = ("counter", "slot_lock")

    def __init__(self, LockT):
        self.counter = 0
        self.slot_lock = LockT()  # !CREATE! slots

    def incr(self):
        self.slot_lock.acquire()  # !ACQUIRE! slots
        self.counter += 1
        self.slot_lock.release()  # !RELEASE! slots


def test_slots_member(ddlock_profile, kind):
    with ddlock_profile.run():
        obj = _Slotted(getattr(threading, kind))
        obj.incr()
    assert not hasattr(obj, "__dict__")
    expect(ddlock_profile, "slots", "slot_lock", "_Slotted.incr")


def test_class_attribute(ddlock_profile, kind):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)

        class Table:
            table_lock = LockT()  # !CREATE! class_attr_self !CREATE! class_attr_cls

            def update(self):
                with self.table_lock:  # !ACQUIRE! !RELEASE[>=3.10]! class_attr_self
                    pass  # !RELEASE[<3.10]! class_attr_self

        class Registry:
            registry_lock = LockT()  # !CREATE! class_attr_first_cls

        def register():
            Registry.registry_lock.acquire()  # !ACQUIRE! class_attr_first_cls
            Registry.registry_lock.release()  # !RELEASE! class_attr_first_cls

        def rebuild():
            Table.table_lock.acquire()  # !ACQUIRE! class_attr_cls
            Table.table_lock.release()  # !RELEASE! class_attr_cls

        Table().update()  # named here, through self's class
        rebuild()  # the same lock through the class: same label
        register()  # named through the class object (a closure variable)
    expect(ddlock_profile, "class_attr_self", "table_lock", "Table.update")
    expect(ddlock_profile, "class_attr_cls", "table_lock", "rebuild")
    expect(ddlock_profile, "class_attr_first_cls", "registry_lock", "register")


class _Pool:
    def __init__(self, LockT):
        self.conn_lock = LockT()  # !CREATE! two_level


class _Client:
    def __init__(self, LockT):
        self.pool = _Pool(LockT)

    def query(self):
        with self.pool.conn_lock:  # !ACQUIRE! !RELEASE[>=3.10]! two_level
            pass  # !RELEASE[<3.10]! two_level


def test_two_level_attribute(ddlock_profile, kind):
    with ddlock_profile.run():
        _Client(getattr(threading, kind)).query()
    expect(ddlock_profile, "two_level", "conn_lock", "_Client.query")


def test_dataclass_default_factory(ddlock_profile, kind):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)

        @dataclasses.dataclass
        class Job:
            name: str = "job"
            job_lock: object = dataclasses.field(default_factory=LockT)
            lambda_lock: object = dataclasses.field(
                default_factory=lambda: LockT())  # !CREATE! dataclass_lambda

            def run(self):
                with self.job_lock:  # !ACQUIRE! !RELEASE[>=3.10]! dataclass
                    pass  # !RELEASE[<3.10]! dataclass
                self.lambda_lock.acquire()  # !ACQUIRE! dataclass_lambda
                self.lambda_lock.release()  # !RELEASE! dataclass_lambda

        job = Job()  # !CREATE! dataclass
        job.run()
    # The factory is called by the __init__ dataclasses compiled from a
    # string, which is in no file: the lock is attributed to the line that
    # made the instance. A lambda factory is user code: its own line.
    # (found through self: a local)
    named = locals_readable()
    expect(ddlock_profile, "dataclass", "job_lock" if named else None, "Job.run")
    expect(ddlock_profile, "dataclass_lambda", "lambda_lock" if named else None, "Job.run")
    assert not [n for n in ddlock_profile.lock_names() if n.startswith("<string>")]


@pytest.mark.parametrize("inline", [False, True], ids=["lock_variable", "inline_lock"])
def test_condition_with_statement(ddlock_profile, kind, inline):
    with ddlock_profile.run():
        LockT = getattr(threading, kind)
        if not inline:
            cond_lock = LockT()  # !CREATE! condition
            cond = threading.Condition(cond_lock)
            with cond:  # !ACQUIRE! !RELEASE[>=3.10]! condition
                pass  # !RELEASE[<3.10]! condition
        else:
            cond = threading.Condition(LockT())  # !CREATE! condition_inline
            with cond:  # !ACQUIRE! !RELEASE[>=3.10]! condition_inline
                pass  # !RELEASE[<3.10]! condition_inline
    # Condition.__enter__ (threading.py) acquires; the name is searched in the
    # user's frame and the leaf frame is the user's `with cond:` line.
    caller = "test_condition_with_statement"
    if not inline:
        expect(ddlock_profile, "condition", "cond_lock", caller)
    else:
        # only the Condition is in scope: its attribute names the lock
        expect(ddlock_profile, "condition_inline", "_lock" if locals_readable() else None,
               caller)
    for s in ddlock_profile.profile.samples:
        if s.leaf is not None and s.leaf.function_name.endswith("test_condition_with_statement"):
            assert not s.leaf.filename.endswith("threading.py")


def test_locks_made_and_used_in_another_thread(ddlock_profile, kind):
    seen = {}

    def worker(shared):
        LockT = getattr(threading, kind)
        worker_lock = LockT()  # !CREATE! thread_own
        worker_lock.acquire()  # !ACQUIRE! thread_own
        worker_lock.release()  # !RELEASE! thread_own
        with shared:  # !ACQUIRE! !RELEASE[>=3.10]! thread_shared
            pass  # !RELEASE[<3.10]! thread_shared
        seen.update(this_thread())

    with ddlock_profile.run():
        main_made_lock = getattr(threading, kind)()  # !CREATE! thread_shared
        t = threading.Thread(target=worker, args=(main_made_lock,), name="naming-worker")
        t.start()
        t.join()
    assert seen == {"thread_id": t.ident, "thread_native_id": t.native_id,
                    "thread_name": "naming-worker"}
    caller = "test_locks_made_and_used_in_another_thread.<locals>.worker"
    expect(ddlock_profile, "thread_own", "worker_lock", caller, thread=seen)
    # made in the main thread and acquired in the worker, where only a
    # parameter holds it: named as it was bound where it was made
    expect(ddlock_profile, "thread_shared", "main_made_lock", caller, thread=seen)


def test_same_code_in_two_files_keeps_each_files_label(ddlock_profile, tmp_path):
    # Code objects with equal contents compare equal even across files; the
    # name cache must not hand one file's label to the other's lock.
    src = "def make(LockT):\n    lock = LockT()\n    with lock:\n        pass\n    return lock\n"
    made = []
    with ddlock_profile.run():
        for path in ("pkg_a/_vendored.py", "pkg_b/_compat.py"):
            ns = {}
            exec(compile(src, str(tmp_path / path), "exec"), ns)
            made.append(ns["make"](threading.Lock))
    for path in ("_vendored.py", "_compat.py"):
        ddlock_profile.assert_lock_events(
            expected_acquire_events=[LockAcquireEvent(
                caller_name="make", filename=path, create_line=2, acquire_line=3,
                lock_name="lock", count=1, **this_thread())],
        )


# ---------------------------------------------------------------------------
# Hostile objects next to the lock: never invoked, no exception
# ---------------------------------------------------------------------------

CALLS = {}


def _count(what):
    CALLS[what] = CALLS.get(what, 0) + 1


class SideEffectProperty:
    @property
    def connection(self):
        _count("property")
        return object()

    @property
    def __class__(self):
        _count("__class__")
        return SideEffectProperty


class RaisingGetattr:
    def __getattr__(self, name):
        _count("__getattr__")
        raise RuntimeError("__getattr__ must not run")

    def __getattribute__(self, name):
        _count("__getattribute__")
        raise RuntimeError("__getattribute__ must not run")


class DictProperty:
    """Its __dict__ is a property that raises; the real dict is still there."""

    @property
    def __dict__(self):
        _count("__dict__")
        raise RuntimeError("__dict__ must not run")


class Comparing:
    def __init__(self, h=1):
        object.__setattr__(self, "_h", h)

    def __eq__(self, other):
        _count("__eq__")
        raise RuntimeError("__eq__ must not run")

    def __ne__(self, other):
        _count("__ne__")
        raise RuntimeError("__ne__ must not run")

    def __hash__(self):
        _count("__hash__")
        return object.__getattribute__(self, "_h")

    def __repr__(self):
        _count("__repr__")
        raise RuntimeError("__repr__ must not run")

    def __str__(self):
        _count("__str__")
        raise RuntimeError("__str__ must not run")

    def __bool__(self):
        _count("__bool__")
        raise RuntimeError("__bool__ must not run")

    def __len__(self):
        _count("__len__")
        raise RuntimeError("__len__ must not run")

    def __iter__(self):
        _count("__iter__")
        raise RuntimeError("__iter__ must not run")


class CountingDescriptor:
    def __get__(self, obj, owner=None):
        _count("__get__")
        raise RuntimeError("__get__ must not run")

    def __set__(self, obj, value):
        _count("__set__")
        raise RuntimeError("__set__ must not run")


class HostileMeta(type):
    def __getattribute__(cls, name):
        _count("meta.__getattribute__")
        return type.__getattribute__(cls, name)

    def __eq__(cls, other):
        _count("meta.__eq__")
        raise RuntimeError("meta __eq__ must not run")

    __hash__ = type.__hash__

    def __repr__(cls):
        _count("meta.__repr__")
        raise RuntimeError("meta __repr__ must not run")


class HostileClass(metaclass=HostileMeta):
    attr = CountingDescriptor()
    connection = SideEffectProperty.connection


class HostileSlots:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b

    def __getattribute__(self, name):
        _count("slots.__getattribute__")
        return object.__getattribute__(self, name)


def _hostiles():
    """One of each, plus a plain object holding all of them as attributes and
    as a dict key, so that the search meets them at every level."""
    objs = [SideEffectProperty(), RaisingGetattr(), DictProperty(), Comparing(),
            HostileClass(), HostileClass, HostileSlots(Comparing(), RaisingGetattr())]
    holder = _Plain()
    for i, o in enumerate(objs):
        holder.__dict__["h%d" % i] = o
    holder.__dict__[Comparing(7)] = Comparing()  # a non-str key (hashed once, here)
    object.__setattr__(objs[2], "inner", Comparing())  # the real dict of DictProperty
    return objs + [holder]


class _Plain:
    pass


class _Inner:
    def __init__(self, LockT):
        self.deep_lock = LockT()  # !CREATE! hostile_named


def _acquire_among_hostiles(prop, getattr_, dictprop, comparing, inst, cls, slots, holder,
                            deep, anon):
    # deep.inner.deep_lock is two levels down, behind every hostile local:
    # finding its name means the search went past all of them
    deep.inner.deep_lock.acquire()  # !ACQUIRE! hostile_named
    deep.inner.deep_lock.release()  # !RELEASE! hostile_named
    # never found: the whole search runs over everything
    anon[0][0].acquire()  # !ACQUIRE! hostile_anon
    anon[0][0].release()  # !RELEASE! hostile_anon


def _make_hidden(LockT):
    obj = DictProperty()
    object.__setattr__(obj, "hidden_lock", LockT())  # !CREATE! hidden
    return obj


def _acquire_hidden(obj):
    obj.hidden_lock.acquire()  # !ACQUIRE! hidden
    obj.hidden_lock.release()  # !RELEASE! hidden


@pytest.mark.parametrize("where", ["locals", "globals", "attributes"])
def test_hostile_objects_are_never_invoked(ddlock_profile, kind, where):
    g = globals()
    hostiles = _hostiles()
    try:
        with ddlock_profile.run():
            LockT = getattr(threading, kind)
            deep = _Plain()
            deep.inner = _Inner(LockT)
            anon = [[LockT()]]  # !CREATE! hostile_anon (two containers deep: not searched)
            if where == "locals":
                args = hostiles
            elif where == "globals":
                for i, o in enumerate(hostiles):
                    g["_HOSTILE_%d" % i] = o
                args = [None] * len(hostiles)
            else:  # attributes of the object holding the lock's holder
                for i, o in enumerate(hostiles):
                    setattr(deep, "hostile_%d" % i, o)
                args = [None] * len(hostiles)
            hidden = _make_hidden(LockT)
            CALLS.clear()
            _acquire_among_hostiles(*args, deep, anon)
            _acquire_hidden(hidden)
            seen = dict(CALLS)
    finally:
        for i in range(len(hostiles)):
            g.pop("_HOSTILE_%d" % i, None)
    assert seen == {}, "user code ran during the name search: %r" % seen
    expect(ddlock_profile, "hostile_named", "deep_lock", "_acquire_among_hostiles")
    expect(ddlock_profile, "hostile_anon", None, "_acquire_among_hostiles")
    # found in the real instance dict (through a local), the raising
    # __dict__ property untouched
    expect(ddlock_profile, "hidden", "hidden_lock" if locals_readable() else None,
           "_acquire_hidden")


class _CountingNS(dict):
    """A class namespace (``__prepare__``) that logs every call made on it."""

    def __init__(self):
        super().__init__()
        self.log = []

    def __getitem__(self, k):
        self.log.append(("__getitem__", k))
        return dict.__getitem__(self, k)

    def __setitem__(self, k, v):
        self.log.append(("__setitem__", k))
        dict.__setitem__(self, k, v)

    def __delitem__(self, k):
        self.log.append(("__delitem__", k))
        dict.__delitem__(self, k)

    def __contains__(self, k):
        self.log.append(("__contains__", k))
        return dict.__contains__(self, k)

    def __iter__(self):
        self.log.append(("__iter__",))
        return dict.__iter__(self)

    def keys(self):
        self.log.append(("keys",))
        return dict.keys(self)

    def items(self):
        self.log.append(("items",))
        return dict.items(self)

    def get(self, k, default=None):
        self.log.append(("get", k))
        return dict.get(self, k, default)


class _CountingMapping(collections.abc.MutableMapping):
    """Not a dict at all: exec() locals or a __prepare__ namespace."""

    def __init__(self):
        self.data = {}
        self.log = []

    def __getitem__(self, k):
        self.log.append(("__getitem__", k))
        return self.data[k]

    def __setitem__(self, k, v):
        self.log.append(("__setitem__", k))
        self.data[k] = v

    def __delitem__(self, k):
        self.log.append(("__delitem__", k))
        del self.data[k]

    def __iter__(self):
        self.log.append(("__iter__",))
        return iter(self.data)

    def __len__(self):
        self.log.append(("__len__",))
        return len(self.data)

    def keys(self):
        self.log.append(("keys",))
        return self.data.keys()


class _NSMeta(type):
    @classmethod
    def __prepare__(mcs, name, bases, ns_type=dict):
        return ns_type()

    def __new__(mcs, name, bases, ns, ns_type=dict):
        cls = super().__new__(mcs, name, bases, dict(ns.items()))
        cls.ns_log = ns.log
        return cls

    def __init__(cls, name, bases, ns, ns_type=dict):
        super().__init__(name, bases, {})


def _namespace_classes(ns_type):
    # the class bodies use no variable of this function: a closure would make
    # them hold a free variable
    class NoCell(metaclass=_NSMeta, ns_type=ns_type):
        ns_lock = threading.Lock()  # !CREATE! ns_plain
        ns_lock.acquire()  # !ACQUIRE! ns_plain
        ns_lock.release()  # !RELEASE! ns_plain

    class WithCell(metaclass=_NSMeta, ns_type=ns_type):
        def method(self):
            return __class__  # a __class__ cell in the class body

        ns_cell_lock = threading.Lock()  # !CREATE! ns_cell
        ns_cell_lock.acquire()  # !ACQUIRE! ns_cell
        ns_cell_lock.release()  # !RELEASE! ns_cell

    return NoCell.ns_log, WithCell.ns_log


_EXEC_NS_SRC = "exec_lock = threading.Lock()\nexec_lock.acquire()\nexec_lock.release()\n"


@pytest.mark.parametrize("ns_type", [_CountingNS, _CountingMapping], ids=["dict_subclass", "mapping"])
def test_hostile_namespaces_are_never_invoked(ddlock_profile, ns_type, tmp_path):
    # A lock acquired right in a class body whose __prepare__ made the
    # namespace, or in exec() code with user-mapping locals: the frame's
    # locals ARE that mapping. The search reads a dict (subclass) with
    # PyDict_Next, skips anything else, and never refreshes such a frame's
    # locals (before 3.13 the refresh writes the cells into the namespace).
    code = compile(_EXEC_NS_SRC, str(tmp_path / "exec_ns.py"), "exec")
    with ddlock_profile.run():
        profiled_logs = _namespace_classes(ns_type)
        exec_locals = _CountingMapping()
        exec(code, {"threading": threading}, exec_locals)
    baseline_logs = _namespace_classes(ns_type)  # the same bodies, not profiled
    baseline_exec = _CountingMapping()
    exec(code, {"threading": threading}, baseline_exec)
    # only the interpreter's own calls (STORE_NAME, LOAD_NAME, ...), as unprofiled
    assert profiled_logs == baseline_logs
    assert exec_locals.log == baseline_exec.log
    # a namespace that is not a dict (or, on the portable path of 3.11 and
    # 3.12, one with a cell: no public access without copying the cells
    # into it) is not read: the locks are named by the store that follows
    # their creation in the bytecode, STORE_NAME
    expect(ddlock_profile, "ns_plain", "ns_lock", "NoCell")
    expect(ddlock_profile, "ns_cell", "ns_cell_lock", "WithCell")
    # exec() locals that are not a dict are not read; the lock is named by
    # the store that follows its creation in the bytecode (no mapping call)
    ddlock_profile.assert_lock_events(
        expected_acquire_events=[LockAcquireEvent(
            caller_name="<module>", filename="exec_ns.py", create_line=1, acquire_line=2,
            lock_name="exec_lock", count=1, **this_thread())],
        expected_release_events=[LockReleaseEvent(
            caller_name="<module>", filename="exec_ns.py", create_line=1, release_line=3,
            lock_name="exec_lock", count=1, **this_thread())],
    )


class _Big:
    pass


class _Holder:
    def __init__(self):
        self.member_lock = threading.Lock()  # !CREATE! big


_BIG_SRC = textwrap.dedent("""
    def acquire(b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, holder):
        t0 = perf_counter()
        holder.member_lock.acquire()
        t1 = perf_counter()
        holder.member_lock.release()
        return t1 - t0
""")


@pytest.mark.no_sanitize
def test_huge_dict_next_to_the_lock_is_bounded(ddlock_profile, tmp_path):
    big = _Big()
    big.__dict__.update(("k%d" % i, i) for i in range(10 ** 6))
    with ddlock_profile.run():
        before = ddlock.stats()
        first = []
        for i in range(5):
            # a fresh code object per round: the cache misses, the search runs
            ns = {"perf_counter": time.perf_counter}
            exec(compile(_BIG_SRC, str(tmp_path / ("beside_big_%d.py" % i)), "exec"), ns)
            holder = _Holder()
            first.append(ns["acquire"](*([big] * 10), holder))
        t0 = time.perf_counter()
        for _ in range(1000):
            holder.member_lock.acquire()
            holder.member_lock.release()
        loop = time.perf_counter() - t0
        after = ddlock.stats()
    # 10 references to a 10**6-entry dict: walking them all would take tens of
    # ms per search; the budget stops the search after a few thousand steps
    assert min(first) < 0.005, first
    assert loop < 0.5, loop
    assert after["names_resolved"] + after["names_missed"] - \
        before["names_resolved"] - before["names_missed"] == 5
    # the member is behind the huge dict in the search order: named if the
    # budget reached it, "<file>:<line>" otherwise -- never anything else
    line = ddlock_profile.linenos("big").create
    labels = {s.labels["lock name"] for s in ddlock_profile.profile.samples
              if str(s.labels.get("lock name", "")).startswith("%s:%d" % (FILENAME, line))}
    assert labels and labels <= {"%s:%d" % (FILENAME, line),
                                 "%s:%d:member_lock" % (FILENAME, line)}, labels


def test_huge_dict_does_not_hide_a_local(ddlock_profile):
    big = _Big()
    big.__dict__.update(("k%d" % i, i) for i in range(10 ** 6))
    with ddlock_profile.run():
        big_neighbour_lock = threading.Lock()  # !CREATE! big_local
        big_neighbour_lock.acquire()  # !ACQUIRE! big_local
        big_neighbour_lock.release()  # !RELEASE! big_local
    expect(ddlock_profile, "big_local", "big_neighbour_lock",
           "test_huge_dict_does_not_hide_a_local")


# ---------------------------------------------------------------------------
# Subprocess tests: crashes and deadlocks must not take the suite down
# ---------------------------------------------------------------------------

def _run(tmp_path, name, code, timeout=120):
    """Run ``code`` as tmp_path/name (a real file, so labels have a real
    basename); it prints one JSON line. Returns (result, markers, profile)."""
    path = tmp_path / name
    prefix = str(tmp_path / "prof")
    path.write_text(textwrap.dedent(code).replace("@PREFIX@", prefix))
    proc = run_script(str(path), timeout=timeout)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, LineMarkers(str(path)), testing.parse_merged_profile(prefix)


def _events(profile, markers, key, lock_name, caller, thread, count, filename):
    linenos = markers.linenos(key)
    common = dict(caller_name=caller, filename=filename, linenos=linenos, lock_name=lock_name,
                  count=count, **thread)
    testing.assert_lock_events(profile, [LockAcquireEvent(**common)],
                               [LockReleaseEvent(**common)])


def test_stolen_slot_descriptor_is_not_followed(tmp_path):
    # A member descriptor copied into another class's dict has an offset into
    # another layout: reading it there returned the bits of a float as an
    # object pointer and the second level dereferenced it (segfault).
    result, markers, profile = _run(tmp_path, "stolen_slot.py", """
        import json, faulthandler, threading, ddlock
        faulthandler.enable()
        ddlock.start(output_pprof="@PREFIX@", capture_pct=100, upload_enabled=False)

        class Donor:
            __slots__ = ("a",)

        class Thief(float):
            stolen = Donor.__dict__["a"]

        def work():
            thief = Thief(1.0)
            holder = [[threading.Lock()]]  # !CREATE! stolen
            holder[0][0].acquire()  # !ACQUIRE! stolen
            holder[0][0].release()  # !RELEASE! stolen
            return thief

        work()
        ddlock.stop()
        print(json.dumps({"thread": {"thread_id": threading.get_ident(),
                                     "thread_native_id": threading.get_native_id(),
                                     "thread_name": "MainThread"}}))
    """)
    _events(profile, markers, "stolen", None, "work", result["thread"], 1, "stolen_slot.py")


_FINALIZER_PRELUDE = """
    import faulthandler, gc, json, sys, threading, weakref
    import ddlock
    faulthandler.enable()
    faulthandler.dump_traceback_later(60, exit=True)  # a deadlock fails, with stacks
    ddlock.start(output_pprof="@PREFIX@", capture_pct=100, upload_enabled=False)
    del_lock = threading.Lock()
    fin_lock = threading.RLock()
    finalized = {"del": 0, "finalize": 0}

    def on_finalize():
        with fin_lock:
            finalized["finalize"] += 1

    def main_thread():
        return {"thread_id": threading.get_ident(),
                "thread_native_id": threading.get_native_id(), "thread_name": "MainThread"}

    def report(**extra):
        stats = ddlock.stats()
        ddlock.stop()
        out = {"finalized": finalized, "thread": main_thread(),
               "skipped": stats["events_reentrant_skipped"]}
        out.update(extra)
        print(json.dumps(out))
"""


def test_finalizers_run_by_the_name_search(tmp_path):
    # Up to 3.12 reading a frame's locals through the C API refreshes its
    # f_locals snapshot, which drops the last reference to an object deleted
    # since the previous snapshot: its __del__ and weakref.finalize callback
    # would run inside the name search and acquire profiled locks while the
    # sample is being taken. The name search reads the frame's variables in
    # place instead: the snapshot keeps the object, no finalizer runs inside
    # the search, every finalizer acquire is recorded.
    result, markers, profile = _run(tmp_path, "stale_locals.py", _FINALIZER_PRELUDE + """
    class Finalizable:
        def __del__(self):
            with del_lock:
                finalized["del"] += 1

    def stale_locals():
        for i in range(100):
            obj = Finalizable()
            weakref.finalize(obj, on_finalize)
            sys._getframe().f_locals  # the snapshot now holds obj
            del obj                   # ... and only the snapshot
            work_lock = threading.Lock()  # !CREATE! work
            work_lock.acquire()  # !ACQUIRE! work
            work_lock.release()  # !RELEASE! work

    stale_locals()
    report()
    """)
    assert result["finalized"] == {"del": 100, "finalize": 100}
    _events(profile, markers, "work", "work_lock", "stale_locals", result["thread"], 100,
            "stale_locals.py")
    recorded = sum(profile.total("lock-acquire", testing.get_samples_with_lock_name(profile, n))
                   for n in testing.get_lock_names(profile)
                   if n.endswith((":del_lock", ":fin_lock")))
    # every finalizer acquire is either recorded or skipped by the guard
    assert recorded + result["skipped"] == 200, (recorded, result["skipped"])
    assert result["skipped"] == 0  # nothing ran inside a sample


def test_collection_inside_the_name_search(tmp_path):
    # A collection triggered by an allocation of the name search itself (an
    # instance dict made on demand): on 3.9 nothing can pause the collector,
    # so the finalizers of a garbage cycle run inside the sample -- they
    # acquire profiled locks and drop the last reference to the very object
    # the search is visiting. That object must stay alive until the search
    # is done with it (under ASan, `make sanitize` with PYTHON=python3.9, a
    # heap-use-after-free otherwise). 3.10+ pause the collector meanwhile.
    result, markers, profile = _run(tmp_path, "collect_in_search.py", _FINALIZER_PRELUDE + """
    class E:
        __slots__ = ("__dict__", "s")  # a dict made on demand, a slot read after it

    class Cyclic:
        __slots__ = ("me", "__weakref__")

        def __init__(self):
            self.me = self
            weakref.finalize(self, on_finalize)

        def __del__(self):
            with del_lock:
                finalized["del"] += 1
            globals().pop("victim", None)  # the last reference to victim

    def one_round():
        global victim
        sys._getframe().f_locals          # this frame's locals dict exists from now on
        holder = [[threading.Lock()]]     # !CREATE! in_search
        gc.disable()
        victim = E()                      # no instance dict yet: the search makes it
        junk = Cyclic()
        junk = None                       # young garbage, not collected yet
        keep = [{} for _ in range(100)]   # no dict left in the free list
        gc.enable()                       # the next GC allocation collects
        holder[0][0].acquire()            # !ACQUIRE! in_search
        holder[0][0].release()            # !RELEASE! in_search
        return "victim" not in globals()

    gc.set_threshold(1)
    freed_in_sample = 0
    for i in range(30):
        # a fresh code object per round, so that every round searches again
        one_round.__code__ = one_round.__code__.replace(co_name="one_round")
        freed_in_sample += one_round()
    gc.set_threshold(700, 10, 10)
    gc.collect()
    report(freed=freed_in_sample)
    """)
    assert result["finalized"] == {"del": 30, "finalize": 30}
    _events(profile, markers, "in_search", None, "one_round", result["thread"], 30,
            "collect_in_search.py")
    recorded = sum(profile.total("lock-acquire", testing.get_samples_with_lock_name(profile, n))
                   for n in testing.get_lock_names(profile)
                   if n.endswith((":del_lock", ":fin_lock")))
    assert recorded + result["skipped"] == 60, (recorded, result["skipped"])
    if sys.version_info < (3, 10):
        # every round: both finalizers ran inside the sample, victim freed there
        assert result["skipped"] == 60 and result["freed"] == 30, result
    else:
        assert result["skipped"] == 0, result  # the collector waits for the sample


def test_cycle_collection_during_sampling_in_threads(tmp_path):
    # Garbage cycles with finalizers, collected as often as possible
    # (threshold 1) while three threads take samples: no crash, no deadlock,
    # exact counts.
    result, markers, profile = _run(tmp_path, "cycles.py", _FINALIZER_PRELUDE + """
    class Cyclic:
        def __init__(self):
            self.me = self
            weakref.finalize(self, on_finalize)

        def __del__(self):
            with del_lock:
                finalized["del"] += 1

    src = ("def churn_%d(n):\\n"
           "    for _ in range(n):\\n"
           "        keep = [(_, _, object()) for _ in range(300)]\\n"
           "        junk = Cyclic(); junk = None\\n"
           "        cycle_lock = threading.Lock()\\n"
           "        cycle_lock.acquire()\\n"
           "        cycle_lock.release()\\n")

    def worker(first):
        # fresh code objects: every round searches names again
        for i in range(first, first + 40):
            ns = {"Cyclic": Cyclic, "threading": threading}
            exec(compile(src % i, "churn_%d.py" % i, "exec"), ns)
            ns["churn_%d" % i](5)

    gc.set_threshold(1)
    threads = [threading.Thread(target=worker, args=(k * 1000,), name="churn-%d" % k)
               for k in range(2)]
    for t in threads:
        t.start()
    worker(5000)
    for t in threads:
        t.join()
    gc.set_threshold(700)
    gc.collect()
    shared = threading.Lock()  # !CREATE! after_cycles
    shared.acquire()  # !ACQUIRE! after_cycles
    shared.release()  # !RELEASE! after_cycles
    report()
    """)
    n = 3 * 40 * 5
    assert result["finalized"] == {"del": n, "finalize": n}
    churn = [s for s in profile.samples
             if str(s.labels.get("lock name", "")).endswith(":cycle_lock")]
    assert profile.total("lock-acquire", churn) == n
    assert profile.total("lock-release", churn) == n
    recorded = sum(profile.total("lock-acquire", testing.get_samples_with_lock_name(profile, name))
                   for name in testing.get_lock_names(profile)
                   if name.endswith((":del_lock", ":fin_lock")))
    assert recorded + result["skipped"] == 2 * n, (recorded, result["skipped"])
    # the profiler still works afterwards
    _events(profile, markers, "after_cycles", "shared", "<module>", result["thread"], 1,
            "cycles.py")
