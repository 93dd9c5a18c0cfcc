"""The multi-process mode: every process of one host writes its metrics into files of one directory,
and a scrape of any of them reads them all (prometheus_client's multiprocess mode).

`prometheus_client` decides at its import whether values live in memory or in that directory (the
environment variable `PROMETHEUS_MULTIPROC_DIR`), so `use_shared_dir` runs before the processes that
record are started (they inherit the variable), and before this process records anything. A single
process needs none of it: without the variable, values live in memory and a scrape reads them there.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def use_shared_dir(directory: Path) -> Path:
    """Make `directory` (created, emptied of an earlier run's files) the metrics directory of this
    process and of every process it starts afterwards (they inherit the environment).

    `serve --api-workers N` calls this with N > 1 before it starts the workers, e.g. with
    `DATA_DIR/metrics`; a directory per server, never shared by two servers. Files of a run that
    ended would otherwise be summed into this one's counters, hence the emptying: call it once, in
    the parent, not in each worker."""
    directory = directory.resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ[ENVIRONMENT_VARIABLE] = str(directory)
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        # Imported already (the commands import the recorders): prometheus_client made its choice
        # then. Every metric here has labels, and a label set's value is made when the set is first
        # recorded, by `values.ValueClass`: switched now, every set recorded from now on lives in
        # the directory (a set this process recorded before stays in its memory, unseen).
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def shared_dir() -> Path | None:
    """The metrics directory of the multi-process mode; None in the single-process mode."""
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    return Path(value) if value else None
