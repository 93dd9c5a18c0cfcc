"""LocalResultStore: round trips, atomic writes, strict keys (no way out of the root) and sweeping."""

from __future__ import annotations

import errno
import hashlib
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
async def test_put_then_read_round_trip(store: LocalResultStore, root: Path) -> None:
    task_id = new_task_id()
    result = image(index=1)
    stored = await store.put(task_id, result)

    assert stored.key == f"{task_id}/1.png"
    assert (stored.index, stored.seed, stored.width, stored.height) == (1, 1235, 64, 48)
    assert stored.output_format is OutputFormat.PNG
    assert stored.content_type == "image/png"
    assert stored.size_bytes == len(result.data)
    assert stored.sha256 == hashlib.sha256(result.data).hexdigest()
    assert await store.read(stored.key) == result.data
    assert (root / task_id / "1.png").read_bytes() == result.data


@pytest.mark.anyio
@pytest.mark.parametrize(("fmt", "suffix"), [(OutputFormat.JPEG, "jpg"), (OutputFormat.WEBP, "webp")])
async def test_key_uses_the_format_extension(store: LocalResultStore, fmt: OutputFormat, suffix: str) -> None:
    task_id = new_task_id()
    stored = await store.put(task_id, image(fmt=fmt, data=b"not really an image"))
    assert stored.key == f"{task_id}/0.{suffix}"
    assert await store.read(stored.key) == b"not really an image"


@pytest.mark.anyio
async def test_put_again_replaces_and_leaves_no_temporary_files(store: LocalResultStore, root: Path) -> None:
    task_id = new_task_id()
    for index in range(3):
        await store.put(task_id, image(index=index))
    stored = await store.put(task_id, image(index=0, data=b"second attempt"))

    assert await store.read(stored.key) == b"second attempt"
    assert files_under(root) == [f"{task_id}/0.png", f"{task_id}/1.png", f"{task_id}/2.png"]


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


@pytest.mark.anyio
@pytest.mark.parametrize("task_id", ["../escape", "task_../x", "TASK_ABC", "task_", "task_12/34", "task_xyz"])
async def test_put_refuses_a_malformed_task_id(store: LocalResultStore, root: Path, task_id: str) -> None:
    with pytest.raises(ValueError, match="task id"):
        await store.put(task_id, image())
    assert not root.exists()


@pytest.mark.anyio
async def test_read_unknown_key_is_not_found(store: LocalResultStore) -> None:
    with pytest.raises(ResultNotFound) as info:
        await store.read(f"{new_task_id()}/0.png")
    assert (info.value.status, info.value.code) == (404, "result_not_found")


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
async def test_delete_task_removes_its_images_and_is_idempotent(store: LocalResultStore, root: Path) -> None:
    doomed, kept = new_task_id(), new_task_id()
    first = await store.put(doomed, image(index=0))
    await store.put(doomed, image(index=1))
    survivor = await store.put(kept, image(index=0))

    await store.delete_task(doomed)
    await store.delete_task(doomed)
    await store.delete_task(new_task_id())  # never existed

    with pytest.raises(ResultNotFound):
        await store.read(first.key)
    assert not (root / doomed).exists()
    assert await store.read(survivor.key) == image(index=0).data


@pytest.mark.anyio
async def test_delete_task_refuses_a_malformed_task_id(store: LocalResultStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task id"):
        await store.delete_task("..")
    assert tmp_path.exists()


@pytest.mark.anyio
async def test_delete_older_than_removes_only_old_tasks(store: LocalResultStore, root: Path) -> None:
    old, new, mixed = new_task_id(), new_task_id(), new_task_id()
    for task_id in (old, new, mixed):
        await store.put(task_id, image(index=0))
        await store.put(task_id, image(index=1))
    age(root / old, NOW - timedelta(days=2))
    age(root / new, NOW - timedelta(hours=1))
    age(root / mixed, NOW - timedelta(days=2))
    os.utime(root / mixed / "1.png", ((NOW - timedelta(hours=1)).timestamp(),) * 2)

    removed = await store.delete_older_than(NOW - timedelta(days=1))

    assert removed == 2
    assert not (root / old).exists()
    assert files_under(root) == sorted([f"{new}/0.png", f"{new}/1.png", f"{mixed}/0.png", f"{mixed}/1.png"])
    assert await store.delete_older_than(NOW - timedelta(days=1)) == 0


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


@pytest.mark.anyio
async def test_delete_older_than_on_a_missing_root_and_naive_cutoff(store: LocalResultStore) -> None:
    assert await store.delete_older_than(NOW) == 0
    with pytest.raises(ValueError, match="timezone"):
        await store.delete_older_than(datetime(2025, 1, 1))  # naive on purpose
