"""Every path under a dialect's prefix answers in that dialect's error shape, an unknown one too: a
provider's SDK reads its own error fields (DashScope's `code`, kie's envelope...), never ours."""

from __future__ import annotations

import json

import httpx
import pytest

from qwen_image_server.api.app import all_dialects
from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.errors import HttpError

pytestmark = pytest.mark.anyio

PREFIXES = [(dialect, prefix) for dialect in all_dialects() for prefix in dialect.prefixes]


@pytest.mark.parametrize(
    ("dialect", "prefix"), PREFIXES, ids=[f"{dialect.name} {prefix}" for dialect, prefix in PREFIXES]
)
async def test_an_unknown_path_under_a_dialects_prefix_answers_in_its_shape(
    api: httpx.AsyncClient, dialect: Dialect, prefix: str
) -> None:
    expected = dialect.render_error(HttpError(404, "not_found", "Not Found"))
    answer = await api.get(f"{prefix.rstrip('/')}/no-such-path-here/at-all")
    assert answer.status_code == expected.status_code, answer.text
    assert answer.json().keys() == json.loads(expected.body).keys(), answer.text
