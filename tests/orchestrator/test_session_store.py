"""Sessions in a real redis-server: idempotent appends by step, leases, cancel, not-found."""

import asyncio
import time

import pytest

from orchestrator.session_store import SessionStore
from specgrove.errors import NotFound, Unavailable
from specgrove.local_redis import LocalRedis
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
