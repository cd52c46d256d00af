"""Profiling beyond Lock and RLock: threading.Semaphore, BoundedSemaphore and
Condition, asyncio.Lock, Semaphore, BoundedSemaphore and Condition, and
threading.Lock/RLock under gevent.

While ddlock runs, each of these names is bound to a subclass of the original
class (built once per original and reused, so objects made in one profiling
session are instances of the class the next one patches in). Its objects
have two more attributes: ``_ddl_tracker``, their ``ddlock._ddlock.Tracker``
(ext/primitives.c: creation site, name, lock type, the sampled hold) and
``_ddl_hold`` (the tracker while a sampled hold is pending, else None).

* Semaphores and asyncio's locks (pure Python in the stdlib): their methods
  are redefined here. An uncontended acquire and a release with nobody to
  wake do exactly what the stdlib's do then, plus the truth of one C
  countdown shared by all of them (``_ddlock._prim_countdown``: false when
  the event is to be sampled) and, only while some sampled hold is pending
  (the shared list ``_ddlock._prim_holds`` is not empty), a look at
  ``_ddl_hold``; every other call runs the stdlib's own method, an acquire
  timed around it. No attribute of the object is read beyond the stdlib's
  own: as fast as the native methods or faster (one Python call instead of
  two).
* threading.Condition: ``__enter__``/``__exit__`` and the instance's
  ``acquire``/``release``/``_release_save``/``_acquire_restore`` are
  ``ddlock._ddlock.Hook``s, method descriptors written in C around the
  Condition's lock, which stays the native RLock threading.py makes. wait()
  releases and re-acquires through them: the hold excludes the wait, the
  re-acquire's contention is measured.
* asyncio.Condition(): its lock is one of ours whose tracker is the
  Condition's (its samples are the Condition's, counted once).
* gevent: threading.Lock becomes a wrapper of gevent's lock (which cannot be
  subclassed), threading.RLock a profiled subclass of threading's pure-Python
  RLock over gevent's lock, both with Hooks.

Creation follows the locks' rules: nothing is profiled while ddlock is
stopped or when an excluded module (threading, asyncio, ...) creates the
object -- then the patched name simply returns an object of the original
class, e.g. the Condition and Lock inside every threading.Semaphore and
Event. A Condition built on a lock ddlock already profiles is not profiled
itself, so no wait or hold is counted twice. ``isinstance(x,
threading.Semaphore)`` accepts objects of the original class too (the
patched classes' metaclass), and ``stop()`` restores the exact originals.

asyncio is patched when it is imported (an import hook while ddlock runs);
gevent's monkey-patching is followed through its event subscribers: whether
``gevent.monkey.patch_all()`` runs before or after ``ddlock.start()``,
threading.Lock/RLock end up profiled wrappers of gevent's cooperative locks
and samples carry the running greenlet as their task.
"""

import abc
import copyreg
import sys
import threading

from . import _config

LOCK_TYPES = _config.LOCK_TYPES
KIND = {name: i for i, name in enumerate(LOCK_TYPES)}

# Hook operations (ext/primitives.c)
H_ACQUIRE, H_RELEASE, H_RELEASE_SAVE, H_ACQUIRE_RESTORE, H_AACQUIRE, H_ENTER, H_EXIT = range(7)

_native = None
_classes = {}         # (kind, original) -> profiled class
_bound_hooks = {}     # (op, kind, original function) -> Hook bound to trackers
_installed = {}       # (module name, attribute) -> (value before us, our value)
_state = {"types": (), "watcher": None, "subscriber": None, "gevent": False}
_ONE = 1


async def _acquire_wrapper(tracker, coro, t0):
    """What an asyncio acquire returns when it is sampled or may wait: the
    original coroutine, then the sample (t0 == 0: uncontended)."""
    result = await coro
    tracker._acquired(t0)
    return result


class _ProfiledMeta(abc.ABCMeta):
    """Metaclass of the patched classes: isinstance() and issubclass()
    against the patched name accept what the original accepts (objects made
    before start(), or by excluded modules, are of the original class).

    It derives from abc.ABCMeta so that a user's class mixing a patched
    primitive with an ABC (``class Pool(threading.Semaphore, MyABC)``,
    ``class L(asyncio.Lock, contextlib.AbstractAsyncContextManager)``) has a
    metaclass, as it does natively, instead of a metaclass conflict. A class
    gets ABCMeta's machinery only when a base other than ddlock's has it
    (as natively); the others are built by type, so a patched primitive is
    not abstract-checked, registered or cached like an ABC."""

    def __new__(mcls, name, bases, namespace, **kwargs):
        if any("_abc_impl" in vars(b) for b in bases if isinstance(b, abc.ABCMeta)):
            return abc.ABCMeta.__new__(mcls, name, bases, namespace, **kwargs)
        return type.__new__(mcls, name, bases, namespace, **kwargs)

    def __instancecheck__(cls, obj):
        d = vars(cls)
        original = d.get("_ddl_original")
        if original is not None and isinstance(obj, original):
            return True
        if "_abc_impl" in d:
            return abc.ABCMeta.__instancecheck__(cls, obj)
        return type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub):
        d = vars(cls)
        original = d.get("_ddl_original")
        if original is not None and issubclass(sub, original):
            return True
        if "_abc_impl" in d:
            return abc.ABCMeta.__subclasscheck__(cls, sub)
        return type.__subclasscheck__(cls, sub)


