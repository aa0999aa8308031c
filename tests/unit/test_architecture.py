"""The house rules on who may import what (see ../shared/house-style.md, "The shape"),
checked on the source of every module in daemon/: plain imports, relative imports
(`from . import x`, `from .x import y`) and loads by name (`importlib.import_module`,
`__import__`). Every rule is also seen failing on a planted violation, and the same rules
are import-linter contracts in pyproject.toml (`lint-imports`, run by `make lint`)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
LOADERS = {"import_module", "__import__"}  # importlib.import_module(name), __import__(name)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, at any level (lazy imports
    inside functions too); relative imports resolved; names loaded by importlib or
    __import__ from string constants, or from a module-level tuple of them. A load whose
    name cannot be read from the source is reported as `<dynamic>`."""
    tree = ast.parse(source, module)
    constants = _string_constants(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            if node.module:
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _loader(node.func) and node.args:
            found.update(_loaded(node.args[0], constants))
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _loader(function: ast.expr) -> bool:
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    return name in LOADERS


def _loaded(argument: ast.expr, constants: dict[str, list[str]]) -> list[str]:
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return [argument.value]
    if isinstance(argument, ast.Name) and argument.id in constants:
        return constants[argument.id]
    return ["<dynamic>"]


def _string_constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level `NAME = "x"` / `NAME = ("x", "y")`, and `for name in NAME` loops over
    them (the loop variable stands for each element)."""
    constants: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            strings = _strings(value)
            if isinstance(target, ast.Name) and strings is not None:
                constants[target.id] = strings
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Name)
            and isinstance(node.iter, ast.Name)
            and node.iter.id in constants
        ):
            constants[node.target.id] = constants[node.iter.id]
    return constants


def _strings(value: ast.expr) -> list[str] | None:
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.Tuple | ast.List) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
    ):
        return [e.value for e in value.elts if isinstance(e, ast.Constant)]
    return None


def scan(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {
        module_name(p, package): imports_in(
            p.read_text(), module_name(p, package), p.stem == "__init__"
        )
        for p in sorted(package.rglob("*.py"))
    }


MODULES = scan()
# The Dropbox adapter: the storage class, its error translation and its credentials.
DROPBOX_ADAPTER = (
    "daemon.storage.dropbox",
    "daemon.storage.dropbox_errors",
    "daemon.storage.dropbox_auth",
    "daemon.storage.dropbox_namespace",
)
RULES = [
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
    # discovery passes are an APScheduler job; its types stop in the schedule
    ("apscheduler", ("daemon.scheduling",)),
]
ADAPTERS = (
    "daemon.storage.local",
    "daemon.storage.dropbox",
    "daemon.engines.local",
    "daemon.engines.photoshop",
)
# The core: orchestration over the ports. It names no adapter and reaches the ledger only
# through daemon.ledger_port (no SQLAlchemy: that is daemon.ledger's).
CORE = (
    "daemon.pipeline",
    "daemon.workers",
    "daemon.watcher",
    "daemon.health",
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
    "daemon.ledger_port",
)


def within(name: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offenders(modules: dict[str, set[str]], target: str, allowed: tuple[str, ...]) -> list[str]:
    """Modules that import `target` (or under it) and are not named in `allowed` (or under)."""
    return sorted(
        m for m, imported in modules.items() if any(within(i, (target,)) for i in imported)
        if not within(m, allowed)
    )  # fmt: skip


def core_violations(modules: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} imports {i}"
        for name in CORE
        for i in modules.get(name, ())
        if within(i, ADAPTERS) or within(i, ("sqlalchemy", "daemon.ledger"))
    )


def test_the_package_and_its_imports_are_found() -> None:
    assert {"daemon.cli", "daemon.service", "daemon.pipeline", "daemon.ledger.store"} <= set(
        MODULES
    )
    assert offenders(MODULES, "dropbox", ()) == sorted(DROPBOX_ADAPTER)
    assert offenders(MODULES, "daemon.service", ()) == ["daemon.cli"]  # lazily, in commands
    assert "onnxruntime" in MODULES["daemon.engines.onnx_session"]  # by importlib, by name


def test_no_module_loads_an_unreadable_name() -> None:
    """A load by a computed name would slip past every rule here."""
    assert [m for m, imported in MODULES.items() if "<dynamic>" in imported] == []


@pytest.mark.parametrize(("target", "allowed"), RULES)
def test_only_its_adapter_imports(target: str, allowed: tuple[str, ...]) -> None:
    """`target` is imported only by the modules named in `allowed` (or under them)."""
    assert offenders(MODULES, target, allowed) == [], f"{target} imported by others"


def test_the_core_names_no_adapter_and_no_ledger_but_its_port() -> None:
    assert core_violations(MODULES) == []


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
            if not within(name, (package,)):
                continue
            reaching = sorted(
                i
                for i in imported
                if within(i, ("daemon.ledger",))
                and not within(i, operations)
                and i != "daemon.ledger"  # the package itself, for `Ledger`
            )
            assert reaching == [], f"{name} reaches into the ledger: {reaching}"


# -- each rule seen failing ---------------------------------------------------------------

PLANTS = [
    "import {target}",
    "from {target} import something",
    "import importlib\nimportlib.import_module({target!r})",
    "__import__({target!r})",
    "NAMES = ({target!r},)\nfor name in NAMES:\n    __import__(name)",
]


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize(("target", "allowed"), RULES)
def test_each_rule_catches_a_planted_violation(
    target: str, allowed: tuple[str, ...], plant: str
) -> None:
    planted = "daemon.planted_violation"
    modules = {**MODULES, planted: imports_in(plant.format(target=target), planted)}
    assert offenders(modules, target, allowed) == [planted]


@pytest.mark.parametrize(
    ("module", "source", "imported"),
    [
        ("daemon.storage.planted", "from . import dropbox", "daemon.storage.dropbox"),
        ("daemon.storage.planted", "from .dropbox import DropboxStorage", "daemon.storage.dropbox"),
        ("daemon.planted", "from .service import Service", "daemon.service"),
        ("daemon.web.planted", "from .. import service", "daemon.service"),
        (
            "daemon.storage",
            "from .dropbox_errors import api_error",
            "daemon.storage.dropbox_errors",
        ),
    ],
)
def test_relative_imports_are_resolved(module: str, source: str, imported: str) -> None:
    assert imported in imports_in(source, module, is_package=module == "daemon.storage")


def test_the_core_rule_catches_a_planted_violation() -> None:
    for planted in (
        "from daemon.storage import local",
        "from .ledger import Ledger",
        "import sqlalchemy",
    ):
        modules = {**MODULES, "daemon.pipeline": imports_in(planted, "daemon.pipeline")}
        assert core_violations(modules) != [], planted


def test_a_computed_load_is_reported() -> None:
    assert imports_in("import importlib\nimportlib.import_module(name())", "daemon.x") == {
        "importlib",
        "<dynamic>",
    }


# -- import-linter: the same rules as contracts -------------------------------------------


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads(PYPROJECT.read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def test_the_import_linter_contracts_state_the_same_rules() -> None:
    stated = set()
    for contract in contracts():
        if contract["source_modules"] != ["daemon.**"]:
            continue
        [target] = contract["forbidden_modules"]  # type: ignore[misc]
        ignored = contract.get("ignore_imports", [])
        sources = {i.split(" -> ")[0].removesuffix(".**") for i in ignored}  # type: ignore[attr-defined]
        stated.add((target, frozenset(sources)))
    assert stated == {(t, frozenset(a)) for t, a in RULES}
    core = [c for c in contracts() if c["source_modules"] == list(CORE)]
    assert len(core) == 1 and set(core[0]["forbidden_modules"]) >= set(ADAPTERS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("lint-imports is not installed (the dev extra has import-linter)")
    return found


def test_lint_imports_keeps_every_contract(lint_imports: str) -> None:
    run = subprocess.run(
        [lint_imports, "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_lint_imports_breaks_every_contract_on_planted_violations(
    lint_imports: str, tmp_path: Path
) -> None:
    """A copy of the package with one module importing every forbidden thing, and the core
    importing an adapter: import-linter reports each contract broken."""
    copy = tmp_path / "daemon"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    planted = sorted({target for target, _ in RULES})
    (copy / "planted_violation.py").write_text("".join(f"import {t}\n" for t in planted))
    with (copy / "pipeline.py").open("a") as pipeline:
        pipeline.write("\nimport daemon.storage.local  # planted\n")
    run = subprocess.run(
        [lint_imports, "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert run.returncode == 1
    report = "".join(run.stdout.split())  # names wrap across lines
    kept = [c["name"] for c in contracts() if "".join(f"{c['name']}BROKEN".split()) not in report]
    assert kept == [], f"kept despite the planted violation: {kept}\n{run.stdout}"
