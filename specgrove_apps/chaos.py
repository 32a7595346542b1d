"""Faults under load: sessions of every kind against a local deployment while roles are killed.

``python -m specgrove_apps.chaos --target smollm2 --draft smollm2-feature --duration 600 --fault-every 30``
starts a deployment of processes on loopback (a real Redis with its append-only file, two
verifiers, two drafters, two orchestrators: the second guesses ahead and both serve HTTP) and runs
one client per session kind back to back:

- ``chain`` / ``tree``: gRPC streams asking for chains / Sequoia trees, on the first orchestrator;
- ``guess``: gRPC chains on the second orchestrator, which guesses verdicts ahead;
- ``http``: OpenAI-compatible streaming completions (server-sent events), on the first.

Every ``--fault-every`` seconds one role is SIGKILLed, in turn, and restarted ``--down`` seconds
later. In a soak the faults strike the second replica of each worker role and the second
orchestrator, so the first ones live the whole run and their memory can be compared. A gRPC
client whose stream fails resumes its session by id on the other orchestrator from the last token
it holds (it has the id from the stream's initial metadata), as a real client would; an HTTP
client, whose API has no resume, sends its request again whole. Every completion is checked token
for token against the target's own greedy output: a token lost, duplicated or changed is counted.

The report (JSON) gives completions and errors per kind, resumes and whole retries, tokens
checked and lost, latency, each role's resident memory (first and last sample) and Redis's.
``scenario`` runs one fault once, with one session of each kind mid-generation (the slow test).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from specgrove_apps import print_report

PROMPTS = ("my name is", "the cat sat on", "once upon a time", "a b c d", "hello there", "in the beginning")
KINDS = ("chain", "tree", "guess", "http")
HOME = {"chain": "orchestrator", "tree": "orchestrator", "guess": "orchestrator2", "http": "orchestrator"}
MODE = {"chain": "chain", "tree": "tree", "guess": "chain", "http": "chain"}
ORCHESTRATORS = ("orchestrator", "orchestrator2")


@dataclass
class Report:
    generations: dict = field(default_factory=lambda: {k: 0 for k in KINDS})  # completions per kind
    resumes: int = 0  # gRPC streams that failed and were resumed by session id
    restarts: int = 0  # requests sent again whole (HTTP, or a failure before the session existed)
    mismatches: int = 0  # completions whose tokens differ from the target's greedy output
    index_errors: int = 0  # chunks whose index was not the next expected one (a gap or a duplicate)
    tokens_checked: int = 0
    errors: dict = field(default_factory=dict)  # "kind: CODE" -> count, as clients saw them
    latencies_s: list = field(default_factory=list)
    faults: list = field(default_factory=list)  # (seconds from start, role)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, kind: str, code: str) -> None:
        with self.lock:
            self.errors[f"{kind}: {code}"] = self.errors.get(f"{kind}: {code}", 0) + 1

    def summary(self) -> dict:
        lat = sorted(self.latencies_s)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        return {"generations": sum(self.generations.values()), "generations_by_kind": dict(self.generations),
                "tokens_checked": self.tokens_checked,
                "tokens_lost_or_duplicated": self.mismatches + self.index_errors, "mismatched_completions":
                self.mismatches, "index_errors": self.index_errors, "resumes": self.resumes,
                "restarts": self.restarts, "client_errors": dict(self.errors), "faults": self.faults,
                "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99),
                "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None}


def grpc_generation(addresses: list[str], prompt: list[int], kind: str, max_new: int, report: Report,
                    give_up: float, progress: list[int] | None = None) -> list[int]:
    """Generate to the end, resuming by session id on the next address after any failure."""
    import grpc

    from specgrove_apps.client import Client

    tokens: list[int] = []
    session, turn = "", 0
    while True:
        client = Client(addresses[turn % len(addresses)])
        try:
            stream = (client.stream(session_id=session, resume_from=len(tokens), timeout=60) if session
                      else client.stream(token_ids=prompt, max_new_tokens=max_new, mode=MODE[kind], timeout=60))
            session = session or client.session_id(stream)  # announced before any round
            for response in stream:
                if response.HasField("chunk"):
                    if response.chunk.index != len(tokens):
                        with report.lock:
                            report.index_errors += 1
                    tokens += list(response.chunk.token_ids)
                    if progress is not None:
                        progress[0] = len(tokens)
                else:
                    return tokens
            raise RuntimeError("the stream ended without a completion")
        except grpc.RpcError as err:
            report.error(kind, err.code().name)
            with report.lock:
                if session:
                    report.resumes += 1
                else:
                    report.restarts += 1
            if time.monotonic() > give_up:
                raise
            turn += 1
            time.sleep(0.5)
        finally:
            client.close()


def http_generation(addresses: list[str], model: str, prompt: list[int], max_new: int, report: Report,
                    give_up: float, progress: list[int] | None = None) -> str:
    """A streamed OpenAI completion's text; a broken stream is sent again whole on the next address."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_new, "temperature": 0, "stream": True})
    turn = 0
    while True:
        host, port = addresses[turn % len(addresses)].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        text, code = "", None
        try:
            connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                code = f"HTTP {response.status}"
            else:
                for line in response:
                    line = line.strip()
                    if not line.startswith(b"data: "):
                        continue
                    if line == b"data: [DONE]":
                        return text
                    event = json.loads(line[6:])
                    if "error" in event:
                        code = f"error event {event['error'].get('code')}"
                        break
                    text += event["choices"][0]["text"]
                    if progress is not None:
                        progress[0] += 1
                code = code or "stream ended without [DONE]"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            code = type(exc).__name__
        finally:
            connection.close()
        report.error("http", code)
        with report.lock:
            report.restarts += 1
        if time.monotonic() > give_up:
            raise RuntimeError(f"HTTP generation failed until the deadline: {code}")
        turn += 1
        time.sleep(0.5)


