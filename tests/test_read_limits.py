"""Reading profiles is bounded (issue 17): ``python -m ddlock report|check``
and ``ddlock.testing.parse_profile`` decompress in steps and refuse a profile
larger than ``Limits.max_bytes`` or holding more samples, locations,
functions, strings, labels or frames than its limits, with one line and
exit status 2 (no traceback), before it takes the memory; an empty file is
an error."""

import gzip
import os
import subprocess
import sys
import tempfile
import time
import zlib

import pytest

from conftest import REPO, python_env
from ddlock import _pprof, testing
from ddlock._pprof import LimitError, Limits
from test_testing_toolkit import encode_profile, lock_sample

ROOT = os.environ.get("DDLOCK_TEST_PYTHONPATH", REPO)
MB = 1 << 20
# what a child may peak at while refusing a 1 GiB bomb (it holds at most
# max_bytes = 64 MiB of it, plus the interpreter)
RSS_BOUND_KB = 600 * 1024


# Runs a command and writes its peak RSS (KiB) to a file. The command is
# this small interpreter's child: a child forked straight from pytest would
# count pytest's own pages in its peak until it execs.
LAUNCHER = """if 1:
    import resource, subprocess, sys
    rc = subprocess.call(sys.argv[2:])
    with open(sys.argv[1], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    sys.exit(rc if rc >= 0 else 128 - rc)
"""


def run_measured(args, env=None, timeout=120):
    """Run a command; return (exit code, stdout, stderr, its peak RSS in
    KiB, seconds)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, rss.name, *args], stdout=out, stderr=err,
                              env=python_env(env), cwd=ROOT, timeout=timeout)
        elapsed = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return (proc.returncode, out.read().decode(), err.read().decode(), int(rss.read()), elapsed)


def report(*args, env=None):
    return run_measured([sys.executable, "-m", "ddlock", "report", *args], env=env)


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory):
    """1 GiB of zeros, gzip-compressed in 1 MiB steps (about 4.5 MB)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.1.1.pprof"
    comp = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MB)
    with open(path, "wb") as f:
        for _ in range(1024):
            f.write(comp.compress(zeros))
        f.write(comp.flush())
    return str(path)


