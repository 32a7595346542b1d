"""Drafting with the feature-level draft: a cache of draft pairs that reads the target's features.

``FeatureSequence`` offers the same three calls as ``CachedSequence`` (``logits_for``,
``tree_logits``, ``keep_path``), so ``ModelDraftSession`` grows chains and Sequoia trees with it
unchanged. Pair i = (F_{i−1}, x_i) (see feature_model.py). Where the target's F_{i−1} is known
(``set_features``) the pair reads it; beyond that (tokens drafted this round) it reads the
draft's own F̂_{i−1}. Cached pairs built on drafted features are dropped as soon as the target's
own features for them arrive, so every round starts from true features, as EAGLE does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from drafter import feature_model
from drafter.tree_growth import ModelDrafter, ModelDraftSession, run_alone
from specgrove.models import common_prefix_length
from specgrove.tree_mask import node_positions, tree_attention_mask


class NoFeatures(Exception):
    """The target's features of the context are not known yet (before the first verify pass)."""


class FeatureSequence:
    def __init__(self, model: "FeatureDraftModel"):
        self.model = model
        self.draft = model.draft
        self.device = next(self.draft.parameters()).device
        self.features = torch.zeros(0, self.draft.config.hidden_size)  # [n_true, H] the target's F_0..
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None  # [1, kvh, pairs + nodes, D]
        self.tokens: list[int] = []  # x_1.. of the cached pairs
        self.true: list[bool] = []  # whether each cached pair read the target's own feature
        self.outputs = torch.zeros(0, self.draft.config.hidden_size)  # [pairs, H] F̂ of each cached pair
        self.node_tokens: list[int] = []
        self.node_outputs = torch.zeros(0, self.draft.config.hidden_size)  # [nodes, H]
        # q's logits drawn lately: after the cached pairs (None: not drawn since they changed), and
        # after each cached node; guessed draft-ahead reads them instead of feeding the chain again
        self.root_logits: torch.Tensor | None = None  # [V]
        self.node_logits: list[torch.Tensor] = []  # [V] per node, while every node so far had its row

    def set_features(self, features: torch.Tensor) -> None:
        """The target's features F_0..F_{n−1} of the confirmed context ([n, H], any dtype)."""
        assert features.ndim == 2, features.shape
        self.features = features
        self.root_logits = None  # pairs may now read other features

    def ready(self, context: list[int]) -> bool:
        return len(context) >= 2 and len(self.features) >= 1

    def logits_for(self, context: list[int], num_logits: int) -> torch.Tensor:  # [1, V]
        """q's logits for the token after ``context`` (num_logits must be 1)."""
        assert num_logits == 1, "the feature draft scores one position per call"
        return run_alone(self.logits_for_steps(context))

    def tree_logits(self, context: list[int], node_tokens: list[int], parents: list[int], first: int, last: int,
                    with_root: bool) -> torch.Tensor:  # [last − first, V]
        """Feed tree nodes first..last−1 (their parents cached) in one pass with a tree mask."""
        assert not with_root, "the feature draft grows trees after logits_for(context)"
        return run_alone(self.tree_logits_steps(context, node_tokens, parents, first, last, with_root))

    def logits_for_steps(self, context: list[int], num_logits: int = 1):
        """``logits_for`` as steps: each pass is yielded as a ``Feed`` and its result sent back."""
        if not self.ready(context):
            raise NoFeatures("the target's features of the context are not known yet")
        pairs = context[1:]  # pair i holds token x_i (i = 1..len − 1)
        n_true = len(self.features)
        should_be_true = [i < n_true for i in range(len(pairs))]  # pair i+1 reads F_i
        keep = min(common_prefix_length(self.tokens, pairs), common_prefix_length(self.true, should_be_true),
                   len(pairs) - 1)
        self._crop(keep)
        fed_true = min(len(pairs), n_true)
        logits = None
        if keep < fed_true:  # pairs on the target's features: one pass
            feats = self.features[keep:fed_true].to(self.device, torch.float32)
            logits = yield from self._feed(feats, pairs[keep:fed_true], list(range(keep + 1, fed_true + 1)), True,
                                           last=fed_true == len(pairs))
        for i in range(max(keep, fed_true), len(pairs)):  # pairs on drafted features: one at a time
            logits = yield from self._feed(self.outputs[i - 1: i].to(self.device), pairs[i: i + 1], [i + 1], False,
                                           last=i == len(pairs) - 1)
        self.root_logits = logits[-1]
        return logits

    def tree_logits_steps(self, context: list[int], node_tokens: list[int], parents: list[int], first: int,
                          last: int, with_root: bool = False):
        """``tree_logits`` as steps (one ``Feed``)."""
        assert not with_root, "the feature draft grows trees after logits_for(context)"
        pairs = len(context) - 1
        assert self.tokens == context[1:] and len(self.node_tokens) == first, "feed tree levels in order"
        parent_out = torch.cat([self.outputs[-1:], self.node_outputs])  # row 0 = the root's F̂
        feats = parent_out[torch.tensor([p + 1 for p in parents[first:last]])]
        positions = node_positions(len(context), parents)[first:last]
        mask = tree_attention_mask(pairs, 0, parents, first, last)
        out, self.kv, logits = yield Feed(self, feats, node_tokens[first:last], positions, mask, head="all")
        self.node_tokens = node_tokens[:last]
        self.node_outputs = torch.cat([self.node_outputs, out])
        if len(self.node_logits) == first:
            self.node_logits += list(logits)
        return logits

    def drawn_chain_logits(self, context: list[int], chain: list[int]) -> list[torch.Tensor] | None:
        """The logits after context + d_1..d_j for j = 0..m, when this cache holds context's
        pairs and d_1..d_m as a chain of nodes drawn with their rows (m < len(chain)); else None."""
        m = len(self.node_tokens)
        if (self.root_logits is None or self.tokens != context[1:] or m >= len(chain) + 1
                or self.node_tokens != chain[:m] or len(self.node_logits) != m):
            return None
        return [self.root_logits, *self.node_logits]

    def fork(self) -> "FeatureSequence":
        """A copy to draw on without touching this one (guessed draft-ahead): the tensors are
        shared, never written in place, and the lists copied."""
        twin = copy.copy(self)
        twin.tokens, twin.true, twin.node_tokens = list(self.tokens), list(self.true), list(self.node_tokens)
        twin.node_logits = list(self.node_logits)
        return twin

    def keep_path(self, path: list[int]) -> None:
        """After verification: drop every node (their pairs read drafted features; the next round
        feeds the accepted tokens again on the target's own features)."""
        self._crop(len(self.tokens))

    def _feed(self, feats: torch.Tensor, tokens: list[int], positions: list[int], true: bool, last: bool):
        """Pairs after the cached ones, causally; with ``last``, q's logits after the final one."""
        past = len(self.tokens)
        n = len(tokens)
        self.root_logits = None  # until logits_for_steps has fed its last pair
        allowed = torch.ones(n, past + n, dtype=torch.bool).tril(past)
        mask = torch.zeros(n, past + n).masked_fill_(~allowed, torch.finfo(torch.float32).min)[None, None]
        out, self.kv, logits = yield Feed(self, feats, tokens, positions, mask, head="last" if last else None)
        self.tokens += tokens
        self.true += [true] * n
        self.outputs = torch.cat([self.outputs, out])
        return logits

    def _crop(self, pairs: int) -> None:
        """Keep the first ``pairs`` cached pairs; drop later pairs and every node."""
        if pairs < len(self.tokens):
            self.root_logits = None
        if self.kv is not None:
            self.kv = (self.kv[0][:, :, :pairs], self.kv[1][:, :, :pairs])
        self.tokens, self.true = self.tokens[:pairs], self.true[:pairs]
        self.outputs = self.outputs[:pairs]
        self.node_tokens, self.node_outputs, self.node_logits = [], self.node_outputs[:0], []


