"""The package's shape, read from its own source: no import circles (imports inside functions count too), and
the layers point one way - frontends (app, notebook, cli) above the pipeline, the pipeline above the parts."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gmem_explore"
FRONTENDS = {"app", "notebook", "cli", "__main__"}  # __main__: `python -m gmem_explore` runs the CLI


def module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body. `from .x import y` counts y when y is a
    module; importing a.b.c imports the packages a.b and a first, which counts as well (except the module's own
    packages, which are already being imported when it runs)."""
    modules = {module_of(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                mod = ".".join(base + (node.module.split(".") if node.module else []))
                found = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                targets.update(found or [mod])
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        edges = set()
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and not name.startswith(prefix + ".") and prefix != name:
                    edges.add(prefix)
        edges.discard("gmem_explore")  # the root's lazy names import nothing at import time
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), as a sorted list."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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


def layer(module: str) -> str:
    """gmem_explore.bank.memory -> bank; gmem_explore.pipeline -> pipeline."""
    return module.split(".")[1] if "." in module else module


def subpackage_graph(graph):
    out = {}
    for a, targets in graph.items():
        for b in targets:
            if layer(a) != layer(b):
                out.setdefault(layer(a), set()).add(layer(b))
    return out


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # checkpoints.folder imports the encoders only where a checkpoint has one: still an edge
    assert "gmem_explore.encoders" in graph["gmem_explore.checkpoints.folder"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_between_modules():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_circles_between_subpackages():
    found = cycles(subpackage_graph(import_graph()))
    assert not found, "subpackages that import each other: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_core_never_imports_a_frontend():
    wrong = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                   if layer(b) in FRONTENDS and layer(a) not in FRONTENDS)
    assert not wrong, "the core imports a frontend: " + ", ".join(wrong)


def test_few_modules_at_the_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, f"{len(top)} modules directly in gmem_explore/: {top}"
