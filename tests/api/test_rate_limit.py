"""Requests per minute per key: both limiters (process memory, Redis) under one contract, then the
limit as every dialect's clients meet it (429 + Retry-After in their shape), shared through Redis.

The Redis tests need a Redis server: QWEN_IMAGE_TEST_REDIS_URL, default redis://127.0.0.1:6379/0
(skipped, with the reason, when none answers). Each test writes under its own key prefix and
deletes what it wrote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from qwen_image_server.api.rate_limit import MemoryRateLimiter, RedisRateLimiter, RequestRateLimiter, gcra
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("QWEN_IMAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@asynccontextmanager
async def fresh_redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix in the test Redis; its keys are deleted afterwards."""
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (RedisError, OSError):
        await client.aclose()
        pytest.skip(f"no Redis answers at {REDIS_URL} (set QWEN_IMAGE_TEST_REDIS_URL)")
    prefix = f"qis-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        written = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if written:
            await client.delete(*written)
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    async with fresh_redis_prefix() as prefix:
        yield prefix


LimiterFactory = Callable[[int], RequestRateLimiter]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[LimiterFactory]:
    """Limiters of one implementation; all closed after the test."""
    made: list[RequestRateLimiter] = []
    async with AsyncExitStack() as stack:
        if request.param == "redis":
            prefix = await stack.enter_async_context(fresh_redis_prefix())

        def memory(per_minute: int) -> RequestRateLimiter:
            made.append(MemoryRateLimiter(per_minute))
            return made[-1]

        def redis(per_minute: int) -> RequestRateLimiter:
            made.append(RedisRateLimiter.from_url(REDIS_URL, per_minute, prefix=prefix))
            return made[-1]

        yield memory if request.param == "memory" else redis
        for limiter in made:
            await limiter.close()


async def burst(limiter: RequestRateLimiter, identity: str, count: int) -> list[float]:
    return [await limiter.acquire(identity) for _ in range(count)]


# The contract: both implementations pass these.


