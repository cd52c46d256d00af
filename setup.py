"""Build ddlock and its C extension ``ddlock._ddlock``.

System libraries (protobuf-c, libcurl, zlib) are found with pkg-config when
the extension is built (never for sdist or metadata). The pprof schema's C
code (ext/proto/profile.pb-c.c/.h) is generated from ext/proto/profile.proto
by protoc-c; sdists ship the generated files, so building from one needs
protoc-c only when profile.proto is newer than them (and then only if
protoc-c is installed: otherwise the shipped files are used).

Build switches (environment): ``DDLOCK_SANITIZE=1`` ASan/UBSan,
``DDLOCK_DEBUG=1`` no optimisation, ``DDLOCK_PORTABLE=1`` compiles with
``-DDDL_PORTABLE=1``. The flags of each build are recorded in its build-temp
directory: when they differ from the last build's, or the extension was
rebuilt elsewhere since, the extension is rebuilt (never reused stale).

A missing tool or library stops the build with a message naming it and the
Debian/Ubuntu and RHEL/Fedora packages that provide it.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join("ext", "proto")
PROTO = os.path.join(PROTO_DIR, "profile.proto")
GENERATED = [os.path.join(PROTO_DIR, "profile.pb-c.c"),
             os.path.join(PROTO_DIR, "profile.pb-c.h")]
# pkg-config module -> (Debian/Ubuntu package, RHEL/Fedora package)
PKGS = {
    "libprotobuf-c": ("libprotobuf-c-dev", "protobuf-c-devel"),
    "libcurl": ("libcurl4-openssl-dev", "libcurl-devel"),
    "zlib": ("zlib1g-dev", "zlib-devel"),
}
TOOLS = {
    "pkg-config": ("pkg-config", "pkgconf-pkg-config"),
    "protoc-c": ("protobuf-c-compiler", "protobuf-c-compiler"),
    "Python.h": ("python3-dev", "python3-devel"),
    "cc": ("gcc", "gcc"),
}
FLAGS_STAMP = "ddlock-build-flags.json"


def fail(problem, *needs):
    """Stop the build: what is wrong, then which packages provide ``needs``
    (keys of PKGS or TOOLS)."""
    msg = "ddlock: cannot build: " + problem
    if needs:
        deb = [(PKGS.get(n) or TOOLS[n])[0] for n in needs]
        rpm = [(PKGS.get(n) or TOOLS[n])[1] for n in needs]
        msg += ("\n  Debian/Ubuntu: apt-get install %s\n  RHEL/Fedora:   dnf install %s"
                % (" ".join(deb), " ".join(rpm)))
    sys.exit(msg)


def warn(msg):
    sys.stderr.write("ddlock: warning: %s\n" % msg)


def find_libraries():
    """(cflags, libs) of PKGS from pkg-config ($PKG_CONFIG, default
    pkg-config); stops naming pkg-config or each missing library."""
    exe = os.environ.get("PKG_CONFIG") or "pkg-config"
    if shutil.which(exe) is None:
        fail("%s is not installed (it finds protobuf-c, libcurl and zlib)" % exe,
             "pkg-config")
    missing = [p for p in PKGS
               if subprocess.run([exe, "--exists", p], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL).returncode != 0]
    if missing:
        fail("%s finds no %s: the development package%s not installed (or not "
             "on PKG_CONFIG_PATH)" % (exe, ", ".join(missing),
                                      " is" if len(missing) == 1 else "s are"),
             *missing)
    try:
        cflags = subprocess.check_output([exe, "--cflags", *PKGS], text=True)
        libs = subprocess.check_output([exe, "--libs", *PKGS], text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        fail("%s --cflags/--libs %s failed (%s)" % (exe, " ".join(PKGS), exc))
    return shlex.split(cflags), shlex.split(libs)


def check_python_headers(include_dir=None):
    include_dir = include_dir or sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include_dir, "Python.h")):
        fail("Python.h is not in %s: the Python %d.%d development headers are "
             "not installed" % ((include_dir,) + sys.version_info[:2]), "Python.h")


def check_compiler(command):
    """``command``: the compiler's argv (e.g. ``["gcc", "-pthread"]``)."""
    if not command or shutil.which(command[0]) is None:
        fail("the C compiler %r is not installed (or $CC names a missing "
             "program)" % (command[0] if command else ""), "cc")


