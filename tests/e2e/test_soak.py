"""The soak (bench/soak.py), bounded: tasks in while worker processes are SIGKILLed at random and
restarted; every task out exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from bench.soak import SoakConfig, SoakReport, check_tasks, run_soak


def test_random_worker_kills_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    config = SoakConfig(tasks=20, seconds=24, workers=2, kill_every=4, seed=5, finish_timeout=120, work_dir=tmp_path)
    report = run_soak(config)
    logs = f"the processes' logs are in {tmp_path}"
    assert report.lost == [], logs
    assert report.duplicated == [], logs
    assert report.worker_deaths == [], logs
    assert report.submitted == report.succeeded == 20
    # The kills hit running tasks, and those tasks ran again (else the soak proved nothing).
    assert report.kills_mid_task >= 1, f"{report.kills} kills, none mid-task"
    assert report.reruns >= 1


# -- the soak's verdict, on made-up outcomes (it must catch what it is there to catch) --------------

PNG = b"\x89PNG fake bytes"


def a_task(task_id: str, images: int, *, status: str = "succeeded", attempts: int = 1) -> dict[str, Any]:
    results = [{"index": i, "url": f"http://soak.test/v1/results/{task_id}/{i}.png?sig=x"} for i in range(images)]
    return {"id": task_id, "status": status, "attempts": attempts, "error": None, "results": results, "previews": []}


def store_files(results_dir: Path, task: dict[str, Any], *names: str) -> None:
    folder = results_dir / task["id"]
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or [f"{result['index']}.png" for result in task["results"]]:
        (folder / name).write_bytes(PNG)


def verdict(results_dir: Path, accepted: dict[str, int], listed: list[dict[str, Any]]) -> SoakReport:
    def serve(request: httpx.Request) -> httpx.Response:
        key = request.url.path.removeprefix("/v1/results/")
        path = results_dir / key
        return httpx.Response(200, content=path.read_bytes()) if path.is_file() else httpx.Response(404)

    report = SoakReport()
    with httpx.Client(transport=httpx.MockTransport(serve)) as client:
        check_tasks(results_dir, accepted, listed, client, report)
    return report


def test_the_verdict_passes_tasks_that_ran_twice_but_ended_once(tmp_path: Path) -> None:
    one, two = a_task("task_01", 1, attempts=3), a_task("task_02", 2)
    for task in (one, two):
        store_files(tmp_path, task)
    (tmp_path / "task_01" / ".tmp-abc").write_bytes(b"half")  # a write cut short by a kill
    report = verdict(tmp_path, {"task_01": 1, "task_02": 2}, [one, two])
    assert (report.lost, report.duplicated, report.succeeded, report.reruns) == ([], [], 2, 1)


def test_the_verdict_counts_what_was_lost(tmp_path: Path) -> None:
    failed = {**a_task("task_01", 1, status="failed", attempts=20), "error": {"code": "worker_lost"}}
    short = a_task("task_02", 1)  # asked for two images, has one
    unreadable = a_task("task_03", 1)  # its image is not in the store
    store_files(tmp_path, short)
    accepted = {"task_01": 1, "task_02": 2, "task_03": 1, "task_04": 1}  # task_04 is not listed at all
    report = verdict(tmp_path, accepted, [failed, short, unreadable])
    assert report.duplicated == [] and report.succeeded == 0
    assert [line.split(":")[0] for line in report.lost] == ["task_01", "task_02", "task_03", "task_04"]
    assert "no result 1" in report.lost[1] and "unreadable (404)" in report.lost[2]


def test_the_verdict_counts_what_was_duplicated(tmp_path: Path) -> None:
    twice = a_task("task_01", 1)
    extra_result = a_task("task_02", 2)  # asked for one image, has two
    stray_file = a_task("task_03", 1)
    stranger = a_task("task_04", 1)  # nobody submitted it
    for task in (twice, extra_result, stray_file, stranger):
        store_files(tmp_path, task)
    store_files(tmp_path, stray_file, "1.png")  # a file no result names
    accepted = {"task_01": 1, "task_02": 1, "task_03": 1}
    report = verdict(tmp_path, accepted, [twice, twice, extra_result, stray_file, stranger])
    assert report.lost == []
    assert sorted(line.split(":")[0] for line in report.duplicated) == ["task_01", "task_02", "task_03", "task_04"]
    assert report.succeeded == 1  # task_01's outcome is right; being listed twice is counted apart
