"""The playground's files at `/` and `/playground/...`, beside an API that is unchanged."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_the_page_and_its_files_are_served_from_the_package(api: httpx.AsyncClient) -> None:
    page = await api.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(linked) == ["docs", "playground/app.js", "playground/style.css"], "nothing from elsewhere"
    script = await api.get("/playground/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert not re.search(r"https?://", script.text), "the script calls only this server"
    style = await api.get("/playground/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


async def test_the_api_and_its_docs_stay_where_they_were(api: httpx.AsyncClient) -> None:
    assert (await api.get("/docs")).status_code == 200
    spec = (await api.get("/openapi.json")).json()
    assert "/" not in spec["paths"] and not any(path.startswith("/playground") for path in spec["paths"])
    missing = await api.get("/playground/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await api.post("/")).status_code == 405
