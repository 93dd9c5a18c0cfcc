"""`LocalResultStore`: result images as files under one folder, `<root>/<task id>/<index>.<ext>`.

Every disk call runs in a worker thread so the event loop never waits on the disk. Keys arrive from
URLs, so they are checked against the strict key pattern before any path is built, and the resolved
path must still lie inside the root (a symlink planted in the folder cannot lead out of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from datetime import datetime
from pathlib import Path

from qwen_image_server.domain import ImageResult
from qwen_image_server.errors import StorageUnavailable
from qwen_image_server.results.store import (
    ResultNotFound,
    is_valid_key,
    is_valid_task_id,
    result_key,
    stored_image,
)
from qwen_image_server.tasks.model import StoredImage

_TEMP_PREFIX = ".tmp-"  # never matches the key pattern, so a half-written file is never served


class LocalResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def put(self, task_id: str, result: ImageResult) -> StoredImage:
        key = result_key(task_id, result)
        try:
            await asyncio.to_thread(self._write, key, result.data)
        except OSError as exc:  # full, read-only, gone: the disk's fault, not the task's
            raise StorageUnavailable(f"the results folder cannot be written: {_reason(exc)}", retry_after=30) from exc
        return stored_image(key, result)

    async def read(self, key: str) -> bytes:
        if not is_valid_key(key):
            raise ResultNotFound("no such result")
        try:
            return await asyncio.to_thread(self._read, key)
        except OSError as exc:
            raise StorageUnavailable(f"the results folder cannot be read: {_reason(exc)}", retry_after=30) from exc

    async def delete_task(self, task_id: str) -> None:
        if not is_valid_task_id(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        await asyncio.to_thread(self._delete_task, task_id)

    async def delete_older_than(self, cutoff: datetime) -> int:
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        return await asyncio.to_thread(self._sweep, cutoff.timestamp())

    # -- in worker threads -----------------------------------------------------------------------

    def _inside_root(self, relative: str) -> Path:
        """The path of `relative` under the root, refused if it resolves anywhere else."""
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ResultNotFound("no such result")
        return path

    def _write(self, key: str, data: bytes) -> None:
        path = self._inside_root(key)
        # One retry: a concurrent sweep may remove the (empty, old) task folder between our mkdir
        # and the creation of the temporary file.
        for attempt in range(2):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _write_atomically(path, data)
                return
            except FileNotFoundError:
                if attempt:
                    raise

    def _delete_task(self, task_id: str) -> None:
        try:
            folder = self._inside_root(task_id)
        except ResultNotFound:
            return  # a symlink leading out of the root: not ours to delete
        _remove_folder(folder)

    def _read(self, key: str) -> bytes:
        path = self._inside_root(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ResultNotFound("no such result; it may have expired and been deleted") from None

    def _sweep(self, cutoff: float) -> int:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        removed = 0
        for entry in entries:
            # Only folders we made; anything else in the root belongs to someone else.
            if not (is_valid_task_id(entry.name) and entry.is_dir(follow_symlinks=False)):
                continue
            try:
                if _all_older(entry, cutoff):
                    removed += _remove_folder(Path(entry.path))
            except FileNotFoundError:
                continue  # deleted by someone else while we looked
        return removed


def _reason(exc: OSError) -> str:
    """`No space left on device`, `Read-only file system`...: the OS's words, without the path (the
    message reaches API clients and /readyz; operators know where their results folder is)."""
    return exc.strerror or str(exc) or type(exc).__name__


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over `path` (atomic on POSIX
    and Windows), so a reader never sees a partial image, even after a crash."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _all_older(folder: os.DirEntry[str], cutoff: float) -> bool:
    """True when every file in the folder was last written before `cutoff`. A folder holding
    anything but plain files is not ours to sweep; an empty one goes by its own mtime, so a folder
    that `put` has just made is not swept before its first file appears."""
    with os.scandir(folder.path) as scan:
        entries = list(scan)
    if not entries:
        return folder.stat(follow_symlinks=False).st_mtime < cutoff
    return all(e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < cutoff for e in entries)


def _remove_folder(folder: Path) -> int:
    """Remove the files of a task folder and the folder; returns how many files were removed.
    Tolerates a concurrent delete; leaves the folder if a `put` raced a new file into it."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            continue  # not made by this store: leave it (and so the folder) alone
        try:
            Path(entry.path).unlink()
            removed += 1
        except FileNotFoundError:
            pass
    with contextlib.suppress(OSError):  # not empty: a put raced a file in; keep it
        folder.rmdir()
    return removed
