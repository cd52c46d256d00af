"""``ddlock-run``: profile an unmodified Python program.

    ddlock-run python app.py args...
    ddlock-run app.py args...              (runs with this interpreter)
    ddlock-run python -m package.module args...
    ddlock-run -m package.module args...
    ddlock-run gunicorn app:wsgi ...       (any command that starts Python)

The program runs with the same environment (``DD_PROFILING_*``,
``DD_TRACE_AGENT_URL``, ``DD_SERVICE``, ...) plus ``PYTHONPATH`` led by a
small directory whose ``sitecustomize.py`` does ``import ddlock.auto`` (then
runs any ``sitecustomize`` that was already on the path), and the process is
replaced by the command with ``os.execvpe``. Python programs that the command
starts in turn inherit the setting and are profiled too. Interpreters run
with ``-S``, ``-E`` or ``-I`` ignore ``PYTHONPATH`` or ``site`` and are not
profiled.

Options before the command are shortcuts for environment variables:
``--output PREFIX`` (DD_PROFILING_OUTPUT_PPROF), ``--capture-pct PCT``
(DD_PROFILING_CAPTURE_PCT), ``--upload-interval S``
(DD_PROFILING_UPLOAD_INTERVAL), ``--service NAME`` (DD_SERVICE), ``--debug``
(DD_PROFILING_DEBUG).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

ENV_BOOTSTRAP = "DDLOCK_RUN_BOOTSTRAP"  # the bootstrap directory, seen by the child

# The child's sitecustomize. %(ddlock_parent)r is where this ddlock package
# lives: appended to sys.path only when ``import ddlock`` fails otherwise, so
# an installed ddlock (or the program's own path) always wins.
_SITECUSTOMIZE = '''\
# Written by ddlock-run: start the ddlock lock profiler in every Python
# process started with this directory on PYTHONPATH, then run the
# sitecustomize module that this one hides, if any.
def _ddlock_bootstrap():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        try:
            import ddlock.auto  # noqa: F401  (starts profiling from the environment)
        except ImportError as exc:
            if getattr(exc, "name", None) != "ddlock":
                raise
            if %(ddlock_parent)r not in sys.path:
                sys.path.append(%(ddlock_parent)r)
            import ddlock.auto  # noqa: F401,F811
    except Exception as exc:  # never stop the program from running
        sys.stderr.write("ddlock-run: warning: profiling not started in %%s: %%s: %%s\\n"
                         %% (sys.executable, type(exc).__name__, exc))

    # Chain to the sitecustomize this file shadows (e.g. a distribution's).
    import importlib.machinery
    import importlib.util

    def _same(a, b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False

    rest = [p for p in sys.path if not _same(p or os.curdir, here)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_ddlock_bootstrap()
del _ddlock_bootstrap
'''

_OPTIONS = {
    "--output": "DD_PROFILING_OUTPUT_PPROF",
    "--capture-pct": "DD_PROFILING_CAPTURE_PCT",
    "--upload-interval": "DD_PROFILING_UPLOAD_INTERVAL",
    "--service": "DD_SERVICE",
}

USAGE = """\
usage: %(prog)s [OPTIONS] COMMAND [ARGS...]
       %(prog)s [OPTIONS] SCRIPT.py [ARGS...]
       %(prog)s [OPTIONS] -m MODULE [ARGS...]

Run a Python program with the ddlock lock profiler started as by
`import ddlock.auto`, configured by the same environment variables
(DD_PROFILING_OUTPUT_PPROF, DD_PROFILING_CAPTURE_PCT, DD_TRACE_AGENT_URL, ...).

options (each sets an environment variable for the program):
  --output PREFIX        DD_PROFILING_OUTPUT_PPROF: write PREFIX.<pid>.<seq>.pprof
  --capture-pct PCT      DD_PROFILING_CAPTURE_PCT: %% of lock events sampled
  --upload-interval S    DD_PROFILING_UPLOAD_INTERVAL: seconds between exports
  --service NAME         DD_SERVICE
  --debug                DD_PROFILING_DEBUG=true
  -h, --help             show this help
  --                     end of options

examples:
  %(prog)s python app.py --port 8080
  %(prog)s --output /tmp/app --capture-pct 10 python -m mypackage.server
  python -m ddlock report /tmp/app
