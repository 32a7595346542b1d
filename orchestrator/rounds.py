"""The round core: one request's validation and one session's rounds, as pure state. No I/O.

Both session loops drive it: the in-process engine (``engine.py``, workers called directly) and
the gRPC pipeline (``pipeline.py``, workers over the network, tokens committed to Redis). Per
round a driver asks ``SessionRounds.plan()`` what to draft (a tree shape, or None for a plain
K = 0 step) under which budget, runs the draft and the verify pass however it reaches the
workers, and hands the round's report and what it waited for it to ``commit()``, which emits
tokens through the stop rules and updates the draft-length policy, the planner and its cost
statistics. As vLLM v1's scheduler → model runner → rejection sampler (its
``update_from_output``), the drivers only move data.

A chain is a tree of width one: there is one chain path (drafted level by level, verified by the
tree walk, which on a chain is exactly Chen et al.'s rule), shared with trees and the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from orchestrator.acceptance import AcceptanceStats
from orchestrator.round_planner import LinkStats, RoundPlanner
from orchestrator.sequoia import TreeShape
from specgrove.budget import DraftBudget
from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.output import GenerationOutput
from specgrove.sampling import SamplingParams
from specgrove.round import RoundReport

MODES = ("ar", "chain", "tree")
MAX_DRAFT_LEN = 32
MAX_TREE_SIZE, MAX_TREE_DEPTH = 128, 12
PLANNED_DEPTH = 8  # the deepest tree the planner draws when the depth is not pinned


@dataclass(frozen=True)
class Speculation:
    """How a request speculates. mode: ar (K = 0), chain (at most draft_len tokens), tree (the
    planner's Sequoia tree; tree_budget / tree_depth pin its size / depth; shape pins the tree
    itself, for tests and calibration). adaptive: the planner picks each chain round's length in
    0 .. draft_len by goodput (plain steps when the draft does not pay on this text or the batch
    makes it a loss); a request that names its draft length gets exactly that, so a seeded
    request is reproducible whatever the load."""

    mode: str = "chain"
    draft_len: int = 4
    tree_budget: int | None = None
    tree_depth: int | None = None
    shape: TreeShape | None = None
    adaptive: bool = True

    def validated(self, can_draft: bool = True, grows_trees: bool = True) -> "Speculation":
        """Check ranges (raising InvalidArgument / OutOfRange); without a drafter, mode ar."""
        if self.mode not in MODES:
            raise InvalidArgument("speculation.mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.draft_len <= MAX_DRAFT_LEN:
            raise OutOfRange("speculation.draft_len", f"must be in [0, {MAX_DRAFT_LEN}], got {self.draft_len}")
        if self.tree_budget is not None and not 1 <= self.tree_budget <= MAX_TREE_SIZE:
            raise OutOfRange("speculation.tree_budget", f"must be in [1, {MAX_TREE_SIZE}], got {self.tree_budget}")
        if self.tree_depth is not None and not 1 <= self.tree_depth <= MAX_TREE_DEPTH:
            raise OutOfRange("speculation.tree_depth", f"must be in [1, {MAX_TREE_DEPTH}], got {self.tree_depth}")
        if self.mode == "tree" and can_draft and not grows_trees:
            raise InvalidArgument("draft", "tree mode needs a draft model; this drafter proposes chains only")
        if not can_draft or (self.mode == "chain" and self.draft_len == 0):
            return replace(self, mode="ar")
        return self

    def for_request(self, params: SamplingParams) -> "Speculation":
        """A seeded sampled request is reproducible: its chain length is pinned (by goodput the
        rounds, and so the random draws, would depend on timing). Greedy output is the target's
        whatever the rounds, so greedy and unseeded requests stay adaptive."""
        if self.adaptive and params.seed is not None and not params.greedy:
            return replace(self, adaptive=False)
        return self

    @property
    def max_len(self) -> int:
        """The draft-length policy's most tokens (chain) or levels (tree) per round."""
        if self.mode == "tree":
            return self.shape.depth if self.shape is not None else self.tree_depth or PLANNED_DEPTH
        return self.draft_len if self.mode == "chain" else 0

    @property
    def margin(self) -> int:
        """Positions a round may occupy beyond the confirmed tokens (draft nodes in the cache)."""
        if self.mode == "tree":
            return self.shape.size if self.shape is not None else self.tree_budget or 64
        return self.draft_len if self.mode == "chain" else 0

    def to_dict(self) -> dict:
        """JSON-ready (a pinned shape is not stored: only tests and calibration pin one)."""
        return {k: v for k, v in asdict(self).items() if k != "shape"}

    @classmethod
    def from_dict(cls, raw: dict, default_mode: str = "chain", default_draft_len: int = 4) -> "Speculation":
        """From a request's or a stored session's fields; missing ones take the defaults."""
        draft_len = raw.get("draft_len")
        return cls(raw.get("mode") or default_mode, default_draft_len if draft_len is None else int(draft_len),
                   raw.get("tree_budget"), raw.get("tree_depth"), adaptive=bool(raw.get("adaptive", draft_len is None)))


