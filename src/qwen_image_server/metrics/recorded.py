"""The counters and histograms, and the calls that record them (each a line at its hook point).

Label values are bounded: models, dialects, statuses and error codes come from the code, never from
a request. Every call is cheap (a dict lookup and an add under a lock, or an mmap write in the
multi-process mode) and never raises into the caller's work.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from prometheus_client import Counter, Histogram

# Seconds. A task waits from milliseconds (idle worker) to hours (a deep queue); runs and steps
# span a tiny model on a CPU to 50 steps of the full model on a small GPU.
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 300, 600, 1800)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TASKS_CREATED = Counter("qwen_image_tasks_created", "Tasks queued.", ["model", "dialect"])
TASKS_FINISHED = Counter(
    "qwen_image_tasks_finished",
    "Tasks that ended, by outcome (succeeded, failed, canceled) and error code (empty unless failed).",
    ["model", "dialect", "outcome", "error"],
)
IMAGES = Counter("qwen_image_images", "Images delivered by succeeded tasks.", ["model"])
QUEUE_WAIT = Histogram(
    "qwen_image_task_queue_wait_seconds",
    "From a task's creation to its first claim by a worker.",
    ["model"],
    buckets=QUEUE_WAIT_BUCKETS,
)
RUN_TIME = Histogram(
    "qwen_image_task_run_seconds",
    "From a task's first claim to its end (succeeded or failed after running).",
    ["model", "outcome"],
    buckets=RUN_BUCKETS,
)
STEP_TIME = Histogram(
    "qwen_image_step_seconds",
    "Time of one denoising step of an engine call (a batch's step counts once).",
    ["model"],
    buckets=STEP_BUCKETS,
)
CALLBACK_ATTEMPTS = Counter(
    "qwen_image_callback_attempts", "Callback delivery attempts, by outcome (delivered, failed, refused).", ["outcome"]
)
CALLBACKS_ENDED = Counter(
    "qwen_image_callbacks_finished",
    "Callbacks that will not be tried again, by final status (delivered, failed, refused).",
    ["status"],
)
HTTP_REQUESTS = Counter("qwen_image_http_requests", "HTTP requests answered.", ["dialect", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "qwen_image_http_request_seconds",
    "From a request's arrival to the end of its answer (for SSE streams: the whole stream).",
    ["dialect", "method", "route"],
    buckets=HTTP_BUCKETS,
)

_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")


def task_created(model: str, dialect: str) -> None:
    TASKS_CREATED.labels(model, dialect).inc()


def task_first_claimed(model: str, created_at: datetime, started_at: datetime) -> None:
    """A worker claimed a task for the first time: its wait in the queue is over."""
    QUEUE_WAIT.labels(model).observe(max((started_at - created_at).total_seconds(), 0.0))


def task_finished(
    model: str,
    dialect: str,
    outcome: str,
    *,
    error_code: str | None,
    started_at: datetime | None,
    finished_at: datetime | None,
    images: int,
) -> None:
    """A task reached a final state (recorded once, by the process whose write ended it)."""
    code = "" if error_code is None else error_code if _ERROR_CODE.fullmatch(error_code) else "other"
    TASKS_FINISHED.labels(model, dialect, outcome, code).inc()
    if images:
        IMAGES.labels(model).inc(images)
    if started_at is not None and finished_at is not None and outcome != "canceled":
        RUN_TIME.labels(model, outcome).observe(max((finished_at - started_at).total_seconds(), 0.0))


def callback_attempted(outcome: str, final_status: str | None) -> None:
    """One delivery attempt; `final_status` when the callback will not be tried again."""
    CALLBACK_ATTEMPTS.labels(outcome).inc()
    if final_status is not None:
        CALLBACKS_ENDED.labels(final_status).inc()


class StepClock:
    """Times the denoising steps of one engine call, on the engine's thread: the time between two
    steps reported. The first step is not timed (it follows the prompt encoding and setup), and the
    tasks of a batch report each step once each: only the first report of a step counts."""

    def __init__(self, model: str) -> None:
        self._histogram = STEP_TIME.labels(model)
        self._step = 0
        self._at = 0.0

    def tick(self, step: int) -> None:
        if step <= self._step:
            return
        now = time.perf_counter()
        if self._step:
            self._histogram.observe((now - self._at) / (step - self._step))
        self._step, self._at = step, now