def proto_sources(here=HERE, strict=False):
    """Make sure the generated protobuf-c sources exist. They are generated
    when missing, and regenerated when profile.proto is newer than them and
    protoc-c ($PROTOC_C, default protoc-c) is installed; a newer .proto
    without protoc-c keeps the existing files (``strict``: stops instead).
    Returns "current", "kept" or "generated"."""
    proto = os.path.join(here, PROTO)
    outs = [os.path.join(here, g) for g in GENERATED]
    exe = os.environ.get("PROTOC_C") or "protoc-c"
    have = all(os.path.exists(o) for o in outs)
    if have and (not os.path.exists(proto)
                 or min(os.path.getmtime(o) for o in outs) >= os.path.getmtime(proto)):
        return "current"
    if not os.path.exists(proto):
        fail("%s and its generated sources %s are missing: the source tree is "
             "incomplete" % (PROTO, " ".join(GENERATED)))
    if shutil.which(exe) is None:
        if have and not strict:
            warn("%s is newer than %s but %s is not installed: building with "
                 "the existing generated sources" % (PROTO, " ".join(GENERATED), exe))
            return "kept"
        why = ("are older than %s" % PROTO) if have else \
            "are missing (release sdists ship them; a git checkout generates them)"
        fail("%s %s, and %s, which generates them, is not installed"
             % (" and ".join(GENERATED), why, exe), "protoc-c")
    try:
        subprocess.check_call([exe, "--c_out=.", os.path.basename(proto)],
                              cwd=os.path.dirname(proto))
    except (OSError, subprocess.CalledProcessError) as exc:
        fail("%s could not generate the C sources from %s (%s)" % (exe, PROTO, exc))
    return "generated"


def build_switches(environ=os.environ):
    """(define_macros, extra compile args, extra link args) of the build
    switches in ``environ``."""
    compile_args = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra",
                    "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                    "-Werror=implicit-function-declaration",
                    # only PyInit is exported: calls between ddlock's units are
                    # direct (no PLT) and can be inlined
                    "-fvisibility=hidden"]
    link_args = []
    macros = []
    if environ.get("DDLOCK_SANITIZE") == "1":
        compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                         "-O1", "-g"]
        link_args += ["-fsanitize=address,undefined"]
    elif environ.get("DDLOCK_DEBUG") == "1":
        compile_args += ["-O0", "-g"]
    else:
        compile_args += ["-O2"]
    if environ.get("DDLOCK_PORTABLE") == "1":
        macros.append(("DDL_PORTABLE", "1"))
    return macros, compile_args, link_args


class BuildExt(build_ext):
    """Checks the toolchain and libraries first, adds pkg-config's flags and
    rebuilds the extension whenever its flags changed."""

    def run(self):
        proto_sources()
        super().run()

    def build_extensions(self):
        check_python_headers()
        check_compiler(self.compiler.compiler_so)
        self._lib_flags = find_libraries()
        super().build_extensions()

    def build_extension(self, ext):
        if not getattr(ext, "_ddlock_lib_flags", False):
            cflags, libs = self._lib_flags
            ext.extra_compile_args = cflags + ext.extra_compile_args
            ext.extra_link_args = libs + ext.extra_link_args + ["-lpthread"]
            ext._ddlock_lib_flags = True
        flags = {"define_macros": [list(m) for m in ext.define_macros],
                 "compile": ext.extra_compile_args, "link": ext.extra_link_args,
                 "cc": self.compiler.compiler_so, "ldshared": self.compiler.linker_so}
        output = self.get_ext_fullpath(ext.name)
        stamp = os.path.join(self.build_temp, ext.name + "." + FLAGS_STAMP)
        force = self.force
        last = self._read_stamp(stamp)
        if not self.force and last != self._stamp(flags, output):
            if last is not None:
                sys.stderr.write("ddlock: rebuilding %s: its build flags changed (or it "
                                 "was rebuilt elsewhere) since %s\n" % (ext.name, stamp))
            self.force = True  # no stamp: built elsewhere before, or never
        try:
            super().build_extension(ext)
        finally:
            self.force = force
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            json.dump(self._stamp(flags, output), f)

    @staticmethod
    def _stamp(flags, output):
        """What the last build recorded: its flags, and the output it made
        as it left it (mtime and size)."""
        try:
            st = os.stat(output)
            made = [st.st_mtime_ns, st.st_size]
        except OSError:
            made = None
        return {"flags": flags, "output": os.path.abspath(output), "output_stat": made}

    @staticmethod
    def _read_stamp(path):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None


class SDist(sdist):
    """An sdist always carries current generated protobuf-c sources."""

    def run(self):
        proto_sources(strict=True)
        super().run()


MACROS, COMPILE_ARGS, LINK_ARGS = build_switches()

ext = Extension(
    "ddlock._ddlock",
    sources=[
        "ext/module.c",
        "ext/frames.c",
        "ext/names.c",
        "ext/tasks.c",
        "ext/record.c",
        "ext/holder.c",
        "ext/order.c",
        "ext/locktab.c",
        "ext/lock.c",
        "ext/tracker.c",
        "ext/hooks.c",
        "ext/profile.c",
        "ext/pprof.c",
        "ext/export_util.c",
        "ext/writer.c",
        "ext/event.c",
        "ext/upload.c",
        "ext/export.c",
        "ext/proto/profile.pb-c.c",
    ],
    include_dirs=["ext", PROTO_DIR],
    depends=[os.path.join("ext", f) for f in os.listdir(os.path.join(HERE, "ext"))
             if f.endswith(".h")] + GENERATED[1:],
    define_macros=MACROS,
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
)

if __name__ == "__main__":  # setup.py and PEP 517 builds; tests import the helpers
    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt, "sdist": SDist})