"""


class UsageError(Exception):
    pass


class HelpRequested(Exception):
    pass


def parse_args(argv: List[str]) -> Tuple[Dict[str, str], List[str]]:
    """(environment settings, command) from the command line."""
    env: Dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help"):
            raise HelpRequested()
        if arg == "--debug":
            env["DD_PROFILING_DEBUG"] = "true"
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name in _OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError("%s needs a value" % name)
                value = argv[i + 1]
                i += 1
            env[_OPTIONS[name]] = value
            i += 1
            continue
        if arg.startswith("--") and arg != "--":
            raise UsageError("unknown option %s (options go before the command; see --help)" % arg)
        break
    command = argv[i:]
    if not command:
        raise UsageError("no command given")
    return env, command


def resolve_command(command: List[str]) -> List[str]:
    """The argv to exec: ``app.py ...`` and ``-m mod ...`` run with this
    interpreter; anything else is looked up on PATH by execvpe."""
    first = command[0]
    if first == "-m" or first == "-c":
        if len(command) < 2:
            raise UsageError("%s needs an argument" % first)
        return [sys.executable] + command
    if first.endswith((".py", ".pyw", ".pyz")) or (
        os.path.isfile(first) and not os.access(first, os.X_OK)
    ):
        if not os.path.exists(first):
            raise UsageError("no such script: %s" % first)
        return [sys.executable] + command
    return list(command)


def _ddlock_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sitecustomize_source() -> str:
    return _SITECUSTOMIZE % {"ddlock_parent": _ddlock_parent()}


def _safe_dir(path: str) -> bool:
    """True if ``path`` is a directory we own that nobody else can write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    return not (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _write_bootstrap(directory: str, source: str) -> bool:
    path = os.path.join(directory, "sitecustomize.py")
    try:
        with open(path, "r", encoding="utf-8") as f:
            if f.read() == source:
                return True
    except OSError:
        pass
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sitecustomize-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(source)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return False
    return True


def bootstrap_dir() -> str:
    """A directory holding the bootstrap ``sitecustomize.py``.

    Kept in a private per-user cache (``$XDG_CACHE_HOME/ddlock`` or
    ``~/.cache/ddlock``, else ``<tmp>/ddlock-<uid>``), named after the file's
    content so that every ddlock version and location has its own; falls back
    to a fresh private temporary directory.
    """
    source = sitecustomize_source()
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    roots = []
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if os.path.isabs(cache):
        roots.append(os.path.join(cache, "ddlock"))
    roots.append(os.path.join(tempfile.gettempdir(), "ddlock-%d" % uid))
    for root in roots:
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError:
            continue
        if not _safe_dir(root):
            continue
        directory = os.path.join(root, "run-" + digest)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError:
            continue
        if _safe_dir(directory) and _write_bootstrap(directory, source):
            return directory
    directory = tempfile.mkdtemp(prefix="ddlock-run-")
    if not _write_bootstrap(directory, source):
        raise OSError("cannot write the bootstrap sitecustomize.py in %s" % directory)
    return directory


def child_environment(extra: Optional[Dict[str, str]] = None, environ=None) -> Dict[str, str]:
    """The environment of the profiled program: ours, plus ``extra``, with
    the bootstrap directory first on PYTHONPATH."""
    env = dict(os.environ if environ is None else environ)
    env.update(extra or {})
    directory = bootstrap_dir()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    parts = [p for p in parts if os.path.abspath(p) != directory]
    env["PYTHONPATH"] = os.pathsep.join([directory] + parts)
    env[ENV_BOOTSTRAP] = directory
    return env


def main(argv: Optional[List[str]] = None, prog: str = "ddlock-run") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        out = sys.stdout if argv else sys.stderr
        out.write(USAGE % {"prog": prog})
        return 0 if argv else 2
    try:
        try:
            extra, command = parse_args(argv)
        except HelpRequested:
            sys.stdout.write(USAGE % {"prog": prog})
            return 0
        command = resolve_command(command)
        env = child_environment(extra)
    except UsageError as exc:
        sys.stderr.write("%s: %s\n(see %s --help)\n" % (prog, exc, prog))
        return 2
    except OSError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        sys.stderr.write("%s: command not found: %s\n" % (prog, command[0]))
        return 127
    except PermissionError:
        sys.stderr.write("%s: permission denied: %s\n" % (prog, command[0]))
        return 126
    except OSError as exc:
        sys.stderr.write("%s: cannot run %s: %s\n" % (prog, command[0], exc))
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
