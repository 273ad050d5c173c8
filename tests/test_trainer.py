"""EdgeGRPOTrainer trained for real on CPU with the tiny offline model and a real reward function."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer, entropy_driven_advantages
from edge_trl.testing import digit_share_reward, tiny_addition_dataset

from _helpers import changed, logged, snapshot, tiny_config

DATASET = tiny_addition_dataset(64)


def train(tmp_path, model_path, trainer_class=EdgeGRPOTrainer, config_class=None, peft_config=None, **overrides):
    if config_class is None:
        config_class = GRPOConfig if trainer_class is GRPOTrainer else EdgeGRPOConfig
    args = tiny_config(tmp_path / trainer_class.__name__, config_class, **overrides)
    trainer = trainer_class(
        str(model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET, peft_config=peft_config
    )
    before = snapshot(trainer.model)
    trainer.train()
    return trainer, before


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # TRL defaults: dapo, on-policy
        {"loss_type": "grpo", "beta": 0.04, "num_iterations": 2, "max_steps": 3},
    ],
    ids=["dapo", "grpo-beta-iterations"],
)
def test_identical_to_trl_when_every_feature_is_off(tmp_path, tiny_model_path, overrides):
    trl_trainer, _ = train(tmp_path, tiny_model_path, GRPOTrainer, **overrides)
    edge_trainer, _ = train(tmp_path, tiny_model_path, EdgeGRPOTrainer, **overrides)
    assert logged(trl_trainer, "loss") == logged(edge_trainer, "loss")
    assert logged(trl_trainer, "grad_norm") == logged(edge_trainer, "grad_norm")
    trl_params = dict(trl_trainer.model.named_parameters())
    for name, param in edge_trainer.model.named_parameters():
        assert torch.equal(param, trl_params[name]), name


MODES = {
    "none": {},
    "eda": {"eda": True},
    "eda_batch": {"eda": True, "eda_scope": "batch"},
    "clip_cov": {"cov_mode": "clip_cov", "clip_cov_ratio": 0.05, "clip_cov_lb": -1e9, "clip_cov_ub": 1e9},
    "kl_cov": {"cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2},
    "eda+kl_cov": {"eda": True, "cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2},
}
EXPECTED_METRICS = {
    "none": ["edge/collapsed_group_share"],
    "eda": ["edge/adv_var_before_eda", "edge/adv_var_after_eda", "edge/eda_scale_min", "edge/eda_scale_max"],
    "eda_batch": ["edge/adv_var_before_eda", "edge/adv_var_after_eda", "edge/eda_scale_mean"],
    "clip_cov": ["edge/cov_mean", "edge/cov_selected_mean", "edge/clip_cov_selected_share"],
    "kl_cov": ["edge/cov_mean", "edge/kl_cov_selected_share", "edge/kl_cov_penalty"],
    "eda+kl_cov": ["edge/eda_scale_max", "edge/kl_cov_penalty"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_trains(tmp_path, tiny_model_path, mode):
    trainer, before = train(tmp_path, tiny_model_path, **MODES[mode])
    losses = logged(trainer, "loss")
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert changed(before, trainer.model)
    for key in EXPECTED_METRICS[mode]:
        values = logged(trainer, key)
        assert values and all(math.isfinite(v) for v in values), key
    if mode.startswith("eda"):
        # the entropy of a random model differs between responses, so EDA really rescales the advantages
        assert any(v != 1.0 for v in logged(trainer, "edge/eda_scale_max"))
        assert logged(trainer, "edge/adv_var_after_eda") != logged(trainer, "edge/adv_var_before_eda")


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "grpo", "beta": 0.04},
        {"loss_type": "bnpo", "gradient_accumulation_steps": 2},
        {"loss_type": "dr_grpo", "steps_per_generation": 2},
        {"loss_type": "dapo", "num_iterations": 2, "gradient_accumulation_steps": 2},
    ],
    ids=["grpo-beta", "bnpo-accumulation", "dr_grpo-steps_per_generation", "dapo-iterations-accumulation"],
)
def test_loss_types_and_schedules_with_every_feature(tmp_path, tiny_model_path, overrides):
    features = {"eda": True, "cov_mode": "clip_cov", "clip_cov_ratio": 0.05, "clip_cov_lb": -1e9, "clip_cov_ub": 1e9}
    trainer, before = train(tmp_path, tiny_model_path, **features, **overrides)
    assert all(math.isfinite(loss) for loss in logged(trainer, "loss"))
    assert changed(before, trainer.model)
    assert logged(trainer, "edge/clip_cov_selected_share")


def test_lora_with_eda_and_kl_cov(tmp_path, tiny_model_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer, before = train(
        tmp_path, tiny_model_path, peft_config=lora, eda=True, cov_mode="kl_cov", num_iterations=2, beta=0.04
    )
    assert any("lora" in name for name in before)
    assert changed(before, trainer.model)
    assert logged(trainer, "edge/kl_cov_penalty")


def test_kl_cov_penalty_is_positive_only_after_the_policy_moved(tmp_path, tiny_model_path):
    trainer, _ = train(tmp_path, tiny_model_path, cov_mode="kl_cov", kl_cov_ratio=0.05, num_iterations=2, max_steps=4)
    penalties = logged(trainer, "edge/kl_cov_penalty")
    assert len(penalties) == 4
    # steps 1 and 3 are the first pass over fresh rollouts (pi == pi_old); steps 2 and 4 reuse them after an update
    assert penalties[0] == 0.0 and penalties[2] == 0.0
    assert penalties[1] > 0 and penalties[3] > 0


class _GradientProbe(EdgeGRPOTrainer):
    """Keeps the raw log-probs of TRL's training forward (before Clip-Cov) and the loss mask."""

    def _apply_loss_hooks(self, inputs, logps, entropies):
        logps.retain_grad()
        self.raw_logps = logps
        out = super()._apply_loss_hooks(inputs, logps, entropies)
        self.mask = self._loss_mask(inputs).bool()
        return out


