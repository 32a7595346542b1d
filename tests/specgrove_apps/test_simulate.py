"""``specgrove simulate``: the fleet model's answers checked against what can be computed by hand."""

import json

import pytest

from specgrove_apps.simulate import (RESULT_FIELDS, FleetProfile, SimConfig, least_loaded, predict_small_fleets,
                                     predicted_pass, read_calibration, read_cost_curve, recommend, round_robin,
                                     simulate)


def flat(ms: float, draft_ms: float = 0.1, **kw) -> FleetProfile:
    """A pass costs ``ms`` whatever its rows and tokens."""
    return FleetProfile({1: {1: ms}}, {1: draft_ms}, **kw)


def test_two_verifiers_double_the_goodput_of_one_when_verifiers_are_the_bottleneck():
    # Flat passes of at most 4 rounds: 8 sessions need two passes per round on one verifier, one on each of two.
    profile = flat(10.0, acceptance=(0.8, 0.6), chain_length=2, max_batch=4)
    one, two = (simulate(profile, SimConfig(drafters=2, verifiers=m, sessions=8, tokens=64, expected=True))
                for m in (1, 2))
    assert one["utilisation"]["verifier_mean"] > 0.95  # the bottleneck
    assert two["tokens_per_s"] == pytest.approx(2 * one["tokens_per_s"], rel=0.05)
    assert two["verifier_share"] == [0.5, 0.5]


def test_throughput_with_nothing_accepted_is_sessions_per_round_time():
    # acceptance 0: 1 token a round. A round: overhead 2 + 4 hops × 1 + 2 levels × 3 + one pass of 20 = 32 ms,
    # all 4 sessions in each draft pass and each verify pass.
    profile = flat(20.0, draft_ms=3.0, acceptance=(0.0, 0.0), chain_length=2, link_ms=1.0, overhead_ms=2.0)
    r = simulate(profile, SimConfig(drafters=1, verifiers=1, sessions=4, tokens=10))
    assert r["makespan_ms"] == pytest.approx(10 * 32.0)
    assert r["tokens_per_s"] == pytest.approx(4 * 1000.0 / 32.0)
    assert r["ttft_ms"] == {"mean": 32.0, "p50": 32.0, "p99": 32.0}
    assert r["tpot_ms"]["p50"] == pytest.approx(32.0)
    assert (r["rounds"], r["verify_passes"], r["rows_per_pass"], r["tokens_per_round"]) == (40, 10, 4.0, 1.0)
    assert r["utilisation"]["verifiers"] == [pytest.approx(20 / 32, abs=1e-4)]
    # A prefill (a pass alone, 1 hop each way) emits the first token: TTFT 1 + 20 + 1; then rounds of 32.
    prefilled = simulate(profile, SimConfig(drafters=1, verifiers=1, sessions=1, tokens=3, prompt_tokens=64))
    assert prefilled["ttft_ms"]["p50"] == 22.0 and prefilled["makespan_ms"] == pytest.approx(22 + 2 * 32.0)
    # No drafters: plain steps, orchestrator → verifier → orchestrator: 2 + 2 × 1 + 20 = 24 ms.
    plain = simulate(profile, SimConfig(drafters=0, verifiers=1, sessions=4, tokens=10))
    assert plain["chain_length"] == 0 and plain["makespan_ms"] == pytest.approx(10 * 24.0)


def test_a_slowed_verifier_gets_a_smaller_share_under_load_aware_placement():
    profile = flat(10.0, acceptance=(0.7, 0.5), chain_length=2)
    config = SimConfig(drafters=2, verifiers=2, sessions=4, tokens=16, total_sessions=40,
                       verifier_slowdown=(1.0, 3.0))
    rr = simulate(profile, config, round_robin)
    assert rr["verifier_share"][1] == pytest.approx(0.5)  # 20 sessions each, whatever their speed
    aware = simulate(profile, config, least_loaded)
    assert aware["verifier_share"][1] < 0.4
    assert aware["tokens_per_s"] > rr["tokens_per_s"]
    routed = simulate(profile, config, predicted_pass(profile))
    assert routed["verifier_share"][1] < aware["verifier_share"][1]


def test_the_chain_length_is_picked_by_expected_tokens_per_ms():
    profile = flat(20.0, draft_ms=1.0, acceptance=(0.9,) * 8)
    assert profile.expected_tokens(2) == pytest.approx(1 + 0.9 + 0.81)
    assert profile.choose_chain(1, 1) == 8  # cheap drafts, good acceptance: the longest chain
    assert flat(20.0, draft_ms=50.0, acceptance=(0.3,)).choose_chain(1, 1) == 0  # drafts dearer than they pay


