"""ddlock — a lock profiler for CPython.

Names every lock by the variable it is bound to, measures wait and hold time
with stacks, and exports pprof to files and to a Datadog agent.

    import ddlock
    ddlock.start(output_pprof="/tmp/app", capture_pct=10)
    ...
    ddlock.stop()

or ``import ddlock.auto`` (configured from the environment), or
``ddlock-run python app.py``.
"""

import _thread
import atexit
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Union

from . import _stuck

__version__ = "0.1.0"
__all__ = ["start", "stop", "flush", "stats", "is_running", "build_info", "stuck_waits",
           "deadlocks", "lock_order_inversions", "__version__"]

log = logging.getLogger("ddlock")

# Taken at import: what "native" means (ddlock profiles these objects in
# place, it never replaces them).
_ORIGINAL_LOCK = threading.Lock
_ORIGINAL_RLOCK = threading.RLock
_control: Any = threading._allocate_lock() if hasattr(threading, "_allocate_lock") else None
if _control is None:  # pragma: no cover - every supported CPython has it
    import _thread

    _control = _thread.allocate_lock()

# Modules whose locks are never profiled, whatever the exclusions say:
# ddlock's own, and the import system's module locks.
_ALWAYS_NATIVE = ("ddlock", "importlib", "_frozen_importlib")

_state: Dict[str, Any] = {
    "config": None,        # Config of the running session
    "atexit": False,
    "logged_kinds": set(),
    "pid": None,
    "mp_hooked": False,    # multiprocessing after-fork hook registered
}


def _native():
    from . import _ddlock

    return _ddlock


def _ddlock_dir():
    return os.path.dirname(os.path.abspath(__file__)) + os.sep


def _threading_file():
    return threading.Condition.__init__.__code__.co_filename


def _stdlib_dirs():
    """The standard library's directories (with a trailing separator): the
    acquire-site search skips their frames for locks made elsewhere."""
    import sysconfig

    dirs = []
    for key in ("stdlib", "platstdlib"):
        d = sysconfig.get_paths().get(key)
        for p in {d, os.path.realpath(d)} if d else ():
            p = os.path.join(p, "")
            if p not in dirs:
                dirs.append(p)
    return tuple(dirs)


def _passthrough():
    """Code of the functions that make a lock for their caller:
    threading.RLock() (a Python function calling _thread.RLock)."""
    rlock = getattr(threading, "RLock", None)
    code = getattr(rlock, "__code__", None)
    return (code,) if code is not None else ()


def _opcodes():
    """The running interpreter's opcode numbers and inline cache sizes
    (creation bindings read the bytecode after a constructor call)."""
    try:
        import opcode

        opmap = dict(opcode.opmap)
        caches = [0] * 256
        entries = getattr(opcode, "_inline_cache_entries", None)
        if isinstance(entries, dict):  # 3.13+: by name
            for name, n in entries.items():
                if name in opmap:
                    caches[opmap[name]] = int(n)
        elif isinstance(entries, (list, tuple)):  # 3.11, 3.12: by opcode
            for op, n in enumerate(entries[:256]):
                caches[op] = int(n)
        return opmap, tuple(caches)
    except Exception:  # never assumed: no bindings without it
        return {}, ()


def _native_lock_types():
    """_thread's lock types, as they were before anything replaced them in
    the _thread module (gevent's monkey-patching does: its originals are
    kept by gevent.monkey)."""
    import sys
    import _thread

    allocate, rlock = _thread.allocate_lock, getattr(_thread, "RLock", None)
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            allocate, rlock = monkey.get_original("_thread", ["allocate_lock", "RLock"])
        except Exception:
            pass
    if not isinstance(rlock, type):
        rlock = getattr(threading, "_CRLock", None)
    return type(allocate()), rlock


def _patch(native):
    from . import _primitives

    cfg = _state["config"]
    types = cfg.lock_types if cfg is not None else _primitives.LOCK_TYPES
    native._hook_locks("Lock" in types, "RLock" in types)
    # Semaphore, BoundedSemaphore, Condition, asyncio's, gevent's
    _primitives.install(native, types, cfg.condition_wait if cfg is not None else True)


