"""The emulated slow link (``--link-delay-ms``) behaves like a wire of that one-way latency, on
real gRPC over loopback: each tree level reaches the verifier's handler D after it was sent (a
level drawn late is not let through early by an earlier wait, as a single sleep at the start of
the call did), the reply comes back D late, and a plain step (Decode, from the orchestrator beside the verifier)
is not delayed. Lower bounds only: a busy machine can only make things later. The drafter's
server delays the orchestrator's Draft calls the same way (``LinkDelay(D, ("/Draft",))``)."""

from __future__ import annotations

import time
from concurrent import futures

import grpc

from services.server import LinkDelay

DELAY_S = 0.3
VERIFY, DECODE = "/specgrove.v1.Verifier/Verify", "/specgrove.v1.Verifier/Decode"


def _server(arrivals: list[float]):
    def verify(request_iterator, context):
        for _ in request_iterator:
            arrivals.append(time.monotonic())
        return b"verdict"

    def decode(request, context):
        arrivals.append(time.monotonic())
        return b"token"

    handlers = {"Verify": grpc.stream_unary_rpc_method_handler(verify),
                "Decode": grpc.unary_unary_rpc_method_handler(decode)}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[LinkDelay(DELAY_S * 1000)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("specgrove.v1.Verifier", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_every_level_and_the_reply_travel_the_delay_and_plain_steps_do_not():
    arrivals: list[float] = []
    server, port = _server(arrivals)
    sent: list[float] = []

    def levels():
        for gap in (0.0, 0.0, 2 * DELAY_S):  # the last level is drawn long after the first left
            time.sleep(gap)
            sent.append(time.monotonic())
            yield b"level"

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            verify = channel.stream_unary(VERIFY)
            reply = verify(levels(), timeout=10)
            returned = time.monotonic()
            assert reply == b"verdict" and len(arrivals) == 3
            for t_sent, t_arrived in zip(sent, arrivals):
                assert t_arrived - t_sent >= DELAY_S * 0.99  # each level travels the delay, the late one too
            assert returned - arrivals[-1] >= DELAY_S * 0.99  # and so does the verdict
            arrivals.clear()
            t0 = time.monotonic()
            assert channel.unary_unary(DECODE)(b"step", timeout=10) == b"token"
            assert arrivals[0] - t0 < DELAY_S  # the orchestrator's plain step is not on the slow link
    finally:
        server.stop(None)