def check_request(prompt: list[int], params: SamplingParams, spec: Speculation, vocab_size: int,
                  max_positions: int) -> SamplingParams:
    """The one request validation: sampling parameters, prompt ids, and the context it needs.
    Returns the parameters as validated."""
    params = params.validate(vocab_size=vocab_size, max_new_tokens_limit=max_positions)
    if not prompt:
        raise InvalidArgument("prompt", "must contain at least one token")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise OutOfRange("prompt", f"token ids must be in [0, {vocab_size})")
    needed = len(prompt) + params.max_new_tokens + spec.margin
    if needed > max_positions:
        raise OutOfRange("prompt", f"{len(prompt)} prompt tokens + max_new_tokens {params.max_new_tokens} + draft "
                                   f"margin {spec.margin} = {needed} exceeds the target's context of {max_positions}")
    return params


@dataclass(frozen=True)
class RoundPlan:
    step: int  # the round's number in the session (1 for the first)
    shape: TreeShape | None  # what to draft; None = a plain decoding step (K = 0)
    budget: DraftBudget  # where branches end (max_len already capped by the tokens still to emit)
    reason: str  # the planner's: plan | probe | measure | fixed | ar | load


@dataclass(frozen=True)
class RoundOutcome:
    step: int
    index: int  # where the emitted tokens start in the output
    emitted: list[int]  # accepted tokens plus the recovered / bonus one, cut by a stop rule
    text: str  # text released by this round (held back while it could still change)
    drafted: int  # draft tokens (tree nodes) verified this round
    accepted: int
    depth: int  # levels drafted
    draft_limit: int  # the policy's max_len for this round
    lam: float | None  # AdaEDL's λ for this round
    finish_reason: str | None  # set when a stop rule fired


class SessionRounds:
    """One session's rounds. ``output`` already holds the confirmed tokens (a resumed session
    replays them into it); ``step`` counts the rounds committed before."""

    def __init__(self, spec: Speculation, output: GenerationOutput, planner: RoundPlanner, policy, step: int = 0):
        self.spec, self.output, self.planner, self.policy = spec, output, planner, policy
        self.step = step
        self._budget: DraftBudget | None = None

    @property
    def finish_reason(self) -> str | None:
        return self.output.finish_reason

    def plan(self) -> RoundPlan:
        assert self.output.finish_reason is None, "the session has finished"
        choice = self.planner.next()
        budget = self._budget = self.policy.budget()
        room = self.output.max_new_tokens - len(self.output.token_ids) - 1  # a round emits accepted + 1
        limit = min(budget.max_len, room)  # drafts past the tokens still to emit would be wasted
        shape = choice.shape
        if shape is None or limit <= 0:
            return RoundPlan(self.step + 1, None, budget, choice.reason)
        if self.spec.mode == "tree":
            return RoundPlan(self.step + 1, shape.within_depth(limit), replace(budget, max_len=limit), choice.reason)
        limit = min(limit, shape.size)  # the planner's chain length (goodput), or draft_len
        costs = self.planner.link.round_costs(limit, loaded=self.spec.adaptive)  # pinned: load-blind, reproducible
        return RoundPlan(self.step + 1, TreeShape.chain(limit), replace(budget, max_len=limit, pass_costs=costs),
                         choice.reason)

    def commit(self, plan: RoundPlan, report: RoundReport, waited_ms: float | None = None) -> RoundOutcome:
        """Take the round's verdict: emit through the stop rules, then learn from it. ``waited_ms``:
        what the driver waited for the round (None: do not learn its costs, as of a prefill);
        with the costs the round reports, it feeds the planner's link statistics."""
        assert plan.step == self.step + 1, (plan.step, self.step)
        result, drafted, depth = report.result, report.tree_size, report.tree_depth
        index = len(self.output.token_ids)
        emitted = []
        for token in result.accepted_tokens + [result.next_token]:
            emitted.append(token)
            if self.output.add(token):
                break
        accepted = len(result.accepted_tokens)
        if drafted:
            self.policy.observe(depth if self.spec.mode == "tree" else drafted, accepted)
            self.planner.observe(result)
        if waited_ms is not None:
            self._learn_costs(report, waited_ms)
        self.step = plan.step
        budget = self._budget or plan.budget
        return RoundOutcome(plan.step, index, emitted, self.output.release(), drafted, accepted, depth,
                            budget.max_len, budget.lam, self.output.finish_reason)


    def _learn_costs(self, report: RoundReport, waited_ms: float) -> None:
        t, link = report.timing, self.planner.link
        link.observe_load(t.sessions, t.pass_tokens)
        link.observe_pass(t.pass_rows, t.verify_ms)
        if report.tree_size:
            link.observe_tree(waited_ms, t.draft_ms, t.verify_ms, report.tree_size, report.tree_depth, t.tree_bytes,
                              t.overlap_ms)
        else:
            link.observe_plain(waited_ms, t.verify_ms)


def planner_for(spec: Speculation, link: LinkStats, shared: AcceptanceStats) -> RoundPlanner:
    """A session's planner: it starts from the shared acceptance estimate and feeds it."""
    own = AcceptanceStats(shared.vector(), prior_weight=shared.prior_weight)
    return RoundPlanner(spec.mode, link, own, draft_len=spec.draft_len, fixed_size=spec.tree_budget,
                        fixed_depth=spec.tree_depth, fixed_shape=spec.shape, shared=shared, adaptive=spec.adaptive)
