"""Tests for ddlock.testing (file discovery, event matching, line markers)
and the ddlock.pytest_plugin fixture, with fake profiles and a fake ddlock."""

import gzip
import os
import subprocess
import sys
import textwrap
import time

import pytest

import ddlock
from ddlock import testing as pprof_utils
from ddlock._pprof import parse_bytes
from ddlock.pytest_plugin import ddlock_profile  # noqa: F401  (the fixture, for this module)
from ddlock.testing import ANY, LineMarkers, LineNo, LockAcquireEvent, LockReleaseEvent, MarkerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY311 = sys.version_info >= (3, 11)

LOCK_TYPES = [
    ("lock-acquire", "count"),
    ("lock-acquire-wait", "nanoseconds"),
    ("lock-release", "count"),
    ("lock-release-hold", "nanoseconds"),
]


# ---------------------------------------------------------------------------
# A minimal pprof encoder for building test profiles (the reader itself is
# checked against protoc in test_pprof_reader.py).
# ---------------------------------------------------------------------------


def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number, value):
    return _varint(number << 3) + _varint(value) if value else b""


def _packed(number, values):
    return _field(number, b"".join(_varint(v) for v in values)) if values else b""


def encode_profile(samples, sample_types=LOCK_TYPES, time_nanos=0, duration_nanos=0, comments=()):
    """samples: dicts with frames=[(function, file, line)], values=[...], labels={key: str|int}."""
    strings = {"": 0}

    def s(text):
        return strings.setdefault(text, len(strings))

    functions, locations, out = {}, {}, []
    for vt in sample_types:
        out.append(_field(1, _int(1, s(vt[0])) + _int(2, s(vt[1]))))
    for sm in samples:
        loc_ids = []
        for name, filename, line in sm.get("frames", []):
            fid = functions.setdefault((name, filename), len(functions) + 1)
            lid = locations.setdefault((fid, line), len(locations) + 1)
            loc_ids.append(lid)
        labels = b""
        for key, value in sm.get("labels", {}).items():
            if isinstance(value, int):
                labels += _field(3, _int(1, s(key)) + _int(3, value))
            else:
                labels += _field(3, _int(1, s(key)) + _int(2, s(value)))
        out.append(_field(2, _packed(1, loc_ids) + _packed(2, sm["values"]) + labels))
    for (name, filename), fid in functions.items():
        out.append(_field(5, _int(1, fid) + _int(2, s(name)) + _int(4, s(filename))))
    for (fid, line), lid in locations.items():
        out.append(_field(4, _int(1, lid) + _field(4, _int(1, fid) + _int(2, line))))
    tail = _int(9, time_nanos) + _int(10, duration_nanos) + _packed(13, [s(c) for c in comments])
    table = b"".join(_field(6, text.encode()) for text in strings)
    return b"".join(out) + tail + table


def make_profile(*samples, **kw):
    return parse_bytes(gzip.compress(encode_profile(list(samples), **kw)))


def lock_sample(lock, frames, acquire=0, wait=0, release=0, hold=0, **labels):
    lab = {"lock name": lock} if lock is not None else {}
    for k, v in labels.items():
        lab[k.replace("_", " ")] = v
    return {"frames": frames, "values": [acquire, wait, release, hold], "labels": lab}


FUNC = "TestX.test_y" if PY311 else "test_y"


@pytest.fixture
def profile():
    return make_profile(
        lock_sample("test_x.py:10:lock", [(FUNC, "/src/test_x.py", 11), ("<module>", "/src/run.py", 3)], acquire=1, wait=20, thread_id=140001, thread_name="MainThread"),
        lock_sample("test_x.py:10:lock", [(FUNC, "/src/test_x.py", 12)], release=1, hold=500, thread_id=140001, thread_name="MainThread"),
        lock_sample("test_x.py:20:_Foo__lock", [("Foo.work", "/src/test_x.py", 25)], acquire=3, wait=0, thread_id=140002, thread_name="worker-1"),
        lock_sample("test_x.py:20:_Foo__lock", [("Foo.work", "/src/test_x.py", 26)], release=3, hold=90, thread_id=140002, thread_name="worker-1"),
        lock_sample("test_x.py:30", [("anon", "/src/test_x.py", 31)], acquire=1, release=1),
        lock_sample("test_x.py:40:cond", [("Condition.__enter__", "/usr/lib/python3/threading.py", 265)], acquire=2),
        time_nanos=1000,
        duration_nanos=50,
    )


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


