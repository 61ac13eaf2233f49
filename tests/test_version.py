"""The version lives in `spa/_version.py`; nothing inside the package imports the package root."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import spa
from spa._version import __version__

ROOT = Path(spa.__file__).parent


def test_version_is_reexported_and_matches_pyproject() -> None:
    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert spa.__version__ == __version__ == project["project"]["version"]
    assert "__version__" in spa.__all__


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _is_submodule(name: str) -> bool:
    return (ROOT / f"{name}.py").is_file() or (ROOT / name / "__init__.py").is_file()


def test_no_module_imports_a_name_of_the_package_root() -> None:
    """`from spa import distributed` names a subpackage; `from spa import __version__` would
    import from the public API above every module."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in ROOT.rglob("*.py")
        for module, names in _imports(path)
        if module == "spa"
        for name in names
        if not _is_submodule(name)
    ]
    assert offenders == []


def _private_import(module: str, names: list[str], own_package: str) -> bool:
    parts = module.split(".")
    if parts[0] != "spa" or len(parts) < 2 or parts[1] == own_package:
        return False
    if len(parts) == 2 and parts[1].startswith("_"):
        return False  # spa._registry, spa._version, spa._batch: shared by the whole package
    return any(p.startswith("_") for p in parts[2:]) or any(n.startswith("_") for n in names)


def test_private_import_rule() -> None:
    assert _private_import("spa.adapters.inject", ["_set_module"], "pruning")
    assert _private_import("spa.models.resnet._helpers", ["read"], "experiments")
    assert not _private_import("spa.experiments._typecheck", ["build"], "experiments")
    assert not _private_import("spa._registry", ["Registry"], "models")
    assert not _private_import("spa.models.loading", ["read_state_dict"], "experiments")


def test_runner_models_qa_and_cli_import_no_private_helper_of_another_package() -> None:
    offenders = []
    for package in ("experiments", "models", "qa", "cli"):
        for path in (ROOT / package).rglob("*.py"):
            for module, names in _imports(path):
                if _private_import(module, names, package):
                    offenders.append(f"{path.relative_to(ROOT)}: {module} {names}")
    assert offenders == []