def _unpatch():
    import sys

    primitives = sys.modules.get(__name__ + "._primitives")
    if primitives is not None:
        primitives.uninstall()
    native = _loaded_native()
    if native is not None:
        native._unhook_locks()


def _start_native(native, cfg):
    url, unix_socket, api_key = cfg.upload_target()
    lock_type, rlock_type = _native_lock_types()
    opmap, caches = _opcodes()
    active = getattr(threading, "_active", None)
    native._setup(active if type(active) is dict else None, _threading_file(), _ddlock_dir(),
                  _passthrough(), lock_type, rlock_type, opmap, caches, _stdlib_dirs(),
                  _thread._local)
    native.start(
        output_prefix=cfg.output_pprof,
        capture_pct=cfg.capture_pct,
        max_frames=cfg.max_frames,
        interval=cfg.upload_interval,
        inspect_dir=cfg.lock_name_inspect_dir,
        exclude=tuple(cfg.lock_exclude_modules) + _ALWAYS_NATIVE,
        max_samples=cfg.max_samples,
        wait_rate_ns=cfg.lock_wait_rate_ns,
        seed=cfg.sampling_seed,
        upload_enabled=bool(url),
        url=url,
        unix_socket=unix_socket,
        api_key=api_key,
        timeout_ms=cfg.api_timeout_ms,
        tags=cfg.tags_string(__version__),
        version=__version__,
        ca_file=cfg.ca_file,
        file_mode=cfg.output_mode,
        max_files=cfg.output_max_files,
        min_free_bytes=cfg.output_min_free_mb << 20,
        resolve_names=cfg.resolve_names,
        lock_order=cfg.lock_order,
    )


if TYPE_CHECKING:
    # What type checkers see of start(): one keyword per setting of
    # ddlock/_config.py (VARIABLES, then ALIASES; None = from the
    # environment, else the default). tests/test_packaging.py keeps the two
    # lists equal.
    def start(
        *,
        output_pprof: Optional[str] = None,
        capture_pct: Optional[float] = None,
        max_frames: Optional[int] = None,
        upload_interval: Optional[float] = None,
        lock_name_inspect_dir: Optional[bool] = None,
        lock_exclude_modules: Union[str, Iterable[str], None] = None,
        api_timeout_ms: Optional[int] = None,
        upload_enabled: Optional[bool] = None,
        max_samples: Optional[int] = None,
        lock_wait_rate_ns: Optional[int] = None,
        sampling_seed: Optional[int] = None,
        output_mode: Union[int, str, None] = None,
        output_max_files: Optional[int] = None,
        output_min_free_mb: Optional[int] = None,
        debug: Optional[bool] = None,
        resolve_names: Optional[bool] = None,
        lock_types: Union[str, Iterable[str], None] = None,
        agent_url: Optional[str] = None,
        agent_host: Optional[str] = None,
        agent_port: Optional[int] = None,
        api_key: Optional[str] = None,
        site: Optional[str] = None,
        service: Optional[str] = None,
        env: Optional[str] = None,
        version: Optional[str] = None,
        tags: Optional[str] = None,
        ca_file: Optional[str] = None,
        intake_url: Optional[str] = None,
        lock_stuck_s: Optional[float] = None,
        condition_wait: Optional[bool] = None,
        lock_order: Optional[bool] = None,
        interval: Optional[float] = None,
        inspect_dir: Optional[bool] = None,
        exclude_modules: Union[str, Iterable[str], None] = None,
        timeout_ms: Optional[int] = None,
        seed: Optional[int] = None,
        wait_rate_ns: Optional[int] = None,
    ) -> None:
        ...
else:
    def start(**config):
        """Start profiling locks.

        Keywords mirror the environment variables (``capture_pct`` for
        ``DD_PROFILING_CAPTURE_PCT``, ``output_pprof``, ``upload_interval``, ...)
        and override them. Raises ValueError naming the variable and the value
        when the configuration is malformed, RuntimeError if already running.
        """
        from . import _config

        cfg = _config.from_env(config, strict=True)
        _start_with(cfg)


