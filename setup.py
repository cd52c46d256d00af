"""Build ddlock and its C extension ``ddlock._ddlock``.

System libraries (protobuf-c, libcurl, zlib) are found with pkg-config; the
pprof schema's C code is generated from ext/proto/profile.proto with protoc-c
at build time. ``DDLOCK_SANITIZE=1`` builds with ASan/UBSan,
``DDLOCK_DEBUG=1`` without optimisation.
"""

import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join("ext", "proto")
PKGS = ["libprotobuf-c", "libcurl", "zlib"]


def pkg_config(*args):
    try:
        out = subprocess.check_output(["pkg-config", *args, *PKGS], text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(
            "ddlock: pkg-config could not find %s (%s); install "
            "libprotobuf-c-dev libcurl4-openssl-dev zlib1g-dev pkg-config "
            "(`make deps` does it)" % (" ".join(PKGS), exc)
        )
    return shlex.split(out)


def generate_proto():
    src = os.path.join(HERE, PROTO_DIR, "profile.proto")
    out = os.path.join(HERE, PROTO_DIR, "profile.pb-c.c")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return
    try:
        subprocess.check_call(
            ["protoc-c", "--c_out=.", "profile.proto"],
            cwd=os.path.join(HERE, PROTO_DIR),
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit("ddlock: protoc-c failed (%s); install protobuf-c-compiler" % exc)


class BuildExt(build_ext):
    def run(self):
        generate_proto()
        super().run()


cflags = pkg_config("--cflags")
libs = pkg_config("--libs")
extra_compile = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra",
                 "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                 "-Werror=implicit-function-declaration"]
extra_link = []
if os.environ.get("DDLOCK_SANITIZE") == "1":
    extra_compile += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                      "-O1", "-g"]
    extra_link += ["-fsanitize=address,undefined"]
elif os.environ.get("DDLOCK_DEBUG") == "1":
    extra_compile += ["-O0", "-g"]
else:
    extra_compile += ["-O2"]

ext = Extension(
    "ddlock._ddlock",
    sources=[
        "ext/module.c",
        "ext/frames.c",
        "ext/names.c",
        "ext/tasks.c",
        "ext/record.c",
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
             if f.endswith(".h")],
    extra_compile_args=cflags + extra_compile,
    extra_link_args=libs + extra_link + ["-lpthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
