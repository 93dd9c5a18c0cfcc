"""The task database's library stays behind the stores: only tasks/ imports SQLAlchemy and the
classification of its errors (tasks/db_errors.py, used by tasks/database.py alone). Every other
layer (api/, worker/, callbacks/, cli/, service.py...) sees the stores' own errors, `StoreUnavailable`
among them, and never a driver's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qwen_image_server

PACKAGE = Path(qwen_image_server.__file__).parent
DB_ERRORS = "qwen_image_server.tasks.db_errors"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def sources_outside_tasks() -> list[Path]:
    return [path for path in PACKAGE.rglob("*.py") if PACKAGE / "tasks" not in path.parents]


def test_the_boundary_check_sees_the_layers_that_call_the_stores() -> None:
    names = {path.relative_to(PACKAGE).as_posix() for path in sources_outside_tasks()}
    assert {"api/errors.py", "worker/worker.py", "callbacks/sender.py", "service.py"} <= names


def test_only_the_stores_import_sqlalchemy() -> None:
    offenders = {
        path.relative_to(PACKAGE).as_posix(): sorted(
            module for module in imported_modules(path) if module.split(".")[0] == "sqlalchemy"
        )
        for path in sources_outside_tasks()
    }
    assert {name: modules for name, modules in offenders.items() if modules} == {}


def test_database_errors_are_classified_only_where_they_are_translated() -> None:
    importers = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(module == DB_ERRORS or module.startswith(f"{DB_ERRORS}.") for module in imported_modules(path))
    )
    assert importers == ["tasks/database.py"]


@pytest.mark.parametrize("error", [OSError(113, "No route to host"), OSError(101, "Network is unreachable"),
                                   TimeoutError(), ConnectionRefusedError(111, "refused")])  # fmt: skip
def test_a_connect_without_a_route_is_store_unavailable(error: BaseException) -> None:
    """Found by the multi-host test: a worker whose host was cut off got a bare OSError 113 from a new
    connection, which passed through as a fault and stopped the worker."""
    from qwen_image_server.errors import StoreUnavailable
    from qwen_image_server.tasks.database import translated_errors

    with pytest.raises(StoreUnavailable) as caught, translated_errors():
        raise error
    assert caught.value.trouble == "unreachable"


def test_other_os_errors_pass_through() -> None:
    from qwen_image_server.tasks.database import translated_errors

    with pytest.raises(PermissionError), translated_errors():
        raise PermissionError(13, "denied")
