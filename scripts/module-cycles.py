#!/usr/bin/env python3
"""Finds import cycles between the files (modules) of each crate in the workspace.

A file depends on another when its code names a path into it: `crate::a::b`, `super::x`,
`self::y` (in `use` lines or inline). Re-exports (`pub use`) in a crate root or `mod.rs` are a
facade, not a dependency, and `mod` declarations are not imports. Each path resolves to the
longest module prefix that is a file of the crate. Prints every strongly connected group of two
or more files; exits 1 if there is one.

Usage: scripts/module-cycles.py [CRATE_SRC_DIR...]  (default: every crate's src/ in the workspace)
"""
import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] if '"' not in line else re.sub(r"^\s*//.*", "", line)
                     for line in text.splitlines())


def targets(module, is_dir_module, text, modules):
    """Modules this file's code names."""
    found = set()
    def resolve(anchor, parts):
        if anchor == "crate":
            base = ()
        elif anchor == "self":
            base = module if is_dir_module else module
        else:  # super
            base = module[:-1]
        full = base + tuple(parts)
        for n in range(len(full), -1, -1):
            if full[:n] in modules:
                return full[:n]
        return None
    for m in USE_GROUP.finditer(text):
        head = [p for p in m.group(2).split("::") if p]
        for item in re.split(r",", m.group(3)):
            item = item.strip().split(" as ")[0]
            if not item or item in ("self", "*"):
                t = resolve(m.group(1), head)
            else:
                t = resolve(m.group(1), head + [p for p in item.split("::") if p and p != "{"])
            if t is not None:
                found.add(t)
    for m in PATH.finditer(text):
        t = resolve(m.group(1), [p for p in m.group(2).split("::") if p])
        if t is not None:
            found.add(t)
    found.discard(module)
    return found


def crate_graph(src):
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[module_of(src, p)] = p
    graph = {}
    for module, path in files.items():
        text = strip_comments(open(path, encoding="utf-8").read())
        is_facade = os.path.basename(path) in ("lib.rs", "main.rs", "mod.rs")
        if is_facade:
            text = re.sub(r"^\s*pub(\([a-z]+\))?\s+use\s[^;]*;", "", text, flags=re.M)
        graph[module] = targets(module, is_facade, text, files)
    # A path into a submodule passes through its parent's facade only by name: drop edges to
    # ancestors that are pure facades (crate root, mod.rs) only when the name is re-exported.
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    srcs = sys.argv[1:] or [os.path.join(root, d) for d in ("src", "vhdx/src", "pageblob/src", "datapath/src", "sim/src")]
    bad = 0
    for src in srcs:
        for group in cycles(crate_graph(src)):
            bad += 1
            names = ["::".join(m) or "(crate root)" for m in group]
            print(f"{os.path.relpath(src, root)}: import cycle between {', '.join(names)}")
    if bad:
        sys.exit(1)
    print(f"no import cycles in {len(srcs)} crates")


if __name__ == "__main__":
    main()
