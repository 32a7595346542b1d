"""Why SpecGrove runs its model work on one thread: the cost of torch kernels with one OpenMP team
alive, and with a second thread that has run parallel kernels and still lives.

``python -m specgrove_apps.thread_probe [--json PATH]`` times, on specgrove.compute's thread, a
small matrix product ([8, 576] x [576, 1536], a decode step's MLP) and a KV-sized ``cat``: first
alone, then while another live thread has run the same kernels, then alone again once that thread
has ended. Microseconds per call, medians of 5 batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch

from specgrove.compute import on_compute


def kernels_us(calls: int = 400) -> dict[str, float]:
    a, w = torch.randn(8, 576), torch.randn(1536, 576)
    k, new = torch.zeros(8, 3, 130, 64), torch.zeros(8, 3, 1, 64)
    out = {}
    for name, fn in (("matmul_8x576x1536", lambda: torch.nn.functional.linear(a, w)),
                     ("cat_kv_8x3x131x64", lambda: torch.cat([k, new], 2))):
        batches = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            batches.append((time.perf_counter() - start) / calls * 1e6)
        out[name] = round(statistics.median(batches), 1)
    return out


def probe() -> dict:
    report = {"torch_threads": torch.get_num_threads(), "one_team": on_compute(kernels_us)}
    ready, done = threading.Event(), threading.Event()

    def other():  # a second thread that computes, then lives on
        kernels_us(50)
        ready.set()
        done.wait()

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait()
    report["with_a_second_live_team"] = on_compute(kernels_us)
    done.set()
    thread.join()
    report["after_it_ended"] = on_compute(kernels_us)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specgrove_apps.thread_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    report = probe()
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
