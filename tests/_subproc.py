"""Run a Python snippet in a fresh interpreter and get back its JSON result.

Every test that starts the profiler runs its program through ``run()``: a new
``sys.executable -c`` process with PYTHONPATH set to where the package under
test lives (``PACKAGE_ROOT``: the repository root, the sanitizer build's
$DDLOCK_TEST_PYTHONPATH, or no ddlock at all in the tree of tests that
scripts/test_installed.sh runs against an installed ddlock), so
that patching ``threading.Lock``/``threading.RLock`` never leaks between
tests. The snippet reports its result with ``emit(obj)`` (printed as one JSON
line after a marker); ``run()`` parses it and returns the object.

The snippet gets a small prelude (``PRELUDE``) with helpers to compare a
native lock with a profiled one in the same process:

    start(**kw)        ddlock.start(capture_pct=100, upload_enabled=False, **kw)
    native(kind)       an unprofiled lock (made by a module ddlock never profiles)
    profiled(kind)     threading.Lock()/RLock() while running, checked to be
                       profiled by ddlock (and of the native type)
    outcome(fn, ...)   ["return", value] or ["raise", "TypeName", "message"]
    both(kind, f)      {"native": f(make_native), "profiled": f(make_profiled)}
    emit(obj)          report the result
"""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_ROOT = os.environ.get("DDLOCK_TEST_PYTHONPATH") or REPO
MARKER = "@@DDLOCK-RESULT@@"

PRELUDE = r'''
import json as _json
import os
import sys
import threading
import time
import warnings

import ddlock
from ddlock import _ddlock

PY = sys.version_info[:2]
NATIVE_TYPE = {"Lock": type(threading.Lock()), "RLock": type(threading.RLock())}
# a lock made by a module ddlock never profiles (its own) is a plain native one
_unprofiled_ns = {"__name__": "ddlock._unprofiled", "threading": threading}
exec("def _make_unprofiled(kind):\n    return getattr(threading, kind)()\n",
     _unprofiled_ns)
_make_unprofiled = _unprofiled_ns["_make_unprofiled"]


def start(**kw):
    kw.setdefault("capture_pct", 100)
    kw.setdefault("upload_enabled", False)
    ddlock.start(**kw)
    assert ddlock.is_running()


def native(kind):
    lk = _make_unprofiled(kind)
    if _ddlock.profiled(lk) is not None or type(lk) is not NATIVE_TYPE[kind]:
        raise AssertionError("native %s is profiled: %r" % (kind, lk))
    return lk


def profiled(kind):
    lk = getattr(threading, kind)()
    if type(lk) is not NATIVE_TYPE[kind] or _ddlock.profiled(lk) != kind:
        raise AssertionError("threading.%s() made %r, not profiled (running=%r)"
                             % (kind, type(lk), ddlock.is_running()))
    return lk


def _plain(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return "<%s>" % type(v).__name__


def outcome(fn, *args, **kw):
    """What calling fn does: ["return", value] or ["raise", type, message]."""
    try:
        v = fn(*args, **kw)
    except BaseException as e:  # noqa: B902 - we compare every outcome
        return ["raise", type(e).__name__, str(e)]
    return ["return", _plain(v)]


def both(kind, scenario):
    """Run scenario(make_lock) on a native and on a profiled lock."""
    return {"native": scenario(lambda: native(kind)),
            "profiled": scenario(lambda: profiled(kind))}


def run_thread(fn, timeout=30.0):
    """Run fn in another thread; return its outcome (bounded wait)."""
    box = []
    t = threading.Thread(target=lambda: box.append(outcome(fn)), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError("helper thread still running after %ss" % timeout)
    return box[0]


def elapsed(fn, *args, **kw):
    """(outcome, seconds) of calling fn."""
    t0 = time.monotonic()
    r = outcome(fn, *args, **kw)
    return r, time.monotonic() - t0


def emit(obj):
    sys.stdout.write("\n" + MARKER + _json.dumps(obj) + "\n")
    sys.stdout.flush()


MARKER = "@@DDLOCK-RESULT@@"
'''


def python_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DD_") and not k.startswith("DDLOCK_")}
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"]
                                if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["DD_PROFILING_UPLOAD_ENABLED"] = "false"
    env.update(extra or {})
    return env


class SubprocessFailed(AssertionError):
    pass


def run(code, timeout=90, env=None, prelude=True, expect_rc=0, params=None,
        helpers=""):
    """Run ``code`` (dedented, after the prelude) in a fresh interpreter and
    return the object it passed to ``emit()`` (the last one, if several).
    ``params`` become global variables of the snippet (values must have a
    repr that evaluates back to them); ``helpers`` is more source (dedented
    on its own) put before the snippet."""
    src = textwrap.dedent(helpers) + "\n" + textwrap.dedent(code)
    if params:
        src = "".join("%s = %r\n" % kv for kv in sorted(params.items())) + src
    if prelude:
        src = PRELUDE + "\n" + src
    try:
        proc = subprocess.run(
            [sys.executable, "-c", src], env=python_env(env), cwd=PACKAGE_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SubprocessFailed("subprocess did not finish in %ss (deadlock?)\n"
                               "--- stdout\n%s\n--- stderr\n%s"
                               % (timeout, e.stdout, e.stderr)) from None
    results = [line[len(MARKER):] for line in proc.stdout.splitlines()
               if line.startswith(MARKER)]
    if expect_rc is not None and proc.returncode != expect_rc:
        raise SubprocessFailed("subprocess exited with %d (expected %d)\n"
                               "--- stdout\n%s\n--- stderr\n%s"
                               % (proc.returncode, expect_rc, proc.stdout, proc.stderr))
    if not results:
        raise SubprocessFailed("subprocess emitted no result\n--- stdout\n%s\n"
                               "--- stderr\n%s" % (proc.stdout, proc.stderr))
    return json.loads(results[-1])