def _start_with(cfg):
    native = _native()
    if not native.main_interpreter():
        # the native lock types, their hooks and the export thread are the
        # process's: one profiler per process, in the main interpreter
        raise RuntimeError("ddlock profiles the main interpreter only; "
                           "this is a sub-interpreter")
    with _control:
        if native.is_running():
            raise RuntimeError("ddlock is already running; call ddlock.stop() first")
        _warn_free_threaded()  # before profiling: sysconfig takes a lock
        _start_native(native, cfg)
        _state["config"] = cfg
        _state["pid"] = os.getpid()
        _state["logged_kinds"] = set()
        _patch(native)
        _stuck.start(cfg.lock_stuck_s)
        if cfg.lock_order:
            from . import _order

            _order.start(native)
        if not _state["atexit"]:
            atexit.register(_at_exit)
            _state["atexit"] = True
    _hook_multiprocessing()
    if cfg.debug:
        _enable_debug_logging()
        log.debug("ddlock started: capture %.3g%%, output %s, upload %s",
                  cfg.capture_pct, cfg.output_pprof, cfg.upload_target_shown())


def _warn_free_threaded() -> None:
    """On a free-threaded build, say once that ddlock runs with the GIL: its
    extension does not declare itself GIL-free, so CPython turned the GIL
    back on when it loaded (ext/ddlock.h lists what relies on it)."""
    if _state.get("warned_free_threaded") or not _free_threaded_build():
        return
    _state["warned_free_threaded"] = True
    gil = getattr(sys, "_is_gil_enabled", None)
    log.warning("ddlock: this CPython is a free-threaded build; ddlock relies on the GIL, "
                "so CPython enabled the GIL when ddlock's extension loaded (GIL enabled now: "
                "%s). Threads do not run in parallel while ddlock is loaded; run without "
                "ddlock to keep the GIL off.", bool(gil()) if callable(gil) else "unknown")


def stop(flush: bool = True) -> None:
    """Stop profiling: remove the hooks and export once more (unless
    ``flush=False``). Locks made while running keep working, natively."""
    native = _native()
    _stuck.stop()
    with _control:
        _unpatch()
        native.stop(final_export=bool(flush))
        _state["config"] = None
    _stop_order()
    _drain_native_logs()


def _stop_order():
    import sys

    order = sys.modules.get(__name__ + "._order")
    if order is not None:
        order.stop()


def lock_order_inversions(same_class: bool = False) -> List[Dict[str, Any]]:
    """The lock-order inversions found since ``start(lock_order=True)`` (kept
    after ``stop()`` until the next start): each a dict with ``kind``
    ("inversion"), ``locks`` (the lock names around the cycle) and ``edges``
    (``held``, ``acquired``, ``stack``: (file, line, function) tuples,
    innermost first, where that order was first taken, and ``thread``).
    ``same_class=True`` adds the same-class nesting reports (``kind``
    "same-class")."""
    native = _loaded_native()
    if native is None:
        return []
    reports = native._order_reports()
    return [r for r in reports if same_class or r.get("kind") == "inversion"]


def flush() -> List[str]:
    """Export what was collected so far now; returns the file paths written."""
    from . import _ddlock as native
    paths = native.flush()
    _drain_native_logs()
    return paths


def stats() -> Dict[str, Union[int, str]]:
    """Counters of the running profiler (samples, drops, files, uploads):
    integers, and the exporter's ``last_error`` message."""
    from . import _ddlock as native

    s = native.stats()
    s["deadlocks"] = _stuck.deadlock_count()
    return s


def stuck_waits() -> List[Dict[str, Any]]:
    """The contended waits in progress longer than ``lock_stuck_s``, as
    dicts: ``lock``, ``lock_type``, ``waiter_name``/``waiter_id``,
    ``holder_name``/``holder_id`` (None: unknown), ``waited_s``,
    ``has_timeout``, ``waiter_stack``/``holder_stack`` (lists of
    (function, file, line), leaf first)."""
    return _stuck.stuck_waits()