def test_a_calibration_curve_is_read_at_rows_times_tokens_and_tables_interpolate(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"verify_ms": {"1": 10, "8": 17, "16": 30}, "draft_level_ms": 2.0,
                                "network_ms": 8.0, "acceptance": {"greedy": [0.6, 0.2]}}))
    profile = FleetProfile(**read_calibration(path))
    assert profile.verify_ms(4, 2) == 17 and profile.verify_ms(2, 6) == pytest.approx(17 + 13 * 4 / 8)
    assert profile.link_ms == 2.0 and profile.acceptance[:3] == (0.6, 0.6, 0.6)
    table, meta = read_cost_curve("docs/bench/cpu-cost-runner.json")
    runner = FleetProfile(table)
    assert runner.verify_ms(4, 16) == pytest.approx(147.5466)
    assert runner.verify_ms(2, 8) == pytest.approx(35.781 + (82.4447 - 35.781) / 3)
    assert meta["reference_bandwidth_gbs"] == 45.5


def test_recommend_buys_verifiers_when_they_are_the_bottleneck():
    profile = flat(10.0, draft_ms=0.1, acceptance=(0.8, 0.6), chain_length=2, max_batch=2)
    [pick] = recommend(profile, [4.0], drafter_cost=1.0, verifier_cost=1.0, sessions_per_unit=2.0, tokens=16)
    # Drafts are nearly free and a pass holds 2 rounds: one drafter feeds them all, the rest buys verifiers.
    assert pick["sessions"] == 8 and pick["ratio"] == "1:3" and pick["best"]["cost"] == 4.0
    assert all(r["cost"] <= 4.0 for r in pick["sweep"]) and len(pick["sweep"]) == 10
    assert set(predict_small_fleets(profile, tokens=8)) == {"1x1", "2x1", "1x2", "2x2"}


