"""The network-aware round planner: measured link costs change the tree, down to K = 0."""

from orchestrator.acceptance import AcceptanceStats
from orchestrator.round_planner import PROBE_SIZE, LinkStats, RoundPlanner
from specgrove.tree import VerifyResult

# This machine's measured verify curve (ms per pass of n tokens, README) and a good draft.
VERIFY_MS = {1: 78, 2: 120, 3: 155, 4: 110, 5: 106, 8: 112, 16: 139, 32: 179, 64: 260, 128: 473}
ACCEPTANCE = [0.75, 0.1, 0.05]


def measured_link(network_ms: float) -> LinkStats:
    link = LinkStats(verify_ratio={n: v / VERIFY_MS[1] for n, v in VERIFY_MS.items()})
    link.observe_plain(rtt_ms=80.0, verify_ms=78.0)
    link.observe_tree(rtt_ms=4 * 9.0 + VERIFY_MS[8] + network_ms, draft_ms=4 * 9.0, verify_ms=VERIFY_MS[8],
                      size=7, depth=4, tree_bytes=3000)
    return link


def planned(network_ms: float):
    planner = RoundPlanner("tree", measured_link(network_ms), AcceptanceStats(ACCEPTANCE, prior_weight=1e9))
    return planner.next()


def test_a_slower_link_grows_the_tree_then_turns_speculation_off():
    fast, slow, slower, hopeless = planned(2), planned(22), planned(82), planned(300)
    assert fast.shape is not None and slow.shape is not None and slower.shape is not None
    assert (fast.size, fast.depth) == (slow.size, slow.depth) or slow.size >= fast.size
    assert slower.size > fast.size and slower.depth > fast.depth  # amortise the round trip
    assert hopeless.shape is None and hopeless.reason == "plan"  # K = 0 beats any tree


def test_link_stats_split_a_round_into_draft_verify_and_network():
    link = measured_link(40.0)
    assert abs(link.network_ms - 40.0) < 1e-9
    assert abs(link.draft_level_ms - 9.0) < 1e-9
    assert abs(link.profile().verify_time(8) - VERIFY_MS[8]) < 1e-6


def test_draft_ahead_overlap_is_not_counted_as_network_and_makes_a_slow_link_pay_again():
    """A round run ahead (draft-ahead) was partly done before the orchestrator asked: it waited
    rtt, the round's hops took rtt + overlap − draft − verify, and only the hops not overlapped
    count against speculating."""
    link = measured_link(300.0)
    planner = RoundPlanner("tree", link, AcceptanceStats(ACCEPTANCE, prior_weight=1e9))
    assert planner.next().shape is None  # 300 ms of hops: K = 0 beats any tree
    for _ in range(30):  # the drafter now runs each round ahead: 260 ms of it before it is asked for
        link.observe_tree(rtt_ms=4 * 9.0 + VERIFY_MS[8] + 300.0 - 260.0, draft_ms=4 * 9.0, verify_ms=VERIFY_MS[8],
                          size=7, depth=4, tree_bytes=3000, overlap_ms=260.0)
    assert abs(link.network_ms - 300.0) < 1e-6  # the hops are as slow as before
    assert abs(link.overlap_ms - 260.0) < 0.1 and abs(link.exposed_network_ms - 40.0) < 0.1  # EWMAs, from 0
    assert abs(link.profile().network_ms - 40.0) < 0.1
    planner.plan = None
    assert planner.next().shape is not None  # 40 ms exposed: trees pay again
    chains = RoundPlanner("chain", link, AcceptanceStats(ACCEPTANCE, prior_weight=1e9), draft_len=4)
    assert chains.next().size > 0
    hidden_nothing = measured_link(300.0)
    assert RoundPlanner("chain", hidden_nothing, AcceptanceStats(ACCEPTANCE, prior_weight=1e9),
                        draft_len=4).next().size == 0


def test_planner_measures_plain_decoding_then_probes_a_tree_then_plans():
    planner = RoundPlanner("tree", LinkStats(), AcceptanceStats(ACCEPTANCE))
    first = planner.next()
    assert first.shape is None and first.reason == "measure"
    planner.link.observe_plain(80.0, 78.0)
    second = planner.next()
    assert second.reason == "measure" and second.size == PROBE_SIZE
    planner.link.observe_tree(200.0, 30.0, 110.0, 4, 3, 2000)
    assert planner.next().reason == "plan"


def test_at_k0_the_planner_still_probes_a_tree_now_and_then_less_often_while_probes_lose():
    planner = RoundPlanner("tree", measured_link(300.0), AcceptanceStats(ACCEPTANCE), probe_every=5,
                           max_probe_every=20)
    reasons = [planner.next().reason for _ in range(80)]
    probes = [i for i, reason in enumerate(reasons) if reason == "probe"]
    assert probes == [4, 14, 34, 54, 74] and reasons.count("plan") == 75  # gaps 5, 10, 20, 20 (the cap)


