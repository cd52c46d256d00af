"""Lock-order checking (``start(lock_order=True)``): the reports of
ext/order.c, logged and handed out.

The checks run inside every acquire (ext/order.c); they never log there.
A report is queued and a reporter thread, woken through a raw lock of the
extension, logs it on the ``ddlock`` logger at WARNING. So no logging
happens inside an application's acquire: logging takes locks (its own, a
handler's, a queue's) that are themselves profiled and checked, and the
thread that acquires may hold any of them. The reporter's own acquires
are not checked.
"""

import logging
import os
import threading
from typing import Any, Dict, List, Optional

log = logging.getLogger("ddlock")

_state: Dict[str, Any] = {"thread": None, "stop": None, "native": None}


def _where(frame: Any) -> str:
    filename, line, func = frame
    return "%s:%d in %s" % (filename, line, func)


def format_report(report: Dict[str, Any]) -> str:
    """A report as the text logged: the locks, then every edge with the
    stack where that order was first taken (innermost frame last)."""
    locks = report.get("locks") or []
    if report.get("kind") == "same-class":
        head = ("ddlock lock order: same-class nesting: %s acquired while "
                "another lock made at the same place is held (a deadlock "
                "if two threads nest them in opposite orders)" % (locks[0] if locks else "?"))
    else:
        head = ("ddlock lock order: possible deadlock, lock-order inversion "
                "between %d locks: %s" % (len(locks), " -> ".join(locks + locks[:1])))
    lines = [head]
    for edge in report.get("edges") or []:
        lines.append("  %s held while acquiring %s, first at:" % (edge["held"], edge["acquired"]))
        stack = edge.get("stack") or ()
        for frame in reversed(stack):
            lines.append("    " + _where(frame))
    return "\n".join(lines)


def _emit(native: Any) -> None:
    try:
        reports = native._order_take()
    except Exception:
        return
    for report in reports:
        try:
            log.warning("%s", format_report(report))
        except Exception:
            pass


def _run(native: Any, stop: threading.Event) -> None:
    from . import _primitives

    # Under gevent (threading patched) the reporter is a greenlet: it waits
    # cooperatively (a wait in C would block every greenlet of the thread,
    # for good), and is not singled out by its thread ident, which is the
    # application's thread's (its acquires are checked per greenlet,
    # holding nothing)
    cooperative = _primitives._gevent_patched()
    try:
        if not cooperative:
            native._order_set_reporter(threading.get_ident())
    except Exception:
        return
    while not stop.is_set():
        try:
            if cooperative:
                stop.wait(0.5)
            else:
                native._order_wait(1.0)
        except Exception:
            return
        _emit(native)


def start(native: Any) -> None:
    """ddlock.start() with lock_order: the reporter thread."""
    stop = threading.Event()
    thread = threading.Thread(target=_run, args=(native, stop),
                              name="ddlock-lock-order", daemon=True)
    _state.update(thread=thread, stop=stop, native=native, pid=os.getpid())
    thread.start()


def stop() -> None:
    """ddlock.stop(): the reporter ends; what it had not logged yet is
    logged now, by the caller."""
    thread, stop_event, native = _state["thread"], _state["stop"], _state["native"]
    _state["thread"] = None
    if thread is None:
        return
    stop_event.set()
    try:
        native._order_wake()
    except Exception:
        pass
    if thread is not threading.current_thread() and _state.get("pid") == os.getpid():
        thread.join(5.0)
    _emit(native)


def reports(kind: Optional[str] = None) -> List[Dict[str, Any]]:
    native = _state["native"]
    if native is None:
        return []
    out: List[Dict[str, Any]] = native._order_reports()
    return [r for r in out if kind is None or r.get("kind") == kind]
