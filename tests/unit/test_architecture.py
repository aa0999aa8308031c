"""The house rules on who may import what (see ../shared/house-style.md, "The shape"),
checked on the source of every module in daemon/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any level (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}
# The Dropbox adapter: the storage class, its error translation and its credentials.
DROPBOX_ADAPTER = (
    "daemon.storage.dropbox",
    "daemon.storage.dropbox_errors",
    "daemon.storage.dropbox_auth",
    "daemon.storage.dropbox_namespace",
)


def importers(target: str) -> set[str]:
    return {
        name
        for name, imported in MODULES.items()
        if any(i == target or i.startswith(target + ".") for i in imported)
    }


def test_the_package_and_its_imports_are_found() -> None:
    assert {"daemon.cli", "daemon.service", "daemon.pipeline", "daemon.ledger.store"} <= set(
        MODULES
    )
    assert importers("dropbox") == set(DROPBOX_ADAPTER)
    assert importers("daemon.service") == {"daemon.cli"}  # lazily, inside the commands


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("daemon.service", ("daemon.cli",)),
        ("dropbox", DROPBOX_ADAPTER),
        # the adapter's helpers are reached only through daemon.storage.dropbox
        ("daemon.storage.dropbox_errors", DROPBOX_ADAPTER),
        ("daemon.storage.dropbox_auth", DROPBOX_ADAPTER),
        ("daemon.storage.dropbox_namespace", DROPBOX_ADAPTER),
        # the builders serve the composition root and the commands, nothing else
        ("daemon.compose", ("daemon.service", "daemon.cli")),
        ("sqlalchemy", ("daemon.ledger",)),
        ("alembic", ("daemon.ledger",)),
        ("onnxruntime", ("daemon.engines.onnx_session",)),
        ("wcmatch", ("daemon.profiles",)),
        ("daemon.cli", ()),
        # the web stack stays inside daemon.web, which only the builders start
        ("flask", ("daemon.web",)),
        ("werkzeug", ("daemon.web",)),
        ("waitress", ("daemon.web",)),
        ("jinja2", ("daemon.web",)),
        ("daemon.web", ("daemon.web", "daemon.compose", "daemon.service")),
        ("prometheus_client", ("daemon.metrics",)),
        ("rich", ("daemon.terminal",)),
        ("daemon.terminal", ("daemon.cli", "daemon.logs")),
        # notifications: built by compose, fed by the service; smtplib only in the senders
        ("daemon.alerts", ("daemon.alerts", "daemon.compose", "daemon.service")),
        ("smtplib", ("daemon.alerts.senders",)),
    ],
)
def test_only_its_adapter_imports(target: str, allowed: tuple[str, ...]) -> None:
    """`target` is imported only by the modules named in `allowed` (or under them)."""
    offenders = sorted(
        m for m in importers(target) if not any(m == a or m.startswith(a + ".") for a in allowed)
    )
    assert offenders == [], f"{target} imported by {offenders}"


def test_the_core_does_not_import_adapters() -> None:
    """pipeline.py orchestrates over the ports: it never names a concrete adapter."""
    adapters = (
        "daemon.storage.local",
        "daemon.storage.dropbox",
        "daemon.engines.local",
        "daemon.engines.photoshop",
    )
    core = (
        "daemon.pipeline",
        "daemon.relocation",
        "daemon.results",
        "daemon.spool",
        "daemon.inplace_retry",
        "daemon.models",
        "daemon.errors",
        "daemon.config",
        "daemon.config_reader",
        "daemon.config_profiles",
        "daemon.profiles",
        "daemon.delivery",
        "daemon.rendering",
    )
    for name in core:
        bad = sorted(i for i in MODULES[name] if i.startswith(adapters))
        assert bad == [], f"{name} imports {bad}"


def test_the_web_and_alerts_reach_the_ledger_only_through_its_operations() -> None:
    """daemon.web reads through the dashboard and writes through the requeue operations;
    daemon.alerts gets the ledger's figures and its record operation injected."""
    allowed = {
        "daemon.web": (
            "daemon.ledger.dashboard",
            "daemon.ledger.audit",
            "daemon.ledger.requeue",
            "daemon.ledger.Ledger",
        ),
        "daemon.alerts": (),
    }
    for package, operations in allowed.items():
        for name, imported in MODULES.items():
            if name != package and not name.startswith(package + "."):
                continue
            reaching = sorted(
                i
                for i in imported
                if (i == "daemon.ledger" or i.startswith("daemon.ledger."))
                and not any(i == op or i.startswith(op + ".") for op in operations)
                and i != "daemon.ledger"  # the package itself, for `Ledger`
            )
            assert reaching == [], f"{name} reaches into the ledger: {reaching}"
