"""How a component reference (a checkpoint, a LoRA adapter, a safety classifier) is told apart as a
hub repo id rather than a local path: one rule for every loader."""

from __future__ import annotations

import re

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def names_a_repo(ref: str) -> bool:
    """Whether `ref` (not an existing path) is to be looked up on the hub as `owner/name`; a path
    written as one (`./x`, `/x`, `~/x`) never is."""
    return not ref.startswith((".", "/", "~")) and _REPO_ID.match(ref) is not None
