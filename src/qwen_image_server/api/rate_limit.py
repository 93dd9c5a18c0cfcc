"""Requests per minute per caller, on every authenticated request of every dialect.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a
budget of N requests per minute allows a burst of N, then one request every 60/N seconds as the
budget refills. The state per caller is one number, the "theoretical arrival time" (TAT); a request
is allowed when the TAT it would push forward stays within one minute of now. A refused request
learns exactly how long until one would be allowed: that is its `Retry-After`.

Two implementations of one `RequestRateLimiter` seam: in process memory (the embedded default, for
one API process) and in Redis (setting `redis_url`), where one Lua script reads and moves the TAT
atomically on the Redis server's clock, so every API process draws on the same budget.

If Redis cannot be reached the limiter fails open: requests are allowed and a warning is logged
once per outage. The limiter guards capacity; the limits that guard the queue (`tasks_per_minute`,
`active_tasks_per_key`, `max_queue_depth`) are counted in the task database and still hold, so a
Redis outage should not become an outage of the whole API.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from qwen_image_server.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)

MINUTE = 60.0


class RequestRateLimiter(Protocol):
    per_minute: int

    async def acquire(self, identity: str) -> float:
        """Count one request of `identity`: 0.0 when it is allowed, else the seconds until one
        would be (the request is then not counted)."""
        ...

    async def close(self) -> None: ...


def gcra(tat: float, now: float, per_minute: int) -> tuple[float, float]:
    """(the new TAT, 0.0) when a request at `now` is allowed; (`tat` unchanged, seconds to wait)
    when not. `tat` is the stored TAT, or anything <= now for a caller with no recent requests."""
    interval = MINUTE / per_minute
    pushed = max(tat, now) + interval
    wait = pushed - MINUTE - now
    if wait > 0:
        return tat, wait
    return pushed, 0.0


class MemoryRateLimiter:
    """GCRA in this process's memory: right for one API process (the embedded default)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._prune_above = 1024

    async def acquire(self, identity: str) -> float:
        now = self._clock()
        tat, wait = gcra(self._tats.get(identity, now), now, self.per_minute)
        self._tats[identity] = tat
        if len(self._tats) > self._prune_above:
            self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        """Forget callers whose TAT has passed (they are as new); keeps memory to active callers."""
        self._tats = {identity: tat for identity, tat in self._tats.items() if tat > now}
        self._prune_above = max(1024, 2 * len(self._tats))

    async def close(self) -> None:
        self._tats.clear()


# KEYS[1]: the caller's TAT; ARGV: the interval and the period, in microseconds. Returns 0 when
# allowed, else the microseconds to wait. Integers throughout (Redis turns Lua numbers into
# integers), on the server's clock so that API processes on several machines agree.
_GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local pushed = tat + interval
local wait = pushed - period - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%d', pushed), 'PX', math.ceil((pushed - now) / 1000))
return 0
"""

_RETRY_REDIS_AFTER = 5.0  # after a failure, skip Redis this long so requests do not each pay a timeout


class RedisRateLimiter:
    """GCRA in Redis, shared by every API process pointed at the same Redis and key prefix."""

    def __init__(self, client: Redis, per_minute: int, *, prefix: str) -> None:
        self.per_minute = per_minute
        self._client = client
        self._prefix = f"{prefix}rate:"
        self._script = client.register_script(_GCRA_SCRIPT)
        self._interval_us = math.ceil(MINUTE * 1e6 / per_minute)
        self._skip_until = 0.0  # monotonic time; nonzero while Redis is thought to be down

    @classmethod
    def from_url(cls, url: str, per_minute: int, *, prefix: str) -> RedisRateLimiter:
        from redis.asyncio import Redis

        # Short timeouts: the limiter sits in front of every request, and fails open.
        client = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        return cls(client, per_minute, prefix=prefix)

    async def acquire(self, identity: str) -> float:
        from redis.exceptions import RedisError

        if self._skip_until and time.monotonic() < self._skip_until:
            return 0.0
        try:
            waited = await self._script(keys=[self._prefix + identity], args=[self._interval_us, int(MINUTE * 1e6)])
        except (RedisError, OSError) as exc:
            if not self._skip_until:
                log.warning("the request rate limit is off: Redis does not answer (%s); requests are allowed", exc)
            self._skip_until = time.monotonic() + _RETRY_REDIS_AFTER
            return 0.0
        if self._skip_until:
            log.warning("Redis answers again; the request rate limit is back on")
            self._skip_until = 0.0
        return int(waited) / 1e6

    async def close(self) -> None:
        await self._client.aclose()


def build_rate_limiter(settings: Settings) -> RequestRateLimiter | None:
    """The limiter the settings ask for: none without `requests_per_minute`; in Redis when
    `redis_url` is set (several API processes); else in this process's memory."""
    if settings.requests_per_minute is None:
        return None
    if settings.redis_url:
        return RedisRateLimiter.from_url(
            settings.redis_url, settings.requests_per_minute, prefix=settings.redis_key_prefix
        )
    return MemoryRateLimiter(settings.requests_per_minute)


async def check_request_rate(limiter: RequestRateLimiter | None, identity: str, *, who: str) -> None:
    """Count the request; raise `RateLimited` (429 with Retry-After) when over the budget.
    `who` names the caller in the message ("this API key", "this address")."""
    if limiter is None:
        return
    wait = await limiter.acquire(identity)
    if wait > 0:
        seconds = math.ceil(wait)
        raise RateLimited(
            f"too many requests from {who}: the limit is {limiter.per_minute} per minute; retry in {seconds} s",
            retry_after=seconds,
        )