def test_event_fields_and_expected_label():
    ev = LockAcquireEvent(caller_name="test_y", filename="/abs/path/test_x.py", linenos=LineNo(10, 11, 12), lock_name="lock")
    assert ev.filename == "test_x.py" and ev.caller_filename == "test_x.py"
    assert ev.expected_lock_label == "test_x.py:10:lock"
    assert (ev.create_line, ev.acquire_line, ev.release_line, ev.line) == (10, 11, 12, 11)
    rel = LockReleaseEvent(caller_name="test_y", filename="test_x.py", create_line=10, acquire_line=11, release_line=12, lock_name="lock")
    assert rel.linenos == LineNo(create=10, acquire=11, release=12) and rel.line == 12
    assert rel.value_type == "lock-release"
    assert LockReleaseEvent(filename="f.py", create_line=3).expected_lock_label == "f.py:3"
    # keyword lines override linenos; plain tuples are accepted
    assert LockAcquireEvent(filename="f.py", linenos=(1, 2, 3), acquire_line=9).linenos == LineNo(1, 9, 3)
    assert "lock_name='lock'" in repr(ev) and "LockAcquireEvent(" in repr(ev)
    assert ev == LockAcquireEvent("test_y", "test_x.py", LineNo(10, 11, 12), "lock")
    assert ev != rel
    with pytest.raises(TypeError):
        pprof_utils.LockEvent(filename="x.py")
    with pytest.raises(TypeError, match="linenos must be a LineNo"):
        LockAcquireEvent(filename="x.py", linenos=5)