def _resolves_to(cls):
    module = sys.modules.get(cls.__module__)
    return module is not None and getattr(module, cls.__qualname__, None) is cls


def _lock_arg(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("lock")


def _bound_hook(op, kind, function, fast=False):
    key = (op, kind, function, fast)
    hook = _bound_hooks.get(key)
    if hook is None:
        hook = _bound_hooks[key] = _native.Hook(op, kind, function, None, fast)
    return hook


def _build(kind, original, init=None):
    """The profiled subclass of ``original`` (kind: a LOCK_TYPES name)."""
    key = (kind, original)
    cls = _classes.get(key)
    if cls is not None:
        return cls
    kind_id = KIND[kind]
    new_tracker = _native._prim_tracker
    tracker_of = _native._prim_tracker_of
    obj_new = object.__new__
    is_condition = kind in ("Condition", "asyncio.Condition")
    own_rlock = kind == "Condition"
    condition_lock = _native._prim_condition_lock
    holder = []

    def __new__(cls, *args, **kwargs):
        lock = _lock_arg(args, kwargs) if is_condition else None
        if lock is not None and tracker_of(lock) is not None:
            tracker = None  # the lock is profiled: count nothing twice
        elif own_rlock and lock is None and not _state["gevent"]:
            # threading.Condition() makes its own RLock: make it here, one
            # of ddlock's created at this site whose samples are the
            # Condition's; __init__ hands it to the Condition (_ddl_own
            # names it until then)
            self = obj_new(cls)
            try:
                tracker = condition_lock(None, self)
            except Exception:  # never break the application: stays native
                tracker = None
            if tracker is not None or cls is not holder[0]:
                self._ddl_tracker = tracker
                self._ddl_hold = None
                self._ddl_own = tracker
                return self
        else:
            tracker = new_tracker(kind_id)
        if tracker is None:
            if cls is holder[0]:
                return original(*args, **kwargs)
            self = obj_new(cls)
            self._ddl_tracker = self._ddl_hold = None
            return self
        self = obj_new(cls)
        self._ddl_tracker = tracker
        self._ddl_hold = None
        tracker._bind(self)
        return self

    def __reduce_ex__(self, protocol):
        # like object's, without the tracker; a copy made by an excluded
        # module or after stop() is a native object
        target = type(self)
        if target is holder[0] and not _resolves_to(target):
            target = original
        state = {k: v for k, v in self.__dict__.items()
                 if not k.startswith("_ddl_")} or None
        if protocol >= 2 and target is type(self):
            return copyreg.__newobj__, (target,), state
        return copyreg._reconstructor, (target, object, None), state

    # Instances get two attributes: _ddl_tracker and _ddl_hold (the tracker
    # while a sampled hold is pending; a threading.Condition with its own
    # RLock also _ddl_own, see __new__). Not __slots__: on 3.9 and 3.13 a
    # subclass with __slots__ loses the fast access to the instance
    # attributes of the stdlib class it extends.
    ns = {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": original.__doc__,
        "__new__": __new__,
        "__reduce_ex__": __reduce_ex__,
        "_ddl_original": original,
    }
    if init is not None:
        ns["__init__"] = init(holder)
    cls = _ProfiledMeta(original.__name__, (original,), ns)
    holder.append(cls)
    _classes[key] = cls
    return cls


def _hook(cls, name, op, kind, function, fast=False):
    hook = _native.Hook(op, KIND[kind], function, cls, fast)
    setattr(cls, name, hook)
    return hook


# ---- threading -------------------------------------------------------------

def _rename(function, qualname):
    """The function under the original's qualified name: argument errors
    name it (its __qualname__ on 3.10+, its code's name on 3.9, which is
    already the original's). Renamed in place: a new function object
    (FunctionType) or an assignment to __code__ would stop CPython 3.13 from
    specializing the calls to it."""
    function.__qualname__ = qualname
    function.__name__ = qualname.rsplit(".", 1)[-1]
    return function


def _threading_semaphore(kind, original):
    """threading.Semaphore / BoundedSemaphore. An uncontended acquire() is
    threading.py's own fast path (the value is not zero under the
    semaphore's Condition) then the sampling countdown; any other call -- it
    may wait, or has arguments -- runs threading.py's acquire, timed.
    release() with the default n=1 is threading.py's too (notify(1) is one
    notify()), any other n threading.py's release."""
    cls = _classes.get((kind, original))
    if cls is not None:
        return cls
    orig_acquire = original.acquire
    orig_release = original.release
    now = _native._now
    countdown = _native._prim_countdown
    holds = _native._prim_holds
    bounded = kind == "BoundedSemaphore"

    # (Returning from inside the `with` and reading attributes rather than
    # keeping locals is what makes these as cheap as threading.py's own on
    # 3.13, measured with callgrind.)
    def acquire(self, blocking=True, timeout=None):
        if blocking is True and timeout is None:
            with self._cond:
                if self._value:
                    self._value -= 1
                    if countdown:  # the shared countdown
                        return True
                    sample = True
                else:
                    sample = False
            if sample:
                countdown._sample(self)
                return True
        tracker = self._ddl_tracker
        if tracker is None:
            return orig_acquire(self, blocking, timeout)
        t0 = now()
        rc = orig_acquire(self, blocking, timeout)
        if rc:
            tracker._acquired(self, t0)
        return rc

    if bounded:
        def release(self, n=1):
            if n is _ONE:
                with self._cond:
                    if self._value < self._initial_value:
                        self._value += 1
                        self._cond.notify(1)  # as threading.py: notify(n)
                        if not holds or self._ddl_hold is None:
                            return
                        over = False
                    else:
                        over = True
                if over:
                    orig_release(self, n)  # raises threading.py's ValueError
            else:
                orig_release(self, n)
            if holds and self._ddl_hold is not None:
                self._ddl_hold._release_hold(self)
    else:
        def release(self, n=1):
            if n is _ONE:
                with self._cond:
                    self._value += 1
                    self._cond.notify(1)  # as threading.py: notify(n)
                    if not holds or self._ddl_hold is None:
                        return
            else:
                orig_release(self, n)
            if holds and self._ddl_hold is not None:
                self._ddl_hold._release_hold(self)

    cls = _build(kind, original)
    cls.acquire = _rename(acquire, orig_acquire.__qualname__)
    if original.__enter__ is orig_acquire:
        cls.__enter__ = cls.acquire  # the alias threading.py defines
    cls.release = _rename(release, orig_release.__qualname__)
    return cls


def _threading_condition(original):
    cls = _classes.get(("Condition", original))
    if cls is not None:
        return cls
    kind = KIND["Condition"]

    def hooks_for(lock_type):
        hooks = _bound_hooks.get(("Condition", lock_type))
        if hooks is None:
            hooks = _bound_hooks[("Condition", lock_type)] = tuple(
                _bound_hook(op, kind, getattr(lock_type, attr, fallback))
                for attr, op, fallback in (
                    ("acquire", H_ACQUIRE, original.__enter__),
                    ("release", H_RELEASE, original.__exit__),
                    ("_release_save", H_RELEASE_SAVE, original._release_save),
                    ("_acquire_restore", H_ACQUIRE_RESTORE, original._acquire_restore)))
        return hooks

    def attach(self, tracker):
        # the Condition's lock: the native RLock threading.py made (an
        # excluded module), or one given that ddlock does not profile itself
        # (made before start() or by an excluded module; gevent's). Its
        # acquire, release, _release_save, _acquire_restore become Hooks
        # bound to the tracker.
        lock = self._lock
        tracker._attach(lock, self, hooks_for(type(lock)))

    condition_lock = _native._prim_condition_lock
    new_tracker = _native._prim_tracker
    tracker_of = _native._prim_tracker_of
    tracker_type = _native.Tracker

    def init(holder):
        def __init__(self, *args, **kwargs):
            try:
                tracker = self._ddl_tracker
            except AttributeError:
                tracker = None
            own_lock = tracker is not None and type(tracker) is not tracker_type
            premade = None
            if own_lock:
                # an RLock of ours: _ddl_own is set with it, to that RLock
                # when __new__ made it for this __init__ (used once)
                premade = self._ddl_own
                self._ddl_own = None
            lock = _lock_arg(args, kwargs)
            if tracker is not None and len(args) <= 1 and set(kwargs) <= {"lock"} and \
                    lock is None and not _state["gevent"]:
                # Condition() makes its own RLock: one of ours whose samples
                # are the Condition's; acquire, release and wait then run
                # its C methods as natively they run _thread.RLock's. A new
                # one each time, as natively, at the same creation site.
                own = tracker if premade is tracker else None
                if own is None:
                    try:
                        own = condition_lock(tracker, self)
                    except Exception:  # never break the application: stays native
                        pass
                if own is not None:
                    super(holder[0], self).__init__(own)
                    self._ddl_tracker = own
                    self._ddl_own = None
                    return
            if own_lock:
                # an RLock of ours, but the Condition is given a lock after
                # all (a subclass's __init__): profile that lock, at the
                # same creation site, unless it is ddlock's
                try:
                    tracker = None if lock is not None and tracker_of(lock) is not None \
                        else new_tracker(kind, tracker)
                    if tracker is not None:
                        tracker._bind(self)
                except Exception:  # never break the application: stays native
                    tracker = None
                self._ddl_tracker = tracker
            super(holder[0], self).__init__(*args, **kwargs)
            if tracker is not None:
                try:
                    attach(self, tracker)
                except Exception:  # never break the application: stays native
                    pass

        return __init__

    cls = _build("Condition", original, init=init)
    _hook(cls, "__enter__", H_ENTER, "Condition", original.__enter__)
    _hook(cls, "__exit__", H_EXIT, "Condition", original.__exit__)
    return cls


# ---- asyncio ---------------------------------------------------------------

def _asyncio_methods(kind, original):
    """acquire(), release(), __aenter__() and __aexit__() of asyncio.Lock /
    Semaphore / BoundedSemaphore (and of a profiled Condition's Lock).

    When the lock is free and nobody waits, they do what the stdlib's do in
    that case -- take it, or give it back with nobody to wake -- and count
    down to the next sample; in every other case they run the stdlib's
    methods, an acquire timed around its await. The conditions are those of
    asyncio's own code, the same on 3.9-3.13 (3.9's Semaphore also waits
    while a wakeup is scheduled). __aenter__/__aexit__ take these paths
    directly for objects of the patched class itself (one coroutine instead
    of two); a subclass's goes through its acquire()/release(), as the
    stdlib's do. Returns (methods, bind): bind(cls) names the patched class."""
    orig_acquire = original.acquire
    orig_release = original.release
    now = _native._now
    countdown = _native._prim_countdown
    holds = _native._prim_holds
    exact = None

    def bind(cls):
        nonlocal exact
        exact = cls

    async def timed_acquire(self):
        tracker = self._ddl_tracker
        if tracker is None:
            return await orig_acquire(self)
        t0 = now()
        result = await orig_acquire(self)
        tracker._acquired(self, t0)
        return result

    if kind in ("asyncio.Lock", "asyncio.Condition"):
        async def acquire(self):
            if not self._locked and not self._waiters:
                self._locked = True
                if not countdown:  # the shared countdown: sample
                    countdown._sample(self)
                return True
            return await timed_acquire(self)

        def release(self):
            if self._locked and not self._waiters:
                self._locked = False
            else:
                orig_release(self)
            if holds and self._ddl_hold is not None:
                self._ddl_hold._release_hold(self)

        async def __aenter__(self):
            if type(self) is exact and not self._locked and not self._waiters:
                self._locked = True
                if not countdown:  # the shared countdown: sample
                    countdown._sample(self)
                return None
            await self.acquire()
            return None

        async def __aexit__(self, exc_type, exc, tb):
            if type(self) is exact and self._locked and not self._waiters:
                self._locked = False
                if holds and self._ddl_hold is not None:
                    self._ddl_hold._release_hold(self)
            else:
                self.release()
    else:
        wakeup_flag = sys.version_info < (3, 10)  # 3.9: _wakeup_scheduled

        async def acquire(self):
            if self._value > 0 and not self._waiters and not (
                    wakeup_flag and self._wakeup_scheduled):
                self._value -= 1
                if not countdown:  # the shared countdown: sample
                    countdown._sample(self)
                return True
            return await timed_acquire(self)

        async def __aenter__(self):
            if type(self) is exact and self._value > 0 and not self._waiters and not (
                    wakeup_flag and self._wakeup_scheduled):
                self._value -= 1
                if not countdown:  # the shared countdown: sample
                    countdown._sample(self)
                return None
            await self.acquire()
            return None

        if kind == "asyncio.BoundedSemaphore":
            def release(self):
                if self._value < self._bound_value and not self._waiters:
                    self._value += 1
                else:
                    orig_release(self)  # raises, or wakes a waiter
                if holds and self._ddl_hold is not None:
                    self._ddl_hold._release_hold(self)

            async def __aexit__(self, exc_type, exc, tb):
                if type(self) is exact and self._value < self._bound_value and \
                        not self._waiters:
                    self._value += 1
                    if holds and self._ddl_hold is not None:
                        self._ddl_hold._release_hold(self)
                else:
                    self.release()
        else:
            def release(self):
                if not self._waiters:
                    self._value += 1
                else:
                    orig_release(self)
                if holds and self._ddl_hold is not None:
                    self._ddl_hold._release_hold(self)

            async def __aexit__(self, exc_type, exc, tb):
                if type(self) is exact and not self._waiters:
                    self._value += 1
                    if holds and self._ddl_hold is not None:
                        self._ddl_hold._release_hold(self)
                else:
                    self.release()

    mixin = original.__aenter__
    methods = {
        "acquire": _rename(acquire, orig_acquire.__qualname__),
        "release": _rename(release, orig_release.__qualname__),
        "__aenter__": _rename(__aenter__, mixin.__qualname__),
        "__aexit__": _rename(__aexit__, original.__aexit__.__qualname__),
    }
    return methods, bind


def _stdlib_asyncio(original):
    locks = sys.modules.get("asyncio.locks")
    return locks is not None and getattr(locks, original.__name__, None) is original


def _asyncio_lock(kind, original):
    cls = _classes.get((kind, original))
    if cls is None:
        cls = _build(kind, original)
        if _stdlib_asyncio(original):
            methods, bind = _asyncio_methods(kind, original)
            for name, method in methods.items():
                setattr(cls, name, method)
            bind(cls)
        else:  # someone else's class: its own methods, timed from C
            _hook(cls, "acquire", H_AACQUIRE, kind, original.acquire)
            _hook(cls, "release", H_RELEASE, kind, original.release)
    return cls


def _timed_inner_acquire(lock_type):
    """A Condition's acquire() over a lock ddlock does not profile: the
    lock's own, timed (a coroutine function, as the lock's is)."""
    key = ("asyncio.Condition acquire", lock_type)
    acquire = _bound_hooks.get(key)
    if acquire is None:
        inner_acquire = lock_type.acquire
        now = _native._now

        async def acquire(tracker):
            t0 = now()
            result = await inner_acquire(tracker.inner)
            tracker._acquired(t0)
            return result

        acquire = _bound_hooks[key] = _rename(acquire, inner_acquire.__qualname__)
    return acquire


def _attach_async_condition(self, tracker):
    lock = self._lock
    lt = type(lock)
    hooks = (_timed_inner_acquire(lt),
             _bound_hook(H_RELEASE, KIND["asyncio.Condition"], lt.release, True))
    tracker._attach(lock, self, hooks)


def _asyncio_condition(original):
    """asyncio.Condition(): its lock is an asyncio.Lock profiled as the
    Condition (its tracker is the Condition's); Condition(lock) with a lock
    ddlock does not profile: the Condition's acquire/release are Hooks."""
    cls = _classes.get(("asyncio.Condition", original))
    if cls is not None:
        return cls
    locks = sys.modules["asyncio.locks"]
    lock_cls = None
    if _stdlib_asyncio(original) and isinstance(locks.Lock, type):
        lock_cls = _build("asyncio.Condition", locks.Lock)
        methods, bind = _asyncio_methods("asyncio.Condition", locks.Lock)
        for name, method in methods.items():
            setattr(lock_cls, name, method)
        bind(lock_cls)
        lock_init = locks.Lock.__init__

    def init(holder):
        def __init__(self, *args, **kwargs):
            try:
                tracker = self._ddl_tracker
            except AttributeError:
                tracker = None
            if tracker is not None and lock_cls is not None and len(args) <= 1 and \
                    _lock_arg(args, kwargs) is None and set(kwargs) <= {"lock"}:
                lock = object.__new__(lock_cls)
                lock._ddl_tracker = tracker
                lock._ddl_hold = None
                lock_init(lock)
                super(holder[0], self).__init__(lock)
                return
            super(holder[0], self).__init__(*args, **kwargs)
            if tracker is not None:
                try:
                    _attach_async_condition(self, tracker)
                except Exception:  # never break the application
                    pass

        return __init__

    cls = _build("asyncio.Condition", original, init=init)
    if lock_cls is None:
        return cls

    # `async with condition:` -- the stdlib's awaits self.acquire(), its
    # lock's: take the lock's own fast paths directly
    countdown = _native._prim_countdown
    holds = _native._prim_holds

    async def __aenter__(self):
        lock = self._lock
        if type(self) is cls and type(lock) is lock_cls and not lock._locked and \
                not lock._waiters:
            lock._locked = True
            if not countdown:  # the shared countdown: sample
                countdown._sample(lock)
            return None
        await self.acquire()
        return None

    async def __aexit__(self, exc_type, exc, tb):
        lock = self._lock
        if type(self) is cls and type(lock) is lock_cls and lock._locked and \
                not lock._waiters:
            lock._locked = False
            if holds and lock._ddl_hold is not None:
                lock._ddl_hold._release_hold(lock)
        else:
            self.release()

    cls.__aenter__ = _rename(__aenter__, original.__aenter__.__qualname__)
    cls.__aexit__ = _rename(__aexit__, original.__aexit__.__qualname__)
    return cls


def _setup_asyncio(asyncio):
    locks = sys.modules.get("asyncio.locks")
    events = sys.modules.get("asyncio.events")
    if locks is None or events is None:
        return
    tasks = sys.modules.get("asyncio.tasks")
    # the registry asyncio.current_task(loop) reads (the C one's too), and
    # asyncio's own Task types: the only ones whose get_name the profiler
    # calls for the "task name" label
    current_tasks = getattr(tasks, "_current_tasks", None)
    if not isinstance(current_tasks, dict):
        current_tasks = None
    c_asyncio = sys.modules.get("_asyncio")
    task_types = tuple(t for t in (getattr(c_asyncio, "Task", None),
                                   getattr(tasks, "_PyTask", None))
                       if isinstance(t, type))
    _native._prim_set_asyncio(locks._ContextManagerMixin.__aenter__.__code__.co_filename,
                              events._get_running_loop, asyncio.current_task, locks.Lock,
                              current_tasks, task_types)


def _install_asyncio(asyncio):
    _setup_asyncio(asyncio)
    builders = {"Lock": _asyncio_lock, "Semaphore": _asyncio_lock,
                "BoundedSemaphore": _asyncio_lock}
    for name in ("Lock", "Semaphore", "BoundedSemaphore", "Condition"):
        kind = "asyncio." + name
        if kind not in _state["types"]:
            continue
        original = _original_of(asyncio, name)
        if not isinstance(original, type):
            continue
        if name == "Condition":
            cls = _asyncio_condition(original)
        else:
            cls = builders[name](kind, original)
        _set(asyncio, name, cls)


# ---- gevent ----------------------------------------------------------------

def _gevent_patched():
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:
        return False


def _gevent_lock_class(lock_type):
    """threading.Lock under gevent: gevent's LockType cannot be subclassed,
    so the profiled lock wraps one."""
    key = ("Lock", lock_type)
    cls = _classes.get(key)
    if cls is not None:
        return cls
    new_tracker = _native._prim_tracker
    kind_id = KIND["Lock"]
    holder = []

    def __new__(cls, *args, **kwargs):
        tracker = new_tracker(kind_id) if not args and not kwargs else None
        if tracker is None and cls is holder[0]:
            return lock_type(*args, **kwargs)
        self = object.__new__(cls)
        self._ddl_inner = lock_type()
        if tracker is not None:
            self._ddl_tracker = tracker
            tracker._bind(self)
        return self

    def _ddl_acquire(self, *args, **kwargs):
        return self._ddl_inner.acquire(*args, **kwargs)

    def _ddl_release(self):
        return self._ddl_inner.release()

    def __enter__(self):
        self.acquire()

    def __exit__(self, t, v, tb):
        self.release()

    def locked(self):
        return self._ddl_inner.locked()

    def _at_fork_reinit(self):
        self._ddl_inner._at_fork_reinit()

    def __getattr__(self, name):
        if name.startswith("_ddl_"):
            raise AttributeError(name)
        return getattr(self._ddl_inner, name)

    def __repr__(self):
        return repr(self._ddl_inner)

    def __init_subclass__(cls, **kwargs):
        raise TypeError  # as gevent's LockType

    ns = {
        "__slots__": ("_ddl_inner", "_ddl_tracker", "__weakref__"),
        "__module__": lock_type.__module__,
        "__qualname__": lock_type.__qualname__,
        "__doc__": lock_type.__doc__,
        "__new__": __new__,
        "_ddl_acquire": _ddl_acquire,
        "_ddl_release": _ddl_release,
        "__enter__": __enter__,
        "__exit__": __exit__,
        "locked": locked,
        "_at_fork_reinit": _at_fork_reinit,
        "__getattr__": __getattr__,
        "__repr__": __repr__,
        "_ddl_original": lock_type,
    }
    cls = _ProfiledMeta(lock_type.__name__, (object,), ns)
    cls.__init_subclass__ = classmethod(__init_subclass__)
    holder.append(cls)
    _hook(cls, "acquire", H_ACQUIRE, "Lock", _ddl_acquire)
    _hook(cls, "release", H_RELEASE, "Lock", _ddl_release)
    _classes[key] = cls
    return cls


def _gevent_rlock_factory(original_rlock):
    """threading.RLock under gevent: the stdlib's pure-Python RLock over
    gevent's lock (threading._CRLock is None once patched), profiled."""
    key = ("RLock", original_rlock)
    factory = _classes.get(key)
    if factory is not None:
        return factory
    base = threading._PyRLock
    cls = _build("RLock", base)
    acquire = _hook(cls, "acquire", H_ACQUIRE, "RLock", base.acquire)
    if base.__enter__ is base.acquire:
        cls.__enter__ = acquire
    _hook(cls, "release", H_RELEASE, "RLock", base.release)
    _hook(cls, "_release_save", H_RELEASE_SAVE, "RLock", base._release_save)
    _hook(cls, "_acquire_restore", H_ACQUIRE_RESTORE, "RLock", base._acquire_restore)

    def RLock(*args, **kwargs):
        if args or kwargs or threading._CRLock is not None:
            return original_rlock(*args, **kwargs)
        return cls()

    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(RLock, attr, getattr(original_rlock, attr))
        except (AttributeError, TypeError):
            pass
    RLock.__wrapped__ = original_rlock
    RLock._ddl_class = cls
    _classes[key] = RLock
    return RLock


def _install_gevent_locks():
    """Profile threading.Lock/RLock as wrappers of gevent's locks."""
    import gevent

    _native._prim_set_gevent(gevent.getcurrent)
    _state["gevent"] = True
    types = _state["types"]
    if "Lock" in types:
        lock_type = _original_of(threading, "Lock")
        if isinstance(lock_type, type):
            _set(threading, "Lock", _gevent_lock_class(lock_type))
    if "RLock" in types:
        _set(threading, "RLock", _gevent_rlock_factory(_original_rlock()))


def _original_rlock():
    import ddlock

    current = threading.RLock
    if getattr(current, "_ddlock_original", None) is not None or \
            getattr(current, "_ddl_class", None) is not None:
        return ddlock._ORIGINAL_RLOCK
    return current


def _on_gevent_event(event):
    """gevent.events subscriber: gevent has just patched threading."""
    if getattr(event, "module_name", None) != "threading" or \
            type(event).__name__ != "GeventDidPatchModuleEvent":
        return
    if not _state["types"] or _native is None or not _native.is_running():
        return
    try:
        _install_gevent_locks()
    except Exception:
        pass


def _subscribe_gevent(events):
    subscribers = getattr(events, "subscribers", None)
    if subscribers is None or _on_gevent_event in subscribers:
        return
    subscribers.append(_on_gevent_event)
    _state["subscriber"] = subscribers


# ---- patching --------------------------------------------------------------

def _original_of(module, name):
    value = getattr(module, name)
    entry = _installed.get((module.__name__, name))
    if entry is not None and value is entry[1]:
        return entry[0]
    return getattr(value, "_ddl_original", value) if isinstance(value, _ProfiledMeta) else value


def _set(module, name, value):
    current = getattr(module, name)
    key = (module.__name__, name)
    entry = _installed.get(key)
    if entry is not None and current is entry[1]:
        before = entry[0]
    else:
        before = current
    _installed[key] = (before, value)
    setattr(module, name, value)
    if isinstance(before, type) and before is not value and \
            vars(before).get("__module__") == key[0] and \
            vars(before).get("__qualname__", getattr(before, "__name__", None)) == name:
        _keep_pickling_by_name(before, key)


# ---- pickling of the originals while patched --------------------------------
# pickle saves a class by name and checks that the name still leads to it:
# once threading.Condition is the patched class, an object of the original
# one (the Condition inside every threading.Semaphore, objects made before
# start()) would fail with pickle's PicklingError, where natively pickling
# goes on to the lock inside and fails with the lock's TypeError. While
# patched, copyreg's dispatch table reduces these objects as object does,
# with the class made by _new_original(module, name) instead of saved by
# name: copy.copy/deepcopy give exactly the native result (an object of the
# original class with the same state), pickling fails on the same lock with
# the same TypeError, and a state that does pickle unpickles to an object of
# what that name is then (the original when ddlock is not running).

_reducers = {}  # original class -> the reducer registered for it


def _new_original(module, name):
    """An uninitialised object of the class ``module.name`` had before
    ddlock patched it (what copyreg.__newobj__ makes natively)."""
    entry = _installed.get((module, name))
    cls = entry[0] if entry is not None else getattr(sys.modules[module], name)
    return cls.__new__(cls)


def _keep_pickling_by_name(original, key):
    if original in _reducers or original in copyreg.dispatch_table:
        return  # someone's own reducer decides; never replaced

    def reduce(obj):
        rv = object.__reduce_ex__(obj, 4)
        if type(rv) is tuple and len(rv) >= 2 and rv[0] is copyreg.__newobj__ \
                and type(rv[1]) is tuple and len(rv[1]) == 1 and rv[1][0] is original:
            return (_new_original, key) + rv[2:]
        return rv

    _reducers[original] = reduce
    copyreg.dispatch_table[original] = reduce


def _drop_reducers():
    for original, reduce in list(_reducers.items()):
        if copyreg.dispatch_table.get(original) is reduce:
            del copyreg.dispatch_table[original]
    _reducers.clear()


class _PostImportHooks(object):
    """sys.meta_path finder that runs a callback right after one of a few
    modules is first imported (asyncio, gevent.events); gone at stop()."""

    def __init__(self, hooks):
        self.hooks = hooks

    def find_spec(self, fullname, path=None, target=None):
        callback = self.hooks.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        spec.loader = _ChainedLoader(loader, callback, self, fullname)
        return spec


class _ChainedLoader(object):
    def __init__(self, loader, callback, finder, name):
        self._loader = loader
        self._callback = callback
        self._finder = finder
        self._name = name

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # the module sees its real loader
        try:
            module.__loader__ = self._loader
            module.__spec__.loader = self._loader
        except AttributeError:
            pass
        self._loader.exec_module(module)
        self._finder.hooks.pop(self._name, None)
        try:
            self._callback(module)
        except Exception:
            pass
        if not self._finder.hooks:
            _remove_watcher()


def _remove_watcher():
    watcher = _state["watcher"]
    _state["watcher"] = None
    if watcher is not None:
        try:
            sys.meta_path.remove(watcher)
        except ValueError:
            pass


def _asyncio_imported(module):
    if _native is not None and _native.is_running() and _state["types"]:
        _install_asyncio(module)


def install(native, types):
    """Patch the primitives selected by ``types`` (names of LOCK_TYPES).
    ddlock.start() calls this with its control lock held; threading.Lock and
    RLock outside gevent are ddlock/__init__.py's C factories."""
    global _native
    _native = native
    import _thread

    native._prim_setup(_acquire_wrapper, type(_thread.allocate_lock()),
                       getattr(threading, "_CRLock", None) or _thread.RLock)
    _state["types"] = tuple(types)
    if _gevent_patched():
        _install_gevent_locks()
    if "Semaphore" in types:
        _set(threading, "Semaphore",
             _threading_semaphore("Semaphore", _original_of(threading, "Semaphore")))
    if "BoundedSemaphore" in types:
        _set(threading, "BoundedSemaphore",
             _threading_semaphore("BoundedSemaphore",
                                  _original_of(threading, "BoundedSemaphore")))
    if "Condition" in types:
        _set(threading, "Condition", _threading_condition(_original_of(threading, "Condition")))
    hooks = {}
    if any(t.startswith("asyncio.") for t in types):
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and hasattr(asyncio, "Lock"):
            _install_asyncio(asyncio)
        else:
            hooks["asyncio"] = _asyncio_imported
    else:
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None:
            _setup_asyncio(asyncio)  # task labels for Lock/RLock
        else:
            hooks["asyncio"] = _setup_asyncio
    if "Lock" in types or "RLock" in types:
        events = sys.modules.get("gevent.events")
        if events is not None:
            _subscribe_gevent(events)
        else:
            hooks["gevent.events"] = _subscribe_gevent
    if hooks:
        watcher = _PostImportHooks(hooks)
        _state["watcher"] = watcher
        sys.meta_path.insert(0, watcher)


def uninstall():
    """Restore every name install() patched (ddlock.stop())."""
    _remove_watcher()
    subscribers = _state["subscriber"]
    _state["subscriber"] = None
    if subscribers is not None:
        try:
            subscribers.remove(_on_gevent_event)
        except ValueError:
            pass
    for (modname, name), (before, ours) in list(_installed.items()):
        module = sys.modules.get(modname)
        if module is not None and getattr(module, name, None) is ours:
            setattr(module, name, before)
    _installed.clear()
    _drop_reducers()
    _state["types"] = ()
    _state["gevent"] = False


def gevent_active():
    """threading is patched by gevent: Lock/RLock are profiled here."""
    return _gevent_patched()


def tracker_of(obj):
    """The Tracker profiling obj (None when native), for tests and tools."""
    if _native is None:
        return None
    return _native._prim_tracker_of(obj)
