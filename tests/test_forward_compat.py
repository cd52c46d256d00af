"""What a CPython ddlock was not tested on gets (issue 16), simulated here in
a subprocess: private stdlib attributes that are missing or not what 3.9-3.13
have make ddlock take the public route (task labels from
``asyncio.current_task()``), never a wrong answer and never a crash; a
free-threaded build is announced once; ``python -m ddlock check`` prints the
paths this build uses."""

import os
import subprocess
import sys
import zlib

import pytest

from conftest import REPO, python_env, run_python
from ddlock import testing


def _labels(prefix, suffix):
    profile = testing.parse_merged_profile(prefix)
    return [s.labels for s in profile.samples
            if str(s.labels.get("lock name", "")).endswith(suffix)]


def test_task_labels_come_from_current_task_when_the_registry_is_not_asyncios(tmp_path):
    # 3.14 keeps the running task on the thread state: asyncio.tasks still
    # has a _current_tasks dict, but nothing fills it. Reading it would give
    # no task at all; ddlock must notice and ask asyncio.current_task().
    prefix = str(tmp_path / "p")
    proc = run_python(r'''
import sys, asyncio, threading, asyncio.tasks as tasks, _asyncio
if sys.version_info >= (3, 12):
    # current_task() is C there, as on 3.14: it does not read this dict
    tasks._current_tasks = {}      # a registry asyncio no longer fills
else:
    # tasks.current_task reads tasks._current_tasks: keep that one, and
    # make it not provably the C registry
    _asyncio._current_tasks = {}
import ddlock
ddlock.start(capture_pct=100, upload_enabled=False, output_pprof=sys.argv[1])
from ddlock import _primitives

async def main():
    stale_registry_lock = asyncio.Lock()
    async with stale_registry_lock:
        pass
    thread_in_task = threading.Lock()
    with thread_in_task:
        pass

async def outer():
    await asyncio.create_task(main(), name="the-worker")

asyncio.run(outer())
ddlock.stop()
print("OK")
''', args=(prefix,))
    assert "OK" in proc.stdout
    for suffix in (":stale_registry_lock", ":thread_in_task"):
        labels = _labels(prefix, suffix)
        assert labels, suffix
        assert {lb.get("task name") for lb in labels} == {"the-worker"}, (suffix, labels)


def test_task_registry_is_trusted_only_when_it_is_asyncios_own():
    proc = run_python(r'''
import asyncio, asyncio.tasks as tasks, sys
import ddlock
from ddlock import _primitives
c = sys.modules.get("_asyncio")
print("own", _primitives._task_registry(asyncio, tasks, c) is tasks._current_tasks)
tasks._current_tasks = {}
print("replaced", _primitives._task_registry(asyncio, tasks, c))
del tasks._current_tasks
print("missing", _primitives._task_registry(asyncio, tasks, c))
''')
    assert "replaced None" in proc.stdout and "missing None" in proc.stdout
    # the tested minors have asyncio's C registry re-exported by asyncio.tasks
    # (the portable build takes the public route even then)
    own = "own True" in proc.stdout
    assert own == (_build_walk() == "internal"), proc.stdout


def _build_walk():
    proc = run_python("import ddlock; print(ddlock.build_info()['frame_walk'])")
    return proc.stdout.strip()


def test_a_threading_registry_that_is_not_a_dict_leaves_thread_names_out(tmp_path):
    # threading._active replaced by something ddlock does not know: no thread
    # name label (never a guessed one), everything else as usual, no crash
    prefix = str(tmp_path / "p")
    proc = run_python(r'''
import sys, threading
class Registry(dict):
    pass
threading._active = Registry(threading._active)
import ddlock
ddlock.start(capture_pct=100, upload_enabled=False, output_pprof=sys.argv[1])
odd_registry_lock = threading.Lock()
def work():
    for _ in range(3):
        with odd_registry_lock:
            pass
t = threading.Thread(target=work, name="named-worker")
t.start(); t.join()
ddlock.stop()
print("OK")
''', args=(prefix,))
    assert "OK" in proc.stdout
    profile = testing.parse_merged_profile(prefix)
    mine = [s for s in profile.samples
            if str(s.labels.get("lock name", "")).endswith(":odd_registry_lock")]
    assert profile.total("lock-acquire", mine) == 3
    labels = [s.labels for s in mine]
    assert all("thread name" not in lb for lb in labels), labels
    assert all(isinstance(lb.get("thread id"), int) for lb in labels)


def test_a_free_threaded_build_is_announced_once():
    proc = run_python(r'''
import sysconfig
real = sysconfig.get_config_var
sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)
import ddlock
for _ in range(2):
    ddlock.start(capture_pct=1, upload_enabled=False)
    ddlock.stop(flush=False)
info = ddlock.build_info()
print("FT", info["free_threaded_build"], info["gil_enabled"])
''')
    assert "FT True True" in proc.stdout
    assert proc.stderr.count("free-threaded build") == 1, proc.stderr
    assert "enabled the GIL" in proc.stderr


def test_a_regular_build_says_nothing_about_free_threading():
    proc = run_python(r'''
import ddlock
ddlock.start(capture_pct=1, upload_enabled=False)
ddlock.stop(flush=False)
print("FT", ddlock.build_info()["free_threaded_build"])
''')
    assert "FT False" in proc.stdout
    assert "free-threaded" not in proc.stderr


def test_build_info_names_the_paths_and_the_libraries():
    proc = run_python(r'''
import json, zlib, ddlock
print(json.dumps(ddlock.build_info()))
''')
    import json
    info = json.loads(proc.stdout)
    assert info["frame_walk"] in ("internal", "public")
    assert info["python_built_for"].startswith("%d.%d." % sys.version_info[:2])
    libs = info["libraries"]
    assert set(libs) == {"protobuf-c", "libcurl", "zlib"}
    assert all(v and v[0].isdigit() for v in libs.values()), libs
    # the same system zlib Python's own zlib module runs with
    if os.environ.get("DDLOCK_TEST_INSTALLED") is None:
        assert libs["zlib"].split(".")[:2] == zlib.ZLIB_RUNTIME_VERSION.split(".")[:2]


def test_python_m_ddlock_check_without_files_prints_build_info():
    proc = subprocess.run([sys.executable, "-m", "ddlock", "check"], env=python_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60,
                          cwd=os.environ.get("DDLOCK_TEST_PYTHONPATH") or REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(l in ("frame_walk: internal", "frame_walk: public") for l in lines), proc.stdout
    assert "libraries:" in lines and any(l.startswith("  libcurl: ") for l in lines)
    bad = subprocess.run([sys.executable, "-m", "ddlock", "check", "--expect", "x"],
                         env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60,
                         cwd=os.environ.get("DDLOCK_TEST_PYTHONPATH") or REPO)
    assert bad.returncode == 2 and "needs profile FILES" in bad.stderr


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_profiled_locks_offer_exactly_the_native_methods(kind):
    # what a newer CPython adds to the native types (RLock.locked() in 3.14)
    # is there by construction: the objects are the native ones
    proc = run_python(r'''
import threading, sys
kind = sys.argv[1]
def methods():
    lk = getattr(threading, kind)()
    return sorted(n for n in dir(lk) if not n.startswith("__") or n in ("__enter__", "__exit__"))
before = methods()
import ddlock
ddlock.start(capture_pct=100, upload_enabled=False)
during = methods()
ddlock.stop(flush=False)
print(before == during, before)
''', args=(kind,))
    assert proc.stdout.startswith("True"), proc.stdout
