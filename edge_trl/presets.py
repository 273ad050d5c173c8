"""Method presets, training defaults and the shipped recipe / accelerate-config files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

# Each method is a named set of EdgeGRPOConfig values; any explicit setting (recipe YAML, flag) overrides them.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "eda": {"eda": True},
    "gec": {"gec": True},
    "edge": {"eda": True, "gec": True},
    "force-reflection": {"force_reflection": True},
    "clip-cov": {"cov_mode": "clip_cov"},
    # KL-Cov only acts when the policy moves between rollout and loss: two passes over each rollout.
    "kl-cov": {"cov_mode": "kl_cov", "num_iterations": 2},
}
DEFAULT_METHOD = "edge"

# Training defaults of the CLI, below the method preset (TRL's own defaults apply to everything else).
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-6,
    "num_generations": 8,
    "per_device_train_batch_size": 8,
    "max_completion_length": 1024,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 3,
    "report_to": "none",
}
# On a machine without GPU: fp32 on CPU, no gradient checkpointing (TRL defaults to bf16 and checkpointing).
CPU_DEFAULTS: dict[str, Any] = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}

DEFAULT_DATASET = "agentica-org/DeepScaleR-Preview-Dataset"
DEFAULT_REWARDS = "format,accuracy"  # EDGE-GRPO's format 1 + accuracy 1

# Accelerate configs that need CUDA devices (the DeepSpeed ones can also run on CPU processes, for tests).
GPU_ONLY_CONFIGS = ("single_gpu", "multi_gpu", "fsdp")
DEEPSPEED_CONFIGS = ("zero1", "zero2", "zero3", "zero3_offload")


def accelerate_config_dir() -> Path:
    """The shipped accelerate configs: `accelerate_configs/` in a checkout, `edge_trl/accelerate_configs` installed."""
    from edge_trl.accelerate_configs import CONFIG_DIR

    return CONFIG_DIR


def recipe_dir() -> Path:
    return Path(str(resources.files("edge_trl") / "recipes"))


def shipped_accelerate_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(accelerate_config_dir().glob("*.yaml"))}


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipe_dir().glob("*.yaml"))}


def describe_method(args: Any) -> str:
    """A short label of what an EdgeGRPOConfig turns on, e.g. 'EDGE-GRPO (EDA + GEC) + KL-Cov'."""
    parts = []
    if args.eda and args.gec:
        parts.append("EDGE-GRPO (EDA + GEC)")
    elif args.eda:
        parts.append("EDA")
    elif args.gec:
        parts.append("GEC")
    if args.force_reflection and not args.gec:  # with gec=True as well, GEC's three branches win
        parts.append("forced reflection")
    if args.cov_mode == "clip_cov":
        parts.append("Clip-Cov")
    elif args.cov_mode == "kl_cov":
        parts.append("KL-Cov")
    return " + ".join(parts) or "GRPO"
