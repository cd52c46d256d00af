"""The command-line tools: ``ddlock-run``, ``python -m ddlock report|check``
and the self-checking production stress test (against a real
ddapm-test-agent on a loopback port)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, locals_readable, python_env
from ddlock import report, testing
from ddlock._pprof import merge, parse_file

# Where the package under test lives (the sanitizer build uses a copy).
ROOT = os.environ.get("DDLOCK_TEST_PYTHONPATH", REPO)
STRESS = os.path.join(REPO, "scripts", "rlock_production_stress_test.py")

LOCK_APP = """\
import sys
import threading
import time

app_lock = threading.Lock()
hot_lock = threading.Lock()


class Store(object):
    def __init__(self):
        self.store_lock = threading.RLock()

    def put(self):
        with self.store_lock:
            time.sleep(0.0001)


def contend(n):
    for _ in range(n):
        with hot_lock:
            time.sleep(0.002)


def main():
    store = Store()
    for _ in range(200):
        with app_lock:
            store.put()
    threads = [threading.Thread(target=contend, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("app args", sys.argv[1:], "ddlock loaded:", "ddlock" in sys.modules)
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0)


if __name__ == "__main__":
    main()
"""


def line_of(path, text):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if text in line:
                return i
    raise AssertionError("%r not in %s" % (text, path))


def profiling_env(prefix, **extra):
    env = {
        "DD_PROFILING_OUTPUT_PPROF": prefix,
        "DD_PROFILING_CAPTURE_PCT": "100",
        "DD_PROFILING_UPLOAD_ENABLED": "false",
    }
    env.update(extra)
    return env


def run(cmd, env=None, cwd=None, timeout=120, pythonpath=True):
    """Run ``cmd`` with the test environment; ``pythonpath=False`` drops
    PYTHONPATH so that ddlock is only importable from ``cwd``."""
    full = python_env(env)
    if not pythonpath:
        full.pop("PYTHONPATH", None)
    return subprocess.run(cmd, env=full, cwd=cwd or ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def ddlock_cli(*args, **kw):
    return run([sys.executable, "-m", "ddlock"] + list(args), **kw)


def names_in(prefix):
    return set(testing.get_lock_names(merge(parse_file(p) for p in testing.list_profile_files(prefix))))


@pytest.fixture(scope="module")
def app_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("app") / "app.py"
    path.write_text(LOCK_APP)
    return str(path)


@pytest.fixture(scope="module")
def good_prefix(tmp_path_factory, app_script):
    """Files of the lock app, profiled through ddlock-run."""
    prefix = str(tmp_path_factory.mktemp("good") / "prof")
    proc = run([sys.executable, "-m", "ddlock.run", sys.executable, app_script], env=profiling_env(prefix))
    assert proc.returncode == 0, proc.stderr
    assert testing.list_profile_files(prefix), proc.stderr
    return prefix


@pytest.fixture(scope="module")
def unnamed_prefix(tmp_path_factory, app_script):
    """The same app with lock-name resolution disabled (labels file:line)."""
    prefix = str(tmp_path_factory.mktemp("unnamed") / "prof")
    proc = run([sys.executable, "-m", "ddlock.run", sys.executable, app_script],
               env=profiling_env(prefix, DD_PROFILING_LOCK_NAME_RESOLUTION="false"))
    assert proc.returncode == 0, proc.stderr
    assert testing.list_profile_files(prefix), proc.stderr
    return prefix


# ---------------------------------------------------------------------------
# ddlock-run
# ---------------------------------------------------------------------------


def test_run_profiles_a_script_that_never_imports_ddlock(tmp_path, app_script):
    prefix = str(tmp_path / "prof")
    # no PYTHONPATH: the child finds ddlock only through ddlock-run
    proc = run([sys.executable, "-m", "ddlock.run", sys.executable, app_script, "3", "x y"],
               env=profiling_env(prefix), pythonpath=False, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr  # the program's exit status
    assert "app args ['3', 'x y'] ddlock loaded: True" in proc.stdout
    assert "warning" not in proc.stderr, proc.stderr
    files = testing.list_profile_files(prefix)
    assert files, "no pprof file written; stderr:\n" + proc.stderr
    names = names_in(prefix)
    assert "app.py:%d:app_lock" % line_of(app_script, "app_lock = ") in names
    assert "app.py:%d:hot_lock" % line_of(app_script, "hot_lock = ") in names
    assert "app.py:%d:store_lock" % line_of(app_script, "self.store_lock = ") in names


def test_run_script_path_and_module(tmp_path, app_script):
    # `ddlock-run app.py` runs it with the current interpreter
    prefix = str(tmp_path / "script")
    proc = run([sys.executable, "-m", "ddlock.run", app_script], env=profiling_env(prefix))
    assert proc.returncode == 0, proc.stderr
    assert "hot_lock" in " ".join(names_in(prefix))

    # `python -m module` through the script function ddlock.run.main
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "lockmod.py").write_text(LOCK_APP)
    prefix = str(tmp_path / "module")
    code = "import sys; from ddlock.run import main; sys.exit(main())"
    proc = run([sys.executable, "-c", code, "--capture-pct", "100", sys.executable, "-m", "lockmod"],
               env={"PYTHONPATH": str(pkg) + os.pathsep + ROOT, "DD_PROFILING_OUTPUT_PPROF": prefix,
                    "DD_PROFILING_UPLOAD_ENABLED": "false"})
    assert proc.returncode == 0, proc.stderr
    assert "lockmod.py:%d:app_lock" % line_of(str(pkg / "lockmod.py"), "app_lock = ") in names_in(prefix)


def test_run_chains_to_an_existing_sitecustomize(tmp_path, app_script):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nprint('user sitecustomize ran', os.environ.get('DD_SERVICE'))\n")
    prefix = str(tmp_path / "prof")
    proc = run([sys.executable, "-m", "ddlock.run", "--service", "chained", "--output", prefix,
                sys.executable, app_script],
               env={"PYTHONPATH": str(site) + os.pathsep + ROOT, "DD_PROFILING_CAPTURE_PCT": "100",
                    "DD_PROFILING_UPLOAD_ENABLED": "false"})
    assert proc.returncode == 0, proc.stderr
    assert "user sitecustomize ran chained" in proc.stdout
    assert "ddlock loaded: True" in proc.stdout
    assert testing.list_profile_files(prefix)


def test_run_usage_errors(tmp_path):
    proc = run([sys.executable, "-m", "ddlock.run"])
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = run([sys.executable, "-m", "ddlock.run", "--help"])
    assert proc.returncode == 0 and "DD_PROFILING_OUTPUT_PPROF" in proc.stdout
    proc = run([sys.executable, "-m", "ddlock.run", "no-such-command-ddlock"])
    assert proc.returncode == 127 and "command not found: no-such-command-ddlock" in proc.stderr
    proc = run([sys.executable, "-m", "ddlock.run", "--bogus", "python"])
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
    proc = run([sys.executable, "-m", "ddlock.run", str(tmp_path / "missing.py")])
    assert proc.returncode == 2 and "no such script" in proc.stderr


# ---------------------------------------------------------------------------
# python -m ddlock report
# ---------------------------------------------------------------------------


def table_rows(out, title):
    lines = out.splitlines()
    i = lines.index(title)
    rows = []
    for line in lines[i + 3:]:
        if not line.strip() or not line.split()[0].isdigit():
            break
        rows.append(line)
    return rows


def test_report_puts_the_contended_lock_first(good_prefix):
    proc = ddlock_cli("report", good_prefix)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    by_wait = table_rows(out, "Top locks by wait")
    # a lock is shown as module, owner and attribute (issue 24): the app
    # runs as __main__; store_lock is an attribute of a Store
    assert by_wait and by_wait[0].split()[:3] == ["1", "__main__", "hot_lock"], out
    assert "app.py:" in by_wait[0]
    # (the portable build of 3.11 cannot read `self` at the acquire site:
    # the creation binding names it, without its owner; README limitations)
    store = "Store.store_lock" if locals_readable() else "store_lock"
    assert {r.split()[2] for r in by_wait} >= {"hot_lock", "app_lock", store}
    # acquire and release counts: 200 app_lock acquires, 60 hot_lock acquires
    app_row = next(r for r in by_wait if r.split()[2] == "app_lock")
    assert re.search(r"\b200\s+200\b", app_row), app_row
    hot = by_wait[0].split()
    assert hot[4:6] == ["60", "60"], by_wait[0]
    assert re.search(r"\d+(\.\d+)? (ns|µs|ms|s)\s+\d+\.\d%", by_wait[0]), by_wait[0]
    by_hold = table_rows(out, "Top locks by hold")
    assert by_hold[0].split()[2] == "hot_lock"
    assert "Hottest stacks by wait" in out and "contend" in out
    for line in out.splitlines():
        assert len(line) <= 100, "line longer than 100 columns: %r" % line


def test_report_svg_flame_graph(good_prefix, tmp_path):
    svg = str(tmp_path / "wait.svg")
    proc = ddlock_cli("report", good_prefix, "--svg", svg, "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert "(1 more lock names not shown; --top N)" in proc.stdout
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ns = {"s": "http://www.w3.org/2000/svg"}
    rects = root.findall(".//s:rect", ns)
    titles = [t.text for t in root.findall(".//s:title", ns)]
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert len(rects) > 4
    assert any("hot_lock" in t for t in titles)
    assert "hot_lock" in texts and "contend" in texts
    widths = [float(r.get("width")) for r in rects[1:]]  # [0] is the background
    assert max(widths) > 1000 and all(w > 0 for w in widths)

    hold = str(tmp_path / "hold.svg")
    proc = ddlock_cli("report", good_prefix, "--svg", hold, "--value", "hold")
    assert proc.returncode == 0, proc.stderr
    hroot = ET.parse(hold).getroot()
    htitles = " ".join(t.text for t in hroot.iter("{http://www.w3.org/2000/svg}title"))
    assert "hold" in htitles and "store_lock" in htitles and "app_lock" in htitles


def test_report_input_errors(tmp_path):
    proc = ddlock_cli("report", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "no profile found" in proc.stderr
    bad = tmp_path / "bad.pprof"
    bad.write_bytes(b"\x1f\x8bnot gzip")
    proc = ddlock_cli("report", str(bad))
    assert proc.returncode == 2 and "bad.pprof" in proc.stderr


# ---------------------------------------------------------------------------
# python -m ddlock check
# ---------------------------------------------------------------------------


def test_check_passes_on_named_locks(good_prefix):
    proc = ddlock_cli("check", good_prefix, "--expect", "hot_lock", "--expect", "store_lock")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ddlock check: OK" in proc.stdout
    assert "FAIL" not in proc.stdout


def test_check_fails_without_name_resolution(unnamed_prefix):
    proc = ddlock_cli("check", unnamed_prefix)
    assert proc.returncode == 1, proc.stdout
    out = proc.stdout
    assert "FAIL  names visible" in out
    assert "DD_PROFILING_LOCK_NAME_RESOLUTION" in out
    assert "ddlock check: FAILED" in out
    assert re.search(r"lock names found in 1 file \(\d+\): app\.py:\d+", out), out


def test_check_fails_on_a_missing_expected_name(good_prefix):
    proc = ddlock_cli("check", good_prefix, "--expect", "hot_lock", "--expect", "nosuch_lock")
    assert proc.returncode == 1
    assert "FAIL  expected names present: missing nosuch_lock" in proc.stdout


def test_criteria_on_generic_and_address_names():
    crit = {c.name: c for c in report.check_lock_names(["threading.py:123", "threading.py:130"])}
    assert not crit["names visible"].ok
    assert not crit["no threading.py names"].ok
    assert "threading.py:123" in crit["no threading.py names"].detail
    crit = {c.name: c for c in report.check_lock_names(
        ["<_thread.RLock object at 0x7f8b2c3d4e50>", "app.py:3:ok_lock"])}
    assert not crit["no addresses"].ok and crit["names visible"].ok
    crit = {c.name: c for c in report.check_lock_names(["app.py:3:lock"], expect=["lock", "other_lock"])}
    assert not crit["names distinguishable"].ok  # two locks expected, one name
    assert report.format_ns(850) == "850 ns" and report.format_ns(12345) == "12.3 µs"
    assert report.format_ns(4.56e6) == "4.56 ms" and report.format_ns(1.5e9) == "1.50 s"


# ---------------------------------------------------------------------------
# The production stress test
# ---------------------------------------------------------------------------


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _agent_python():
    """An interpreter that has ddapm-test-agent (it need not be ours)."""
    candidates = [sys.executable, shutil.which("python3"), shutil.which("python")]
    for py in candidates:
        if py and subprocess.run([py, "-c", "import ddapm_test_agent.agent"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL).returncode == 0:
            return py
    return None


@pytest.fixture(scope="module")
def receiver_url(tmp_path_factory):
    """A real ddapm-test-agent on free loopback ports; yields its base URL."""
    py = _agent_python()
    if py is None:
        pytest.fail("ddapm-test-agent is not installed for %s nor python3 (make deps, or "
                    "python3 -m pip install ddapm-test-agent)" % sys.executable)
    port, otlp_http, otlp_grpc = _free_ports(3)
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    code = "import sys; from ddapm_test_agent.agent import main; sys.argv[0] = 'ddapm-test-agent'; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    with open(str(log), "w") as logf:
        proc = subprocess.Popen([py, "-c", code, "--host", "127.0.0.1", "--port", str(port),
                                 "--otlp-http-port", str(otlp_http), "--otlp-grpc-port", str(otlp_grpc)],
                                stdout=logf, stderr=subprocess.STDOUT, env=env)
    url = "http://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail("ddapm-test-agent exited (%s):\n%s" % (proc.returncode, log.read_text()))
            try:
                with urllib.request.urlopen(url + "/info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("ddapm-test-agent did not answer on %s:\n%s" % (url, log.read_text()))
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def upload_support(agent_url):
    """Why uploads cannot be tested, or None when the exporter uploads."""
    code = textwrap.dedent("""
        import json, threading, ddlock
        ddlock.start(capture_pct=100, agent_url=%r, upload_interval=60)
        lock = threading.Lock()
        with lock:
            pass
        ddlock.flush()
        print(json.dumps(ddlock.stats()))
        ddlock.stop()
    """ % agent_url)
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    if "uploads_ok" not in stats:
        return "ddlock.stats() has no 'uploads_ok': upload support is not built yet"
    error = str(stats.get("last_error", "")).lower()
    if stats.get("uploads_ok", 0) == 0 and ("not supported" in error or "not implemented" in error):
        return "the exporter does not upload yet: %s" % stats["last_error"]
    return None


def stress(*args, env=None, timeout=180):
    return run([sys.executable, STRESS] + list(args), env=env, timeout=timeout)


@pytest.mark.no_sanitize
def test_stress_test_passes_every_criterion_through_a_real_agent(receiver_url, tmp_path):
    missing = upload_support(receiver_url)
    if missing:
        pytest.skip(missing)
    proc = stress("--duration", "4", "--workers", "2", "--capture-pct", "100", "--upload-interval", "1",
                  "--test-agent-url", receiver_url, "--output", str(tmp_path / "stress"))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "RESULT: PASS" in out
    assert "FAIL" not in out
    for criterion in ("names visible", "names distinguishable", "class members show attribute names",
                      "globals show global names", "no threading.py names", "no addresses",
                      "upload carries the same names as the files"):
        assert re.search(r"^PASS  %s: " % re.escape(criterion), out, re.M), criterion
    assert re.search(r"^PASS  class members show attribute names: [^F]*_Foo__lock", out, re.M)
    assert re.search(r"Upload: [1-9]\d* profiles? from this process received", out)
    # the files it checked are there, with the seed's names
    names = {report.parse_lock_name(n).variable for n in names_in(str(tmp_path / "stress"))}
    assert {"request_lock", "response_lock", "user_session_lock", "_Foo__lock", "GLOBAL_CACHE_LOCK",
            "global_stats_lock", "bottleneck_lock"} <= names


def test_stress_test_fails_clearly_without_lock_names(tmp_path):
    proc = stress("--duration", "2", "--workers", "2", "--capture-pct", "100", "--upload-interval", "1",
                  "--output", str(tmp_path / "stress"), env={"DD_PROFILING_LOCK_NAME_RESOLUTION": "false"})
    out = proc.stdout
    assert proc.returncode != 0, out
    assert re.search(r"^FAIL  names visible: no lock name has the form file:line:variable", out, re.M), out
    assert re.search(r"^FAIL  class members show attribute names: missing user_session_lock", out, re.M)
    assert re.search(r"^RESULT: FAIL - \d+ of \d+ criteria failed: .*names visible", out, re.M)
    assert "upload carries the same names as the files: uploads off" in out
