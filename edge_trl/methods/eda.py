"""Entropy-Driven Advantage (EDGE-GRPO, arXiv 2507.21848): each response's advantage times mean(H) / H_i.

Two scopes. ``group`` (the paper): over the responses of one prompt, from the entropies measured at rollout time
(TRL's own no-grad old-log-prob forward when it makes one, asked to return entropies too; else, when the whole rollout
is one micro-batch, deferred to the loss forward, which sees every response with the same weights, each response
carrying its group id through TRL's shuffle; else one extra no-grad forward). ``batch`` (the official code): over the
training micro-batch gathered across processes, from the training forward. The formula:
[`entropy_scale`][edge_trl.core_algos.entropy_scale].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_trl.methods import Method, register_method

EDA_SCOPES = ("group", "batch")
# Key of TRL's batch that carries each response's group id through TRL's shuffle (deferred group-scope EDA).
GROUP_IDS_KEY = "edge_group_ids"


@dataclass
class EDAFields:
    _config_owner = "EdgeGRPOConfig"

    eda: bool = field(
        default=False,
        metadata={
            "help": "Entropy-Driven Advantage (EDGE-GRPO): multiply each response's advantage by mean(H) / H_i, where "
            "H_i is the response's mean token entropy, so confident answers get larger updates."
        },
    )
    eda_scope: str = field(
        default="group",
        metadata={
            "help": "Set over which mean(H) is taken. 'group' (the paper): the num_generations responses of the same "
            "prompt, using entropies measured at rollout time (reused from TRL's old-log-prob forward when TRL makes "
            "one, otherwise one extra no-grad forward). 'batch' (what the official code does): the training "
            "micro-batch gathered across processes, from the training forward pass (free).",
            "choices": list(EDA_SCOPES),
        },
    )
    eda_entropy_floor: float = field(
        default=1e-6,
        metadata={"help": "Entropies are clamped to at least this value before the ratio, so it never divides by 0."},
    )
    eda_min_scale: float | None = field(
        default=None,
        metadata={"help": "Lower clamp of the EDA factor mean(H)/H_i. None: no lower clamp (the factor is > 0)."},
    )
    eda_max_scale: float | None = field(
        default=10.0,
        metadata={
            "help": "Upper clamp of the EDA factor mean(H)/H_i. Default 10: a response at most 10x more confident "
            "than its group gets at most a 10x advantage, which keeps near-deterministic responses from dominating "
            "the update. None reproduces the paper's unclamped formula."
        },
    )


def _scale(trainer: Any, response_entropies: Any, valid: Any, group_size: int | None) -> Any:
    from edge_trl.core_algos import entropy_scale

    args = trainer.args
    return entropy_scale(
        response_entropies,
        valid,
        group_size,
        entropy_floor=args.eda_entropy_floor,
        min_scale=args.eda_min_scale,
        max_scale=args.eda_max_scale,
    )


def _log(trainer: Any, mode: str, all_advantages: Any, all_scale: Any) -> None:
    from edge_trl.core_algos import scale_per_response

    scaled = scale_per_response(all_advantages, all_scale)
    metrics = trainer._metrics[mode]
    metrics["edge/adv_var_before_eda"].append(all_advantages.float().var(unbiased=False).item())
    metrics["edge/adv_var_after_eda"].append(scaled.float().var(unbiased=False).item())
    metrics["edge/eda_scale_min"].append(all_scale.min().item())
    metrics["edge/eda_scale_mean"].append(all_scale.float().mean().item())
    metrics["edge/eda_scale_max"].append(all_scale.max().item())


def _rollout_entropies(trainer: Any, batch: dict[str, Any]) -> Any:
    """The one extra no-grad forward group-scope EDA needs when TRL computes no old log-probs."""
    import torch

    start = time.perf_counter()
    mode = trainer._mode()
    args = trainer.args
    batch_size = args.per_device_train_batch_size if mode == "train" else args.per_device_eval_batch_size
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    _, entropies = trainer.no_grad_forward(
        input_ids, attention_mask, batch["completion_ids"].size(1), compute_entropy=True, batch_size=batch_size
    )
    trainer._metrics[mode]["edge/eda_extra_forward_s"].append(time.perf_counter() - start)
    return entropies


@register_method
class EDA(Method):
    name = "eda"
    fields = EDAFields
    builtin = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {"eda": {"eda": True}}
    papers = ("edge-grpo",)

    def active(self, args: Any) -> bool:
        return bool(args.eda)

    def label(self, args: Any) -> str:
        return "EDGE-GRPO (EDA + GEC)" if args.gec else "EDA"

    def tags(self, args: Any) -> list[str]:
        return ["eda"]

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {"eda": args.eda, "eda_scope": args.eda_scope, "eda_max_scale": args.eda_max_scale}

    def validate(self, config: Any) -> None:
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
        if config.eda and config.eda_scope == "batch" and getattr(config, "use_liger_loss", False):
            raise ValueError("eda_scope='batch' reads entropies from TRL's training forward: set use_liger_loss=False.")

    def start_rollout(self, trainer: Any, rollout: Any) -> None:
        if trainer.args.eda_scope == "group":
            rollout.capture_entropies = rollout.capture_entropies or trainer._trl_computes_old_logps()

    def after_scoring(self, trainer: Any, rollout: Any, output: dict[str, Any]) -> dict[str, Any]:
        import torch

        from edge_trl.core_algos import response_entropy, scale_per_response

        if trainer.args.eda_scope != "group":
            return output
        mode = trainer._mode()
        group_size = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        advantages = output["advantages"]
        mask = trainer._loss_mask(output)
        # Reuse TRL's old-log-prob forward only if what we captured is really what TRL returned as old log-probs.
        if rollout.captured_logps is not None and rollout.captured_logps is output.get("old_per_token_logps"):
            entropies = rollout.captured_entropies
        elif mode == "eval" or trainer.args.steps_per_generation == 1:
            # The next loss forward sees this whole generation batch with the same weights: take the entropies from
            # it (free) instead of an extra forward. TRL shuffles the batch, so tag each response with its group.
            start = trainer.accelerator.process_index * advantages.size(0)
            positions = torch.arange(start, start + advantages.size(0), device=advantages.device)
            output[GROUP_IDS_KEY] = positions // group_size
            return output
        else:
            entropies = _rollout_entropies(trainer, output)
        all_advantages = trainer.accelerator.gather(advantages)
        all_entropy = trainer.accelerator.gather(response_entropy(entropies, mask))
        all_valid = trainer.accelerator.gather(mask.sum(-1) > 0)
        all_scale = _scale(trainer, all_entropy, all_valid, group_size)
        output["advantages"] = scale_per_response(advantages, trainer._local_slice(all_scale, advantages.size(0)))
        _log(trainer, mode, all_advantages, all_scale)
        return output

    def loss_active(self, trainer: Any, inputs: dict[str, Any]) -> bool:
        return GROUP_IDS_KEY in inputs or (trainer.args.eda and trainer.args.eda_scope == "batch")

    def needs_loss_entropies(self, trainer: Any, inputs: dict[str, Any]) -> bool:
        return self.loss_active(trainer, inputs)

    def _scaled(self, trainer: Any, inputs: dict[str, Any], entropies: Any, mask: Any) -> tuple | None:
        """EDA from the training forward's entropies (batch scope, or group scope deferred from the rollout): the
        micro-batch's scaled advantages, the gathered advantages and scales; None when EDA does not act here."""
        import torch

        from edge_trl.core_algos import response_entropy, scale_per_response

        group_ids = inputs.get(GROUP_IDS_KEY)
        if group_ids is None and not (trainer.args.eda and trainer.args.eda_scope == "batch"):
            return None
        accelerator = trainer.accelerator
        advantages = inputs["advantages"]
        all_advantages = accelerator.gather(advantages)
        all_entropy = accelerator.gather(response_entropy(entropies, mask))
        all_valid = accelerator.gather(mask.sum(-1) > 0)
        if group_ids is None:  # batch scope: the gathered micro-batch is one set
            all_scale = _scale(trainer, all_entropy, all_valid, None)
        else:  # group scope, deferred from the rollout: regroup the shuffled responses, scale, scatter back
            group_size = trainer.num_generations if trainer._mode() == "train" else trainer.num_generations_eval
            order = torch.argsort(accelerator.gather(group_ids), stable=True)
            all_scale = torch.empty_like(all_entropy)
            all_scale[order] = _scale(trainer, all_entropy[order], all_valid[order], group_size)
        scaled = scale_per_response(advantages, trainer._local_slice(all_scale, advantages.size(0)))
        return scaled, all_advantages, all_scale

    def loss_advantages(self, trainer: Any, inputs: dict[str, Any], entropies: Any, mask: Any) -> Any:
        scaled = self._scaled(trainer, inputs, entropies, mask)
        return None if scaled is None else scaled[0]

    def in_loss(self, trainer: Any, loss: Any, logps: Any, entropies: Any) -> Any:
        inputs = loss.inputs
        scaled = self._scaled(trainer, inputs, entropies, trainer._loss_mask(inputs))
        inputs.pop(GROUP_IDS_KEY, None)
        if scaled is not None:
            inputs["advantages"], all_advantages, all_scale = scaled
            _log(trainer, trainer._mode(), all_advantages, all_scale)
        return logps
