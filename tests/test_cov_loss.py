"""Covariance modes through the real trainer's ``_compute_loss``: KL-Cov against the authors' loss computed by hand,
and the registry's dispatch (a test-local mode is really called)."""

from __future__ import annotations

import re

import pytest
import torch

from edge_trl import EdgeGRPOTrainer
from edge_trl.methods import METHODS
from edge_trl.methods.covariance import COV_MODES, CovTerms, get_cov_mode, register_cov_mode
from edge_trl.testing import digit_share_reward, tiny_addition_dataset

from _helpers import logged, tiny_config

DATASET = tiny_addition_dataset(16)
EPSILON = 0.2
KL_COEF = 0.7
KL_RATIO = 0.2


class _LogpsProbe(EdgeGRPOTrainer):
    """Keeps the log-probs of TRL's training forward (before any covariance mode) with their gradient."""

    def _apply_loss_hooks(self, inputs, logps, entropies):
        logps.retain_grad()
        self.raw_logps = logps
        return super()._apply_loss_hooks(inputs, logps, entropies)


def moved_batch(trainer: EdgeGRPOTrainer) -> dict[str, torch.Tensor]:
    """A micro-batch whose policy has moved since the rollout: |log pi - log pi_old| up to 0.5, padded and
    tool-masked tokens, per-response advantages of both signs."""
    generator = torch.Generator().manual_seed(0)
    batch, prompt_length, completion_length = 6, 5, 8
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (batch, prompt_length), generator=generator)
    completion_ids = torch.randint(3, vocab, (batch, completion_length), generator=generator)
    lengths = torch.tensor([8, 6, 3, 8, 5, 1])
    completion_mask = (torch.arange(completion_length) < lengths.unsqueeze(1)).long()  # padding at the end
    tool_mask = torch.ones_like(completion_mask)
    tool_mask[0, 2:4] = 0  # tokens excluded from the loss inside a response
    with torch.no_grad():
        logits = trainer.model(
            input_ids=torch.cat([prompt_ids, completion_ids], 1),
            attention_mask=torch.cat([torch.ones_like(prompt_ids), completion_mask], 1),
        ).logits[:, prompt_length - 1 : -1]
    logps = logits.log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    offsets = torch.rand(batch, completion_length, generator=generator) - 0.5  # in [-0.5, 0.5)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "tool_mask": tool_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.8, -1.2, 0.3, -0.7]),
        "old_per_token_logps": logps - offsets,
        "num_items_in_batch": (completion_mask * tool_mask).sum(),
    }


def reference_loss(logps, old_logps, advantages, mask, loss_type, clipped, accumulation, max_length, num_items):
    """The authors' KL-Cov loss (compute_policy_loss_kl_cov), written out: -A r on every token (or PPO's clipped
    surrogate when ``clipped``), plus coef |log pi - log pi_old| on the top-k tokens by covariance, then TRL's
    loss_type reduction."""
    valid = mask.bool()
    adv = advantages.unsqueeze(1).expand_as(logps)
    cov = (adv - adv[valid].mean()) * (logps.detach() - logps.detach()[valid].mean())
    k = max(1, int(KL_RATIO * int(valid.sum())))
    top = cov.masked_fill(~valid, -torch.inf).flatten().topk(k).indices
    selected = torch.zeros_like(valid).flatten()
    selected[top] = True
    selected = selected.view_as(valid)
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - EPSILON, 1 + EPSILON)
    surrogate = -torch.min(adv * ratio, adv * clipped_ratio) if clipped else -adv * ratio
    per_token = surrogate + KL_COEF * (logps - old_logps).abs() * selected
    per_token = per_token * mask
    if loss_type == "grpo":
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean() / accumulation
    elif loss_type == "bnpo":
        loss = per_token.sum() / mask.sum() / accumulation
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (mask.size(0) * max_length) / accumulation
    else:  # dapo: active tokens of the accumulation window (steps_per_generation == accumulation here)
        loss = per_token.sum() / num_items
    return loss, selected


