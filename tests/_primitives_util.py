"""Helpers of the primitives tests (test_primitives.py, test_asyncio_locks.py,
test_gevent.py): every profiler run happens in a fresh interpreter.

``run_snippet(code)`` runs ``code`` after ``PRELUDE`` and returns what it
passed to ``emit()``. ``run_scenario(path, name, prefix)`` runs the function
``name`` of the test file ``path`` as a script (so the ``# !CREATE!`` /
``# !ACQUIRE!`` / ``# !RELEASE!`` markers of that file give the expected
lines) and returns the merged profile it wrote.
"""

import json
import os
import sys

from conftest import run_python, run_script
from ddlock import testing

MARKER = "@@PRIMITIVES-RESULT@@"

PRELUDE = r'''
import asyncio
import copy
import json
import pickle
import re
import sys
import threading
import time

# the classes (ddlock profiles them in place: they are never replaced)
ORIG = {name: getattr(threading, name) for name in ("Lock", "RLock", "Semaphore",
                                                    "BoundedSemaphore", "Condition")}
AORIG = {name: getattr(asyncio, name) for name in ("Lock", "Semaphore",
                                                   "BoundedSemaphore", "Condition")}
import ddlock
from ddlock import _ddlock, _primitives

# objects made by a module ddlock never profiles (its own) are unprofiled
_unprofiled_ns = {"__name__": "ddlock._unprofiled"}
exec("def unprofiled(cls, *a, **k):\n    return cls(*a, **k)\n", _unprofiled_ns)
unprofiled = _unprofiled_ns["unprofiled"]

PY = sys.version_info[:2]


def start(**kw):
    kw.setdefault("capture_pct", 100)
    kw.setdefault("upload_enabled", False)
    ddlock.start(**kw)


def tracked(obj):
    """Is obj profiled: itself, or (a Condition) through its lock?"""
    if _ddlock.profiled(obj) is not None:
        return True
    lock = getattr(obj, "__dict__", {}).get("_lock")
    return lock is not None and _ddlock.profiled(lock) in ("Condition", "asyncio.Condition")


def hooked(cls, name):
    """Is cls.name one of ddlock's hooks right now?"""
    return isinstance(vars(cls).get(name), _ddlock.Hook)


def _plain(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return "<%s>" % type(v).__name__


def outcome(fn, *args, **kw):
    """["return", value] or ["raise", type name, message]."""
    try:
        v = fn(*args, **kw)
    except BaseException as e:  # noqa: B902 - every outcome is compared
        return ["raise", type(e).__name__, str(e)]
    return ["return", _plain(v)]


async def aoutcome(awaitable):
    try:
        v = await awaitable
    except BaseException as e:  # noqa: B902
        return ["raise", type(e).__name__, str(e)]
    return ["return", _plain(v)]


def elapsed(fn, *args, **kw):
    t0 = time.monotonic()
    r = outcome(fn, *args, **kw)
    return r, time.monotonic() - t0


def norepr(obj):
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", repr(obj))


class BadBool:
    def __bool__(self):
        raise ZeroDivisionError("bad bool")


def emit(obj):
    sys.stdout.write("\n" + MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


MARKER = "@@PRIMITIVES-RESULT@@"
'''


def run_snippet(code, env=None, timeout=120, params=None):
    """Run PRELUDE + code in a fresh interpreter; return its last emit()."""
    src = "".join("%s = %r\n" % kv for kv in sorted((params or {}).items()))
    proc = run_python(PRELUDE + "\n" + src + code, env=env, timeout=timeout)
    found = [line[len(MARKER):] for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if not found:
        raise AssertionError("no result\n--- stdout\n%s\n--- stderr\n%s" % (proc.stdout, proc.stderr))
    return json.loads(found[-1])


def run_scenario(path, name, prefix, env=None, timeout=120):
    """Run the scenario function ``name`` of the test file ``path`` in a fresh
    interpreter (``python path name prefix``) and return the merged profile."""
    proc = run_script(path, env=env, timeout=timeout, args=(name, prefix))
    profile = testing.parse_merged_profile(prefix)
    profile.stdout = proc.stdout
    return profile


def scenario_main(namespace):
    """``if __name__ == "__main__": scenario_main(globals())`` in a test file."""
    name, prefix = sys.argv[1], sys.argv[2]
    namespace[name](prefix)


def lock_types_of(samples):
    return sorted({s.labels.get("lock type") for s in samples})


def filename_of(path):
    return os.path.basename(path)
