#!/usr/bin/env python3
"""Lists the dependencies between the top-level modules of src/ and the cycles among them.

A module is a file `src/X.rs` or a directory `src/X/`; an edge X -> Y is any `crate::Y` path
in X's files (a `use` or a qualified name). Prints one line per module with what it uses, then
every cycle (a strongly connected component of more than one module). `--check` exits 1 when
there is a cycle, for CI.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` names several modules at once.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def strip_comments(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = {module_of(p) for p in SRC.rglob("*.rs")} - {"lib", "main"}
    for path in SRC.rglob("*.rs"):
        source = module_of(path)
        if source in ("lib", "main"):
            continue
        text = strip_comments(path.read_text())
        used = set(PATH.findall(text))
        for group in GROUP.findall(text):
            used.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        graph.setdefault(source, set()).update(u for u in used if u in modules and u != source)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, keeping those with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    graph = edges()
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(graph[module])) or '(nothing)'}")
    found = cycles(graph)
    for component in found:
        print(f"cycle: {' <-> '.join(component)}")
    if not found:
        print("no cycles")
    return 1 if found and "--check" in sys.argv[1:] else 0


if __name__ == "__main__":
    sys.exit(main())
