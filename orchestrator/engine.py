"""The in-process speculative decoding loop: draft, verify, emit, until a stop rule fires.

One round = the drafter proposes up to K tokens (chain) or a token tree (tree mode) from its own
KV cache, the target scores every proposed position in one forward pass, and rejection sampling
keeps the accepted path plus one recovered or bonus token. K = 0 (no drafter) is plain
autoregressive decoding through the chain path. Each generation owns one seeded
``torch.Generator``, so a seeded request is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from orchestrator.stop_policy import StaticPolicy
from orchestrator.tree_plan import TreePlan
from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.grammar import for_session
from specgrove.models import CausalLM
from specgrove.output import GenerationOutput
from specgrove.proposal import Drafter, Proposal
from specgrove.sampling import SamplingParams, make_generator
from verifier.target import TargetSession

MAX_DRAFT_LEN = 32


@dataclass
class RoundStats:
    num_drafted: int  # draft tokens proposed this round (K, or fewer when the drafter had less)
    num_accepted: int  # of those, accepted by the target
    num_emitted: int  # tokens that reached the output (accepted + 1, fewer if a stop rule cut it)
    draft_limit: int = 0  # the policy's most draft tokens (chain) or levels (tree) for this round
    lam: float | None = None  # AdaEDL's threshold λ used for this round


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    seed: int
    prompt_tokens: int
    rounds: list[RoundStats] = field(default_factory=list)
    elapsed_s: float = 0.0  # from the request to the last token, prefill included
    ttft_s: float = 0.0  # time to the first token

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.num_generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """vLLM's acceptance length: tokens per target verify pass (1 + accepted drafts)."""
        return sum(r.num_accepted + 1 for r in self.rounds) / len(self.rounds) if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(r.num_drafted for r in self.rounds)
        return sum(r.num_accepted for r in self.rounds) / drafted if drafted else 0.0

    def summary(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "num_generated_tokens": self.num_generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 4),
            "ttft_ms": round(self.ttft_s * 1000, 2),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "num_rounds": len(self.rounds),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "acceptance_rate": round(self.acceptance_rate, 4),
            "num_draft_tokens": sum(r.num_drafted for r in self.rounds),
            "num_accepted_tokens": sum(r.num_accepted for r in self.rounds),
            "draft_len": _stats([r.num_drafted for r in self.rounds]),
            "adaedl_lambda": _stats([r.lam for r in self.rounds if r.lam is not None]),
        }


def _stats(values: list[float]) -> dict | None:
    """Summary statistics of a per-round series (None when empty)."""
    if not values:
        return None
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values),
            "first": values[0], "last": values[-1]}


@dataclass
class Chunk:
    """What one round adds to the stream."""

    token_ids: list[int]
    text: str
    stats: RoundStats