async def test_a_burst_of_the_budget_passes_then_a_refill_interval_is_the_wait(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(5)  # one request every 12 s once the burst of 5 is spent
    assert await burst(limiter, "key:alice", 5) == [0.0] * 5
    wait = await limiter.acquire("key:alice")
    assert 11.0 < wait <= 12.0
    assert await limiter.acquire("key:bob") == 0.0, "another caller has its own budget"


async def test_refused_requests_do_not_spend_the_budget(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(5)
    await burst(limiter, "key:alice", 5)
    waits = await burst(limiter, "key:alice", 20)
    assert all(0 < later <= earlier for earlier, later in pairwise(waits)), waits


async def test_a_refused_caller_is_let_in_once_its_wait_has_passed(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(1200)  # a refill every 50 ms
    waits = await burst(limiter, "key:alice", 1300)
    first_refusal = next(wait for wait in waits if wait > 0)
    assert 0 < first_refusal <= 0.05
    wait = await limiter.acquire("key:alice")
    await asyncio.sleep(wait)
    assert await limiter.acquire("key:alice") == 0.0


async def test_two_limiters_on_one_redis_share_the_budget(redis_prefix: str) -> None:
    first = RedisRateLimiter.from_url(REDIS_URL, 3, prefix=redis_prefix)
    second = RedisRateLimiter.from_url(REDIS_URL, 3, prefix=redis_prefix)
    elsewhere = RedisRateLimiter.from_url(REDIS_URL, 3, prefix=redis_prefix + "other:")
    try:
        assert [await first.acquire("key:k"), await second.acquire("key:k"), await first.acquire("key:k")] == [0.0] * 3
        assert await second.acquire("key:k") > 0
        assert await elsewhere.acquire("key:k") == 0.0, "another prefix is another deployment"
    finally:
        for limiter in (first, second, elsewhere):
            await limiter.close()


async def test_redis_keys_expire_when_their_budget_is_full_again(redis_prefix: str) -> None:
    limiter = RedisRateLimiter.from_url(REDIS_URL, 6, prefix=redis_prefix)
    client = Redis.from_url(REDIS_URL)
    try:
        await burst(limiter, "key:k", 2)
        ttl_ms = await client.pttl(f"{redis_prefix}rate:key:k")
        assert 19_000 < ttl_ms <= 20_000, "two requests of a 6/min budget refill in 20 s"
    finally:
        await limiter.close()
        await client.aclose()


async def test_an_unreachable_redis_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter.from_url(UNREACHABLE_REDIS, 1, prefix="unused:")
    try:
        with caplog.at_level(logging.WARNING, logger="qwen_image_server.api.rate_limit"):
            assert await burst(limiter, "key:k", 5) == [0.0] * 5
    finally:
        await limiter.close()
    warnings = [record for record in caplog.records if "Redis does not answer" in record.getMessage()]
    assert len(warnings) == 1


def test_gcra_allows_the_budget_in_any_burst_then_one_per_interval() -> None:
    tat, now = 0.0, 1000.0
    for _ in range(4):
        tat, wait = gcra(tat, now, 4)
        assert wait == 0.0
    assert gcra(tat, now, 4) == (tat, 15.0)
    assert gcra(tat, now + 15.0, 4)[1] == 0.0, "one request per 15 s once the burst is spent"
    assert gcra(tat, now + 60.0, 4) == (now + 75.0, 0.0), "a quiet minute refills the whole budget"


# Through the app: every dialect, in its own shape.


@asynccontextmanager
async def serving(data_dir: Path, **settings: Any) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """An API process (no worker: the limit is decided before any task runs)."""
    service = Service.build(
        Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=data_dir, **settings), run_worker=False
    )
    async with service.running(), asgi_client(service) as client:
        yield service, client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_burst_over_the_limit_gets_429_with_retry_after_in_each_dialect(tmp_path: Path) -> None:
    async with serving(tmp_path / "data", requests_per_minute=3) as (_, client):
        assert (await client.post("/v1/tasks", json=TINY_TASK)).status_code == 202
        assert (await client.get("/v1/tasks")).status_code == 200
        assert (await client.get("/v1/tasks/no-such-task")).status_code == 404
        native = await client.get("/v1/tasks")
        assert native.status_code == 429
        assert native.json()["error"]["code"] == "rate_limited"
        assert "3 per minute" in native.json()["error"]["message"]
        assert native.headers["retry-after"] == "20"
        openai = await client.post("/v1/images/generations", json={"prompt": "fox", "size": "256x256"})
        assert openai.status_code == 429
        assert openai.json()["error"]["type"] == "rate_limit_error"
        assert openai.json()["error"]["code"] == "rate_limited"
        assert int(openai.headers["retry-after"]) > 0
        dashscope = await client.get("/api/v1/tasks/whatever", headers={"Authorization": "Bearer anything"})
        assert dashscope.status_code == 429 and dashscope.json()["code"] == "Throttling"
        assert "retry-after" in dashscope.headers


async def test_health_models_and_result_downloads_are_not_limited(tmp_path: Path) -> None:
    async with serving(tmp_path / "data", requests_per_minute=1) as (service, client):
        await client.get("/v1/tasks")
        assert (await client.get("/v1/tasks")).status_code == 429
        for path in ("/healthz", "/readyz", "/v1/models"):
            for _ in range(3):
                assert (await client.get(path)).status_code in (200, 503), path
        signed = service.signer.sign("01missing/0.png")
        assert (await client.get(signed.path)).status_code == 404, "not found, not rate limited"


async def test_each_key_has_its_own_budget(tmp_path: Path) -> None:
    async with serving(tmp_path / "data", requests_per_minute=2) as (service, client):
        _, alice = await service.keys.create("alice")
        _, bob = await service.keys.create("bob")
        assert [(await client.get("/v1/tasks", headers=bearer(alice))).status_code for _ in range(3)] == [200, 200, 429]
        assert (await client.get("/v1/tasks", headers=bearer(bob))).status_code == 200
        unknown = await client.get("/v1/tasks", headers=bearer("qis_nobody_xxxxxxxx"))
        assert unknown.status_code == 401, "a refused key is not counted against anyone"


async def test_two_api_processes_on_one_redis_share_a_keys_budget(tmp_path: Path, redis_prefix: str) -> None:
    shared = {"requests_per_minute": 3, "redis_url": REDIS_URL, "redis_key_prefix": redis_prefix}
    data_dir = tmp_path / "data"  # one task database, as two API processes of a deployment share
    async with serving(data_dir, **shared) as (service, first), serving(data_dir, **shared) as (_, second):
        _, alice = await service.keys.create("alice")
        _, bob = await service.keys.create("bob")
        calls: list[Callable[[], Awaitable[httpx.Response]]] = [
            lambda: first.get("/v1/tasks", headers=bearer(alice)),
            lambda: second.get("/v1/tasks", headers=bearer(alice)),
            lambda: first.post("/v1/tasks", json=TINY_TASK, headers=bearer(alice)),
        ]
        assert [(await call()).status_code for call in calls] == [200, 200, 202]
        refused = await second.post("/v1/images/generations", json={"prompt": "fox"}, headers=bearer(alice))
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert (await second.get("/v1/tasks", headers=bearer(bob))).status_code == 200


async def test_with_redis_down_requests_are_allowed(tmp_path: Path) -> None:
    settings = {"requests_per_minute": 1, "redis_url": UNREACHABLE_REDIS}
    async with serving(tmp_path / "data", **settings) as (_, client):
        assert [(await client.get("/v1/tasks")).status_code for _ in range(3)] == [200, 200, 200]


def test_redis_url_must_name_a_redis(clean_env: None) -> None:
    with pytest.raises(ValueError, match="redis_url"):
        Settings(redis_url="http://127.0.0.1:6379")
    assert Settings(redis_url="rediss://cache.internal:6380/2").redis_url == "rediss://cache.internal:6380/2"
