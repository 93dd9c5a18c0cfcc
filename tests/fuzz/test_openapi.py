"""A fuzz run against the server's own OpenAPI spec (schemathesis): no operation answers a 5xx, and
every answer (status code, content type, headers, body) is one the spec documents, for requests
that fit the spec and requests that do not; then chains of calls (create a task, poll it, cancel
it, stream its events) that schemathesis infers from the spec.

It drives the API alone, in-process over ASGI (no worker: the fuzzer checks the HTTP layer, and a
worker would spend minutes on fuzzed image sizes), on a real service with a SQLite task store.
Tasks it creates stay queued; synchronous calls (OpenAI, DashScope) give up at once with their
408. The checks, and the few documented exceptions to them, are in schemathesis.toml beside this
file, which the CLI reads too. Bounded and deterministic: QWEN_IMAGE_FUZZ_EXAMPLES examples per
operation (default 25) from a fixed seed; docs/development.md says how to run a longer one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from qwen_image_server.api.app import create_app
from qwen_image_server.domain import ModelName
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE

EXAMPLES = int(os.environ.get("QWEN_IMAGE_FUZZ_EXAMPLES", "25"))
BOUNDED = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run, so a failure here reproduces
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

# schemathesis parametrizes at collection, so the schema is loaded at import (its fixture-based
# loader, schemathesis.pytest.from_fixture, breaks on pytest 9: it sets `request.node._nodeid`).
# The service starts with the first request: the app's lifespan, run by schemathesis's ASGI client,
# which ends it after each test.
_DATA = Path(tempfile.mkdtemp(prefix="qwen-image-fuzz-"))
atexit.register(shutil.rmtree, _DATA, ignore_errors=True)  # also when the tests here are deselected
_SETTINGS = Settings(**TINY_EVERYWHERE, models=tuple(ModelName), data_dir=_DATA / "data", max_wait_seconds=0)
APP = create_app(Service.build(_SETTINGS, run_worker=False))
CONFIG = schemathesis.Config.from_path(Path(__file__).with_name("schemathesis.toml"))
schema = schemathesis.openapi.from_dict(APP.openapi(), config=CONFIG)
schema.app = APP


@schema.parametrize()
@BOUNDED
def test_no_server_error_and_every_answer_is_documented(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_chains_of_calls_keep_to_the_spec() -> None:
    schema.as_state_machine().run(settings=settings(BOUNDED, max_examples=max(EXAMPLES // 5, 3), stateful_step_count=6))
