"""The checks of the edge-trl config fields, free of trl/torch imports.

`EdgeGRPOConfig.__post_init__` runs them on itself; `edge-trl train` runs them on the resolved settings before any
process starts (without importing trl, which costs seconds), so both read the same rules and print the same messages.
"""

from __future__ import annotations

import math
from typing import Any

EDA_SCOPES = ("group", "batch")
COV_SCOPES = ("micro_batch", "step")
# Loss types whose per-token loss is -min(r A, clip(r) A) reduced linearly: the ones Clip-Cov and KL-Cov modify.
COV_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def normalize_cov_mode(cov_mode: Any) -> str:
    """'KL-Cov' -> 'kl_cov': the hyphenated and capitalised spellings name the same mode."""
    return str(cov_mode).strip().lower().replace("-", "_")


def kl_cov_is_noop(gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int) -> bool:
    """True when the policy never moves between rollout and loss, so |log pi - log pi_old| is identically 0.

    That is TRL's own test for skipping old log-probs: every optimizer step starts on fresh rollouts
    (gradient_accumulation_steps is a multiple of steps_per_generation * num_iterations).
    """
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) == 0


def kl_cov_noop_message(gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int) -> str:
    """The one warning text for a KL-Cov run that cannot act (library and CLI)."""
    return (
        "cov_mode='kl_cov' is a no-op with this configuration: training is fully on-policy "
        f"(num_iterations={num_iterations}, steps_per_generation={steps_per_generation}, "
        f"gradient_accumulation_steps={gradient_accumulation_steps}), so log pi - log pi_old = 0 and the KL-Cov "
        "penalty and its gradient are 0. Set num_iterations=2 (or steps_per_generation > "
        "gradient_accumulation_steps; on the command line: --num-iterations 2) to make it act, or use "
        "cov_mode='clip_cov'."
    )


