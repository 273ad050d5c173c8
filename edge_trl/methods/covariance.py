"""Covariance-based entropy control (Cui et al., arXiv 2505.22617): the ``cov_mode`` dispatch and ``cov_scope``.

A covariance mode changes the per-token policy loss of each micro-batch. It is a [`CovMode`][edge_trl.methods.covariance.CovMode] (its own fields,
preset, card entry and ``terms``), registered with ``register_method``, or a plain function registered with
[`register_cov_mode`][edge_trl.methods.covariance.register_cov_mode]. It receives a [`CovContext`][edge_trl.methods.covariance.CovContext]: the log-probs (with gradient), old log-probs,
advantages, mask, token entropies and its own parameters; it returns a [`CovTerms`][edge_trl.methods.covariance.CovTerms]. Clip-Cov and KL-Cov
(``clip_cov.py``, ``kl_cov.py``) are two such modes; the formulas live in `edge_trl.core_algos`.

``cov_scope='step'`` (docs/methods/cov-scope.md): at the first micro-step of an optimizer step, one no-grad forward
over the step's micro-batches chooses the tokens of the whole step over every process
(`edge_trl.core_algos.step_cov_selection`), for the modes that declare ``step_selection``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_trl.methods import METHODS, Method, method_params, register_method

COV_SCOPES = ("micro_batch", "step")
# Loss types whose per-token loss is -min(r A, clip(r) A) reduced linearly: the ones a covariance mode modifies.
COV_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# Key of TRL's batch with each response's position in its rollout (covariance modes: a token's name is its response's
# position and its own; cov_scope='step' selects by it).
RESPONSE_IDS_KEY = "edge_response_ids"


@dataclass
class CovContext:
    """What a covariance mode receives for one micro-batch (``B`` responses, ``T`` completion tokens).

    * ``logps`` (B, T): the training forward's log-probs, with gradient; ``old_logps``: the rollout policy's (equal to
      ``logps.detach()`` on-policy); ``advantages``: (B,) or (B, T); ``mask``: the loss mask; ``entropies``: the
      training forward's token entropies (no gradient);
    * ``params``: an instance of the mode's ``fields`` dataclass with this run's values (None without fields);
    * ``epsilon_low`` / ``epsilon_high``: PPO's clip range; ``generator``: seeds any random draw, reproducibly;
    * ``selected``: tokens already chosen for this micro-batch (``cov_scope='step'``), else None.
    """

    logps: Any
    old_logps: Any
    advantages: Any
    mask: Any
    entropies: Any = None
    params: Any = None
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    generator: Any = None
    selected: Any = None


@dataclass
class CovTerms:
    """What a covariance mode changes in the per-token policy loss l_t of one micro-batch.

    * ``logps``: the log-probs the surrogate is computed from (e.g. with some tokens' gradient stopped);
    * ``penalty``: an optional (B, T) term added to l_t, reduced like the loss (None: nothing added);
    * ``unclipped``: replace PPO's clipped surrogate -min(r A, clip(r) A) by the plain -r A on every token;
    * ``selected``: the (B, T) bool mask of the tokens the mode acted on (logged as a share).
    """

    logps: Any
    selected: Any
    penalty: Any = None
    unclipped: bool = False


CovModeFn = Callable[[CovContext], CovTerms]
COV_MODES: dict[str, CovModeFn] = {}
"""The registered covariance modes, ``cov_mode`` name -> ``fn(ctx: CovContext) -> CovTerms``."""


class CovMode(Method):
    """A covariance mode as a method: ``mode`` is its ``cov_mode`` value; ``terms`` its loss change.

    ``step_ratio_field`` names the field holding its share of tokens when it supports ``cov_scope='step'``;
    ``step_candidates`` then narrows the tokens it may choose from (default: every valid token).
    """

    mode: ClassVar[str] = ""
    paper_label: ClassVar[str] = ""
    step_ratio_field: ClassVar[str | None] = None

    def active(self, args: Any) -> bool:
        return args.cov_mode == self.mode

    def label(self, args: Any) -> str:
        return self.paper_label or self.mode

    def tags(self, args: Any) -> list[str]:
        return [self.mode.replace("_", "-")]

    def on_register(self) -> None:
        COV_MODES[self.mode] = self.terms

    def terms(self, ctx: CovContext) -> CovTerms:
        raise NotImplementedError

    def step_candidates(self, trainer: Any, valid: Any, cov: Any, logps: Any, inputs: dict, advantages: Any) -> Any:
        return valid


def register_cov_mode(name: str, fields: type | None = None) -> Callable[[CovModeFn], CovModeFn]:
    """Register a function ``fn(ctx: CovContext) -> CovTerms`` as the covariance mode ``name`` (as verl's
    ``register_policy_loss``): ``cov_mode=name`` selects it. ``fields``: a dataclass of its parameters, which
    arrive as ``ctx.params`` (from the config, or its ``method_kwargs``)."""

    def decorator(fn: CovModeFn) -> CovModeFn:
        cls = type(
            f"CovMode_{name}",
            (CovMode,),
            {"name": name, "mode": name, "fields": fields, "terms": staticmethod(fn), "__doc__": fn.__doc__},
        )
        register_method(cls)
        return fn

    return decorator


def get_cov_mode(name: str) -> CovModeFn:
    """The registered covariance mode ``name``; raises ValueError naming every registered mode otherwise."""
    if name not in COV_MODES:
        raise ValueError(f"Unknown cov_mode {name!r}: registered modes are {', '.join(sorted(COV_MODES))}.")
    return COV_MODES[name]


def cov_mode_method(name: str) -> CovMode:
    return next(m for m in METHODS.values() if isinstance(m, CovMode) and m.mode == name)


@dataclass
class CovarianceFields:
    _config_owner = "EdgeGRPOConfig"

    cov_mode: str = field(
        default="none",
        metadata={
            "help": "Covariance-based entropy control (Cui et al.). 'none', 'clip_cov' (stop the gradient of a random "
            "share of high-covariance tokens) or 'kl_cov' (the authors' unclipped -r*A loss plus a KL penalty on the "
            "top-k covariance tokens). The hyphenated spellings 'clip-cov' and 'kl-cov' are accepted; a mode "
            "registered with edge_trl.methods.covariance.register_cov_mode (or a --plugin file) by its name.",
            "choices_from": lambda: ["none", *COV_MODES],
        },
    )
    cov_scope: str = field(
        default="micro_batch",
        metadata={
            "help": "Over which tokens Clip-Cov / KL-Cov centre the covariance and count k = max(1, int(ratio * "
            "n_valid)). 'micro_batch' (default, the authors' code): each micro-batch of each process on its own, so the "
            "tokens chosen change with the micro-batch size and the number of processes. 'step': once per optimizer "
            "step over all its micro-batches and processes (one extra no-grad forward per step), so the choice and "
            "the update do not depend on how the step is split (the idea of verl PR #7830).",
            "choices": list(COV_SCOPES),
        },
    )


def _seeded_generator(trainer: Any) -> Any:
    return trainer._seeded_generator(trainer._step)  # reproducible from the seed, the process and the micro-step


@register_method
class Covariance(Method):
    """The dispatch to the registered covariance mode named by ``cov_mode`` (labels and cards: the modes')."""

    name = "covariance"
    fields = CovarianceFields
    builtin = True
    papers = ()

    def active(self, args: Any) -> bool:
        return args.cov_mode != "none"

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {"cov_mode": args.cov_mode, "cov_scope": args.cov_scope}

    def setup(self, trainer: Any, train_dataset: Any) -> None:
        trainer._step_selection = {}  # cov_scope='step': the selected tokens of each micro-step of the current step

    def validate(self, config: Any) -> None:
        if config.cov_mode != "none":
            if config.loss_type not in COV_LOSS_TYPES:
                raise ValueError(
                    f"cov_mode={config.cov_mode!r} cannot modify the per-token loss of loss_type={config.loss_type!r}: "
                    f"use loss_type in {COV_LOSS_TYPES} or set cov_mode='none'."
                )
            if getattr(config, "use_liger_loss", False):
                raise ValueError(
                    f"cov_mode={config.cov_mode!r} needs TRL's per-token loss, which the fused Liger GRPO loss skips: "
                    "set use_liger_loss=False."
                )
        if config.cov_scope not in COV_SCOPES:
            raise ValueError(
                f"cov_scope={config.cov_scope!r} is not supported: use 'micro_batch' (per micro-batch, the authors' code) "
                "or 'step' (once per optimizer step, independent of the micro-batch split)."
            )
        if config.cov_scope == "step" and config.cov_mode not in ("none", *step_scope_modes()):
            raise ValueError(
                f"cov_scope='step' selects tokens for {', '.join(step_scope_modes())} only, not cov_mode="
                f"{config.cov_mode!r}: set cov_scope='micro_batch'."
            )
        if config.cov_scope == "step" and config.cov_mode != "none":
            accumulation = getattr(config, "gradient_accumulation_steps", None) or 1
            steps_per_generation = getattr(config, "steps_per_generation", None) or accumulation  # TRL's default
            generate_every = steps_per_generation * (getattr(config, "num_iterations", None) or 1)
            if generate_every % accumulation != 0:
                raise ValueError(
                    f"cov_scope='step' needs every optimizer step inside one rollout: steps_per_generation * "
                    f"num_iterations = {generate_every} must be a multiple of gradient_accumulation_steps="
                    f"{accumulation}. Set steps_per_generation to a multiple of "
                    "gradient_accumulation_steps (the default, equal), or cov_scope='micro_batch'."
                )

    def after_rollout(self, trainer: Any, output: dict[str, Any]) -> None:
        import torch

        if trainer.args.cov_mode == "none" or not trainer.model.training:
            return
        # Each response's place in the rollout, which TRL's shuffle keeps: names a token whatever micro-batch it
        # lands in (cov_scope='step' selects by it; tests compare selections by it).
        local = output["advantages"].size(0)
        start = trainer.accelerator.process_index * local
        output[RESPONSE_IDS_KEY] = torch.arange(start, start + local, device=output["advantages"].device)

    def loss_active(self, trainer: Any, inputs: dict[str, Any]) -> bool:
        return trainer.args.cov_mode != "none"

    def in_loss(self, trainer: Any, loss: Any, logps: Any, entropies: Any) -> Any:
        from edge_trl.core_algos import token_covariance

        args = trainer.args
        cov_mode = args.cov_mode
        inputs = loss.inputs
        mask = trainer._loss_mask(inputs)
        metrics = trainer._metrics[trainer._mode()]
        advantages = inputs["advantages"]
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        mode = cov_mode_method(cov_mode)
        selected = None
        if args.cov_scope == "step" and trainer.model.training:
            selected = trainer._step_selection.get(trainer._step)
            if selected is None or selected.shape != mask.shape:
                raise RuntimeError(f"cov_scope='step': no token selection for micro-step {trainer._step}.")
        ctx = CovContext(
            logps=logps,
            old_logps=old_logps,
            advantages=advantages,
            mask=mask,
            entropies=entropies,
            params=method_params(args, mode),
            epsilon_low=trainer.epsilon_low,
            epsilon_high=trainer.epsilon_high,
            generator=_seeded_generator(trainer),
            selected=selected,
        )
        terms = mode.terms(ctx)
        loss.selected = terms.selected
        if terms.unclipped:
            # TRL 1.16 _compute_loss computes -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A): with an infinite clip
            # range the clamp is the identity and the surrogate is -r A on every token, value and gradient (TRL's
            # clip_ratio/* metrics then read 0: nothing is clipped). _compute_loss restores the range afterwards.
            loss.saved_epsilons = (trainer.epsilon_low, trainer.epsilon_high)
            trainer.epsilon_low = trainer.epsilon_high = math.inf
        selected = terms.selected
        accelerator = trainer.accelerator
        if terms.penalty is not None:
            loss.penalty = trainer._reduce_like_trl(terms.penalty, mask, inputs)
            penalty_total = accelerator.reduce(terms.penalty.detach().sum(), reduction="sum")
            selected_total = accelerator.reduce(selected.sum().float(), reduction="sum")
            metrics[f"edge/{cov_mode}_penalty"].append((penalty_total / selected_total.clamp(min=1.0)).item())

        import torch

        cov = token_covariance(advantages, logps, mask)
        totals = torch.stack([cov.sum(), mask.sum().float(), (cov * selected).sum(), selected.sum().float()]).detach()
        cov_sum, n_valid, selected_cov_sum, n_selected = accelerator.reduce(totals, reduction="sum").tolist()
        metrics["edge/cov_mean"].append(cov_sum / max(n_valid, 1.0))
        metrics["edge/cov_selected_mean"].append(selected_cov_sum / max(n_selected, 1.0))
        metrics[f"edge/{cov_mode}_selected_share"].append(n_selected / max(n_valid, 1.0))
        return terms.logps

    # -- cov_scope='step': one selection per optimizer step -----------------------------------------------------------
    def prepare_inputs(self, trainer: Any) -> None:
        args = trainer.args
        step_scope = args.cov_scope == "step" and args.cov_mode != "none" and trainer.model.training
        if step_scope and trainer._step not in trainer._step_selection:  # the first micro-step of an optimizer step
            self._select_step_tokens(trainer)

    def _select_step_tokens(self, trainer: Any) -> None:
        """Choose the covariance mode's tokens of the whole optimizer step that starts at micro-step ``_step``.

        One no-grad forward over the step's micro-batches (TRL 1.16 keeps them all in ``_buffered_inputs``; the
        weights do not change within a step, so these are the log-probs the loss forwards will see), the
        covariance centred with the means over the step's valid tokens on every process, k counted over them, and
        the choice made by `core_algos.step_cov_selection` on the gathered tokens, named by their response's
        rollout position and their own: the same tokens however the step is split into micro-batches and processes.
        """
        import torch

        from edge_trl.core_algos import step_cov_selection, token_covariance, token_keys

        start_time = time.perf_counter()
        args = trainer.args
        mode = cov_mode_method(args.cov_mode)
        first, count = trainer._step, trainer.current_gradient_accumulation_steps
        micro_batches = [trainer._buffered_inputs[(first + j) % args.steps_per_generation] for j in range(count)]
        parts = []
        for inputs in micro_batches:
            mask = trainer._loss_mask(inputs)
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            logps, entropies = trainer.no_grad_forward(
                input_ids,
                attention_mask,
                inputs["completion_ids"].size(1),
                compute_entropy=trainer.loss_needs_entropies(inputs),
            )
            advantages = trainer.loss_advantages(inputs, entropies, mask)
            parts.append((inputs, mask, logps, advantages))

        # The step's means over every valid token of every micro-batch and process.
        sums = torch.zeros(3, dtype=torch.float64, device=trainer.accelerator.device)
        for _, mask, logps, advantages in parts:
            m = mask.double()
            adv = advantages.double().unsqueeze(-1) if advantages.dim() == 1 else advantages.double()
            sums += torch.stack([(adv * m).sum(), (logps.double() * m).sum(), m.sum()])
        adv_sum, logp_sum, num_valid = trainer.accelerator.reduce(sums, reduction="sum").tolist()
        centre = (adv_sum / max(num_valid, 1.0), logp_sum / max(num_valid, 1.0))

        covs, keys, candidates, token_key_maps = [], [], [], []
        for inputs, mask, logps, advantages in parts:
            valid = mask.bool()
            cov = token_covariance(advantages, logps, mask, centre=centre)
            key = token_keys(inputs[RESPONSE_IDS_KEY], mask.size(1))
            candidate = mode.step_candidates(trainer, valid, cov, logps, inputs, advantages)
            covs.append(cov[valid])
            keys.append(key[valid])
            candidates.append(candidate[valid])
            token_key_maps.append((key, valid))
        all_cov, all_keys, all_candidates = (
            trainer._gather_ragged(torch.cat(values)) for values in (covs, keys, candidates)
        )
        ratio = getattr(method_params(args, mode), mode.step_ratio_field)
        # The same draw on every process and for every split: seeded by the seed and the optimizer step only.
        generator = torch.Generator().manual_seed((args.seed * 1_000_003 + trainer.state.global_step) % (2**63))
        chosen = step_cov_selection(
            args.cov_mode, all_cov, all_keys, all_candidates, int(num_valid), ratio, generator=generator
        )
        trainer._step_selection = {
            first + j: torch.isin(key, chosen) & valid for j, (key, valid) in enumerate(token_key_maps)
        }
        trainer._metrics["train"]["edge/cov_step_forward_s"].append(time.perf_counter() - start_time)


def step_scope_modes() -> tuple[str, ...]:
    """The modes that support ``cov_scope='step'``."""
    return tuple(m.mode for m in METHODS.values() if isinstance(m, CovMode) and m.step_ratio_field)
