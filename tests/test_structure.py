"""The code and docs keep the shape a newcomer can read: short functions, workers and servicers
that take a few domain values, a session loop that stays a loop, a README that stays a front door,
and text that points only inside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("specgrove", "drafter", "verifier", "orchestrator", "training", "services", "specgrove_apps")
MAX_FUNCTION_LINES = 60
MAX_WORKER_PARAMS = 6
WORKER_CLASSES = re.compile(r".*(Worker|Servicer)$")


def source_files():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not path.name.endswith(("_pb2.py", "_pb2_grpc.py")):  # generated stubs
                yield path


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield node.name, item
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield None, node


def parameters(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
    return names + ([a.vararg.arg] if a.vararg else []) + ([a.kwarg.arg] if a.kwarg else [])


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path in source_files() for _, fn in functions(ast.parse(path.read_text()))
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "\n".join(sorted(set(long)))


def test_worker_and_servicer_methods_take_few_parameters():
    many = [f"{path.relative_to(ROOT)}:{fn.lineno} {owner}.{fn.name}: {parameters(fn)}"
            for path in source_files() for owner, fn in functions(ast.parse(path.read_text()))
            if owner is not None and WORKER_CLASSES.match(owner) and len(parameters(fn)) > MAX_WORKER_PARAMS]
    assert not many, "\n".join(many)


def test_the_session_loop_stays_small_and_the_readme_a_front_door():
    assert len((ROOT / "orchestrator" / "pipeline.py").read_text().splitlines()) <= 200
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_text_points_only_inside_the_repository():
    """No references to design notes outside the repository or to issue numbers, and every relative
    link in the docs names a file that exists."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|\bDESIGN\.md|MEASUREMENTS\.md|STYLE\.md|(?i:\bissue #?\d+)|\(#\d+\)")
    found = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".txt") and path.name not in ("Makefile", "Dockerfile"):
            continue
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line) and "test_structure.py" not in name:
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+:", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
