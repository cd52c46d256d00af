"""One profiler per process, in the main interpreter (issue 17 #7).

The native lock types, their hooks, the export thread and the file names
(<prefix>.<pid>.<seq>.pprof) are the process's: legacy sub-interpreters
(mod_wsgi style) that each started a profiler overwrote each other's files.
start() in a sub-interpreter is a clear error; ddlock.auto there (as under
ddlock-run) skips it silently.
"""

import json
import os

import pytest

from conftest import run_python


def test_start_in_a_sub_interpreter_is_an_error_and_files_are_the_mains(tmp_path):
    prefix = str(tmp_path / "prof")
    out = tmp_path / "sub.json"
    proc = run_python(r'''
import json, sys, threading
import ddlock
try:
    import _testcapi
except ImportError:
    print("NO_TESTCAPI")
    sys.exit(0)
prefix, out = sys.argv[1], sys.argv[2]
ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False)
main_lock = threading.Lock()
with main_lock:
    pass
sub = """
import json, threading
import ddlock, ddlock.auto
res = {"auto_running": ddlock.is_running()}
try:
    ddlock.start(output_pprof=%r, capture_pct=100, upload_enabled=False)
    res["start"] = "started"
except RuntimeError as e:
    res["start"] = str(e)
sub_lock = threading.Lock()
with sub_lock:
    pass
res["sub_lock_profiled"] = ddlock._ddlock.profiled(sub_lock)
with open(%r, "w") as f:
    json.dump(res, f)
""" % (prefix, out)
for _ in range(2):
    rc = _testcapi.run_in_subinterp(sub)
    assert rc == 0, rc
print("PATHS", json.dumps(ddlock.flush()))
ddlock.stop()
''', args=(prefix, str(out)))
    if "NO_TESTCAPI" in proc.stdout:
        pytest.skip("this CPython has no _testcapi")
    res = json.loads(out.read_text())
    assert res["auto_running"] is False
    assert "main interpreter" in res["start"]
    assert res["sub_lock_profiled"] is None
    paths = json.loads(proc.stdout.split("PATHS ", 1)[1].splitlines()[0])
    assert len(paths) == 1 and paths[0].startswith(prefix + ".%d." % int(paths[0].split(".")[-3]))
    # one file per export, the main interpreter's only
    assert sorted(os.listdir(str(tmp_path))) == sorted(["sub.json", os.path.basename(paths[0])])
    assert proc.stderr == ""
