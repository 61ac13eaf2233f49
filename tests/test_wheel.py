"""spa installs like a library: a wheel and an sdist built with `python -m build`, the wheel
installed into a fresh virtual environment that reuses the installed dependencies (no download),
and `pip install` keeping a torch 2.x the user already has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

LIBRARY_EXAMPLE = """
import copy, torch, spa
from spa.models import create_model
base = create_model("tiny_convnet", num_classes=3, width=4).eval()
model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
spa.save_task(model, "task.safetensors", base_model=base)
task = spa.load_task(base, "task.safetensors")
x = torch.randn(2, base.conv1.in_channels, 16, 16)
print(spa.__file__)
print(torch.allclose(task(x), model.eval()(x), atol=1e-5))
"""


def _run(*command, cwd: Path, timeout: int = 600) -> str:
    """Run a command outside this checkout: no PYTHONPATH, and pip without this machine's
    configuration files (index, find-links, constraints), so only what is installed counts."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CONFIG_FILE"] = os.devnull
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def _shared_site(folder: Path, skip: tuple[str, ...], extra: dict[str, str] | None = None) -> Path:
    """A folder of links to this interpreter's installed packages, minus spa itself and the
    entries named (or prefixed with "name-") in `skip`, plus fake distributions `extra`
    (name -> version) that pip sees as installed."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    skip = ("spa", "spa_adapters", "__editable__", *skip)
    for entry in site.iterdir():
        stem = entry.name.split("-")[0].removesuffix(".pth").removesuffix(".py")
        if stem in skip or entry.name.startswith("__editable__") or entry.suffix == ".pth":
            continue
        (folder / entry.name).symlink_to(entry)
    for name, version in (extra or {}).items():
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return folder


def _fresh_venv(folder: Path, shared: Path) -> Path:
    """A new virtual environment whose site-packages also reads `shared` (one `.pth` line)."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=folder
    ).strip()
    (Path(purelib) / "shared.pth").write_text(f"{shared}\n")
    return python


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return out


def test_sdist_and_wheel_hold_the_package_and_its_metadata(dist):
    (wheel,) = dist.glob("spa_adapters-*.whl")
    (sdist,) = dist.glob("spa_adapters-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "spa/__init__.py" in names and "spa/tasks/limits.py" in names
    assert not any(n.startswith("tests/") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA")))
    assert b"Requires-Dist: torch<3,>=2.13" in metadata and b"Requires-Python: >=3.10" in metadata
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/spa/cli/__init__.py") for m in members)


def test_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    (wheel,) = dist.glob("spa_adapters-*.whl")
    shared = _shared_site(tmp_path / "shared", skip=())
    python = _fresh_venv(tmp_path / "venv", shared)
    _run(python, "-m", "pip", "install", "--no-index", "--quiet", wheel, cwd=tmp_path)
    spa = tmp_path / "venv" / "bin" / "spa"
    assert _run(spa, "--version", cwd=tmp_path).strip().startswith("spa ")
    _run(spa, "demo", "--quick", "--output", tmp_path / "demo", cwd=tmp_path, timeout=900)
    assert (tmp_path / "demo" / "runs-quick").is_dir()
    out = _run(python, "-c", LIBRARY_EXAMPLE, cwd=tmp_path).split()
    assert out[0].startswith(str(tmp_path / "venv")) and out[1] == "True"


@pytest.mark.parametrize("torch_version", ["2.14.1", "2.99.0"])
def test_installing_spa_keeps_the_users_torch(dist, tmp_path, torch_version):
    (wheel,) = dist.glob("spa_adapters-*.whl")
    shared = _shared_site(tmp_path / "shared", skip=("torch",), extra={"torch": torch_version})
    python = _fresh_venv(tmp_path / "venv", shared)
    report = tmp_path / "report.json"
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--report",
        report,
        wheel,
        cwd=tmp_path,
    )
    installed = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installed == ["spa-adapters"]  # torch (and everything else) stays as it is
