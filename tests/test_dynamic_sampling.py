"""DAPO dynamic sampling on a real EdgeGRPOTrainer (tiny offline model, CPU, one process; two processes and resume:
tests/test_multiprocess.py and tests/test_resume.py)."""

from __future__ import annotations

import math

import pytest
import torch

from edge_trl import EdgeGRPOTrainer, dynamic_sampling_filter
from edge_trl.testing import (
    boxed_answer_reward,
    digit_share_reward,
    even_answer_constant_reward,
    tiny_addition_dataset,
)

from _helpers import logged, tiny_config

DATASET = tiny_addition_dataset(64)


def never_constant(completions: list, **_: object) -> list[float]:
    """Different for every response of a call (the digit share plus the response's index): no group is equal."""
    return [i + share for i, share in enumerate(digit_share_reward(completions))]


def always_one(completions: list, **_: object) -> list[float]:
    return [1.0] * len(completions)


class Recording(EdgeGRPOTrainer):
    """Records the answers of every generation batch drawn, and of the batch that reaches the loss."""

    def _score_generation_batch(self, inputs):
        self.drawn.append([row["answer"] for row in inputs])
        return super()._score_generation_batch(inputs)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.trained.append(output)
        return output


def make(tmp_path, model_path, reward=even_answer_constant_reward, **overrides):
    settings = {"dynamic_sampling": True, "dynamic_sampling_metric": reward.__name__, **overrides}
    args = tiny_config(tmp_path / "run", **settings)
    trainer = Recording(str(model_path), reward_funcs=reward, args=args, train_dataset=DATASET)
    trainer.drawn, trainer.trained = [], []
    return trainer


def answers_of(trainer, output) -> list[str]:
    """The answer of each trained response's prompt (read back from its prompt tokens)."""
    texts = trainer.processing_class.batch_decode(output["prompt_ids"], skip_special_tokens=True)
    by_question = {str(row["prompt"][-1]["content"]): row["answer"] for row in DATASET}
    return [next(a for q, a in by_question.items() if q in text) for text in texts]


def test_filter_keeps_groups_with_unequal_values():
    values = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, float("nan"), float("nan"), 0.5, 0.5])
    keep, correct = dynamic_sampling_filter(values, 2, correct_threshold=1.0)
    assert keep.tolist() == [False, False, True, False, False]
    assert correct.tolist() == [True, False, False, False, False]  # all-NaN and 0.5 groups count as all wrong
    keep, _ = dynamic_sampling_filter(torch.tensor([0.0, 0.0]), 1, 1.0)
    assert keep.tolist() == [True, True]  # a group of one is kept, as verl does


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"steps_per_generation": 2, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4},
        {"eda": True, "cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2},
        {
            "eda": True,
            "eda_scope": "batch",
            "cov_mode": "clip_cov",
            "cov_scope": "step",
            "clip_cov_lb": -1e9,
            "clip_cov_ub": 1e9,
            "steps_per_generation": 2,
            "gradient_accumulation_steps": 2,
            "per_device_train_batch_size": 4,
        },
    ],
    ids=["plain", "steps_per_generation", "eda+kl_cov", "eda_batch+clip_cov_step"],
)
def test_constant_groups_never_reach_the_loss_and_the_batch_keeps_its_size(tmp_path, tiny_model_path, overrides):
    trainer = make(tmp_path, tiny_model_path, max_steps=3, **overrides)
    trainer.train()
    rows = trainer.args.per_device_train_batch_size * trainer.args.steps_per_generation
    drawn = [a for batch in trainer.drawn for a in batch]
    assert any(int(a) % 2 == 0 for a in drawn), "the data never offered a constant group: the test would be vacuous"
    assert len(trainer.drawn) > len(trainer.trained)  # refills happened
    for output in trainer.trained:
        assert output["advantages"].shape == (rows,) and output["completion_ids"].size(0) == rows
        assert all(int(a) % 2 == 1 for a in answers_of(trainer, output))
        assert output["num_items_in_batch"] == trainer._loss_mask(output).sum()
    # the draws follow the sampler's order: consecutive generation batches, no prompt batch drawn twice
    sampler = trainer._train_sampler
    expected = [[DATASET[i]["answer"] for i in sampler.chunk(k) for _ in range(4)] for k in range(len(trainer.drawn))]
    assert [b for b in trainer.drawn] == [e[: len(b)] for e, b in zip(expected, trainer.drawn, strict=True)]
    assert trainer._ds_batches_drawn == len(trainer.drawn)
    gen_batches = logged(trainer, "dynamic_sampling/gen_batches")
    assert len(gen_batches) == len(trainer.trained) and sum(gen_batches) == len(trainer.drawn)  # one per rollout
    assert logged(trainer, "dynamic_sampling/frac_reward_zero_std") == [0.0] * len(trainer.trained)
    # every even-answer group is dropped as all correct (reward 1.0); odd ones whose 4 completions happen to have
    # the same digit share are dropped as all wrong
    dropped = sum(logged(trainer, "dynamic_sampling/dropped_all_correct"))
    assert dropped == sum(int(a) % 2 == 0 for batch in trainer.drawn for a in batch[::4])
    for batches, share, correct, wrong in zip(
        *(
            logged(trainer, f"dynamic_sampling/{k}")
            for k in ("gen_batches", "kept_group_share", "dropped_all_correct", "dropped_all_wrong")
        ),
        strict=True,
    ):
        groups = batches * rows // 4
        assert share * groups + correct + wrong == pytest.approx(groups)
    assert all(math.isfinite(loss) for loss in logged(trainer, "loss"))


