"""A covariance-style mode in one file: stop the gradient of the top share of highest-entropy tokens.

Use it from Python (``import entropy_stop`` before building the config) or from the command line:
``edge-trl train --plugin entropy_stop.py --set cov_mode=entropy_stop --entropy-stop-ratio 0.2``.
"""

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from edge_trl.methods import register_method
from edge_trl.methods.covariance import CovContext, CovMode, CovTerms


@dataclass
class EntropyStopFields:
    entropy_stop_ratio: float = field(
        default=0.2,
        metadata={"help": "Entropy-stop: share of valid tokens (highest entropy) whose gradient is stopped."},
    )


@register_method
class EntropyStop(CovMode):
    name = mode = "entropy_stop"
    fields = EntropyStopFields
    presets: ClassVar[dict] = {"entropy-stop": {"cov_mode": "entropy_stop"}}  # --method entropy-stop

    def validate(self, config):
        ratio = self.params(config).entropy_stop_ratio
        if not 0 < ratio <= 1:
            raise ValueError(f"entropy_stop_ratio={ratio} must be a share of tokens in (0, 1].")

    def terms(self, ctx: CovContext) -> CovTerms:
        valid = ctx.mask.bool()
        k = max(1, int(ctx.params.entropy_stop_ratio * int(valid.sum())))
        scores = ctx.entropies.masked_fill(~valid, float("-inf")).flatten()
        selected = torch.zeros_like(scores, dtype=torch.bool)
        selected[scores.topk(k).indices] = True
        selected = selected.view_as(valid) & valid
        return CovTerms(logps=torch.where(selected, ctx.logps.detach(), ctx.logps), selected=selected)
