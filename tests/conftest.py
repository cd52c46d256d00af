"""Shared pytest helpers: every profiler test runs its program in a fresh
subprocess, so patching of threading never leaks between tests."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    # DDLOCK_TEST_PYTHONPATH: where the package under test lives (the
    # sanitizer build puts an instrumented copy in build/san); an installed
    # ddlock is tested from a tree without ddlock/ (DDLOCK_TEST_INSTALLED)
    root = os.environ.get("DDLOCK_TEST_PYTHONPATH", REPO)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def locals_readable():
    """Whether the build under test reads the local variables of running
    functions: every build but the portable one on 3.11, where no public C
    API reads them without refreshing the program's locals() dict. There,
    names found through locals -- a lock held in a local, `self.x` -- come
    from creation bindings only (README: limitations)."""
    import ddlock

    return not (ddlock.build_info()["frame_walk"] == "public"
                and sys.version_info[:2] == (3, 11))


def this_thread():
    """The thread labels every event of the calling thread must carry (as
    ddlock.testing's expected events take them)."""
    return {
        "thread_id": threading.get_ident(),
        "thread_native_id": threading.get_native_id(),
        "thread_name": threading.current_thread().name,
    }


def run_python(code, env=None, timeout=120, check=True, args=(), cwd=None):
    """Run ``code`` (dedented) in a fresh interpreter; return CompletedProcess."""
    # `python -c` puts the working directory first on sys.path, ahead of
    # PYTHONPATH: run from the package under test, or REPO's ddlock (not
    # the sanitizer build) would be the one imported
    default_cwd = os.environ.get("DDLOCK_TEST_PYTHONPATH") or REPO
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=python_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=timeout, cwd=cwd or default_cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError("subprocess failed (%d)\n--- stdout\n%s\n--- stderr\n%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return proc


def run_script(path, env=None, timeout=120, check=True, args=()):
    proc = subprocess.run(
        [sys.executable, path, *args], env=python_env(env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout, cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError("script failed (%d)\n--- stdout\n%s\n--- stderr\n%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return proc


def pprof_lock_rows(path):
    """The (lock name, lock module, lock owner) rows of a profile as the real
    `go tool pprof -raw` prints them (module and owner None when absent)."""
    import re
    import shutil

    go = shutil.which("go")
    assert go, "golang-go is installed by `make deps`"
    raw = subprocess.run([go, "tool", "pprof", "-raw", path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    # -raw prints each sample as a line of values, then its labels as
    # `key:[value]` on the lines below
    samples = raw.stdout.split("Samples:")[1].split("Locations")[0]
    rows = set()
    for block in re.split(r"\n(?=\s+\d+(?:\s+\d+)+: )", samples):
        labels = dict(re.findall(r"(lock (?:name|module|owner)):\[([^\]]*)\]", block))
        if "lock name" in labels:
            rows.add((labels["lock name"], labels.get("lock module"), labels.get("lock owner")))
    return rows


@pytest.fixture
def prefix(tmp_path):
    """A fresh output prefix for pprof files."""
    return str(tmp_path / "prof")


# The `ddlock_profile` fixture; registered by the package's pytest11 entry
# point when ddlock is installed, loaded here when run from the source tree.
def _plugin_installed():
    try:
        from importlib.metadata import entry_points

        eps = entry_points()
        group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
        return any(ep.value == "ddlock.pytest_plugin" for ep in group)
    except Exception:  # pragma: no cover
        return False


if not _plugin_installed():
    pytest_plugins = ["ddlock.pytest_plugin"]
