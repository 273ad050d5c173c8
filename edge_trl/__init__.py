"""edge-trl: entropy-aware GRPO on Hugging Face TRL (EDGE-GRPO, Clip-Cov, KL-Cov)."""

from edge_trl.config import EdgeGRPOConfig
from edge_trl.core_algos import (
    aggregate_token_loss,
    clip_cov_mask,
    collapsed_group_share,
    entropy_driven_advantages,
    entropy_scale,
    kl_cov_mask,
    kl_cov_penalty,
    ppo_clipped_mask,
    response_entropy,
    token_covariance,
)
from edge_trl.trainer import EdgeGRPOTrainer

__version__ = "0.1.0"

__all__ = [
    "EdgeGRPOConfig",
    "EdgeGRPOTrainer",
    "__version__",
    "aggregate_token_loss",
    "clip_cov_mask",
    "collapsed_group_share",
    "entropy_driven_advantages",
    "entropy_scale",
    "kl_cov_mask",
    "kl_cov_penalty",
    "ppo_clipped_mask",
    "response_entropy",
    "token_covariance",
]
