"""The profiler never fills the disk (issue 17 item 9): at most
DD_PROFILING_OUTPUT_MAX_FILES files per process (the oldest it wrote are
removed, never another file), and no file while the filesystem has less than
DD_PROFILING_OUTPUT_MIN_FREE_MB available (on a real small tmpfs), so the
application's own writes keep their room."""

import glob
import json
import os
import shutil
import subprocess
import textwrap

import pytest

from conftest import run_script

MB = 1 << 20


def write_script(tmp_path, code):
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(code))
    return str(path)


def last_json(stdout, tag):
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + " ")]
    return [json.loads(ln[len(tag) + 1:]) for ln in lines]


KEEP_FILES = """
    import json, os, threading, ddlock
    prefix = %(prefix)r
    pid = os.getpid()
    # not ours to remove: another pid's file, a file named like ours that this
    # process did not write, an unrelated file
    for name in ("%%s.1.1.pprof" %% prefix, "%%s.%%d.500.pprof" %% (prefix, pid), prefix + ".txt"):
        open(name, "w").close()

    def session(flushes):
        ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False, **%(kw)s)
        lock = threading.Lock()  # profiled: made while ddlock runs
        for _ in range(flushes):
            with lock:
                pass
            assert len(ddlock.flush()) == 1
        ddlock.stop(flush=False)
        print("@@stats " + json.dumps(ddlock.stats()), flush=True)

    session(5)
    session(2)  # the same process again: its earlier files count
    print("@@pid %%d" %% pid)
"""


def test_files_kept_per_process_are_bounded(tmp_path):
    prefix = str(tmp_path / "prof")
    proc = run_script(write_script(tmp_path, KEEP_FILES % {
        "prefix": prefix, "kw": {}}), env={"DD_PROFILING_OUTPUT_MAX_FILES": "3"})
    pid = last_json(proc.stdout, "@@pid")[0]
    first, second = last_json(proc.stdout, "@@stats")
    assert (first["files_written"], first["files_removed"]) == (5, 2), first
    assert (second["files_written"], second["files_removed"]) == (2, 2), second
    ours = sorted(glob.glob("%s.%d.*.pprof" % (prefix, pid)))
    assert ours == sorted("%s.%d.%d.pprof" % (prefix, pid, seq) for seq in (5, 6, 7, 500)), ours
    assert os.path.exists("%s.1.1.pprof" % prefix) and os.path.exists(prefix + ".txt")


def test_max_files_keyword_and_zero_keeps_all(tmp_path):
    prefix = str(tmp_path / "prof")
    proc = run_script(write_script(tmp_path, KEEP_FILES % {
        "prefix": prefix, "kw": {"output_max_files": 0}}), env={"DD_PROFILING_OUTPUT_MAX_FILES": "2"})
    pid = last_json(proc.stdout, "@@pid")[0]
    assert len(glob.glob("%s.%d.*.pprof" % (prefix, pid))) == 8  # 7 + the decoy
    assert all(s["files_removed"] == 0 for s in last_json(proc.stdout, "@@stats"))


def test_malformed_settings_are_value_errors(tmp_path):
    proc = run_script(write_script(tmp_path, """
        import ddlock
        for kw in ({"output_max_files": -1}, {"output_min_free_mb": "lots"}):
            try:
                ddlock.start(upload_enabled=False, **kw)
            except ValueError as exc:
                print("ERR", exc)
    """))
    assert "ERR output_max_files=-1: must be >= 0" in proc.stdout, proc.stdout
    assert "ERR output_min_free_mb='lots': expected an integer" in proc.stdout, proc.stdout


@pytest.fixture
def small_fs(tmp_path):
    """A real 24 MiB tmpfs (needs root: skipped where mounting is refused)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stdout.strip())
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


LOW_DISK = """
    import json, os, threading, ddlock
    mnt = %(mnt)r
    ddlock.start(output_pprof=os.path.join(mnt, "prof"), capture_pct=100, upload_enabled=False)
    lock = threading.Lock()

    def free_mb():
        st = os.statvfs(mnt)
        return st.f_bavail * st.f_frsize / 1048576.0

    def app_write(name, mb):  # the application's own data
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(b"x" * (mb << 20))

    def step(tag):
        with lock:
            pass
        paths = ddlock.flush()
        print("@@step " + json.dumps({"tag": tag, "paths": paths, "free_mb": free_mb(),
                                      "stats": ddlock.stats()}), flush=True)

    step("plenty")              # 24 MiB free
    app_write("data1", 12)      # 12 MiB left
    step("above")
    app_write("data2", 4)       # under 10 MiB: no more profiles
    step("below")
    step("still below")
    app_write("data3", 7)       # the application's write still fits
    os.remove(os.path.join(mnt, "data1"))
    step("recovered")
    ddlock.stop(flush=False)
"""


def test_no_file_below_the_free_space_floor(tmp_path, small_fs):
    proc = run_script(write_script(tmp_path, LOW_DISK % {"mnt": small_fs}),
                      env={"DD_PROFILING_OUTPUT_MIN_FREE_MB": "10"})
    steps = {s["tag"]: s for s in last_json(proc.stdout, "@@step")}
    assert len(steps["plenty"]["paths"]) == 1
    assert len(steps["above"]["paths"]) == 1
    for tag in ("below", "still below"):
        assert steps[tag]["paths"] == [] and steps[tag]["free_mb"] < 10, steps[tag]
        assert steps[tag]["stats"]["file_errors"] == 0
    assert steps["still below"]["stats"]["files_skipped_low_disk"] == 2
    assert "not writing profiles" in steps["below"]["stats"]["last_error"]
    assert len(steps["recovered"]["paths"]) == 1
    assert steps["recovered"]["stats"]["files_written"] == 3
    # logged once for the run of skipped files
    assert proc.stderr.count("file-disk-low") == 1, proc.stderr


FORKED = """
    import json, os, threading, ddlock
    prefix = %(prefix)r
    ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False, output_max_files=2)
    lock = threading.Lock()

    def flushes(n):
        for _ in range(n):
            with lock:
                pass
            assert len(ddlock.flush()) == 1

    flushes(2)
    pid = os.fork()
    if pid == 0:  # the child's files are its own; the parent's are not its to remove
        flushes(3)
        ddlock.stop(flush=False)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    flushes(1)
    ddlock.stop(flush=False)
    print("@@pids " + json.dumps([os.getpid(), pid]))
"""


def test_forked_child_keeps_its_own_files(tmp_path):
    prefix = str(tmp_path / "prof")
    proc = run_script(write_script(tmp_path, FORKED % {"prefix": prefix}))
    parent, child = last_json(proc.stdout, "@@pids")[0]
    for pid in (parent, child):
        assert sorted(glob.glob("%s.%d.*.pprof" % (prefix, pid))) == [
            "%s.%d.%d.pprof" % (prefix, pid, seq) for seq in (2, 3)], os.listdir(str(tmp_path))
