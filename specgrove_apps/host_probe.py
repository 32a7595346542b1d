"""How passes computing at once on one machine slow each other: ``host_slowdown(k_max)`` starts
k = 1 .. k_max processes that each run the target's verify pass (SmolLM2-135M's shape, random
weights: the cost is the shape's) in a loop over the same few seconds, and returns the median pass
of k at once over the median of one alone. The fleet simulator's shared-host model takes it
(``SimConfig.host_slowdown``); each process keeps torch's default threads, as each worker does.

``cost_curve`` measures the same pass's rows × tokens curve in a process of its own, with the
workers' thread count. One process: ``python -m specgrove_apps.host_probe ROWS START_AT SECONDS``
prints its median ms; ``... curve ROWS,.. TOKENS,.. REPEATS`` the curve as JSON;
``... slowdown K_MAX [THREADS]`` the slowdown (``specgrove simulate --host-slowdown``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

PREFIX = 64  # cached tokens per row
SHAPE = "smollm2-135m"  # the target's (``tiny``: tests' dry runs)


def _model(shape: str):
    import torch

    from specgrove_apps.calibrate import SHAPES
    from specgrove_apps.gpu_check import DRY_SHAPES, random_model

    torch.manual_seed(0)
    return random_model({**SHAPES, **DRY_SHAPES}[shape], "cpu", torch.float32)


def _loop(rows: int, start_at: float, seconds: float, shape: str = SHAPE) -> float:
    """The median ms of a 1-token pass over ``rows`` rows, run from ``start_at`` for ``seconds``."""
    import torch

    from specgrove.runner import LlamaRunner

    model = _model(shape)
    runner = LlamaRunner(model)
    slots = runner.new_slots()
    slots.ensure(rows, 2 * (PREFIX + 8))
    vocab = model.config.vocab_size
    for row in range(rows):
        mask = torch.full((1, 1, PREFIX, PREFIX), torch.finfo(torch.float32).min).triu(1)
        runner.pass_(slots, torch.randint(3, vocab, (1, PREFIX)), torch.arange(PREFIX)[None], mask, [row], [0])
    ids, positions = torch.randint(3, vocab, (rows, 1)), torch.full((rows, 1), PREFIX)
    mask = torch.zeros(rows, 1, 1, PREFIX + 1)

    def one() -> float:
        start = time.perf_counter()
        hidden = runner.pass_(slots, ids, positions, mask, list(range(rows)), [PREFIX] * rows)
        runner.logits(hidden.reshape(rows, -1))
        return (time.perf_counter() - start) * 1000

    for _ in range(3):
        one()
    while time.time() < start_at:
        time.sleep(0.005)
    samples = []
    while time.time() < start_at + seconds or len(samples) < 3:
        samples.append(one())
    return statistics.median(samples)


def host_slowdown(k_max: int, rows: int = 4, seconds: float = 5.0, load_s: float = 30.0,
                  threads: int | None = None, shape: str = SHAPE) -> dict:
    """{"slowdown": (1.0, s2, ...), "pass_ms": [median ms with k at once, per process]}: k = 1 .. k_max
    processes started together, each loading its model for at most ``load_s`` before the timing;
    ``threads``: each process's torch threads (default: torch's, all the cores)."""
    medians: list[list[float]] = []
    for k in range(1, k_max + 1):
        start_at = time.time() + load_s
        procs = [subprocess.Popen([sys.executable, "-m", "specgrove_apps.host_probe", str(rows), str(start_at),
                                   str(seconds), shape], stdout=subprocess.PIPE, text=True, env=thread_env(threads))
                 for _ in range(k)]
        medians.append([float(p.communicate()[0].split()[-1]) for p in procs])
    alone = medians[0][0]
    return {"slowdown": tuple(round(statistics.mean(m) / alone, 3) for m in medians),
            "pass_ms": [[round(x, 2) for x in m] for m in medians], "rows": rows, "threads": threads}


def thread_env(threads: int | None) -> dict[str, str]:
    """A worker's environment (``worker_env``: its OpenMP threads spin briefly, then sleep), limited
    to ``threads`` compute threads (None: torch's default, all the cores)."""
    from services.roles import worker_env

    env = worker_env()
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def cost_curve(rows: tuple[int, ...], tokens: tuple[int, ...], threads: int | None = None, repeats: int = 5,
               shape: str = SHAPE) -> dict:
    """{rows: {tokens: median ms}} of the target shape's verify pass in a process of its own with
    ``threads`` compute threads (as the fleet's workers run)."""
    command = [sys.executable, "-m", "specgrove_apps.host_probe", "curve", ",".join(map(str, rows)),
               ",".join(map(str, tokens)), str(repeats), shape]
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=thread_env(threads), check=True).stdout
    return {int(r): {int(t): ms for t, ms in curve.items()} for r, curve in json.loads(out.splitlines()[-1]).items()}


def _curve(rows: tuple[int, ...], tokens: tuple[int, ...], repeats: int, shape: str) -> dict:
    from specgrove_apps.gpu_check import cost_curve as runner_curve

    model = _model(shape)
    runner_curve(model, rows, tokens, PREFIX, 1)  # a first sweep touches the weights and grows the caches
    return runner_curve(model, rows, tokens, PREFIX, repeats)["passes_ms"]


if __name__ == "__main__":
    if sys.argv[1] == "slowdown":  # slowdown K_MAX [THREADS]
        threads = int(sys.argv[3]) if len(sys.argv) > 3 else None
        print(json.dumps(host_slowdown(int(sys.argv[2]), threads=threads or None)))
    elif sys.argv[1] == "curve":
        ints = lambda arg: tuple(int(x) for x in arg.split(","))  # noqa: E731
        print(json.dumps(_curve(ints(sys.argv[2]), ints(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
    else:
        print(round(_loop(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:5]), 3))
