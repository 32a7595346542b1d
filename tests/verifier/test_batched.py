"""The batched target: rows of different sessions in one pass give each row the logits and
features its own batch-1 pass gives, whatever the mix (prefill, plain step, chain, tree), the slot
order, or the growth of the slot tensor; a kept tree path leaves the cache as if only it was fed."""

from __future__ import annotations

import torch

from specgrove.models import CachedSequence
from verifier.batched import BatchedTarget, Row

TREE = ([5, 6, 7, 8, 9], [-1, -1, 0, 0, 2])  # node tokens, parents
CHAIN = ([11, 12, 13], [-1, 0, 1])


def reference(model, context, nodes, parents, keep_features=False):
    seq = CachedSequence(model, keep_features=keep_features)
    logits = seq.tree_logits(context, nodes, parents, 0, len(nodes), with_root=True)
    return seq, logits


def test_a_mixed_batch_equals_each_rows_own_pass(tiny_target):
    target = BatchedTarget(tiny_target, keep_features=True, capacity=8)  # grows while serving
    contexts = [tiny_target.encode(t) for t in ("the cat sat on the mat", "a", "one two three four five six")]
    jobs = [(contexts[0], *TREE), (contexts[1], [], []), (contexts[2], *CHAIN)]
    states = [target.open() for _ in jobs]
    rows = [Row(state, ctx, nodes, parents) for state, (ctx, nodes, parents) in zip(states, jobs)]
    out = target.run(rows[::-1])[::-1]  # rows in reverse slot order: the gathered (index_select) path
    for (ctx, nodes, parents), state, logits in zip(jobs, states, out):
        seq, expected = reference(tiny_target, ctx, nodes, parents, keep_features=True)
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(state.features, seq.features, atol=1e-4, rtol=1e-4)
    assert target.cache.slots >= 3 and target.cache.capacity >= len(contexts[0]) + len(TREE[0])


def test_a_kept_tree_path_continues_like_a_fresh_pass_over_the_longer_context(tiny_target):
    target = BatchedTarget(tiny_target)
    context = tiny_target.encode("the cat sat on the mat")
    other = tiny_target.encode("dogs bark")
    a, b = target.open(), target.open()
    target.run([Row(a, context, *TREE), Row(b, other, *CHAIN)])
    target.keep_path(a, [1])  # node 1 (a child of the root): moved into place
    target.keep_path(b, [0, 1])  # a chain's prefix: cropped
    grown_a, grown_b = context + [TREE[0][1]], other + CHAIN[0][:2]
    assert a.tokens == grown_a and b.tokens == grown_b
    out = target.run([Row(a, grown_a + [3], [4], [-1]), Row(b, grown_b + [3], [], [])])
    torch.testing.assert_close(out[0], reference(tiny_target, grown_a + [3], [4], [-1])[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], reference(tiny_target, grown_b + [3], [], [])[1], atol=1e-4, rtol=1e-4)


def test_a_closed_slot_is_reused_and_the_last_close_frees_the_memory(tiny_target):
    target = BatchedTarget(tiny_target)
    a, b = target.open(), target.open()
    target.run([Row(a, [1, 2, 3], [], []), Row(b, [4, 5], [], [])])
    assert target.cache.nbytes > 0
    target.close(a)
    c = target.open()
    assert c.slot == a.slot  # the lowest free slot
    out = target.run([Row(c, [7, 8, 9, 10], [], [])])  # a reused slot holds nothing of its last owner
    torch.testing.assert_close(out[0], reference(tiny_target, [7, 8, 9, 10], [], [])[1], atol=1e-4, rtol=1e-4)
    target.close(b)
    target.close(c)
    assert target.cache.nbytes == 0
