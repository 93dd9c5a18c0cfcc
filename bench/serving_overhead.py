"""Serving overhead: the same tiny-model requests (a) by calling the diffusers pipeline directly in a
loop and (b) through the whole service over HTTP: submit, queue, worker, encode, store, then the
client learns the end from Server-Sent Events (or by polling, or with `?wait=`).

(b) is a real `qwen-image serve --model tiny` process on loopback with default settings; (a) runs in
this process on the same tiny weights. The runs are interleaved in pairs with the same seed, the
order flipping every round (a b, b a, ...), so drift on a noisy machine hits both alike. Reported
per size: the end-to-end ratio b/a (median of the pairs' ratios; also of the medians and of the
best runs), the added milliseconds per task (b - a) median and p95, and where (b)'s time went, from
the task's own timestamps: submit (POST until created), queue (created until claimed), run (claimed
until completed), notify (completed until the client knew).

Target (docs/performance.md): ratio <= 1.05 at 512x512.

    .venv/bin/python bench/serving_overhead.py [--quick] [--rounds N] [--client sse|poll|wait] [--json PATH]

The last line is the headline alone, the ratio at 512x512: `serving_overhead_ratio=1.03`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/serving_overhead.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.common import TINY_CHECKPOINTS, Summary, emit, machine, note, quiet_libraries, table, wait_until_ready

PROMPT = "a red fox in snow, golden hour"
TERMINAL = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Case:
    size: int
    steps: int

    @property
    def label(self) -> str:
        return f"{self.size}x{self.size}/{self.steps}"


@dataclass
class Pair:
    direct_s: float
    served_s: float
    submit_s: float
    queue_s: float
    run_s: float
    notify_s: float

    @property
    def ratio(self) -> float:
        return self.served_s / self.direct_s


@dataclass
class CaseResult:
    case: Case
    pairs: list[Pair] = field(default_factory=list)
    same_image: bool | None = None

    def summary(self, attribute: str) -> Summary:
        return Summary.of([getattr(pair, attribute) for pair in self.pairs])

    @property
    def added_ms(self) -> Summary:
        return Summary.of([(pair.served_s - pair.direct_s) * 1000 for pair in self.pairs])

    @property
    def ratio_of_medians(self) -> float:
        return self.summary("served_s").median / self.summary("direct_s").median

    @property
    def ratio_of_minimums(self) -> float:
        """The best run of each: what is left when the machine's noise is taken away."""
        return self.summary("served_s").min / self.summary("direct_s").min


# -- (a) the pipeline called directly ------------------------------------------------------------


class DirectPipeline:
    """The diffusers QwenImagePipeline with the tiny weights, called as the engine calls it
    (CFG on with the model's default scale and " " as negative prompt, one image, PIL output)."""

    def __init__(self) -> None:
        from qwen_image_server.domain import ModelName
        from qwen_image_server.engine import Engine
        from qwen_image_server.settings import Settings

        quiet_libraries()
        self.pipeline = Engine(Settings(**TINY_CHECKPOINTS)).pipeline(ModelName.QWEN_IMAGE)

    def __call__(self, case: Case, seed: int) -> tuple[float, Any]:
        import torch

        generator = torch.Generator(device="cpu").manual_seed(seed)
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.pipeline(
                prompt=PROMPT,
                negative_prompt=" ",
                true_cfg_scale=4.0,
                width=case.size,
                height=case.size,
                num_inference_steps=case.steps,
                num_images_per_prompt=1,
                max_sequence_length=512,
                generator=generator,
                output_type="pil",
            )
        return time.perf_counter() - start, output.images[0]


# -- (b) the service over HTTP ---------------------------------------------------------------------


