"""Stuck locks and deadlocks, reported while they happen (issue 18).

The contended path of an acquire registers its wait in the native core
(ext/holder.c): the lock, the waiter, the holder. Nothing else runs while
no one waits long. A watchdog thread of ddlock's wakes every half threshold
(``lock_stuck_s``, default 10 s), asks the core for the waits older than
the threshold (``_ddlock._waits``: lock name, waiter, holder, their current
stacks; read under the GIL, no code of the application runs) and:

- logs each stuck wait once, as a WARNING on the ``ddlock`` logger (with no
  logging configured, ``logging.lastResort`` prints it on stderr);
- follows waiter -> lock -> holder -> the lock that holder waits for ...:
  a cycle of stuck waits is a deadlock, logged once (ERROR), counted in
  ``stats()['deadlocks']`` and kept for ``ddlock.deadlocks()``.

No false alarms by construction: a Condition.wait() releases its lock and
waits on a lock of threading's own (never registered), an RLock re-entered
by its owner and a semaphore with a free slot do not wait. A wait with a
timeout is marked ``has_timeout`` (it may end by itself).

Only the watchdog thread formats and logs (logging handlers are the
application's code): never an application thread's acquire. The watchdog
is a raw daemon thread (``_thread``, not in threading's registry), stopped
by ``stop()``, restarted in a forked child.
"""

import _thread
import functools
import logging
import os
from typing import Any, Dict, List, Optional, Set, Tuple

log = logging.getLogger("ddlock")

_MAX_DEADLOCKS = 100  # kept for deadlocks(); more are counted only

_state: Dict[str, Any] = {
    "threshold": 0.0,
    "thread": None,
    "stop": None,
    "reported": set(),  # wait ids logged as stuck
    "cycles": set(),  # deadlocks logged (frozensets of wait ids)
    "deadlocks": [],
    "count": 0,
}
# the real thread functions, taken at import: the watchdog is a raw thread,
# not a threading.Thread (not in threading's registry, which gevent's
# monkey-patching changes under a running thread), and sleeps on a lock
_allocate_lock = _thread.allocate_lock
_start_new_thread = _thread.start_new_thread
_get_ident = _thread.get_ident
_control = _allocate_lock()


def _native() -> Any:
    from . import _ddlock

    return _ddlock


def start(threshold: float) -> None:
    """Run the watchdog for waits longer than threshold seconds (0: none)."""
    with _control:
        _stop_locked()
        _state["threshold"] = float(threshold)
        _state["reported"] = set()
        if threshold > 0:
            _spawn()


def _spawn() -> None:
    stop_lock, done_lock = _allocate_lock(), _allocate_lock()
    stop_lock.acquire()  # released: stop
    done_lock.acquire()  # released by the watchdog as it ends
    _state["stop"] = (stop_lock, done_lock)
    threshold = _state["threshold"]
    interval = min(max(threshold / 2.0, 0.05), 5.0)
    # the thread's body is C (_idle_loop): no Python frame while it waits,
    # so sys._current_frames() of the program (and of a forked child right
    # after fork) sees it only while a check runs
    _state["thread"] = _start_new_thread(
        _native()._idle_loop, (stop_lock, interval, functools.partial(_tick, threshold), done_lock))


def _stop_locked() -> None:
    locks, ident = _state["stop"], _state["thread"]
    _state["stop"] = _state["thread"] = None
    if locks is not None:
        stop_lock, done_lock = locks
        stop_lock.release()
        if ident != _get_ident():
            done_lock.acquire(True, 2.0)


def stop() -> None:
    with _control:
        _stop_locked()
        _state["threshold"] = 0.0


def fork_child() -> None:
    """In a forked child: the parent's watchdog thread is gone; the child's
    own waits are watched by a new one."""
    global _control
    _control = _allocate_lock()
    _state["thread"] = _state["stop"] = None
    _state["reported"] = set()
    if _state["threshold"] > 0:
        _spawn()


def _tick(threshold: float) -> None:
    """One look of the watchdog, every threshold / 2 (0.05-5 s)."""
    try:
        check(threshold)
    except Exception:  # the watchdog never dies of a report
        log.debug("ddlock watchdog: check failed", exc_info=True)


