"""Packaging: which ddlock the suite tests, the package's typing and
metadata, and setup.py's build decisions -- what it says when a tool or
library is missing, when it (re)generates the protobuf-c sources, and that
a change of build flags (DDLOCK_PORTABLE=1) rebuilds the extension.

setup.py's helpers are loaded from a copy of setup.py and ext/ in a
temporary directory (``setup()`` runs only as ``__main__``), with PATH
pointing at directories of stand-in programs, so nothing here needs a tool
to be missing from the machine.
"""

import ast
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap

import pytest

import _subproc
from conftest import REPO, run_python

INSTALLED = os.environ.get("DDLOCK_TEST_INSTALLED")
# the real programs, found before a test replaces PATH
REAL = {p: shutil.which(p) for p in ("pkg-config", "protoc-c", "gcc")}


def inside(path, root):
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


# ---- the package under test --------------------------------------------------

def test_package_under_test():
    """Every process of the suite imports the ddlock it is meant to test:
    the installed one under DDLOCK_TEST_INSTALLED (scripts/test_installed.sh),
    else the source tree's -- but the programs the tests run import the
    sanitizer build under DDLOCK_TEST_PYTHONPATH (pytest itself, started
    from the source tree, keeps the source tree's there)."""
    import importlib.util

    import ddlock

    here = INSTALLED or REPO
    # the extension's file, without loading it into pytest (ASan runs)
    extension = importlib.util.find_spec("ddlock._ddlock").origin
    wrong = [f for f in (ddlock.__file__, extension) if not inside(f, here)]
    assert wrong == [], "pytest imports ddlock from outside %s" % here

    root = INSTALLED or os.environ.get("DDLOCK_TEST_PYTHONPATH") or REPO
    files = {}
    out = run_python("""
        import json, ddlock
        from ddlock import _ddlock
        print(json.dumps([ddlock.__file__, _ddlock.__file__]))
    """).stdout
    files["conftest.run_python"] = json.loads(out)
    files["_subproc.run"] = _subproc.run("emit([ddlock.__file__, _ddlock.__file__])")
    wrong = {k: v for k, v in files.items() if not all(inside(f, root) for f in v)}
    assert wrong == {}, "expected every ddlock under %s" % root
    if INSTALLED:
        assert not os.path.exists(os.path.join(REPO, "ddlock")), "the test tree has a ddlock/"
        assert all("site-packages" in f for v in files.values() for f in v)


def test_typing_files_ship_with_the_package():
    import ddlock

    here = os.path.dirname(ddlock.__file__)
    assert os.path.isfile(os.path.join(here, "py.typed"))
    assert os.path.isfile(os.path.join(here, "_ddlock.pyi"))


def _typed_start_keywords(source):
    """Keyword names of the ``def start`` under ``if TYPE_CHECKING:``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "start":
                    assert not fn.args.args and fn.args.kwarg is None
                    return [a.arg for a in fn.args.kwonlyargs]
    raise AssertionError("no typed start() under `if TYPE_CHECKING:`")


def test_typed_start_takes_exactly_the_configuration_keywords():
    import ddlock
    from ddlock import _config

    with open(ddlock.__file__) as f:
        typed = _typed_start_keywords(f.read())
    assert typed == list(_config.VARIABLES) + list(_config.ALIASES)


def _pyproject():
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        return f.read()


def test_pyproject_metadata():
    text = _pyproject()
    assert re.search(r'^requires = \["setuptools>=77"\]$', text, re.M)
    assert re.search(r'^license = "Apache-2\.0"$', text, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', text, re.M)
    with open(os.path.join(REPO, "scripts", "pythons.sh")) as f:
        tested = re.search(r"DEFAULT_PYVERSIONS=\(([^)]*)\)", f.read()).group(1).split()
    listed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)
    assert listed == tested
    for c in ("Operating System :: POSIX :: Linux",
              "Programming Language :: Python :: Implementation :: CPython"):
        assert '"%s"' % c in text


@pytest.mark.skipif(not INSTALLED, reason="the metadata of an installed ddlock")
def test_installed_metadata():
    from importlib import metadata

    meta = metadata.metadata("ddlock")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Programming Language :: Python :: %d.%d" % sys.version_info[:2] in meta.get_all("Classifier")
    dist = metadata.distribution("ddlock")
    licenses = [f for f in dist.files if f.name == "LICENSE"]
    assert licenses and "Apache License" in licenses[0].read_text()


# ---- setup.py: helpers in a scratch copy ---------------------------------------

@pytest.fixture
def src(tmp_path):
    """A scratch copy of setup.py and ext/ (with the generated sources)."""
    d = tmp_path / "src"
    d.mkdir()
    shutil.copy(os.path.join(REPO, "setup.py"), str(d))
    shutil.copytree(os.path.join(REPO, "ext"), str(d / "ext"),
                    ignore=shutil.ignore_patterns("*.o", "__pycache__"))
    assert (d / "ext" / "proto" / "profile.pb-c.c").exists(), "make proto first"
    return d


def load_setup(src):
    return runpy.run_path(str(src / "setup.py"), run_name="ddlock_setup_under_test")


@pytest.fixture
def bindir(tmp_path, monkeypatch):
    """An empty directory that becomes the whole PATH; put(name, script)
    adds a stand-in program there."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    for var in ("PKG_CONFIG", "PROTOC_C", "PKG_CONFIG_PATH"):
        monkeypatch.delenv(var, raising=False)

    def put(name, script):
        p = d / name
        p.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + textwrap.dedent(script))
        p.chmod(0o755)
        return p

    put.dir = d
    return put


