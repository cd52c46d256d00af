"""The native pipeline end to end: profile -> pprof -> gzip -> files, read by
our reader and by independent real tools (go tool pprof, protoc --decode)."""

import glob
import gzip
import os
import shutil
import subprocess
import textwrap

import pytest

from conftest import REPO, run_python, run_script
from ddlock import testing
from ddlock._pprof import parse_file

SAMPLE_TYPES = [("lock-acquire", "count"), ("lock-acquire-wait", "nanoseconds"),
                ("lock-release", "count"), ("lock-release-hold", "nanoseconds"),
                ("lock-holder-wait", "nanoseconds"), ("condition-wait", "count"),
                ("condition-wait-time", "nanoseconds")]


def write_script(tmp_path, name, code):
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def marker_line(path, marker):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if marker in line:
                return i
    raise AssertionError("marker %r not in %s" % (marker, path))


def samples_named(profile, label_suffix):
    return [s for s in profile.samples
            if str(s.labels.get("lock name", "")).endswith(label_suffix)]


COUNTING = """
    import threading, ddlock
    ddlock.start(output_pprof=%(prefix)r, capture_pct=100, upload_enabled=False)

    def worker(n):
        for _ in range(n):
            counted_lock.acquire()  # !ACQ!
            counted_lock.release()  # !REL!

    counted_lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(250,)) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    paths = ddlock.flush()
    print("PATHS", paths)
    ddlock.stop()
"""


def test_acquire_counts_are_exact_and_stacks_point_at_the_code(tmp_path, prefix):
    script = write_script(tmp_path, "counting.py", COUNTING % {"prefix": prefix})
    out = run_script(script).stdout
    files = testing.list_profile_files(prefix)
    assert len(files) == 1, files
    assert "PATHS ['%s']" % files[0] in out
    profile = parse_file(files[0])
    assert profile.sample_types == SAMPLE_TYPES
    assert profile.string_table[0] == ""
    ours = samples_named(profile, ":counted_lock")
    assert ours, testing.get_lock_names(profile)
    assert profile.total("lock-acquire", ours) == 1000
    assert profile.total("lock-release", ours) == 1000
    acq_line, rel_line = marker_line(script, "!ACQ!"), marker_line(script, "!REL!")
    create_line = marker_line(script, "counted_lock = threading.Lock()")
    for s in ours:
        assert s.labels["lock name"] == "counting.py:%d:counted_lock" % create_line
        assert isinstance(s.labels["thread id"], int)
        assert isinstance(s.labels["thread native id"], int)
        assert s.labels["thread name"].startswith("Thread-")
        leaf = s.leaf
        assert leaf.function_name.split(".")[-1] == "worker"
        assert leaf.filename == script
        assert len(s.values) == len(SAMPLE_TYPES)
        if profile.sample_value(s, "lock-acquire"):
            assert leaf.line == acq_line
        if profile.sample_value(s, "lock-release"):
            assert leaf.line == rel_line
        # the caller of worker is threading's run machinery
        assert any(f.filename.endswith("threading.py") for f in s.frames[1:])
    assert profile.time_nanos > 0 and profile.duration_nanos > 0
    # ids unique, from 1
    assert sorted(profile.locations) == list(range(1, len(profile.locations) + 1))
    assert sorted(profile.functions) == list(range(1, len(profile.functions) + 1))


