"""The wheel installs everything under `edge_trl` (no top-level `cli`) and ships the accelerate configs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parents[1]


def build(*args: str, cwd: Path) -> str:
    """Run setuptools' PEP 517 backend (as `pip wheel` / `python -m build` do) and return everything it printed."""
    code = "import sys, setuptools.build_meta as b; getattr(b, sys.argv[1])(sys.argv[2])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # else: "byte-compiling disabled"
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The sdist, then the wheel built from the unpacked sdist (as `python -m build` does: a file missing from the
    sdist fails the wheel), and the build output."""
    out = tmp_path_factory.mktemp("dist")
    output = build("build_sdist", str(out), cwd=REPO_ROOT)
    sdist = next(out.glob("edge_trl-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "src", filter="data")
    output += build("build_wheel", str(out), cwd=next((out / "src").iterdir()))
    return sdist, next(out.glob("edge_trl-*.whl")), output


@pytest.fixture(scope="module")
def wheel(dists) -> Path:
    return dists[1]


def test_sdist_and_wheel_build_without_warnings(dists):
    sdist, wheel, output = dists
    assert "warning" not in output.lower(), output  # e.g. a TOML-table license, data folders taken for packages
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert {"edge_trl-0.1.0/LICENSE", "edge_trl-0.1.0/edge_trl/assets/embedded-adder/model.safetensors"} <= set(names)
    metadata = zipfile.ZipFile(wheel).read("edge_trl-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "cli" not in top_level and "accelerate_configs" not in top_level
    assert {"edge_trl/cli/main.py", "edge_trl/accelerate_configs/cpu.yaml", "edge_trl/core_algos.py"} <= set(names)
    from edge_trl.methods import METHODS

    built_in = {type(m).__module__ for m in METHODS.values()} - {None}
    modules = {name.replace(".", "/") + ".py" for name in built_in if name.startswith("edge_trl.methods.")}
    assert {"edge_trl/methods/__init__.py", *modules} <= set(names)  # every built-in method module ships
    assert {
        "edge_trl/assets/embedded-adder/model.safetensors",
        "edge_trl/recipes/kl_cov_qwen2.5_math_7b.yaml",
        "edge_trl/assets/datasets/deepscaler_hard_1k.json.gz",
        "edge_trl/assets/datasets/PROVENANCE.md",
    } <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edge-trl = edge_trl.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_finds_its_accelerate_configs(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import edge_trl.accelerate_configs as c, edge_trl.cli.main as m; "
        "print(c.CONFIG_DIR); assert (c.CONFIG_DIR / 'cpu.yaml').is_file(); print(m.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(target) in out.stdout and str(REPO_ROOT) not in out.stdout


def test_env_command_reports_versions():
    from edge_trl.cli.main import app

    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    assert "trl: 1.16" in result.output and "devices: " in result.output


def test_installed_wheel_runs_from_a_fresh_environment(wheel, tmp_path):
    """The wheel installed (not editable) into a new virtual environment, whose heavy dependencies come from this
    one's site-packages through a .pth file (which runs none of their .pth files: the editable finder of the
    repository is not active there). From there: `edge-trl configs`, a dry run and two steps of the embedded default.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                       capture_output=True, text=True).stdout.strip()
    )  # fmt: skip
    # Every directory of this interpreter's path except those that hold an edge_trl of their own (the repository)
    parents = [p for p in sys.path if p and Path(p).is_dir() and not (Path(p) / "edge_trl").exists()]
    (site_packages / "_parent_env.pth").write_text("\n".join(parents) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", EDGE_TRL_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")

    def edge_trl(*args: str, timeout: int = 120) -> str:
        result = subprocess.run([str(venv / "bin" / "edge-trl"), *args], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=timeout)  # fmt: skip
        assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout + result.stderr

    where = subprocess.run([python, "-c", "import edge_trl; print(edge_trl.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert where.startswith(str(site_packages)), where
    configs = edge_trl("configs")
    assert "zero3" in configs and "kl_cov_qwen2.5_math_7b" in configs
    dry = edge_trl("train", "--dry-run")
    assert str(site_packages / "edge_trl" / "assets" / "embedded-adder") in dry
    out = tmp_path / "run"
    log = edge_trl("train", "--max-steps", "2", "--num-processes", "1", "--output-dir", str(out), timeout=600)
    assert "[held-out] step    2" in log and "training finished" in log, log[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