class SpeculativeEngine:
    def __init__(
        self, target: CausalLM, drafter: Drafter | None = None, draft_len: int = 4, tree: TreePlan | None = None,
        policy_factory=None,
    ):
        """Chain mode with draft_len K (0 = plain decoding); tree mode when a TreePlan is given.

        policy_factory(max_len) makes each generation's draft-length policy (stop_policy.py);
        the default drafts exactly K tokens (or the tree's full depth).
        """
        if tree is not None:
            if not getattr(drafter, "grows_trees", False):
                raise InvalidArgument("draft", "tree mode needs a draft model; this drafter proposes chains only")
            draft_len = tree.max_depth
        if drafter is None:
            draft_len = 0
        if not 0 <= draft_len <= MAX_DRAFT_LEN:
            raise OutOfRange("draft_len", f"must be in [0, {MAX_DRAFT_LEN}], got {draft_len}")
        if drafter is not None and drafter.vocab_size != target.vocab_size:
            raise InvalidArgument(
                "draft", f"draft has {drafter.vocab_size} logits but the target has {target.vocab_size}"
            )
        self.target = target
        self.drafter = drafter
        self.draft_len = draft_len
        self.tree = tree
        self.policy_factory = policy_factory or StaticPolicy

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Validate before any model work; raise InvalidArgument / OutOfRange."""
        params.validate(vocab_size=self.target.vocab_size, max_new_tokens_limit=self.target.max_positions)
        if not prompt_ids:
            raise InvalidArgument("prompt", "must contain at least one token")
        if any(not 0 <= t < self.target.vocab_size for t in prompt_ids):
            raise OutOfRange("prompt", f"token ids must be in [0, {self.target.vocab_size})")
        needed = len(prompt_ids) + params.max_new_tokens + self.draft_len
        if needed > self.target.max_positions:
            raise OutOfRange(
                "prompt",
                f"{len(prompt_ids)} prompt tokens + max_new_tokens {params.max_new_tokens} + draft length "
                f"{self.draft_len} = {needed} exceeds the target's context of {self.target.max_positions}",
            )

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> "Generation":
        """Validate now (raising before any model work), then return the generation to iterate."""
        self.check_request(prompt_ids, params)
        generator, seed = make_generator(params.seed)
        result = GenerationResult([], "", "", seed, len(prompt_ids))
        return Generation(result, self._rounds(prompt_ids, params, generator, result))

    def _rounds(
        self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator, result: GenerationResult
    ) -> Iterator[Chunk]:
        """Run rounds until a stop rule fires, yielding one Chunk per round and filling result."""
        start = time.perf_counter()
        output = GenerationOutput(self.target.decode, self.target.eos_token_ids, params)
        feeds_features = getattr(self.drafter, "needs_features", False)
        target = TargetSession(self.target, keep_features=feeds_features)
        draft = self.drafter.open() if self.drafter is not None else None
        policy = self.policy_factory(self.draft_len)
        tree_plan = self.tree.for_session() if self.tree is not None else None
        target.constraint = for_session(params.grammar, self.target.tokenizer, self.target.vocab_size, len(prompt_ids))
        if draft is not None and hasattr(draft, "constraint"):
            draft.constraint = target.constraint  # drafts follow the grammar too
        context = list(prompt_ids)
        while output.finish_reason is None:
            budget = policy.budget()
            if feeds_features:  # the target's features of the confirmed context (all but the last token)
                draft.set_features(target.features(min(len(context) - 1, len(target.sequence.tokens))))
            if tree_plan is not None:
                new_tokens, num_drafted, num_accepted, depth = self._tree_round(
                    context, draft, target, params, generator, budget, tree_plan
                )
                policy.observe(depth, num_accepted)  # per level: the chain analogue of acceptance
            else:
                new_tokens, num_drafted, num_accepted = self._chain_round(
                    context, draft, target, params, generator, budget,
                    room=params.max_new_tokens - len(output.token_ids) - 1,
                )
                policy.observe(num_drafted, num_accepted)
            emitted = []
            for token in new_tokens:
                emitted.append(token)
                if output.add(token):
                    break
            context.extend(emitted)
            stats = RoundStats(num_drafted, num_accepted, len(emitted), budget.max_len, budget.lam)
            result.rounds.append(stats)
            delta = output.release()
            now = time.perf_counter()
            if len(result.rounds) == 1:
                result.ttft_s = now - start
            result.token_ids, result.text = output.token_ids, output.text
            result.finish_reason = output.finish_reason or ""
            result.elapsed_s = now - start
            yield Chunk(emitted, delta, stats)

    def _chain_round(self, context, draft, target, params, generator, budget, room: int):
        k = min(budget.max_len, room)  # drafts beyond the remaining token budget would be wasted
        if draft is not None and k > 0:
            proposal = draft.propose(context, k, params, generator, budget)
        else:
            proposal = Proposal.empty(self.target.vocab_size)
        num_accepted, next_token = target.verify(context, proposal, params, generator)
        return proposal.tokens[:num_accepted] + [next_token], len(proposal.tokens), num_accepted

    def _tree_round(self, context, draft, target, params, generator, budget, tree_plan):
        shape = tree_plan.shape()
        tree = draft.propose_tree(context, list(shape.parents), params, generator, budget)
        result = target.verify_tree(context, tree, params, generator)
        draft.accept(result)
        tree_plan.observe(result)
        depth = max(tree.depths(), default=0)
        return result.accepted_tokens + [result.next_token], tree.size, len(result.accepted_tokens), depth

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult:
        generation = self.stream(prompt_ids, params)
        for _ in generation:
            pass
        return generation.result


class Generation:
    """A request in progress: iterate it for one Chunk per round; ``result`` fills in as it runs."""

    def __init__(self, result: GenerationResult, chunks: Iterator[Chunk]):
        self.result = result
        self._chunks = chunks

    def __iter__(self) -> Iterator[Chunk]:
        return self._chunks
