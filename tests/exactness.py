"""Shared pieces of the statistical exactness tests (tests/orchestrator/test_exactness.py and
tests/services/test_served_exactness.py): tiny models sized for exact enumeration, the exact
target-only distributions they are tested against, and readers of what speculation did.

Letters: p = target, q = draft. The tested quantities of a generation of ``MAX_NEW_TOKENS``
tokens are the joint distribution of its first two tokens and the marginal of its last one
(position ``LATER``); a position after the output ended (EOS) is the extra cell ``V`` ("none").

Why models of their own rather than the shared tiny fixtures: a vocabulary of 11 makes the
target's distribution over every 4-token prefix (10⁴ prefixes) one batched forward pass, so the
later marginal is exact (no pruning); and a draft that is a noisy copy of the target is accepted
often enough that chains and trees are routinely accepted part-way and rejected mid-chain (an
unrelated random draft almost never is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specgrove.models import load_model
from specgrove.sampling import SamplingParams, warp
from specgrove.tiny import build_tiny_llama
from specgrove.tree import VerifyResult
from tests.stats import ALPHA, NEGATIVE_ALPHA, chi_square_p_value, detectable_tv

CHARACTERS = list("abcdefgh")  # + 3 special tokens: a vocabulary of 11
MODEL = dict(hidden_size=16, num_layers=1, characters=CHARACTERS, logit_scale=25.0, suppress_eos=True)
DRAFT_NOISE = 0.2  # the draft's weights: the target's + N(0, (0.2·std of each tensor)²)
PROMPT = "abc"
MAX_NEW_TOKENS = 5
LATER = 5  # the later position whose marginal is tested (1-based)
SAMPLING = {  # case id -> SamplingParams fields
    "T0.5": dict(temperature=0.5),
    "T1": dict(temperature=1.0),
    "T1.5": dict(temperature=1.5),
    "T0.5-k5": dict(temperature=0.5, top_k=5),
    "T1-k6-p0.9": dict(temperature=1.0, top_k=6, top_p=0.9),
    "T1-p0.9": dict(temperature=1.0, top_p=0.9),
    "T1.5-p0.95": dict(temperature=1.5, top_p=0.95),
}


def build_models(root: Path) -> tuple[Path, Path]:
    """(target dir, draft dir): a tiny target and a noisy copy of it as the draft."""
    from transformers import LlamaForCausalLM

    target = build_tiny_llama(root / "target", seed=0, **MODEL)
    draft = build_tiny_llama(root / "draft", seed=0, **MODEL)  # same weights and tokenizer, then noise
    model = LlamaForCausalLM.from_pretrained(draft)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(DRAFT_NOISE * weight.std() * torch.randn(weight.shape, generator=noise))
    model.save_pretrained(draft)
    return target, draft


def load_models(root: Path):
    """(target, draft) as CausalLM, built under root."""
    target, draft = build_models(root)
    return load_model(str(target), Path("/nonexistent")), load_model(str(draft), Path("/nonexistent"))


@dataclass(frozen=True)
class Exact:
    """A model's own sampling distribution of a MAX_NEW_TOKENS-token output (V = vocabulary)."""

    joint: np.ndarray  # [V · (V + 1)]: P(token 1 = a, token 2 = b) at a · (V + 1) + b; b = V: none
    marginals: list[np.ndarray]  # per position 1..n: [V + 1], the last cell: none (ended before)

    @property
    def later(self) -> np.ndarray:
        return self.marginals[LATER - 1]


def exact_distributions(model, prompt_ids: list[int], params: SamplingParams, n: int = MAX_NEW_TOKENS) -> Exact:
    """Enumerate every prefix of up to n − 1 tokens that has not ended (EOS), one batched forward
    pass per position, with p warped exactly as ``specgrove.sampling.warp`` does (fp32);
    probabilities accumulate in float64. Tokens with p = 0 (top-k / top-p) are not extended."""
    vocab = model.vocab_size
    eos = sorted(model.eos_token_ids)
    prefixes = torch.zeros(1, 0, dtype=torch.long)  # [P, L] live prefixes
    probs = torch.ones(1, dtype=torch.float64)  # [P] their probabilities
    ended = 0.0  # mass of outputs that ended before the current position
    joint = torch.zeros(vocab, vocab + 1, dtype=torch.float64)
    marginals = []
    for position in range(n):
        rows = next_token_probs(model, prompt_ids, prefixes, params).double()  # [P, V]
        marginal = torch.zeros(vocab + 1, dtype=torch.float64)
        marginal[:vocab] = probs @ rows
        marginal[vocab] = ended
        marginals.append(marginal.numpy())
        if position == 0:
            joint[eos, vocab] = rows[0, eos]  # token 1 ends the output: token 2 is none
        elif position == 1:
            joint[prefixes[:, 0], :vocab] = probs[:, None] * rows
        ended += float(probs @ rows[:, eos].sum(dim=1))
        live = rows > 0
        live[:, eos] = False
        parent, token = live.nonzero(as_tuple=True)
        prefixes = torch.cat([prefixes[parent], token[:, None]], dim=1)
        probs = probs[parent] * rows[parent, token]
    return Exact(joint.flatten().numpy(), marginals)


