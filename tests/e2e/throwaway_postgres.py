"""A PostgreSQL server of a test's own, in a temporary folder on a free port, to stop and start at
will (the machine's shared server is left alone: other tests use it).

initdb and pg_ctl refuse to run as root, so as root they run as the `postgres` OS user.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.processes import free_port

BINARIES = Path(os.environ.get("QWEN_IMAGE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"  # who runs initdb and pg_ctl when the tests run as root


def why_unavailable() -> str | None:
    """Why no throwaway server can be made here, or None when one can."""
    if not (BINARIES / "initdb").is_file() or not (BINARIES / "pg_ctl").is_file():
        return f"no PostgreSQL binaries in {BINARIES} (set QWEN_IMAGE_TEST_PG_BIN to their folder)"
    if importlib.util.find_spec("asyncpg") is None:
        return "the PostgreSQL driver asyncpg is not installed (pip install -e '.[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and no runuser to run PostgreSQL as another user"
    return None


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="qwen-image-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, OS_USER, OS_USER)
        self.data = self.root / "data"
        self._pg_ctl("initdb", "-o", "--auth=trust --username=postgres --encoding=UTF8 --no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start and wait until it accepts connections. fsync is off: a test database need not
        survive a power cut, and it makes start and stop quick."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("start", "--wait", "-l", str(self.root / "postgres.log"), "-o", options)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` drops every connection at once, as a crash does; `fast` shuts down cleanly."""
        self._pg_ctl("stop", "--wait", "-m", mode)

    def destroy(self) -> None:
        subprocess.run(self._command("stop", "-m", "immediate"), capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def _command(self, action: str, *args: str) -> list[str]:
        command = [str(BINARIES / "pg_ctl"), action, "-D", str(self.data), *args]
        return ["runuser", "-u", OS_USER, "--", *command] if os.geteuid() == 0 else command

    def _pg_ctl(self, action: str, *args: str) -> None:
        done = subprocess.run(self._command(action, *args), capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {action} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.log()}")