@dataclass
class Deployment:
    """What the clients need of a stack: addresses per orchestrator, the model name, expected outputs."""

    grpc: dict[str, str]  # orchestrator role -> host:port
    http: dict[str, str]  # orchestrator role -> host:port of its HTTP API
    model: str
    prompts: dict[str, list[int]]  # prompt text -> its token ids
    expected: dict[str, list[int]]  # prompt text -> the target's greedy output
    expected_text: dict[str, str]

    def order(self, home: str, table: dict[str, str]) -> list[str]:
        return [table[home]] + [table[r] for r in ORCHESTRATORS if r != home]


def one_completion(dep: Deployment, kind: str, prompt: str, max_new: int, report: Report, give_up: float,
                   progress: list[int] | None = None) -> None:
    start = time.perf_counter()
    if kind == "http":
        text = http_generation(dep.order(HOME[kind], dep.http), dep.model, dep.prompts[prompt], max_new, report,
                               give_up, progress)
        wrong, checked = text != dep.expected_text[prompt], len(dep.expected[prompt])
    else:
        tokens = grpc_generation(dep.order(HOME[kind], dep.grpc), dep.prompts[prompt], kind, max_new, report,
                                 give_up, progress)
        wrong, checked = tokens != dep.expected[prompt], len(tokens)
    with report.lock:
        report.generations[kind] += 1
        report.latencies_s.append(time.perf_counter() - start)
        report.tokens_checked += checked
        report.mismatches += wrong


def client_loop(dep: Deployment, kind: str, max_new: int, stop: threading.Event, report: Report, offset: int) -> None:
    names = list(dep.prompts)
    i = offset
    while not stop.is_set():
        one_completion(dep, kind, names[i % len(names)], max_new, report, give_up=time.monotonic() + 120)
        i += 1


def strike(stack, roles: tuple[str, ...], down_s: float) -> None:
    """SIGKILL ``roles`` at once and start them again ``down_s`` later (Redis: same port, same
    append-only file); return once they answer again."""
    processes = [role for role in roles if role != "redis"]
    if "redis" in roles:
        stack.redis.kill()
    for role in processes:
        stack.kill(role)
    time.sleep(down_s)
    if "redis" in roles:
        stack.redis.restart()
    for role in processes:
        stack.start(role, wait=False)
    for role in processes:
        stack.wait_healthy(role)


