"""Guessed draft-ahead (issue 16): the next round drawn before this round's verdict is in.

A chain round d_1..d_K ends in one of K + 1 verdicts: j tokens accepted (j = 0..K), then one more
token x (the target's correction, or its bonus token after a full accept). While the verifier
checks the chain, the drafter draws the next round under the verdicts the draft itself deems most
likely (``likely_verdicts``: "j accepted" as likely as q(d_1) ⋯ q(d_j), then x by q(x)), or under
``width`` guesses per j: x_j one of the draft's best tokens other than d_{j+1} at depth j (after
d_K for j = K). The verifier holds the
guesses and, when the verdict equals one of them, verifies that guess's tree as the next round at
once: the drafter's draft time and both hops between them drop out of the round.

All guesses are grown as one token tree on a copy of the session's draft cache (``fork``): the
chain's nodes, the x_j as siblings of d_{j+1}, and under each x_j its chain, one pass per level.
A guessed round's pairs after the confirmed context read the draft's own features (F̂), since the
target's have not been computed yet; its q is exactly what its tokens were sampled from, so
verification stays exact whatever the guesses are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import torch

from drafter.tree_growth import Level, _steps
from specgrove.budget import DraftBudget
from specgrove.sampling import SamplingParams


@dataclass(frozen=True)
class Guess:
    emitted: list[int]  # the guessed verdict: d_1..d_j, then x_j
    levels: list[Level]  # the next round's chain after it, one node per level (q rows of its own tree)


def guess_steps(
    session, context: list[int], chain: list[int], params: SamplingParams, generator: torch.Generator | None,
    max_lens: list[int], budget: DraftBudget | None = None, width: int = 1, count: int | None = None,
) -> Generator[object, object, list[Guess]]:
    """Steps (the passes it asks for, as ``ModelDraftSession.grow``'s) that return the guesses
    for the round after ``chain`` (drafted after ``context``). ``session``: a draft session on its
    own (forked) cache, which these passes fill with tree nodes. max_lens[j]: the most tokens the
    next round may draft when this one accepts j (0: no guess for j). width: the guesses per j,
    the draft's ``width`` best tokens other than d_(j+1), best first. count: instead, the ``count``
    verdicts the draft deems most likely over all j (``likely_verdicts``), chosen once the logits
    after d_K are known. The budget's stop rule ends a guessed chain as it ends a drafted one.

    One pass per tree level: a node's input is its parent's output. The chain's nodes and q's
    logits after them are reused when the cache still holds them from the round's own drawing
    (a feature draft's ``drawn_chain_logits``); otherwise the chain is fed again node by node.
    With ``width``, each x_j and its chain start as soon as the logits after d_j are known; with
    ``count``, every guess starts once the logits after d_K are (one more pass before them)."""
    k = len(chain)
    assert len(max_lens) == k + 1, (len(max_lens), k)
    sequence = session.sequence
    nodes: list[int] = []
    parents: list[int] = []
    roles: list[tuple] = []  # per node: ("d", j) the chain's d_j, or ("g", (j, i)) guess (j, i)'s tail
    emitted: dict[tuple[int, int], list[int]] = {}
    levels: dict[tuple[int, int], list[Level]] = {}

    def add(token: int, parent: int, role: tuple) -> None:
        nodes.append(token)
        parents.append(parent)
        roles.append(role)

    def start(j: int, i: int, x: int, here: int) -> None:
        emitted[j, i] = chain[:j] + [x]
        levels[j, i] = []
        add(x, here, ("g", (j, i)))

    known: list[tuple[torch.Tensor, int]] = []  # count: the logits after d_1..d_j and d_j's node, per j

    def after_chain(j: int, logits: torch.Tensor, here: int) -> None:
        """The logits after d_1..d_j are known (``here``: d_j's node; −1, the root, for j = 0)."""
        if j < k and not any(role == ("d", j + 1) for role in roles):
            add(chain[j], here, ("d", j + 1))
        if count is not None:
            known.append((logits, here))
            if j == k:  # every verdict's probability is known: the most likely ones are guessed
                picks = likely_verdicts([row for row, _ in known], chain, count, max_lens)
                for i, (j_, x) in enumerate(picks):
                    start(j_, i, x, known[j_][1])
        elif max_lens[j] > 0:
            for i, x in enumerate(_best_others(logits, chain[j] if j < k else None, width)):
                start(j, i, x, here)

    def after_guess(j: tuple[int, int], logits: torch.Tensor, node: int) -> None:
        """Guess j's deepest node (``node``) has its logits: draw its next token."""
        ids, probs, picked, q = session._children(logits, 1, params, generator)
        if not picked:  # nothing the draft may propose here
            return
        depth = len(levels[j]) + 1
        levels[j].append(Level([picked[0]], [depth - 2], {depth - 1: (ids, probs)}))
        if depth < max_lens[j[0]] and not (budget is not None and budget.stops(logits, q, params.greedy)):
            add(picked[0], node, ("g", j))

    drawn = getattr(sequence, "drawn_chain_logits", lambda *args: None)(context, chain)
    if drawn is None:  # feed the context's last pair again; the chain follows node by node
        drawn = [(yield from _steps(sequence, "logits_for", context, 1))[0]]
    for j in range(1, len(drawn)):  # d_1..d_m are cached nodes already (the round's own drawing)
        add(chain[j - 1], j - 2, ("d", j))
    for j, logits in enumerate(drawn):
        after_chain(j, logits, j - 1)
    first = len(drawn) - 1
    while first < len(nodes):
        last = len(nodes)
        rows = yield from _steps(sequence, "tree_logits", context, nodes, parents, first, last, False)
        for node, logits in zip(range(first, last), rows):
            kind, j = roles[node]
            if kind == "d":
                after_chain(j, logits, node)
            else:
                after_guess(j, logits, node)
        first = last
    return [Guess(emitted[j], levels[j]) for j in sorted(levels) if levels[j]]


def likely_verdicts(logits: list[torch.Tensor], chain: list[int], count: int,
                    max_lens: list[int] | None = None) -> list[tuple[int, int]]:
    """The ``count`` verdicts (j, x) of a chain round the draft deems most likely, most likely
    first: logits[j] are the draft's logits after d_1..d_j (j = 0..K), and with q = softmax at
    T = 1 the verdict "j accepted, then x" (x other than d_(j+1)) scores
    q_0(d_1) ⋯ q_(j−1)(d_j) · q_j(x). Verdicts with max_lens[j] = 0 are skipped."""
    scored, reach = [], 1.0
    for j, row in enumerate(logits):
        q = torch.softmax(row.float(), -1)
        if max_lens is None or max_lens[j] > 0:
            scored += [(reach * float(q[x]), j, x) for x in _best_others(row, chain[j] if j < len(chain) else None, count)
                       if q[x] > 0]
        if j < len(chain):
            reach *= float(q[chain[j]])
    scored.sort(key=lambda s: -s[0])
    return [(j, x) for _, j, x in scored[:count]]


def _best_others(logits: torch.Tensor, drafted: int | None, n: int) -> list[int]:
    """The n tokens with the highest ``logits`` other than ``drafted`` (None: any), best first;
    never one the draft may not propose (−inf)."""
    other = logits.clone()
    if drafted is not None:
        other[drafted] = float("-inf")
    best = other.topk(min(n, other.numel()))
    return best.indices[best.values > float("-inf")].tolist()
