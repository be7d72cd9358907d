#!/usr/bin/env python3
"""The module dependency graph of a crate, from its `crate::` / `super::` / `self::` paths.

    .ci/modgraph.py check src sim/src     fail (exit 1) on any cycle, listing it
    .ci/modgraph.py show src              print each module's dependencies (the layers, bottom first)
    .ci/modgraph.py selftest              the checker finds the cycles it is meant to find

A node is a module with a file of its own (`pool`, `pool::heap`). A module depends on another when its code
names a path that resolves into that module: `use crate::pool::PoolStats`, `crate::share::wire::Hello`,
`super::table::BlockTable`, `use super::{KvBlock, KvDesc}`. A name that a module re-exports (`pub use`) is
followed to the module that defines it, so the crate root (which re-exports the public API) is never a node
and reaching `crate::Error` depends on `error`. Declaring a child (`mod heap;`) is not a dependency; a child
that reaches into its parent is. Code under `#[cfg(test)]` counts only with --tests (unit tests may look
anywhere). Two graphs must be acyclic: the file-level graph and the same collapsed onto the top-level modules.

Comments, strings and character literals are removed before paths are read; macros are read as code.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(src):
    """Source without comments, string and char literals (replaced by spaces, line structure kept)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r(#*)"', src[i:i + 8]) and (i == 0 or not re.match(r"\w", src[i - 1])):
            m = re.match(r'r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append(' "" ' + "\n" * src.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(' "" ' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^'\\])'", src[i:])
            if m:  # a char literal; otherwise a lifetime
                out.append(" ' ' ")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_cfg_test(code):
    """Remove items marked `#[cfg(test)]` (a module body in braces, or one item up to `;`)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        i = m.end()
        depth = 0
        j = i
        while j < len(code):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif code[j] == ";" and depth == 0:
                j += 1
                break
            j += 1
        code = code[:m.start()] + "\n" * code.count("\n", m.start(), j) + code[j:]


def use_trees(code):
    """Every `use` tree in the code, expanded to full paths: [(path segments, is_pub)]."""
    result = []
    for m in re.finditer(r"(\bpub(?:\s*\([^)]*\))?\s+)?\buse\s+([^;]*);", code):
        is_pub = bool(m.group(1))
        for path in expand(m.group(2)):
            result.append((path, is_pub))
    return result


def expand(tree):
    """`a::{b, c::{d, e as f}}` -> [[a, b], [a, c, d], [a, c, e]] (renames keep the original name)."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)

    def parse(s, i):
        prefix, items = [], []
        while i < len(s):
            if s[i] == "{":
                i += 1
                while True:
                    sub, i = parse(s, i)
                    items.extend(prefix + p for p in sub)
                    if i < len(s) and s[i] == ",":
                        i += 1
                        if i < len(s) and s[i] == "}":
                            i += 1
                            return items, i
                        continue
                    i += 1  # '}'
                    return items, i
            m = re.match(r"(" + IDENT + r"|\*)", s[i:])
            if not m:
                return items or [prefix], i
            name = m.group(1)
            i += len(name)
            prefix = prefix + [name]
            if s.startswith("::", i):
                i += 2
                continue
            return [prefix], i
        return items or [prefix], i

    paths, _ = parse(tree, 0)
    return [p for p in paths if p]


class Crate:
    def __init__(self, root_dir):
        self.root_dir = root_dir
        self.files = {}  # module path (tuple) -> file
        root = "lib.rs" if os.path.exists(os.path.join(root_dir, "lib.rs")) else "main.rs"
        self._collect((), os.path.join(root_dir, root))
        self.code = {}
        self.code_all = {}
        for mod, f in self.files.items():
            with open(f, encoding="utf-8") as fh:
                stripped = strip(fh.read())
            self.code_all[mod] = stripped
            self.code[mod] = drop_cfg_test(stripped)

    def _collect(self, mod, path):
        self.files[mod] = path
        with open(path, encoding="utf-8") as fh:
            code = strip(fh.read())
        here = os.path.dirname(path)
        base = os.path.basename(path)
        child_dir = here if base in ("lib.rs", "main.rs", "mod.rs") else os.path.join(here, base[:-3])
        for m in re.finditer(r"^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code, re.M):
            name = m.group(1)
            for cand in (os.path.join(child_dir, name + ".rs"), os.path.join(child_dir, name, "mod.rs")):
                if os.path.exists(cand):
                    self._collect(mod + (name,), cand)
                    break

    def reexports(self, mod, tests):
        """Names `mod` brings into scope with `use`, mapped to their absolute paths."""
        code = self.code_all[mod] if tests else self.code[mod]
        names = {}
        for path, _ in use_trees(code):
            absolute = self.absolute(mod, path)
            if absolute and path[-1] != "*":
                names[path[-1]] = absolute
        return names

    def absolute(self, mod, path):
        """An absolute path (tuple) for a path written in `mod`, or None for an external crate."""
        head = path[0]
        if head == "crate":
            return tuple(path[1:])
        if head == "super":
            base = mod
            while path and path[0] == "super":
                base, path = base[:-1], path[1:]
            return base + tuple(path)
        if head == "self":
            return mod + tuple(path[1:])
        if mod + (head,) in self.files:
            return mod + tuple(path)
        return None

    def resolve(self, absolute, tests, seen=None):
        """The module that defines what an absolute path names (following re-exports)."""
        seen = seen or set()
        mod = ()
        i = 0
        while i < len(absolute) and mod + (absolute[i],) in self.files:
            mod += (absolute[i],)
            i += 1
        if i < len(absolute) and (mod, absolute[i]) not in seen:
            seen.add((mod, absolute[i]))
            target = self.reexports(mod, tests).get(absolute[i])
            if target is not None:
                return self.resolve(target + tuple(absolute[i + 1:]), tests, seen)
        return mod

    def edges(self, tests=False):
        graph = {mod: set() for mod in self.files if mod}
        for mod in graph:
            code = self.code_all[mod] if tests else self.code[mod]
            paths = [p for p, _ in use_trees(code)]
            body = re.sub(r"\buse\s+[^;]*;", "", code)
            for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:\s*::\s*" + IDENT + r")+)", body):
                paths.append(re.split(r"\s*::\s*", m.group(1)))
            for path in paths:
                absolute = self.absolute(mod, path)
                if absolute is None:
                    continue
                target = self.resolve(absolute, tests)
                if target and target != mod and not (len(target) < len(mod) and mod[:len(target)] == target
                                                     and self.is_reexport_only(target, tests)):
                    graph[mod].add(target)
        return graph

    def is_reexport_only(self, mod, tests):
        return False


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def collapse(graph):
    top = {}
    for mod, deps in graph.items():
        top.setdefault(mod[:1], set())
        for d in deps:
            if d[:1] != mod[:1]:
                top[mod[:1]].add(d[:1])
    return top