@contextmanager
def served(data_dir: Path, settings: dict[str, str]) -> Iterator[str]:
    """`qwen-image serve --model tiny` on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **{f"QWEN_IMAGE_{k.upper()}": v for k, v in settings.items()}}
    log = (data_dir.parent / "serve.log").open("wb")
    command = [sys.executable, "-m", "qwen_image_server", "serve", "--model", "tiny", "--models", "qwen-image"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--data-dir", str(data_dir)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url,
            alive=lambda: process.poll() is None,
            explain=lambda: (data_dir.parent / "serve.log").read_text(errors="replace"),
            timeout=120,
        )
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


class ServiceClient:
    def __init__(self, url: str, how: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=120)
        self.how = how

    def run(self, case: Case, seed: int) -> tuple[float, dict[str, Any], float]:
        """One task end to end: (seconds, the final task, wall-clock time the client knew the end)."""
        body = {"model": "qwen-image", "prompt": PROMPT, "size": f"{case.size}x{case.size}",
                "num_inference_steps": case.steps, "seed": seed}  # fmt: skip
        start = time.perf_counter()
        if self.how == "wait":
            task = self.client.post("/v1/tasks?wait=120", json=body).json()
        else:
            created = self.client.post("/v1/tasks", json=body).json()
            task = self._events(created["id"]) if self.how == "sse" else self._poll(created["id"])
        elapsed, known = time.perf_counter() - start, time.time()
        if task["status"] != "succeeded":
            raise RuntimeError(f"task {task['id']} ended {task['status']}: {task.get('error')}")
        return elapsed, task, known

    def _events(self, task_id: str) -> dict[str, Any]:
        event = ""
        with self.client.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in TERMINAL:
                    final: dict[str, Any] = json.loads(line.removeprefix("data:").strip())
                    return final
        raise RuntimeError(f"the event stream of {task_id} ended without a final state")

    def _poll(self, task_id: str, interval: float = 0.01) -> dict[str, Any]:
        while True:
            task: dict[str, Any] = self.client.get(f"/v1/tasks/{task_id}").json()
            if task["status"] in TERMINAL:
                return task
            time.sleep(interval)

    def image(self, task: dict[str, Any]) -> bytes:
        return httpx.get(task["results"][0]["url"], timeout=30).content


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def measure_pair(client: ServiceClient, direct: DirectPipeline, case: Case, seed: int, served_first: bool) -> Pair:
    """(a) and (b) with the same seed, in the given order."""
    if not served_first:
        direct_s, _ = direct(case, seed)
    served_s, task, known = client.run(case, seed)
    if served_first:
        direct_s, _ = direct(case, seed)
    submitted = known - served_s
    created, claimed, finished = (_timestamp(task[key]) for key in ("created_at", "started_at", "finished_at"))
    return Pair(direct_s, served_s, created - submitted, claimed - created, finished - claimed, known - finished)


def same_pixels(client: ServiceClient, direct: DirectPipeline, case: Case, seed: int) -> bool:
    """Whether (b) made the image (a) makes (the PNG decoded; at most 1 level apart per channel)."""
    import numpy as np
    from PIL import Image

    _, task, _ = client.run(case, seed)
    served_image = np.asarray(Image.open(io.BytesIO(client.image(task))).convert("RGB"), dtype=np.int16)
    _, picture = direct(case, seed)
    direct_image = np.asarray(picture.convert("RGB"), dtype=np.int16)
    return served_image.shape == direct_image.shape and int(np.abs(served_image - direct_image).max()) <= 1


def run_case(client: ServiceClient, direct: DirectPipeline, case: Case, rounds: int) -> CaseResult:
    result = CaseResult(case)
    direct(case, 0)  # warm-up: first calls at a new size allocate
    client.run(case, 0)
    for round_ in range(rounds):
        result.pairs.append(measure_pair(client, direct, case, seed=1000 + round_, served_first=round_ % 2 == 1))
        pair = result.pairs[-1]
        note(f"  {case.label} round {round_ + 1}/{rounds}: direct {pair.direct_s:.3f} s, served {pair.served_s:.3f} s")
    result.same_image = same_pixels(client, direct, case, seed=7)
    return result


# -- report --------------------------------------------------------------------------------------


def report(results: list[CaseResult], args: argparse.Namespace) -> float:
    rows = []
    for result in results:
        ratios, added = result.summary("ratio"), result.added_ms
        medians = (result.summary("direct_s").median, result.summary("served_s").median)
        ratio_columns = (ratios.median, result.ratio_of_medians, result.ratio_of_minimums)
        rows.append((result.case.label, *medians, *ratio_columns, added.median, added.p95))
    headers = ["size/steps", "direct s", "served s", "ratio", "of medians", "of minimums", "added ms", "added p95"]
    print(table(headers, rows))
    parts = [(r.case.label, *(r.summary(k).median * 1000 for k in ("submit_s", "queue_s", "run_s", "notify_s")),
              r.summary("direct_s").median * 1000) for r in results]  # fmt: skip
    print(table(["(b) where, ms", "submit", "queue", "run", "notify", "direct"], parts))
    headline = (
        next(r for r in results if r.case.size == 512) if any(r.case.size == 512 for r in results) else results[-1]
    )
    ratio = round(headline.summary("ratio").median, 3)
    record = {
        "benchmark": "serving_overhead",
        "config": {"rounds": args.rounds, "client": args.client, "server_settings": dict(args.setting)},
        "cases": [_case_record(result) for result in results],
        "target": {"serving_overhead_ratio_512": "<= 1.05"},
        "machine": machine(),
    }
    emit(record, ("serving_overhead_ratio", ratio), args.json)
    return ratio


def _case_record(result: CaseResult) -> dict[str, Any]:
    return {
        "size": result.case.size,
        "steps": result.case.steps,
        "ratio": result.summary("ratio").as_dict(),
        "ratio_of_medians": round(result.ratio_of_medians, 4),
        "ratio_of_minimums": round(result.ratio_of_minimums, 4),
        "added_ms": result.added_ms.as_dict(1),
        "direct_s": result.summary("direct_s").as_dict(),
        "served_s": result.summary("served_s").as_dict(),
        "breakdown_ms": {
            k: round(result.summary(f"{k}_s").median * 1000, 1) for k in ("submit", "queue", "run", "notify")
        },
        "same_image": result.same_image,
    }


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8, help="measured pairs per size [8; --quick: 3]")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps [4]")
    parser.add_argument("--sizes", default="256,512", help="comma-separated square sizes [256,512]")
    parser.add_argument("--client", choices=["sse", "poll", "wait"], default="sse", help="how (b) learns the end")
    parser.add_argument("--setting", type=_setting, action="append", default=[],
                        help="a server setting, e.g. progress_interval_seconds=0.1 (repeatable)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 pairs per size")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    cases = [Case(int(size), args.steps) for size in args.sizes.split(",")]
    direct = DirectPipeline()
    with (
        tempfile.TemporaryDirectory(prefix="bench-serving-") as folder,
        served(Path(folder) / "data", dict(args.setting)) as url,
    ):
        client = ServiceClient(url, args.client)
        results = []
        for case in cases:
            note(f"serving overhead {case.label}: {args.rounds} pairs")
            results.append(run_case(client, direct, case, args.rounds))
    return report(results, args)


if __name__ == "__main__":
    main()