def stuck_waits(threshold: Optional[float] = None) -> List[Dict[str, Any]]:
    """The waits longer than threshold (default: ``lock_stuck_s``) now."""
    t = _state["threshold"] if threshold is None else threshold
    if not t or t <= 0:
        return []
    try:
        return list(_native()._waits(float(t)))
    except Exception:
        return []


def deadlocks() -> List[Dict[str, Any]]:
    """The deadlocks found so far: {'waits': [...], 'locks': [...],
    'threads': [...], 'report': str}."""
    return list(_state["deadlocks"])


def deadlock_count() -> int:
    return int(_state["count"])


# ---- checking -----------------------------------------------------------

def check(threshold: float) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """One pass: log the new stuck waits and the new deadlocks; returns
    them (stuck, deadlocks)."""
    waits = stuck_waits(threshold)
    reported: Set[int] = _state["reported"]
    live = {w["id"] for w in waits}
    reported.intersection_update(live)  # ended waits are forgotten
    new_stuck = [w for w in waits if w["id"] not in reported]
    for w in new_stuck:
        reported.add(w["id"])
        log.warning("%s", format_stuck(w))
    found = []
    for cycle in find_cycles(waits):
        key = frozenset(w["id"] for w in cycle)
        if key in _state["cycles"]:
            continue
        _state["cycles"].add(key)
        d = {"waits": cycle, "locks": [w["lock"] for w in cycle],
             "threads": [w["waiter_name"] for w in cycle],
             "report": format_deadlock(cycle)}
        _state["count"] += 1
        if len(_state["deadlocks"]) < _MAX_DEADLOCKS:
            _state["deadlocks"].append(d)
        found.append(d)
        log.error("%s", d["report"])
    return new_stuck, found


def find_cycles(waits: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """Cycles of waits: each waiter holds the lock the previous one waits
    for. A thread waits for one lock at a time."""
    by_waiter = {w["waiter_id"]: w for w in waits}
    cycles = []
    seen: Set[int] = set()
    for start in waits:
        path: List[Dict[str, Any]] = []
        on_path: Dict[int, int] = {}
        w: Optional[Dict[str, Any]] = start
        while w is not None and w["waiter_id"] not in seen:
            if w["waiter_id"] in on_path:
                cycles.append(path[on_path[w["waiter_id"]]:])
                break
            on_path[w["waiter_id"]] = len(path)
            path.append(w)
            holder = w.get("holder_id")
            w = by_waiter.get(holder) if holder is not None else None
        seen.update(on_path)
    return cycles


def _who(name: Any, ident: Any) -> str:
    return "thread %r (id %s)" % (name if name is not None else "?", ident)


def format_stack(stack: Any, indent: str = "    ") -> str:
    if not stack:
        return indent + "(stack unknown)"
    return "\n".join('%sFile "%s", line %s, in %s' % (indent, f, line, fn)
                     for fn, f, line in stack)


def format_stuck(w: Dict[str, Any]) -> str:
    lines = ["ddlock: lock %s (%s) is stuck: %s has waited %.1f s for it%s"
             % (w["lock"], w["lock_type"], _who(w["waiter_name"], w["waiter_id"]),
                w["waited_s"], " (with a timeout)" if w["has_timeout"] else ""),
             "  waiting thread at (leaf first):", format_stack(w["waiter_stack"])]
    if w["holder_id"] is None:
        lines.append("  held by: unknown")
    else:
        lines.append("  held by %s, now at (leaf first):"
                     % _who(w["holder_name"], w["holder_id"]))
        lines.append(format_stack(w["holder_stack"]))
    return "\n".join(lines)


def format_deadlock(cycle: List[Dict[str, Any]]) -> str:
    lines = ["ddlock: deadlock: %d threads wait for each other's locks (pid %d):"
             % (len(cycle), os.getpid())]
    for w in cycle:
        lines.append("  %s waits for lock %s (%s), held by %s%s; at (leaf first):"
                     % (_who(w["waiter_name"], w["waiter_id"]), w["lock"],
                        w["lock_type"], _who(w["holder_name"], w["holder_id"]),
                        " (a wait with a timeout)" if w["has_timeout"] else ""))
        lines.append(format_stack(w["waiter_stack"]))
    return "\n".join(lines)
