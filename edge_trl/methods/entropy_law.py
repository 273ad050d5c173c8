"""The entropy-performance law R = -a exp(H) + b (Cui et al., arXiv 2505.22617, section 2), refitted while training.

A diagnostic: it changes no update. Its fit is `edge_trl.entropy_law`, its callback
`edge_trl.entropy_law_callback`; this module registers its fields, checks and the trainer hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edge_trl.methods import Method, register_method


@dataclass
class EntropyLawFields:
    _config_owner = "EdgeGRPOConfig"

    entropy_law: bool = field(
        default=False,
        metadata={
            "help": "Fit the entropy-performance law R = -a*exp(H) + b (Cui et al.) at every log and log "
            "entropy_law/{a,b,r2,rmse,points} and, when the fit can be trusted, entropy_law/ceiling (b - a, the R "
            "reached when entropy is spent) and entropy_law/headroom (ceiling minus the current smoothed R)."
        },
    )
    entropy_law_metric: str = field(
        default="accuracy_reward",
        metadata={
            "help": "Entropy law: the R it fits. A reward function's name (default 'accuracy_reward') or 'reward' "
            "(the weighted sum) means its logged mean on training rollouts, or on the held-out evaluation "
            "(eval_rewards/<name>/mean) when the run evaluates (eval_strategy); any logged key (containing '/', "
            "or starting with 'eval_') is used as it is."
        },
    )
    entropy_law_window: int = field(
        default=10,
        metadata={
            "help": "Entropy law: logging steps averaged into one (H, R) point (one window per point, so the first "
            "fit comes after 4 windows); an evaluation metric is paired with the mean entropy of this many logs."
        },
    )
    entropy_law_min_r2: float = field(
        default=0.5,
        metadata={
            "help": "Entropy law: below this R² the fit is flagged (entropy_law/poor_fit) and no ceiling logged."
        },
    )
    entropy_law_metric_max: float | None = field(
        default=1.0,
        metadata={
            "help": "Entropy law: the metric's highest possible value (1.0 for an accuracy); a fitted ceiling above "
            "it is flagged (entropy_law/ceiling_above_max) and not logged. None: no known maximum."
        },
    )


@register_method
class EntropyLaw(Method):
    name = "entropy_law"
    fields = EntropyLawFields
    builtin = True
    papers = ("entropy-mechanism",)

    def active(self, args: Any) -> bool:
        return bool(args.entropy_law)

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {"entropy_law": True, "entropy_law_metric": args.entropy_law_metric}

    def validate(self, config: Any) -> None:
        """Checked whether or not ``entropy_law`` is on, so a recipe's typo shows at once."""
        if not isinstance(config.entropy_law_window, int) or config.entropy_law_window < 1:
            raise ValueError(
                f"entropy_law_window={config.entropy_law_window} must be a whole number of logging steps >= 1 (e.g. 10): "
                "how many logs are averaged into one point of the fit."
            )
        if not str(config.entropy_law_metric or "").strip():
            raise ValueError(
                "entropy_law_metric is empty: name a reward function (e.g. 'accuracy_reward'), 'reward' for the weighted "
                "sum, or a logged key such as 'eval_rewards/accuracy_reward/mean'."
            )
        if not (math.isfinite(config.entropy_law_min_r2) and config.entropy_law_min_r2 <= 1):
            raise ValueError(
                f"entropy_law_min_r2={config.entropy_law_min_r2} must be a number <= 1 (e.g. 0.5): fits with a lower R² "
                "are flagged as poor."
            )
        if config.entropy_law_metric_max is not None and not math.isfinite(config.entropy_law_metric_max):
            raise ValueError(
                f"entropy_law_metric_max={config.entropy_law_metric_max} must be a finite number (1.0 for an accuracy) "
                "or None (no known maximum)."
            )

    def setup(self, trainer: Any, train_dataset: Any) -> None:
        from edge_trl.entropy_law_callback import EntropyLawCallback

        # First in line: the callbacks that print or report a log (TensorBoard, W&B) then see entropy_law/*.
        trainer.callback_handler.callbacks.insert(0, EntropyLawCallback.for_trainer(trainer))
