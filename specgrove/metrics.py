"""Prometheus metrics of the three roles, with vLLM's names under the ``specgrove:`` prefix.

Each role owns one registry (so several roles or test servers in one process never collide) and
serves it as ``/metrics`` in Prometheus' text format: the orchestrator on its HTTP port, the
workers on a port of their own (``serve_metrics``). Names follow vLLM's (``vllm:`` becomes
``specgrove:``): ``spec_decode_num_drafts``, ``..._num_draft_tokens``, ``..._num_accepted_tokens``,
``..._num_accepted_tokens_per_pos``, ``time_to_first_token_seconds``, ``num_requests_running``,
``kv_cache_usage_perc``; the client library adds ``_total`` to counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

P = "specgrove:"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class OrchestratorMetrics:
    """Requests, rounds and latencies as the clients see them."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.rounds = Counter(P + "rounds", "rounds by the planner's reason for their shape, and whether they drafted",
                              ["plan", "drafted"], registry=r)
        self.sessions_placed = Counter(P + "sessions_placed", "sessions placed on a verifier", ["verifier"], registry=r)
        self.sessions_moved = Counter(P + "sessions_moved", "sessions moved to a verifier (theirs failed, drained or "
                                      "left the pool)", ["verifier"], registry=r)
        self.num_drafts = Counter(P + "spec_decode_num_drafts", "rounds with a draft", registry=r)
        self.num_draft_tokens = Counter(P + "spec_decode_num_draft_tokens", "draft tokens proposed", registry=r)
        self.num_accepted_tokens = Counter(P + "spec_decode_num_accepted_tokens", "draft tokens accepted", registry=r)
        self.accepted_per_pos = Counter(P + "spec_decode_num_accepted_tokens_per_pos",
                                        "accepted draft tokens by depth (0 = first draft token)", ["position"],
                                        registry=r)
        self.emitted_per_round = Histogram(P + "spec_decode_tokens_per_round", "tokens emitted per verify round",
                                           buckets=TOKEN_BUCKETS, registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "request start to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(P + "time_per_output_token_seconds", "mean time per token after the first",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "request start to completion",
                             buckets=REQUEST_BUCKETS, registry=r)
        self.running = Gauge(P + "num_requests_running", "generations in progress", registry=r)
        self.waiting = Gauge(P + "num_requests_waiting", "generations queued for a free slot", registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "tokens generated", registry=r)
        self.finished = Counter(P + "request_success", "finished requests by reason", ["finished_reason"],
                                registry=r)
        self.ahead_rounds = Counter(P + "spec_decode_ahead_rounds", "rounds the drafter was asked to run ahead, by "
                                    "outcome: hit (it had), miss (drafted when asked)", ["outcome"], registry=r)

    def record_round(self, num_drafted: int, num_accepted: int, num_emitted: int, plan: str = "plan") -> None:
        """plan: the planner's reason for the round's shape (plan, probe, measure, fixed, ar, load)."""
        self.rounds.labels(plan=plan, drafted=str(bool(num_drafted)).lower()).inc()
        self.emitted_per_round.observe(num_emitted)
        self.generation_tokens.inc(num_emitted)
        if num_drafted:
            self.num_drafts.inc()
            self.num_draft_tokens.inc(num_drafted)
            self.num_accepted_tokens.inc(num_accepted)
            for position in range(num_accepted):
                self.accepted_per_pos.labels(position=str(position)).inc()

    def record_finish(self, reason: str, prompt_tokens: int, elapsed_s: float) -> None:
        self.finished.labels(finished_reason=reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.e2e.observe(elapsed_s)


class WorkerMetrics:
    """A drafter's or a verifier's passes, queue, batch and KV cache (role: "verify" or "draft")."""

    def __init__(self, role: str, max_sessions: int) -> None:
        self.registry = r = CollectorRegistry()
        self.max_sessions = max_sessions
        self.passes = Counter(P + f"{role}_passes", f"{role} rounds served", registry=r)
        self.tokens_per_pass = Histogram(P + f"{role}_tokens_per_pass", f"tokens in one {role} round",
                                         buckets=TOKEN_BUCKETS, registry=r)
        self.pass_seconds = Histogram(P + f"{role}_pass_seconds", f"compute time of one {role} round",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.waiting = Gauge(P + "num_requests_waiting", "rounds waiting for the model", registry=r)
        self.batch_size = Histogram(P + "batch_size", "sessions per forward pass", buckets=TOKEN_BUCKETS, registry=r)
        self.kv_sessions = Gauge(P + "kv_cache_sessions", "sessions holding a KV cache", registry=r)
        self.kv_tokens = Gauge(P + "kv_cache_tokens", "tokens held in KV caches", registry=r)
        self.kv_usage = Gauge(P + "kv_cache_usage_perc", "KV cache slots in use (0-1)", registry=r)
        self.kv_evictions = Counter(P + "kv_cache_evictions", "sessions evicted to fit the KV budget", registry=r)
        if role == "verify":
            self.prefills = Counter(P + "verify_prefills", "session caches built from their context here (a new "
                                    "session, one moved here, or one evicted before)", registry=r)
            self.ahead_steps = Counter(P + "verify_ahead_steps", "plain steps run ahead (verifier), by outcome: hit "
                                       "(asked for as run), miss (asked otherwise, or failed), unused (never asked "
                                       "for)", ["outcome"], registry=r)
        if role == "draft":
            self.ahead_rounds = Counter(P + "draft_ahead_rounds", "rounds run ahead (drafter), by outcome: hit (asked "
                                        "for as drawn), miss (asked otherwise, or failed), unused (never asked "
                                        "for)", ["outcome"], registry=r)
            self.guessed_rounds = Counter(P + "draft_guessed_rounds", "next rounds guessed while a round was "
                                          "verified, by outcome: hit (the verdict was a guess: the verifier ran it at "
                                          "once), miss (it was not), late (the verdict came before the guesses)",
                                          ["outcome"], registry=r)
            self.verified_rounds = Counter(P + "draft_verified_rounds", "rounds drawn here and verified, by how the "
                                           "verifier was reached: in_process (``serve worker``: its own) or grpc",
                                           ["path"], registry=r)

    def record_pass(self, tokens: int, seconds: float, batch: int | None = 1) -> None:
        """A round served; batch: the sessions in its pass (None: counted where the passes run, as
        a drafter's batcher does, one round riding several passes)."""
        self.passes.inc()
        self.tokens_per_pass.observe(tokens)
        self.pass_seconds.observe(seconds)
        if batch is not None:
            self.batch_size.observe(batch)

    def record_cache(self, sessions: int, tokens: int) -> None:
        self.kv_sessions.set(sessions)
        self.kv_tokens.set(tokens)
        self.kv_usage.set(sessions / self.max_sessions if self.max_sessions else 0.0)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (what ``/metrics`` answers)."""
    return generate_latest(registry)


def scrape(url: str, name: str, timeout: float = 10.0) -> list[tuple[dict[str, str], float]]:
    """The samples called ``name`` that a ``/metrics`` endpoint serves: (labels, value) each."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def serve_metrics(registry: CollectorRegistry, host: str, port: int):
    """Serve ``/metrics`` on a thread of its own; returns (server, bound port)."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry)
    return server, server.server_address[1]


class _ByRole:
    """Several roles' registries as one: each sample labelled ``role`` with its registry's name,
    families of one name merged (both workers have ``kv_cache_tokens``, say)."""

    def __init__(self, registries: dict[str, CollectorRegistry]):
        self.registries = registries

    def collect(self):
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Metric] = {}
        for role, registry in self.registries.items():
            for family in registry.collect():
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                            family.unit))
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "role": role}, s.value, s.timestamp, s.exemplar)
        yield from merged.values()


def registry_by_role(**registries: CollectorRegistry) -> CollectorRegistry:
    """One registry serving ``registries``' metrics, labelled ``role=<keyword>`` (``serve worker``:
    the drafter's and the verifier's on one /metrics)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_ByRole(registries))
    return registry
