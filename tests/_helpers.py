"""Test-only helpers: tiny CPU configs and parameter-change asserts. What the benchmarks share too (models, data,
rewards, ``logged``) lives in ``edge_trl.testing``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from edge_trl import EdgeGRPOConfig
from edge_trl.accelerate_configs import CONFIG_DIR
from edge_trl.testing import CPU_RUN_SETTINGS
from edge_trl.testing import logged as logged  # re-exported: test files import it from here

TINY_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 12,
    "max_steps": 2,
    "learning_rate": 1e-3,
    **CPU_RUN_SETTINGS,
}


def tiny_config(output_dir: Path, config_class: type = EdgeGRPOConfig, **overrides: Any) -> Any:
    return config_class(output_dir=str(output_dir), **{**TINY_DEFAULTS, **overrides})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = dict(model.named_parameters())
    return any(not torch.equal(before[name], after[name].detach()) for name in before)


SCRIPTS = Path(__file__).parent / "scripts"


def launch_two_ranks(
    model_path: Path,
    output_dir: Path,
    features: str | None,
    port: int,
    script: Path = SCRIPTS / "train_two_ranks.py",
    config: str = "cpu",
) -> list[dict]:
    """Run ``script MODEL_DIR OUTPUT_DIR [FEATURES]`` under `accelerate launch` with 2 CPU processes and a shipped
    config (``cpu``: torchrun + gloo; a DeepSpeed config runs on CPU processes); each rank's rank{N}.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}
    multi = ["--multi_gpu"] if config == "cpu" else []  # several CPU processes (accelerate's --cpu starts one)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / f"{config}.yaml"),
        *multi, "--num_processes", "2", "--main_process_port", str(port),
        str(script), str(model_path), str(output_dir), *([features] if features else []),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return [json.loads((output_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