def deadlocks() -> List[Dict[str, Any]]:
    """The deadlocks found while running: cycles of stuck waits, each a
    dict with ``locks``, ``threads``, ``waits`` (as in stuck_waits()) and
    the ``report`` text that was logged."""
    return _stuck.deadlocks()


def build_info() -> Dict[str, Any]:
    """Which paths this build of ddlock uses: ``frame_walk`` is 'internal'
    (the interpreter's own structures, on the CPython minors ddlock was
    tested on) or 'public' (the public C API only: any other version, or a
    build with DDLOCK_PORTABLE=1), plus the versions it was built for and
    runs on."""
    import platform

    info = dict(_native().build_info())
    info["python"] = platform.python_version()
    info["implementation"] = platform.python_implementation()
    info["free_threaded_build"] = _free_threaded_build()
    gil = getattr(sys, "_is_gil_enabled", None)
    info["gil_enabled"] = bool(gil()) if callable(gil) else True
    return info


def _free_threaded_build() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def is_running() -> bool:
    """Whether the profiler runs (False when the extension cannot load)."""
    try:
        from . import _ddlock as native
    except ImportError:
        return False
    return native.is_running()


def _at_exit():
    try:
        if is_running():
            stop(flush=True)
    except Exception:  # never break interpreter exit
        pass


def _enable_debug_logging():
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ddlock %(levelname)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def _drain_native_logs():
    """Hand the exporter's messages to the ``ddlock`` logger: failures once
    per kind at WARNING, everything at DEBUG when debugging."""
    try:
        entries = _native().drain_logs()
    except Exception:
        return
    cfg = _state["config"]
    debug = bool(cfg is not None and cfg.debug) or log.isEnabledFor(logging.DEBUG)
    for level, kind, msg in entries:
        if level >= logging.WARNING:
            if kind in _state["logged_kinds"] and not debug:
                continue
            _state["logged_kinds"].add(kind)
            log.warning("%s: %s", kind, msg)
        elif debug:
            log.debug("%s: %s", kind, msg)


# ---- fork -------------------------------------------------------------------

def _loaded_native():
    import sys

    return sys.modules.get(__name__ + "._ddlock")


def _fork_before():
    # The native mutexes are taken inside fork() by pthread_atfork handlers
    # (ext/module.c); here only multiprocessing's exit hook is ensured.
    if _loaded_native() is not None:
        _hook_multiprocessing()


def _fork_child():
    native = _loaded_native()
    if native is None:
        return
    try:
        native.fork_child()
        cfg = _state["config"]
        if cfg is not None and native.is_running():
            # The child is its own process: fresh samples, its own pid in
            # file names and tags, its own export thread and curl state.
            native.stop(final_export=False)
            _start_native(native, cfg)
            _state["pid"] = os.getpid()
            _stuck.fork_child()
            if cfg.lock_order:
                from . import _order

                _order.start(native)
    except Exception:
        pass


# ---- multiprocessing ----------------------------------------------------------
# Processes started by multiprocessing leave through os._exit() ("fork" and
# "forkserver" start methods) right after multiprocessing's own exit
# finalizers: Python's atexit handlers, and so our final export, never run
# there. multiprocessing calls the hooks of util.register_after_fork in every
# child it starts (after it has cleared the finalizers inherited from the
# parent); ours registers an exit finalizer that stops the profiler, writing
# the child's last profile. multiprocessing is never imported by us: the hook
# is registered once it is loaded (at start() and before every fork).

class _MultiprocessingHook(object):
    """Weak-referenceable key for multiprocessing's after-fork registry."""


_mp_hook = _MultiprocessingHook()


def _hook_multiprocessing():
    if _state["mp_hooked"]:
        return
    import sys

    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    try:
        util.register_after_fork(_mp_hook, _mp_child_started)
        _state["mp_hooked"] = True
    except Exception:
        pass


def _mp_child_started(_hook):
    import sys

    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    try:
        # lowest priority: after the child's other finalizers and children
        util.Finalize(None, _at_exit, exitpriority=-(2 ** 31))
    except Exception:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_before, after_in_child=_fork_child)