def test_real_pprof_tools_read_our_files(tmp_path, prefix):
    script = write_script(tmp_path, "counting.py", COUNTING % {"prefix": prefix})
    run_script(script)
    path = testing.list_profile_files(prefix)[0]
    with open(path, "rb") as f:
        data = f.read()
    assert data[:2] == b"\x1f\x8b", "gzip magic"
    go = shutil.which("go")
    assert go, "golang-go is installed by `make deps`"
    raw = subprocess.run([go, "tool", "pprof", "-raw", path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    assert "lock-acquire/count lock-acquire-wait/nanoseconds lock-release/count " \
           "lock-release-hold/nanoseconds" in raw.stdout
    assert "counted_lock" in raw.stdout and "worker" in raw.stdout
    top = subprocess.run([go, "tool", "pprof", "-top", "-sample_index=lock-acquire", path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=120)
    assert top.returncode == 0, top.stderr
    assert "worker" in top.stdout
    protoc = shutil.which("protoc")
    assert protoc, "protobuf-compiler is installed by `make deps`"
    dec = subprocess.run([protoc, "--decode=perftools.profiles.Profile",
                          "-I", os.path.join(REPO, "ext", "proto"), "profile.proto"],
                         input=gzip.decompress(data), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=60)
    assert dec.returncode == 0, dec.stderr
    text = dec.stdout.decode()
    assert 'string_table: ""' in text
    assert 'string_table: "lock-acquire-wait"' in text
    assert "time_nanos:" in text and "duration_nanos:" in text


def test_hold_time_around_sleep(prefix):
    run_python("""
        import threading, time, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        sleepy_lock = threading.Lock()
        with sleepy_lock:
            time.sleep(0.1)
        sleepy_lock.acquire()
        time.sleep(0.05)
        sleepy_lock.release()
        ddlock.stop()
    """ % prefix)
    profile = testing.parse_newest_profile(prefix)
    ours = samples_named(profile, ":sleepy_lock")
    hold = profile.total("lock-release-hold", ours)
    assert 0.15e9 <= hold < 0.25e9, hold
    assert profile.total("lock-release", ours) == 2
    assert profile.total("lock-acquire-wait", ours) < 0.01e9


def test_wait_time_behind_another_thread(prefix):
    run_python("""
        import threading, time, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        contended_lock = threading.Lock()
        held = threading.Event()
        def holder():
            with contended_lock:
                held.set()
                time.sleep(0.1)
        t = threading.Thread(target=holder, name="holder")
        t.start()
        held.wait()
        def waiter():
            with contended_lock:
                pass
        w = threading.Thread(target=waiter, name="waiter")
        w.start(); w.join(); t.join()
        ddlock.stop()
    """ % prefix)
    profile = testing.parse_newest_profile(prefix)
    ours = samples_named(profile, ":contended_lock")
    waiting = [s for s in ours if s.labels.get("thread name") == "waiter"]
    wait = profile.total("lock-acquire-wait", waiting)
    assert 0.07e9 <= wait < 0.2e9, wait
    holding = [s for s in ours if s.labels.get("thread name") == "holder"]
    assert 0.09e9 <= profile.total("lock-release-hold", holding) < 0.2e9


def test_failed_acquires_record_nothing(prefix):
    run_python("""
        import threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        busy_lock = threading.Lock()
        busy_lock.acquire()
        def other():
            assert busy_lock.acquire(False) is False
            assert busy_lock.acquire(timeout=0.01) is False
        t = threading.Thread(target=other); t.start(); t.join()
        busy_lock.release()
        ddlock.stop()
    """ % prefix)
    profile = testing.parse_newest_profile(prefix)
    ours = samples_named(profile, ":busy_lock")
    assert profile.total("lock-acquire", ours) == 1
    assert profile.total("lock-release", ours) == 1


def test_max_frames_adds_an_omitted_frame(prefix):
    run_python("""
        import threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False, max_frames=5)
        deep_lock = threading.Lock()
        def recurse(n):
            if n == 0:
                with deep_lock:
                    pass
            else:
                recurse(n - 1)
        recurse(20)
        ddlock.stop()
    """ % prefix)
    profile = testing.parse_newest_profile(prefix)
    s = samples_named(profile, ":deep_lock")[0]
    frames = s.frames
    assert len(frames) == 6
    assert all(f.function_name.endswith("recurse") for f in frames[:5])
    # 16 more recurse frames + <module>
    assert frames[5].function_name == "<17 frames omitted>"


def test_files_are_numbered_per_pid_and_flush_stop_exit_export(prefix):
    out = run_python("""
        import os, threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        a_lock = threading.Lock()
        with a_lock: pass
        p1 = ddlock.flush()
        assert ddlock.flush() == [], "nothing new: nothing written"
        with a_lock: pass
        p2 = ddlock.flush()
        with a_lock: pass
        print(os.getpid(), p1, p2)
        # no stop(): the atexit hook exports the rest
    """ % prefix).stdout.split()
    pid = int(out[0])
    files = sorted(testing.list_profile_files(prefix))
    assert files == ["%s.%d.%d.pprof" % (prefix, pid, i) for i in (1, 2, 3)]
    for path in files:
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert not glob.glob(prefix + "*tmp*")


def test_fork_child_writes_its_own_files(prefix):
    out = run_python("""
        import os, threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        parent_lock = threading.Lock()
        with parent_lock: pass
        pid = os.fork()
        if pid == 0:
            child_lock = threading.Lock()
            with child_lock: pass
            ddlock.stop()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        ddlock.stop()
        print(os.getpid(), pid)
    """ % prefix).stdout.split()
    parent, child = int(out[0]), int(out[1])
    parent_files = testing.list_profile_files(prefix, pid=parent)
    child_files = testing.list_profile_files(prefix, pid=child)
    assert parent_files == ["%s.%d.1.pprof" % (prefix, parent)]
    assert child_files == ["%s.%d.1.pprof" % (prefix, child)]
    p = testing.parse_newest_profile(prefix, pid=parent)
    c = testing.parse_newest_profile(prefix, pid=child)
    assert any(n.endswith(":parent_lock") for n in testing.get_lock_names(p))
    child_names = testing.get_lock_names(c)
    assert any(n.endswith(":child_lock") for n in child_names)
    assert not any(n.endswith(":parent_lock") for n in child_names), "parent's samples dropped"


def test_periodic_export_by_interval(prefix):
    run_python("""
        import threading, time, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False, upload_interval=0.2)
        tick_lock = threading.Lock()
        for _ in range(8):
            with tick_lock: pass
            time.sleep(0.1)
        ddlock.stop(flush=False)
    """ % prefix)
    assert len(testing.list_profile_files(prefix)) >= 2


def test_auto_starts_from_environment(tmp_path, prefix):
    script = write_script(tmp_path, "app.py", """
        import ddlock.auto
        import threading
        env_lock = threading.RLock()
        with env_lock:
            pass
    """)
    run_script(script, env={"DD_PROFILING_OUTPUT_PPROF": prefix, "DD_PROFILING_CAPTURE_PCT": "100",
                            "DD_PROFILING_UPLOAD_ENABLED": "false"})
    profile = testing.parse_newest_profile(prefix)
    assert "app.py:4:env_lock" in testing.get_lock_names(profile)


@pytest.mark.parametrize("var,value", [
    ("DD_PROFILING_CAPTURE_PCT", "abc"), ("DD_PROFILING_CAPTURE_PCT", "150"),
    ("DD_PROFILING_MAX_FRAMES", "-3"), ("DD_PROFILING_UPLOAD_INTERVAL", "nan"),
    ("DD_PROFILING_LOCK_NAME_INSPECT_DIR", "maybe"), ("DD_PROFILING_MAX_SAMPLES", "0"),
    ("DD_PROFILING_API_TIMEOUT_MS", "1e99"), ("DD_PROFILING_UPLOAD_ENABLED", ""),
])
def test_bad_configuration(var, value, prefix):
    # start() raises ValueError naming the variable and the value
    env = {"DD_PROFILING_UPLOAD_ENABLED": "false", "DD_PROFILING_OUTPUT_PPROF": prefix}
    env[var] = value
    proc = run_python("""
        import ddlock
        try:
            ddlock.start()
        except ValueError as e:
            print("VALUEERROR", e)
    """, env=env)
    assert "VALUEERROR %s=%r" % (var, value) in proc.stdout
    # ddlock.auto warns once and uses the default; the application runs on
    proc = run_python("""
        import ddlock.auto, ddlock, threading
        assert ddlock.is_running()
        x_lock = threading.Lock()
        for _ in range(5000):  # sampled even at the default 1%
            with x_lock: pass
        print("APP OK")
    """, env=env)
    assert "APP OK" in proc.stdout
    assert proc.stderr.count("ddlock: warning: %s=%r" % (var, value)) == 1, proc.stderr
    assert testing.list_profile_files(prefix)


def test_start_keyword_overrides_environment(prefix):
    proc = run_python("""
        import ddlock, threading
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        kw_lock = threading.Lock()
        with kw_lock: pass
        ddlock.stop()
        try:
            ddlock.start(capture_pct=101)
        except ValueError as e:
            print("ERR", e)
        try:
            ddlock.start(no_such_option=1)
        except TypeError as e:
            print("TYPEERR", e)
    """ % prefix, env={"DD_PROFILING_CAPTURE_PCT": "0"})
    assert "ERR capture_pct=101" in proc.stdout
    assert "TYPEERR" in proc.stdout and "no_such_option" in proc.stdout
    profile = testing.parse_newest_profile(prefix)
    assert profile.total("lock-acquire", samples_named(profile, ":kw_lock")) == 1


def test_restart_in_one_process_continues_the_sequence(prefix):
    pid = run_python("""
        import os, threading, ddlock
        for _ in range(3):
            ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
            again_lock = threading.Lock()
            with again_lock: pass
            ddlock.stop()
        print(os.getpid())
    """ % prefix).stdout.strip()
    files = sorted(testing.list_profile_files(prefix))
    assert files == ["%s.%s.%d.pprof" % (prefix, pid, i) for i in (1, 2, 3)]


def test_stats_outlive_stop(prefix):
    out = run_python("""
        import json, threading, ddlock
        ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
        kept_lock = threading.Lock()
        for _ in range(10):
            with kept_lock: pass
        ddlock.stop()
        print(json.dumps(ddlock.stats()))
    """ % prefix).stdout
    import json
    stats = json.loads(out)
    assert stats["running"] == 0
    assert stats["files_written"] == 1 and stats["exports"] == 1
    assert stats["samples_added"] >= 20