def test_clip_cov_stops_the_gradient_at_selected_tokens(tmp_path, tiny_model_path):
    args = tiny_config(
        tmp_path, cov_mode="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-1e9, clip_cov_ub=1e9, max_steps=1
    )
    trainer = _GradientProbe(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which we step by hand
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    generator_seed = trainer._seeded_generator(trainer._step).initial_seed()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()

    # Re-draw the same selection from the same generator to know which tokens Clip-Cov picked.
    from edge_trl.core_algos import clip_cov_mask, ppo_clipped_mask, token_covariance

    mask = trainer.mask
    logps = trainer.raw_logps.detach()
    cov = token_covariance(batch["advantages"], logps, mask)
    exclude = ppo_clipped_mask(torch.ones_like(logps), batch["advantages"], 0.2, 0.2)
    selected = clip_cov_mask(cov, mask, 0.2, -1e9, 1e9, exclude, torch.Generator().manual_seed(generator_seed))
    grad = trainer.raw_logps.grad
    n_valid = int(mask.sum())
    assert int(selected.sum()) == max(1, int(0.2 * n_valid))
    assert torch.all(grad[selected] == 0)
    kept = mask & ~selected & (batch["advantages"].unsqueeze(-1) != 0)
    assert torch.all(grad[kept] != 0)  # every other token with a signal still gets its gradient


class _AdvantageProbe(EdgeGRPOTrainer):
    """Keeps the advantages the loss really used (after every EDGE hook)."""

    def _apply_loss_hooks(self, inputs, logps, entropies):
        out = super()._apply_loss_hooks(inputs, logps, entropies)
        self.loss_advantages = inputs["advantages"].detach().clone()
        return out


GROUP_EDA_PATHS = {
    # steps_per_generation=1: the loss forward sees the whole rollout, entropies come from it (free)
    "in-loss-forward": {},
    # num_iterations=2: TRL makes a no-grad old-log-prob forward; it is asked for entropies too (free)
    "reuses-old-logps-forward": {"num_iterations": 2},
    # on-policy with the rollout split over 2 micro-batches: one extra no-grad forward
    "extra-forward": {"gradient_accumulation_steps": 2},
}


@pytest.mark.parametrize("path", list(GROUP_EDA_PATHS))
def test_group_eda_scales_advantages_by_group_entropy(tmp_path, tiny_model_path, path):
    from trl.trainer.utils import shuffle_sequence_dict

    args = tiny_config(tmp_path, eda=False, eda_max_scale=None, **GROUP_EDA_PATHS[path])
    trainer = _AdvantageProbe(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    rows = next(iter(trainer.get_train_dataloader()))

    torch.manual_seed(1)
    plain = trainer._generate_and_score_completions([dict(r) for r in rows])
    trainer.args.eda = True
    torch.manual_seed(1)
    rollout = trainer._generate_and_score_completions([dict(r) for r in rows])
    assert torch.equal(plain["completion_ids"], rollout["completion_ids"])  # the same rollout

    # Independent reference: entropies from a plain forward of the model over the same sequences.
    input_ids = torch.cat([plain["prompt_ids"], plain["completion_ids"]], dim=1)
    attention = torch.cat([plain["prompt_mask"], plain["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=input_ids, attention_mask=attention).logits
    logits = logits[:, -plain["completion_ids"].size(1) - 1 : -1].float()
    entropies = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    expected = entropy_driven_advantages(
        plain["advantages"], entropies, plain["completion_mask"], group_size=args.num_generations
    )
    assert not torch.allclose(expected, plain["advantages"])

    if path == "in-loss-forward":
        assert torch.equal(rollout["advantages"], plain["advantages"])  # deferred to the loss
        torch.manual_seed(7)
        permutation = torch.randperm(expected.numel())
        torch.manual_seed(7)
        shuffled = shuffle_sequence_dict(rollout)  # as TRL does before splitting into micro-batches
        trainer.compute_loss(trainer.model, shuffled)
        torch.testing.assert_close(trainer.loss_advantages, expected[permutation], rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(rollout["advantages"], expected, rtol=1e-4, atol=1e-5)
    extra_forward = trainer._metrics["train"].get("edge/eda_extra_forward_s", [])
    assert (len(extra_forward) > 0) == (path == "extra-forward")
