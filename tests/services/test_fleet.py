"""A fleet behind one name: one orchestrator, a role name that resolves to two verifiers (an
``ipv4:`` list, or a ``file:`` the test edits mid-run), 8 concurrent sessions over real loopback
gRPC and a real Redis. New sessions go where they get the most tokens per second (equal
verifiers share them, a slowed one gets few), a session keeps its verifier (prefills count it),
a verifier added mid-run takes new sessions, and one drained mid-run loses no token."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from services.server import create_verifier_server, drain
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack
from verifier.worker import VerifierWorker

PROMPTS = ["my name is", "the cat", "once upon a time there was a", "a", "hello world, this is",
           "to be or not to be", "one two three", "where"]
MAX_NEW = 32


def verified_tokens(worker: VerifierWorker) -> float:
    """The tokens the verifier scored in its passes (each round's root and tree nodes)."""
    return worker.metrics.registry.get_sample_value("specgrove:verify_tokens_per_pass_sum") or 0.0


def prefills(worker: VerifierWorker) -> float:
    return worker.metrics.registry.get_sample_value("specgrove:verify_prefills_total") or 0.0


def orchestrator_count(stack: InProcessStack, name: str, address: str) -> float:
    registry = stack.pipeline.metrics.registry
    return registry.get_sample_value(f"specgrove:{name}_total", {"verifier": address}) or 0.0


def expected_outputs(target) -> list[list[int]]:
    plain = SpeculativeEngine(target)
    return [plain.generate(target.encode(p), SamplingParams(max_new_tokens=MAX_NEW)).token_ids for p in PROMPTS]


def generate_all(stack: InProcessStack, prompts=PROMPTS) -> list[list[int]]:
    client = Client(stack.address)
    with ThreadPoolExecutor(len(prompts)) as pool:
        outputs = list(pool.map(lambda p: client.generate(p, max_new_tokens=MAX_NEW, mode="chain", draft_len=3),
                                prompts))
    return [o.token_ids for o in outputs]


def one_name(addresses: list[str]) -> tuple[str, ...]:
    return ("ipv4:" + ",".join(addresses),)


def check_affinity(stack: InProcessStack) -> None:
    """Prefills per verifier are at most the sessions it was given plus those that moved to it."""
    check_affinity_of(stack, zip(stack.verifier_workers, stack.pipeline.workers.verifiers))


def test_equal_verifiers_behind_one_name_share_the_sessions(tiny_target, tiny_draft, redis_server):
    expected = expected_outputs(tiny_target)
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, verifiers=2, min_pass_ms=30,
                           name_verifiers=one_name)
    try:
        assert generate_all(stack) == expected
        tokens = [verified_tokens(w) for w in stack.verifier_workers]
        shares = [t / sum(tokens) for t in tokens]
        assert all(0.35 <= share <= 0.65 for share in shares), shares
        check_affinity(stack)
    finally:
        stack.stop()


def test_a_slowed_verifier_gets_few_sessions(tiny_target, tiny_draft, redis_server):
    expected = expected_outputs(tiny_target)
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, verifiers=2,
                           verifier_pass_ms=(30.0, 300.0), name_verifiers=one_name)
    try:
        assert generate_all(stack) == expected
        fast, slow = (verified_tokens(w) for w in stack.verifier_workers)
        assert fast / (fast + slow) >= 0.75, (fast, slow)
        check_affinity(stack)
    finally:
        stack.stop()


def test_sessions_go_to_the_verifier_their_drafter_is_near(tiny_target, tiny_draft, redis_server):
    """The drafter's messages reach one verifier 150 ms late (a far zone): once the drafter has
    measured its link to both (the first sessions spread before any round was sent), new sessions
    go to the near one, and every token is still the plain greedy one."""
    expected = expected_outputs(tiny_target)
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, verifiers=2, min_pass_ms=30,
                           verifier_link_ms=(0.0, 150.0), name_verifiers=one_name, poll_s=0.2)
    near, far = stack.pipeline.workers.verifiers
    try:
        assert generate_all(stack) == expected
        links = stack.drafter_worker.load_report()["link_ms"]
        assert links[far] >= 150.0 > links[near], links  # measured by the drafter on its rounds
        time.sleep(0.5)  # the orchestrator polls the drafter's links
        placed = [orchestrator_count(stack, "sessions_placed", v) for v in (near, far)]
        assert generate_all(stack) == expected
        near_now, far_now = (orchestrator_count(stack, "sessions_placed", v) - n for v, n in zip((near, far), placed))
        assert near_now / (near_now + far_now) >= 0.75, (near_now, far_now)
        check_affinity(stack)
    finally:
        stack.stop()


def test_a_verifier_added_mid_run_takes_new_sessions_and_one_drained_loses_no_token(
        tiny_target, tiny_draft, redis_server, tmp_path):
    expected = expected_outputs(tiny_target)
    hosts = tmp_path / "verifiers.txt"

    def by_file(addresses: list[str]) -> tuple[str, ...]:
        hosts.write_text("\n".join(addresses) + "\n")
        return (f"file:{hosts}",)

    # passes of 100 ms: a 32-token session lasts several of them, so the drain meets it mid-run
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, min_pass_ms=100,
                           name_verifiers=by_file, resolve_s=0.2, poll_s=0.2)
    added = VerifierWorker(tiny_target, min_pass_ms=100)
    server, port = create_verifier_server("127.0.0.1:0", added)
    server.start()
    first, second = stack.verifier_address, f"127.0.0.1:{port}"
    try:
        assert generate_all(stack, PROMPTS[:4]) == expected[:4]
        assert orchestrator_count(stack, "sessions_placed", first) == 4
        hosts.write_text(f"{first}\n{second}\n")  # a pod comes up behind the name
        time.sleep(0.5)
        outputs: list = []
        runner = threading.Thread(target=lambda: outputs.extend(generate_all(stack, PROMPTS[4:])))
        runner.start()
        time.sleep(0.4)  # the sessions are mid-generation on both verifiers: the first one is told to stop
        draining = threading.Thread(target=drain, args=(stack.verifier, stack.verifier_worker, 20.0))
        draining.start()
        runner.join(120)
        assert outputs == expected[4:]  # the drained verifier's sessions moved on: nothing lost or doubled
        assert orchestrator_count(stack, "sessions_placed", second) >= 2  # the new verifier took new sessions
        assert orchestrator_count(stack, "sessions_moved", second) >= 1  # and those of the drained one
        draining.join(30)
        assert not draining.is_alive()  # it stopped once no round came
        hosts.write_text(f"{second}\n")  # its pod leaves the name
        time.sleep(0.5)
        assert generate_all(stack, PROMPTS[:2]) == expected[:2]  # served on by the verifier left
        assert orchestrator_count(stack, "sessions_placed", second) >= 4
        check_affinity_of(stack, [(added, second)])
    finally:
        server.stop(0)
        stack.stop()


def check_affinity_of(stack: InProcessStack, pairs) -> None:
    for worker, address in pairs:
        given = orchestrator_count(stack, "sessions_placed", address) + orchestrator_count(stack, "sessions_moved",
                                                                                           address)
        assert prefills(worker) <= given, (address, prefills(worker), given)
