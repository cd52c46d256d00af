"""Hostile input (issue 8): every configuration variable with malformed
values, and property-based tests of the native pprof encoder
(``_ddlock._encode_profile``) with arbitrary stacks, labels, strings and
values.

Encoder properties run in a child interpreter (conftest.run_python), so a
crash in native code fails one test instead of the session, and the
sanitizer build (DDLOCK_TEST_PYTHONPATH) is the one exercised."""

import json
import os
import time

import pytest

from conftest import run_python
from ddlock import _config

pytest.importorskip("hypothesis")

SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
SLOW = 6 if SANITIZED else 1


def report(test, **figures):
    line = json.dumps(dict(test=test, **figures), sort_keys=True)
    print("FIGURES " + line)
    path = os.environ.get("DDLOCK_RELIABILITY_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def result_of(proc):
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no RESULT line\n--- stdout\n%s\n--- stderr\n%s"
                         % (proc.stdout, proc.stderr))


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

FLOATS = ["", "   ", "-1", "nan", "NaN", "inf", "-inf", "1e999", "abc", "1,5", "0x10", "5%"]
INTS = ["", "  ", "nan", "inf", "1.5", "1e3", "abc", "0x10", "99999999999999999999999999",
        "-99999999999999999999999999", "1_000x"]
BOOLS = ["", " ", "maybe", "2", "tru", "yes please", "-1", "enabled", "nan"]
URLS = ["", "ftp://agent:8126", "localhost:8126", "http//bad", "garbage", "file:///etc/passwd",
        "javascript:alert(1)"]
HTTPS_URLS = ["", "http://intake.example", "ftp://intake.example", "garbage"]
MODES = ["", "999", "rw-------", "-1", "1000", "0x1ff", "abc", "7777"]
EMPTY = ["", "   "]
# per-variable range violations on top of the type's malformed values
RANGES = {
    "capture_pct": ["101", "-0.001", "1e308"],
    "upload_interval": ["0", "-5", "86401", "1e6", "-0"],
    "max_frames": ["0", "-1", "4097"],
    "api_timeout_ms": ["0", "-1", "3600001"],
    "max_samples": ["0", "-1", "10000001"],
    "lock_wait_rate_ns": ["-1", str(10 ** 15 + 1)],
    "sampling_seed": ["-1", str(2 ** 63)],
    "agent_port": ["0", "-1", "65536"],
    "lock_stuck_s": ["-0.5", "86401"],
}
# where an empty value means "unset", not malformed
EMPTY_IS_UNSET = {"output_pprof", "api_key"}
GENERIC = ["", "   ", "nan", "-1", "maybe", "ftp://x", "garbage,,", "1e999", "NotALock"]


def _parser_kind(key):
    parse = _config.VARIABLES[key][1]
    name = getattr(parse, "__qualname__", "")
    return {"_parse_float.<locals>.parse": "float", "_parse_int.<locals>.parse": "int",
            "_parse_bool": "bool", "_parse_url": "url", "_parse_https_url": "https_url",
            "_parse_mode": "mode", "_parse_list": "list", "_parse_str": "str"}.get(name, "other")


def _rejected(name, value):
    try:
        _config.from_env(strict=True, environ={name: value})
    except ValueError:
        return True
    return False


def malformed_values(key):
    """(kind, values that must be refused) for one configuration key."""
    kind = _parser_kind(key)
    values = {"float": FLOATS, "int": INTS, "bool": BOOLS, "url": URLS, "https_url": HTTPS_URLS,
              "mode": MODES, "list": EMPTY, "str": EMPTY}.get(kind)
    if values is None:  # a parser this file does not know yet: what it refuses
        values = [v for v in GENERIC if _rejected(_config.VARIABLES[key][0][0], v)]
    values = list(values) + RANGES.get(key, [])
    if key in EMPTY_IS_UNSET:
        values = [v for v in values if v.strip()]
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return kind, seen


def cases():
    """[(variable name, key, value)] for every name of every variable."""
    out = []
    for key, (names, _, _) in _config.VARIABLES.items():
        for name in names:
            for value in malformed_values(key)[1]:
                out.append((name, key, value))
    return out


def test_every_variable_has_malformed_cases():
    """Each variable but the free-form prefix and key has values to refuse,
    and each of those is refused by the strict parser with a message naming
    the variable and the value."""
    for key, (names, _, _) in _config.VARIABLES.items():
        kind, values = malformed_values(key)
        if key in EMPTY_IS_UNSET:
            assert values == [], (key, values)
            continue
        assert values, "no malformed value for %s (%s)" % (key, kind)
        for name in names:
            for v in values:
                with pytest.raises(ValueError) as exc:
                    _config.from_env(strict=True, environ={name: v})
                assert str(exc.value).startswith("%s=%r: " % (name, v)), (name, v, str(exc.value))
                assert "\n" not in str(exc.value)
    report("test_every_variable_has_malformed_cases", variables=len(_config.VARIABLES),
           names=sum(len(n) for n, _, _ in _config.VARIABLES.values()), cases=len(cases()))