def validate_edge_fields(config: Any, cov_modes: tuple[str, ...]) -> None:
    """Check the edge-trl fields of ``config`` (any object with the fields as attributes); normalises ``cov_mode``.

    ``cov_modes`` are the valid modes besides 'none' (the keys of ``core_algos.COV_MODES``). Raises ``ValueError``
    naming the field and the fix.
    """
    config.cov_mode = normalize_cov_mode(config.cov_mode)
    valid_modes = ("none", *cov_modes)
    if config.cov_mode not in valid_modes:
        raise ValueError(f"cov_mode={config.cov_mode!r} is not supported: use one of {', '.join(valid_modes)}.")
    if not (config.reward_timeout > 0 and math.isfinite(config.reward_timeout)):
        raise ValueError(
            f"reward_timeout={config.reward_timeout} must be a positive number of seconds (e.g. 60): how long a "
            "reward function may take before its completion scores None."
        )
    if config.eda_scope not in EDA_SCOPES:
        raise ValueError(f"eda_scope={config.eda_scope!r} is not supported: use 'group' or 'batch'.")
    if not (config.eda_entropy_floor > 0 and math.isfinite(config.eda_entropy_floor)):
        raise ValueError(f"eda_entropy_floor={config.eda_entropy_floor} must be a positive number, such as 1e-6.")
    for name in ("eda_min_scale", "eda_max_scale"):
        value = getattr(config, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value} must be a positive number or None (no clamp).")
    if (
        config.eda_min_scale is not None
        and config.eda_max_scale is not None
        and config.eda_min_scale > config.eda_max_scale
    ):
        raise ValueError(
            f"eda_min_scale={config.eda_min_scale} is larger than eda_max_scale={config.eda_max_scale}: "
            "set eda_min_scale <= eda_max_scale."
        )
    for name in ("clip_cov_ratio", "kl_cov_ratio"):
        value = getattr(config, name)
        if not 0 < value <= 1:
            raise ValueError(
                f"{name}={value} must be a fraction of tokens in (0, 1], e.g. 2e-3 for 0.2% "
                "(not a percentage: 0.2 would select 20% of the tokens)."
            )
    if config.clip_cov_lb >= config.clip_cov_ub:
        raise ValueError(
            f"clip_cov_lb={config.clip_cov_lb} must be smaller than clip_cov_ub={config.clip_cov_ub}: no covariance "
            "could fall between them."
        )
    if config.kl_cov_coef < 0:
        raise ValueError(f"kl_cov_coef={config.kl_cov_coef} must be >= 0.")

    if config.cov_mode != "none":
        if config.loss_type not in COV_LOSS_TYPES:
            raise ValueError(
                f"cov_mode={config.cov_mode!r} cannot modify the per-token loss of loss_type={config.loss_type!r}: "
                f"use loss_type in {COV_LOSS_TYPES} or set cov_mode='none'."
            )
        if getattr(config, "use_liger_loss", False):
            raise ValueError(
                f"cov_mode={config.cov_mode!r} needs TRL's per-token loss, which the fused Liger GRPO loss skips: "
                "set use_liger_loss=False."
            )
    if config.eda and config.eda_scope == "batch" and getattr(config, "use_liger_loss", False):
        raise ValueError("eda_scope='batch' reads entropies from TRL's training forward: set use_liger_loss=False.")

    if config.cov_scope not in COV_SCOPES:
        raise ValueError(
            f"cov_scope={config.cov_scope!r} is not supported: use 'micro_batch' (per micro-batch, the authors' code) "
            "or 'step' (once per optimizer step, independent of the micro-batch split)."
        )
    if config.cov_scope == "step" and config.cov_mode not in ("none", "clip_cov", "kl_cov"):
        raise ValueError(
            f"cov_scope='step' selects tokens for the built-in clip_cov and kl_cov only, not cov_mode="
            f"{config.cov_mode!r}: set cov_scope='micro_batch'."
        )
    if config.cov_scope == "step" and config.cov_mode != "none":
        accumulation = getattr(config, "gradient_accumulation_steps", None) or 1
        steps_per_generation = getattr(config, "steps_per_generation", None) or accumulation  # TRL's default
        generate_every = steps_per_generation * (getattr(config, "num_iterations", None) or 1)
        if generate_every % accumulation != 0:
            raise ValueError(
                f"cov_scope='step' needs every optimizer step inside one rollout: steps_per_generation * "
                f"num_iterations = {generate_every} must be a multiple of gradient_accumulation_steps="
                f"{accumulation}. Set steps_per_generation to a multiple of "
                "gradient_accumulation_steps (the default, equal), or cov_scope='micro_batch'."
            )
    if config.max_num_gen_batches < 0:
        raise ValueError(
            f"max_num_gen_batches={config.max_num_gen_batches} must be >= 0 (0 = unlimited; verl's default is 10)."
        )
    if config.dynamic_sampling and not str(config.dynamic_sampling_metric or "").strip():
        raise ValueError(
            "dynamic_sampling_metric is empty: name a reward function (e.g. 'accuracy_reward') or 'reward' for the "
            "weighted sum of all rewards."
        )

    probs = {name: getattr(config, name) for name in ("gec_reflect_prob", "gec_answer_prob", "gec_solution_prob")}
    for name, value in probs.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value} must be a probability in [0, 1].")
    if abs(sum(probs.values()) - 1.0) > 1e-6:
        raise ValueError(
            f"gec_reflect_prob + gec_answer_prob + gec_solution_prob = {sum(probs.values()):g} must be 1 "
            "(the paper: 0.5, 0.25, 0.25)."
        )
    if "{answer}" not in config.gec_answer_template:
        raise ValueError(
            f"gec_answer_template={config.gec_answer_template!r} has no '{{answer}}' placeholder: add one where the "
            "reference answer goes, e.g. '... the correct answer is \\boxed{{answer}}.'"
        )
    if config.gec_max_new_tokens < 1:
        raise ValueError(f"gec_max_new_tokens={config.gec_max_new_tokens} must be >= 1.")
    if getattr(config, "gec_mask_wrong_prefix", False) and not (config.gec or config.force_reflection):
        raise ValueError(
            "gec_mask_wrong_prefix=True masks the wrong prefix of corrected responses, but nothing is corrected: set "
            "gec=True (or force_reflection=True), or drop gec_mask_wrong_prefix."
        )
    if (config.gec or config.force_reflection) and config.use_vllm and config.vllm_mode not in ("server", "colocate"):
        raise ValueError(f"GEC supports vllm_mode 'server' and 'colocate', got vllm_mode={config.vllm_mode!r}.")
