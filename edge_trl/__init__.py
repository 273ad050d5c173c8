"""edge-trl: entropy-aware GRPO on Hugging Face TRL (EDGE-GRPO, Clip-Cov, KL-Cov).

The exports load on first use (PEP 562): `import edge_trl` (and so the `edge-trl` command) does not import torch, trl
or transformers, which take seconds; `from edge_trl import EdgeGRPOTrainer` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# export name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "EdgeGRPOConfig": "edge_trl.config",
    "EdgeGRPOTrainer": "edge_trl.trainer",
    **{
        name: "edge_trl.core_algos"
        for name in (
            "aggregate_token_loss",
            "clip_cov_mask",
            "collapsed_group_share",
            "dynamic_sampling_filter",
            "entropy_driven_advantages",
            "entropy_scale",
            "kl_cov_mask",
            "kl_cov_penalty",
            "ppo_clipped_mask",
            "response_entropy",
            "step_cov_selection",
            "token_covariance",
        )
    },
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below does the import
    # ruff: noqa: F401
    from edge_trl.config import EdgeGRPOConfig
    from edge_trl.core_algos import (
        aggregate_token_loss,
        clip_cov_mask,
        collapsed_group_share,
        dynamic_sampling_filter,
        entropy_driven_advantages,
        entropy_scale,
        kl_cov_mask,
        kl_cov_penalty,
        ppo_clipped_mask,
        response_entropy,
        step_cov_selection,
        token_covariance,
    )
    from edge_trl.trainer import EdgeGRPOTrainer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_trl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
