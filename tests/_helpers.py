"""Test-only helpers: tiny CPU configs and parameter-change asserts. What the benchmarks share too (models, data,
rewards, ``logged``) lives in ``edge_trl.testing``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edge_trl import EdgeGRPOConfig
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