START_ALL = r'''
import json, os, threading
import ddlock
cases = json.loads(%(cases)r)
native_lock = threading.Lock
bad = []
for name, key, value in cases:
    os.environ[name] = value
    try:
        ddlock.start(**({} if key == "upload_enabled" else {"upload_enabled": False}))
        bad.append([name, value, "started"])
        ddlock.stop()
    except ValueError as e:
        msg = str(e)
        if not msg.startswith("%%s=%%r: " %% (name, value)) or "\n" in msg:
            bad.append([name, value, "message: " + msg])
    except Exception as e:
        bad.append([name, value, "%%s: %%s" %% (type(e).__name__, e)])
    del os.environ[name]
    if ddlock.is_running() or threading.Lock is not native_lock:
        bad.append([name, value, "left running or patched"])
print("RESULT " + json.dumps(dict(bad=bad, n=len(cases))))
'''


def test_start_raises_valueerror_naming_variable_and_value():
    """ddlock.start() with each malformed variable: ValueError
    "<NAME>=<value repr>: <reason>", nothing started, nothing patched."""
    all_cases = cases()
    r = result_of(run_python(START_ALL % dict(cases=json.dumps(all_cases)), timeout=120 * SLOW))
    assert r["bad"] == []
    assert r["n"] == len(all_cases)
    report("test_start_raises_valueerror_naming_variable_and_value", cases=len(all_cases))


AUTO_APP = r'''
import json, os, sys, threading, time
t0 = time.monotonic()
import ddlock.auto
import ddlock
app_lock = threading.Lock()
with app_lock:
    pass
print("RESULT " + json.dumps(dict(running=ddlock.is_running(),
                                  profiled=ddlock._ddlock.profiled(app_lock) == "Lock",
                                  import_s=time.monotonic() - t0)), flush=True)
ddlock.stop(flush=False)
'''


def _rounds():
    """Group cases so that each child gets at most one malformed value per
    configuration key (alias names of one key go to different children)."""
    rounds = []
    for name, key, value in cases():
        for rnd in rounds:
            if key not in rnd and name not in rnd.values():
                rnd[key] = (name, value)
                break
        else:
            rounds.append({key: (name, value)})
    return [[(name, key, value) for key, (name, value) in rnd.items()] for rnd in rounds]


def test_auto_warns_once_per_malformed_variable_and_runs():
    """``import ddlock.auto`` with malformed variables (every key broken at
    once, round after round): one stderr line per variable naming it and the
    value, the default used, the application runs and is profiled."""
    rounds = _rounds()
    checked = 0
    t0 = time.monotonic()
    for rnd in rounds:
        env = {name: value for name, _, value in rnd}
        env.setdefault("DD_PROFILING_UPLOAD_ENABLED", "false")
        proc = run_python(AUTO_APP, env=env, timeout=60 * SLOW)
        r = result_of(proc)
        assert r["running"] is True and r["profiled"] is True, (env, proc.stderr)
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        for name, key, value in rnd:
            mine = [l for l in lines if "%s=" % name in l]
            assert len(mine) == 1, (name, value, proc.stderr)
            assert mine[0].startswith("ddlock: warning: %s=%r: " % (name, value)), mine[0]
            assert "using the default" in mine[0], mine[0]
            checked += 1
        others = [l for l in lines if not any("%s=" % n in l for n, _, _ in rnd)]
        assert all(l.startswith("ddlock: warning: ") or "upload" in l for l in others), others
    report("test_auto_warns_once_per_malformed_variable_and_runs", cases=checked,
           children=len(rounds), total_s=round(time.monotonic() - t0, 2))


def test_malformed_api_key_is_refused_without_echo():
    """An API key with control characters cannot go into an HTTP header:
    start() refuses it, ddlock.auto warns and runs; the key is never shown."""
    key = "hostile-key-\x01-\x7f"
    proc = run_python("""
        import json, os, ddlock
        try:
            ddlock.start(upload_enabled=True)
            print("RESULT " + json.dumps(["started"]))
        except Exception as e:
            print("RESULT " + json.dumps([type(e).__name__, str(e)]))
    """, env={"DD_API_KEY": key})
    r = result_of(proc)
    assert r[0] in ("ValueError", "RuntimeError") and "API key" in r[1], r
    assert "hostile-key" not in proc.stdout + proc.stderr
    auto = run_python(AUTO_APP, env={"DD_API_KEY": key})
    assert result_of(auto)["running"] is False  # the application ran, unprofiled
    assert "hostile-key" not in auto.stdout + auto.stderr
    assert sum(1 for l in auto.stderr.splitlines() if "API key" in l) == 1, auto.stderr


