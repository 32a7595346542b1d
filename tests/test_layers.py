"""The packages are layers and imports point one way (see the README): specgrove (base) <- drafter,
verifier <- orchestrator <- services <- specgrove_apps, with no import circles anywhere.

The import graph is built statically with ``ast``: every ``import`` and ``from ... import``
counts, at module level or inside a function (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"specgrove": 0, "drafter": 1, "verifier": 1, "orchestrator": 2, "training": 2, "services": 3,
          "specgrove_apps": 4}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    modules = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a submodule when one is named, else its package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute path
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_the_base_layer_imports_no_higher_package():
    higher = sorted(set(LAYERS) - {"specgrove"})
    code = ("import specgrove, specgrove.models, specgrove.sampling; import sys, json; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {higher!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 50 and graph["specgrove_apps.cli"]  # the graph really was built
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_point_down_the_layers():
    """A package imports only lower layers and its own; drafter and verifier not each other."""
    upward = []
    for module, targets in import_graph().items():
        here = module.split(".")[0]
        for target in targets:
            there = target.split(".")[0]
            if there != here and LAYERS[there] >= LAYERS[here]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_transport_handlers_stay_thin():
    """gRPC servicer methods and HTTP handlers are at most 30 lines: parse, one call, convert."""
    import ast

    long, checked = [], 0
    for path in sorted((ROOT / "services").glob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Servicer")):
            for fn in (n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                if fn.name[:1].isupper():  # RPC methods are CamelCase
                    checked += 1
                    if fn.end_lineno - fn.lineno + 1 > 30:
                        long.append(f"{path.name}:{cls.name}.{fn.name}")
        if path.name == "http.py":
            for fn in (n for n in tree.body if isinstance(n, ast.AsyncFunctionDef)):
                checked += 1
                if fn.end_lineno - fn.lineno + 1 > 30:
                    long.append(f"{path.name}:{fn.name}")
    assert checked >= 12 and long == []  # Generate, Draft, Verify, Decode, ... and the HTTP routes
