"""TLS and mTLS on every link, with a throwaway CA (tests/pki.py): in-process servers and real
role processes on loopback. A plaintext client of a TLS server, a client that does not trust the
server's CA, and (mTLS) a client with no certificate or one from another CA are all refused."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import grpc
import pytest

from drafter.tree_growth import ModelDrafter
from specgrove.errors import InvalidArgument
from specgrove.tls import TlsConfig, open_channel, ssl_context
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack

PROMPT = {"prompt": "my name is", "max_new_tokens": 8}
REFUSED = (urllib.error.URLError, ConnectionError, ssl.SSLError)


@pytest.fixture(scope="module")
def plain_tokens(tiny_target, redis_server):
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url)
    try:
        return Client(stack.address).generate(**PROMPT).token_ids
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def mtls_stack(tiny_target, redis_server, pki):
    """Every server requires a client certificate from the CA; every role dials with its own."""
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, tls=pki.server(mtls=True))
    yield stack
    stack.stop()


def refusal(address: str, tls: TlsConfig | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        Client(address, tls=tls).generate(**PROMPT, timeout=10)
    return err.value.code()


def test_mtls_on_every_link_serves_the_same_tokens(mtls_stack, pki, plain_tokens):
    out = Client(mtls_stack.address, tls=pki.client()).generate(**PROMPT)
    assert out.token_ids == plain_tokens
    assert out.usage["num_draft_tokens"] > 0  # the drafter -> verifier link was up: mTLS both ways


def test_plaintext_untrusted_and_certificateless_clients_are_refused(mtls_stack, pki):
    assert refusal(mtls_stack.address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    assert refusal(mtls_stack.address, TlsConfig(ca=pki.stranger_ca)) == grpc.StatusCode.UNAVAILABLE  # wrong CA
    assert refusal(mtls_stack.address, pki.client(with_cert=False)) == grpc.StatusCode.UNAVAILABLE  # no client cert
    assert refusal(mtls_stack.address, pki.stranger()) == grpc.StatusCode.UNAVAILABLE  # a cert from another CA


def test_the_workers_refuse_a_caller_without_a_client_certificate(mtls_stack, pki):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for address in (mtls_stack.verifier_address, mtls_stack.drafter_address):
        with open_channel(address, pki.client()) as channel:
            ok = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        with open_channel(address, pki.client(with_cert=False)) as channel, pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_without_client_certificates_and_a_server_name_override(tiny_target, redis_server, pki, plain_tokens):
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, tls=pki.server(mtls=False))
    try:
        dialed_by_name = TlsConfig(ca=pki.ca, server_name="localhost")  # the certificate names localhost too
        assert Client(stack.address, tls=dialed_by_name).generate(**PROMPT).token_ids == plain_tokens
        assert Client(stack.address, tls=pki.client(with_cert=False)).generate(**PROMPT).token_ids == plain_tokens
        assert refusal(stack.address, TlsConfig(ca=pki.ca, server_name="elsewhere.example")) == \
            grpc.StatusCode.UNAVAILABLE  # the name is checked
    finally:
        stack.stop()


def test_the_http_door_serves_https_and_requires_client_certificates_under_mtls(mtls_stack, pki):
    from services.http import start_http

    runner, port = mtls_stack.loop.run(start_http(mtls_stack.pipeline, "127.0.0.1", 0, ("tiny",),
                                                  ssl_context=ssl_context(pki.server(mtls=True))))
    try:
        trusted = ssl.create_default_context(cafile=pki.ca)
        with pytest.raises(REFUSED):  # no client certificate (TLS 1.3: the server hangs up after the handshake)
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=trusted, timeout=10)
        trusted.load_cert_chain(pki.cert, pki.key)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=trusted, timeout=10) as reply:
            assert reply.status == 200
        with pytest.raises(REFUSED):  # plain HTTP to the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10)
    finally:
        mtls_stack.loop.run(runner.cleanup())


def test_a_key_without_its_certificate_or_mtls_without_a_server_certificate_is_refused(pki):
    with pytest.raises(InvalidArgument, match="together"):
        TlsConfig(key=pki.key)
    with pytest.raises(InvalidArgument, match="client-ca"):
        TlsConfig(ca=pki.ca, client_ca=pki.ca)
    flags = TlsConfig.from_env({"SPECGROVE_TLS_CA": "env-ca.pem", "SPECGROVE_TLS_SERVER_NAME": "n"}, ca="flag-ca.pem")
    assert flags == TlsConfig(ca="flag-ca.pem", server_name="n")  # a flag wins over its variable


@pytest.mark.parametrize("layout", [(), ("--split-workers",)])
def test_specgrove_up_serves_mtls_and_requires_the_token(layout, long_dir, tmp_path, pki):
    """`specgrove up --tls-*` with SPECGROVE_AUTH_TOKEN: every role process reads SPECGROVE_TLS_*
    (what k8s passes) and the token; the worker's drafter asks its own address over mTLS whether it
    is its verifier; with --split-workers the drafter streams to its one verifier over mTLS."""
    import os
    import signal
    import subprocess
    import sys

    from specgrove.local_redis import free_port

    port = free_port()
    command = [sys.executable, "-m", "specgrove_apps.cli", "--cache-dir", str(tmp_path / "cache"), "up",
               "--port", str(port), "--target", str(long_dir), "--draft", str(long_dir), "--http-port", "-1",
               "--tls-cert", pki.cert, "--tls-key", pki.key, "--tls-ca", pki.ca, "--tls-client-ca", pki.ca, *layout]
    up = subprocess.Popen(command, env={**os.environ, "SPECGROVE_AUTH_TOKEN": "s3cret"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    printed = ""
    try:
        printed = wait_for_line(up, "specgrove up:", timeout=120)  # every role is up and healthy
        out = Client(f"127.0.0.1:{port}", auth_token="s3cret", tls=pki.client()).generate(**PROMPT)
        assert refusal(f"127.0.0.1:{port}", pki.client(with_cert=False)) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            Client(f"127.0.0.1:{port}", tls=pki.client()).generate(**PROMPT)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        up.send_signal(signal.SIGINT)
        printed += up.communicate(timeout=60)[0]
    assert len(out.token_ids) == PROMPT["max_new_tokens"] and out.usage["num_draft_tokens"] > 0
    assert up.returncode == 0, printed


def wait_for_line(process, text: str, timeout: float) -> str:
    """What ``process`` printed up to and including the first line holding ``text``."""
    import select
    import time

    printed, deadline = "", time.monotonic() + timeout
    while text not in printed:
        assert time.monotonic() < deadline and process.poll() is None, printed
        if select.select([process.stdout], [], [], 1.0)[0]:
            printed += process.stdout.readline()
    return printed
