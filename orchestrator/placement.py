"""Where a session's rounds run: the orchestrator's drafters and verifiers, which of them are
live, one channel per worker, and the pair a new session is placed on.

A worker that fails is skipped for ``retry_s``; a session whose worker fails moves to the next
live one in its pool (a verifier re-prefills from the context, which comes from Redis). New
sessions are placed round-robin over the live verifiers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from specgrove.tls import TlsConfig, open_channel

CHANNEL_OPTIONS = [  # reconnect quickly to a restarted worker (gRPC's default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Placement:
    """The workers a session's rounds run on; either moves when it fails."""

    drafter: str  # "" when no drafter is deployed (plain decoding)
    verifier: str


class Workers:
    def __init__(self, drafters: tuple[str, ...], verifiers: tuple[str, ...], retry_s: float,
                 tls: TlsConfig | None = None):
        self.drafters, self.verifiers = drafters, verifiers
        self.retry_s = retry_s  # how long a failed worker is skipped
        self.tls = tls
        self._down_until: dict[str, float] = {}  # worker address -> skipped until (it failed)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._next = 0

    def place(self) -> Placement:
        """Round-robin over the workers, skipping verifiers that failed in the last ``retry_s``."""
        self._next += 1
        drafters = self.drafters or ("",)
        verifiers = [v for v in self.verifiers if self.live(v)] or list(self.verifiers)
        return Placement(drafters[self._next % len(drafters)], verifiers[self._next % len(verifiers)])

    def live(self, address: str) -> bool:
        return time.monotonic() >= self._down_until.get(address, 0)

    def mark_down(self, address: str) -> None:
        self._down_until[address] = time.monotonic() + self.retry_s

    def next_live(self, pool: tuple[str, ...], current: str) -> str:
        """The next worker after ``current`` in ``pool`` that is not marked down (the next one
        when all are)."""
        start = pool.index(current) if current in pool else -1
        ordered = [pool[(start + i) % len(pool)] for i in range(1, len(pool) + 1)]
        return next((a for a in ordered if self.live(a)), ordered[0])

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.tls, CHANNEL_OPTIONS, aio=True)
        return self._channels[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
