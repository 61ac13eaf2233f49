"""The dependency list is exact: every third-party import is declared, every declaration is used,
and every pin in requirements.txt satisfies the range in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import spa
from spa._toml import tomllib

ROOT = Path(spa.__file__).parent
PROJECT = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Import name -> distribution name, where they differ.
DISTRIBUTION = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "torch_pruning": "torch-pruning",
    "huggingface_hub": "huggingface-hub",
    "prometheus_client": "prometheus-client",
    "tomli": "tomli",
}
# Declared though spa never imports them, each with its reason.
RUNTIME_ONLY = {"accelerate": "transformers.Trainer refuses to run without it"}
# Pinned in requirements.txt though not declared, each with its reason.
TRANSITIVE_PINS = {
    "tokenizers": "transformers' tokenizer backend, pinned for reproducible tokens",
    "pandas": "mlxtend's (benchmarks) data frames, pinned as tested",
}


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower()


def _third_party_imports() -> set[str]:
    names = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    standard = set(sys.stdlib_module_names) | {"tomllib"}  # standard from 3.11 (tomli on 3.10)
    return {n for n in names if n not in standard and n != "spa"}


def _declared() -> set[str]:
    return {_name(r) for r in PROJECT["dependencies"]}


def _pins() -> dict[str, str]:
    text = (ROOT.parent / "requirements.txt").read_text(encoding="utf-8")
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups() for line in lines if line)


def test_every_third_party_import_is_declared_and_every_declaration_used() -> None:
    imported = {DISTRIBUTION.get(name, name).lower() for name in _third_party_imports()}
    assert imported - _declared() == set(), "imported but not declared in pyproject.toml"
    assert _declared() - imported - set(RUNTIME_ONLY) == set(), "declared but never imported"


def test_every_pin_is_declared_and_satisfies_its_range() -> None:
    pins = {name.lower(): version for name, version in _pins().items()}
    extras = {_name(r) for group in PROJECT["optional-dependencies"].values() for r in group}
    known = _declared() | extras | set(TRANSITIVE_PINS)
    assert set(pins) - known == set(), "pinned in requirements.txt but neither declared nor listed"
    unconditional = [Requirement(r) for r in PROJECT["dependencies"] if ";" not in r]
    assert {r.name.lower() for r in unconditional} - set(pins) == set(), "declared but not pinned"
    for requirement in unconditional:
        pinned = Version(pins[requirement.name.lower()])
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)


def test_torch_is_a_range_so_an_install_keeps_the_users_torch() -> None:
    (torch,) = [Requirement(r) for r in PROJECT["dependencies"] if _name(r) == "torch"]
    assert "==" not in str(torch.specifier)
    assert torch.specifier.contains("2.99") and not torch.specifier.contains("3.0")