def exit_message(excinfo):
    return str(excinfo.value.code)


def real(program):
    assert REAL[program], "%s is installed by `make deps`" % program
    return REAL[program]


def test_no_pkg_config_is_named_as_such(src, bindir):
    setup = load_setup(src)
    with pytest.raises(SystemExit) as e:
        setup["find_libraries"]()
    msg = exit_message(e)
    assert "pkg-config is not installed" in msg
    assert "apt-get install pkg-config" in msg and "dnf install pkgconf-pkg-config" in msg
    assert "protoc-c" not in msg and "libcurl4-openssl-dev" not in msg


def test_missing_library_is_named_with_its_packages(src, bindir):
    # a pkg-config that knows everything but libcurl
    bindir("pkg-config", """\
        if [ "$1" = --exists ] && [ "$2" = libcurl ]; then exit 1; fi
        exec %s "$@"
    """ % real("pkg-config"))
    setup = load_setup(src)
    with pytest.raises(SystemExit) as e:
        setup["find_libraries"]()
    msg = exit_message(e)
    assert "finds no libcurl: the development package is not installed" in msg
    assert "apt-get install libcurl4-openssl-dev\n" in msg
    assert "dnf install libcurl-devel" in msg
    assert "protobuf-c" not in msg and "zlib" not in msg and "protoc-c" not in msg


def test_libraries_found(src, bindir):
    bindir("pkg-config", 'exec %s "$@"\n' % real("pkg-config"))
    cflags, libs = load_setup(src)["find_libraries"]()
    assert {"-lprotobuf-c", "-lcurl", "-lz"} <= set(libs)


def test_missing_python_headers_and_compiler(src, tmp_path):
    setup = load_setup(src)
    with pytest.raises(SystemExit) as e:
        setup["check_python_headers"](str(tmp_path))
    assert "Python.h is not in" in exit_message(e)
    assert "python3-dev" in exit_message(e) and "python3-devel" in exit_message(e)
    setup["check_python_headers"]()  # this interpreter's headers are there
    with pytest.raises(SystemExit) as e:
        setup["check_compiler"]([str(tmp_path / "no-such-cc"), "-pthread"])
    assert "C compiler" in exit_message(e) and "apt-get install gcc" in exit_message(e)
    setup["check_compiler"]([real("gcc")])


PROTOC_SHIM = """\
    echo "$PWD $*" >> %(log)s
    touch profile.pb-c.c profile.pb-c.h
"""


def _age_generated(src, seconds):
    """Make the generated sources ``seconds`` older than profile.proto."""
    proto = src / "ext" / "proto" / "profile.proto"
    t = proto.stat().st_mtime
    for name in ("profile.pb-c.c", "profile.pb-c.h"):
        os.utime(str(proto.parent / name), (t - seconds, t - seconds))


def test_current_generated_sources_need_no_protoc_c(src, bindir, tmp_path):
    log = tmp_path / "protoc.log"
    bindir("protoc-c", PROTOC_SHIM % {"log": log})
    _age_generated(src, -5)  # newer than the .proto, as in an sdist
    assert load_setup(src)["proto_sources"](str(src)) == "current"
    assert not log.exists()


