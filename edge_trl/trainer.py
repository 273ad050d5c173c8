"""EdgeGRPOTrainer: TRL's GRPOTrainer with the registered methods (EDA, GEC, Clip-Cov, KL-Cov, ...) at its seams.

The trainer is glue and dispatch: each method lives in its own module of `edge_trl.methods` (its fields, preset,
card entry and hooks; the formulas in `edge_trl.core_algos`). The trainer calls the hooks of the methods a config
turns on, in registration order, at these seams of TRL, and re-implements no TRL method body:

* construction (after TRL's): with conversational prompts, the chat template's end-of-turn token joins TRL's stop
  tokens (``eos_token_ids``, the transformers ``generation_config``, vLLM's ``stop_token_ids``); then each method's
  ``setup``;
* ``_generate_and_score_completions``: a method may produce the whole rollout (``rollout``: dynamic sampling), else
  ``_score_generation_batch`` (TRL's, between ``start_rollout`` and ``after_scoring``); then ``after_rollout``;
* ``_generate`` (after TRL's rollout): ``after_generate`` (GEC's correction); ``_calculate_rewards`` (after TRL) keeps
  the rewards TRL trains on;
* ``_get_per_token_logps_and_entropies``: TRL's no-grad old-log-prob forward returns entropies when a method asks
  (``capture_entropies``); inside TRL's loss, right after the training forward, each acting method's ``in_loss``
  (TRL reads the advantages after this call; a method may return other log-probs, add a ``penalty`` reduced like
  TRL's loss, or have TRL compute the unclipped surrogate);
* ``_prepare_inputs`` (after TRL's): ``prepare_inputs`` (``cov_scope='step'``'s selection);
* ``_save_checkpoint`` / ``_load_optimizer_and_scheduler`` / ``_get_train_sampler``: exact resume. The state TRL
  and edge-trl keep outside a transformers checkpoint (TRL's ``_step`` and a rollout buffer spanning the checkpoint,
  the methods' counters) is saved with each checkpoint and restored; the training sampler is TRL's, made resumable
  across epochs. See `edge_trl.checkpoints`.

What passes between the hooks lives in two small objects, each alive for one call only: ``_RolloutState`` (one
generation batch) and ``_LossState`` (one ``_compute_loss`` call). The only state that must travel with TRL's data is
in keys of TRL's batch that survive its shuffle into micro-batches (a method's, e.g. ``edge_group_ids``).

Reward functions get their ``reward_kwargs`` bound and are wrapped by `edge_trl.faults.guard_reward_funcs`
before TRL sees them: one completion a reward fails on (raises, hangs, NaN/inf) scores None instead of stopping the
run. ``reward_specs`` holds each reward's registry entry (its maximum, whether it decides correctness).

All hooks follow TRL 1.16 (the range pinned in pyproject.toml; ``tests/test_compat.py`` fails on another version).
With every method off, the trainer runs TRL's code paths unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler

from edge_trl import vllm_support
from edge_trl._compat import check_trl_version
from edge_trl.checkpoints import (
    ResumableRepeatSampler,
    load_resume_state,
    rollout_in_progress,
    save_resume_state,
)
from edge_trl.config import EdgeGRPOConfig
from edge_trl.core_algos import aggregate_token_loss, collapsed_group_share
from edge_trl.end_of_turn import end_of_turn_token_ids
from edge_trl.faults import guard_reward_funcs, warn_if_upload_fails
from edge_trl.methods import active_methods, describe
from edge_trl.methods.covariance import RESPONSE_IDS_KEY  # noqa: F401  (where it always was)
from edge_trl.methods.eda import GROUP_IDS_KEY  # noqa: F401  (where it always was)
from edge_trl.methods.gec import correct_wrong_responses, generate_reflections
from edge_trl.rewards import bind_reward_kwargs, reward_spec

logger = logging.getLogger(__name__)


@dataclass
class _RolloutState:
    """What the hooks of one generation batch share; created before TRL generates it, dropped once it is scored.

    * ``rows``: the dataset rows of the batch; ``training``: whether the model trains (GEC corrects only then);
    * ``capture_entropies``: a method wants the entropies of TRL's no-grad old-log-prob forward of this rollout;
      ``captured_logps`` / ``captured_entropies`` are what that forward returned;
    * ``rewards_per_func``: the last rewards TRL computed (after GEC: those of the corrected responses);
    * ``reflected_rows``: the rows (indices into the gathered rewards) GEC corrected by reflection on this process.
    """

    rows: list[dict[str, Any]]
    training: bool
    capture_entropies: bool = False
    captured_logps: torch.Tensor | None = None
    captured_entropies: torch.Tensor | None = None
    rewards_per_func: torch.Tensor | None = None
    reflected_rows: list[int] = field(default_factory=list)


@dataclass
class _LossState:
    """What the hooks of one ``_compute_loss`` call share; created at its start, dropped at its end.

    * ``inputs``: a shallow copy of the micro-batch TRL's loss reads (the hooks may replace its advantages);
    * ``penalty``: a method's extra loss term, already reduced like TRL's loss (None: nothing to add);
    * ``saved_epsilons``: PPO's clip range, saved while a method has TRL compute the unclipped surrogate;
    * ``selected``: the tokens a covariance mode acted on in this micro-batch.
    """

    inputs: dict[str, Any]
    penalty: torch.Tensor | None = None
    saved_epsilons: tuple[float, float] | None = None
    selected: torch.Tensor | None = None


class EdgeGRPOTrainer(GRPOTrainer):
    """GRPO with EDGE-GRPO's Entropy-Driven Advantage and Guided Error Correction, and Cui et al.'s Clip-Cov / KL-Cov.

    Takes the arguments of TRL's [`GRPOTrainer`](https://huggingface.co/docs/trl/en/grpo_trainer#trl.GRPOTrainer);
    ``args`` must be an [`EdgeGRPOConfig`][edge_trl.EdgeGRPOConfig]. ``edge_run_info`` (also a
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
    With ``entropy_law=True``, the fitted entropy-performance law under ``entropy_law/`` (`edge_trl.entropy_law`).

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
        self.reward_specs: list[Any] = []
        if reward_funcs is not None:
            funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
            reward_funcs = bind_reward_kwargs(funcs, args.reward_kwargs)  # once, the same from Python and the CLI
            # The registry entry of each reward (its maximum, whether it tells a correct answer), or None.
            self.reward_specs = [reward_spec(func) for func in reward_funcs]
        # A reward that raises, hangs or returns NaN/inf on one completion costs that completion, not the run.
        reward_funcs = guard_reward_funcs(reward_funcs, args.reward_timeout)
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._stop_at_end_of_turn()
        if self.use_vllm:  # the weight sync of vLLM's CPU backend (a no-op elsewhere)
            vllm_support.adapt_vllm_generation(self)
        for method in self._methods:
            method.setup(self, kwargs.get("train_dataset"))

    @property
    def _methods(self) -> list[Any]:
        """The registered methods the config turns on, in registration (hook) order; read live from ``args``."""
        return active_methods(self.args)

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
    # Rollout: the registered methods' rollout hooks, collapse metrics
    # ----------------------------------------------------------------------------------------------------------------

    def _trl_computes_old_logps(self) -> bool:
        # Mirrors the condition in GRPOTrainer._generate_and_score_completions (TRL 1.16).
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = None
        for method in self._methods:  # a method may produce the whole rollout (dynamic sampling)
            output = method.rollout(self)
            if output is not None:
                break
        if output is None:
            output = self._score_generation_batch(inputs)
        for method in self._methods:
            method.after_rollout(self, output)
        return output

    def _score_generation_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout of one generation batch, with the methods' hooks (``_last_rewards``: its rewards)."""
        rollout = _RolloutState(rows=inputs, training=self.model.training)
        for method in self._methods:
            method.start_rollout(self, rollout)
        self._rollout = rollout
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout = None
        self._last_rewards = rollout.rewards_per_func

        mode = self._mode()
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        all_advantages = self.accelerator.gather(output["advantages"])
        metrics = self._metrics[mode]
        metrics["edge/collapsed_group_share"].append(collapsed_group_share(all_advantages, group_size))
        metrics["edge/adv_var"].append(all_advantages.float().var(unbiased=False).item())  # before any method's scaling
        for method in self._methods:
            output = method.after_scoring(self, rollout, output)
        return output

    def _generate(self, prompts: list):
        result = super()._generate(prompts)
        if self._rollout is None:
            return result
        for method in self._methods:
            result = method.after_generate(self, self._rollout, prompts, result)
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._rollout is not None:
            self._rollout.rewards_per_func = rewards
        return rewards

    def _weighted_reward(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        weights = self.reward_weights.to(rewards_per_func.device)
        return (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)

    def _score(self, rewards_per_func: torch.Tensor, reward_name: str | None) -> tuple[torch.Tensor, float]:
        """One reward function's scores (correct from 1.0), or with no name the weighted sum of all of them (correct
        from the sum of the weights)."""
        if reward_name is None:
            return self._weighted_reward(rewards_per_func), float(self.reward_weights.sum())
        return rewards_per_func[:, self.reward_func_names.index(reward_name)], 1.0

    # GEC's two seams, kept on the trainer so that a subclass can wrap them (edge_trl.methods.gec does the work).
    def _correct_wrong_responses(self, rows: list[dict[str, Any]], prompts: list, result: tuple) -> tuple:
        return correct_wrong_responses(self, rows, prompts, result)

    def _generate_reflections(self, prompts: list[list[int]]) -> tuple[list[list[int]], list | None]:
        return generate_reflections(self, prompts)

    # ----------------------------------------------------------------------------------------------------------------
    # Loss: the registered methods' loss hooks (EDA from the training forward, the covariance modes)
    # ----------------------------------------------------------------------------------------------------------------

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if not any(method.loss_active(self, inputs) for method in self._methods):
            return super()._compute_loss(model, inputs)
        # Shallow copy: TRL reuses the buffered batch across iterations, and a method may replace its advantages.
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
        """Right after the training forward: each method acting on this micro-batch, in registration order."""
        for method in self._methods:
            if method.loss_active(self, inputs):
                logps = method.in_loss(self, self._loss, logps, entropies)
        return logps

    def loss_needs_entropies(self, inputs: dict[str, Any]) -> bool:
        """Whether a method's ``loss_advantages`` needs the training forward's entropies for this micro-batch."""
        return any(method.needs_loss_entropies(self, inputs) for method in self._methods)

    def loss_advantages(self, inputs: dict[str, Any], entropies: torch.Tensor | None, mask: torch.Tensor):
        """The micro-batch's advantages as the loss will see them (after the methods that rescale them there)."""
        advantages = inputs["advantages"]
        for method in self._methods:
            changed = method.loss_advantages(self, inputs, entropies, mask)
            if changed is not None:
                advantages = changed
        return advantages

    @torch.no_grad()
    def no_grad_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        compute_entropy: bool,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """TRL's own log-prob (and entropy) forward, without gradient nor the loss hooks (a method's extra forward)."""
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, entropies, _ = super()._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, logits_to_keep, compute_entropy=compute_entropy, **kwargs
            )
        return logps, entropies

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        inputs = super()._prepare_inputs(generation_batch)
        for method in self._methods:
            method.prepare_inputs(self)
        return inputs

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
        generator) and the methods' (GEC's rollout count, dynamic sampling's prompt position)."""
        counters = {"trl_step": self._step}
        for method in self._methods:
            counters.update(method.resume_counters(self))
        return counters

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
        for method in self._methods:
            method.load_counters(self, counters, checkpoint)
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

        info = self.edge_run_info
        args = self.args
        settings = {
            "loss_type": args.loss_type, "num_generations": args.num_generations,
            "num_iterations": args.num_iterations, "learning_rate": args.learning_rate, "beta": args.beta,
        }  # fmt: skip
        papers: list = []
        tags: list[str] = []
        for method in self._methods:  # each method's settings, papers and tags
            settings.update(method.card_settings(args))
            papers += [paper for paper in method.papers if paper not in papers]
            tags += [tag for tag in method.tags(args) if tag not in tags]
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
        run = CardRun(
            base_model=info.get("model") or self.model.config._name_or_path,
            model_id=self.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
            dataset=dataset_name or info.get("dataset"),
            method=describe(args),
            method_flag=info.get("method"),
            adapter=hasattr(self.model, "peft_config"),
            steps=self.state.global_step,
            settings=settings,
            metrics=final,
            prompt=prompt,
            stop_tokens=list(dict.fromkeys(tokenizer.convert_ids_to_tokens(stop_ids))),
            max_new_tokens=args.max_completion_length,
            papers=papers,
            tags=tags,
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

    def _mode(self) -> str:
        """TRL's metric split: "train" while the model trains, else "eval"."""
        return "train" if self.model.training else "eval"

    def _seeded_generator(self, counter: int) -> torch.Generator:
        """A CPU generator reproducible from the seed, the process and ``counter`` (GEC's draws, Clip-Cov's draw)."""
        seed = (self.args.seed * 1_000_003 + self.accelerator.process_index * 10_007 + counter) % (2**63)
        return torch.Generator().manual_seed(seed)
