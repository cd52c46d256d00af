"""Profiling beyond Lock and RLock, in place: threading.Semaphore,
BoundedSemaphore and Condition, asyncio.Lock, Semaphore, BoundedSemaphore
and Condition, threading's pure-Python RLock (what threading.RLock() makes
when the C one is unavailable, as under gevent) and gevent's lock.

Nothing is replaced: the classes stay the stdlib's (and gevent's), so
``type()``, ``isinstance``, ``__mro__``, pickling, copying, signatures and
source files are the native ones. While ddlock runs, a few entries of these
classes' dicts are ``ddlock._ddlock.Hook`` objects (ext/hooks.c): C
callables that run the original function (tracers and profilers see the
native calls and no frame of ddlock's) and sample around it. Read from the
class, a Hook is the original function. ``stop()`` puts the originals back.

- ``__init__``: a profiled object gets its profiling state, kept off the
  object (ext/tracker.c); a Condition's lock is profiled instead, labelled
  by the Condition, unless ddlock profiles that lock itself.
- ``acquire``/``__enter__``, ``release``, and the RLock's
  ``_release_save``/``_acquire_restore`` (Condition.wait): sampled around
  the original.

threading.Condition has only its ``__init__`` hooked: its acquire, release
and wait are its lock's (a native RLock profiled by ext/lock.c).

Creation follows the locks' rules: nothing is profiled while ddlock is
stopped or when an excluded module (threading, asyncio, ...) creates the
object -- the Condition and Lock inside every threading.Semaphore and Event
stay unprofiled, so nothing is counted twice.

asyncio is hooked when it is imported (an import hook while ddlock runs);
gevent's monkey-patching is followed through its event subscribers: whether
``gevent.monkey.patch_all()`` runs before or after ``ddlock.start()``,
gevent's lock is profiled and samples carry the running greenlet as their
task.
"""

import sys
import threading
import types

from . import _config

LOCK_TYPES = _config.LOCK_TYPES
KIND = {name: i for i, name in enumerate(LOCK_TYPES)}

_native = None
_installed = []  # (class, attribute, original value, hook) in install order
_state = {"types": (), "watcher": None, "subscriber": None, "registered": False,
          "condition_wait": True}


def _hook(cls, kind, ops):
    """Put Hooks in cls's dict for the attributes of ops ({name: op}) that
    the class defines itself (inherit the rest); extra names: attributes
    it inherits from a class that cannot be changed (a C type)."""
    if cls is None or not isinstance(cls, type):
        return
    own = vars(cls)
    kind_id = KIND[kind] if isinstance(kind, str) else kind
    for name, op in ops.items():
        orig = own.get(name)
        if orig is None:
            continue
        if isinstance(orig, _native.Hook):
            continue  # hooked already (never twice)
        hook = _native.Hook(op, kind_id, orig)
        try:
            setattr(cls, name, hook)
        except (TypeError, AttributeError):
            continue
        _installed.append((cls, name, orig, hook))


def _hook_inherited(cls, kind, ops):
    """Hooks in cls's dict for attributes it inherits (from a C base that
    cannot take them)."""
    kind_id = KIND[kind]
    for name, op in ops.items():
        if name in vars(cls):
            continue
        orig = getattr(cls, name, None)
        if orig is None:
            continue
        hook = _native.Hook(op, kind_id, orig)
        try:
            setattr(cls, name, hook)
        except (TypeError, AttributeError):
            continue
        _installed.append((cls, name, None, hook))


def _ops(*names):
    n = _native
    table = {"__init__": n.H_INIT, "acquire": n.H_ACQUIRE, "__enter__": n.H_ACQUIRE,
             "release": n.H_RELEASE, "_release_save": n.H_RELEASE_SAVE,
             "_acquire_restore": n.H_ACQUIRE_RESTORE, "aacquire": n.H_AACQUIRE,
             "wait": n.H_WAIT, "winit": n.H_WINIT, "await": n.H_AWAIT,
             "aget": n.H_AQGET, "aput": n.H_AQPUT}
    renamed = {"aacquire": "acquire", "winit": "__init__", "await": "wait",
               "aget": "get", "aput": "put"}
    ops = {}
    for name in names:
        ops[renamed.get(name, name)] = table[name]
    return ops


# ---- threading -------------------------------------------------------------

