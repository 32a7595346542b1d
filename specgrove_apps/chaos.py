"""Soak and chaos: concurrent clients against a local deployment while roles are killed.

``python -m specgrove_apps.chaos --clients 4 --duration 120 --faults drafter,verifier,orchestrator,redis``
starts a deployment (processes on loopback, a real Redis), runs N clients that generate greedy
completions back to back, and every ``--fault-every`` seconds kills one role with SIGKILL (in
turn) and restarts it ``--down`` seconds later. A client whose stream fails resumes its session
by id from the last token it holds (``resume_from``), as a real client would. Every completion
is checked token for token against the target's own greedy output of its prompt: a token lost,
duplicated or changed is counted. The report (JSON) gives generations, resumes per fault,
errors seen by clients, tokens checked and lost, and latency p50 / p99.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from specgrove_apps import print_report

PROMPTS = ("my name is", "the cat sat on", "once upon a time", "a b c d", "hello there", "in the beginning")


@dataclass
class Report:
    generations: int = 0
    resumes: int = 0  # streams that failed and were resumed by session id
    restarts: int = 0  # generations started again (a failure before the session id reached the client)
    mismatches: int = 0  # completions whose tokens differ from the target's greedy output
    index_errors: int = 0  # chunks whose index was not the next expected one (a gap or a duplicate)
    tokens_checked: int = 0
    errors: dict = field(default_factory=dict)  # gRPC code -> count, as clients saw them
    latencies_s: list = field(default_factory=list)
    faults: list = field(default_factory=list)  # (seconds from start, role)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict:
        lat = sorted(self.latencies_s)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        return {"generations": self.generations, "tokens_checked": self.tokens_checked,
                "tokens_lost_or_duplicated": self.mismatches + self.index_errors, "mismatched_completions":
                self.mismatches, "index_errors": self.index_errors, "resumes": self.resumes,
                "restarts": self.restarts, "client_errors": dict(self.errors), "faults": self.faults,
                "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99),
                "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None}


def one_generation(address: str, prompt: str, max_new: int, report: Report, give_up: float) -> list[int]:
    """Generate to the end, resuming by session id after any failure (until ``give_up``)."""
    import grpc

    from specgrove_apps.client import Client

    tokens: list[int] = []
    session = ""
    while True:
        client = Client(address)
        try:
            stream = (client.stream(session_id=session, resume_from=len(tokens), timeout=60) if session
                      else client.stream(prompt, max_new_tokens=max_new, timeout=60))
            session = session or client.session_id(stream)  # announced before any round
            for response in stream:
                if response.HasField("chunk"):
                    if response.chunk.index != len(tokens):
                        with report.lock:
                            report.index_errors += 1
                    tokens += list(response.chunk.token_ids)
                    session = response.chunk.session_id
                else:
                    return tokens
            raise RuntimeError("the stream ended without a completion")
        except grpc.RpcError as err:
            with report.lock:
                report.errors[err.code().name] = report.errors.get(err.code().name, 0) + 1
                if session:
                    report.resumes += 1
                else:
                    report.restarts += 1
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)
        finally:
            client.close()


def client_loop(address: str, prompts: dict[str, list[int]], max_new: int, stop: threading.Event, report: Report,
                offset: int) -> None:
    names = list(prompts)
    i = offset
    while not stop.is_set():
        prompt = names[i % len(names)]
        start = time.perf_counter()
        tokens = one_generation(address, prompt, max_new, report, give_up=time.monotonic() + 120)
        with report.lock:
            report.generations += 1
            report.latencies_s.append(time.perf_counter() - start)
            report.tokens_checked += len(tokens)
            report.mismatches += tokens != prompts[prompt]
        i += 1


def inject(stack, roles: list[str], every_s: float, down_s: float, until: float, report: Report, t0: float) -> None:
    """Kill one role (SIGKILL) every ``every_s`` seconds, in turn, and bring it back ``down_s``
    later; every role at least once, then on while the duration lasts."""
    i = 0
    while roles and (i < len(roles) or time.monotonic() + every_s < until):
        time.sleep(every_s)
        role = roles[i % len(roles)]
        report.faults.append((round(time.monotonic() - t0, 1), role))
        if role == "redis":
            stack.redis.kill()
            time.sleep(down_s)
            stack.redis.restart()  # same port, same append-only file
        else:
            stack.kill(role)
            time.sleep(down_s)
            stack.start(role)
        i += 1


def expected_outputs(model_path: str, max_new: int) -> dict[str, list[int]]:
    from orchestrator.engine import SpeculativeEngine
    from specgrove.models import load_model
    from specgrove.sampling import SamplingParams

    model = load_model(model_path, Path("/nonexistent"))
    engine = SpeculativeEngine(model)
    return {p: engine.generate(model.encode(p), SamplingParams(max_new_tokens=max_new)).token_ids for p in PROMPTS}


def run_chaos(stack, prompts: dict[str, list[int]], clients: int, duration_s: float, max_new: int,
              faults: list[str], every_s: float, down_s: float) -> dict:
    report, stop = Report(), threading.Event()
    t0 = time.monotonic()
    until = t0 + duration_s
    threads = [threading.Thread(target=client_loop, args=(stack.address, prompts, max_new, stop, report, i))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    inject(stack, list(faults), every_s, down_s, until, report, t0)
    time.sleep(max(0.0, until - time.monotonic()))
    stop.set()  # each client finishes the generation it is in
    for thread in threads:
        thread.join()
    return {"clients": clients, "duration_s": round(time.monotonic() - t0, 1), **report.summary()}


def main(argv=None) -> None:
    import tempfile

    from services.roles import start_stack
    from specgrove.tiny import build_tiny_llama

    parser = argparse.ArgumentParser(prog="python -m specgrove_apps.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--faults", default="drafter,verifier,orchestrator,redis",
                        help="roles to kill in turn (empty: a soak with no faults)")
    parser.add_argument("--fault-every", type=float, default=10.0)
    parser.add_argument("--down", type=float, default=1.0, help="seconds a killed role stays down")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="specgrove-chaos-"))
    model = str(build_tiny_llama(work / "model", seed=0, logit_scale=20.0, suppress_eos=True))
    prompts = expected_outputs(model, args.max_new_tokens)
    stack = start_stack(0, model, model, work / "cache", log_dir=work)
    try:
        faults = [f for f in args.faults.split(",") if f]
        report = run_chaos(stack, prompts, args.clients, args.duration, args.max_new_tokens, faults,
                           args.fault_every, args.down)
    finally:
        stack.stop()
    print_report(report, args.json)


if __name__ == "__main__":
    main()
