"""scripts/check_c_layers.py: a cycle among C units (by the symbols nm says
each defines and references) fails; one-way use passes; the export-side
units of ddlock itself are layered."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "check_c_layers.py")
# the pure-C units, bottom to top (Makefile's PURE_C)
PURE_C = ["profile", "pprof", "export_util", "writer", "event", "upload", "export"]

pytestmark = pytest.mark.skipif(shutil.which("nm") is None or shutil.which("cc") is None,
                                reason="needs cc and nm")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


def write(tmp_path, units):
    paths = []
    for name, code in units.items():
        p = tmp_path / (name + ".c")
        p.write_text(textwrap.dedent(code))
        paths.append(str(p))
    return paths


def test_two_unit_cycle_fails(tmp_path):
    paths = write(tmp_path, {
        "alpha": """
            int beta_f(void);
            int alpha_f(void) { return beta_f() + 1; }
        """,
        "beta": """
            int alpha_f(void);
            int beta_f(void) { return alpha_f() - 1; }
        """,
    })
    proc = run("--units", *paths)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cycle among alpha, beta: alpha -> beta -> alpha" in proc.stdout
    assert "alpha uses beta: beta_f" in proc.stdout
    assert "beta uses alpha: alpha_f" in proc.stdout


def test_one_way_units_pass(tmp_path):
    # statics of the same name in both units are not uses: only global
    # symbols link units
    paths = write(tmp_path, {
        "top": """
            int base_f(void);
            int base_counter;
            static int helper(void) { return 2; }
            int top_f(void) { return base_f() + base_counter + helper(); }
        """,
        "base": """
            int base_counter = 1;
            static int helper(void) { return 1; }
            int base_f(void) { return helper(); }
        """,
    })
    proc = run("--units", *paths)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert lines == [["base", "uses", "-"], ["top", "uses", "base"]]


def test_three_unit_cycle_in_object_directory(tmp_path):
    # a -> b -> c -> a, and d uses a without being part of the cycle
    paths = write(tmp_path, {
        "a": "int b_f(void); int a_f(void) { return b_f(); }\n",
        "b": "int c_f(void); int b_f(void) { return c_f(); }\n",
        "c": "int a_f(void); int c_f(void) { return a_f(); }\n",
        "d": "int a_f(void); int d_f(void) { return a_f(); }\n",
    })
    objdir = tmp_path / "obj"
    objdir.mkdir()
    for src in paths:
        name = os.path.splitext(os.path.basename(src))[0]
        subprocess.run(["cc", "-c", src, "-o", str(objdir / (name + ".o"))], check=True)
    proc = run("--objdir", str(objdir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cycle among a, b, c: a -> b -> c -> a" in proc.stdout
    assert "d uses" not in proc.stdout


def test_missing_file_is_usage_error(tmp_path):
    proc = run("--units", str(tmp_path / "nope.c"))
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


def test_export_side_units_are_layered():
    # the split of the exporter: export uses writer and upload, which use
    # only export_util; nothing below calls back up
    units = [os.path.join(REPO, "ext", n + ".c") for n in PURE_C]
    proc = run("--units", *units, os.path.join(REPO, "ext", "proto", "profile.pb-c.c"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uses = {}
    for line in proc.stdout.splitlines()[1:]:
        name, _, rest = line.split(None, 2)
        uses[name] = set() if rest == "-" else set(rest.split(", "))
    assert uses["export_util"] == set()
    assert uses["writer"] <= {"export_util", "pprof"}
    assert uses["event"] <= {"export_util"}
    assert uses["upload"] <= {"export_util", "event", "pprof"}
    assert {"writer", "upload"} <= uses["export"]
    for low in ("profile", "pprof", "export_util", "writer", "event", "upload"):
        assert "export" not in uses[low]