@pytest.mark.parametrize("kl_cov_clip", [False, True], ids=["authors-unclipped", "clipped-variant"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_kl_cov_loss_and_gradient_match_the_authors_by_hand(tmp_path, tiny_model_path, loss_type, kl_cov_clip):
    args = tiny_config(
        tmp_path, cov_mode="kl_cov", kl_cov_ratio=KL_RATIO, kl_cov_coef=KL_COEF, kl_cov_clip=kl_cov_clip,
        loss_type=loss_type, epsilon=EPSILON, gradient_accumulation_steps=2, num_iterations=2,
    )  # fmt: skip
    trainer = _LogpsProbe(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by Trainer's loop, which we step by hand
    inputs = moved_batch(trainer)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    assert (trainer.epsilon_low, trainer.epsilon_high) == (EPSILON, EPSILON)  # PPO's range is restored afterwards

    logps = trainer.raw_logps.detach().clone().requires_grad_(True)
    mask = (inputs["completion_mask"] * inputs["tool_mask"]).float()
    expected, selected = reference_loss(
        logps, inputs["old_per_token_logps"], inputs["advantages"], mask, loss_type, kl_cov_clip,
        accumulation=2, max_length=args.max_completion_length, num_items=inputs["num_items_in_batch"],
    )  # fmt: skip
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(trainer.raw_logps.grad, logps.grad, rtol=0, atol=1e-6)  # per token

    # The case really exercises what differs: moved, PPO-clipped tokens (not penalised) and masked tokens.
    ratio = torch.exp(logps.detach() - inputs["old_per_token_logps"])
    adv = inputs["advantages"].unsqueeze(1)
    ppo_clipped = (((adv > 0) & (ratio > 1 + EPSILON)) | ((adv < 0) & (ratio < 1 - EPSILON))) & mask.bool()
    clipped_only = ppo_clipped & ~selected
    assert clipped_only.sum() >= 3 and selected.any()
    grad = trainer.raw_logps.grad
    if kl_cov_clip:
        assert torch.all(grad[clipped_only] == 0)  # PPO's clip stops them
    else:
        assert torch.all(grad[clipped_only] != 0)  # the authors' -A r keeps their gradient
    assert torch.all(grad[~mask.bool()] == 0)
    assert trainer._metrics["train"]["edge/kl_cov_penalty"][-1] > 0


def test_a_registered_mode_is_dispatched_by_the_real_trainer(tmp_path, tiny_model_path, monkeypatch):
    calls: list[tuple[torch.Size, bool]] = []

    def first_token_only(ctx):
        """Test-local mode: train on the first completion token of each response only."""
        logps, mask = ctx.logps, ctx.mask
        calls.append((logps.shape, logps.requires_grad, ctx.entropies.shape))
        selected = torch.zeros_like(mask, dtype=torch.bool)
        selected[:, 1:] = mask[:, 1:].bool()
        return CovTerms(logps=torch.where(selected, logps.detach(), logps), selected=selected)

    monkeypatch.setitem(COV_MODES, "first_token", None)  # undone after the test
    monkeypatch.setitem(METHODS, "first_token", None)
    register_cov_mode("first_token")(first_token_only)
    assert get_cov_mode("first_token") is first_token_only
    args = tiny_config(tmp_path, cov_mode="first-token", max_steps=1)
    trainer = _LogpsProbe(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)
    trainer.train()
    assert calls and all(requires_grad for _, requires_grad, _ in calls)
    assert all(entropy_shape == shape for shape, _, entropy_shape in calls)  # the mode receives the entropies
    grad = trainer.raw_logps.grad
    assert torch.all(grad[:, 1:] == 0) and grad[:, 0].abs().sum() > 0  # the mode's output is what was trained
    assert logged(trainer, "edge/first_token_selected_share")


def test_unknown_cov_mode_lists_the_registered_ones(tmp_path):
    registered = sorted(COV_MODES)  # built from the registry: a new mode breaks nothing here
    with pytest.raises(ValueError, match=re.escape(f"registered modes are {', '.join(registered)}")):
        get_cov_mode("kl-cov-typo")
    listed = ", ".join(["none", *COV_MODES])
    with pytest.raises(ValueError, match=re.escape(f"cov_mode='entropy_cov' is not supported: use one of {listed}")):
        tiny_config(tmp_path, cov_mode="entropy_cov")