def test_pinned_size_and_depth_and_other_modes():
    link = measured_link(300.0)
    pinned = RoundPlanner("tree", link, AcceptanceStats(ACCEPTANCE), fixed_size=6, fixed_depth=3).next()
    assert (pinned.size, pinned.depth, pinned.reason) == (6, 3, "fixed")
    chain = RoundPlanner("chain", link, AcceptanceStats(ACCEPTANCE), draft_len=5, adaptive=False).next()
    assert chain.shape.parents == (-1, 0, 1, 2, 3) and chain.reason == "fixed"  # a named K, whatever it costs
    assert RoundPlanner("ar", link, AcceptanceStats(ACCEPTANCE)).next().shape is None
    planner = RoundPlanner("tree", link, AcceptanceStats(ACCEPTANCE))
    planner.observe(VerifyResult([0], [5], 6, [1, 0], [2, 0]))
    assert planner.acceptance.accepted[0] == 1


def loaded(link: LinkStats, sessions: int, tokens_per_round: float) -> LinkStats:
    for _ in range(30):  # the verifier's replies: it holds `sessions`, whose rounds have that many tokens
        link.observe_load(sessions, sessions * tokens_per_round)
    return link


def test_under_batching_a_chain_turns_off_when_it_stops_paying_and_back_on_when_load_drops():
    """Goodput: 16 sessions' chains of 4 make a pass of 80 tokens, 2.3× the cost of their 16
    plain steps on this curve, and each draft level is the shared draft pass of 16 sessions
    (measured at 30 ms, against 9 alone), for 2.3 expected tokens a round: a loss. Alone, the
    chain pays."""
    link = measured_link(2.0)
    planner = RoundPlanner("chain", link, AcceptanceStats([0.6, 0.1], prior_weight=1e9), draft_len=4,
                           probe_every=8)
    alone = planner.next()
    assert (alone.size, alone.reason) == (4, "plan")  # one session: the chain pays
    loaded(link, 16, 5.0)
    for _ in range(30):  # rounds drafted under this load: their levels rode 16 sessions' draft passes
        link.observe_tree(rtt_ms=4 * 30.0 + VERIFY_MS[8] + 2.0, draft_ms=4 * 30.0, verify_ms=VERIFY_MS[8], size=4,
                          depth=4, tree_bytes=3000)
    assert link.sessions > 15
    reasons = [planner.next().reason for _ in range(300)]
    probes = [i for i, reason in enumerate(reasons) if reason == "probe"]
    assert probes == [127] and reasons.count("load") == 299  # plain steps; 16 sessions probe in turn: 8 × 16
    pinned = RoundPlanner("chain", link, AcceptanceStats([0.6, 0.1], prior_weight=1e9), draft_len=4,
                          adaptive=False)
    assert pinned.next().reason == "fixed"  # a request that named its draft length gets it
    loaded(link, 1, 5.0)
    assert link.sessions < 1.5 and (planner.next().size, planner.next().reason) == (4, "plan")


def test_alone_goodput_sizes_the_chain_by_the_draft_and_turns_it_off_when_the_draft_does_not_pay():
    link = measured_link(2.0)  # this CPU's curve: 2–3 tokens cost more than 4–8, a draft level 9 ms
    lengths = {a: RoundPlanner("chain", link, AcceptanceStats([a], prior_weight=1e9), draft_len=8).next().size
               for a in (0.2, 0.6, 0.9)}
    assert lengths[0.2] == 0 and 0 < lengths[0.6] <= lengths[0.9] <= 8  # a better draft drafts further
    weak = RoundPlanner("chain", link, AcceptanceStats([0.2], prior_weight=1e9), draft_len=4, probe_every=8)
    choices = [weak.next() for _ in range(24)]
    assert [c.reason for c in choices].count("plan") == 22 and all(c.shape is None for c in choices if c.reason == "plan")
    assert [c.size for c in choices if c.reason == "probe"] == [4, 4]  # the full chain, now and then, to re-measure
    weak.acceptance.prior = [0.9]  # the text changed: the draft pays again
    assert weak.next().reason == "plan" and weak._probe_gap == 8  # back to the short probe gap
    for a in (0.2, 0.6, 0.9):  # the choice is the best expected tokens per ms among K = 0 .. 8
        planner = RoundPlanner("chain", link, AcceptanceStats([a], prior_weight=1e9), draft_len=8)
        rate = [(1 + sum(a ** d for d in range(1, k + 1)))
                / (link.verify_1_ms * link.ratio(k + 1) + k * link.draft_level_ms
                   + (link.network_ms if k else link.plain_network_ms or 0.0))
                for k in range(9)]
        assert lengths[a] == max(range(9), key=rate.__getitem__)


