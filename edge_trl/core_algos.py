"""The math of edge-trl: small, pure tensor functions, readable top to bottom.

Nothing here knows about trainers, processes or configs: every function takes tensors and returns tensors, so each
formula can be checked by hand (see ``tests/test_core_algos.py``). ``EdgeGRPOTrainer`` is thin glue that feeds TRL's
tensors through them.

Shapes: ``B`` responses, ``T`` completion tokens. ``mask`` is 1 on a response's valid tokens and 0 on padding (and on
tokens excluded from the loss, such as tool output); a padded token never counts in any mean below.

Papers
------
* EDGE-GRPO: Zhang et al., 2025, "EDGE-GRPO: Entropy-Driven GRPO with Guided Error Correction for Advantage
  Diversity", arXiv 2507.21848. Entropy-Driven Advantage (EDA), section "Entropy-Driven Advantage".
* DAPO: Yu et al., 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476.
  Dynamic sampling, section 3.2 (the constraint 0 < |{o_i : is_equivalent(a, o_i)}| < G of eq. 11).
* Cui et al., 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
  arXiv 2505.22617. The covariance theorem (entropy change ~ -Cov(log pi, A)) and the Clip-Cov / KL-Cov
  objectives of section "Entropy Control by Covariance Regularization".
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "aggregate_token_loss",
    "clip_cov_mask",
    "collapsed_group_share",
    "dynamic_sampling_filter",
    "entropy_driven_advantages",
    "entropy_scale",
    "kl_cov_mask",
    "kl_cov_penalty",
    "masked_mean",
    "num_selected_tokens",
    "ppo_clipped_mask",
    "response_entropy",
    "scale_per_response",
    "step_cov_selection",
    "token_covariance",
    "token_keys",
]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1: sum(v * m) / max(sum(m), 1). Returns 0 when empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# --------------------------------------------------------------------------------------------------------------------
# Entropy-Driven Advantage (EDGE-GRPO)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def response_entropy(entropies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Mean policy entropy of each response: $H_i = \sum_t H_{i,t}\, m_{i,t} / \sum_t m_{i,t}$.

    ``entropies`` and ``mask`` are (B, T); the result is (B,), computed without gradient. A response with no valid
    token gets H_i = 0 (callers treat it as "no information", see [`entropy_scale`][edge_trl.core_algos.entropy_scale]).
    """
    mask = mask.to(entropies.dtype)
    return (entropies.detach() * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


@torch.no_grad()
def entropy_scale(
    response_entropies: torch.Tensor,
    valid: torch.Tensor | None = None,
    group_size: int | None = None,
    entropy_floor: float = 1e-6,
    min_scale: float | None = None,
    max_scale: float | None = None,
) -> torch.Tensor:
    r"""The EDA factor $s_i = \operatorname{mean}_{j \in G(i)} \tilde H_j / \tilde H_i$, with
    $\tilde H = \max(H, \text{entropy\_floor})$.

    EDGE-GRPO divides each advantage by the response's *normalised* entropy $\hat P_i = P_i / \operatorname{mean}_j P_j$,
    i.e. multiplies it by $\operatorname{mean}_j P_j / P_i$. ``G(i)`` is the group of ``group_size`` consecutive responses that holds i (the paper:
    the G responses of one prompt), or the whole batch when ``group_size`` is None.

    * ``valid`` (B,) bool marks responses that have at least one valid token; the others do not enter the mean and
      get s_i = 1. Default: all valid.
    * ``entropy_floor`` keeps s finite when a response is (near) deterministic; a group whose entropies are all
      below the floor gets s = 1 for everyone.
    * ``min_scale`` / ``max_scale`` optionally clamp s (None: no clamp, the paper's formula).
    """
    h = response_entropies.detach().float().clamp(min=entropy_floor)
    if valid is None:
        valid = torch.ones_like(h, dtype=torch.bool)
    valid = valid.bool()
    weights = valid.to(h.dtype)
    if group_size is None:
        mean_h = ((h * weights).sum() / weights.sum().clamp(min=1.0)).expand_as(h)
    else:
        if h.numel() % group_size != 0:
            raise ValueError(f"{h.numel()} responses cannot be split into groups of group_size={group_size}.")
        grouped_sum = (h * weights).view(-1, group_size).sum(-1)
        grouped_count = weights.view(-1, group_size).sum(-1).clamp(min=1.0)
        mean_h = (grouped_sum / grouped_count).repeat_interleave(group_size)
    scale = torch.where(valid, mean_h / h, torch.ones_like(h))
    if min_scale is not None or max_scale is not None:
        scale = scale.clamp(min=min_scale, max=max_scale)
    return scale.to(response_entropies.dtype)


def scale_per_response(advantages: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A_i * s_i for per-sequence advantages (B,), or A_it * s_i for per-token advantages (B, T)."""
    scale = scale.to(advantages.dtype)
    return advantages * (scale if advantages.dim() == 1 else scale.unsqueeze(-1))


@torch.no_grad()
def entropy_driven_advantages(
    advantages: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    group_size: int | None = None,
    entropy_floor: float = 1e-6,
    min_scale: float | None = None,
    max_scale: float | None = None,
) -> torch.Tensor:
    r"""Entropy-Driven Advantage (EDGE-GRPO, EDA): $\hat A_i = A_i \cdot \operatorname{mean}_{j \in G(i)} H_j / H_i$.

    H_i is the mean token entropy of response i over its valid tokens ([`response_entropy`][edge_trl.core_algos.response_entropy]); the mean runs over
    the group of ``group_size`` consecutive responses, or over the whole batch when ``group_size`` is None
    ([`entropy_scale`][edge_trl.core_algos.entropy_scale]). Confident responses (low $H_i$) get larger $|\hat A_i|$: confident correct answers are pushed up
    harder and confident wrong ones pushed down harder. Computed without gradient.

    ``advantages`` is (B,) or (B, T) (a per-token advantage is scaled by its response's factor); returns the same
    shape.
    """
    h = response_entropy(entropies, mask)
    valid = mask.sum(-1) > 0
    return scale_per_response(advantages, entropy_scale(h, valid, group_size, entropy_floor, min_scale, max_scale))


@torch.no_grad()
def collapsed_group_share(values: torch.Tensor, group_size: int, atol: float = 1e-6) -> float:
    """Share of groups whose ``group_size`` consecutive values are all equal (max - min <= atol).

    Applied to rewards (or to group-relative advantages, which are all 0 exactly when the rewards are equal), this is
    EDGE-GRPO's "advantage collapse": such a group gives no learning signal.
    """
    grouped = values.detach().float().view(-1, group_size)
    spread = grouped.max(dim=-1).values - grouped.min(dim=-1).values
    return (spread <= atol).float().mean().item()


@torch.no_grad()
def dynamic_sampling_filter(
    values: torch.Tensor, group_size: int, correct_threshold: float, atol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """DAPO's dynamic sampling decision (Yu et al., section 3.2, the constraint of eq. 11): which groups to keep.

    ``values`` (N,) holds one metric value per response, ``group_size`` consecutive responses per group (a prompt's
    responses). A group is kept when its values are not all equal, i.e. max - min > ``atol`` over the values that
    are not NaN (verl's ``filter_groups``: std > 0); a group of size 1 is always kept (verl keeps it too). Such a
    group's group-relative advantages are all 0: it adds nothing to the policy gradient but its tokens.

    Returns ``(keep, all_correct)``, two (N / group_size,) bool tensors: ``all_correct`` marks the dropped groups
    whose common value is >= ``correct_threshold`` (e.g. every response right); the other dropped groups, below it
    or with no scored response at all, are "all wrong".
    """
    grouped = values.detach().double().view(-1, group_size)
    scored = ~torch.isnan(grouped)
    high = torch.where(scored, grouped, torch.full_like(grouped, -math.inf)).max(dim=-1).values
    low = torch.where(scored, grouped, torch.full_like(grouped, math.inf)).min(dim=-1).values
    varied = scored.any(dim=-1) & (high - low > atol)
    keep = varied | torch.tensor(group_size == 1, device=values.device)
    all_correct = ~keep & scored.any(dim=-1) & (high >= correct_threshold - atol)
    return keep, all_correct


# --------------------------------------------------------------------------------------------------------------------
# Covariance-based entropy control (Cui et al.)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def token_covariance(
    advantages: torch.Tensor,
    logps: torch.Tensor,
    mask: torch.Tensor,
    centre: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-token centred cross product Cov_t = (A_t - mean A) * (log pi_t - mean log pi).

    Both means run over the valid tokens of the whole batch, or are given as ``centre = (mean A, mean log pi)``
    (``cov_scope='step'``: the means of a whole optimizer step over every process); ``log pi`` is detached. Cui et al. show that the entropy
    change of a softmax policy under (natural) policy gradient is -eta * Cov(log pi, A) (their entropy-dynamics
    theorem); the batch mean of this tensor over valid tokens is that covariance, and each entry is one token's
    contribution. ``advantages`` is per sequence (B,) (broadcast to every token) or per token (B, T). Returns (B, T),
    0 on invalid tokens.
    """
    logps = logps.detach().float()
    mask_f = mask.to(logps.dtype)
    adv = advantages.detach().float()
    adv = adv.unsqueeze(-1).expand_as(logps) if adv.dim() == 1 else adv.expand_as(logps)
    mean_adv, mean_logp = (masked_mean(adv, mask_f), masked_mean(logps, mask_f)) if centre is None else centre
    return (adv - mean_adv) * (logps - mean_logp) * mask_f


def num_selected_tokens(ratio: float, num_valid: int) -> int:
    """How many tokens a Cov method selects: max(1, int(ratio * n_valid)), and 0 when there is no valid token."""
    if num_valid <= 0:
        return 0
    return max(1, int(ratio * num_valid))


@torch.no_grad()
def ppo_clipped_mask(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> torch.Tensor:
    """Tokens where PPO's clipped term is the active one (its gradient is already 0).

    That is (A > 0 and r > 1 + eps_high) or (A < 0 and r < 1 - eps_low), the tokens where
    -A * clip(r, 1 - eps_low, 1 + eps_high) > -A * r. ``advantages`` (B,) or (B, T) broadcasts against ``ratio``.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return ((adv > 0) & (ratio > 1 + epsilon_high)) | ((adv < 0) & (ratio < 1 - epsilon_low))


@torch.no_grad()
def clip_cov_mask(
    cov: torch.Tensor,
    mask: torch.Tensor,
    ratio: float,
    lb: float,
    ub: float,
    exclude: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip-Cov token selection (Cui et al., the L_Clip-Cov objective).

    Among the candidates {t : m_t = 1, lb < Cov_t < ub, t not in exclude} pick k = max(1, int(ratio * n_valid))
    tokens uniformly at random (all of them if fewer). Their gradient is then stopped:

        L_Clip-Cov = E_t[ r_t A_t  if t not selected, else 0 ]  (PPO clipping unchanged elsewhere).

    ``exclude`` is normally [`ppo_clipped_mask`][edge_trl.core_algos.ppo_clipped_mask] (their gradient is already 0). ``generator`` makes the draw
    reproducible; a CPU generator works for tensors on any device. Returns a (B, T) bool mask of selected tokens.
    """
    valid = mask.bool()
    candidates = valid & (cov > lb) & (cov < ub)
    if exclude is not None:
        candidates &= ~exclude.bool()
    selected = torch.zeros_like(valid)
    k = num_selected_tokens(ratio, int(valid.sum()))
    flat_candidates = candidates.flatten().nonzero().squeeze(-1)
    if k == 0 or flat_candidates.numel() == 0:
        return selected
    order = torch.randperm(flat_candidates.numel(), generator=generator, device="cpu").to(flat_candidates.device)
    chosen = flat_candidates[order[:k]]
    selected.view(-1)[chosen] = True
    return selected


@torch.no_grad()
def kl_cov_mask(cov: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov token selection (Cui et al., the L_KL-Cov objective): the top-k valid tokens by Cov.

    k = max(1, int(ratio * n_valid)). Ties are broken by position (the earlier token wins), so the choice is
    deterministic. The selected tokens get a KL penalty ([`kl_cov_penalty`][edge_trl.core_algos.kl_cov_penalty]):

        L_KL-Cov = E_t[ r_t A_t - beta_cov * |log pi_t - log pi_old,t|  on selected t, r_t A_t elsewhere ].

    Returns a (B, T) bool mask.
    """
    valid = mask.bool()
    selected = torch.zeros_like(valid)
    k = num_selected_tokens(ratio, int(valid.sum()))
    if k == 0:
        return selected
    scores = cov.float().masked_fill(~valid, float("-inf")).flatten()
    order = torch.sort(scores, descending=True, stable=True).indices
    selected.view(-1)[order[:k]] = True
    return selected


def kl_cov_penalty(logps: torch.Tensor, old_logps: torch.Tensor, selected: torch.Tensor, coef: float) -> torch.Tensor:
    """Per-token KL-Cov penalty, to be *added* to the per-token loss: coef * |log pi_t - log pi_old,t| on selected t.

    Differentiable in ``logps``. It is 0 (with zero gradient) when log pi = log pi_old, i.e. on the first pass over
    freshly generated data: KL-Cov only acts when the policy has moved since the rollout (``num_iterations > 1``,
    ``steps_per_generation > gradient_accumulation_steps`` or a separate generation engine).
    """
    return coef * (logps - old_logps.detach()).abs() * selected.to(logps.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Covariance modes: one signature for every mode, dispatched through a registry (as verl's ``get_policy_loss_fn``)
# --------------------------------------------------------------------------------------------------------------------


TOKEN_KEY_STRIDE = 1 << 32
"""Token keys are ``response_id * TOKEN_KEY_STRIDE + position``: unique while completions are shorter than 2**32."""


def token_keys(response_ids: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) int64 keys naming each token by its response (``response_ids``, (B,)) and position, whatever the
    order of the responses or the micro-batch they sit in (``cov_scope='step'``)."""
    positions = torch.arange(width, device=response_ids.device, dtype=torch.int64)
    return response_ids.to(torch.int64).unsqueeze(-1) * TOKEN_KEY_STRIDE + positions


@torch.no_grad()
def step_cov_selection(
    mode: str,
    cov: torch.Tensor,
    keys: torch.Tensor,
    candidates: torch.Tensor,
    num_valid: int,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The keys of the tokens Clip-Cov or KL-Cov select over a whole optimizer step (``cov_scope='step'``).

    ``cov``, ``keys``, ``candidates``: one entry per valid token of the step, every micro-batch and process
    concatenated in any order; ``cov`` centred with the step's means ([`token_covariance`][edge_trl.core_algos.token_covariance] with ``centre``).
    k = max(1, int(ratio * num_valid)) as in [`num_selected_tokens`][edge_trl.core_algos.num_selected_tokens], counted over the whole step.

    * ``kl_cov``: the top-k tokens by Cov ([`kl_cov_mask`][edge_trl.core_algos.kl_cov_mask]), ties broken by the smaller key;
    * ``clip_cov``: k tokens drawn uniformly among the candidates (lb < Cov < ub and not clipped by PPO,
      [`clip_cov_mask`][edge_trl.core_algos.clip_cov_mask]), by a permutation of the candidates sorted by key.

    Sorting by key first makes the choice independent of how the step's tokens were split and ordered: the same
    tokens for one micro-batch of 8, two of 4, or two processes of 4. Returns the selected keys, sorted.
    """
    k = num_selected_tokens(ratio, num_valid)
    by_key = torch.argsort(keys)
    keys, cov, candidates = keys[by_key], cov[by_key].float(), candidates[by_key].bool()
    if k == 0:
        return keys[:0]
    if mode == "kl_cov":
        order = torch.sort(cov, descending=True, stable=True).indices  # stable: equal Cov keeps key order
        return torch.sort(keys[order[:k]]).values
    if mode == "clip_cov":
        pool = keys[candidates]
        order = torch.randperm(pool.numel(), generator=generator, device="cpu").to(pool.device)
        return torch.sort(pool[order[:k]]).values
    raise ValueError(f"step_cov_selection supports clip_cov and kl_cov, not {mode!r}.")


def aggregate_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int | None = None,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar the way TRL's loss type does (before gradient accumulation).

    * ``grpo``:    mean_i( sum_t l_it m_it / sum_t m_it )
    * ``bnpo``:    sum_it l_it m_it / sum_it m_it
    * ``dr_grpo``: sum_it l_it m_it / (B * max_completion_length)
    * ``dapo``:    sum_it l_it m_it / normalizer   (active tokens of the accumulated global batch per process)

    Mirrors the reductions of ``trl.GRPOTrainer._compute_loss`` (TRL 1.16). The reduction is linear, so adding the
    aggregate of an extra per-token term to TRL's loss equals adding the term to TRL's per-token loss.
    """
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length.")
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        if normalizer is None:
            raise ValueError("loss_type='dapo' needs the normalizer (active tokens per process).")
        return masked.sum() / normalizer
    raise ValueError(f"aggregate_token_loss does not support loss_type={loss_type!r}; use grpo, bnpo, dr_grpo or dapo.")
