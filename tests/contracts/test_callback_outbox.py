"""The callback outbox: a task with a callback URL gets exactly one callback row, in the same
transaction as its final state, whichever transition ended it; claims and attempts."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from qwen_image_server.domain import OutputFormat
from qwen_image_server.tasks.model import NewTask, StoredImage, TaskError, TaskStatus
from qwen_image_server.tasks.outbox import CallbackAttempt, CallbackStatus, DeliverySlots, SqlCallbackStore
from qwen_image_server.tasks.sql import SqlTaskStore
from tests.contracts.conftest import FakeClock, new_task

pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example/receive"
IMAGE = StoredImage("t/0.png", 0, 1, 256, 256, OutputFormat.PNG, 10, "ab")


def with_hook(new: NewTask, *, owner: str | None = None, url: str = HOOK) -> NewTask:
    return replace(new, callback_url=url, owner=owner)


async def running(store: SqlTaskStore, new: NewTask, worker: str = "w1") -> str:
    await store.create(new)
    claimed = await store.claim(worker, [new.request.model], lease_seconds=30)
    assert claimed is not None and claimed.id == new.id
    return new.id


async def test_completion_records_one_pending_callback(store: SqlTaskStore) -> None:
    callbacks = SqlCallbackStore(store.database)
    task_id = await running(store, with_hook(new_task(), owner="key1"))
    assert await callbacks.for_task(task_id) == []  # nothing before the end
    await store.complete(task_id, "w1", [IMAGE])
    [callback] = await callbacks.for_task(task_id)
    assert (callback.url, callback.dialect, callback.owner) == (HOOK, "native", "key1")
    assert callback.status is CallbackStatus.PENDING and callback.attempts_made == 0
    assert callback.id.startswith("msg_")


async def test_a_task_without_a_callback_url_records_none(store: SqlTaskStore) -> None:
    task_id = await running(store, new_task())
    await store.complete(task_id, "w1", [IMAGE])
    assert await SqlCallbackStore(store.database).for_task(task_id) == []


async def test_failure_and_worker_side_cancel_record_a_callback(store: SqlTaskStore) -> None:
    callbacks = SqlCallbackStore(store.database)
    failed = await running(store, with_hook(new_task()))
    await store.fail(failed, "w1", TaskError("generation_failed", "out of memory"))
    canceled = await running(store, with_hook(new_task()))
    await store.finish_canceled(canceled, "w1")
    assert len(await callbacks.for_task(failed)) == 1
    assert len(await callbacks.for_task(canceled)) == 1


async def test_canceling_a_queued_task_records_a_callback(store: SqlTaskStore) -> None:
    created = await store.create(with_hook(new_task()))
    await store.request_cancel(created.id)
    await store.request_cancel(created.id)  # a second cancel changes nothing, adds nothing
    assert len(await SqlCallbackStore(store.database).for_task(created.id)) == 1


async def test_a_requested_cancel_records_the_callback_when_the_task_ends_not_before(store: SqlTaskStore) -> None:
    callbacks = SqlCallbackStore(store.database)
    task_id = await running(store, with_hook(new_task()))
    await store.request_cancel(task_id)
    assert await callbacks.for_task(task_id) == []  # still running: not final yet
    released = await store.release(task_id, "w1")
    assert released.status is TaskStatus.CANCELED
    assert len(await callbacks.for_task(task_id)) == 1


async def test_release_back_to_the_queue_records_nothing(store: SqlTaskStore) -> None:
    task_id = await running(store, with_hook(new_task()))
    await store.release(task_id, "w1")
    assert await SqlCallbackStore(store.database).for_task(task_id) == []


async def test_a_lost_worker_records_a_callback_only_when_the_task_fails_for_good(
    store: SqlTaskStore, clock: FakeClock
) -> None:
    callbacks = SqlCallbackStore(store.database)
    task_id = await running(store, with_hook(new_task(max_attempts=2)))
    await store.requeue_expired(clock.advance(60))
    assert await callbacks.for_task(task_id) == []  # requeued: it will run again
    await store.claim("w2", [new_task().request.model], lease_seconds=30)
    [lost] = await store.requeue_expired(clock.advance(60))
    assert lost.status is TaskStatus.FAILED
    assert len(await callbacks.for_task(task_id)) == 1


async def test_claims_hold_a_callback_and_attempts_are_kept_in_order(store: SqlTaskStore, clock: FakeClock) -> None:
    callbacks = SqlCallbackStore(store.database)
    task_id = await running(store, with_hook(new_task()))
    await store.complete(task_id, "w1", [IMAGE])
    now = clock()
    [claimed] = await callbacks.claim_due(now, limit=10, hold_seconds=60)
    assert await callbacks.claim_due(now, limit=10, hold_seconds=60) == []  # held by the first claim
    first = CallbackAttempt(1, now, 12, 500, CallbackStatus.FAILED, "the receiver answered HTTP 500")
    retry_at = now + timedelta(seconds=5)
    after = await callbacks.record_attempt(claimed, first, status=CallbackStatus.PENDING, next_attempt_at=retry_at)
    assert after.attempts_made == 1 and after.next_attempt_at == retry_at
    assert await callbacks.claim_due(now, limit=10, hold_seconds=60) == []  # not due yet
    [again] = await callbacks.claim_due(retry_at, limit=10, hold_seconds=60)
    assert again.id == claimed.id and again.attempts_made == 1
    second = CallbackAttempt(2, retry_at, 8, 200, CallbackStatus.DELIVERED)
    await callbacks.record_attempt(again, second, status=CallbackStatus.DELIVERED, next_attempt_at=None)
    [final] = await callbacks.for_task(task_id)
    assert final.status is CallbackStatus.DELIVERED and final.next_attempt_at is None
    assert [(a.number, a.status_code, a.outcome) for a in final.attempts] == [
        (1, 500, CallbackStatus.FAILED),
        (2, 200, CallbackStatus.DELIVERED),
    ]
    assert await callbacks.claim_due(clock.advance(3600), limit=10, hold_seconds=60) == []


async def test_an_expired_claim_is_taken_again(store: SqlTaskStore, clock: FakeClock) -> None:
    callbacks = SqlCallbackStore(store.database)
    task_id = await running(store, with_hook(new_task()))
    await store.complete(task_id, "w1", [IMAGE])
    [claimed] = await callbacks.claim_due(clock(), limit=10, hold_seconds=30)
    # the sender that held it died: after the hold it is due again, for any sender
    [again] = await callbacks.claim_due(clock.advance(31), limit=10, hold_seconds=30)
    assert again.id == claimed.id


async def test_retention_deletes_callbacks_with_their_tasks(store: SqlTaskStore, clock: FakeClock) -> None:
    callbacks = SqlCallbackStore(store.database)
    task_id = await running(store, with_hook(new_task()))
    await store.complete(task_id, "w1", [IMAGE])
    [claimed] = await callbacks.claim_due(clock(), limit=10, hold_seconds=30)
    attempt = CallbackAttempt(1, clock(), 5, 200, CallbackStatus.DELIVERED)
    await callbacks.record_attempt(claimed, attempt, status=CallbackStatus.DELIVERED, next_attempt_at=None)
    deleted = await store.delete_finished_before(clock.advance(3600))
    assert [task.id for task in deleted] == [task_id]
    assert await callbacks.for_task(task_id) == []


async def ended_with_hook(store: SqlTaskStore, url: str) -> str:
    task_id = await running(store, with_hook(new_task(), url=url))
    await store.complete(task_id, "w1", [IMAGE])
    return task_id


async def test_claims_take_at_most_the_room_each_destination_has(store: SqlTaskStore, clock: FakeClock) -> None:
    callbacks = SqlCallbackStore(store.database)
    for _ in range(4):
        await ended_with_hook(store, "https://slow.example/a")
    await ended_with_hook(store, "https://fast.example/b")
    now = clock.advance(1)
    slots = DeliverySlots(per_destination=2)
    slots.take("https://slow.example:443", None)  # the caller has one attempt there in flight already
    claimed = await callbacks.claim_due(now, limit=10, hold_seconds=60, slots=slots)
    destinations = sorted(callback.destination for callback in claimed)
    assert destinations == ["https://fast.example:443", "https://slow.example:443"]  # one more to slow, not four
    assert slots.destinations == {"https://slow.example:443": 1}, "the caller's count is its own to change"
    # the rows it left are due and unheld: the next claim with room takes them at once
    rest = await callbacks.claim_due(now, limit=10, hold_seconds=60, slots=DeliverySlots(per_destination=2))
    assert [callback.destination for callback in rest] == ["https://slow.example:443"] * 2
    full = DeliverySlots(per_destination=2)
    full.take("https://slow.example:443", None)
    full.take("https://slow.example:443", None)
    assert await callbacks.claim_due(now, limit=10, hold_seconds=60, slots=full) == []
    [last] = await callbacks.claim_due(now, limit=10, hold_seconds=60, slots=DeliverySlots(per_destination=2))
    assert last.destination == "https://slow.example:443"


async def test_claims_take_at_most_the_room_each_owner_has(store: SqlTaskStore, clock: FakeClock) -> None:
    """One tenant with many receivers (a host name each) gets no more than its owner cap."""
    callbacks = SqlCallbackStore(store.database)
    for number in range(5):
        task_id = await running(store, with_hook(new_task(), owner="mallory", url=f"https://h{number}.evil.example/"))
        await store.complete(task_id, "w1", [IMAGE])
    alice = await running(store, with_hook(new_task(), owner="alice", url="https://alice.example/"))
    await store.complete(alice, "w1", [IMAGE])
    nobody = await ended_with_hook(store, "https://open.example/")  # no key: no owner cap
    now = clock.advance(1)
    slots = DeliverySlots(per_destination=4, per_owner=2)
    slots.take("https://h9.evil.example:443", "mallory")  # one of mallory's is in flight already
    claimed = await callbacks.claim_due(now, limit=10, hold_seconds=60, slots=slots)
    owners = sorted(callback.owner or "-" for callback in claimed)
    assert owners == ["-", "alice", "mallory"], "one more of mallory's, and everyone else's"
    assert {callback.task_id for callback in claimed} >= {alice, nobody}
    for callback in claimed:
        slots.take(callback.destination, callback.owner)
    assert slots.full_owners() == ["mallory"]
    assert await callbacks.claim_due(now, limit=10, hold_seconds=60, slots=slots) == [], "mallory's wait their turn"
    others = await callbacks.next_due_at(exclude_owners=["mallory"])
    assert others is not None and others > now, "the others' are held (in flight), not due"
    mallorys = await callbacks.next_due_at()
    assert mallorys is not None and mallorys <= now, "mallory's other three are due, waiting for room"


async def test_a_claim_takes_no_more_than_its_limit_soonest_first(store: SqlTaskStore, clock: FakeClock) -> None:
    callbacks = SqlCallbackStore(store.database)
    first = await ended_with_hook(store, "https://a.example/")
    await ended_with_hook(store, "https://b.example/")
    [claimed] = await callbacks.claim_due(
        clock.advance(1), limit=1, hold_seconds=60, slots=DeliverySlots(per_destination=4)
    )
    assert claimed.task_id == first


async def test_next_due_at_is_the_soonest_pending_callback_of_the_destinations_not_excluded(
    store: SqlTaskStore, clock: FakeClock
) -> None:
    callbacks = SqlCallbackStore(store.database)
    assert await callbacks.next_due_at() is None
    await ended_with_hook(store, "https://a.example/")
    [held] = await callbacks.claim_due(clock.advance(1), limit=10, hold_seconds=60)
    assert await callbacks.next_due_at() == held.next_attempt_at  # held: due when the hold ends
    retry_at = clock.advance(1) + timedelta(seconds=7)
    attempt = CallbackAttempt(1, clock(), 5, 500, CallbackStatus.FAILED)
    await callbacks.record_attempt(held, attempt, status=CallbackStatus.PENDING, next_attempt_at=retry_at)
    assert await callbacks.next_due_at() == retry_at
    await ended_with_hook(store, "http://b.example:8080/x")
    b_due = await callbacks.next_due_at()
    assert b_due is not None and b_due < retry_at
    assert await callbacks.next_due_at(exclude=["http://b.example:8080"]) == retry_at
    assert await callbacks.next_due_at(exclude=["http://b.example:8080", "https://a.example:443"]) is None


async def test_disabled_urls_are_kept_with_their_first_reason_until_enabled(
    store: SqlTaskStore, other_store: SqlTaskStore, clock: FakeClock
) -> None:
    callbacks, elsewhere = SqlCallbackStore(store.database), SqlCallbackStore(other_store.database)
    assert await callbacks.disabled_reason(HOOK) is None
    await callbacks.disable_url(HOOK, "it answered HTTP 410 Gone", clock())
    await elsewhere.disable_url(HOOK, "a second 410", clock())  # another sender, later: no error
    assert await elsewhere.disabled_reason(HOOK) == "it answered HTTP 410 Gone"
    assert await callbacks.disabled_reason(HOOK + "?v=2") is None  # the exact URL only
    assert await callbacks.enable_url(HOOK) is True
    assert await callbacks.disabled_reason(HOOK) is None
    assert await callbacks.enable_url(HOOK) is False
