"""Method presets, training defaults and the shipped recipe / accelerate-config files."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path
from typing import Any

# Each method's --method preset is a named set of EdgeGRPOConfig values, declared in its module (edge_trl/methods/) and
# assembled as METHODS below; any explicit setting (recipe YAML, flag) overrides them. They carry the authors' settings, scaled to one GPU: docs/recipes.md maps each setting of the authors' scripts (EDGE-GRPO's
# train_grpo.sh; Entropy-Mechanism's recipe/dapo/7b_clip_cov.sh and 7b_kl_cov.sh) to these values, with file:line.
# Lengths are not here: the CLI default (1024 new tokens) fits one GPU; the shipped recipes carry the authors' lengths.
EDGE_GRPO_SETTINGS: dict[str, Any] = {
    # train_grpo.sh: 8 GPUs x per_device_train_batch_size 1 x GA 1 = one prompt's 8 responses per optimizer step,
    # on-policy, beta 0, max_completion_length 1024; the rest from the defaults of their TRL fork's grpo_config.py
    # (num_generations 8, learning_rate 1e-6, temperature 0.6, epsilon 0.2, loss_type bnpo). bnpo over a micro-batch
    # of one sequence, averaged over 8 ranks, is TRL's "grpo" (per-sequence token mean, then mean over sequences),
    # which stays the same whatever the micro-batch split on one GPU. Schedule (linear decay, no warmup), weight decay
    # 0 and gradient clipping 1.0 are the fork's TrainingArguments defaults and TRL 1.16's alike: not repeated here.
    "num_generations": 8,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 1024,
    "learning_rate": 1e-6,
    "temperature": 0.6,
    "beta": 0.0,
    "epsilon": 0.2,
    "loss_type": "grpo",
    "num_train_epochs": 1,
}
# Entropy-Mechanism's DAPO recipes: 256 prompts per rollout, optimizer mini-batches of 32 prompts (8 optimizer steps
# per rollout, off-policy after the first), 8 responses per prompt, temperature 1.0, verl's token-mean loss (a masked
# mean over each micro-batch divided by the accumulation steps: TRL's "bnpo"). One GPU, same 8:1 ratio: an optimizer
# step of one prompt's 8 responses, a rollout of 8 prompts (steps_per_generation 8 = 8 optimizer steps when
# gradient_accumulation_steps is 1). The optimizer as the 7B scripts set it: AdamW at lr 5e-7 (the 32B scripts: 1e-6),
# constant (verl's actor scheduler is constant with no warmup, whatever warmup_style says), weight decay 0 (verl's
# default is 0.01), gradient norm clipped at 1.0; no KL to a reference (use_kl_loss False).
COV_ROLLOUT_SETTINGS: dict[str, Any] = {
    "num_generations": 8,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "steps_per_generation": 8,
    "num_iterations": 1,
    "temperature": 1.0,
    "loss_type": "bnpo",
    "learning_rate": 5e-7,
    "lr_scheduler_type": "constant",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "beta": 0.0,
    # DAPO's dynamic sampling, as the scripts set it (enable_filter_groups on acc, at most 10 generation batches).
    "dynamic_sampling": True,
    "dynamic_sampling_metric": "accuracy_reward",
    "max_num_gen_batches": 10,
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
# On a machine without GPU: fp32 on CPU, no gradient checkpointing (TRL defaults to bf16 and checkpointing), and the
# model loaded in fp32 even from a bf16 checkpoint (bf16 matmuls measured about 4x slower than fp32 on an AVX2 CPU).
CPU_DEFAULTS: dict[str, Any] = {
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "model_init_kwargs": {"dtype": "float32"},
}
# On a GPU: bf16 and gradient checkpointing, written out so that the dry run shows them (benchmarks/README.md, memory).
GPU_DEFAULTS: dict[str, Any] = {"bf16": True, "gradient_checkpointing": True}
# The largest micro-batch (sequences per device per forward) that fits a 24 GB GPU for Qwen2.5-Math-1.5B with LoRA,
# checkpointing and 3000 + 256 tokens (benchmarks/README.md, memory table): 4 with HF generation (15.5 GiB), 2 with
# vLLM colocate at 0.3 (17.4 GiB). A larger resolved micro-batch is split into gradient accumulation steps.
GPU_MICRO_BATCH = 4
GPU_MICRO_BATCH_WITH_VLLM = 2
# `--lora` multiplies the default learning rate by this: Thinking Machines' "LoRA Without Regret" (Schulman et al.,
# 2025) and TRL's guide of the same name report the optimal LoRA learning rate at about 10x full fine-tuning's.
LORA_LEARNING_RATE_FACTOR = 10.0


def vllm_defaults(target_has_gpu: bool) -> dict[str, Any]:
    """Generation through vLLM colocated with training, when the run is for a GPU and vLLM is installed here.

    The hook where the vLLM support plugs its checks in; any explicit ``use_vllm``/``vllm_mode`` wins over it.
    """
    if not target_has_gpu or importlib.util.find_spec("vllm") is None:
        return {}
    from edge_trl.vllm_support import installed_vllm_version, is_tested_vllm

    installed = installed_vllm_version()
    if installed is not None and not is_tested_vllm(installed):
        return {}  # an untested vLLM is used only when asked for (--vllm), and then the launcher refuses it
    return {"use_vllm": True, "vllm_mode": "colocate"}


# The dataset of a run that names none and whose recipe names none: a Hub id (--model Qwen/...), a model alias without
# a recipe for the method, the Clip-Cov/KL-Cov recipes (the authors' own data, built from DAPO-Math-17k with a boxed
# answer prompt, is not on the Hub in a form that loads). The qwen2.5-math-1.5b recipe trains on the paper's data,
# the shipped `deepscaler-hard-1k` (edge_trl.data.SHIPPED_DATASETS), 1,000 of these 40,315 problems.
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
    """A short label of what an EdgeGRPOConfig turns on, e.g. 'EDGE-GRPO (EDA + GEC) + KL-Cov' (the methods' own)."""
    from edge_trl.methods import describe

    return describe(args)


def __getattr__(name: str) -> Any:
    # METHODS: every --method preset, assembled from the registered methods (edge_trl.methods), plugins included.
    if name == "METHODS":
        from edge_trl.methods import method_presets

        return method_presets()
    raise AttributeError(f"module 'edge_trl.presets' has no attribute {name!r}")
