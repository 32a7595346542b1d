"""Tree attention: every node's logits from one tree pass equal a plain causal forward over the
context followed by that node's root-to-node path (max abs logit difference ≤ TOLERANCE), and
KV compaction to an accepted path leaves a cache that continues exactly like a fresh one.
"""

import pytest
import torch

from specgrove.models import CachedSequence
from specgrove.tree_mask import ancestor_matrix, tree_attention_mask

TOLERANCE = 1e-4  # fp32; cached vs tree vs full forwards differ by ~1e-5 here

TREES = {
    "chain": [-1, 0, 1, 2, 3],
    "star": [-1, -1, -1, -1, -1],
    "bushy": [-1, -1, -1, 0, 0, 1, 3, 3, 6],
}


def test_ancestor_matrix_and_mask_layout():
    visible = ancestor_matrix([-1, -1, 0])
    assert visible.tolist() == [[True, False, False], [False, True, False], [True, False, True]]
    mask = tree_attention_mask(context_len=3, new_context=1, parents=[-1, -1, 0], first=0, last=3)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 1, 1, 0, 0, 0],  # the last context token (the root)
        [1, 1, 1, 1, 0, 0],  # node 0
        [1, 1, 1, 0, 1, 0],  # node 1
        [1, 1, 1, 1, 0, 1],  # node 2: child of node 0
    ]


def full_forward_logits(model, ids):
    with torch.inference_mode():
        return model.model(torch.tensor([ids])).logits[0, -1].float()


def tree_tokens(parents, vocab, seed):
    return torch.randint(3, vocab, (len(parents),), generator=torch.Generator().manual_seed(seed)).tolist()


def path_of(parents, node):
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def check_tree_against_paths(model, context, parents, levels):
    tokens = tree_tokens(parents, model.vocab_size, seed=len(parents))
    seq = CachedSequence(model)
    seq.logits_for(context[:-3], num_logits=1)  # something cached already, so past > 0
    rows, first = [], 0
    for last in levels:  # feed the tree in one pass or level by level
        rows.append(seq.tree_logits(context, tokens, parents, first, last, with_root=first == 0))
        first = last
    logits = torch.cat(rows)  # [N + 1, V]
    assert logits.shape[0] == len(parents) + 1
    torch.testing.assert_close(logits[0], full_forward_logits(model, context), atol=TOLERANCE, rtol=0)
    for node in range(len(parents)):
        path_tokens = [tokens[n] for n in path_of(parents, node)]
        expected = full_forward_logits(model, context + path_tokens)
        torch.testing.assert_close(logits[node + 1], expected, atol=TOLERANCE, rtol=0)
    return seq, tokens


@pytest.mark.parametrize("name", TREES)
def test_tree_pass_equals_causal_forward_per_node(tiny_target, name):
    context = tiny_target.encode("the cat sat on")
    check_tree_against_paths(tiny_target, context, TREES[name], levels=[len(TREES[name])])


def test_drafter_style_feeding_root_first_then_levels(tiny_target):
    parents = TREES["bushy"]
    context = tiny_target.encode("hello there")
    tokens = tree_tokens(parents, tiny_target.vocab_size, seed=len(parents))
    seq = CachedSequence(tiny_target)
    root = seq.logits_for(context, num_logits=1)
    level = seq.tree_logits(context, tokens, parents, 0, 3, with_root=False)  # depth-1 nodes only
    assert level.shape[0] == 3
    torch.testing.assert_close(root[0], full_forward_logits(tiny_target, context), atol=TOLERANCE, rtol=0)
    for node in range(3):
        expected = full_forward_logits(tiny_target, context + [tokens[node]])
        torch.testing.assert_close(level[node], expected, atol=TOLERANCE, rtol=0)


def test_level_by_level_feeding_equals_one_pass(tiny_target):
    parents = TREES["bushy"]  # levels: nodes 0-2 (depth 1), 3-5 (depth 2), 6-7 (depth 3), 8 (depth 4)
    check_tree_against_paths(tiny_target, tiny_target.encode("hello there"), parents, levels=[3, 6, 8, 9])


@pytest.mark.parametrize("path_node", [7, 2, None])
def test_compaction_to_accepted_path_continues_exactly(tiny_target, path_node):
    parents = TREES["bushy"]
    context = tiny_target.encode("a b c d")
    seq, tokens = check_tree_against_paths(tiny_target, context, parents, levels=[len(parents)])
    path = path_of(parents, path_node) if path_node is not None else []
    seq.keep_path(path)
    accepted = [tokens[n] for n in path]
    assert seq.tokens == context + accepted
    assert seq.cache.get_seq_length() == len(context) + len(accepted)
    follow = context + accepted + [5]
    torch.testing.assert_close(
        seq.logits_for(follow, 1)[0], full_forward_logits(tiny_target, follow), atol=TOLERANCE, rtol=0
    )


@pytest.mark.slow
def test_tree_pass_on_smollm2(smollm2):
    context = smollm2.encode("def add(a, b):\n    return")
    check_tree_against_paths(smollm2, context, TREES["bushy"], levels=[len(TREES["bushy"])])
