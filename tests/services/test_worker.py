"""``serve worker``: a drafter and a verifier in one process, on one port. Its drafter verifies on
its own verifier by a direct call (no hop, no copy of the tree or the features) and on any other
verifier over gRPC; the orchestrator names the one address as both. Real loopback gRPC and a real
Redis, tiny models."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drafter.tree_growth import ModelDrafter
from drafter.worker import DrafterWorker
from orchestrator.engine import SpeculativeEngine
from orchestrator.local_verifier import LocalVerifier
from services.server import create_verifier_server, create_worker_server
from services.workers import GrpcVerifier, VerifierStubs
from specgrove.metrics import WorkerMetrics, registry_by_role
from specgrove.sampling import SamplingParams
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack
from verifier.worker import VerifierWorker

PROMPT = "my name is"


@pytest.fixture(scope="module")
def reference(tiny_target):
    ids = tiny_target.encode(PROMPT)
    return ids, SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=48)).token_ids


def verified_rounds(worker: DrafterWorker, path: str) -> float:
    return worker.metrics.registry.get_sample_value("specgrove:draft_verified_rounds_total", {"path": path}) or 0


@pytest.mark.parametrize("mode", ["chain", "tree"])
@pytest.mark.parametrize("draft", ["self", "feature"])
def test_greedy_output_through_a_worker_equals_the_targets_and_never_leaves_the_process(
        mode, draft, tiny_target, tiny_feature_drafter, reference, redis_server):
    """The target as its own draft (every token accepted), or a feature draft (the verifier's
    features handed over as tensors)."""
    ids, expected = reference
    drafter = ModelDrafter(tiny_target) if draft == "self" else tiny_feature_drafter
    options = {"tree_budget": 8, "tree_depth": 4} if mode == "tree" else {}
    stack = InProcessStack(tiny_target, drafter, redis_server.url, mode=mode, draft_len=4, colocated=True)
    try:
        out = Client(stack.address).generate(token_ids=ids, max_new_tokens=48, **options)
    finally:
        stack.stop()
    assert out.token_ids == expected
    assert out.usage["num_accepted_tokens"] > 10 and out.usage["rounds"] < len(expected)
    assert stack.drafter_address == stack.verifier_address  # one worker, named as both
    assert verified_rounds(stack.drafter_worker, "in_process") > 0
    assert verified_rounds(stack.drafter_worker, "grpc") == 0


def test_a_worker_drafter_calls_its_own_verifier_directly_by_any_name_and_others_over_grpc(tiny_target, tiny_draft):
    own = VerifierWorker(tiny_target)
    worker, port = create_worker_server("127.0.0.1:0", own, DrafterWorker(ModelDrafter(tiny_draft)))
    other, other_port = create_verifier_server("127.0.0.1:0", VerifierWorker(tiny_target))
    worker.start()
    other.start()
    try:
        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            verifier_info = speculate_pb2_grpc.VerifierStub(channel).Info(speculate_pb2.InfoRequest(), timeout=10)
            drafter_info = speculate_pb2_grpc.DrafterStub(channel).Info(speculate_pb2.InfoRequest(), timeout=10)
        assert verifier_info.instance and verifier_info.instance == drafter_info.instance
        stubs = VerifierStubs(local=(verifier_info.instance, own))
        for name in (f"127.0.0.1:{port}", f"localhost:{port}"):
            local = stubs.port(name, None)
            assert isinstance(local, LocalVerifier) and local.worker is own and local.in_process
        remote = stubs.port(f"127.0.0.1:{other_port}", None)
        assert isinstance(remote, GrpcVerifier) and not remote.in_process
        # a drafter of another process holds the same address as a verifier over gRPC
        assert isinstance(VerifierStubs().port(f"127.0.0.1:{port}", None), GrpcVerifier)
    finally:
        worker.stop(0)
        other.stop(0)


def test_one_metrics_page_labels_each_workers_samples_by_role():
    drafter, verifier = WorkerMetrics("draft", 8), WorkerMetrics("verify", 8)
    drafter.kv_tokens.set(3)
    verifier.kv_tokens.set(5)
    verifier.record_pass(4, 0.01)
    drafter.verified_rounds.labels(path="in_process").inc()
    registry = registry_by_role(drafter=drafter.registry, verifier=verifier.registry)
    assert registry.get_sample_value("specgrove:kv_cache_tokens", {"role": "drafter"}) == 3
    assert registry.get_sample_value("specgrove:kv_cache_tokens", {"role": "verifier"}) == 5
    assert registry.get_sample_value("specgrove:verify_passes_total", {"role": "verifier"}) == 1
    assert registry.get_sample_value("specgrove:draft_verified_rounds_total",
                                     {"role": "drafter", "path": "in_process"}) == 1
    from specgrove.metrics import serve_metrics

    server, port = serve_metrics(registry, "127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    roles = {s.labels["role"] for s in families["specgrove:kv_cache_tokens"].samples}
    assert roles == {"drafter", "verifier"}  # one family, both workers' samples
