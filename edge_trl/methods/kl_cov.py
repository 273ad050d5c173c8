"""KL-Cov (Cui et al., arXiv 2505.22617, L_KL-Cov), the authors' loss:

    l_t = -A_t r_t + kl_cov_coef * |log pi_t - log pi_old,t| * [t in top-k by Cov],   r_t = pi_t / pi_old,t

on every valid token, with no PPO clip (``compute_policy_loss_kl_cov`` in PRIME-RL/Entropy-Mechanism-of-RL and in
verl). ``kl_cov_clip=True`` keeps PPO's clipped surrogate and only adds the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_trl.methods import register_method
from edge_trl.methods.covariance import CovContext, CovMode, CovTerms
from edge_trl.presets import COV_ROLLOUT_SETTINGS


@dataclass
class KLCovFields:
    _config_owner = "EdgeGRPOConfig"

    kl_cov_ratio: float = field(
        default=2e-3,
        metadata={
            "help": "KL-Cov: fraction of valid tokens (top by covariance) that get the KL penalty. 2e-3 = 0.2%, the "
            "paper's 7B setting (the official code's k_percent=0.2 means the same)."
        },
    )
    kl_cov_coef: float = field(
        default=1.0, metadata={"help": "KL-Cov: coefficient of |log pi - log pi_old| on the selected tokens."}
    )
    kl_cov_clip: bool = field(
        default=False,
        metadata={
            "help": "KL-Cov: keep PPO's clipped surrogate -min(r*A, clip(r)*A) and add the penalty on top. Default "
            "False: the authors' loss, the unclipped -r*A on every token (compute_policy_loss_kl_cov in "
            "PRIME-RL/Entropy-Mechanism-of-RL and verl)."
        },
    )


@register_method
class KLCov(CovMode):
    name = mode = "kl_cov"
    paper_label = "KL-Cov"
    fields = KLCovFields
    builtin = True
    papers = ("entropy-mechanism",)
    step_ratio_field = "kl_cov_ratio"
    # 7b_kl_cov.sh: clip ratio 0.2, kl_cov k 0.2%, ppo_kl_coef 1. The off-policy mini-batches make KL-Cov act.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "kl-cov": {
            "cov_mode": "kl_cov",
            "epsilon": 0.2,
            "epsilon_high": 0.2,
            "kl_cov_ratio": 2e-3,
            "kl_cov_coef": 1.0,
            **COV_ROLLOUT_SETTINGS,
        }
    }

    def validate(self, config: Any) -> None:
        for name in ("kl_cov_ratio",):
            value = getattr(config, name)
            if not 0 < value <= 1:
                raise ValueError(
                    f"{name}={value} must be a fraction of tokens in (0, 1], e.g. 2e-3 for 0.2% "
                    "(not a percentage: 0.2 would select 20% of the tokens)."
                )
        if config.kl_cov_coef < 0:
            raise ValueError(f"kl_cov_coef={config.kl_cov_coef} must be >= 0.")

    def terms(self, ctx: CovContext) -> CovTerms:
        from edge_trl.core_algos import kl_cov_mask, kl_cov_penalty, token_covariance

        p = ctx.params
        selected = ctx.selected
        if selected is None:
            selected = kl_cov_mask(token_covariance(ctx.advantages, ctx.logps, ctx.mask), ctx.mask, p.kl_cov_ratio)
        penalty = kl_cov_penalty(ctx.logps, ctx.old_logps, selected, p.kl_cov_coef)
        return CovTerms(logps=ctx.logps, selected=selected, penalty=penalty, unclipped=not p.kl_cov_clip)

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {"kl_cov_ratio": args.kl_cov_ratio, "kl_cov_coef": args.kl_cov_coef, "kl_cov_clip": args.kl_cov_clip}
