"""LocalResultStore's own workings: files under the root, rename-replace, disk faults, no way out of the
root, what the sweep leaves. The ResultStore contract it shares with S3: tests/results/."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qwen_image_server.domain import ImageResult, OutputFormat
from qwen_image_server.errors import StorageUnavailable
from qwen_image_server.results import LocalResultStore, ResultNotFound, ResultStore, is_valid_key
from qwen_image_server.tasks.model import new_task_id
from tests.conftest import picture_bytes

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def store(root: Path) -> LocalResultStore:
    return LocalResultStore(root)


def image(index: int = 0, fmt: OutputFormat = OutputFormat.PNG, data: bytes | None = None) -> ImageResult:
    data = picture_bytes(color=(10 * index, 20, 30)) if data is None else data
    return ImageResult(data=data, output_format=fmt, width=64, height=48, seed=1234 + index, index=index)


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def age(folder: Path, when: datetime) -> None:
    """Set the mtime of every file in `folder` (and of the folder) to `when`."""
    stamp = when.timestamp()
    for path in folder.iterdir():
        os.utime(path, (stamp, stamp))
    os.utime(folder, (stamp, stamp))


def test_local_store_satisfies_the_protocol(store: LocalResultStore) -> None:
    seam: ResultStore = store  # mypy checks the structural match
    assert seam is store


@pytest.mark.anyio
async def test_images_are_files_under_the_root_with_no_temporary_files_left(
    store: LocalResultStore, root: Path
) -> None:
    task_id = new_task_id()
    await store.put(task_id, image(index=1))
    stored = await store.put(task_id, image(index=1, data=b"second attempt"))
    assert (root / task_id / "1.png").read_bytes() == b"second attempt"
    assert files_under(root) == [stored.key]


@pytest.mark.anyio
async def test_a_reader_of_the_old_image_is_not_disturbed_by_a_new_put(store: LocalResultStore, root: Path) -> None:
    """Replacing by rename, not rewriting in place: an open reader keeps the whole old image."""
    task_id = new_task_id()
    stored = await store.put(task_id, image(data=b"old image " * 1000))
    with (root / stored.key).open("rb") as reader:
        assert reader.read(4) == b"old "
        await store.put(task_id, image(data=b"new"))
        assert reader.read() == (b"old image " * 1000)[4:]
    assert await store.read(stored.key) == b"new"


@pytest.mark.anyio
async def test_failed_write_leaves_nothing_behind(
    store: LocalResultStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = new_task_id()

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageUnavailable, match="No space left on device") as caught:
        await store.put(task_id, image())
    assert caught.value.status == 503 and "Retry-After" in (caught.value.headers or {})
    assert files_under(root) == []
    with pytest.raises(ResultNotFound):
        await store.read(f"{task_id}/0.png")


TRAVERSALS = [
    "../secret.png",
    "../../etc/passwd",
    "/etc/passwd",
    "task_abc/../../secret.png",
    "task_abc/../task_def/0.png",
    "task_abc/./0.png",
    "task_abc//0.png",
    "task_abc\\..\\..\\secret.png",
    "task_abc/0.png\x00.txt",
    "task_abc/0.png\n",
    "%2e%2e/secret.png",
    "task_abc%2f..%2f..%2fsecret.png",
    "task_abc/%2e%2e/0.png",
    "..%2fsecret.png",
    "~/secret.png",
    "task_abc/0.PNG",
    "task_abc/0.jpeg",
    "task_abc/0.txt",
    "task_abc/00.png",
    "task_abc/-1.png",
    "task_abc/\u0661.png",  # ARABIC-INDIC DIGIT ONE: \d would match it
    "task_ABC/0.png",
    "task_abc/0.png/..",
    "task_abc",
    "task_abc/",
    "",
    ".",
    "..",
    "secret.png",
]


@pytest.mark.anyio
@pytest.mark.parametrize("key", TRAVERSALS)
async def test_traversal_attempts_are_refused(tmp_path: Path, key: str) -> None:
    root = tmp_path / "deep" / "results"
    (root / "task_abc").mkdir(parents=True)
    (root / "task_abc" / "0.png").write_bytes(b"inside")
    for outside in (tmp_path / "secret.png", tmp_path / "deep" / "secret.png"):
        outside.write_bytes(b"outside")

    assert not is_valid_key(key)
    with pytest.raises(ResultNotFound):
        await LocalResultStore(root).read(key)


@pytest.mark.anyio
async def test_a_symlink_out_of_the_root_is_not_followed(store: LocalResultStore, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "0.png").write_bytes(b"outside")
    root.mkdir()
    task_id = new_task_id()
    (root / task_id).symlink_to(outside, target_is_directory=True)

    with pytest.raises(ResultNotFound):
        await store.read(f"{task_id}/0.png")
    await store.delete_task(task_id)
    assert (outside / "0.png").read_bytes() == b"outside"


@pytest.mark.anyio
async def test_delete_older_than_leaves_foreign_files_alone(store: LocalResultStore, root: Path) -> None:
    root.mkdir()
    foreign = root / "notes"
    foreign.mkdir()
    (foreign / "readme.txt").write_text("mine")
    (root / "loose.png").write_bytes(b"x")
    for path in (foreign / "readme.txt", foreign, root / "loose.png"):
        os.utime(path, (0, 0))

    assert await store.delete_older_than(NOW) == 0
    assert files_under(root) == ["loose.png", "notes/readme.txt"]


@pytest.mark.anyio
async def test_delete_older_than_sweeps_old_empty_folders_and_leftover_temp_files(
    store: LocalResultStore, root: Path
) -> None:
    empty_old, empty_new, crashed = new_task_id(), new_task_id(), new_task_id()
    for task_id in (empty_old, empty_new, crashed):
        (root / task_id).mkdir(parents=True)
    (root / crashed / ".tmp-abc123").write_bytes(b"half an image")
    age(root / empty_old, NOW - timedelta(days=2))
    age(root / crashed, NOW - timedelta(days=2))
    age(root / empty_new, NOW)

    assert await store.delete_older_than(NOW - timedelta(days=1)) == 1
    assert sorted(path.name for path in root.iterdir()) == [empty_new]