# ---------------------------------------------------------------------------
# The pprof encoder, property-based
# ---------------------------------------------------------------------------

MODEL = r'''
import json, sys
from hypothesis import HealthCheck, given, settings, strategies as st
from ddlock import _ddlock
from ddlock._pprof import parse_bytes

INT64 = st.integers(-2 ** 63, 2 ** 63 - 1)
EXTREMES = st.sampled_from([-2 ** 63, 2 ** 63 - 1, -1, 0, 1, 2 ** 31, -2 ** 31 - 1])
ANY_CHAR = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr), st.just("\x00"),
                     st.just("\\"))
TEXT = st.text(alphabet=ANY_CHAR, max_size=24)
FRAME = st.tuples(TEXT, TEXT, st.one_of(INT64, EXTREMES))
LABELS = st.lists(st.tuples(TEXT, st.one_of(TEXT, INT64, EXTREMES)), max_size=6,
                  unique_by=lambda kv: kv[0])
VALUES = st.tuples(*[st.one_of(INT64, EXTREMES)] * 7)
SETTINGS = settings(max_examples=%(examples)d, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def esc(s):
    """What a string reads back as: lone surrogates backslash-escaped."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def wrap(v):
    return (v + 2 ** 63) %% 2 ** 64 - 2 ** 63


def label_key(value):
    if isinstance(value, str):
        v = esc(value)
        # pprof cannot tell an empty string label from the number 0
        return ("num", 0) if v == "" else ("str", v)
    return ("num", value)


def expected_of(samples):
    out = {}
    for frames, labels, values in samples:
        key = (tuple((esc(n), esc(f), line) for n, f, line in frames),
               tuple((esc(k), label_key(v)) for k, v in labels))
        old = out.get(key, (0,) * 7)
        out[key] = tuple(wrap(a + b) for a, b in zip(old, values))
    return out


def decoded_of(profile):
    out = {}
    for s in profile.samples:
        key = (tuple((f.function_name, f.filename, f.line) for f in s.frames),
               tuple((l.key, ("num", l.num) if l.is_numeric else ("str", l.str))
                     for l in s.label_list))
        old = out.get(key, (0,) * 7)
        out[key] = tuple(wrap(a + b) for a, b in zip(old, s.values))
    return out


def roundtrip(samples, **kw):
    data = _ddlock._encode_profile(samples, **kw)
    profile = parse_bytes(data)
    assert [tuple(vt) for vt in profile.sample_types] == [
        ("lock-acquire", "count"), ("lock-acquire-wait", "nanoseconds"),
        ("lock-release", "count"), ("lock-release-hold", "nanoseconds"),
        ("lock-holder-wait", "nanoseconds"), ("condition-wait", "count"),
        ("condition-wait-time", "nanoseconds")]
    assert profile.string_table[0] == ""
    assert len(set(profile.string_table)) == len(profile.string_table), "duplicate strings"
    assert sorted(profile.functions) == list(range(1, len(profile.functions) + 1))
    assert sorted(profile.locations) == list(range(1, len(profile.locations) + 1))
    assert all(len(s.values) == 7 for s in profile.samples)
    return data, profile
'''

PROPERTY_ROUNDTRIP = MODEL + r'''
@st.composite
def sample_lists(draw):
    base = draw(st.lists(st.tuples(st.lists(FRAME, max_size=70), LABELS, VALUES), max_size=8))
    out = list(base)
    if base:  # the same stack and labels again, with other values
        for i in draw(st.lists(st.integers(0, len(base) - 1), max_size=8)):
            out.append((base[i][0], base[i][1], draw(VALUES)))
    return draw(st.permutations(out))

count = [0, 0]

@SETTINGS
@given(sample_lists(), st.booleans())
def prop(samples, gz):
    data, profile = roundtrip(samples, gzip=gz)
    assert (data[:2] == b"\x1f\x8b") == gz
    assert decoded_of(profile) == expected_of(samples)
    assert profile.comments == []
    count[0] += 1
    count[1] += sum(len(f) for f, _, _ in samples)

prop()
print("RESULT " + json.dumps(dict(examples=count[0], frames=count[1])))
'''


def test_encoder_roundtrip_property():
    """Random profiles (0-70 frames, str/int labels incl. int64 extremes, any
    unicode incl. lone surrogates and NUL, int64 values, repeated keys)
    decode to the input aggregated by key."""
    t0 = time.monotonic()
    r = result_of(run_python(PROPERTY_ROUNDTRIP % dict(examples=200), timeout=300 * SLOW))
    assert r["examples"] >= 200
    report("test_encoder_roundtrip_property", examples=r["examples"], frames=r["frames"],
           total_s=round(time.monotonic() - t0, 2))


