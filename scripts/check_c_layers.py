#!/usr/bin/env python3
"""Check that ddlock's C units call each other one way only.

Each unit is one object file. ``nm`` tells, for every unit, the global
symbols it defines and the undefined symbols it references; unit A *uses*
unit B when A references a symbol that B defines. Any cycle among the units
(A uses B, ..., and something B uses uses A again) is a layering error: the
script prints every cycle with the symbols that close it and exits 1. With
no cycle it prints the units bottom-up (each uses only units listed above
it) and exits 0.

Usage:
    scripts/check_c_layers.py                      # every ext/*.c, compiled here
    scripts/check_c_layers.py --units ext/writer.c ext/upload.c ext/export.c
    scripts/check_c_layers.py --objdir build/tmp-3.11/ext   # existing .o files
    scripts/check_c_layers.py a.o b.o                     # these objects

Sources (.c) are compiled to a temporary directory with ddlock's flags
(pkg-config protobuf-c, libcurl, zlib; Python's headers; ``$CC``, default
``cc``). Exit status: 0 no cycle, 1 cycle found, 2 usage or build error.
"""

import argparse
import glob
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKGS = ["libprotobuf-c", "libcurl", "zlib"]
# nm symbol types that define a symbol another unit can reference
DEFINED_TYPES = set("TDBRCGSVWiu")


class LayerError(Exception):
    """A usage or build problem (exit 2)."""


def unit_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def compile_flags():
    flags = ["-std=c11", "-D_GNU_SOURCE", "-I" + os.path.join(ROOT, "ext"),
             "-I" + os.path.join(ROOT, "ext", "proto"),
             "-I" + sysconfig.get_paths()["include"]]
    try:
        out = subprocess.run(["pkg-config", "--cflags"] + PKGS, check=True,
                             capture_output=True, text=True).stdout
        flags += shlex.split(out)
    except (OSError, subprocess.CalledProcessError):
        pass  # the system include path may be enough
    return flags


def compile_units(sources, outdir):
    cc = shlex.split(os.environ.get("CC") or "cc")
    flags = compile_flags()
    objects = []
    seen = {}
    for src in sources:
        name = unit_name(src)
        if name in seen:
            raise LayerError("two units named %r: %s and %s" % (name, seen[name], src))
        seen[name] = src
        obj = os.path.join(outdir, name + ".o")
        proc = subprocess.run(cc + flags + ["-c", src, "-o", obj],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LayerError("cannot compile %s:\n%s" % (src, proc.stderr.strip()))
        objects.append(obj)
    return objects


def nm_symbols(obj):
    """(defined, undefined) global symbol names of one object file."""
    proc = subprocess.run(["nm", "-g", "-P", obj], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LayerError("nm %s failed: %s" % (obj, proc.stderr.strip()))
    defined, undefined = set(), set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        sym, kind = parts[0], parts[1]
        if kind == "U":
            undefined.add(sym)
        elif kind in DEFINED_TYPES:
            defined.add(sym)
    return defined, undefined


def build_graph(objects):
    """{unit: {used unit: sorted symbols}} from the objects' symbol tables."""
    defs, refs = {}, {}
    owner = {}
    for obj in objects:
        name = unit_name(obj)
        if name in defs:
            raise LayerError("two units named %r" % name)
        defs[name], refs[name] = nm_symbols(obj)
        for sym in defs[name]:
            if owner.setdefault(sym, name) != name:
                print("check-layers: warning: %s is defined by %s and %s"
                      % (sym, owner[sym], name), file=sys.stderr)
    graph = {name: {} for name in defs}
    for name, wanted in refs.items():
        for sym in sorted(wanted):
            other = owner.get(sym)
            if other is not None and other != name:
                graph[name].setdefault(other, []).append(sym)
    return graph


def strongly_connected(graph):
    """Tarjan's algorithm, iterative: the components, each a sorted list."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                comps.append(sorted(comp))
    return comps


def one_cycle(graph, comp):
    """A shortest cycle through the first unit of a component: [a, b, ..., a]."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if child not in prev:
                prev[child] = node
                queue.append(child)
    return [start, start]


def bottom_up(graph):
    """Units ordered so that each uses only units before it (no cycles)."""
    order, done = [], set()

    def visit(node):
        if node in done:
            return
        done.add(node)
        for child in sorted(graph[node]):
            visit(child)
        order.append(node)

    for node in sorted(graph):
        visit(node)
    return order


def check(objects, out=sys.stdout):
    """Print the verdict; return 0 (no cycle) or 1 (cycles)."""
    graph = build_graph(objects)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    if not cycles:
        print("check-layers: %d units, no cycle; bottom-up:" % len(graph), file=out)
        for name in bottom_up(graph):
            uses = ", ".join(sorted(graph[name])) or "-"
            print("  %-16s uses %s" % (name, uses), file=out)
        return 0
    for comp in sorted(cycles):
        path = one_cycle(graph, comp)
        print("check-layers: cycle among %s: %s" % (", ".join(comp), " -> ".join(path)),
              file=out)
        # every use inside the component: each is part of some cycle
        for a in comp:
            for b in sorted(graph[a]):
                if b in comp:
                    syms = graph[a][b]
                    shown = ", ".join(syms[:5]) + (", ..." if len(syms) > 5 else "")
                    print("  %s uses %s: %s" % (a, b, shown), file=out)
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Fail on any cycle among C units (who references whose symbols).")
    parser.add_argument("--units", nargs="+", metavar="FILE.c",
                        help="sources to compile and check (default: every ext/*.c)")
    parser.add_argument("--objdir", metavar="DIR",
                        help="check the .o files in DIR instead of compiling")
    parser.add_argument("objects", nargs="*", metavar="FILE.o",
                        help="object files (or .c sources) to check")
    args = parser.parse_args(argv)
    try:
        paths = list(args.objects) + list(args.units or [])
        if args.objdir:
            found = sorted(glob.glob(os.path.join(args.objdir, "*.o")))
            if not found:
                raise LayerError("no .o files in %s" % args.objdir)
            paths += found
        if not paths:
            paths = sorted(glob.glob(os.path.join(ROOT, "ext", "*.c")))
        for p in paths:
            if not os.path.isfile(p):
                raise LayerError("no such file: %s" % p)
        sources = [p for p in paths if p.endswith(".c")]
        objects = [p for p in paths if not p.endswith(".c")]
        with tempfile.TemporaryDirectory(prefix="ddlock-layers-") as tmp:
            objects += compile_units(sources, tmp)
            return check(objects)
    except LayerError as exc:
        print("check-layers: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
