"""The real default target, SmolLM2-135M-Instruct: loading, and greedy identity of speculation.

Reference: the target's own greedy output from transformers' ``generate``. Drafts: the n-gram
drafter (cheap, partial acceptance) and a noisy copy of the target (agrees often, rejects
sometimes), so accepted, recovered and bonus tokens all occur over 64+ tokens per prompt.
"""

import copy

import pytest
import torch

from drafter.tree_growth import ModelDrafter
from drafter.ngram import NgramDrafter
from orchestrator.engine import SpeculativeEngine
from orchestrator.sequoia import SequoiaTable
from orchestrator.stop_policy import AdaEDLPolicy
from specgrove.models import CausalLM
from specgrove.sampling import SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "def is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same backwards.\"\"\"\n",
    "Explain in two sentences why the sky is blue.",
    "Write a short story about a robot who learns to paint.",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n",
    "List three tips for writing clear Python code.",
]
NEW_TOKENS = 64


def test_smollm2_loads_from_the_gguf_package(smollm2):
    assert smollm2.vocab_size == 49152
    assert smollm2.eos_token_ids == frozenset({2})
    assert smollm2.model.config.num_hidden_layers == 30
    assert smollm2.decode(smollm2.encode("Hello, world")) == "Hello, world"


@pytest.fixture(scope="module")
def noisy_draft(smollm2):
    """The target with Gaussian noise on every weight: a draft that agrees often but not always."""
    model = copy.deepcopy(smollm2.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.15 * param.std() * torch.randn(param.shape, generator=gen))
    return CausalLM(model, smollm2.tokenizer, "smollm2-noisy")


@pytest.fixture(scope="module")
def references(smollm2):
    out = {}
    for prompt in PROMPTS:
        ids = smollm2.chat_prompt(prompt) if not prompt.startswith("def") else smollm2.encode(prompt)
        gen = smollm2.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=2)
        out[prompt] = (ids, gen[0, len(ids):].tolist())
    return out


@pytest.mark.parametrize(
    "drafter_name, draft_len", [("ar", 0), ("ngram", 4), ("noisy", 3), ("noisy-adaedl", 5), ("noisy-tree-adaedl", 0)]
)
def test_greedy_identity_with_the_real_target(smollm2, noisy_draft, references, drafter_name, draft_len):
    """Drafts: none (plain), n-gram, a noisy target copy as chain (static K, AdaEDL) and as a
    Sequoia tree with AdaEDL pruning branches."""
    drafter = {"ar": None, "ngram": NgramDrafter(smollm2.vocab_size)}.get(drafter_name, ModelDrafter(noisy_draft))
    tree = SequoiaTable([0.6, 0.15, 0.05]).shape(8, 4) if "tree" in drafter_name else None
    policy = AdaEDLPolicy if "adaedl" in drafter_name else None
    engine = SpeculativeEngine(smollm2, drafter, draft_len, tree=tree, policy_factory=policy)
    accepted = rejected = 0
    cases = list(references.items())
    if "noisy" in drafter_name:  # a full noisy copy of the target: each draft token costs a target step,
        cases = cases[:3]  # so 3 of the 5 prompts (code and chat; accepted and rejected rounds asserted below)
    for prompt, (ids, reference) in cases:
        result = engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS))
        assert len(reference) == NEW_TOKENS  # no early EOS: all 64 tokens are compared
        assert result.token_ids == reference, prompt
        accepted += sum(r.num_accepted for r in result.rounds)
        rejected += sum(r.num_accepted < r.num_drafted for r in result.rounds)
    if drafter is not None:
        assert accepted > 0 and rejected > 0  # both paths were exercised


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_greedy_identity_with_the_shipped_feature_draft(smollm2, references, shape, tmp_path):
    """The shipped feature-level draft reads SmolLM2's own features: exact, and it accepts more
    than half a draft token per round on average over these prompts."""
    from drafter.factory import make_drafter

    drafter, _ = make_drafter("smollm2-feature", smollm2, tmp_path, {"smollm2": smollm2})
    tree = SequoiaTable([0.6, 0.15, 0.05]).shape(8, 4) if shape == "tree" else None
    engine = SpeculativeEngine(smollm2, drafter, 4, tree=tree)
    accepted = rounds = 0
    for prompt, (ids, reference) in references.items():
        result = engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS))
        assert result.token_ids == reference, prompt
        accepted += sum(r.num_accepted for r in result.rounds)
        rounds += len(result.rounds)
    assert accepted > 0.5 * rounds  # mean accepted length above 1.5


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}


def test_json_schema_output_under_speculation_is_valid_and_greedy_identical(smollm2, tmp_path):
    """Structured output with the real target and the shipped feature draft: the output parses,
    validates against the schema, equals constrained plain decoding, and drafts are accepted."""
    import json

    import jsonschema

    from drafter.factory import make_drafter
    from specgrove.grammar import GrammarSpec

    drafter, _ = make_drafter("smollm2-feature", smollm2, tmp_path, {"smollm2": smollm2})
    ids = smollm2.chat_prompt("Describe a famous scientist as JSON with name, age and hobbies.")
    params = SamplingParams(max_new_tokens=96, grammar=GrammarSpec.json_schema(PERSON_SCHEMA))
    plain = SpeculativeEngine(smollm2).generate(ids, params)
    chain = SpeculativeEngine(smollm2, drafter, 4).generate(ids, params)
    tree = SpeculativeEngine(smollm2, drafter, tree=SequoiaTable([0.6, 0.15, 0.05]).shape(8, 4)
                             ).generate(ids, params)
    assert plain.finish_reason == "eos", plain.text
    jsonschema.validate(json.loads(plain.text), PERSON_SCHEMA)
    assert chain.token_ids == plain.token_ids and tree.token_ids == plain.token_ids
    assert sum(r.num_accepted for r in chain.rounds) > 0
