"""A draft model growing a token tree (one batched pass per level, tree attention; a chain is a
tree of width one) on its own KV cache, with q warped exactly like p."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterator

import torch

from drafter.ngram import lookup
from specgrove.budget import DraftBudget
from specgrove.grammar import Constraint, constrain
from specgrove.models import CachedSequence, CausalLM
from specgrove.sampling import SamplingParams, sample_without_replacement, truncate_top_n, warp
from specgrove.tree import TokenTree, VerifyResult, children_of

DEFAULT_TOP_N = 64  # the proposal q is truncated to its top-N tokens (exactness holds regardless)
LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM = 3, 2  # prompt lookup in front of the model: match 3- then 2-grams


class ModelDrafter:
    grows_trees = True

    def __init__(self, model: CausalLM, top_n: int = DEFAULT_TOP_N, lookup: bool = False):
        """lookup: try prompt lookup first (the n-gram drafter's continuation, one-hot q) and run
        the model only when the context has no match; chains only (trees always use the model)."""
        self.model = model
        self.name = f"ngram+{model.name}" if lookup else model.name
        self.vocab_size = model.vocab_size
        self.top_n = top_n
        self.lookup = lookup

    def open(self) -> "ModelDraftSession":
        return ModelDraftSession(CachedSequence(self.model), self.top_n, self.lookup)


class ModelDraftSession:
    def __init__(self, sequence: CachedSequence, top_n: int, lookup: bool = False):
        self.sequence = sequence
        self.top_n = top_n
        self.lookup = lookup
        self.constraint: Constraint | None = None  # structured output: q is masked like p

    def _looked_up(self, context: list[int], max_tokens: int) -> list[int]:
        return lookup(context, max_tokens, LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM) if self.lookup else []

    def propose_tree(
        self, context: list[int], shape_parents: list[int], params: SamplingParams, generator: torch.Generator,
        budget: DraftBudget | None = None,
    ) -> TokenTree:
        """Grow a tree shaped like the planner's (shape_parents: parent of each shape node, −1 =
        the root). Nodes whose q has too small a support get fewer children; with a budget, nodes
        at its depth limit or drafted from a q that fails its stop test get none (dynamic trees)."""
        return tree_from_levels(list(self.grow_levels(context, shape_parents, params, generator, budget)))

    def grow_levels(
        self, context: list[int], shape_parents: list[int], params: SamplingParams, generator: torch.Generator,
        budget: DraftBudget | None = None,
    ) -> Iterator[Level]:
        """``propose_tree`` one level at a time, each yielded as soon as it is drawn (so a remote
        drafter can stream a level while it computes the next). Passes run here, one session alone."""
        return inline(self.grow(context, shape_parents, params, generator, budget))

    def grow(
        self, context: list[int], shape_parents: list[int], params: SamplingParams, generator: torch.Generator,
        budget: DraftBudget | None = None,
    ) -> Generator[object, object, None]:
        """``grow_levels`` as steps: it yields each ``Level`` as it is drawn, and each forward pass a
        batchable draft asks for (a ``Feed``: drafter/batching.py runs several sessions' feeds in
        one pass and sends each its result back); other drafts run their passes themselves."""
        if all(p == i - 1 for i, p in enumerate(shape_parents)):  # a chain: prompt lookup may serve it
            found = self._looked_up(context, min(len(shape_parents), budget.max_len if budget else len(shape_parents)))
            if found:
                yield one_hot_chain(found)
                return
        tokens: list[int] = []
        parents: list[int] = []
        shape_of: list[int] = []  # realised node -> shape node
        ended: list[bool] = []  # realised node -> its branch ends here (no children)
        depth: list[int] = []
        paths: list[list[int]] = []  # realised node -> its tokens from the root (the grammar's state)
        shape_kids = children_of(shape_parents)  # shape node -> its children, in sampling order
        logits = yield from _steps(self.sequence, "logits_for", context, 1)  # [1, V]: the root
        logits = constrain(logits, self.constraint, context, [[]])
        frontier = [-1]
        while True:
            start = len(tokens)
            q_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row (node + 1) -> (ids, probs)
            for row_logits, node in zip(logits, frontier):
                snode = -1 if node < 0 else shape_of[node]
                want = len(shape_kids.get(snode, []))
                if want == 0 or (node >= 0 and ended[node]):
                    continue
                ids, probs, picked, q = self._children(row_logits, want, params, generator)
                q_rows[node + 1] = (ids, probs)
                child_depth = 1 if node < 0 else depth[node] + 1
                stop = budget is not None and (
                    child_depth >= budget.max_len or budget.stops(row_logits, q, params.greedy)
                )
                for token, child_shape in zip(picked, shape_kids[snode]):
                    tokens.append(token)
                    parents.append(node)
                    shape_of.append(child_shape)
                    ended.append(stop)
                    depth.append(child_depth)
                    paths.append((paths[node] if node >= 0 else []) + [token])
            new = list(range(start, len(tokens)))
            if new:
                yield Level(tokens[start:], parents[start:], q_rows)
            if not new or not any(shape_of[n] in shape_kids and not ended[n] for n in new):
                break
            logits = yield from _steps(self.sequence, "tree_logits", context, tokens, parents, start, len(tokens),
                                       False)
            logits = constrain(logits, self.constraint, context, [paths[n] for n in new])
            frontier = new

    def accept(self, result: VerifyResult) -> None:
        """Compact the draft cache to the accepted path (no recomputation next round)."""
        self.sequence.keep_path(result.accepted_nodes)

    def _children(self, logits: torch.Tensor, want: int, params: SamplingParams, generator: torch.Generator):
        """(support ids, q on them, the picked children, dense q [V] or None when greedy)."""
        if params.greedy:  # verification follows argmax p; the draft's top-k are the best guesses
            want = min(want, int(torch.isfinite(logits).sum()))  # a grammar may allow fewer tokens
            ids = torch.topk(logits, want).indices
            return ids, torch.zeros(len(ids)), ids.tolist(), None
        ids, probs = truncate_top_n(warp(logits, params), self.top_n)
        dense = torch.zeros(logits.shape[-1]).index_put((ids,), probs)
        picked = sample_without_replacement(dense, min(want, len(ids)), generator)
        return ids, probs, picked.tolist(), dense


@dataclass(frozen=True)
class Level:
    """One level of a growing tree: its new nodes and the q rows their children were drawn from."""

    tokens: list[int]  # new nodes, breadth-first
    parents: list[int]  # their parents (−1 = the root), all in earlier levels
    q_rows: dict[int, tuple[torch.Tensor, torch.Tensor]]  # row (parent node + 1) -> (support ids, q)


@dataclass(frozen=True)
class Pass:
    """A forward pass of a draft that runs its own passes (one session's, on its own cache)."""

    call: object
    args: tuple

    def run(self):
        return self.call(*self.args)


def _steps(sequence, call: str, *args):
    """A sequence's call as steps: a batchable one (``call + "_steps"``) yields its feeds; any other
    yields one ``Pass``, which runs alone."""
    steps = getattr(sequence, call + "_steps", None)
    if steps is not None:
        return (yield from steps(*args))
    return (yield Pass(getattr(sequence, call), args))


def inline(steps: Generator) -> Generator:
    """Drive ``steps`` alone: yield its Levels, run each pass it asks for at once; return what
    ``steps`` returns."""
    reply = None
    while True:
        try:
            item = steps.send(reply)
        except StopIteration as done:
            return done.value
        if isinstance(item, Level):
            reply = None
            yield item
        else:
            reply = item.run()


def run_alone(steps: Generator):
    """Drive steps that draw no levels (one sequence call's passes) alone: their return value."""
    try:
        item = next(inline(steps))
    except StopIteration as done:
        return done.value
    raise AssertionError(f"a sequence call drew a level: {item}")


def one_hot_chain(tokens: list[int]) -> Level:
    """A chain proposed with certainty (prompt lookup): each token's q is one-hot on it."""
    return Level(tokens, list(range(-1, len(tokens) - 1)),
                 {i: (torch.tensor([t]), torch.tensor([1.0])) for i, t in enumerate(tokens)})


def tree_from_levels(levels: list[Level]) -> TokenTree:
    tokens = [t for level in levels for t in level.tokens]
    parents = [p for level in levels for p in level.parents]
    q_rows = {row: q for level in levels for row, q in level.q_rows.items()}
    width = max((len(ids) for ids, _ in q_rows.values()), default=1)
    q_ids = torch.full((len(tokens) + 1, width), -1, dtype=torch.long)
    q_probs = torch.zeros(len(tokens) + 1, width)
    for row, (ids, probs) in q_rows.items():
        q_ids[row, : len(ids)], q_probs[row, : len(ids)] = ids, probs
    return TokenTree(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long), q_ids, q_probs)
