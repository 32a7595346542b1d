"""The local redis-server of `specgrove up`: append-only, and its data directory kept across runs
but never shared by two live servers (two writers of one AOF file would corrupt it)."""

from __future__ import annotations

import socket

import redis

from specgrove.local_redis import LocalRedis, free_port


def test_a_shared_data_directory_is_reused_by_the_next_run_and_never_by_two_at_once(tmp_path):
    first = LocalRedis.shared(tmp_path / "redis")
    second = LocalRedis.shared(tmp_path / "redis")  # the first still holds it
    try:
        assert first.dir == str(tmp_path / "redis") and second.dir != first.dir
        assert redis.Redis(port=first.port).config_get("appendonly") == {"appendonly": "yes"}
        redis.Redis(port=first.port).set("k", "v")
    finally:
        second.stop()
        first.stop()  # gives the directory up
    third = LocalRedis.shared(tmp_path / "redis")
    try:
        assert third.dir == first.dir and redis.Redis(port=third.port).get("k") == b"v"
    finally:
        third.stop()


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    """The kernel gives outgoing connections ports from its ephemeral range; a port picked there
    could be taken between the pick and the server's bind (a role's start failed that way)."""
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert max(ports) + 10000 < 32768  # Linux's default range starts at 32768; a cluster bus is port + 10000
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
