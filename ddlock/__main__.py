"""``python -m ddlock`` (also the ``ddlock`` command).

    python -m ddlock report FILES... [--top N] [--stacks N] [--svg OUT.svg] [--value wait|hold]
    python -m ddlock check FILES... [--expect NAME]...
    python -m ddlock run python app.py args...      (same as ddlock-run)

FILES are pprof files, output prefixes (``DD_PROFILING_OUTPUT_PPROF``) or
directories. ``check`` exits 1 when a lock-name criterion fails, 2 on a usage
or input error.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

USAGE_ERROR = 2


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
    r.add_argument("--value", choices=("wait", "hold"), default="wait",
                   help="value drawn in the flame graph (default wait)")

    c = sub.add_parser("check", help="verify lock names against the production stress test's criteria",
                       description="Verify the 'lock name' labels: names visible (file:line:variable), "
                                   "distinguishable, no threading.py:... names, no memory addresses, "
                                   "and each --expect NAME present.")
    c.add_argument("files", nargs="+", metavar="FILE", help="pprof file, output prefix or directory")
    c.add_argument("--expect", action="append", default=[], metavar="NAME",
                   help="a variable name that must appear (repeatable), e.g. --expect user_session_lock")
    c.add_argument("-q", "--quiet", action="store_true", help="print failures only")

    sub.add_parser("run", help="profile a program: python -m ddlock run python app.py ...", add_help=False)
    return p


def _load(files: List[str]):
    from . import _pprof, report

    try:
        paths = report.expand_paths(files)
        return paths, report.load_profile(paths)
    except (FileNotFoundError, _pprof.DecodeError) as exc:
        sys.stderr.write("ddlock: %s\n" % exc)
        return None, None


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    paths, profile = _load(args.files)
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


def cmd_check(args: argparse.Namespace) -> int:
    from . import report

    paths, profile = _load(args.files)
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