def _install_threading(types):
    if "Semaphore" in types:
        _hook(threading.Semaphore, "Semaphore",
              _ops("__init__", "acquire", "__enter__", "release"))
    if "BoundedSemaphore" in types:
        _hook(threading.BoundedSemaphore, "BoundedSemaphore",
              _ops("__init__", "acquire", "__enter__", "release"))
        if "Semaphore" not in types:  # its acquire is Semaphore's
            _hook_inherited(threading.BoundedSemaphore, "BoundedSemaphore",
                            _ops("acquire", "__enter__"))
    if "Condition" in types:
        _hook(threading.Condition, "Condition", _ops("__init__"))
    if "RLock" in types:
        _hook(getattr(threading, "_PyRLock", None), "RLock",
              _ops("__init__", "acquire", "__enter__", "release", "_release_save",
                   "_acquire_restore"))
    if _state["condition_wait"]:
        _install_condition_waits()


# ---- condition waits ---------------------------------------------------------

def _install_condition_waits():
    """Condition.wait (and wait_for, which calls it) is timed; what waits
    through a Condition made inside threading (Event, Barrier) or
    concurrent.futures (Future) names that Condition's waits by itself.
    A queue.Queue's Conditions are made in queue.py: profiled as they are,
    named by their bindings (not_empty, not_full)."""
    n = _native
    _hook(threading.Condition, n.W_CONDITION, _ops("wait"))
    _hook(threading.Event, n.W_EVENT, _ops("winit"))
    _hook(threading.Barrier, n.W_BARRIER, _ops("winit"))


def _install_futures(base):
    if _native is not None and _native.is_running() and _state["condition_wait"]:
        _hook(getattr(base, "Future", None), _native.W_FUTURE, _ops("winit"))


def _install_asyncio_waits():
    n = _native
    locks = sys.modules.get("asyncio.locks")
    queues = sys.modules.get("asyncio.queues")
    if locks is not None:
        _hook(getattr(locks, "Condition", None), n.W_ACONDITION, _ops("await"))
        _hook(getattr(locks, "Event", None), n.W_AEVENT, _ops("winit", "await"))
    if queues is not None:
        _hook(getattr(queues, "Queue", None), n.W_AQUEUE, _ops("winit", "aget", "aput"))


# ---- asyncio ---------------------------------------------------------------

def _setup_asyncio(asyncio):
    """Task labels: the registry asyncio.current_task(loop) reads, and
    asyncio's own Task types (the only ones whose get_name is called)."""
    locks = sys.modules.get("asyncio.locks")
    events = sys.modules.get("asyncio.events")
    if locks is None or events is None:
        return
    tasks = sys.modules.get("asyncio.tasks")
    c_asyncio = sys.modules.get("_asyncio")
    current_tasks = _task_registry(asyncio, tasks, c_asyncio)
    task_types = tuple(t for t in (getattr(c_asyncio, "Task", None),
                                   getattr(tasks, "_PyTask", None))
                       if isinstance(t, type))
    mixin = getattr(locks, "_ContextManagerMixin", None)
    aenter = getattr(mixin, "__aenter__", None)
    locks_file = getattr(getattr(aenter, "__code__", None), "co_filename", None) \
        or locks.__file__
    get_running_loop = getattr(events, "_get_running_loop", None)
    if not callable(get_running_loop) or _portable():
        # the public route: raises RuntimeError outside a loop, which the
        # native side takes as "no task"
        get_running_loop = asyncio.get_running_loop
    _native._set_asyncio(locks_file, get_running_loop, asyncio.current_task,
                         current_tasks, task_types)


def _portable():
    """Whether this build takes the generic routes (DDLOCK_PORTABLE=1 or a
    CPython ddlock was not tested on)."""
    try:
        from . import _ddlock

        return _ddlock.build_info().get("frame_walk") != "internal"
    except Exception:
        return True


def _task_registry(asyncio, tasks, c_asyncio):
    """The dict asyncio.current_task(loop) reads, when it can be proven to be
    that: the C implementation's own registry, re-exported by asyncio.tasks
    (3.9-3.13), or the pure-Python one when asyncio has no C part. Anything
    else (3.14 keeps the current task on the thread state and leaves
    tasks._current_tasks unfilled; a portable build) gives None: ddlock then
    calls asyncio.current_task(), never reads a registry that may be stale."""
    registry = getattr(tasks, "_current_tasks", None)
    if not isinstance(registry, dict) or _portable() or c_asyncio is None:
        return None
    if getattr(c_asyncio, "_current_tasks", None) is not registry:
        return None
    current_task = asyncio.current_task
    if current_task is getattr(c_asyncio, "current_task", None):
        return registry  # 3.12, 3.13: the C function reading that registry
    if isinstance(current_task, types.FunctionType) and \
            current_task.__module__ == "asyncio.tasks":
        return registry  # 3.9-3.11: tasks.py's function reading it
    return None