@pytest.mark.no_sanitize  # real RSS, which ASan's allocator distorts
def test_gzip_bomb_is_refused_by_report_with_bounded_memory(gzip_bomb):
    code, out, err, rss_kb, secs = report(gzip_bomb)
    assert_one_line_error(code, out, err, gzip_bomb, "decompressed profile larger than max_bytes=67108864",
                          "--max-bytes", "DDLOCK_READ_MAX_BYTES")
    print("gzip bomb (%d bytes -> 1 GiB): report refused it in %.2f s, peak RSS %d MiB"
          % (os.path.getsize(gzip_bomb), secs, rss_kb // 1024))
    assert rss_kb < RSS_BOUND_KB


@pytest.mark.no_sanitize  # real RSS, which ASan's allocator distorts
def test_gzip_bomb_with_a_lower_limit(gzip_bomb):
    code, out, err, rss_kb, _ = report(gzip_bomb, "--max-bytes", "8M")
    assert_one_line_error(code, out, err, "max_bytes=8388608")
    code, out, err, rss_kb_env, _ = report(gzip_bomb, env={"DDLOCK_READ_MAX_BYTES": "4194304"})
    assert_one_line_error(code, out, err, "max_bytes=4194304")
    # the command line wins over the environment
    code, out, err, _, _ = report(gzip_bomb, "--max-bytes", "2M", env={"DDLOCK_READ_MAX_BYTES": "4M"})
    assert_one_line_error(code, out, err, "max_bytes=2097152")
    assert rss_kb < 200 * 1024 and rss_kb_env < 200 * 1024


@pytest.mark.no_sanitize  # real RSS, which ASan's allocator distorts
def test_gzip_bomb_is_refused_by_parse_profile_with_bounded_memory(gzip_bomb):
    code, out, err, rss_kb, secs = run_measured([sys.executable, "-c", """if 1:
        import sys
        from ddlock import testing
        try:
            testing.parse_profile(sys.argv[1])
        except testing.LimitError as exc:
            print("LimitError:", exc)
        """, gzip_bomb])
    assert code == 0, err
    assert "LimitError: %s: decompressed profile larger than max_bytes" % gzip_bomb in out
    print("gzip bomb: parse_profile refused it in %.2f s, peak RSS %d MiB" % (secs, rss_kb // 1024))
    assert rss_kb < RSS_BOUND_KB


def test_ten_million_samples_in_a_small_file_are_refused(tmp_path):
    # the case: a small file holding 10 million (empty) samples
    path = tmp_path / "many.1.1.pprof"
    path.write_bytes(gzip.compress(b"\x12\x00" * 10_000_000, 6))
    assert path.stat().st_size < 100_000
    code, out, err, rss_kb, secs = report(str(path))
    assert_one_line_error(code, out, err, "profile holds more samples than max_samples=500000",
                          "--max-samples", "DDLOCK_READ_MAX_SAMPLES")
    print("10M samples in %d bytes: refused in %.2f s, peak RSS %d MiB"
          % (path.stat().st_size, secs, rss_kb // 1024))
    with pytest.raises(LimitError, match="more samples than max_samples=500000"):
        testing.parse_profile(str(path))


def sample_profile(n, offset=0):
    """n distinct samples, each with a 2-frame stack and 2 labels."""
    return gzip.compress(encode_profile([
        lock_sample("app.py:%d:lock" % (i + offset), [("work%d" % i, "/src/app.py", i + 1), ("main", "/src/app.py", 1)],
                    acquire=1, wait=10, thread_id=i)
        for i in range(n)]))


def test_sample_limit_on_the_command_line_and_in_parse_profile(tmp_path):
    path = tmp_path / "p.1.1.pprof"
    path.write_bytes(sample_profile(101))
    code, out, err, _, _ = report(str(path), "--max-samples", "100")
    assert_one_line_error(code, out, err, "more samples than max_samples=100")
    code, out, err, _, _ = report(str(path), "--max-samples", "101")
    assert code == 0, err
    code, out, err, _, _ = run_measured([sys.executable, "-m", "ddlock", "check", str(path), "-q"],
                                        env={"DDLOCK_READ_MAX_SAMPLES": "100"})
    assert_one_line_error(code, out, err, "more samples than max_samples=100")
    with pytest.raises(LimitError, match="max_samples=100"):
        testing.parse_profile(str(path), limits={"max_samples": 100})
    assert len(testing.parse_profile(str(path), limits=Limits(max_samples=101)).samples) == 101


def test_sample_limit_counts_every_file_report_reads(tmp_path):
    for seq in (1, 2):
        (tmp_path / ("app.7.%d.pprof" % seq)).write_bytes(sample_profile(60, offset=100 * seq))
    prefix = str(tmp_path / "app")
    code, out, err, _, _ = report(prefix, "--max-samples", "100")
    assert_one_line_error(code, out, err, "the 2 files hold more samples together than max_samples=100")
    code, out, err, _, _ = report(prefix, "--max-samples", "120")
    assert code == 0, err


def test_every_count_limit_is_exact(tmp_path):
    path = tmp_path / "rich.1.1.pprof"
    samples = [lock_sample("app.py:%d:lock" % i, [("f%d" % j, "/src/m%d.py" % j, j) for j in range(i + 1)],
                           acquire=i, thread_id=i, thread_name="T%d" % i) for i in range(6)]
    path.write_bytes(gzip.compress(encode_profile(samples)))
    p = testing.parse_profile(str(path))
    have = {
        "max_samples": len(p.samples),
        "max_locations": len(p.locations),
        "max_functions": len(p.functions),
        "max_strings": len(p.string_table),
        "max_labels": sum(len(s.label_list) for s in p.samples),
        "max_frames": sum(len(s.locations) for s in p.samples) + sum(len(loc.lines) for loc in p.locations.values()),
        "max_bytes": len(_pprof.decompress(path.read_bytes())),
    }
    assert all(n > 1 for n in have.values()), have
    for name, n in have.items():
        assert testing.parse_profile(str(path), limits={name: n}).samples == p.samples
        with pytest.raises(LimitError, match=r"%s: .* than %s=%d \(raise it with --%s or %s\)"
                           % (path, name, n - 1, name.replace("_", "-"), Limits.env_name(name))):
            testing.parse_profile(str(path), limits={name: n - 1})


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.1.1.pprof"
    path.write_bytes(b"")
    code, out, err, _, _ = report(str(path))
    assert_one_line_error(code, out, err, str(path), "empty file (0 bytes)")
    code, out, err, _, _ = run_measured([sys.executable, "-m", "ddlock", "check", str(path)])
    assert_one_line_error(code, out, err, "empty file")
    with pytest.raises(testing.DecodeError, match="empty file"):
        testing.parse_profile(str(path))


def test_malformed_limits_are_usage_errors(tmp_path):
    path = tmp_path / "p.1.1.pprof"
    path.write_bytes(sample_profile(3))
    code, out, err, _, _ = report(str(path), "--max-samples", "0")
    assert code == 2 and "--max-samples: expected a positive integer" in err and "Traceback" not in err
    code, out, err, _, _ = report(str(path), "--max-bytes", "lots")
    assert code == 2 and "--max-bytes" in err and "Traceback" not in err
    code, out, err, _, _ = report(str(path), env={"DDLOCK_READ_MAX_LABELS": "many"})
    assert_one_line_error(code, out, err, "DDLOCK_READ_MAX_LABELS='many': expected a positive integer")
    with pytest.raises(ValueError, match="positive integer"):
        Limits(max_samples=0)
    with pytest.raises(TypeError, match="unknown limit"):
        testing.parse_profile(str(path), limits={"max_sample": 3})
    assert _pprof.parse_size("512K") == 512 << 10 and _pprof.parse_size("1G") == 1 << 30


def test_streamed_gzip_reads_what_gzip_reads_and_refuses_what_it_refuses(tmp_path):
    raw = encode_profile([lock_sample("a.py:1:lock", [("f", "/a.py", 1)], acquire=1)])
    one = gzip.compress(raw)
    # several members, split across read steps: one profile's bytes
    split = gzip.compress(raw[:7]) + gzip.compress(raw[7:])
    assert _pprof.decompress(split) == raw == gzip.decompress(split)
    big = os.urandom(300_000)  # incompressible: the output spans many steps
    assert _pprof.decompress(gzip.compress(big)) == big
    with pytest.raises(_pprof.DecodeError, match="corrupt gzip data"):
        _pprof.decompress(one[:-6])  # truncated
    with pytest.raises(_pprof.DecodeError, match="corrupt gzip data"):
        _pprof.decompress(one + b"\x00\x00")  # trailing garbage
    with pytest.raises(_pprof.DecodeError, match="corrupt gzip data"):
        _pprof.decompress(one[:-8] + b"\x00\x00\x00\x00" + one[-4:])  # bad CRC
    path = tmp_path / "x.1.1.pprof"
    path.write_bytes(split)
    assert testing.parse_profile(str(path)).samples == _pprof.parse_bytes(one).samples
    # raw (uncompressed) profiles are bounded too
    path.write_bytes(raw)
    with pytest.raises(LimitError, match="profile larger than max_bytes=%d" % (len(raw) - 1)):
        testing.parse_profile(str(path), limits={"max_bytes": len(raw) - 1})
    assert testing.parse_profile(str(path), limits={"max_bytes": len(raw)}).samples
