"""EdgeGRPOTrainer: TRL's GRPOTrainer with Entropy-Driven Advantage and Clip-Cov / KL-Cov.

The trainer is glue: the formulas live in :mod:`edge_trl.core_algos`. It hooks TRL at three seams and re-implements
no TRL method body:

* ``_generate_and_score_completions`` (after TRL): EDA with ``eda_scope='group'`` rescales the advantages of the whole
  generation batch, before TRL shuffles it into micro-batches. The rollout entropies come from TRL's own no-grad
  old-log-prob forward when TRL makes one (we ask it to return entropies too), otherwise from one extra no-grad
  forward.
* ``_get_per_token_logps_and_entropies`` (inside TRL's loss): right after the training forward, EDA with
  ``eda_scope='batch'`` rescales the micro-batch's advantages (TRL reads them after this call), Clip-Cov detaches
  the log-probs of the selected tokens (their gradient is stopped), and KL-Cov builds its penalty.
* ``_compute_loss``: adds the KL-Cov penalty, reduced exactly like TRL reduces its per-token loss.

All hooks follow TRL 1.16 (the range pinned in pyproject.toml; ``tests/test_compat.py`` fails on another version).
With every EDGE feature off, the trainer runs TRL's code paths unchanged.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from edge_trl._compat import check_trl_version
from edge_trl.config import EdgeGRPOConfig
from edge_trl.core_algos import (
    aggregate_token_loss,
    clip_cov_mask,
    collapsed_group_share,
    entropy_scale,
    kl_cov_mask,
    kl_cov_penalty,
    ppo_clipped_mask,
    response_entropy,
    token_covariance,
)


class EdgeGRPOTrainer(GRPOTrainer):
    """GRPO with EDGE-GRPO's Entropy-Driven Advantage and Cui et al.'s Clip-Cov / KL-Cov.

    Takes exactly the arguments of [`trl.GRPOTrainer`]; ``args`` must be an [`EdgeGRPOConfig`]. Extra metrics, logged
    through TRL every step under ``edge/``: ``collapsed_group_share``, ``adv_var_before_eda``,
    ``adv_var_after_eda``, ``eda_scale_{min,mean,max}``, ``eda_extra_forward_s``, ``cov_mean``,
    ``cov_selected_mean``, ``clip_cov_selected_share``, ``kl_cov_selected_share`` and ``kl_cov_penalty``.
    """

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "edge-trl"]

    def __init__(self, model: Any, reward_funcs: Any = None, args: EdgeGRPOConfig | None = None, **kwargs: Any):
        check_trl_version()
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = EdgeGRPOConfig(f"{str(model_name).split('/')[-1]}-EdgeGRPO")
        elif isinstance(args, GRPOConfig) and not isinstance(args, EdgeGRPOConfig):
            raise TypeError(
                "EdgeGRPOTrainer needs `args` to be an EdgeGRPOConfig, got a plain GRPOConfig: build it with "
                "`edge_trl.EdgeGRPOConfig(...)` (it takes every GRPOConfig field)."
            )
        # State shared between the hooks of one call; None outside it.
        self._edge_loss_inputs: dict[str, Any] | None = None
        self._kl_cov_penalty: torch.Tensor | None = None
        self._rollout_capture: dict[str, torch.Tensor] | None = None
        super().__init__(model, reward_funcs, args=args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Rollout: group-scope EDA and collapse metrics
    # ----------------------------------------------------------------------------------------------------------------

    def _trl_computes_old_logps(self) -> bool:
        # Mirrors the condition in GRPOTrainer._generate_and_score_completions (TRL 1.16).
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        group_eda = self.args.eda and self.args.eda_scope == "group"
        self._rollout_capture = {} if group_eda and self._trl_computes_old_logps() else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            capture, self._rollout_capture = self._rollout_capture, None

        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        advantages = output["advantages"]
        all_advantages = self.accelerator.gather(advantages)
        metrics = self._metrics[mode]
        metrics["edge/collapsed_group_share"].append(collapsed_group_share(all_advantages, group_size))
        if not group_eda:
            return output

        mask = self._loss_mask(output)
        # Reuse TRL's old-log-prob forward only if what we captured is really what TRL returned as old log-probs.
        if capture and capture.get("logps") is output.get("old_per_token_logps"):
            entropies = capture["entropies"]
        elif mode == "eval" or self.args.steps_per_generation == 1:
            # The next loss forward sees this whole generation batch with the same weights: take the entropies from
            # it (free) instead of an extra forward. TRL shuffles the batch, so tag each response with its group.
            start = self.accelerator.process_index * advantages.size(0)
            positions = torch.arange(start, start + advantages.size(0), device=advantages.device)
            output["edge_group_ids"] = positions // group_size
            return output
        else:
            entropies = self._rollout_entropies(output)
        all_entropy = self.accelerator.gather(response_entropy(entropies, mask))
        all_valid = self.accelerator.gather(mask.sum(-1) > 0)
        all_scale = self._eda_scale(all_entropy, all_valid, group_size)
        output["advantages"] = advantages * self._local_slice(all_scale, advantages.size(0))
        self._log_eda(mode, all_advantages, all_scale)
        return output

    @torch.no_grad()
    def _rollout_entropies(self, batch: dict[str, Any]) -> torch.Tensor:
        """The one extra no-grad forward group-scope EDA needs when TRL computes no old log-probs."""
        start = time.perf_counter()
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            _, entropies, _ = super()._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                batch["completion_ids"].size(1),
                batch_size=batch_size,
                compute_entropy=True,
            )
        self._metrics[mode]["edge/eda_extra_forward_s"].append(time.perf_counter() - start)
        return entropies

    # ----------------------------------------------------------------------------------------------------------------
    # Loss: batch-scope EDA, Clip-Cov, KL-Cov
    # ----------------------------------------------------------------------------------------------------------------

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        eda_in_loss = "edge_group_ids" in inputs or (self.args.eda and self.args.eda_scope == "batch")
        if not eda_in_loss and self.args.cov_mode == "none":
            return super()._compute_loss(model, inputs)
        # Shallow copy: TRL reuses the buffered batch across iterations, and batch-scope EDA replaces its advantages.
        self._edge_loss_inputs = dict(inputs)
        self._kl_cov_penalty = None
        try:
            loss = super()._compute_loss(model, self._edge_loss_inputs)
        finally:
            self._edge_loss_inputs = None
        if self._kl_cov_penalty is not None:
            loss = loss + self._kl_cov_penalty
            self._kl_cov_penalty = None
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        capture = self._rollout_capture
        if capture is not None and not capture and not torch.is_grad_enabled():
            # TRL's no-grad old-log-prob forward of this rollout: have it return the entropies too.
            kwargs["compute_entropy"] = True
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            capture.update(logps=logps, entropies=entropies)
            return logps, entropies, aux

        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        inputs = self._edge_loss_inputs
        if inputs is not None and entropies is not None:  # the forward of TRL's _compute_loss
            logps = self._apply_loss_hooks(inputs, logps, entropies)
        return logps, entropies, aux

    def _apply_loss_hooks(self, inputs: dict[str, Any], logps: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
        mode = "train" if self.model.training else "eval"
        mask = self._loss_mask(inputs)
        metrics = self._metrics[mode]

        group_ids = inputs.pop("edge_group_ids", None)
        if group_ids is not None or (self.args.eda and self.args.eda_scope == "batch"):
            advantages = inputs["advantages"]
            all_advantages = self.accelerator.gather(advantages)
            all_entropy = self.accelerator.gather(response_entropy(entropies, mask))
            all_valid = self.accelerator.gather(mask.sum(-1) > 0)
            if group_ids is None:  # batch scope: the gathered micro-batch is one set
                all_scale = self._eda_scale(all_entropy, all_valid, None)
            else:  # group scope, deferred from the rollout: regroup the shuffled responses, scale, scatter back
                group_size = self.num_generations if mode == "train" else self.num_generations_eval
                order = torch.argsort(self.accelerator.gather(group_ids), stable=True)
                all_scale = torch.empty_like(all_entropy)
                all_scale[order] = self._eda_scale(all_entropy[order], all_valid[order], group_size)
            scale = self._local_slice(all_scale, advantages.size(0))
            inputs["advantages"] = advantages * (scale if advantages.dim() == 1 else scale.unsqueeze(-1))
            self._log_eda(mode, all_advantages, all_scale)

        cov_mode = self.args.cov_mode
        if cov_mode == "none":
            return logps
        advantages = inputs["advantages"]
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        cov = token_covariance(advantages, logps, mask)
        if cov_mode == "clip_cov":
            ratio = torch.exp(logps.detach() - old_logps)
            already_clipped = ppo_clipped_mask(ratio, advantages, self.epsilon_low, self.epsilon_high)
            selected = clip_cov_mask(
                cov,
                mask,
                self.args.clip_cov_ratio,
                self.args.clip_cov_lb,
                self.args.clip_cov_ub,
                exclude=already_clipped,
                generator=self._clip_cov_generator(),
            )
            # Stop the gradient of the selected tokens: the loss value is unchanged, their gradient is 0.
            logps = torch.where(selected, logps.detach(), logps)
        else:
            selected = kl_cov_mask(cov, mask, self.args.kl_cov_ratio)
            per_token_penalty = kl_cov_penalty(logps, old_logps, selected, self.args.kl_cov_coef)
            self._kl_cov_penalty = self._reduce_like_trl(per_token_penalty, mask, inputs)
            penalty_total = self.accelerator.reduce(per_token_penalty.detach().sum(), reduction="sum")
            selected_total = self.accelerator.reduce(selected.sum().float(), reduction="sum")
            metrics["edge/kl_cov_penalty"].append((penalty_total / selected_total.clamp(min=1.0)).item())

        totals = torch.stack([cov.sum(), mask.sum().float(), (cov * selected).sum(), selected.sum().float()]).detach()
        cov_sum, n_valid, selected_cov_sum, n_selected = self.accelerator.reduce(totals, reduction="sum").tolist()
        metrics["edge/cov_mean"].append(cov_sum / max(n_valid, 1.0))
        metrics["edge/cov_selected_mean"].append(selected_cov_sum / max(n_selected, 1.0))
        metrics[f"edge/{cov_mode}_selected_share"].append(n_selected / max(n_valid, 1.0))
        return logps

    def _reduce_like_trl(self, per_token: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        # Mirrors the normalisation at the end of GRPOTrainer._compute_loss (TRL 1.16), gradient accumulation included.
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1.0
        if self.loss_type == "dapo":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if training:
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return aggregate_token_loss(per_token, mask, "dapo", normalizer=normalizer)
        reduced = aggregate_token_loss(
            per_token, mask, self.loss_type, max_completion_length=self.max_completion_length
        )
        return reduced / accumulation

    # ----------------------------------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _loss_mask(batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["completion_mask"]
        return mask * batch["tool_mask"] if "tool_mask" in batch else mask

    def _local_slice(self, gathered: torch.Tensor, local_size: int) -> torch.Tensor:
        start = self.accelerator.process_index * local_size
        return gathered[start : start + local_size]

    def _eda_scale(self, response_entropies: torch.Tensor, valid: torch.Tensor, group_size: int | None):
        return entropy_scale(
            response_entropies,
            valid,
            group_size,
            entropy_floor=self.args.eda_entropy_floor,
            min_scale=self.args.eda_min_scale,
            max_scale=self.args.eda_max_scale,
        )

    def _log_eda(self, mode: str, all_advantages: torch.Tensor, all_scale: torch.Tensor) -> None:
        scale = all_scale.to(all_advantages.dtype)
        scaled = all_advantages * (scale if all_advantages.dim() == 1 else scale.unsqueeze(-1))
        metrics = self._metrics[mode]
        metrics["edge/adv_var_before_eda"].append(all_advantages.float().var(unbiased=False).item())
        metrics["edge/adv_var_after_eda"].append(scaled.float().var(unbiased=False).item())
        metrics["edge/eda_scale_min"].append(all_scale.min().item())
        metrics["edge/eda_scale_mean"].append(all_scale.float().mean().item())
        metrics["edge/eda_scale_max"].append(all_scale.max().item())

    def _clip_cov_generator(self) -> torch.Generator:
        """Clip-Cov's random draw, reproducible from the seed, the process and the micro-step."""
        seed = (self.args.seed * 1_000_003 + self.accelerator.process_index * 10_007 + self._step) % (2**63)
        return torch.Generator().manual_seed(seed)
