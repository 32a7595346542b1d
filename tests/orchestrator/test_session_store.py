"""Sessions in a real redis-server: idempotent appends by step, leases, cancel, not-found."""

import asyncio
import threading
import time

import pytest

from orchestrator.session_store import SessionStore
from specgrove.errors import NotFound, Unavailable
from specgrove.local_redis import LocalRedis, free_port
from specgrove.sampling import SamplingParams


@pytest.fixture(scope="module")
def redis_url():
    server = LocalRedis()
    yield server.url
    server.stop()


def run(coro):
    return asyncio.run(coro)


def test_a_round_is_committed_once_whatever_the_retries(redis_url):
    async def go():
        store = SessionStore(redis_url)
        sid = await store.create([1, 2, 3], SamplingParams(seed=5), 5, {"mode": "chain"})
        assert await store.append(sid, 1, [10, 11], {"lambda": 0.5}, 3, 1) == (1, False)
        assert await store.append(sid, 1, [10, 11], {"lambda": 0.5}, 3, 1) == (1, False)  # replay: a no-op
        assert await store.append(sid, 3, [99], {}, 0, 0) == (1, False)  # a gap: refused
        await store.cancel(sid)
        assert await store.append(sid, 2, [12], {}, 0, 0) == (2, True)  # committed; the cancel is reported
        session = await store.load(sid)
        await store.close()
        return session

    session = run(go())
    assert session.tokens == [10, 11, 12] and session.step == 2 and session.prompt == [1, 2, 3]
    assert session.params.seed == 5 and session.drafted == 3 and session.accepted == 1
    assert session.controller == {}


def test_leases_cancel_and_unknown_sessions(redis_url):
    async def go():
        a, b = SessionStore(redis_url, lease_ms=2000), SessionStore(redis_url)
        sid = await a.create([1], SamplingParams(), 1, {})
        assert await a.acquire(sid, "run-a") and await a.acquire(sid, "run-a")
        assert not await b.acquire(sid, "run-b")
        assert (await b.append(sid, 1, [7], {}, 0, 0, owner="run-b"))[0] == -3  # fenced: not the lease holder
        await b.release(sid, "run-b")  # releasing someone else's lease does nothing
        assert not await b.acquire(sid, "run-b")
        deadline = time.monotonic() + 10
        while not await b.acquire(sid, "run-b"):  # the lease expires: a crashed owner cannot block the session
            assert time.monotonic() < deadline, "run-a's lease never expired"
            await asyncio.sleep(0.05)
        assert await b.append(sid, 1, [7], {}, 0, 0, owner="run-b") == (1, False)
        await b.release(sid, "run-b")
        assert await a.acquire(sid, "run-a")
        assert await a.cancel(sid) and await a.cancelled(sid)
        with pytest.raises(NotFound):
            await a.load("missing")
        with pytest.raises(NotFound):
            await a.cancel("missing")
        await a.close()
        await b.close()

    run(go())


def test_an_unreachable_redis_is_unavailable():
    async def go():
        store = SessionStore("redis://127.0.0.1:1/0")
        with pytest.raises(Unavailable, match="Redis"):
            await store.ping()
        await store.close()

    run(go())


def test_committed_tokens_survive_a_crash_and_restart_of_redis(tmp_path):
    """Append-only persistence: SIGKILL right after the commits were acknowledged, start again on
    the same data directory, and every committed round is there; replays stay no-ops."""
    server = LocalRedis(data_dir=tmp_path / "redis")

    async def commit():
        store = SessionStore(server.url)
        sid = await store.create([1, 2, 3], SamplingParams(seed=5), 5, {"mode": "chain"})
        for step, tokens in enumerate(([10, 11], [12], [13, 14, 15]), start=1):
            assert (await store.append(sid, step, tokens, {"lambda": 0.4}, 4, len(tokens) - 1))[0] == step
        await store.close()
        return sid

    async def after(sid):
        store = SessionStore(server.url)
        session = await store.load(sid)
        replay = await store.append(sid, 3, [13, 14, 15], {}, 0, 0)
        more = await store.append(sid, 4, [16], {}, 0, 0)
        again = await store.load(sid)
        await store.close()
        return session, replay, more, again.tokens

    try:
        sid = run(commit())
        server.kill()
        server.restart()
        session, replay, more, tokens = run(after(sid))
    finally:
        server.stop()
    assert session.tokens == [10, 11, 12, 13, 14, 15] and session.step == 3 and session.prompt == [1, 2, 3]
    assert session.controller == {"lambda": 0.4} and session.drafted == 12 and session.accepted == 3
    assert replay == (3, False) and more == (4, False) and tokens == [10, 11, 12, 13, 14, 15, 16]