@dataclass
class Feed:
    """One draft pass a ``FeatureSequence`` asks for: new pairs or tree nodes after its cached
    ones, under ``mask`` ([1, 1, n, past + n], additive). Its result is (F̂ [n, H] on the CPU, the
    KV cache with these pairs, q's logits over the full vocabulary for the last row (head
    "last"), every row ("all") or none)."""

    sequence: "FeatureSequence"
    feats: torch.Tensor  # [n, H]
    tokens: list[int]
    positions: list[int]
    mask: torch.Tensor
    head: str | None = None

    @property
    def past(self) -> int:
        return 0 if self.sequence.kv is None else self.sequence.kv[0].shape[2]

    def head_rows(self, out: torch.Tensor) -> torch.Tensor:
        return out[-1:] if self.head == "last" else out if self.head == "all" else out[:0]

    @torch.inference_mode()
    def run(self):
        """This pass alone (exactly the unbatched computation)."""
        draft, d = self.sequence.draft, self.sequence.device
        out, kv = draft(self.feats.to(d, torch.float32)[None], torch.tensor(self.tokens, device=d)[None],
                        torch.tensor(self.positions, device=d), self.sequence.kv, self.mask.to(d))
        logits = None
        if self.head is not None:
            logits = draft.full_logits(draft.lm_head(self.head_rows(out[0]))).float().cpu()
        return out[0].cpu(), kv, logits


