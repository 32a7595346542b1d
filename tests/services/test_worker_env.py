"""The roles' OpenMP waiting on loopback: a short spin, unless the caller chose otherwise.

Why it matters is measured, not asserted here (services/roles.py: WORKER_SPIN_COUNT): with
OMP_WAIT_POLICY=PASSIVE a served verify pass ran 158 ms against 118 ms."""

from services.roles import WORKER_SPIN_COUNT, worker_env


def test_a_child_role_spins_briefly_between_kernels_then_sleeps():
    env = worker_env({"PATH": "/usr/bin"})
    assert env["GOMP_SPINCOUNT"] == WORKER_SPIN_COUNT and "OMP_WAIT_POLICY" not in env
    assert env["PATH"] == "/usr/bin"  # the rest of the environment is passed on


def test_a_callers_own_openmp_setting_is_kept():
    assert worker_env({"OMP_WAIT_POLICY": "PASSIVE"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert worker_env({"GOMP_SPINCOUNT": "0"}) == {"GOMP_SPINCOUNT": "0"}