def scenario(stack, dep: Deployment, fault: str, max_new: int, down_s: float = 2.0, after_tokens: int = 8) -> dict:
    """One session of each kind at once; once every one of them has streamed ``after_tokens``
    tokens (HTTP: text deltas), ``fault`` strikes. ``orchestrator`` kills both orchestrators at
    once, so every kind's stream dies and resumes on the other one (a new process, holding none of
    the dead ones' state, as another orchestrator would)."""
    report = Report()
    progress = {kind: [0] for kind in KINDS}
    prompts = list(dep.prompts)
    threads = [threading.Thread(target=one_completion, args=(dep, kind, prompts[i % len(prompts)], max_new, report,
                                                             time.monotonic() + 180, progress[kind]))
               for i, kind in enumerate(KINDS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while min(p[0] for p in progress.values()) < after_tokens and time.monotonic() < deadline:
        time.sleep(0.02)
    report.faults.append((fault, {kind: p[0] for kind, p in progress.items()}))
    strike(stack, ORCHESTRATORS if fault == "orchestrator" else (fault,), down_s)
    for thread in threads:
        thread.join()
    return report.summary()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def redis_memory_mb(url: str) -> float | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        used = client.info("memory")["used_memory"]
        client.close()
        return round(used / 2**20, 2)
    except Exception:  # noqa: BLE001 - down at that moment
        return None


def memory(stack) -> dict:
    sample = {role: rss_mb(proc.pid) for role, proc in stack.processes.items() if proc.poll() is None}
    sample["redis_used_memory"] = redis_memory_mb(stack.redis.url) if stack.redis is not None else None
    return sample


def soak(stack, dep: Deployment, duration_s: float, max_new: int, faults: list[str], every_s: float,
         down_s: float, warmup_s: float = 30.0) -> dict:
    """One client per kind, back to back, for ``duration_s``; a fault every ``every_s`` in turn,
    each fault at least once (the run is longer when they do not fit). Memory is sampled once the
    warm-up is over and at the end."""
    report, stop = Report(), threading.Event()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(dep, kind, max_new, stop, report, i))
               for i, kind in enumerate(KINDS)]
    for thread in threads:
        thread.start()
    time.sleep(min(warmup_s, duration_s))
    after_warmup = memory(stack)
    i = 0
    while faults and (i < len(faults) or time.monotonic() + every_s < t0 + duration_s):
        time.sleep(max(0.0, t0 + warmup_s + (i + 1) * every_s - time.monotonic()))
        role = faults[i % len(faults)]
        report.faults.append((round(time.monotonic() - t0, 1), role))
        strike(stack, (role,), down_s)
        i += 1
    time.sleep(max(0.0, t0 + duration_s - time.monotonic()))
    stop.set()  # each client finishes the generation it is in
    for thread in threads:
        thread.join()
    end = memory(stack)
    growth = {role: round(end[role] / after_warmup[role] - 1, 3) for role in end
              if role in after_warmup and end[role] and after_warmup[role]}
    return {"clients": len(KINDS), "duration_s": round(time.monotonic() - t0, 1), **report.summary(),
            "memory_mb_after_warmup": after_warmup, "memory_mb_end": end, "memory_growth": growth}


def deployment(stack, target: str, cache_dir: Path, max_new: int, prompts: tuple[str, ...] = PROMPTS) -> Deployment:
    """The clients' view of a stack started by ``start`` (expected outputs from the in-process engine)."""
    from orchestrator.engine import SpeculativeEngine
    from specgrove.models import load_model
    from specgrove.sampling import SamplingParams

    model = load_model(target, cache_dir)
    engine = SpeculativeEngine(model)
    prompts = {p: model.encode(p) for p in prompts}
    expected = {p: engine.generate(ids, SamplingParams(max_new_tokens=max_new)).token_ids for p, ids in prompts.items()}
    return Deployment({r: f"127.0.0.1:{stack.ports[r]}" for r in ORCHESTRATORS},
                      {r: f"127.0.0.1:{stack.ports[f'{r}_http']}" for r in ORCHESTRATORS},
                      target, prompts, expected, {p: model.decode(ids) for p, ids in expected.items()})


def start(target: str, draft: str, cache_dir: Path, log_dir: Path):
    """Redis (append-only, fsync always) + 2 verifiers + 2 drafters + 2 orchestrators (the second
    guessing ahead), each orchestrator with its HTTP API."""
    from services.roles import start_stack
    from specgrove.local_redis import LocalRedis, free_port

    redis = LocalRedis(data_dir=log_dir / "redis", args=("--appendfsync", "always"))
    http2 = free_port()
    try:
        stack = start_stack(0, target, draft, cache_dir, redis_url=redis.url, log_dir=log_dir, http_port=0,
                            verifiers=2, drafters=2, second_orchestrator=("--guess-ahead", "--http-port", str(http2)))
    except BaseException:
        redis.stop()
        raise
    stack.redis = redis  # the chaos kills and restarts it; stack.stop() stops it
    stack.ports["orchestrator_http"], stack.ports["orchestrator2_http"] = stack.ports["http"], http2
    return stack


def main(argv=None) -> None:
    import tempfile

    from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET, default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m specgrove_apps.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--faults", default="drafter2,verifier2,orchestrator2,redis",
                        help="roles to kill in turn (empty: a soak with no faults)")
    parser.add_argument("--fault-every", type=float, default=30.0)
    parser.add_argument("--down", type=float, default=2.0, help="seconds a killed role stays down")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the first memory sample")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="specgrove-chaos-"))
    cache = args.cache_dir or default_cache_dir()
    stack = start(args.target, args.draft, cache, work)
    try:
        dep = deployment(stack, args.target, cache, args.max_new_tokens)
        report = soak(stack, dep, args.duration, args.max_new_tokens, [f for f in args.faults.split(",") if f],
                      args.fault_every, args.down, args.warmup)
    finally:
        stack.stop()
    report.update(target=args.target, draft=args.draft, max_new_tokens=args.max_new_tokens,
                  fault_every_s=args.fault_every, down_s=args.down, logs=str(work))
    print_report(report, args.json)


if __name__ == "__main__":
    main()
