"""Clip-Cov (Cui et al., arXiv 2505.22617, L_Clip-Cov): stop the gradient of a random share of high-covariance tokens.

The tokens of [`clip_cov_mask`][edge_trl.core_algos.clip_cov_mask] (tokens PPO already clips are not candidates) keep their
loss value but get no gradient: log pi is detached there. The authors multiply those tokens' loss by 0 instead: the
same gradient, a logged loss lower by their share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_trl.methods import register_method
from edge_trl.methods.covariance import CovContext, CovMode, CovTerms
from edge_trl.presets import COV_ROLLOUT_SETTINGS


@dataclass
class ClipCovFields:
    _config_owner = "EdgeGRPOConfig"

    clip_cov_ratio: float = field(
        default=2e-4,
        metadata={"help": "Clip-Cov: fraction of valid tokens whose gradient is stopped (k = max(1, ratio * n))."},
    )
    clip_cov_lb: float = field(
        default=1.0, metadata={"help": "Clip-Cov: only tokens with covariance strictly above this are candidates."}
    )
    clip_cov_ub: float = field(
        default=5.0, metadata={"help": "Clip-Cov: only tokens with covariance strictly below this are candidates."}
    )


@register_method
class ClipCov(CovMode):
    name = mode = "clip_cov"
    paper_label = "Clip-Cov"
    fields = ClipCovFields
    builtin = True
    papers = ("entropy-mechanism",)
    step_ratio_field = "clip_cov_ratio"
    # 7b_clip_cov.sh: clip_ratio_low = clip_ratio_high = 1 (PPO's clip range [1 - 1, 1 + 1] = TRL's epsilon and
    # epsilon_high), clip_cov_ratio 2e-4, clip_cov_lb 1, clip_cov_ub 5.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "clip-cov": {
            "cov_mode": "clip_cov",
            "epsilon": 1.0,
            "epsilon_high": 1.0,
            "clip_cov_ratio": 2e-4,
            "clip_cov_lb": 1.0,
            "clip_cov_ub": 5.0,
            **COV_ROLLOUT_SETTINGS,
        }
    }

    def validate(self, config: Any) -> None:
        for name in ("clip_cov_ratio",):
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

    def terms(self, ctx: CovContext) -> CovTerms:
        import torch

        from edge_trl.core_algos import clip_cov_mask, ppo_clipped_mask, token_covariance

        logps = ctx.logps
        if ctx.selected is not None:  # chosen over the whole optimizer step
            return CovTerms(logps=torch.where(ctx.selected, logps.detach(), logps), selected=ctx.selected)
        ratio = torch.exp(logps.detach() - ctx.old_logps)
        already_clipped = ppo_clipped_mask(ratio, ctx.advantages, ctx.epsilon_low, ctx.epsilon_high)
        cov = token_covariance(ctx.advantages, logps, ctx.mask)
        p = ctx.params
        selected = clip_cov_mask(
            cov, ctx.mask, p.clip_cov_ratio, p.clip_cov_lb, p.clip_cov_ub, exclude=already_clipped,
            generator=ctx.generator,
        )  # fmt: skip
        return CovTerms(logps=torch.where(selected, logps.detach(), logps), selected=selected)

    def step_candidates(self, trainer: Any, valid: Any, cov: Any, logps: Any, inputs: dict, advantages: Any) -> Any:
        import torch

        from edge_trl.core_algos import ppo_clipped_mask

        args = trainer.args
        old = inputs.get("old_per_token_logps")
        ratio = torch.exp(logps - (logps if old is None else old))
        clipped = ppo_clipped_mask(ratio, advantages, trainer.epsilon_low, trainer.epsilon_high)
        return valid & (cov > args.clip_cov_lb) & (cov < args.clip_cov_ub) & ~clipped