def test_newer_proto_without_protoc_c_keeps_shipped_sources(src, bindir, capfd):
    _age_generated(src, 100)
    before = (src / "ext" / "proto" / "profile.pb-c.c").read_bytes()
    setup = load_setup(src)
    assert setup["proto_sources"](str(src)) == "kept"
    err = capfd.readouterr().err
    assert "is newer than" in err and "protoc-c is not installed" in err
    assert (src / "ext" / "proto" / "profile.pb-c.c").read_bytes() == before
    # the sdist command never ships stale generated sources
    with pytest.raises(SystemExit) as e:
        setup["proto_sources"](str(src), strict=True)
    assert "are older than" in exit_message(e) and "protobuf-c-compiler" in exit_message(e)


def test_newer_proto_with_protoc_c_regenerates(src, bindir, tmp_path):
    log = tmp_path / "protoc.log"
    bindir("protoc-c", PROTOC_SHIM % {"log": log})
    _age_generated(src, 100)
    assert load_setup(src)["proto_sources"](str(src)) == "generated"
    assert log.read_text() == "%s --c_out=. profile.proto\n" % (src / "ext" / "proto")


def test_missing_generated_sources_need_protoc_c(src, bindir):
    for name in ("profile.pb-c.c", "profile.pb-c.h"):
        (src / "ext" / "proto" / name).unlink()
    setup = load_setup(src)
    with pytest.raises(SystemExit) as e:
        setup["proto_sources"](str(src))
    msg = exit_message(e)
    assert "are missing" in msg and "protoc-c, which generates them, is not installed" in msg
    assert "apt-get install protobuf-c-compiler" in msg and "dnf install protobuf-c-compiler" in msg
    assert "pkg-config" not in msg
    # with the real protoc-c they are generated
    bindir("protoc-c", 'exec %s "$@"\n' % real("protoc-c"))
    assert setup["proto_sources"](str(src)) == "generated"
    assert "perftools__profiles__profile" in (src / "ext" / "proto" / "profile.pb-c.h").read_text()


def test_incomplete_tree(src, bindir):
    for name in ("profile.proto", "profile.pb-c.c"):
        (src / "ext" / "proto" / name).unlink()
    with pytest.raises(SystemExit) as e:
        load_setup(src)["proto_sources"](str(src))
    assert "source tree is incomplete" in exit_message(e)


def test_build_switches(src):
    switches = load_setup(src)["build_switches"]
    macros, cflags, ldflags = switches({})
    assert macros == [] and "-O2" in cflags and ldflags == []
    macros, cflags, _ = switches({"DDLOCK_PORTABLE": "1"})
    assert macros == [("DDL_PORTABLE", "1")] and "-O2" in cflags
    macros, cflags, ldflags = switches({"DDLOCK_PORTABLE": "1", "DDLOCK_SANITIZE": "1"})
    assert macros == [("DDL_PORTABLE", "1")]
    assert "-fsanitize=address,undefined" in cflags and "-fsanitize=address,undefined" in ldflags
    assert switches({"DDLOCK_PORTABLE": "0"})[0] == []


def test_build_flag_change_rebuilds_the_extension(src, tmp_path):
    """Real builds in the scratch copy: a second build with the same flags is
    skipped, DDLOCK_PORTABLE=1 rebuilds every object with -DDDL_PORTABLE=1,
    and going back rebuilds without it."""
    lib, temp = tmp_path / "lib", tmp_path / "temp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDLOCK_")}

    def build(**extra):
        proc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--build-lib", str(lib),
             "--build-temp", str(temp)], cwd=str(src), env=dict(env, **extra),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
        assert proc.returncode == 0, proc.stdout
        compiles = [ln for ln in proc.stdout.splitlines() if " -c " in ln and ln.split()[0].endswith(("gcc", "cc"))]
        so = next(lib.glob("ddlock/_ddlock*.so"))
        return proc.stdout, compiles, so.stat().st_mtime_ns

    out, compiles, t1 = build()
    assert len(compiles) >= 8 and not any("DDL_PORTABLE" in c for c in compiles), out
    out, compiles, t2 = build()
    assert compiles == [] and t2 == t1, out  # up to date: not rebuilt
    out, compiles, t3 = build(DDLOCK_PORTABLE="1")
    assert "its build flags changed" in out
    assert len(compiles) >= 8 and all("-DDDL_PORTABLE=1" in c for c in compiles), out
    assert t3 != t2
    out, compiles, t4 = build(DDLOCK_PORTABLE="1")
    assert compiles == [] and t4 == t3, out
    out, compiles, t5 = build()
    assert len(compiles) >= 8 and not any("DDL_PORTABLE" in c for c in compiles), out
    assert t5 != t4
