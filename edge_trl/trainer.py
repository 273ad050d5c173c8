"""EdgeGRPOTrainer: TRL's GRPOTrainer with EDGE-GRPO (EDA, GEC) and Clip-Cov / KL-Cov.

The trainer is glue: the formulas live in :mod:`edge_trl.core_algos`, GEC's token assembly in :mod:`edge_trl.gec`.
It hooks TRL at these seams and re-implements no TRL method body:

* construction (after TRL's): with conversational prompts, the chat template's end-of-turn token joins TRL's stop
  tokens (``eos_token_ids``, the transformers ``generation_config``, vLLM's ``stop_token_ids``);
* ``_generate`` (after TRL's rollout): GEC scores the rollout with TRL's own ``_calculate_rewards``, then corrects
  the wrong responses in token space (one batched regeneration, through ``_generate_single_turn``, for the
  reflection branch) before TRL scores them again and computes advantages; then re-logs TRL's length metrics and
  ``num_tokens`` for the corrected completions.
* ``_calculate_rewards`` (after TRL): keeps the rewards TRL trains on, for GEC's after-correction metrics.
* ``_generate_and_score_completions``: with ``dynamic_sampling``, scores generation batches drawn from the next prompts
  of the training sampler's order until the groups whose metric differs fill one generation batch (DAPO, section
  3.2; the decision on gathered rewards, the same on every process); each batch goes through the steps below.
* ``_score_generation_batch`` (TRL's ``_generate_and_score_completions``, then): EDA with ``eda_scope='group'``
  rescales the advantages of the whole generation batch, before TRL shuffles it into micro-batches. The rollout entropies come from TRL's own no-grad
  old-log-prob forward when TRL makes one (we ask it to return entropies too); when the whole rollout is one
  micro-batch (``steps_per_generation == 1``) the scaling is deferred to the loss forward, which sees every response
  with the same weights (each response carries its group id through TRL's shuffle); otherwise one extra no-grad
  forward.
* ``_get_per_token_logps_and_entropies`` (inside TRL's loss): right after the training forward, deferred group EDA
  and EDA with ``eda_scope='batch'`` rescale the micro-batch's advantages (TRL reads them after this call), then the
  covariance mode, looked up in ``core_algos.COV_MODES``, returns the log-probs TRL's surrogate uses (Clip-Cov:
  selected tokens detached), its per-token penalty (KL-Cov) and whether to drop PPO's clip (KL-Cov).
* ``_prepare_inputs`` (after TRL's): with ``cov_scope='step'``, at the first micro-step of an optimizer step, one
  no-grad forward over the step's micro-batches (all in TRL's rollout buffer) chooses the Clip-Cov / KL-Cov tokens
  of the whole step, over every process (``core_algos.step_cov_selection``).
* ``_compute_loss``: adds a covariance mode's penalty (KL-Cov), reduced exactly like TRL reduces its per-token loss,
  and, for a mode that asks for it (KL-Cov, the authors' loss), has TRL compute the unclipped surrogate -r A.
* ``_save_checkpoint`` / ``_load_optimizer_and_scheduler`` / ``_get_train_sampler``: exact resume. The state TRL
  and edge-trl keep outside a transformers checkpoint (TRL's ``_step`` and a rollout buffer spanning the checkpoint,
  GEC's rollout count, dynamic sampling's prompt position) is saved with each checkpoint and restored; the
  training sampler is TRL's, made resumable across epochs. See :mod:`edge_trl.checkpoints`.

What passes between the hooks lives in two small objects, each alive for one call only: ``_RolloutState`` (one
``_generate_and_score_completions`` call) and ``_LossState`` (one ``_compute_loss`` call). The only state that must
travel with TRL's data is the group id of each response (``GROUP_IDS_KEY``) and, with a covariance mode, its position
in the rollout (``RESPONSE_IDS_KEY``): keys of TRL's batch that survive its shuffle into micro-batches.

Reward functions are wrapped by :func:`edge_trl.faults.guard_reward_funcs` before TRL sees them: one completion a
reward fails on (raises, hangs, NaN/inf) scores None instead of stopping the run.

All hooks follow TRL 1.16 (the range pinned in pyproject.toml; ``tests/test_compat.py`` fails on another version).
With every EDGE feature off, the trainer runs TRL's code paths unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler

from edge_trl import gec, vllm_support
from edge_trl._compat import check_trl_version
from edge_trl.checkpoints import (
    ResumableRepeatSampler,
    load_resume_state,
    rollout_in_progress,
    save_resume_state,
)
from edge_trl.config import EdgeGRPOConfig
from edge_trl.core_algos import (
    CovSettings,
    aggregate_token_loss,
    collapsed_group_share,
    dynamic_sampling_filter,
    entropy_scale,
    get_cov_mode,
    ppo_clipped_mask,
    response_entropy,
    scale_per_response,
    step_cov_selection,
    token_covariance,
    token_keys,
)
from edge_trl.data import normalize_answer
from edge_trl.end_of_turn import end_of_turn_token_ids
from edge_trl.faults import guard_reward_funcs, warn_if_upload_fails

logger = logging.getLogger(__name__)

# Key of TRL's batch that carries each response's group id through TRL's shuffle (deferred group-scope EDA).
GROUP_IDS_KEY = "edge_group_ids"
# Key of TRL's batch with each response's position in its rollout (covariance modes: a token's name is its response's
# position and its own; cov_scope='step' selects by it).
RESPONSE_IDS_KEY = "edge_response_ids"
# Rollout keys padded on the left (TRL left-pads prompts); every other 2-D key is a completion-side (B, T) tensor.
_PROMPT_KEYS = ("prompt_ids", "prompt_mask")


@dataclass
class _RolloutState:
    """What the hooks of one ``_generate_and_score_completions`` call share; created at its start, dropped at its end.

    * ``gec_rows``: the dataset rows of the rollout when its wrong responses are corrected (read by ``_generate``),
      else None;
    * ``capture_entropies``: group-scope EDA wants the entropies of TRL's no-grad old-log-prob forward of this rollout;
      ``captured_logps`` / ``captured_entropies`` are what that forward returned;
    * ``rewards_per_func``: the last rewards TRL computed (after GEC: those of the corrected responses).
    """

    gec_rows: list[dict[str, Any]] | None = None
    capture_entropies: bool = False
    captured_logps: torch.Tensor | None = None
    captured_entropies: torch.Tensor | None = None
    rewards_per_func: torch.Tensor | None = None


@dataclass
class _LossState:
    """What the hooks of one ``_compute_loss`` call share; created at its start, dropped at its end.

    * ``inputs``: a shallow copy of the micro-batch TRL's loss reads (the hooks may replace its advantages);
    * ``penalty``: a covariance mode's extra loss term, already reduced like TRL's loss (None: nothing to add);
    * ``saved_epsilons``: PPO's clip range, saved while a covariance mode has TRL compute the unclipped surrogate;
    * ``selected``: the tokens the covariance mode acted on in this micro-batch.
    """

    inputs: dict[str, Any]
    penalty: torch.Tensor | None = None
    saved_epsilons: tuple[float, float] | None = None
    selected: torch.Tensor | None = None


class EdgeGRPOTrainer(GRPOTrainer):
    """GRPO with EDGE-GRPO's Entropy-Driven Advantage and Guided Error Correction, and Cui et al.'s Clip-Cov / KL-Cov.

    Takes the arguments of [`trl.GRPOTrainer`]; ``args`` must be an [`EdgeGRPOConfig`]. ``edge_run_info`` (also a
    public attribute, which may be set after construction) is shown on the model card: the keys ``method``,
    ``dataset`` and ``model`` are read, all optional. Extra metrics, logged
    through TRL every step under ``edge/``: ``collapsed_group_share``, ``adv_var`` (every rollout), ``adv_var_before_eda``,
    ``adv_var_after_eda``, ``eda_scale_{min,mean,max}``, ``eda_extra_forward_s``, ``cov_mean``,
    ``cov_selected_mean``, ``clip_cov_selected_share``, ``kl_cov_selected_share``, ``kl_cov_penalty`` and
    ``cov_step_forward_s`` (``cov_scope='step'``); under ``dynamic_sampling/`` (one value per rollout):
    ``gen_batches``, ``kept_group_share``, ``dropped_all_correct``, ``dropped_all_wrong``, ``frac_reward_zero_std``
    (of the trained batch) and ``rollout_s``; and under
    ``gec/``: ``corrected_share``, ``{reflect,answer,solution,truncated}_count``, ``reflection_new_tokens_mean``,
    ``accuracy_before``/``accuracy_after``, ``collapsed_group_share_before``/``collapsed_group_share_after`` and
    ``mean_length_before``. With GEC, TRL's ``completions/*`` length metrics and ``num_tokens`` count the corrected
    completions, the ones trained on.

    With GEC, reward functions run twice on a training rollout: once to find the wrong responses, once on the
    corrected ones (the rewards TRL trains on).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "edge-trl"]

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: EdgeGRPOConfig | None = None,
        edge_run_info: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        check_trl_version()
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = EdgeGRPOConfig(f"{str(model_name).split('/')[-1]}-EdgeGRPO")
        elif isinstance(args, GRPOConfig) and not isinstance(args, EdgeGRPOConfig):
            raise TypeError(
                "EdgeGRPOTrainer needs `args` to be an EdgeGRPOConfig, got a plain GRPOConfig: build it with "
                "`edge_trl.EdgeGRPOConfig(...)` (it takes every GRPOConfig field)."
            )
        self.edge_run_info: dict[str, str] = dict(edge_run_info or {})
        # State shared between the hooks of one call (see _RolloutState / _LossState); None outside that call.
        self._rollout: _RolloutState | None = None
        self._loss: _LossState | None = None
        # A reward that raises, hangs or returns NaN/inf on one completion costs that completion, not the run.
        reward_funcs = guard_reward_funcs(reward_funcs, args.reward_timeout)
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._stop_at_end_of_turn()
        if self.use_vllm:  # the weight sync of vLLM's CPU backend (a no-op elsewhere)
            vllm_support.adapt_vllm_generation(self)
        if self.args.gec_correction_active:
            self._setup_gec(kwargs.get("train_dataset"))
        if self.args.dynamic_sampling:
            self._setup_dynamic_sampling(kwargs.get("train_dataset"))
        self._step_selection: dict[int, torch.Tensor] = {}  # cov_scope='step': selected tokens per micro-step

    # ----------------------------------------------------------------------------------------------------------------
    # End of turn: a stop token with conversational prompts
    # ----------------------------------------------------------------------------------------------------------------

    def _stop_at_end_of_turn(self) -> None:
        """With conversational prompts, the chat template's end-of-turn token ends a completion too.

        TRL 1.16 stops at the model's ``generation_config.eos_token_id`` plus the tokenizer's EOS (``eos_token_ids``),
        which for a base model such as Qwen2.5-Math-1.5B is ``<|endoftext|>`` alone, so the ``<|im_end|>`` that
        closes the assistant turn would not stop a rollout. Adds it to ``eos_token_ids`` (TRL's completion mask and
        length metrics), to the transformers ``generation_config`` / ``generation_kwargs`` and to vLLM's
        ``stop_token_ids``. ``end_of_turn_token_ids`` (``[]`` for plain prompts) is what GEC closes turns with.
        """
        self.end_of_turn_token_ids: list[int] = (
            end_of_turn_token_ids(self._tokenizer) if self._prompts_are_conversational() else []
        )
        new = [t for t in self.end_of_turn_token_ids if t not in self.eos_token_ids]
        if not new:
            return
        self.eos_token_ids = [*self.eos_token_ids, *new]
        generation_config = getattr(self, "generation_config", None)  # the transformers backends
        if generation_config is not None:
            current = generation_config.eos_token_id
            current = [] if current is None else [current] if isinstance(current, int) else list(current)
            stops = [*current, *(t for t in new if t not in current)]
            generation_config.eos_token_id = stops
            self.generation_kwargs["eos_token_id"] = stops  # TRL also overrides the model's config with these
        vllm_generation = getattr(self, "vllm_generation", None)
        if vllm_generation is not None:  # vLLM stops at the model's EOS and at these (colocate and server modes)
            extra = dict(vllm_generation.generation_kwargs)  # may be args.generation_kwargs itself: do not mutate
            extra["stop_token_ids"] = [*(extra.get("stop_token_ids") or []), *new]
            vllm_generation.generation_kwargs = extra

    def _prompts_are_conversational(self) -> bool:
        """Whether the training (else evaluation) prompts are chat messages, which TRL renders with the template."""
        for dataset in (self.train_dataset, self.eval_dataset):
            if isinstance(dataset, dict):  # several evaluation datasets
                dataset = next(iter(dataset.values()), None)
            if dataset is None:
                continue
            try:
                first = next(iter(dataset))
            except StopIteration:
                continue
            return is_conversational(first)
        return False

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
        training = self.model.training
        if self.args.dynamic_sampling and training:
            output = self._dynamic_sampling_rollout()
        else:
            output = self._score_generation_batch(inputs)
        if self.args.cov_mode != "none" and training:
            # Each response's place in the rollout, which TRL's shuffle keeps: names a token whatever micro-batch it
            # lands in (cov_scope='step' selects by it; tests compare selections by it).
            local = output["advantages"].size(0)
            start = self.accelerator.process_index * local
            output[RESPONSE_IDS_KEY] = torch.arange(start, start + local, device=output["advantages"].device)
        return output

    def _score_generation_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout of one generation batch, with GEC and group-scope EDA (``_last_rewards``: its rewards)."""
        group_eda = self.args.eda and self.args.eda_scope == "group"
        correcting = self.args.gec_correction_active and self.model.training
        rollout = _RolloutState(
            gec_rows=inputs if correcting else None,
            capture_entropies=group_eda and self._trl_computes_old_logps(),
        )
        self._rollout = rollout
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout = None
        self._last_rewards = rollout.rewards_per_func

        mode = self._mode()
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        advantages = output["advantages"]
        all_advantages = self.accelerator.gather(advantages)
        metrics = self._metrics[mode]
        metrics["edge/collapsed_group_share"].append(collapsed_group_share(all_advantages, group_size))
        metrics["edge/adv_var"].append(all_advantages.float().var(unbiased=False).item())  # before any EDA scaling
        if correcting and rollout.rewards_per_func is not None:  # TRL's rewards of the corrected responses
            rewards = rollout.rewards_per_func
            metrics["gec/accuracy_after"].append(self._gec_is_correct(rewards).float().mean().item())
            metrics["gec/collapsed_group_share_after"].append(
                collapsed_group_share(self._weighted_reward(rewards), group_size)
            )
        if not group_eda:
            return output

        mask = self._loss_mask(output)
        # Reuse TRL's old-log-prob forward only if what we captured is really what TRL returned as old log-probs.
        if rollout.captured_logps is not None and rollout.captured_logps is output.get("old_per_token_logps"):
            entropies = rollout.captured_entropies
        elif mode == "eval" or self.args.steps_per_generation == 1:
            # The next loss forward sees this whole generation batch with the same weights: take the entropies from
            # it (free) instead of an extra forward. TRL shuffles the batch, so tag each response with its group.
            start = self.accelerator.process_index * advantages.size(0)
            positions = torch.arange(start, start + advantages.size(0), device=advantages.device)
            output[GROUP_IDS_KEY] = positions // group_size
            return output
        else:
            entropies = self._rollout_entropies(output)
        all_entropy = self.accelerator.gather(response_entropy(entropies, mask))
        all_valid = self.accelerator.gather(mask.sum(-1) > 0)
        all_scale = self._eda_scale(all_entropy, all_valid, group_size)
        output["advantages"] = scale_per_response(advantages, self._local_slice(all_scale, advantages.size(0)))
        self._log_eda(mode, all_advantages, all_scale)
        return output

    @torch.no_grad()
    def _rollout_entropies(self, batch: dict[str, Any]) -> torch.Tensor:
        """The one extra no-grad forward group-scope EDA needs when TRL computes no old log-probs."""
        start = time.perf_counter()
        mode = self._mode()
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
    # DAPO dynamic sampling (what and why: docs/methods/dynamic-sampling.md)
    # ----------------------------------------------------------------------------------------------------------------

    def _setup_dynamic_sampling(self, train_dataset: Any) -> None:
        args = self.args
        names = [*self.reward_func_names, "reward"]
        if args.dynamic_sampling_metric not in names:
            raise ValueError(
                f"dynamic_sampling_metric={args.dynamic_sampling_metric!r} is not one of the reward functions "
                f"{self.reward_func_names}: name one of them, or 'reward' for the weighted sum of all rewards."
            )
        if train_dataset is not None and not hasattr(train_dataset, "__getitem__"):
            raise ValueError(
                "dynamic_sampling draws further prompts in the training sampler's order, which needs a map-style "
                "dataset (an IterableDataset has no sampler): pass a datasets.Dataset, or set dynamic_sampling=False."
            )
        # Generation batches drawn so far (the run's prompt position in the sampler's order, saved with checkpoints).
        self._ds_batches_drawn = 0

    def _ds_rows(self, batch_number: int) -> list[dict[str, Any]]:
        """This process's rows of generation batch ``batch_number`` of the training sampler's order, as TRL's data
        loader gives them: the batch's prompts each repeated num_generations times, process p taking the p-th slice
        (accelerate's ``BatchSamplerShard``)."""
        sampler = getattr(self, "_train_sampler", None)
        if sampler is None:
            raise RuntimeError("dynamic_sampling needs the training sampler: it is built by get_train_dataloader().")
        indices = [i for i in sampler.chunk(batch_number) for _ in range(self.num_generations)]
        local = len(indices) // self.accelerator.num_processes
        start = self.accelerator.process_index * local
        return [sampler.data_source[i] for i in indices[start : start + local]]

    def _ds_metric(self, rewards_per_func: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The metric a group's responses must differ in, and the value from which a response counts as correct."""
        name = self.args.dynamic_sampling_metric
        return self._score(rewards_per_func, None if name == "reward" else name)

    def _score(self, rewards_per_func: torch.Tensor, reward_name: str | None) -> tuple[torch.Tensor, float]:
        """One reward function's scores (correct from 1.0), or with no name the weighted sum of all of them (correct
        from the sum of the weights: format 1 + accuracy 1, as the official EDGE-GRPO code)."""
        if reward_name is None:
            return self._weighted_reward(rewards_per_func), float(self.reward_weights.sum())
        return rewards_per_func[:, self.reward_func_names.index(reward_name)], 1.0

    def _dynamic_sampling_rollout(self) -> dict[str, Any]:
        """DAPO's dynamic sampling (verl ``recipe/dapo/dapo_ray_trainer.py``, ``algorithm.filter_groups``).

        Generates and scores generation batches from the next prompts of the sampler's order, keeps the groups whose
        metric is not constant (:func:`core_algos.dynamic_sampling_filter`; after GEC's correction, since scoring
        includes it), until the kept groups fill one generation batch; the surplus is cut. Every process sees the
        gathered rewards, so all decide the same and generate the same number of batches. Returns this process's
        slice of the kept batch, in TRL's layout.
        """
        args, group_size = self.args, self.num_generations
        target_rows = args.generation_batch_size  # all processes; one rollout (steps_per_generation micro-batches)
        target_groups = target_rows // group_size
        kept_parts: list[dict[str, torch.Tensor]] = []
        kept_rewards: list[torch.Tensor] = []
        kept_groups = generated_groups = all_correct = all_wrong = batches = 0
        start_time = time.perf_counter()
        while kept_groups < target_groups:
            if args.max_num_gen_batches and batches >= args.max_num_gen_batches:
                raise RuntimeError(
                    f"dynamic_sampling: {batches} generation batches (max_num_gen_batches={args.max_num_gen_batches}) "
                    f"kept only {kept_groups} of the {target_groups} groups this rollout needs: in the others every "
                    f"response had the same {args.dynamic_sampling_metric!r} ({all_correct} groups all correct, "
                    f"{all_wrong} all wrong), so the data is too difficult or too easy for the model. Raise "
                    "max_num_gen_batches (0 = unlimited), use gec=True (wrong groups get a corrected response), or "
                    "train on data of a fitting difficulty."
                )
            rows = self._ds_rows(self._ds_batches_drawn)
            self._ds_batches_drawn += 1
            batches += 1
            output = self._score_generation_batch(rows)
            metric, threshold = self._ds_metric(self._last_rewards)
            keep, correct = dynamic_sampling_filter(metric, group_size, threshold)
            generated_groups += keep.numel()
            kept_groups += int(keep.sum())
            all_correct += int(correct.sum())
            all_wrong += int((~keep & ~correct).sum())
            rows_kept = keep.repeat_interleave(group_size).to(self.accelerator.device)
            whole = self._gather_rollout(output)
            kept_parts.append({key: value[rows_kept] for key, value in whole.items()})
            kept_rewards.append(self._weighted_reward(self._last_rewards)[rows_kept.to(self._last_rewards.device)])

        batch = self._merge_rollouts(kept_parts, target_rows)
        trained_rewards = torch.cat(kept_rewards)[:target_rows]
        loss_mask = self._loss_mask(batch)
        local = target_rows // self.accelerator.num_processes
        start = self.accelerator.process_index * local
        output = self._trim_padding({key: value[start : start + local] for key, value in batch.items()})
        output["num_items_in_batch"] = loss_mask.sum()  # TRL's: active tokens of the whole (all-process) batch
        if GROUP_IDS_KEY in output:  # deferred group EDA: group ids of the kept batch
            output[GROUP_IDS_KEY] = torch.arange(start, start + local, device=loss_mask.device) // group_size

        metrics = self._metrics["train"]
        metrics["dynamic_sampling/gen_batches"].append(float(batches))
        metrics["dynamic_sampling/kept_group_share"].append(kept_groups / max(generated_groups, 1))
        metrics["dynamic_sampling/dropped_all_correct"].append(float(all_correct))
        metrics["dynamic_sampling/dropped_all_wrong"].append(float(all_wrong))
        metrics["dynamic_sampling/frac_reward_zero_std"].append(collapsed_group_share(trained_rewards, group_size))
        metrics["dynamic_sampling/rollout_s"].append(time.perf_counter() - start_time)
        return output

    def _pad_value(self, key: str) -> int | float:
        if key in ("prompt_ids", "completion_ids"):
            return self._tokenizer.pad_token_id
        return 1 if key == "tool_mask" else 0  # TRL pads tool_mask with 1; masks, log-probs, ratios with 0

    def _gather_rollout(self, output: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Every process's rows of a scored generation batch, in global order (each process holds them all)."""
        local = output["advantages"].size(0)
        whole = {}
        for key, value in output.items():
            if key == "num_items_in_batch":
                continue  # recomputed for the kept batch
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.size(0) != local:
                raise ValueError(
                    f"dynamic_sampling cannot regroup the rollout field {key!r}: multimodal rollouts are not "
                    "supported; set dynamic_sampling=False."
                )
            if value.dim() >= 2:
                value = self.accelerator.pad_across_processes(
                    value, dim=1, pad_index=self._pad_value(key), pad_first=key in _PROMPT_KEYS
                )
            whole[key] = self.accelerator.gather(value)
        return whole

    def _merge_rollouts(self, parts: list[dict[str, torch.Tensor]], rows: int) -> dict[str, torch.Tensor]:
        """Concatenate kept rows of several generation batches (widths padded as TRL pads) and cut at ``rows``."""
        merged = {}
        for key in parts[0]:
            tensors = [part[key] for part in parts]
            if tensors[0].dim() >= 2:
                width = max(t.size(1) for t in tensors)
                left = key in _PROMPT_KEYS
                tensors = [
                    F.pad(t, (width - t.size(1), 0) if left else (0, width - t.size(1)), value=self._pad_value(key))
                    for t in tensors
                ]
            merged[key] = torch.cat(tensors)[:rows]
        return merged

    def _trim_padding(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the padding columns no row of this process needs, so its tensors are as wide as TRL pads them."""
        if self.pad_to_multiple_of is not None:
            return batch
        prompt_used = batch["prompt_mask"].bool().any(0).nonzero()
        first = int(prompt_used[0]) if prompt_used.numel() else 0
        completion_width = batch["completion_mask"].size(1)
        used = batch["completion_mask"].bool().any(0).nonzero()  # TRL pads to the longest masked completion
        last = max(int(used[-1]) + 1, 1) if used.numel() else 1
        trimmed = {}
        for key, value in batch.items():
            if key in _PROMPT_KEYS:
                value = value[:, first:]
            elif value.dim() >= 2 and value.size(1) == completion_width:
                value = value[:, :last]
            trimmed[key] = value
        return trimmed

    # ----------------------------------------------------------------------------------------------------------------
    # Loss: batch-scope EDA, Clip-Cov, KL-Cov
    # ----------------------------------------------------------------------------------------------------------------

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        eda_in_loss = GROUP_IDS_KEY in inputs or (self.args.eda and self.args.eda_scope == "batch")
        if not eda_in_loss and self.args.cov_mode == "none":
            return super()._compute_loss(model, inputs)
        # Shallow copy: TRL reuses the buffered batch across iterations, and batch-scope EDA replaces its advantages.
        state = _LossState(inputs=dict(inputs))
        self._loss = state
        try:
            loss = super()._compute_loss(model, state.inputs)
        finally:
            if state.saved_epsilons is not None:
                self.epsilon_low, self.epsilon_high = state.saved_epsilons
            self._loss = None
        return loss if state.penalty is None else loss + state.penalty

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        rollout = self._rollout
        capturing = rollout is not None and rollout.capture_entropies and rollout.captured_logps is None
        if capturing and not torch.is_grad_enabled():
            # TRL's no-grad old-log-prob forward of this rollout: have it return the entropies too.
            kwargs["compute_entropy"] = True
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            rollout.captured_logps, rollout.captured_entropies = logps, entropies
            return logps, entropies, aux

        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        if self._loss is not None and entropies is not None:  # the forward of TRL's _compute_loss
            logps = self._apply_loss_hooks(self._loss.inputs, logps, entropies)
        return logps, entropies, aux

    def _apply_loss_hooks(self, inputs: dict[str, Any], logps: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
        mode = self._mode()
        mask = self._loss_mask(inputs)
        metrics = self._metrics[mode]

        scaled = self._eda_in_loss(inputs, entropies, mask)
        inputs.pop(GROUP_IDS_KEY, None)
        if scaled is not None:
            inputs["advantages"], all_advantages, all_scale = scaled
            self._log_eda(mode, all_advantages, all_scale)

        cov_mode = self.args.cov_mode
        if cov_mode == "none":
            return logps
        advantages = inputs["advantages"]
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        settings = self._cov_settings()
        if self.args.cov_scope == "step" and self.model.training:
            selected = self._step_selection.get(self._step)
            if selected is None or selected.shape != mask.shape:
                raise RuntimeError(f"cov_scope='step': no token selection for micro-step {self._step}.")
            settings = dataclasses.replace(settings, selected=selected)
        terms = get_cov_mode(cov_mode)(logps, old_logps, advantages, mask, settings)
        self._loss.selected = terms.selected
        if terms.unclipped:
            # TRL 1.16 _compute_loss computes -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A): with an infinite clip
            # range the clamp is the identity and the surrogate is -r A on every token, value and gradient (TRL's
            # clip_ratio/* metrics then read 0: nothing is clipped). _compute_loss restores the range afterwards.
            self._loss.saved_epsilons = (self.epsilon_low, self.epsilon_high)
            self.epsilon_low = self.epsilon_high = math.inf
        selected = terms.selected
        if terms.penalty is not None:
            self._loss.penalty = self._reduce_like_trl(terms.penalty, mask, inputs)
            penalty_total = self.accelerator.reduce(terms.penalty.detach().sum(), reduction="sum")
            selected_total = self.accelerator.reduce(selected.sum().float(), reduction="sum")
            metrics[f"edge/{cov_mode}_penalty"].append((penalty_total / selected_total.clamp(min=1.0)).item())

        cov = token_covariance(advantages, logps, mask)
        totals = torch.stack([cov.sum(), mask.sum().float(), (cov * selected).sum(), selected.sum().float()]).detach()
        cov_sum, n_valid, selected_cov_sum, n_selected = self.accelerator.reduce(totals, reduction="sum").tolist()
        metrics["edge/cov_mean"].append(cov_sum / max(n_valid, 1.0))
        metrics["edge/cov_selected_mean"].append(selected_cov_sum / max(n_selected, 1.0))
        metrics[f"edge/{cov_mode}_selected_share"].append(n_selected / max(n_valid, 1.0))
        return terms.logps

    def _eda_in_loss(
        self, inputs: dict[str, Any], entropies: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """EDA applied from the training forward's entropies (batch scope, or group scope deferred from the rollout):
        the micro-batch's scaled advantages, the gathered advantages and scales; None when EDA does not act here."""
        group_ids = inputs.get(GROUP_IDS_KEY)
        if group_ids is None and not (self.args.eda and self.args.eda_scope == "batch"):
            return None
        advantages = inputs["advantages"]
        all_advantages = self.accelerator.gather(advantages)
        all_entropy = self.accelerator.gather(response_entropy(entropies, mask))
        all_valid = self.accelerator.gather(mask.sum(-1) > 0)
        if group_ids is None:  # batch scope: the gathered micro-batch is one set
            all_scale = self._eda_scale(all_entropy, all_valid, None)
        else:  # group scope, deferred from the rollout: regroup the shuffled responses, scale, scatter back
            group_size = self.num_generations if self._mode() == "train" else self.num_generations_eval
            order = torch.argsort(self.accelerator.gather(group_ids), stable=True)
            all_scale = torch.empty_like(all_entropy)
            all_scale[order] = self._eda_scale(all_entropy[order], all_valid[order], group_size)
        scaled = scale_per_response(advantages, self._local_slice(all_scale, advantages.size(0)))
        return scaled, all_advantages, all_scale

    # ----------------------------------------------------------------------------------------------------------------
    # cov_scope='step': one Clip-Cov / KL-Cov selection per optimizer step (docs/methods/cov-scope.md)
    # ----------------------------------------------------------------------------------------------------------------

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        inputs = super()._prepare_inputs(generation_batch)
        step_scope = self.args.cov_scope == "step" and self.args.cov_mode != "none" and self.model.training
        if step_scope and self._step not in self._step_selection:  # the first micro-step of an optimizer step
            self._select_step_tokens()
        return inputs

    @torch.no_grad()
    def _select_step_tokens(self) -> None:
        """Choose the Clip-Cov / KL-Cov tokens of the whole optimizer step that starts at micro-step ``_step``.

        One no-grad forward over the step's micro-batches (TRL 1.16 keeps them all in ``_buffered_inputs``; the
        weights do not change within a step, so these are the log-probs the loss forwards will see), the
        covariance centred with the means over the step's valid tokens on every process, k counted over them, and
        the choice made by :func:`core_algos.step_cov_selection` on the gathered tokens, named by their response's
        rollout position and their own: the same tokens however the step is split into micro-batches and processes.
        """
        start_time = time.perf_counter()
        args = self.args
        first, count = self._step, self.current_gradient_accumulation_steps
        micro_batches = [self._buffered_inputs[(first + j) % args.steps_per_generation] for j in range(count)]
        eda_in_loss = args.eda and args.eda_scope == "batch"
        parts = []
        with disable_gradient_checkpointing(self.model, args.gradient_checkpointing_kwargs):
            for inputs in micro_batches:
                mask = self._loss_mask(inputs)
                input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
                attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
                logps, entropies, _ = super()._get_per_token_logps_and_entropies(
                    self.model,
                    input_ids,
                    attention_mask,
                    inputs["completion_ids"].size(1),
                    compute_entropy=eda_in_loss or GROUP_IDS_KEY in inputs,
                )
                scaled = self._eda_in_loss(inputs, entropies, mask)
                advantages = inputs["advantages"] if scaled is None else scaled[0]
                parts.append((inputs, mask, logps, advantages))

        # The step's means over every valid token of every micro-batch and process.
        sums = torch.zeros(3, dtype=torch.float64, device=self.accelerator.device)
        for _, mask, logps, advantages in parts:
            m = mask.double()
            adv = advantages.double().unsqueeze(-1) if advantages.dim() == 1 else advantages.double()
            sums += torch.stack([(adv * m).sum(), (logps.double() * m).sum(), m.sum()])
        adv_sum, logp_sum, num_valid = self.accelerator.reduce(sums, reduction="sum").tolist()
        centre = (adv_sum / max(num_valid, 1.0), logp_sum / max(num_valid, 1.0))

        covs, keys, candidates, token_key_maps = [], [], [], []
        for inputs, mask, logps, advantages in parts:
            valid = mask.bool()
            cov = token_covariance(advantages, logps, mask, centre=centre)
            key = token_keys(inputs[RESPONSE_IDS_KEY], mask.size(1))
            candidate = valid
            if args.cov_mode == "clip_cov":
                old = inputs.get("old_per_token_logps")
                ratio = torch.exp(logps - (logps if old is None else old))
                clipped = ppo_clipped_mask(ratio, advantages, self.epsilon_low, self.epsilon_high)
                candidate = valid & (cov > args.clip_cov_lb) & (cov < args.clip_cov_ub) & ~clipped
            covs.append(cov[valid])
            keys.append(key[valid])
            candidates.append(candidate[valid])
            token_key_maps.append((key, valid))
        all_cov, all_keys, all_candidates = (
            self._gather_ragged(torch.cat(values)) for values in (covs, keys, candidates)
        )
        ratio = args.clip_cov_ratio if args.cov_mode == "clip_cov" else args.kl_cov_ratio
        # The same draw on every process and for every split: seeded by the seed and the optimizer step only.
        generator = torch.Generator().manual_seed((args.seed * 1_000_003 + self.state.global_step) % (2**63))
        chosen = step_cov_selection(
            args.cov_mode, all_cov, all_keys, all_candidates, int(num_valid), ratio, generator=generator
        )
        self._step_selection = {
            first + j: torch.isin(key, chosen) & valid for j, (key, valid) in enumerate(token_key_maps)
        }
        self._metrics["train"]["edge/cov_step_forward_s"].append(time.perf_counter() - start_time)

    def _gather_ragged(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D tensor of a different length on each process, in process order."""
        if self.accelerator.num_processes == 1:
            return values
        if values.dtype == torch.bool:  # not every backend gathers bool
            return self._gather_ragged(values.to(torch.uint8)).bool()
        lengths = self.accelerator.gather(torch.tensor([values.numel()], device=values.device))
        padded = self.accelerator.pad_across_processes(values, dim=0)
        gathered = self.accelerator.gather(padded).view(self.accelerator.num_processes, -1)
        return torch.cat([row[:n] for row, n in zip(gathered, lengths.tolist(), strict=True)])

    def _cov_settings(self) -> CovSettings:
        args = self.args
        return CovSettings(
            clip_cov_ratio=args.clip_cov_ratio,
            clip_cov_lb=args.clip_cov_lb,
            clip_cov_ub=args.clip_cov_ub,
            kl_cov_ratio=args.kl_cov_ratio,
            kl_cov_coef=args.kl_cov_coef,
            kl_cov_clip=args.kl_cov_clip,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            generator=self._seeded_generator(self._step),  # reproducible from the seed, the process and the micro-step
        )

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
    # Guided Error Correction (EDGE-GRPO)
    # ----------------------------------------------------------------------------------------------------------------

    def _setup_gec(self, train_dataset: Any) -> None:
        args = self.args
        if self.tools or self.rollout_func is not None or self.environment_factories is not None:
            raise ValueError(
                "gec/force_reflection correct plain single-turn completions; they cannot be combined with tools, "
                "rollout_func or environment_factory. Set gec=False and force_reflection=False, or drop those."
            )
        columns = getattr(train_dataset, "column_names", None)
        if columns is not None and args.gec_answer_column not in columns:
            raise ValueError(
                f"gec needs the reference answer of every prompt, but the training dataset has no column "
                f"{args.gec_answer_column!r} (columns: {columns}). Rename your answer column to "
                f"{args.gec_answer_column!r} or set gec_answer_column to its name."
            )
        if columns is not None and args.gec_solution_column not in columns and not args.reflection_only:
            logger.warning(
                "The training dataset has no %r column: GEC's solution branch falls back to answer injection.",
                args.gec_solution_column,
            )
        if args.gec_reward_name is not None and args.gec_reward_name not in self.reward_func_names:
            raise ValueError(
                f"gec_reward_name={args.gec_reward_name!r} is not one of the reward functions "
                f"{self.reward_func_names}: name one of them, or None to use the sum of all rewards."
            )
        # Injected text is tokenized once, without special tokens.
        self._gec_cue_ids = self._tokenizer(args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
        if args.gec_cue_in_budget and args.gec_max_new_tokens <= len(self._gec_cue_ids):
            raise ValueError(
                f"gec_max_new_tokens={args.gec_max_new_tokens} leaves no room to continue after the reflection cue "
                f"({len(self._gec_cue_ids)} tokens): raise gec_max_new_tokens (the paper uses 256), or set "
                "gec_cue_in_budget=False to count only the tokens after the cue."
            )
        self._gec_calls = 0

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._rollout is not None:
            self._rollout.rewards_per_func = rewards
        return rewards

    def _weighted_reward(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        weights = self.reward_weights.to(rewards_per_func.device)
        return (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)

    def _gec_is_correct(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Correct = the deciding reward reaches its threshold (NaN, an unscorable response, counts as wrong)."""
        score, threshold = self._score(rewards_per_func, self.args.gec_reward_name)
        if self.args.gec_correct_threshold is not None:
            threshold = self.args.gec_correct_threshold
        return score >= threshold - 1e-6

    def _generate(self, prompts: list):
        result = super()._generate(prompts)
        rows = None if self._rollout is None else self._rollout.gec_rows
        if rows is None:
            return result
        corrected = self._correct_wrong_responses(rows, prompts, result)
        self._log_trained_lengths(result, corrected)
        return corrected

    def _correct_wrong_responses(self, rows: list[dict[str, Any]], prompts: list, result: tuple) -> tuple:
        (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images) = result
        args = self.args
        local = len(completion_ids)
        start = self.accelerator.process_index * local

        rewards = self._calculate_rewards(rows, prompts, completions, completion_ids)  # gathered over processes
        correct = self._gec_is_correct(rewards)
        wrong = [i for i in range(local) if not bool(correct[start + i])]
        generator = self._seeded_generator(self._gec_calls)
        self._gec_calls += 1
        probs = (args.gec_reflect_prob, args.gec_answer_prob, args.gec_solution_prob)
        # With gec=True too, GEC wins (the official precedence): all three branches are drawn.
        drawn = gec.choose_branches(len(wrong), probs, generator, args.reflection_only)

        plan: dict[int, str] = {}
        answers: dict[int, str | None] = {}
        for i, branch in zip(wrong, drawn, strict=True):
            answers[i] = normalize_answer(rows[i].get(args.gec_answer_column))
            solution = rows[i].get(args.gec_solution_column)
            if branch == "solution" and not (isinstance(solution, str) and solution.strip()):
                branch = "answer"  # a row without a reference solution: inject its answer instead
            if branch == "answer" and answers[i] is None:
                branch = "reflect"  # nothing to inject
            plan[i] = branch

        # gec_cue_in_budget=False is the official code's budget: nothing is cut.
        max_length = self.max_completion_length + args.gec_max_new_tokens if args.gec_cue_in_budget else None
        # A response ends with a run of these (e.g. <|im_end|>, or <|im_end|><|endoftext|>): injections go before it.
        stops, end_of_turn = list(self.eos_token_ids), self.end_of_turn_token_ids
        reflect_ids = [i for i in wrong if plan[i] == "reflect"]
        continuations, continuation_logprobs = self._generate_reflections(
            [gec.reflection_prompt(prompt_ids[i], completion_ids[i], self._gec_cue_ids, stops) for i in reflect_ids]
        )
        corrections: dict[int, gec.Correction] = {}
        for k, i in enumerate(reflect_ids):
            corrections[i] = gec.reflect(
                completion_ids[i],
                self._gec_cue_ids,
                continuations[k],
                stops,
                max_length,
                None if logprobs is None else logprobs[i],
                None if continuation_logprobs is None else continuation_logprobs[k],
            )
        for i in wrong:
            if plan[i] == "answer":
                text = args.gec_answer_template.replace("{answer}", answers[i])
                injection = self._tokenizer(text, add_special_tokens=False)["input_ids"]
                response_logprobs = None if logprobs is None else logprobs[i]
                corrections[i] = gec.inject_answer(
                    completion_ids[i], injection, stops, max_length, response_logprobs, end_of_turn
                )
            elif plan[i] == "solution":
                solution_ids = self._tokenizer(rows[i][args.gec_solution_column], add_special_tokens=False)["input_ids"]
                # Closed like the model closed this response; a cut one gets the end of turn (plain prompts: EOS).
                closing = gec.turn_closing(gec.split_ending(completion_ids[i], stops)[1], end_of_turn)
                closing = closing or end_of_turn or [self.eos_token_ids[0]]
                corrections[i] = gec.replace_with_solution(solution_ids, closing, max_length, logprobs is not None)

        completion_ids, completions = list(completion_ids), list(completions)
        if corrections:
            order = sorted(corrections)
            texts = self.processing_class.batch_decode(
                [corrections[i].completion_ids for i in order], skip_special_tokens=True
            )
            conversational = is_conversational({"prompt": prompts[0]})
            for i, text in zip(order, texts, strict=True):
                completion_ids[i] = corrections[i].completion_ids
                completions[i] = [{"role": "assistant", "content": text}] if conversational else text
                if logprobs is not None:
                    logprobs[i] = corrections[i].sampled_logprobs
        if args.gec_mask_injected or args.gec_mask_wrong_prefix:
            tool_mask = [[1] * len(ids) for ids in completion_ids] if tool_mask is None else list(tool_mask)
            for i, correction in corrections.items():
                tool_mask[i] = gec.loss_mask(correction, args.gec_mask_injected, args.gec_mask_wrong_prefix)

        self._log_gec(rewards, correct, corrections, local)
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images

    def _generate_reflections(self, prompts: list[list[int]]) -> tuple[list[list[int]], list | None]:
        """All reflection continuations of this process in one batched call of TRL's generation backend."""
        total = int(self.accelerator.gather(torch.tensor([len(prompts)], device=self.accelerator.device)).sum())
        if total == 0:
            return [], None
        # Every process joins the call (vLLM server mode and ZeRO-3 generation are collective): a process with
        # nothing to reflect generates one throw-away continuation.
        batch = prompts if prompts else [[self._tokenizer.pad_token_id, *self._gec_cue_ids]]
        # With gec_cue_in_budget the cue counts against the budget, so a reflected response never exceeds the
        # corrected-length limit; otherwise (the official code) the budget is all new tokens after the cue.
        budget = self.args.gec_max_new_tokens - (len(self._gec_cue_ids) if self.args.gec_cue_in_budget else 0)
        with self._max_new_tokens(budget):
            continuations, logprobs = self._generate_single_turn(batch, None, {}, 1)
        if not prompts:
            return [], None
        return [list(c) for c in continuations], logprobs

    @contextlib.contextmanager
    def _max_new_tokens(self, value: int) -> Iterator[None]:
        # TRL 1.16 reads the length limit from generation_config + generation_kwargs (transformers) or from
        # vllm_generation.max_completion_length (vLLM): set all of them for the duration of the call.
        saved: list[tuple[Any, str, Any]] = []
        targets = [(getattr(self, "generation_config", None), "max_new_tokens")]
        targets.append((getattr(self, "vllm_generation", None), "max_completion_length"))
        for obj, attr in targets:
            if obj is not None and hasattr(obj, attr):
                saved.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, value)
        kwargs = getattr(self, "generation_kwargs", None)
        saved_kwarg = kwargs.get("max_new_tokens") if isinstance(kwargs, dict) else None
        if isinstance(kwargs, dict):
            kwargs["max_new_tokens"] = value
        try:
            yield
        finally:
            for obj, attr, old in saved:
                setattr(obj, attr, old)
            if isinstance(kwargs, dict):
                kwargs["max_new_tokens"] = saved_kwarg

    def _log_gec(
        self, rewards: torch.Tensor, correct: torch.Tensor, corrections: dict[int, gec.Correction], local: int
    ) -> None:
        branches = [c.branch for c in corrections.values()]
        reflect_tokens = sum(c.generated_tokens for c in corrections.values() if c.branch == "reflect")
        counts = torch.tensor(
            [
                len(corrections),
                branches.count("reflect"),
                branches.count("answer"),
                branches.count("solution"),
                sum(c.truncated for c in corrections.values()),
                reflect_tokens,
                local,
            ],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        corrected, reflect, answer, solution, truncated, tokens, total = self.accelerator.reduce(
            counts, reduction="sum"
        ).tolist()
        metrics = self._metrics["train"]
        metrics["gec/corrected_share"].append(corrected / max(total, 1.0))
        metrics["gec/reflect_count"].append(reflect)
        metrics["gec/answer_count"].append(answer)
        metrics["gec/solution_count"].append(solution)
        metrics["gec/truncated_count"].append(truncated)
        metrics["gec/reflection_new_tokens_mean"].append(tokens / max(reflect, 1.0))
        metrics["gec/accuracy_before"].append(correct.float().mean().item())
        metrics["gec/collapsed_group_share_before"].append(
            collapsed_group_share(self._weighted_reward(rewards), self.num_generations)
        )

    def _log_trained_lengths(self, before: tuple, after: tuple) -> None:
        """Re-log TRL's length metrics and ``num_tokens`` for the corrected completions, the ones trained on.

        TRL 1.16 ``GRPOTrainer._generate`` (grpo_trainer.py ~2274-2310) logs them before GEC corrects anything; this
        recomputes them the same way (tool_mask-aware lengths, "clipped" = no final EOS or pad) and replaces the values
        it appended for this rollout. The uncorrected mean is kept as ``gec/mean_length_before``.
        """
        device = self.accelerator.device

        def lengths(completion_ids: list, tool_mask: list | None) -> torch.Tensor:
            sizes = [sum(m) for m in tool_mask] if tool_mask is not None else [len(ids) for ids in completion_ids]
            return self.accelerator.gather(torch.tensor(sizes, device=device))

        before_lengths, after_lengths = lengths(before[1], before[2]), lengths(after[1], after[2])
        eos_and_pad = [*self.eos_token_ids, self._tokenizer.pad_token_id]
        truncated = torch.tensor([not ids or ids[-1] not in eos_and_pad for ids in after[1]], device=device)
        truncated = self.accelerator.gather(truncated)
        terminated = after_lengths[~truncated].float()
        if terminated.numel() == 0:  # as TRL: 0 when no completion terminated
            terminated = torch.zeros(1, device=device)
        self.state.num_input_tokens_seen += (after_lengths.sum() - before_lengths.sum()).item()
        metrics = self._metrics["train"]
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
        replaced = {
            "completions/mean_length": after_lengths.float().mean().item(),
            "completions/min_length": after_lengths.float().min().item(),
            "completions/max_length": after_lengths.float().max().item(),
            "completions/clipped_ratio": truncated.float().mean().item(),
            "completions/mean_terminated_length": terminated.mean().item(),
            "completions/min_terminated_length": terminated.min().item(),
            "completions/max_terminated_length": terminated.max().item(),
        }
        for key, value in replaced.items():
            metrics[key][-1] = value  # TRL appended this rollout's (uncorrected) value last
        metrics["gec/mean_length_before"].append(before_lengths.float().mean().item())

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: exact resume (what is saved and why: edge_trl.checkpoints)
    # ----------------------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:
            return sampler
        # TRL's sampler with TRL's arguments, whose order in epoch e no longer depends on the epochs this process ran.
        # Dynamic sampling reads further prompts in its order (ResumableRepeatSampler.chunk).
        self._train_sampler = ResumableRepeatSampler(
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )
        return self._train_sampler

    def _resume_counters(self) -> dict[str, int]:
        """The counters a resumed run must continue from: TRL's micro-step (rollout timing and slice, Clip-Cov's
        generator) and GEC's rollout count (its branch-draw generator)."""
        return {
            "trl_step": self._step,
            "gec_rollouts": getattr(self, "_gec_calls", 0),
            "ds_batches_drawn": getattr(self, "_ds_batches_drawn", 0),
        }

    def _rollout_in_progress(self) -> bool:
        return rollout_in_progress(self._step, self.args.steps_per_generation, self.num_iterations)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Written before TRL 1.16 / transformers 5.24 Trainer._save_checkpoint writes its files, into the folder it
        # names the same way: trainer_state.json stays a checkpoint's last file, and a Hub push of it includes ours.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        save_resume_state(
            folder,
            self._resume_counters(),
            self._buffered_inputs if self._rollout_in_progress() else None,
            process_index=self.accelerator.process_index,
            is_main_process=self.args.should_save,
        )
        super()._save_checkpoint(model, trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # transformers 5.24 drops the errors of these background uploads: warn when one fails (edge_trl.faults).
        super()._push_from_checkpoint(checkpoint_folder)
        if self.is_world_process_zero() and self.push_in_progress is not None:
            for upload in self.push_in_progress.jobs:
                warn_if_upload_fails(upload, self.state.global_step)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # The hook TRL 1.16 itself uses to restore extra state on resume (its entropy controller's).
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        counters, buffered = load_resume_state(checkpoint, self.accelerator.process_index, self.accelerator.device)
        if counters is None:
            logger.warning(
                "%s has no edge-trl state (a checkpoint written by another trainer or an older edge-trl): TRL's step, "
                "GEC's draws and Clip-Cov's generator restart at 0, so the run will not continue exactly.",
                checkpoint,
            )
            return
        self._step = counters["trl_step"]
        if hasattr(self, "_gec_calls"):
            self._gec_calls = counters["gec_rollouts"]
        if hasattr(self, "_ds_batches_drawn"):
            if "ds_batches_drawn" not in counters:
                logger.warning(
                    "%s has no dynamic-sampling position (written without dynamic_sampling): prompts are drawn from "
                    "the start of the sampler's order again.",
                    checkpoint,
                )
            self._ds_batches_drawn = counters.get("ds_batches_drawn", 0)
        self._buffered_inputs = buffered
        if self._rollout_in_progress() and buffered is None:
            logger.warning(
                "%s was saved inside a rollout but has no rollout buffer for process %d (resumed with more processes?):"
                " a new rollout is generated, so the run will not continue exactly.",
                checkpoint,
                self.accelerator.process_index,
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Model card
    # ----------------------------------------------------------------------------------------------------------------

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """The run's model card (``<output_dir>/README.md``, pushed with the model): a math problem in the trained
        prompt format, an adapter loaded on its base model and merged, the method with its settings, the dataset,
        the final metrics and the method's papers, with public names only (`edge_trl.model_card`). TRL writes its
        card first; its tracker badges, framework versions and citations are kept."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        from edge_trl.model_card import CardRun, render_model_card
        from edge_trl.presets import describe_method

        info = self.edge_run_info
        args = self.args
        settings = {
            "eda": args.eda, "eda_scope": args.eda_scope, "eda_max_scale": args.eda_max_scale,
            "gec": args.gec, "force_reflection": args.force_reflection, "cov_mode": args.cov_mode,
            "loss_type": args.loss_type, "num_generations": args.num_generations,
            "num_iterations": args.num_iterations, "learning_rate": args.learning_rate, "beta": args.beta,
        }  # fmt: skip
        if args.gec_correction_active:
            settings.update(
                gec_reflect_prob=args.gec_reflect_prob, gec_answer_prob=args.gec_answer_prob,
                gec_solution_prob=args.gec_solution_prob, gec_max_new_tokens=args.gec_max_new_tokens,
                gec_cue_in_budget=args.gec_cue_in_budget,
            )  # fmt: skip
        if args.cov_mode == "clip_cov":
            settings.update(
                clip_cov_ratio=args.clip_cov_ratio, clip_cov_lb=args.clip_cov_lb, clip_cov_ub=args.clip_cov_ub
            )
        elif args.cov_mode == "kl_cov":
            settings.update(kl_cov_ratio=args.kl_cov_ratio, kl_cov_coef=args.kl_cov_coef, kl_cov_clip=args.kl_cov_clip)
        if args.cov_mode != "none":
            settings.update(cov_scope=args.cov_scope)
        if args.dynamic_sampling:
            settings.update(
                dynamic_sampling=True,
                dynamic_sampling_metric=args.dynamic_sampling_metric,
                max_num_gen_batches=args.max_num_gen_batches,
            )
        final: dict[str, float] = {}
        for entry in self.state.log_history:
            for key, value in entry.items():
                if isinstance(value, (int, float)) and (
                    key in ("reward", "train_loss", "entropy")
                    or key.startswith(("rewards/", "edge/", "gec/", "dynamic_sampling/"))
                ):
                    final[key] = value
        dataset = self.train_dataset
        columns = getattr(dataset, "column_names", None) or []
        prompt = next(iter(dataset))["prompt"] if "prompt" in columns else None  # also for an IterableDataset
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        stop_ids = [
            *self.end_of_turn_token_ids,
            *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []),
        ]
        papers = [
            *(["edge-grpo"] if args.eda or args.gec_correction_active else []),
            *(["entropy-mechanism"] if args.cov_mode != "none" else []),
        ]
        run = CardRun(
            base_model=info.get("model") or self.model.config._name_or_path,
            model_id=self.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
            dataset=dataset_name or info.get("dataset"),
            method=describe_method(args),
            method_flag=info.get("method"),
            adapter=hasattr(self.model, "peft_config"),
            steps=self.state.global_step,
            settings=settings,
            metrics=final,
            prompt=prompt,
            stop_tokens=list(dict.fromkeys(tokenizer.convert_ids_to_tokens(stop_ids))),
            max_new_tokens=args.max_completion_length,
            papers=papers,
            tags=[t for t in ("eda" if args.eda else "", "gec" if args.gec_correction_active else "",
                              args.cov_mode.replace("_", "-") if args.cov_mode != "none" else "") if t],
        )  # fmt: skip
        path = os.path.join(args.output_dir, "README.md")
        with open(path, encoding="utf-8") as card:
            trl_card = card.read()
        with open(path, "w", encoding="utf-8") as card:
            card.write(render_model_card(run, trl_card))

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
        scaled = scale_per_response(all_advantages, all_scale)
        metrics = self._metrics[mode]
        metrics["edge/adv_var_before_eda"].append(all_advantages.float().var(unbiased=False).item())
        metrics["edge/adv_var_after_eda"].append(scaled.float().var(unbiased=False).item())
        metrics["edge/eda_scale_min"].append(all_scale.min().item())
        metrics["edge/eda_scale_mean"].append(all_scale.float().mean().item())
        metrics["edge/eda_scale_max"].append(all_scale.max().item())

    def _mode(self) -> str:
        """TRL's metric split: "train" while the model trains, else "eval"."""
        return "train" if self.model.training else "eval"

    def _seeded_generator(self, counter: int) -> torch.Generator:
        """A CPU generator reproducible from the seed, the process and ``counter`` (GEC's draws, Clip-Cov's draw)."""
        seed = (self.args.seed * 1_000_003 + self.accelerator.process_index * 10_007 + counter) % (2**63)
        return torch.Generator().manual_seed(seed)
