"""The in-process session loop: the round core (rounds.py) driving a drafter worker and a
verifier worker directly, the same workers the gRPC roles serve (no transport in between).

One round = the planner's tree (a chain of K, a Sequoia tree, or nothing: a plain K = 0 step)
is drawn level by level by the drafter from its own KV cache, the target scores the root and
every node in one forward pass, and rejection sampling keeps the accepted path plus one
recovered or bonus token. Each round's randomness comes from generators keyed by (seed, round,
worker), as on the served path, so a seeded request gives the same tokens in process and served.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from drafter.round import draft_round
from drafter.worker import DrafterWorker
from orchestrator.acceptance import AcceptanceStats
from orchestrator.local_verifier import LocalVerifier
from orchestrator.round_planner import DEFAULT_PRIOR_ACCEPTANCE, LinkStats
from orchestrator.rounds import RoundPlan, SessionRounds, Speculation, check_request, planner_for
from orchestrator.sequoia import TreeShape
from orchestrator.stop_policy import StaticPolicy
from specgrove.errors import InvalidArgument
from specgrove.models import CausalLM
from specgrove.output import GenerationOutput
from specgrove.proposal import Drafter
from specgrove.round import DraftOrder, Round, RoundReport, RoundTiming
from specgrove.sampling import SamplingParams, make_generator
from specgrove.tree import VerifyResult
from verifier.worker import VerifierWorker, empty_tree


@dataclass
class RoundStats:
    num_drafted: int  # draft tokens proposed this round (K, or fewer when the drafter had less)
    num_accepted: int  # of those, accepted by the target
    num_emitted: int  # tokens that reached the output (accepted + 1, fewer if a stop rule cut it)
    draft_limit: int = 0  # the policy's most draft tokens (chain) or levels (tree) for this round
    lam: float | None = None  # AdaEDL's threshold λ used for this round
    verdict: VerifyResult | None = None  # the round's verification walk (tests read it)


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
        """vLLM's acceptance length: 1 + accepted draft tokens per round that drafted (1 if none did)."""
        drafting = [r for r in self.rounds if r.num_drafted]
        return 1 + sum(r.num_accepted for r in drafting) / max(1, len(drafting)) if self.rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens emitted per target verify pass, plain K = 0 rounds included."""
        return sum(r.num_emitted for r in self.rounds) / len(self.rounds) if self.rounds else 0.0

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
            "tokens_per_round": round(self.tokens_per_round, 4),
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
        self, target: CausalLM, drafter: Drafter | None = None, draft_len: int = 4, tree: TreeShape | None = None,
        policy_factory=None, *, speculation: Speculation | None = None, link: LinkStats | None = None,
        acceptance: AcceptanceStats | None = None,
    ):
        """Chain mode with draft_len K exactly (0 = plain decoding); tree mode pinned to ``tree``'s
        shape; or any ``speculation`` (the planner's trees, pinned sizes, goodput-sized chains...). link: measured costs (a
        calibration profile's) for the tree planner, else it measures them itself; acceptance:
        the estimate shared by this engine's generations (a prior until verify results arrive).

        policy_factory(max_len) makes each generation's draft-length policy (stop_policy.py);
        the default drafts exactly K tokens (or the tree's full depth).
        """
        if speculation is None:
            speculation = (Speculation("tree", shape=tree) if tree is not None
                           else Speculation("chain", draft_len, adaptive=False))  # a named K is pinned
        self.speculation = speculation.validated(drafter is not None, getattr(drafter, "grows_trees", False))
        if drafter is not None and drafter.vocab_size != target.vocab_size:
            raise InvalidArgument(
                "draft", f"draft has {drafter.vocab_size} logits but the target has {target.vocab_size}"
            )
        self.target = target
        self.drafter = drafter
        self.policy_factory = policy_factory or StaticPolicy
        self.link = link or LinkStats(min_rows=getattr(target, "min_pass_rows", 1))
        self.acceptance = acceptance or AcceptanceStats(list(DEFAULT_PRIOR_ACCEPTANCE))
        feeds = getattr(drafter, "needs_features", False)
        self.verifier = VerifierWorker(target, keep_features=feeds)
        self.drafts = DrafterWorker(drafter, text=target) if drafter is not None else None
        self._port = LocalVerifier(self.verifier)

    @property
    def draft_len(self) -> int:
        return self.speculation.max_len

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Validate before any model work; raise InvalidArgument / OutOfRange."""
        check_request(prompt_ids, params, self.speculation, self.target.vocab_size, self.target.max_positions)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Validate now (raising before any model work), then return the generation to iterate."""
        self.check_request(prompt_ids, params)
        _, seed = make_generator(params.seed)
        result = GenerationResult([], "", "", seed, len(prompt_ids))
        return Generation(result, self._rounds(list(prompt_ids), params, result))

    def _rounds(self, prompt: list[int], params: SamplingParams, result: GenerationResult) -> Iterator[Chunk]:
        """Run rounds until a stop rule fires, yielding one Chunk per round and filling result."""
        start = time.perf_counter()
        session_id = uuid.uuid4().hex
        output = GenerationOutput(self.target.decode, self.target.eos_token_ids, params)
        spec = self.speculation.for_request(params)
        core = SessionRounds(spec, output, planner_for(spec, self.link, self.acceptance), self.policy_factory(spec.max_len))
        try:
            while core.finish_reason is None:
                plan = core.plan()
                r = Round(session_id, plan.step, tuple(prompt + output.token_ids), params, result.seed, len(prompt))
                report, waited_ms = self._round(r, plan)
                outcome = core.commit(plan, report, waited_ms)
                stats = RoundStats(outcome.drafted, outcome.accepted, len(outcome.emitted), outcome.draft_limit,
                                   outcome.lam, report.result)
                result.rounds.append(stats)
                now = time.perf_counter()
                result.ttft_s = result.ttft_s or now - start
                result.token_ids, result.text = output.token_ids, output.text
                result.finish_reason = output.finish_reason or ""
                result.elapsed_s = now - start
                yield Chunk(outcome.emitted, outcome.text, stats)
        finally:
            self.verifier.release(session_id)
            if self.drafts is not None:
                self.drafts.release(session_id)

    def _round(self, r: Round, plan: RoundPlan) -> tuple[RoundReport, float]:
        """Draft the plan's tree and verify it (``draft_round``, as a served drafter does), or step
        plainly: (the round's report, what the round waited for its levels and its verdict).
        With no hops, what it holds beyond draft and verify is the wait for the batched passes (a
        session that drafts while the others step plainly misses their pass). A feature draft's
        catch-up after plain steps is left out: it is the cost of switching to drafting, not of
        drafting, and counting it against every chain kept the planner switching."""
        if plan.shape is not None and self.drafts is not None:
            report = draft_round(self.drafts, DraftOrder(r, plan.shape.parents, plan.budget), self._port)
            return report, report.timing.round_ms
        started = time.perf_counter()
        verdict = self.verifier.verify(r, empty_tree())
        timing = RoundTiming(verify_ms=verdict.verify_ms, pass_rows=verdict.pass_rows)
        timing.sessions, timing.pass_tokens = self.verifier.load
        return RoundReport(verdict.result, timing=timing), (time.perf_counter() - started) * 1000

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