def test_every_store_call_rides_through_a_redis_restart(tmp_path):
    """Redis SIGKILLed, then started again 1.5 s later on the same port and append-only file: every
    call made while it is down (a commit, whose script the new server no longer holds, so NOSCRIPT
    is answered by loading it again; a create; a load; a lease; a finish) waits and succeeds, with
    nothing committed twice. An outage longer than retry_s is Unavailable, naming the session."""
    server = LocalRedis(data_dir=tmp_path / "redis")

    async def outage(store, calls):
        server.kill()
        restart = threading.Timer(1.5, server.restart)
        restart.start()
        t0 = time.monotonic()
        results = await asyncio.gather(*calls)
        waited = time.monotonic() - t0
        await asyncio.to_thread(restart.join)
        return results, waited

    async def go():
        store = SessionStore(server.url, retry_s=10)
        sid = await store.create([1, 2], SamplingParams(seed=3), 3, {})
        assert await store.acquire(sid, "run") and (await store.append(sid, 1, [7], {}, 1, 0, "run"))[0] == 1
        (committed, created, loaded, leased), waited = await outage(store, [
            store.append(sid, 2, [8, 9], {}, 2, 1, "run"), store.create([4], SamplingParams(), 1, {}),
            store.load(sid), store.acquire(sid, "run")])
        assert waited >= 1.5 and committed == (2, False) and leased  # the lease is still this run's
        assert loaded.tokens in ([7], [7, 8, 9])  # read before or after the commit: both are consistent
        (replayed, _, _), _ = await outage(store, [store.append(sid, 2, [8, 9], {}, 2, 1, "run"),
                                                   store.finish(sid, "length"), store.release(sid, "run")])
        assert replayed == (2, False)  # a replay of a committed round stays a no-op
        session, other = await store.load(sid), await store.load(created)
        assert session.tokens == [7, 8, 9] and session.step == 2 and session.status == "done"
        assert other.prompt == [4] and other.step == 0
        server.kill()
        brief = SessionStore(server.url, retry_s=0.5)
        with pytest.raises(Unavailable, match=f"resume session {sid} later"):
            await brief.append(sid, 3, [1], {}, 0, 0)
        await store.close()
        await brief.close()

    try:
        run(go())
    finally:
        server.stop()


def one_node_cluster(directory) -> LocalRedis:
    """A real Redis Cluster of one node owning every slot: it refuses multi-key commands, MULTI
    blocks and scripts whose keys hash to different slots (CROSSSLOT), as any cluster does."""
    import redis

    server = LocalRedis(port=free_port(below=65536 - 10000), data_dir=directory,  # its bus: port + 10000
                        args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"))
    client = redis.Redis(port=server.port)
    client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
    deadline = time.monotonic() + 10
    while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "the one-node cluster never came up"
        time.sleep(0.05)
    client.close()
    return server


def test_a_sessions_keys_share_one_slot_so_the_store_runs_on_redis_cluster(tmp_path):
    import redis
    from redis.crc import key_slot

    from orchestrator.session_store import APPEND_SCRIPT

    sid = "0123abcd"
    keys = [SessionStore.key(sid), SessionStore.tokens_key(sid), SessionStore.owner_key(sid)]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    server = one_node_cluster(tmp_path / "cluster")

    async def go():
        store = SessionStore(server.url)
        sid = await store.create([1, 2], SamplingParams(), 1, {})
        assert await store.acquire(sid, "run-a")
        assert await store.append(sid, 1, [7, 8], {}, 2, 1, owner="run-a") == (1, False)
        session = await store.load(sid)
        await store.release(sid, "run-a")
        await store.close()
        return session

    try:
        session = run(go())
        untagged = ["sg:s:x", "sg:s:x:tok", "sg:s:x:owner"]  # the layout before hash tags: three slots
        with pytest.raises(redis.exceptions.ResponseError, match="hash to the same slot"):  # CROSSSLOT
            redis.Redis(port=server.port).eval(APPEND_SCRIPT, 3, *untagged, 1, b"", "{}", 60, 0, 0, "", 1000)
    finally:
        server.stop()
    assert session.tokens == [7, 8] and session.step == 1