def test_assert_lock_events_passes(profile):
    linenos = LineNo(create=10, acquire=11, release=12)
    found = pprof_utils.assert_lock_events(
        profile,
        expected_acquire_events=[
            # the bare name matches the qualname reported on 3.11+, and vice versa
            LockAcquireEvent(caller_name="test_y", filename="test_x.py", linenos=linenos, lock_name="lock"),
            LockAcquireEvent(caller_name="TestX.test_y", filename="test_x.py", linenos=linenos, lock_name="lock", thread_id=140001, thread_name="MainThread"),
            LockAcquireEvent(caller_name="work", filename="test_x.py", create_line=20, acquire_line=25, lock_name="_Foo__lock", thread_name="worker-1", count=3),
            LockAcquireEvent(caller_name="anon", filename="test_x.py", create_line=30, acquire_line=31, lock_name=None),
            LockAcquireEvent(caller_name="__enter__", filename="test_x.py", create_line=40, acquire_line=265, lock_name="cond", caller_filename="threading.py"),
            LockAcquireEvent(caller_name="Condition.__enter__", filename="test_x.py", create_line=40, acquire_line=265, lock_name="cond", caller_filename=ANY),
        ],
        expected_release_events=[
            LockReleaseEvent(caller_name="test_y", filename="test_x.py", linenos=linenos, lock_name="lock"),
            LockReleaseEvent(caller_name="Foo.work", filename="test_x.py", create_line=20, release_line=26, lock_name="_Foo__lock", thread_id=140002),
            LockReleaseEvent(caller_name="anon", filename="test_x.py", create_line=30, release_line=31, lock_name=None),
        ],
    )
    assert [len(f) for f in found] == [1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert found[0][0].leaf.line == 11


def test_assert_lock_events_wildcards(profile):
    pprof_utils.assert_lock_events(
        profile,
        expected_acquire_events=[
            LockAcquireEvent(filename="test_x.py", lock_name="_Foo__lock"),  # any line, any caller
            LockAcquireEvent(filename="test_x.py", create_line=10, lock_name=ANY),
            LockAcquireEvent(filename=ANY, create_line=ANY, lock_name="cond", caller_filename=ANY),
        ],
    )
    # a single event instead of a list is accepted; so is a list of profiles
    pprof_utils.assert_lock_events([profile, profile], expected_release_events=LockReleaseEvent(filename="test_x.py", lock_name="lock"))
    with pytest.raises(AssertionError, match="lock name 'test_x.py:10:lock' != expected 'test_x.py:10'"):
        pprof_utils.assert_lock_events(profile, expected_acquire_events=[LockAcquireEvent(filename="test_x.py", create_line=10, lock_name=None)])


def _failure(profile, **kw):
    with pytest.raises(AssertionError) as info:
        pprof_utils.assert_lock_events(profile, **kw)
    return str(info.value)


def test_failure_wrong_lock_name_lists_what_exists(profile):
    msg = _failure(
        profile,
        expected_acquire_events=[LockAcquireEvent(caller_name="test_y", filename="test_x.py", linenos=LineNo(10, 11, 12), lock_name="lck")],
    )
    assert "1 of 1 expected lock event(s) not found" in msg
    assert "lock name 'test_x.py:10:lck'" in msg
    assert "no sample has that lock name" in msg
    assert "lock names in the profile: 'test_x.py:10:lock', 'test_x.py:20:_Foo__lock', 'test_x.py:30', 'test_x.py:40:cond'" in msg
    # the closest candidate comes first, with the reason it does not match
    assert "lock name 'test_x.py:10:lock' != expected 'test_x.py:10:lck'" in msg
    assert "at %s (/src/test_x.py:11)" % FUNC in msg
    assert "lock-acquire=1" in msg and "'thread name': 'MainThread'" in msg


def test_failure_wrong_line(profile):
    msg = _failure(
        profile,
        expected_release_events=[LockReleaseEvent(caller_name="test_y", filename="test_x.py", linenos=LineNo(10, 11, 13), lock_name="lock")],
    )
    assert "LockReleaseEvent(lock name 'test_x.py:10:lock'" in msg
    assert "release line 13" in msg
    assert "2 sample(s) with that lock name, none matching" in msg
    assert "leaf line 12 != expected release line 13" in msg
    # the acquire sample with the same name is shown too, with its own reasons
    assert "lock-release value is 0 (expected > 0)" in msg
    assert "lock-release=1" in msg and "lock-release-hold=500" in msg


def test_failure_wrong_function(profile):
    msg = _failure(
        profile,
        expected_acquire_events=[LockAcquireEvent(caller_name="test_z", filename="test_x.py", linenos=LineNo(10, 11, 12), lock_name="lock")],
    )
    assert "leaf function %r != expected 'test_z'" % FUNC in msg


def test_failure_wrong_file_thread_and_count(profile):
    msg = _failure(
        profile,
        expected_acquire_events=[
            LockAcquireEvent(caller_name="__enter__", filename="test_x.py", create_line=40, acquire_line=265, lock_name="cond"),
            LockAcquireEvent(filename="test_x.py", create_line=10, lock_name="lock", thread_id=999, thread_name="other"),
            LockAcquireEvent(filename="test_x.py", create_line=20, lock_name="_Foo__lock", count=4),
        ],
    )
    assert "3 of 3 expected lock event(s) not found" in msg
    assert "leaf file '/usr/lib/python3/threading.py' != expected 'test_x.py'" in msg
    assert "thread id 140001 != expected 999" in msg
    assert "thread name 'MainThread' != expected 'other'" in msg
    assert "1 sample(s) match, but their lock-acquire values sum to 3, expected 4" in msg


def test_failure_on_empty_profile_and_negative_values():
    empty = make_profile()
    msg = _failure(empty, expected_acquire_events=[LockAcquireEvent(filename="t.py", create_line=1, lock_name="l")])
    assert "(0 samples" in msg and "no sample has that lock name" in msg
    neg = make_profile(lock_sample("t.py:1:l", [("f", "t.py", 2)], acquire=1, wait=-5))
    msg = _failure(neg, expected_acquire_events=[LockAcquireEvent(filename="t.py", create_line=1, lock_name="l")])
    assert "negative value(s): lock-acquire-wait=-5" in msg


def test_unsigned_thread_id_stored_as_int64():
    big = 2**64 - 10
    p = make_profile(lock_sample("t.py:1:l", [("f", "t.py", 2)], acquire=1, thread_id=big))
    assert p.samples[0].labels["thread id"] == -10
    pprof_utils.assert_lock_events(p, expected_acquire_events=[LockAcquireEvent(filename="t.py", create_line=1, lock_name="l", thread_id=big)])


def test_events_in_the_wrong_list_are_rejected(profile):
    with pytest.raises(TypeError, match="expected_acquire_events must hold LockAcquireEvent"):
        pprof_utils.assert_lock_events(profile, expected_acquire_events=[LockReleaseEvent(filename="test_x.py")])
    with pytest.raises(TypeError, match="takes a Profile"):
        pprof_utils.assert_lock_events("/tmp/prefix", expected_acquire_events=[])


def test_sample_selection_helpers(profile):
    acquires = pprof_utils.get_samples_with_value_type(profile, "lock-acquire")
    assert len(acquires) == 4
    assert [pprof_utils.get_sample_value(profile, s, "lock-acquire") for s in acquires] == [1, 3, 1, 2]
    assert len(pprof_utils.get_samples_with_value_type(profile, "lock-release-hold")) == 2
    with pytest.raises(ValueError, match="no sample type 'cpu-time'"):
        pprof_utils.get_samples_with_value_type(profile, "cpu-time")
    assert pprof_utils.get_lock_names(profile) == ["test_x.py:10:lock", "test_x.py:20:_Foo__lock", "test_x.py:30", "test_x.py:40:cond"]
    assert len(pprof_utils.get_samples_with_lock_name(profile, "test_x.py:10:lock")) == 2
    assert len(pprof_utils.get_samples_with_label_key(profile, "thread id")) == 4
    assert len(pprof_utils.get_samples_with_label(profile, "thread name", "worker-1")) == 2
    assert pprof_utils.get_label_values(profile, "thread id") == [140001, 140002]
    ev = LockAcquireEvent(filename="test_x.py", create_line=20, lock_name="_Foo__lock")
    assert pprof_utils.find_matching_samples(profile, ev) == [profile.samples[2]]


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def write_profile(path, mtime, *samples):
    with open(path, "wb") as f:
        f.write(gzip.compress(encode_profile(list(samples))))
    os.utime(path, (mtime, mtime))
    return path


def test_parse_newest_and_all_profiles(tmp_path):
    prefix = str(tmp_path / "odd[dir]" / "prof")  # glob metacharacters in the prefix
    os.makedirs(os.path.dirname(prefix))
    now = time.time()
    a = write_profile(prefix + ".100.1.pprof", now - 30, lock_sample("a.py:1:a", [], acquire=1))
    b = write_profile(prefix + ".100.2.pprof", now - 20, lock_sample("a.py:1:b", [], acquire=1))
    c = write_profile(prefix + ".200.1.pprof", now - 20, lock_sample("a.py:1:c", [], acquire=1))  # same mtime, seq 1 < 2
    d = write_profile(prefix + ".100.10.pprof", now - 10, lock_sample("a.py:1:d", [], acquire=2))
    # files that must be ignored
    for name in ("prof.100.pprof", "prof.100.3.pprof.tmp", "prof.x.3.pprof", "prof2.100.4.pprof", "prof.100.5.6.pprof"):
        write_profile(os.path.join(os.path.dirname(prefix), name), now, lock_sample("a.py:1:zz", [], acquire=1))

    assert pprof_utils.list_profile_files(prefix) == [a, c, b, d]
    assert pprof_utils.list_profile_files(prefix, pid=200) == [c]
    newest = pprof_utils.parse_newest_profile(prefix)
    assert newest.path == d and pprof_utils.get_lock_names(newest) == ["a.py:1:d"]
    assert pprof_utils.parse_newest_profile(prefix, pid=200).path == c
    profiles = pprof_utils.parse_profiles(prefix)
    assert [p.path for p in profiles] == [a, c, b, d]
    merged = pprof_utils.merge_profiles(profiles)
    assert merged.path == [a, c, b, d]
    assert pprof_utils.get_lock_names(merged) == ["a.py:1:a", "a.py:1:c", "a.py:1:b", "a.py:1:d"]
    assert pprof_utils.merge_profiles(profiles[0], profiles[1:]).path == [a, c, b, d]
    assert pprof_utils.parse_merged_profile(prefix).path == [a, c, b, d]
    assert pprof_utils.parse_profile(a).path == a
    with pytest.raises(TypeError, match="parse_merged_profile"):
        pprof_utils.merge_profiles(prefix)

    agg = pprof_utils.aggregate_samples(pprof_utils.merge_profiles(profiles[3], profiles[3]))
    assert [s.values[0] for s in agg.samples] == [4]


def test_parse_newest_profile_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        pprof_utils.parse_newest_profile(str(tmp_path / "nothing"))
    assert "no profile file matches" in str(info.value) and "nothing.<pid>.<seq>.pprof" in str(info.value)
    (tmp_path / "nothing.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        pprof_utils.parse_newest_profile(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pprof_utils.parse_newest_profile(str(tmp_path / "nodir" / "p"))
    assert pprof_utils.parse_profiles(str(tmp_path / "nothing")) == []
    assert pprof_utils.parse_merged_profile(str(tmp_path / "nothing")).samples == []


# ---------------------------------------------------------------------------
# Line markers
# ---------------------------------------------------------------------------


def test_markers_in_this_file():
    create = sys._getframe().f_lineno  # !CREATE! tk_basic
    acquire = sys._getframe().f_lineno  # !ACQUIRE! tk_basic
    release = sys._getframe().f_lineno  # !RELEASE! tk_basic
    assert pprof_utils.get_lock_linenos("tk_basic") == LineNo(create, acquire, release)
    assert pprof_utils.get_lock_linenos("tk_basic", filename=__file__) == LineNo(create, acquire, release)
    m = LineMarkers()
    assert m.filename == __file__
    assert (m.create("tk_basic"), m.acquire("tk_basic"), m.release("tk_basic")) == (create, acquire, release)
    assert pprof_utils.get_line_markers().acquires("tk_basic") == [acquire]


def test_markers_from_a_source_file(tmp_path):
    src = tmp_path / "sample_test.py"
    src.write_text(
        textwrap.dedent(
            '''\
            import threading
            def test_one():
                lock = threading.Lock()  # !CREATE! one
                lock.acquire()  # !ACQUIRE! one
                lock.release()  # !RELEASE! one
                lock.acquire()  # !ACQUIRE! one
                lock.release()  # !RELEASE! one
            def test_with():
                lock = threading.RLock()  # !CREATE! with
                with lock:  # !ACQUIRE! !RELEASE[>=3.10]! with
                    pass  # !RELEASE[<3.10]! with
            s = "# !CREATE! in_string"
            t = """
            # !CREATE! in_docstring
            """
            x = 1  # a comment that mentions !ACQUIRE! two and then !RELEASE! three
            y = 2  #!CREATE!   spaced   trailing words
            z = 3  # !WAIT! one
            '''
        )
    )
    m = LineMarkers(str(src))
    assert m.keys() == ["one", "spaced", "three", "two", "with"]
    assert "in_string" not in m and "in_docstring" not in m
    assert m.creates("one") == [3] and m.create("one") == 3
    assert m.acquires("one") == [4, 6] and m.releases("one") == [5, 7]
    assert m.lines("WAIT", "one") == [18]
    with pytest.raises(MarkerError) as info:
        m.acquire("one")
    assert "2 '# !ACQUIRE! one' markers" in str(info.value) and "lines 4, 6" in str(info.value)
    with pytest.raises(MarkerError, match="!ACQUIRE!' markers in .*lines 4, 6"):
        m.linenos("one")
    release = 10 if sys.version_info >= (3, 10) else 11
    assert m.linenos("with") == LineNo(9, 10, release)
    assert pprof_utils.get_lock_linenos("with", filename=str(src)) == LineNo(9, 10, release)
    assert m.linenos("two") == LineNo(None, 16, None)
    assert m.linenos("spaced") == LineNo(17, None, None)
    with pytest.raises(MarkerError) as info:
        m.linenos("nope")
    assert "no marker for key 'nope'" in str(info.value) and "keys: one, spaced" in str(info.value)
    assert isinstance(info.value, LookupError)
    with pytest.raises(MarkerError, match="no '# !RELEASE! two' marker in .*tags for 'two': ACQUIRE"):
        m.release("two")


def test_markers_cache_follows_file_changes(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("a = 1  # !CREATE! k\n")
    assert pprof_utils.get_lock_linenos("k", str(src)).create == 1
    src.write_text("\n\n# moved\nb = 2  # !CREATE! k\n")
    os.utime(str(src), (time.time() + 5, time.time() + 5))
    assert pprof_utils.get_lock_linenos("k", str(src)).create == 4


def test_markers_in_non_python_file(tmp_path):
    src = tmp_path / "broken.py"
    src.write_text('def f(:\n    x = "unterminated  # !ACQUIRE! k\n  y  # !RELEASE! k\n')
    m = LineMarkers(str(src))
    assert m.linenos("k") == LineNo(None, 2, 3)


# ---------------------------------------------------------------------------
# pytest plugin with a fake ddlock
# ---------------------------------------------------------------------------


class FakeDdlock:
    """Stands in for ddlock.start/stop/flush: writes canned profiles."""

    def __init__(self, samples):
        self.samples = samples
        self.calls = []
        self.options = None
        self.seq = 0

    def _write(self):
        self.seq += 1
        path = "%s.%d.%d.pprof" % (self.options["output_pprof"], os.getpid(), self.seq)
        with open(path, "wb") as f:
            f.write(gzip.compress(encode_profile(self.samples)))
        return [path]

    def start(self, **options):
        self.calls.append("start")
        self.options = options
        self.seq = 0

    def flush(self):
        self.calls.append("flush")
        return self._write()

    def stop(self):
        self.calls.append("stop")
        self._write()


@pytest.fixture
def fake_ddlock(monkeypatch):
    fake = FakeDdlock([lock_sample("test_testing_toolkit.py:1:lock", [("test_fixture", "test_testing_toolkit.py", 2)], acquire=1)])
    for name in ("start", "stop", "flush"):
        monkeypatch.setattr(ddlock, name, getattr(fake, name), raising=False)
    return fake


def test_fixture_run(ddlock_profile, fake_ddlock, tmp_path):
    with pytest.raises(RuntimeError, match="run"):
        ddlock_profile.profile
    with ddlock_profile.run(max_frames=8) as prof:
        assert prof is ddlock_profile
        with pytest.raises(RuntimeError, match="still active"):
            ddlock_profile.profile
        flushed = ddlock_profile.flush()
        assert len(flushed.samples) == 1
    assert fake_ddlock.calls == ["start", "flush", "stop"]
    opts = fake_ddlock.options
    assert opts["capture_pct"] == 100 and opts["upload_enabled"] is False and opts["max_frames"] == 8
    assert opts["output_pprof"].startswith(str(tmp_path))
    assert len(ddlock_profile.paths) == 2 and all(p.startswith(opts["output_pprof"] + ".") for p in ddlock_profile.paths)
    assert len(ddlock_profile.profiles) == 2
    assert len(ddlock_profile.profile.samples) == 2  # merged across both files
    assert ddlock_profile.lock_names() == ["test_testing_toolkit.py:1:lock"]
    assert len(ddlock_profile.samples_with_value_type("lock-acquire")) == 2
    ddlock_profile.assert_lock_events(
        expected_acquire_events=[LockAcquireEvent(caller_name="test_fixture", filename=__file__, create_line=1, acquire_line=2, lock_name="lock", count=2)]
    )
    with pytest.raises(AssertionError, match="leaf line 2 != expected acquire line 3"):
        ddlock_profile.assert_lock_events(
            expected_acquire_events=[LockAcquireEvent(filename=__file__, create_line=1, acquire_line=3, lock_name="lock")]
        )
    marker_line = sys._getframe().f_lineno  # !ACQUIRE! tk_fixture
    assert ddlock_profile.linenos("tk_fixture") == LineNo(None, marker_line, None)
    assert ddlock_profile.markers.acquire("tk_fixture") == marker_line

    # a second run writes under a new prefix and sees only its own files
    first_prefix = ddlock_profile.prefix
    with ddlock_profile.run(capture_pct=50):
        pass
    assert ddlock_profile.prefix != first_prefix
    assert fake_ddlock.options["capture_pct"] == 50
    assert len(ddlock_profile.paths) == 1


def test_fixture_stops_ddlock_when_the_body_fails(ddlock_profile, fake_ddlock):
    with pytest.raises(ZeroDivisionError):
        with ddlock_profile.run():
            1 / 0
    assert fake_ddlock.calls == ["start", "stop"]
    assert len(ddlock_profile.paths) == 1  # still collected for inspection


def test_plugin_via_conftest_pytest_plugins(tmp_path):
    """A project registers the fixture with pytest_plugins in its conftest."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["ddlock.pytest_plugin"]\n')
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """\
            import ddlock

            def test_uses_fixture(ddlock_profile, monkeypatch):
                calls = []
                monkeypatch.setattr(ddlock, "start", lambda **kw: calls.append(kw), raising=False)
                monkeypatch.setattr(ddlock, "stop", lambda: calls.append("stop"), raising=False)
                with ddlock_profile.run(upload_interval=0.5):
                    pass
                assert calls[0]["upload_interval"] == 0.5 and calls[1] == "stop"
                assert ddlock_profile.paths == [] and ddlock_profile.profile.samples == []
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # an installed ddlock would also load the plugin through its entry point
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert "1 passed" in out


def test_toolkit_imports_without_the_extension():
    # Simulate an unbuilt extension: refuse to load any compiled ddlock module.
    code = textwrap.dedent(
        """\
        import importlib.machinery, sys

        class NoExtensions:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("ddlock."):
                    spec = importlib.machinery.PathFinder.find_spec(name, path)
                    if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
                        raise ImportError("extension %s is not built" % name)
                return None

        sys.meta_path.insert(0, NoExtensions())
        import ddlock.testing, ddlock.pytest_plugin, ddlock._pprof
        print("ok")
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.PIPE).stdout
    assert out.strip() == b"ok"
