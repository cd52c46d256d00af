"""Differential tests: the same program natively and under ddlock.

Each case is a small program that prints what it observes as one JSON value
(its last line of output). It runs three times in fresh interpreters:
natively, and under ``python -m ddlock.run`` (the profiler started from the
environment exactly as users start it) at 100% capture and at the default
rate. The three outputs must be identical: whatever the program can see --
values, exceptions and their messages, types, introspection, the moment
objects are freed -- is the same with and without ddlock.

A case can name the Python versions it applies to; everything else runs on
every version the suite runs on (3.9-3.13).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import python_env

RATES = ("100", None)  # None: ddlock's default rate


def _run(src, tmp_path, pct, env=None):
    path = tmp_path / "case.py"
    path.write_text(textwrap.dedent(src))
    extra = {"DD_PROFILING_UPLOAD_ENABLED": "false"}
    extra.update(env or {})
    if pct == "native":
        argv = [sys.executable, str(path)]
    else:
        argv = [sys.executable, "-m", "ddlock.run"]
        if pct is not None:
            argv += ["--capture-pct", pct]
        argv += [sys.executable, str(path)]
    proc = subprocess.run(argv, env=python_env(extra), cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (
        "case failed under %s (rc %d)\n--- stdout\n%s\n--- stderr\n%s"
        % (pct, proc.returncode, proc.stdout, proc.stderr))
    return json.loads(lines[-1]), proc.stderr


def differential(src, tmp_path, env=None, stderr=True):
    """Run src natively and under ddlock; assert identical outcomes. With
    stderr, the program's stderr must be identical too."""
    native, native_err = _run(src, tmp_path, "native", env)
    for pct in RATES:
        profiled, profiled_err = _run(src, tmp_path, pct, env)
        label = "ddlock at %s%%" % (pct or "default ")
        assert profiled == native, "%s differs from native:\nnative:   %s\nprofiled: %s" % (
            label, json.dumps(native), json.dumps(profiled))
        if stderr:
            assert profiled_err == native_err, "%s stderr differs:\n%s\n---\n%s" % (
                label, native_err, profiled_err)
    return native


# ---- cases -----------------------------------------------------------------

# A sampled acquire must not change what an earlier locals() returned (3.9-3.12
# refreshed the frame's locals() dict in place while naming the lock).
LOCALS_SNAPSHOT = r'''
import json, threading
_locks = [threading.Lock()]
def api_call(user, retries=3):
    params = locals()
    for _ in range(1000):
        with _locks[0]:
            pass
    return json.dumps(params, sort_keys=True)
def closure():
    cell_lock = threading.RLock()
    snap = locals()
    def inner():
        with cell_lock:
            pass
        return sorted(locals())
    for _ in range(300):
        inner()
    return sorted(snap)
class Body:
    body_lock = threading.Lock()
    before = sorted(locals())
    for _ in range(300):
        with body_lock:
            pass
    after = sorted(k for k in locals() if k not in ("before", "_"))
print(json.dumps([api_call("bob"), closure(), Body.before, Body.after]))
'''

# Naming reads a frame's variables in place: a local lock (and whatever else
# the frame holds) is freed when the program drops it, not when the function
# returns.
FREED_AT_DEL = r'''
import asyncio, gc, json, threading, weakref
def sync(kind):
    freed = []
    lk = getattr(threading, kind)()
    other = type("Resource", (), {})()
    for _ in range(500):
        with lk:
            pass
    weakref.finalize(lk, freed.append, "lock")
    weakref.finalize(other, freed.append, "other")
    del lk, other
    return sorted(freed)
async def coro():
    freed = []
    lk = asyncio.Lock()
    for _ in range(500):
        async with lk:
            pass
    weakref.finalize(lk, freed.append, "lock")
    del lk
    return freed
gc.disable()
print(json.dumps([sync("Lock"), sync("RLock"), asyncio.run(coro())]))
'''


def test_locals_snapshot_unchanged(tmp_path):
    out = differential(LOCALS_SNAPSHOT, tmp_path)
    assert out[0] == '{"retries": 3, "user": "bob"}'


def test_local_lock_freed_at_del(tmp_path):
    out = differential(FREED_AT_DEL, tmp_path)
    assert out == [["lock", "other"], ["lock", "other"], ["lock"]]
