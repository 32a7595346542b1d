"""The thread probe runs and reports each kernel's cost in its three situations (no timing asserted)."""

from specgrove_apps.thread_probe import probe


def test_the_probe_reports_every_kernel_alone_beside_a_second_team_and_after_it():
    report = probe()
    situations = ("one_team", "with_a_second_live_team", "after_it_ended")
    assert all(set(report[s]) == {"matmul_8x576x1536", "cat_kv_8x3x131x64"} for s in situations)
    assert all(us > 0 for s in situations for us in report[s].values())
