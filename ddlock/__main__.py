"""``python -m ddlock`` (also the ``ddlock`` command).

    python -m ddlock report FILES... [--top N] [--stacks N] [--svg OUT.svg]
        [--value wait|hold|holder|condition-wait-time]
    python -m ddlock check FILES... [--expect NAME]...
    python -m ddlock check                          (no FILES: this build, ddlock.build_info())
    python -m ddlock run python app.py args...      (same as ddlock-run)

FILES are pprof files, output prefixes (``DD_PROFILING_OUTPUT_PPROF``) or
directories. ``check`` exits 1 when a lock-name criterion fails, 2 on a usage
or input error (a profile that is not one, or larger than a reading limit:
--max-bytes, --max-samples, ... or the DDLOCK_READ_MAX_* variables).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

USAGE_ERROR = 2


_LIMIT_HELP = {
    "max_bytes": "decompressed size of one profile (K, M, G suffixes; default 64M)",
    "max_samples": "samples, over all files (default 500000)",
    "max_locations": "locations per profile (default 1000000)",
    "max_functions": "functions per profile (default 1000000)",
    "max_strings": "string table entries per profile (default 1000000)",
    "max_labels": "labels per profile (default 5000000)",
    "max_frames": "stack entries per profile: samples' location ids and locations' lines (default 25000000)",
}


def _positive(parse):
    def convert(text: str) -> int:
        try:
            v = parse(text)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError("expected a positive integer, got %r" % text)
        return v

    return convert


def _add_limits(p: argparse.ArgumentParser) -> None:
    from ._pprof import Limits, parse_size

    g = p.add_argument_group("reading limits", "a profile beyond any of them is refused "
                                               "(exit 2) before it takes the memory")
    for name, text in _LIMIT_HELP.items():
        parse = parse_size if name == "max_bytes" else (lambda t: int(t, 10))
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=_positive(parse), metavar="N",
                       help="%s; also %s" % (text, Limits.env_name(name)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ddlock",
        description="Read ddlock lock profiles (pprof files or output prefixes).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("report", help="top locks by wait and hold, hottest stacks, optional SVG flame graph",
                       description="Top locks by wait and by hold time with their creation sites, "
                                   "acquire/release counts, share of all wait, and the hottest stacks.")
    r.add_argument("files", nargs="+", metavar="FILE", help="pprof file, output prefix or directory")
    r.add_argument("--top", type=int, default=10, metavar="N", help="locks per table (default 10)")
    r.add_argument("--stacks", type=int, default=3, metavar="N", help="stacks shown per lock (default 3)")
    r.add_argument("--stack-locks", type=int, default=5, metavar="N",
                   help="locks whose stacks are shown (default 5)")
    r.add_argument("--svg", metavar="OUT.svg", help="also write a flame graph to OUT.svg")
    r.add_argument("--value", choices=("wait", "hold", "holder", "condition-wait-time"),
                   default="wait",
                   help="value drawn in the flame graph (default wait; holder: the waits "
                        "charged to the holders' stacks; condition-wait-time: time waiting "
                        "in Condition/Event/Queue waits)")
    _add_limits(r)

    c = sub.add_parser("check", help="verify lock names against the production stress test's criteria",
                       description="Verify the 'lock name' labels: names visible (file:line:variable), "
                                   "distinguishable, no threading.py:... names, no memory addresses, "
                                   "and each --expect NAME present.")
    c.add_argument("files", nargs="*", metavar="FILE",
                   help="pprof file, output prefix or directory; none: print which paths this "
                        "build of ddlock uses (ddlock.build_info())")
    c.add_argument("--expect", action="append", default=[], metavar="NAME",
                   help="a variable name that must appear (repeatable), e.g. --expect user_session_lock")
    c.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    _add_limits(c)

    sub.add_parser("run", help="profile a program: python -m ddlock run python app.py ...", add_help=False)
    return p


def _load(args: argparse.Namespace):
    from . import _pprof, report

    try:
        # the command line's limits, then DDLOCK_READ_MAX_*, then the defaults
        limits = _pprof.Limits.from_env(**{name: getattr(args, name) for name in _LIMIT_HELP})
        paths = report.expand_paths(args.files)
        return paths, report.load_profile(paths, limits)
    except (OSError, ValueError, MemoryError) as exc:  # DecodeError is a ValueError
        if isinstance(exc, MemoryError):
            exc = "out of memory reading the profile (lower --max-samples or --max-bytes)"
        sys.stderr.write("ddlock: %s\n" % exc)
        return None, None


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    paths, profile = _load(args)
    if profile is None:
        return USAGE_ERROR
    sys.stdout.write(report.render_report(profile, paths, top=max(args.top, 1), stacks=max(args.stacks, 0),
                                          stack_locks=max(args.stack_locks, 0)))
    if args.svg:
        try:
            report.render_flamegraph_file(profile, args.svg, which=args.value)
        except OSError as exc:
            sys.stderr.write("ddlock: cannot write %s: %s\n" % (args.svg, exc))
            return 1
        sys.stdout.write("\nflame graph (%s): %s\n" % (args.value, args.svg))
    return 0


def cmd_build_info() -> int:
    """``python -m ddlock check`` without files: this build, one key per line."""
    import ddlock

    try:
        info = ddlock.build_info()
    except ImportError as exc:
        sys.stdout.write("ddlock check: the native extension does not load: %s\n" % exc)
        return 1

    def lines(d, indent):
        for key in sorted(d):
            value = d[key]
            if isinstance(value, dict):
                sys.stdout.write("%s%s:\n" % (indent, key))
                lines(value, indent + "  ")
            else:
                sys.stdout.write("%s%s: %s\n" % (indent, key, value))

    lines(info, "")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from . import report

    if not args.files:
        if args.expect:
            sys.stderr.write("ddlock check: --expect needs profile FILES\n")
            return USAGE_ERROR
        return cmd_build_info()
    paths, profile = _load(args)
    if profile is None:
        return USAGE_ERROR
    labels = report.lock_names(profile)
    criteria = report.check_lock_names(labels, expect=args.expect)
    failed = [c for c in criteria if c.ok is False]
    shown = failed if args.quiet else criteria
    if shown:
        sys.stdout.write(report.format_criteria(shown) + "\n")
    if failed:
        sys.stdout.write("\n" + "\n".join(report.wrap("lock names found in %d file%s (%d): %s" % (
            len(paths), "" if len(paths) == 1 else "s", len(labels), ", ".join(labels) or "none"))) + "\n")
        sys.stdout.write("ddlock check: FAILED (%d of %d criteria): %s\n" % (
            len(failed), len(criteria), "; ".join(c.name for c in failed)))
        return 1
    if not args.quiet:
        sys.stdout.write("ddlock check: OK (%d criteria, %d lock names in %d file%s)\n" % (
            len(criteria), len(labels), len(paths), "" if len(paths) == 1 else "s"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        from . import run

        return run.main(argv[1:], prog="python -m ddlock run")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "check":
        return cmd_check(args)
    parser.print_help(sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