def name(mod):
    return "::".join(mod)


def layers(graph):
    """Modules in dependency order: each line's modules depend only on lines above."""
    done, out = set(), []
    while len(done) < len(graph):
        ready = sorted(m for m in graph if m not in done and graph[m] <= done)
        if not ready:
            break
        out.append(ready)
        done.update(ready)
    return out


def check(dirs, tests):
    bad = False
    for d in dirs:
        graph = Crate(d).edges(tests)
        for label, g in (("module", graph), ("top-level module", collapse(graph))):
            for comp in cycles(g):
                bad = True
                print(f"{d}: {label} cycle: " + ", ".join(name(m) for m in comp))
                for m in comp:
                    into = sorted(name(t) for t in g[m] if t in comp)
                    print(f"    {name(m)} -> {', '.join(into)}")
        if not bad:
            n = sum(len(v) for v in graph.values())
            print(f"{d}: {len(graph)} modules, {n} dependencies, no cycle")
    return 1 if bad else 0


def show(dirs, tests):
    for d in dirs:
        graph = Crate(d).edges(tests)
        print(f"{d}:")
        for g, label in ((collapse(graph), "top-level"), (graph, "modules")):
            print(f"  {label}, bottom layer first:")
            for layer in layers(g):
                for m in layer:
                    print(f"    {name(m):24} -> {', '.join(sorted(name(t) for t in g[m])) or '-'}")
            left = [m for m in g if m not in {x for l in layers(g) for x in l}]
            for m in sorted(left):
                print(f"    (in a cycle) {name(m):11} -> {', '.join(sorted(name(t) for t in g[m]))}")
    return 0


def selftest():
    """Write a crate with known cycles and a crate without, and check the checker's verdicts."""
    import tempfile

    def make(files):
        d = tempfile.mkdtemp(prefix="modgraph-")
        for rel, text in files.items():
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as fh:
                fh.write(text)
        return d

    ok = make({
        "lib.rs": "mod a;\nmod b;\npub mod c;\npub use a::Thing;\n",
        "a.rs": "// use crate::b::X; in a comment is no dependency\npub struct Thing;\nconst S: &str = \"crate::b\";\n",
        "b.rs": "use crate::{Thing, c::inner::Deep};\n#[cfg(test)]\nmod tests { use crate::c::Y; }\n",
        "c/mod.rs": "pub mod inner;\npub use inner::Deep;\nfn f() -> crate::a::Thing { crate::a::Thing }\n",
        "c/inner.rs": "pub struct Deep;\n",
    })
    cyc = make({
        "lib.rs": "mod a;\nmod b;\nmod c;\npub use c::Err;\n",
        "a.rs": "use crate::b::{self, X};\n",
        "b.rs": "pub struct X;\npub fn f() -> crate::Err { todo!() }\n",
        "c.rs": "pub struct Err;\nfn g(_: super::a::Y) {}\n",
    })
    child = make({
        "lib.rs": "mod p;\n",
        "p/mod.rs": "mod k;\nuse k::K;\npub struct Stats;\n",
        "p/k.rs": "pub struct K(super::Stats);\n",
    })
    failures = []
    g = Crate(ok).edges()
    want = {("a",): set(), ("b",): {("a",), ("c", "inner")}, ("c",): {("c", "inner"), ("a",)}, ("c", "inner"): set()}
    if g != want:
        failures.append(f"acyclic crate read as {g}, expected {want}")
    if cycles(g) or cycles(collapse(g)):
        failures.append("acyclic crate reported a cycle")
    if Crate(ok).edges(tests=True)[("b",)] != {("a",), ("c", "inner"), ("c",)}:
        failures.append("--tests does not count #[cfg(test)] code")
    c = cycles(Crate(cyc).edges())
    if c != [[("a",), ("b",), ("c",)]]:
        failures.append(f"cycle a -> b -> c (through a re-export) -> a found as {c}")
    c = cycles(Crate(child).edges())
    if c != [[("p",), ("p", "k")]]:
        failures.append(f"parent/child cycle found as {c}")
    if check([cyc], False) != 1:
        failures.append("check passes a crate with a cycle")
    for f in failures:
        print("selftest:", f)
    print("selftest:", "ok" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    tests = "--tests" in args
    args = [a for a in args if a != "--tests"]
    if not args or args[0] not in ("check", "show", "selftest"):
        print(__doc__)
        sys.exit(2)
    if args[0] == "selftest":
        sys.exit(selftest())
    sys.exit({"check": check, "show": show}[args[0]](args[1:], tests))