@torch.inference_mode()
def run_feeds(feeds: list[Feed]) -> list[tuple]:
    """Several sessions' feeds on one draft in one pass (a lone feed runs as ``Feed.run``): rows
    right-padded to the longest feed, each row's cached keys padded to the longest cache, one
    additive mask [B, 1, T, S + T] holding each row's own past and mask; then one head pass over
    every row that wants q. Results as ``Feed.run``'s, in order."""
    if len(feeds) == 1:
        return [feeds[0].run()]
    draft, d = feeds[0].sequence.draft, feeds[0].sequence.device
    assert all(f.sequence.draft is draft for f in feeds), "one pass runs one draft"
    b, t, s = len(feeds), max(len(f.tokens) for f in feeds), max(f.past for f in feeds)
    c = draft.config
    feats = torch.zeros(b, t, c.hidden_size, device=d)
    tokens = torch.zeros(b, t, dtype=torch.long, device=d)
    positions = torch.zeros(b, t, dtype=torch.long, device=d)
    keys = torch.zeros(b, c.num_kv_heads, s, c.head_dim, device=d)
    values = torch.zeros_like(keys)
    low = torch.finfo(torch.float32).min
    mask = torch.full((b, 1, t, s + t), low, device=d)
    for row, f in enumerate(feeds):
        n, past = len(f.tokens), f.past
        feats[row, :n] = f.feats.to(d, torch.float32)
        tokens[row, :n] = torch.tensor(f.tokens, device=d)
        positions[row, :n] = torch.tensor(f.positions, device=d)
        if past:
            keys[row, :, :past], values[row, :, :past] = f.sequence.kv[0][0], f.sequence.kv[1][0]
        own = f.mask[0, 0].to(d)
        mask[row, 0, :n, :past] = own[:, :past]
        mask[row, 0, :n, s: s + n] = own[:, past:]
        mask[row, 0, n:, s + n:] = 0.0  # padding rows see only padding: no empty softmax row
    out, (k, v) = draft(feats, tokens, positions, (keys, values), mask)
    heads = [f.head_rows(out[row, : len(f.tokens)]) for row, f in enumerate(feeds)]
    logits = draft.full_logits(draft.lm_head(torch.cat(heads))).float().cpu() if any(len(h) for h in heads) else None
    results, at = [], 0
    for row, f in enumerate(feeds):
        n, past = len(f.tokens), f.past
        kv = (torch.cat([keys[row: row + 1, :, :past], k[row: row + 1, :, s: s + n]], 2),
              torch.cat([values[row: row + 1, :, :past], v[row: row + 1, :, s: s + n]], 2))
        mine = None
        if f.head is not None:
            mine = logits[at: at + len(heads[row])]
            at += len(heads[row])
        results.append((out[row, :n].cpu(), kv, mine))
    return results


