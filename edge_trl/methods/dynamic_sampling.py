"""DAPO's dynamic sampling (Yu et al., arXiv 2503.14476, section 3.2; verl's ``algorithm.filter_groups``).

With ``dynamic_sampling``, a training rollout scores generation batches drawn from the next prompts of the training
sampler's order until the groups whose metric differs fill one generation batch (the decision on gathered rewards,
the same on every process); each batch goes through the trainer's ``_score_generation_batch`` (so GEC and group EDA
act on it). What and why: docs/methods/dynamic-sampling.md. The filter: `edge_trl.core_algos.dynamic_sampling_filter`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_trl.methods import Method, register_method

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Rollout keys padded on the left (TRL left-pads prompts); every other 2-D key is a completion-side (B, T) tensor.
_PROMPT_KEYS = ("prompt_ids", "prompt_mask")


@dataclass
class DynamicSamplingFields:
    _config_owner = "EdgeGRPOConfig"

    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling (section 3.2; verl's algorithm.filter_groups): drop every group whose "
            "dynamic_sampling_metric is the same for all its responses, and generate from the next prompts until the "
            "kept groups fill the generation batch (the surplus is cut). With GEC, wrong responses are corrected "
            "first and only the groups still equal are dropped."
        },
    )
    dynamic_sampling_metric: str = field(
        default="accuracy_reward",
        metadata={
            "help": "Dynamic sampling: the name of the reward function whose values must differ within a group "
            "(default 'accuracy_reward', the authors' filter_groups_metric=acc), or 'reward' for the weighted sum "
            "of all rewards."
        },
    )
    max_num_gen_batches: int = field(
        default=10,
        metadata={
            "help": "Dynamic sampling: at most this many generation batches per rollout (verl's default 10); when "
            "they still do not fill the batch, training stops with an error. 0: unlimited."
        },
    )


@register_method
class DynamicSampling(Method):
    name = "dynamic_sampling"
    fields = DynamicSamplingFields
    builtin = True

    def active(self, args: Any) -> bool:
        return bool(args.dynamic_sampling)

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {
            "dynamic_sampling": True,
            "dynamic_sampling_metric": args.dynamic_sampling_metric,
            "max_num_gen_batches": args.max_num_gen_batches,
        }

    def setup(self, trainer: Any, train_dataset: Any) -> None:
        args = trainer.args
        names = [*trainer.reward_func_names, "reward"]
        if args.dynamic_sampling_metric not in names:
            raise ValueError(
                f"dynamic_sampling_metric={args.dynamic_sampling_metric!r} is not one of the reward functions "
                f"{trainer.reward_func_names}: name one of them, or 'reward' for the weighted sum of all rewards."
            )
        if train_dataset is not None and not hasattr(train_dataset, "__getitem__"):
            raise ValueError(
                "dynamic_sampling draws further prompts in the training sampler's order, which needs a map-style "
                "dataset (an IterableDataset has no sampler): pass a datasets.Dataset, or set dynamic_sampling=False."
            )
        # Generation batches drawn so far (the run's prompt position in the sampler's order, saved with checkpoints).
        trainer._ds_batches_drawn = 0

    def validate(self, config: Any) -> None:
        if config.max_num_gen_batches < 0:
            raise ValueError(
                f"max_num_gen_batches={config.max_num_gen_batches} must be >= 0 (0 = unlimited; verl's default is 10)."
            )
        if config.dynamic_sampling and not str(config.dynamic_sampling_metric or "").strip():
            raise ValueError(
                "dynamic_sampling_metric is empty: name a reward function (e.g. 'accuracy_reward') or 'reward' for the "
                "weighted sum of all rewards."
            )

    def rollout(self, trainer: Any) -> dict[str, Any] | None:
        return dynamic_sampling_rollout(trainer) if trainer.model.training else None

    def resume_counters(self, trainer: Any) -> dict[str, int]:
        return {"ds_batches_drawn": trainer._ds_batches_drawn}

    def load_counters(self, trainer: Any, counters: dict[str, int], checkpoint: str) -> None:
        if "ds_batches_drawn" not in counters:
            logger.warning(
                "%s has no dynamic-sampling position (written without dynamic_sampling): prompts are drawn from "
                "the start of the sampler's order again.",
                checkpoint,
            )
        trainer._ds_batches_drawn = counters.get("ds_batches_drawn", 0)


def _ds_rows(trainer: Any, batch_number: int) -> list[dict[str, Any]]:
    """This process's rows of generation batch ``batch_number`` of the training sampler's order, as TRL's data
    loader gives them: the batch's prompts each repeated num_generations times, process p taking the p-th slice
    (accelerate's ``BatchSamplerShard``)."""
    sampler = getattr(trainer, "_train_sampler", None)
    if sampler is None:
        raise RuntimeError("dynamic_sampling needs the training sampler: it is built by get_train_dataloader().")
    indices = [i for i in sampler.chunk(batch_number) for _ in range(trainer.num_generations)]
    local = len(indices) // trainer.accelerator.num_processes
    start = trainer.accelerator.process_index * local
    return [sampler.data_source[i] for i in indices[start : start + local]]


def _ds_metric(trainer: Any, rewards_per_func: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The metric a group's responses must differ in, and the value from which a response counts as correct."""
    name = trainer.args.dynamic_sampling_metric
    return trainer._score(rewards_per_func, None if name == "reward" else name)


def dynamic_sampling_rollout(trainer: Any) -> dict[str, Any]:
    """DAPO's dynamic sampling (verl ``recipe/dapo/dapo_ray_trainer.py``, ``algorithm.filter_groups``).

    Generates and scores generation batches from the next prompts of the sampler's order, keeps the groups whose
    metric is not constant (`core_algos.dynamic_sampling_filter`; after GEC's correction, since scoring
    includes it), until the kept groups fill one generation batch; the surplus is cut. Every process sees the
    gathered rewards, so all decide the same and generate the same number of batches. Returns this process's
    slice of the kept batch, in TRL's layout.
    """
    import torch

    from edge_trl.core_algos import collapsed_group_share, dynamic_sampling_filter
    from edge_trl.methods.eda import GROUP_IDS_KEY

    args, group_size = trainer.args, trainer.num_generations
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
        rows = _ds_rows(trainer, trainer._ds_batches_drawn)
        trainer._ds_batches_drawn += 1
        batches += 1
        output = trainer._score_generation_batch(rows)
        metric, threshold = _ds_metric(trainer, trainer._last_rewards)
        keep, correct = dynamic_sampling_filter(metric, group_size, threshold)
        generated_groups += keep.numel()
        kept_groups += int(keep.sum())
        all_correct += int(correct.sum())
        all_wrong += int((~keep & ~correct).sum())
        rows_kept = keep.repeat_interleave(group_size).to(trainer.accelerator.device)
        whole = _gather_rollout(trainer, output)
        kept_parts.append({key: value[rows_kept] for key, value in whole.items()})
        kept_rewards.append(trainer._weighted_reward(trainer._last_rewards)[rows_kept.to(trainer._last_rewards.device)])

    batch = _merge_rollouts(trainer, kept_parts, target_rows)
    trained_rewards = torch.cat(kept_rewards)[:target_rows]
    loss_mask = trainer._loss_mask(batch)
    local = target_rows // trainer.accelerator.num_processes
    start = trainer.accelerator.process_index * local
    output = _trim_padding(trainer, {key: value[start : start + local] for key, value in batch.items()})
    output["num_items_in_batch"] = loss_mask.sum()  # TRL's: active tokens of the whole (all-process) batch
    if GROUP_IDS_KEY in output:  # deferred group EDA: group ids of the kept batch
        output[GROUP_IDS_KEY] = torch.arange(start, start + local, device=loss_mask.device) // group_size

    metrics = trainer._metrics["train"]
    metrics["dynamic_sampling/gen_batches"].append(float(batches))
    metrics["dynamic_sampling/kept_group_share"].append(kept_groups / max(generated_groups, 1))
    metrics["dynamic_sampling/dropped_all_correct"].append(float(all_correct))
    metrics["dynamic_sampling/dropped_all_wrong"].append(float(all_wrong))
    metrics["dynamic_sampling/frac_reward_zero_std"].append(collapsed_group_share(trained_rewards, group_size))
    metrics["dynamic_sampling/rollout_s"].append(time.perf_counter() - start_time)
    return output


def _pad_value(trainer: Any, key: str) -> int | float:
    if key in ("prompt_ids", "completion_ids"):
        return trainer._tokenizer.pad_token_id
    return 1 if key == "tool_mask" else 0  # TRL pads tool_mask with 1; masks, log-probs, ratios with 0


def _gather_rollout(trainer: Any, output: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every process's rows of a scored generation batch, in global order (each process holds them all)."""
    import torch

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
            value = trainer.accelerator.pad_across_processes(
                value, dim=1, pad_index=_pad_value(trainer, key), pad_first=key in _PROMPT_KEYS
            )
        whole[key] = trainer.accelerator.gather(value)
    return whole


def _merge_rollouts(trainer: Any, parts: list[dict[str, torch.Tensor]], rows: int) -> dict[str, torch.Tensor]:
    """Concatenate kept rows of several generation batches (widths padded as TRL pads) and cut at ``rows``."""
    import torch
    import torch.nn.functional as F

    merged = {}
    for key in parts[0]:
        tensors = [part[key] for part in parts]
        if tensors[0].dim() >= 2:
            width = max(t.size(1) for t in tensors)
            left = key in _PROMPT_KEYS
            tensors = [
                F.pad(t, (width - t.size(1), 0) if left else (0, width - t.size(1)), value=_pad_value(trainer, key))
                for t in tensors
            ]
        merged[key] = torch.cat(tensors)[:rows]
    return merged


def _trim_padding(trainer: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padding columns no row of this process needs, so its tensors are as wide as TRL pads them."""
    if trainer.pad_to_multiple_of is not None:
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
