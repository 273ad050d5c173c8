"""The checks of the edge-trl config fields, free of trl/torch imports.

`EdgeGRPOConfig.__post_init__` runs them on itself; `edge-trl train` runs them on the resolved settings before any
process starts (without importing trl, which costs seconds), so both read the same rules and print the same messages.
"""

from __future__ import annotations

import math
from typing import Any

from edge_trl.methods import METHODS
from edge_trl.methods.covariance import COV_LOSS_TYPES, COV_SCOPES
from edge_trl.methods.eda import EDA_SCOPES

__all__ = [
    "COV_LOSS_TYPES",
    "COV_SCOPES",
    "EDA_SCOPES",
    "kl_cov_is_noop",
    "kl_cov_noop_message",
    "validate_edge_fields",
]


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

    ``cov_modes`` are the valid modes besides 'none' (the registered ones, ``methods.covariance.COV_MODES``). Then
    every registered method's ``validate`` (its own fields' checks, in its module). Raises ``ValueError`` naming the
    field and the fix.
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
    for method in METHODS.values():  # each method's own checks (edge_trl/methods/)
        method.validate(config)
