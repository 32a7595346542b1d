"""Auth on every role: a set bearer token is required by the orchestrator, the drafter and the
verifier alike (health excepted), and a drafter streams only to the verifiers it was configured
with: a Draft naming any other address is refused with PERMISSION_DENIED before any work."""

from __future__ import annotations

import grpc
import pytest

from drafter.tree_growth import ModelDrafter
from services.server import create_verifier_server
from specgrove import codec
from specgrove.budget import DraftBudget
from specgrove.sampling import SamplingParams
from specgrove.tls import open_channel
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc
from tests.services.conftest import InProcessStack
from verifier.worker import VerifierWorker

TOKEN = [("authorization", "Bearer s3cret")]


def draft_request(tiny_target, verifier: str) -> speculate_pb2.DraftRequest:
    ids = tiny_target.encode("my name is")
    round_pb = speculate_pb2.RoundContext(session_id="s1", step=1, context=codec.pack_ids(ids),
                                          sampling=codec.params_to_pb(SamplingParams()), seed=1, output_start=len(ids))
    return speculate_pb2.DraftRequest(round=round_pb, plan=codec.budget_to_pb(DraftBudget(max_len=3), [-1, 0, 1]),
                                      verifier=verifier, verify_timeout_ms=10000)


@pytest.fixture(scope="module")
def stack(tiny_target, redis_server):
    s = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, auth_token="s3cret")
    yield s
    s.stop()


def test_every_role_requires_the_token(stack):
    calls = {stack.verifier_address: speculate_pb2_grpc.VerifierStub, stack.drafter_address: speculate_pb2_grpc.DrafterStub}
    for address, stub in calls.items():
        with open_channel(address, None) as channel:
            info = stub(channel).Info(speculate_pb2.InfoRequest(), metadata=TOKEN, timeout=10)
            assert info.role in ("drafter", "verifier")
            for metadata in ((), [("authorization", "Bearer wrong")]):
                with pytest.raises(grpc.RpcError) as err:
                    stub(channel).Info(speculate_pb2.InfoRequest(), metadata=metadata, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, address


def test_a_drafter_streams_to_its_verifier_and_to_no_other(stack, tiny_target):
    rogue_worker = VerifierWorker(tiny_target)
    rogue, port = create_verifier_server("127.0.0.1:0", rogue_worker)  # no token: it would accept anything
    rogue.start()
    try:
        with open_channel(stack.drafter_address, None) as channel:
            drafter = speculate_pb2_grpc.DrafterStub(channel)
            reply = drafter.Draft(draft_request(tiny_target, stack.verifier_address), metadata=TOKEN, timeout=30)
            assert reply.timing.tree_bytes > 0  # the configured verifier got the tree and answered
            with pytest.raises(grpc.RpcError) as err:
                drafter.Draft(draft_request(tiny_target, f"127.0.0.1:{port}"), metadata=TOKEN, timeout=30)
    finally:
        rogue.stop(0)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "streams only to its configured verifiers" in err.value.details()
    assert stack.verifier_address in err.value.details() and f"127.0.0.1:{port}" in err.value.details()
    assert not rogue_worker._sessions  # it never heard from the drafter
