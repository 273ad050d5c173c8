"""The wheel installs everything under `edge_trl` (no top-level `cli`) and ships the accelerate configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("edge_trl-*.whl"))


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "cli" not in top_level and "accelerate_configs" not in top_level
    assert {"edge_trl/cli/main.py", "edge_trl/accelerate_configs/cpu.yaml", "edge_trl/core_algos.py"} <= set(names)
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