def test_load_moves_a_rounds_cost_along_the_curve():
    link = loaded(measured_link(2.0), 8, 8.0)  # 8 sessions at the verifier
    assert abs(link.sessions - 8.0) < 0.01
    profile = link.profile()
    assert abs(profile.verify_time(8) / profile.verify_time(1) - link.ratio(64) / link.ratio(8)) < 1e-3
    assert link.round_costs(4)[4] - 1 > link.ratio(5) - 1  # past the curve's flat part, extra tokens cost more


def test_the_verify_cost_curve_is_learned_from_the_verifiers_passes():
    prior = {1: 1.0, 4: 1.6, 8: 1.9, 16: 2.3, 32: 3.0}
    link = LinkStats(verify_ratio=dict(prior))
    for _ in range(3):  # too few passes to trust: the prior still rules
        link.observe_pass(1, 40.0)
        link.observe_pass(5, 40.0 * 1.3)
    assert link.ratio(5) == LinkStats(verify_ratio=dict(prior)).ratio(5)
    for _ in range(40):  # this host: a 5-token pass costs 1.3 plain steps, not the prior's 1.675
        link.observe_pass(1, 40.0)
        link.observe_pass(5, 40.0 * 1.3)
    assert abs(link.ratio(5) - 1.3) < 0.02
    assert abs(link.round_costs(4, loaded=False)[4] - 1.3) < 0.02  # what a chain round of 4 costs the planner
    # beyond the passes seen, the prior's shape scaled by the nearest measurement
    assert abs(link.ratio(32) / link.ratio(8) - prior[32] / prior[8]) < 1e-6
    # a prefill of 300 tokens teaches the long end, not the 1-token point
    before = link.ratio(5)
    for _ in range(8):
        link.observe_pass(300, 40.0 * 30)
    assert abs(link.ratio(5) - before) < 1e-9 and link.ratio(256) > LinkStats(verify_ratio=dict(prior)).ratio(256)


def test_a_learned_cheap_pass_makes_the_planner_draft_further():
    acceptance = AcceptanceStats([0.8], prior_weight=1e9)
    prior = measured_link(2.0)
    prior.verify_ratio = {1: 1.0, 2: 1.15, 3: 1.25, 4: 1.65, 8: 1.9, 16: 2.3, 32: 3.0}  # the prior: 5 tokens ≈ 1.7
    learned = measured_link(2.0)
    learned.verify_ratio = dict(prior.verify_ratio)
    for _ in range(10):  # this host's passes: 2–8 tokens at 1.1–1.3 plain steps
        for tokens, ratio in ((1, 1.0), (3, 1.1), (5, 1.2), (9, 1.3)):
            learned.observe_pass(tokens, 78.0 * ratio)
    sized = [RoundPlanner("chain", link, acceptance, draft_len=8).next().size for link in (prior, learned)]
    assert sized[0] < sized[1]


def test_a_chain_pays_only_for_what_it_waits_beyond_a_plain_step():
    """Goodput weighs each round's wait beyond its compute. Under load in process, the sessions
    that draft while the others step plainly miss their pass and wait for the next one (measured
    on chat at 4 clients: K = 1 rounds 201 ms, plain steps 124 ms), and the planner must see it;
    a wait that plain steps share (their hops, a busy verifier) must not count against a chain."""
    def link(spec_wait: float, plain_wait: float) -> LinkStats:
        stats = LinkStats(verify_ratio={n: v / VERIFY_MS[1] for n, v in VERIFY_MS.items()})
        for _ in range(30):
            stats.observe_plain(rtt_ms=78.0 + plain_wait, verify_ms=78.0)
            stats.observe_tree(rtt_ms=2 * 9.0 + VERIFY_MS[3] + spec_wait, draft_ms=2 * 9.0, verify_ms=VERIFY_MS[3],
                               size=2, depth=2, tree_bytes=1000)
        return stats

    def length(stats: LinkStats) -> int:
        return RoundPlanner("chain", stats, AcceptanceStats([0.6], prior_weight=1e9), draft_len=4).next().size

    assert length(link(spec_wait=5.0, plain_wait=5.0)) > 0  # a good draft pays
    assert length(link(spec_wait=85.0, plain_wait=5.0)) == 0  # unless its rounds wait a pass more
    assert length(link(spec_wait=85.0, plain_wait=85.0)) > 0  # a wait every round shares is no reason