@torch.inference_mode()
def next_token_probs(model, prompt_ids: list[int], prefixes: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Warped p [P, V] of the token after prompt + each prefix ([P, L])."""
    prompt = torch.tensor(prompt_ids).expand(len(prefixes), -1)
    logits = model.model(torch.cat([prompt, prefixes], dim=1), logits_to_keep=1).logits[:, -1]  # [P, V]
    return warp(logits, params)


def exact_pair(target, draft, case: str) -> tuple["Exact", "Exact"]:
    """(the target's exact distributions, the draft's) for a SAMPLING case."""
    params = SamplingParams(**SAMPLING[case])
    prompt = target.encode(PROMPT)
    return exact_distributions(target, prompt, params), exact_distributions(draft, prompt, params)


def tested_cells(outputs: list[list[int]], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(joint cell of tokens 1 and 2, cell of token LATER) of each output, padded with none (V)."""
    padded = np.array([tokens + [vocab] * (MAX_NEW_TOKENS - len(tokens)) for tokens in outputs])  # [N, n]
    assert padded.shape[1] == MAX_NEW_TOKENS, "an output is longer than max_new_tokens"
    return padded[:, 0] * (vocab + 1) + padded[:, 1], padded[:, LATER - 1]


def assert_exact(outputs: list[list[int]], target: Exact, draft: Exact, vocab: int, max_tv: float) -> None:
    """Tokens 1–2 (joint) and token LATER pass chi-square against the target (p > ALPHA), each
    test detecting any shift of TV max_tv with ≥ 90% probability; the joint fails against the
    draft's distribution (p < NEGATIVE_ALPHA): the negative control on the same samples."""
    joint, later = tested_cells(outputs, vocab)
    assert detectable_tv(target.joint, len(outputs)) < max_tv
    assert detectable_tv(target.later, len(outputs)) < max_tv
    assert chi_square_p_value(joint, target.joint) > ALPHA
    assert chi_square_p_value(later, target.later) > ALPHA
    assert chi_square_p_value(joint, draft.joint) < NEGATIVE_ALPHA


def assert_not_exact(outputs: list[list[int]], target: Exact, vocab: int) -> None:
    """A deliberately broken sampler's outputs fail one of the two tests (p < NEGATIVE_ALPHA)."""
    joint, later = tested_cells(outputs, vocab)
    assert min(chi_square_p_value(joint, target.joint), chi_square_p_value(later, target.later)) < NEGATIVE_ALPHA


# ---------------------------------------------------------------- what speculation did


@dataclass(frozen=True)
class ChainRound:
    """One chain round as the statistics report it."""

    drafted: int  # draft tokens proposed
    accepted: int  # of those, accepted
    allowed: int  # the most it could draft: the policy's limit, capped by the tokens still to emit

    @property
    def rejected_mid_chain(self) -> bool:  # a chain of 3 or more, accepted part-way
        return self.drafted >= 3 and 0 < self.accepted < self.drafted

    @property
    def stopped_early(self) -> bool:  # the stop policy ended the chain before its limit
        return 0 < self.drafted < self.allowed


def chain_rounds(rounds, max_len: int, max_new_tokens: int = MAX_NEW_TOKENS) -> list[ChainRound]:
    """rounds: (drafted, accepted, emitted) per round, in order. A chain round may draft at most
    min(max_len, tokens still to emit − 1): the round emits one more than it accepts."""
    out, emitted_before = [], 0
    for drafted, accepted, emitted in rounds:
        out.append(ChainRound(drafted, accepted, min(max_len, max_new_tokens - emitted_before - 1)))
        emitted_before += emitted
    return out


def rejected_mid_tree(result: VerifyResult) -> bool:
    """The walk accepted at least one node, then rejected every child of a node below the root."""
    return bool(result.accepted_tokens) and result.accepted_rank[-1] == 0 and result.num_children[-1] > 0
