"""The playground at `/` in a real browser (Debian's chromium driven by Playwright) against a live
server running the tiny model: generate, progress and previews, cancel, history, API keys, a phone.

Screenshots are kept under test-artifacts/playground/ (ignored by git); the path is printed.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE, LiveServer, picture_bytes

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "playground"
WAIT_MS = 60_000
PHONE = {"width": 375, "height": 740}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
)

if CHROMIUM.exists():
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)  # the tiny model on a busy 2-core machine can take seconds


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser profile (empty local storage). An uncaught script error fails the test, and
    so does any console error but a refused request's (the tests make the server say 400, 401, 403):
    a Content-Security-Policy violation, say."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def open_playground(page: Page, url: str) -> None:
    page.goto(url + "/")
    expect(page.locator("#model option")).not_to_have_count(0)


def fill_tiny_task(page: Page, prompt: str, *, steps: int, side: int = 256, seed: int | None = None) -> None:
    page.get_by_label("Model", exact=True).select_option("qwen-image")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Size", exact=True).select_option("custom")
    page.get_by_label("Width", exact=True).fill(str(side))
    page.get_by_label("Height", exact=True).fill(str(side))
    page.locator("#steps").fill(str(steps))
    if seed is not None:
        page.locator("#seed").fill(str(seed))


RECORD_WHAT_IS_SHOWN = """() => {
  window.seen = {progress: [], previews: 0};
  const progress = document.getElementById('progress');
  const sample = () => { window.seen.progress.push(progress.value); requestAnimationFrame(sample); };
  requestAnimationFrame(sample);
  new MutationObserver((changes) => {
    for (const change of changes) window.seen.previews += change.addedNodes.length;
  }).observe(document.getElementById('preview-list'), {childList: true});
}"""


def test_generate_shows_progress_previews_and_the_image(live_server: LiveServer, page: Page) -> None:
    open_playground(page, live_server.url)
    unlabeled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabeled == [], "every input has a label"
    fill_tiny_task(page, "a red fox in snow", steps=24, seed=7)
    page.evaluate(RECORD_WHAT_IS_SHOWN)
    page.get_by_role("button", name="Generate").click()

    image = page.get_by_role("img", name="Image 1, seed 7: a red fox in snow")
    expect(image).to_be_visible()
    assert page.evaluate("document.querySelector('#result-list img').naturalWidth") == 256
    expect(page.locator("#status")).to_contain_text("Succeeded: 1 image(s)")
    seen: dict[str, Any] = page.evaluate("window.seen")
    assert any(0 < value < 100 for value in seen["progress"]), f"the bar moved: {sorted(set(seen['progress']))}"
    assert seen["previews"] >= 1, "a preview was shown while the task ran"
    expect(page.get_by_text("Seed 7 · 256 × 256")).to_be_visible()
    screenshot(page, "generated")

    page.locator("#seed").fill("")
    page.get_by_role("button", name="Reuse seed 7").click()
    expect(page.locator("#seed")).to_have_value("7")
    expect(page.locator("#seed")).to_be_focused()


READ_SPLIT_EVENTS = """async (chunks) => {
  // The page's own reader, given a stream cut in awkward places: inside a CR LF, a field, a value.
  const encoder = new TextEncoder();
  window.fetch = async () => new Response(new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  }));
  const events = [];
  await readEvents("events", undefined, (type, data) => events.push([type, data]));
  return events;
}"""


def test_the_event_reader_reassembles_events_split_across_chunks(live_server: LiveServer, page: Page) -> None:
    open_playground(page, live_server.url)
    stream = (
        'event: progress\r\ndata: {"step": 1}\r\n\r\n: ping\r\n\r\n'
        'event: preview\r\ndata: {"url": "a:b"}\r\n\r\nevent: succeeded\ndata: {"id": "t"}\n\n'
    )
    cuts = [0, 7, 16, 33, 34, 35, 36, 60, 61, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(cuts)]
    assert "".join(chunks) == stream and any(chunk.endswith("\r") for chunk in chunks)
    events = page.evaluate(READ_SPLIT_EVENTS, chunks)
    assert events == [["progress", {"step": 1}], ["preview", {"url": "a:b"}], ["succeeded", {"id": "t"}]]


def test_a_refused_value_is_explained_at_its_field(live_server: LiveServer, page: Page) -> None:
    open_playground(page, live_server.url)
    fill_tiny_task(page, "too small", steps=2, side=100)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("256")
    expect(page.get_by_label("Width", exact=True)).to_be_focused()
    expect(page.locator("#history-list li")).to_have_count(0)


def test_a_long_task_can_be_canceled(live_server: LiveServer, page: Page) -> None:
    open_playground(page, live_server.url)
    fill_tiny_task(page, "a very long walk", steps=250, side=512)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Running")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#status")).to_contain_text("Canceled.")
    assert page.locator("#progress").evaluate("bar => bar.value") < 100
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()
    expect(page.locator("#result-list li")).to_have_count(0)


def test_the_history_survives_a_reload_and_reopens_a_task(live_server: LiveServer, page: Page) -> None:
    open_playground(page, live_server.url)
    fill_tiny_task(page, "a lighthouse at dusk", steps=2, seed=11)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Succeeded")

    page.reload()
    entry = page.locator("#history-list li").filter(has_text="a lighthouse at dusk")
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text("succeeded")
    expect(entry.locator("img")).to_be_visible()  # the thumbnail: a signed link, no key needed
    expect(page.locator("#result-list li")).to_have_count(0)

    entry.get_by_role("button", name="Open “a lighthouse at dusk”: succeeded").click()
    expect(page.get_by_role("img", name="Image 1, seed 11: a lighthouse at dusk")).to_be_visible()
    page.get_by_role("button", name="Use these settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a lighthouse at dusk")
    expect(page.locator("#seed")).to_have_value("11")
    expect(page.locator("#steps")).to_have_value("2")
    expect(page.get_by_label("Width", exact=True)).to_have_value("256")
    entry.get_by_role("button", name="Remove “a lighthouse at dusk” from history").click()
    expect(page.locator("#history-list li")).to_have_count(0)


def test_a_phone_sized_screen_needs_no_sideways_scrolling(browser: Browser, live_server: LiveServer) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_playground(page, live_server.url)
        fill_tiny_task(page, "a small boat", steps=2)
        page.locator("#generate").focus()
        page.keyboard.press("Enter")  # the form works from the keyboard
        expect(page.locator("#result-list img")).to_be_visible(timeout=WAIT_MS)
        # A phone widens its layout viewport to fit content that overflows: measure against the screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(page, "phone")
    finally:
        context.close()


DROP_A_FILE = """([bytes, name]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
  document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
}"""


def test_an_edit_takes_chosen_and_dropped_images(live_server: LiveServer, page: Page) -> None:
    open_playground(page, live_server.url)
    page.get_by_label("Model", exact=True).select_option("qwen-image-edit-plus")
    expect(page.locator("#inputs-count")).to_have_text("(0 of at most 3)")
    page.get_by_label("Choose images, or drop them here").set_input_files(
        [
            {"name": "red.png", "mimeType": "image/png", "buffer": picture_bytes(color=(200, 30, 30))},
            {"name": "blue.png", "mimeType": "image/png", "buffer": picture_bytes(color=(30, 30, 200))},
        ]
    )
    expect(page.get_by_role("img", name="Input 2: blue.png")).to_be_visible()
    page.get_by_role("button", name="Remove red.png").click()
    page.evaluate(DROP_A_FILE, [list(picture_bytes(color=(30, 200, 30))), "green.png"])
    expect(page.locator("#inputs-count")).to_have_text("(2 of at most 3)")
    expect(page.get_by_role("img", name="Input 2: green.png")).to_be_visible()

    page.get_by_label("Prompt", exact=True).fill("the two squares side by side")
    page.get_by_label("Size", exact=True).select_option("custom")
    page.get_by_label("Width", exact=True).fill("256")
    page.get_by_label("Height", exact=True).fill("256")
    page.locator("#steps").fill("2")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Succeeded")
    assert page.locator("#task-id").inner_text().endswith("qwen-image-edit-plus")
    expect(page.locator("#result-list img")).to_have_count(1)


@pytest.fixture
def keyed_server(engine: Engine, tmp_path: Path) -> Iterator[tuple[LiveServer, str, str]]:
    """A server that requires API keys, with two made before it starts: one that may generate, and
    one that may only read."""
    from qwen_image_server.cli.keys import with_database
    from qwen_image_server.tasks.keys import Scope, SqlKeyStore

    settings = Settings(
        **TINY_EVERYWHERE,
        models=(ModelName.QWEN_IMAGE,),
        data_dir=tmp_path / "data",
        progress_interval_seconds=0.05,
        poll_interval_seconds=0.05,
        drain_seconds=1.0,
    )
    # In a thread of its own: this thread's event loop is Playwright's.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        made = pool.submit(with_database, settings, lambda database: SqlKeyStore(database).create("browser"))
        _, token = made.result()
        made = pool.submit(
            with_database, settings, lambda database: SqlKeyStore(database).create("viewer", (Scope.READ,))
        )
        _, reader = made.result()
    with LiveServer(settings, engine) as server:
        yield server, token, reader


def test_with_keys_required_the_key_is_asked_for_once_and_sent_as_a_header(
    keyed_server: tuple[LiveServer, str, str], page: Page
) -> None:
    server, token, reader = keyed_server
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
    open_playground(page, server.url)
    fill_tiny_task(page, "a locked door", steps=2, seed=3)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("This server needs an API key (401)")
    key_field = page.get_by_label("Key", exact=True)
    expect(key_field).to_be_focused()

    key_field.fill(token)
    key_field.press("Enter")  # saves the key; it does not submit the form
    expect(page.locator("#key-state")).to_have_text("(saved in this browser)")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("img", name="Image 1, seed 3: a locked door")).to_be_visible()
    screenshot(page, "with-key")

    page.reload()  # the key is remembered: the history's task opens with it
    page.locator("#history-list .open").first.click()
    expect(page.get_by_role("img", name="Image 1, seed 3: a locked door")).to_be_visible()
    api_calls = [(url, auth) for url, auth in sent if "/v1/tasks" in url]
    assert all(token not in url for url, _ in sent), "the key never appears in a URL"
    assert api_calls[-1][1] == f"Bearer {token}"

    page.get_by_text("API key (saved in this browser)").click()  # the folded key box opens
    page.get_by_role("button", name="Forget key").click()
    page.locator("#history-list .open").first.click()
    expect(page.get_by_role("alert")).to_contain_text("needs an API key (401)")

    key_field.fill(reader)  # a key that may only read: refused to create, and sees no other key's task
    page.get_by_role("button", name="Save key").click()
    fill_tiny_task(page, "a locked door", steps=2)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("This API key may not do this (403 insufficient_scope)")
    page.locator("#history-list .open").first.click()
    expect(page.get_by_role("alert")).to_contain_text("belongs to another API key")