def _install_asyncio(asyncio):
    _setup_asyncio(asyncio)
    locks = sys.modules.get("asyncio.locks")
    if locks is None:
        return
    types = _state["types"]
    for name in ("Lock", "Semaphore", "BoundedSemaphore", "Condition"):
        kind = "asyncio." + name
        cls = getattr(locks, name, None)
        if kind not in types or not isinstance(cls, type):
            continue
        if name == "Condition":
            _hook(cls, kind, _ops("__init__"))
        else:
            _hook(cls, kind, _ops("__init__", "aacquire", "release"))
        if name == "BoundedSemaphore" and "asyncio.Semaphore" not in types:
            _hook_inherited(cls, kind, _ops("aacquire"))
    if _state["condition_wait"]:
        _install_asyncio_waits()
    if not _state["registered"]:
        # an acquire that may wait returns a Waiting (ext/hooks.c): a
        # coroutine to asyncio (create_task, wait_for, gather...)
        import collections.abc

        collections.abc.Coroutine.register(_native.Waiting)
        _state["registered"] = True


# ---- gevent ----------------------------------------------------------------

def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:
        return False


def _install_gevent():
    """gevent has patched threading: its lock is threading.Lock (and
    threading.RLock() is the pure-Python RLock over it)."""
    import gevent

    # the greenlet's name is read through gevent's own Greenlet.name only
    _native._set_gevent(gevent.getcurrent, vars(gevent.Greenlet).get("name"))
    if "Lock" not in _state["types"]:
        return
    import ddlock

    lock_type = type(threading._allocate_lock())
    if lock_type is ddlock._native_lock_types()[0]:
        return  # not patched after all
    _hook(lock_type, "Lock", _ops("__init__", "acquire"))
    # its release (and __enter__/__exit__, which call acquire/release) come
    # from gevent's C semaphore: hooked on the lock class itself
    _hook_inherited(lock_type, "Lock", _ops("release"))


def _on_gevent_event(event):
    """gevent.events subscriber: gevent has just patched threading."""
    if getattr(event, "module_name", None) != "threading" or \
            type(event).__name__ != "GeventDidPatchModuleEvent":
        return
    if not _state["types"] or _native is None or not _native.is_running():
        return
    try:
        _install_gevent()
    except Exception:
        pass


def _subscribe_gevent(events):
    subscribers = getattr(events, "subscribers", None)
    if subscribers is None or _on_gevent_event in subscribers:
        return
    subscribers.append(_on_gevent_event)
    _state["subscriber"] = subscribers


# ---- import hooks ------------------------------------------------------------

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


# ---- install / uninstall -------------------------------------------------------

def install(native, types, condition_wait=True):
    """Hook the primitives selected by ``types`` (names of LOCK_TYPES), and
    the condition waits unless ``condition_wait`` is false. ddlock.start()
    calls this with its control lock held, after the native locks' hooks
    (ext/lock.c) are in."""
    global _native
    _native = native
    _state["types"] = tuple(types)
    _state["condition_wait"] = bool(condition_wait)
    _install_threading(types)
    if _gevent_patched():
        _install_gevent()
    hooks = {}
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and hasattr(asyncio, "Lock"):
        _install_asyncio(asyncio)
    else:
        hooks["asyncio"] = _asyncio_imported
    if condition_wait:
        base = sys.modules.get("concurrent.futures._base")
        if base is not None:
            _install_futures(base)
        else:
            hooks["concurrent.futures._base"] = _install_futures
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
    """Put back every original install() replaced (ddlock.stop())."""
    _remove_watcher()
    subscribers = _state["subscriber"]
    _state["subscriber"] = None
    if subscribers is not None:
        try:
            subscribers.remove(_on_gevent_event)
        except ValueError:
            pass
    while _installed:
        cls, name, orig, hook = _installed.pop()
        if vars(cls).get(name) is not hook:
            continue  # replaced since: not ours to restore
        try:
            if orig is None:
                delattr(cls, name)
            else:
                setattr(cls, name, orig)
        except (TypeError, AttributeError):
            pass
    _state["types"] = ()


def tracker_of(obj):
    """The lock type ddlock profiles obj as (e.g. "Semaphore"), or None."""
    if _native is None:
        return None
    return _native.profiled(obj)
