"""Sessions in Redis (redis-py asyncio): the truth of every generation.

Keys, both expiring after ``ttl_s`` of inactivity:
- ``specgrove:{ID}`` (hash): prompt (packed int32), params / speculation / verifier / controller
  (JSON), seed, step (rounds committed), status (running | done), finish_reason, usage counters,
  cancel flag;
- ``specgrove:{ID}:tokens`` (string): confirmed token ids, packed int32, appended once per step.

``append`` is a Lua script: it appends a round's tokens only when the stored step is exactly the
previous one, so a replayed round (a retry, a second orchestrator) never duplicates tokens.
A short lease key (``specgrove:{ID}:owner``, renewed every round) holds the token of the one
stream generating the session; appends by any other stream are refused.

Every call rides through a Redis outage (a restart, a failover) of up to ``retry_s``: it is retried
with backoff on a new connection, and every call is idempotent (a session is created under an id
drawn once, a commit is applied by step, a lease is taken by token), so a call whose reply was
lost can be sent again. The scripts are reloaded after a restart (redis-py's ``Script`` answers
``NOSCRIPT`` by loading again). Past ``retry_s`` a call raises ``Unavailable``.

``{ID}`` is a Redis Cluster hash tag: only the session id is hashed, so a session's keys share
one slot and the script and the MULTI blocks, which touch several of them, run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from specgrove import telemetry
from specgrove.codec import pack_ids, unpack_ids
from specgrove.errors import NotFound, Unavailable
from specgrove.grammar import GrammarSpec
from specgrove.sampling import SamplingParams

T = TypeVar("T")

APPEND_SCRIPT = """
local step = redis.call('HGET', KEYS[1], 'step')
if not step then return {-2, 0} end
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[7] then return {-3, 0} end
step = tonumber(step)
if step ~= tonumber(ARGV[1]) - 1 then return {step, 0} end
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'step', ARGV[1], 'controller', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'drafted', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'accepted', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[7] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[8]) end
return {tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'cancel') or '0')}
"""


ACQUIRE_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


@dataclass
class Session:
    id: str
    prompt: list[int]
    params: SamplingParams
    seed: int
    speculation: dict
    step: int
    tokens: list[int]
    status: str  # running | done
    finish_reason: str
    controller: dict
    drafted: int
    accepted: int
    cancel: bool
    verifier: str = ""  # the verifier its last run was placed on (it may still hold its KV cache)


def _params_json(params: SamplingParams) -> str:
    return json.dumps({"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                       "seed": params.seed, "max_new_tokens": params.max_new_tokens,
                       "stop_token_ids": list(params.stop_token_ids), "stop": list(params.stop),
                       "grammar": params.grammar.to_json() if params.grammar else None})


def _params_from_json(text: str) -> SamplingParams:
    raw = json.loads(text)
    return SamplingParams(raw["temperature"], raw["top_k"], raw["top_p"], raw["seed"], raw["max_new_tokens"],
                          tuple(raw["stop_token_ids"]), tuple(raw["stop"]),
                          GrammarSpec.from_json(raw["grammar"]) if raw.get("grammar") else None)


class SessionStore:
    def __init__(self, url: str, ttl_s: int = 3600, lease_ms: int = 5000, retry_s: float = 10.0):
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError, TimeoutError
        from redis.asyncio.retry import Retry

        self.url = url
        self.ttl_s = ttl_s
        self.lease_ms = lease_ms
        self.retry_s = retry_s  # how long an outage is ridden through (every call) before Unavailable
        self._transient = (ConnectionError, TimeoutError, OSError)  # BusyLoadingError (LOADING) is a ConnectionError
        # no retries inside redis-py: ``_call`` is the one retry policy, bounded by retry_s
        self.redis = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        self._append = self.redis.register_script(APPEND_SCRIPT)
        self._acquire = self.redis.register_script(ACQUIRE_SCRIPT)
        self._release = self.redis.register_script(RELEASE_SCRIPT)

    async def _call(self, call: Callable[[], Awaitable[T]], session_id: str = "") -> T:
        """``call()``, retried with backoff (50 ms doubling to 1 s) while Redis is unreachable, for
        up to ``retry_s``; then Unavailable, naming the session to resume when there is one."""
        give_up, attempt = time.monotonic() + self.retry_s, 0
        while True:
            try:
                return await call()
            except self._transient as exc:
                attempt += 1
                if time.monotonic() >= give_up:
                    then = (f"; resume session {session_id} later" if session_id
                            else "; nothing was stored: send the request again")
                    raise Unavailable(f"session store (Redis at {self.url}) unreachable for "
                                      f"{self.retry_s:g} s ({exc}){then}") from exc
                telemetry.trace.get_current_span().add_event("redis retry", {"attempt": attempt})
                await asyncio.sleep(min(1.0, 0.05 * 2 ** attempt))

    @staticmethod
    def key(session_id: str) -> str:
        return f"specgrove:{{{session_id}}}"

    @staticmethod
    def tokens_key(session_id: str) -> str:
        return f"specgrove:{{{session_id}}}:tokens"

    @staticmethod
    def owner_key(session_id: str) -> str:
        return f"specgrove:{{{session_id}}}:owner"

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any connection failure means the same to a client
            raise Unavailable(f"session store (Redis at {self.url}) unreachable: {exc}") from exc

    async def create(self, prompt: list[int], params: SamplingParams, seed: int, speculation: dict) -> str:
        session_id = uuid.uuid4().hex  # drawn once: a retried create writes the same session
        key = self.key(session_id)

        async def write():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={
                    "prompt": pack_ids(prompt), "params": _params_json(params), "seed": seed,
                    "speculation": json.dumps(speculation), "step": 0, "status": "running", "finish_reason": "",
                    "controller": "{}", "drafted": 0, "accepted": 0, "cancel": 0, "created": time.time(),
                })
                pipe.set(self.tokens_key(session_id), b"")
                pipe.expire(key, self.ttl_s)
                pipe.expire(self.tokens_key(session_id), self.ttl_s)
                await pipe.execute()

        await self._call(write)
        return session_id

    async def load(self, session_id: str) -> Session:
        async def read():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.key(session_id))
                pipe.get(self.tokens_key(session_id))
                return await pipe.execute()

        raw, tokens = await self._call(read, session_id)
        if not raw:
            raise NotFound(f"session {session_id!r} does not exist or has expired")
        g = {k.decode(): v for k, v in raw.items()}
        return Session(
            id=session_id, prompt=unpack_ids(g["prompt"]), params=_params_from_json(g["params"]),
            seed=int(g["seed"]), speculation=json.loads(g["speculation"]), step=int(g["step"]),
            tokens=unpack_ids(tokens or b""), status=g["status"].decode(), finish_reason=g["finish_reason"].decode(),
            controller=json.loads(g["controller"]), drafted=int(g["drafted"]), accepted=int(g["accepted"]),
            cancel=g["cancel"] == b"1", verifier=g.get("verifier", b"").decode(),
        )

    async def append(self, session_id: str, step: int, tokens: list[int], controller: dict,
                     drafted: int, accepted: int, owner: str = "") -> tuple[int, bool]:
        """Commit round `step` (1-based) unless another lease holder owns the session, renewing
        the owner's lease, in one round trip. Returns (stored step afterwards, cancel flag): the
        step is `step` when this call committed it (or a lost reply's retry finds it committed),
        something else when another writer moved on, −3 when another stream holds the lease."""
        keys = [self.key(session_id), self.tokens_key(session_id), self.owner_key(session_id)]
        result, cancel = await self._call(lambda: self._append(keys=keys, args=[
            step, pack_ids(tokens), json.dumps(controller), self.ttl_s, drafted, accepted, owner, self.lease_ms]),
            session_id)
        if result == -2:
            raise NotFound(f"session {session_id!r} expired while generating")
        return int(result), bool(cancel)

    async def finish(self, session_id: str, reason: str) -> None:
        await self._call(lambda: self.redis.hset(self.key(session_id),
                                                 mapping={"status": "done", "finish_reason": reason}), session_id)

    async def place(self, session_id: str, verifier: str) -> None:
        """Remember the verifier the session runs on: a resumed session prefers it (its cache)."""
        await self._call(lambda: self.redis.hset(self.key(session_id), "verifier", verifier), session_id)

    async def cancel(self, session_id: str) -> bool:
        """Flag a session for cancellation; returns whether it was running."""
        key = self.key(session_id)
        status = await self._call(lambda: self.redis.hget(key, "status"), session_id)
        if status is None:
            raise NotFound(f"session {session_id!r} does not exist or has expired")
        await self._call(lambda: self.redis.hset(key, "cancel", 1), session_id)
        return status == b"running"

    async def cancelled(self, session_id: str) -> bool:
        return await self._call(lambda: self.redis.hget(self.key(session_id), "cancel"), session_id) == b"1"

    async def acquire(self, session_id: str, token: str) -> bool:
        """Take or renew the generation lease for `token` (one per generating stream); False when
        another stream holds it. Atomic (Lua)."""
        return bool(await self._call(lambda: self._acquire(keys=[self.owner_key(session_id)],
                                                           args=[token, self.lease_ms]), session_id))

    async def release(self, session_id: str, token: str) -> None:
        await self._call(lambda: self._release(keys=[self.owner_key(session_id)], args=[token]), session_id)

    async def close(self) -> None:
        await self.redis.aclose()