def test_the_cli_writes_the_documented_fields(tmp_path, capsys):
    import specgrove_apps.cli as cli

    out = tmp_path / "sim.json"
    assert cli.main(["simulate", "--drafters", "2", "--verifiers", "2", "--sessions", "8", "--tokens", "32",
                     "--cost-curve", "docs/bench/cpu-cost-runner.json", "--acceptance", "0.7,0.5,0.3",
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"config", "profile", "result", "small_fleets"}
    assert set(RESULT_FIELDS) <= set(report["result"])
    assert set(report["result"]["ttft_ms"]) == {"mean", "p50", "p99"}
    assert report["profile"]["acceptance"] == [0.7, 0.5, 0.3]
    assert list(report["small_fleets"]) == ["1x1", "2x1", "1x2", "2x2"]
    assert "tok/s" in capsys.readouterr().out
    shared = tmp_path / "shared.json"  # every worker on one machine, where two passes at once take 4× each
    assert cli.main(["simulate", "--drafters", "2", "--verifiers", "2", "--sessions", "8", "--tokens", "32",
                     "--cost-curve", "docs/bench/cpu-cost-runner.json", "--acceptance", "0.7,0.5,0.3",
                     "--host-slowdown", "1,4,8,12", "--json", str(shared)]) == 0
    on_one_host = json.loads(shared.read_text())
    assert on_one_host["config"]["host_slowdown"] == [1.0, 4.0, 8.0, 12.0]
    assert on_one_host["result"]["tokens_per_s"] < report["result"]["tokens_per_s"]


def test_the_fleet_check_fits_the_reference_fleet_then_predicts_the_others():
    """specgrove_apps.fleet_runs' arithmetic: the reference (1×1) run's chain lengths, acceptance
    and overhead per round fed to the simulator reproduce it; the other fleets are predicted and
    their error is prediction / measurement − 1; a host where passes at once slow each other
    predicts less for fleets with more workers."""
    from specgrove_apps.fleet_runs import acceptance_from, chain_mix, predict, served_curve

    # 8 sessions × 64 tokens in 6 s: 256 rounds, 192 of them drafted (576 draft tokens: chains of 3),
    # accepting 1 token each; 64 plain
    reference = {"fleet": "1x1", "sessions": 8, "wall_s": 6.0, "rounds": 320, "drafted_rounds": 192,
                 "draft_tokens": 576, "accepted_tokens": 192, "draft_pass_ms": 5.0, "tokens_per_s": 512 / 6.0}
    mix = chain_mix(reference)
    assert mix == ((0, 0.4), (3, 0.6))
    (a, b, c) = acceptance_from(reference, mix)  # a + a² + a³ = 1
    assert a == b == c and a + a ** 2 + a ** 3 == pytest.approx(1.0, abs=1e-3)
    assert chain_mix({**reference, "draft_tokens": 480}) == ((0, 0.4), (2, 0.3), (3, 0.3))  # 2.5 on average
    other = {**reference, "fleet": "1x2", "tokens_per_s": 150.0}
    curve = {1: {1: 20.0, 4: 24.0}, 4: {1: 30.0, 4: 40.0}}
    rows = predict(reference, [reference, other], 64, curve)
    assert [r["fleet"] for r in rows] == ["1x1", "1x2"] and rows[0]["reference"] and not rows[1]["reference"]
    assert abs(rows[0]["error"]) < 0.03  # the reference is fitted (up to the mix's draws)
    for row in rows:
        assert row["predicted_tokens_per_s"] > 0
        assert row["error"] == pytest.approx(row["predicted_tokens_per_s"] / row["tokens_per_s"] - 1, abs=1e-3)
    shared = predict(reference, [reference, other], 64, curve, host_slowdown=(1.0, 3.0, 5.0))
    assert shared[1]["predicted_tokens_per_s"] < rows[1]["predicted_tokens_per_s"]
    # passes as served cost more than the runner's alone: the curve is scaled by the reference's
    # measured mean pass over its simulated one
    from specgrove_apps.simulate import SimConfig

    how = dict(draft_table={1: 5.0}, acceptance=(0.5,) * 3, chain_mix=mix)
    once, twice = (served_curve(curve, {**reference, "verify_pass_ms": ms}, SimConfig(1, 1, 8, 64, expected=True), how)
                   for ms in (30.0, 60.0))
    assert twice[4][4] == pytest.approx(2 * once[4][4]) and once[4][4] / curve[4][4] == pytest.approx(
        once[1][1] / curve[1][1])
    assert served_curve(curve, reference, None, how) == curve  # no pass measured: the runner's


def test_passes_sharing_a_host_slow_each_other_by_the_measured_factor():
    """Plain steps (no drafter), one session per verifier, passes of 10 ms and nothing else: alone
    a verifier steps every 10 ms; two on a host where two passes at once each take 3× step every
    30 ms each (2 tokens per 30 ms in all, less than one alone); a verifier floored at 50 ms (an
    emulated GPU: the wait computes nothing) steps every 50 ms either way."""
    def plain(verifiers: int = 1, **kw) -> SimConfig:
        return SimConfig(drafters=0, verifiers=verifiers, sessions=verifiers, tokens=20, gather=False, **kw)

    alone = simulate(flat(10.0), plain())
    shared = simulate(flat(10.0), plain(verifiers=2, host_slowdown=(1.0, 3.0)))
    floored = simulate(flat(10.0, min_verify_ms=50.0), plain(verifiers=2, host_slowdown=(1.0, 3.0)))
    assert alone["makespan_ms"] == pytest.approx(20 * 10.0)
    assert shared["makespan_ms"] == pytest.approx(20 * 30.0)
    assert shared["tokens_per_s"] == pytest.approx(alone["tokens_per_s"] * 2 / 3, rel=1e-3)
    assert floored["makespan_ms"] == pytest.approx(20 * 50.0)
    assert shared["utilisation"]["verifier_mean"] == pytest.approx(1.0)


def test_the_host_probe_times_passes_alone_and_at_once_in_processes_of_their_own():
    """specgrove_apps.host_probe's dry run (a tiny shape): the slowdown of k passes at once is 1 for
    one, a positive factor for two, from each process's own median; the curve has every point."""
    from specgrove_apps.host_probe import cost_curve, host_slowdown

    # a process that starts late only shortens the overlap
    probe = host_slowdown(2, rows=1, seconds=0.3, load_s=4.0, threads=1, shape="tiny")
    assert probe["slowdown"][0] == 1.0 and len(probe["slowdown"]) == 2 and probe["slowdown"][1] > 0
    assert [len(per_process) for per_process in probe["pass_ms"]] == [1, 2]
    curve = cost_curve((1, 2), (1, 3), threads=1, repeats=2, shape="tiny")
    assert set(curve) == {1, 2} and all(set(c) == {1, 3} and min(c.values()) > 0 for c in curve.values())