def test_with_nothing_to_drop_it_trains_exactly_like_without(tmp_path, tiny_model_path):
    plain = make(tmp_path / "plain", tiny_model_path, reward=never_constant, max_steps=2)
    plain.args.dynamic_sampling = False
    plain.train()
    sampled = make(tmp_path / "ds", tiny_model_path, reward=never_constant, max_steps=2)
    sampled.train()
    assert logged(sampled, "dynamic_sampling/gen_batches") == [1.0, 1.0]
    assert logged(sampled, "loss") == logged(plain, "loss")
    for (name, p), q in zip(sampled.model.named_parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_the_limit_stops_with_an_error_naming_the_count(tmp_path, tiny_model_path):
    trainer = make(tmp_path, tiny_model_path, reward=always_one, max_num_gen_batches=3)
    with pytest.raises(
        RuntimeError, match=r"3 generation batches \(max_num_gen_batches=3\).*too difficult or too easy"
    ):
        trainer.train()
    assert len(trainer.drawn) == 3


def test_an_unknown_metric_is_an_error_naming_the_reward_functions(tmp_path, tiny_model_path):
    args = tiny_config(tmp_path, dynamic_sampling=True)  # default metric accuracy_reward, not among the rewards
    with pytest.raises(ValueError, match=r"dynamic_sampling_metric='accuracy_reward'.*digit_share_reward"):
        EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)


def test_gec_corrects_first_then_the_groups_still_equal_are_dropped(tmp_path, tiny_model_path):
    """The order: GEC corrects every wrong response, then dynamic sampling drops the groups whose (corrected) rewards
    are still all equal. A random model never writes the right answer, so before GEC every group is all wrong."""
    gec = {"gec": True, "gec_reflect_prob": 0.5, "gec_answer_prob": 0.5, "gec_solution_prob": 0.0}
    trainer = make(
        tmp_path / "gec", tiny_model_path, reward=boxed_answer_reward, max_steps=2, gec_max_new_tokens=96, **gec
    )
    trainer.train()
    assert set(logged(trainer, "gec/accuracy_before")) == {0.0}
    for output in trainer.trained:  # each kept group mixes injected answers (right) and reflections (still wrong)
        texts = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
        rewards = torch.tensor(boxed_answer_reward(texts, answers_of(trainer, output))).view(-1, 4)
        assert ((rewards.max(-1).values == 1.0) & (rewards.min(-1).values == 0.0)).all()
    # Answer injection alone makes every response right: groups all wrong before GEC are dropped as all *correct*.
    injected = {**gec, "gec_reflect_prob": 0.0, "gec_answer_prob": 1.0}
    injecting = make(tmp_path / "inject", tiny_model_path, reward=boxed_answer_reward, max_num_gen_batches=2,
                     gec_max_new_tokens=96, **injected)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"kept only 0 of the 2 groups.*\(4 groups all correct, 0 all wrong\)"):
        injecting.train()

    # Without GEC the same rollouts are all wrong: every group is dropped until the limit.
    plain = make(tmp_path / "plain", tiny_model_path, reward=boxed_answer_reward, max_num_gen_batches=2)
    with pytest.raises(RuntimeError, match=r"kept only 0 of the 2 groups.*\(0 groups all correct, 4 all wrong\)"):
        plain.train()