PROPERTY_CAP = MODEL + r'''
NAME = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
SIMPLE = st.tuples(st.lists(st.tuples(NAME, NAME, st.integers(0, 3)), max_size=3),
                   st.lists(st.tuples(NAME, st.one_of(NAME, st.integers(-2, 2))), max_size=2,
                            unique_by=lambda kv: kv[0]),
                   VALUES)
count = [0, 0]

@SETTINGS
@given(st.lists(SIMPLE, max_size=60), st.integers(1, 30))
def prop(samples, cap):
    table, dropped = {}, 0
    for frames, labels, values in samples:
        key = (tuple(frames), tuple(labels))
        if key in table:
            table[key] = tuple(wrap(a + b) for a, b in zip(table[key], values))
        elif len(table) < cap:
            table[key] = tuple(values)
        else:
            dropped += 1
    data, profile = roundtrip(samples, max_samples=cap)
    assert len(profile.samples) == len(table) <= cap
    assert decoded_of(profile) == expected_of([(f, l, v) for (f, l), v in table.items()])
    expected_comments = ["ddlock: %%d samples dropped (max samples reached)" %% dropped] if dropped else []
    assert profile.comments == expected_comments, (profile.comments, dropped)
    count[0] += 1
    count[1] += dropped

prop()
print("RESULT " + json.dumps(dict(examples=count[0], dropped=count[1])))
'''


def test_encoder_max_samples_cap_property():
    """With max_samples=cap, the first cap distinct keys are kept (later
    samples of them still merge), the rest are counted in the comment."""
    r = result_of(run_python(PROPERTY_CAP % dict(examples=150), timeout=300 * SLOW))
    assert r["examples"] >= 150 and r["dropped"] > 0
    report("test_encoder_max_samples_cap_property", examples=r["examples"],
           samples_dropped_total=r["dropped"])


HUGE = MODEL + r'''
import time
MB = 2 ** 20
size = %(size)d
t0 = time.monotonic()
name = ("n\u00e9\U0001F512" * (size // 6 + 1))[:size // 2] + "\ud800" + "x" * (size - size // 2)
filename = "/" + "d" * (size - 1)
key = "k" * size
value = "\x00v\udfff" * (size // 3)
samples = [([(name, filename, 2 ** 63 - 1), ("f", "g.py", -2 ** 63)], [(key, value), ("n", -1)],
            (1, 2, 3, 4, 5, 6, 7))] * 2
out = {}
for gz in (True, False):
    data, profile = roundtrip(samples, gzip=gz)
    assert decoded_of(profile) == expected_of(samples)
    s = profile.samples[0]
    assert s.frames[0].function_name == esc(name) and len(s.frames[0].function_name) == len(esc(name))
    assert s.label_list[0].str == esc(value)
    out["gzip" if gz else "raw"] = len(data)
print("RESULT " + json.dumps(dict(out, s=time.monotonic() - t0)))
'''


@pytest.mark.parametrize("size", [2 ** 20, 4 * 2 ** 20], ids=["1MB", "4MB"])
def test_encoder_megabyte_strings(size):
    """A 1 MB and a 4 MB function name (with multibyte characters and a lone
    surrogate), file name, label key and label value (with NUL)."""
    r = result_of(run_python(HUGE % dict(size=size, examples=1), timeout=300 * SLOW))
    assert r["raw"] > 4 * size
    report("test_encoder_megabyte_strings[%dMB]" % (size // 2 ** 20), string_chars=size,
           raw_bytes=r["raw"], gzip_bytes=r["gzip"], total_s=round(r["s"], 2))


DEEP = MODEL + r'''
frames = [("f%%d" %% i, "file%%d.py" %% (i %% 7), i) for i in range(%(nframes)d)]
labels = [("key%%d" %% i, i if i %% 2 else "v%%d" %% i) for i in range(%(nlabels)d)]
samples = [(frames, labels, (1,) * 7), (frames, labels, (2,) * 7),
           (frames[:1], labels[:1], (5,) + (0,) * 6), ([], [], (0,) * 7), ([], [], (-1,) + (0,) * 6)]
data, profile = roundtrip(samples)
assert decoded_of(profile) == expected_of(samples)
empty_data, empty = roundtrip([])
assert empty.samples == []
print("RESULT " + json.dumps(dict(samples=len(profile.samples), bytes=len(data))))
'''


def test_encoder_deep_stacks_many_labels_and_empty():
    """Stacks past the encoder's on-stack scratch (300 frames), 40 labels,
    empty stacks, zero values, and an empty profile."""
    r = result_of(run_python(DEEP % dict(nframes=300, nlabels=40, examples=1), timeout=120 * SLOW))
    assert r["samples"] == 3
    report("test_encoder_deep_stacks_many_labels_and_empty", frames=300, labels=40,
           bytes=r["bytes"])