class FeatureDraftModel:
    """A loaded feature draft with the facts the drafter reports (name, vocabulary)."""

    def __init__(self, draft: feature_model.FeatureDraft, name: str, max_positions: int = 2048):
        self.draft = draft.eval()
        self.name = name
        self.vocab_size = draft.config.vocab_size
        self.vocab_hash = draft.config.target_vocab_hash
        self.max_positions = max_positions


class FeatureDrafter(ModelDrafter):
    """Chains and trees from the feature draft; the round's driver must hand each session the
    target's features of the confirmed context (``session.set_features``) before it drafts."""

    needs_features = True

    def open(self) -> "FeatureDraftSession":
        return FeatureDraftSession(FeatureSequence(self.model), self.top_n, self.lookup)


class FeatureDraftSession(ModelDraftSession):
    def grow(self, context, shape_parents, params, generator, budget=None):
        """As ``ModelDraftSession.grow``; a context without a feature yet (a one-token prompt) has
        no pair to draft from: no levels, so the round is a plain step."""
        if not self.sequence.ready(context):
            return
        yield from super().grow(context, shape_parents, params, generator, budget)

    def set_features(self, features: torch.Tensor) -> None:
        self.sequence.set_features(features)

    def feature_count(self) -> int:
        return len(self.sequence.features)

    def add_features(self, start: int, features: torch.Tensor) -> None:
        """The target's features of context tokens start.. (a gap after what is held is ignored)."""
        held = self.sequence.features
        if start <= len(held) and len(features):
            base = held[:start] if len(held) else held.new_zeros(0, features.shape[1])
            self.sequence.set_features(torch.cat([base.float(), features.float()]))

    def grow_levels(self, context, shape_parents, params, generator, budget=None):
        if not self.sequence.ready(context):  # the first round: prompt lookup, else an empty tree
            chain = all(p == i - 1 for i, p in enumerate(shape_parents))
            if not (chain and self._looked_up(context, len(shape_parents))):
                return
        yield from super().grow_levels(context, shape_parents, params, generator, budget)


def load_feature_drafter(path, target_model, name: str, lookup: bool = False) -> FeatureDrafter:
    """A FeatureDrafter on the loaded target's (frozen) embeddings."""
    draft = feature_model.load(path, target_model).to(target_model.device)
    max_positions = int(getattr(target_model.config, "max_position_embeddings", 2048))
    return FeatureDrafter(FeatureDraftModel(draft, name, max_positions), lookup=lookup)


def target_features(target, ids: list[int]) -> torch.Tensor:  # [len(ids), H]
    """The target's features of ids, from one fresh forward pass."""
    x = torch.tensor(ids, dtype=torch.long)
    return target.forward_features(x, torch.arange(len(ids)), target.new_cache(), num_logits=1)[1]


def primed_sequence(model: FeatureDraftModel, target, context: list[int]) -> FeatureSequence:
    """A FeatureSequence holding the target's features of context[:-1] (for measurements)."""
    sequence = FeatureSequence(model)
    sequence.set_features(target_features(target, context[:-1]))
    sequence.logits_for(context, 1)
    return sequence


@torch.inference_mode()
def teacher_forced_logits(model: FeatureDraftModel, target, ids: list[int]) -> torch.Tensor:  # [len(ids) − 1, V]
    """Row i: the draft's logits for token i + 1 given the target's true features up to token i − 1
    (one drafted token, the quantity EAGLE calls top-1 accuracy); row 0 has no feature (−inf)."""
    features = target_features(target, ids)
    device = next(model.draft.parameters()).device
    x = torch.tensor(ids, dtype=torch.long)
    out = feature_model.unrolled(model.draft, features[None].to(device), x[None].to(device), 1)[0]  # [1, N, H]
    logits = model.draft.full_logits(model.draft.lm_head(out[0])).float().cpu()  # row j predicts token j + 2
    return torch.cat([torch.full((1, logits.shape[-1]), float("-inf")), logits])
