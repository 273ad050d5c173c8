"""Faults in user reward code: a reward that raises, returns NaN/inf or hangs on one completion
costs that completion, not the run. Each fault is real: the reward function below really raises, returns NaN and inf,
or blocks; a real EdgeGRPOTrainer trains through it."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

from edge_trl.rewards import completion_text
from edge_trl.testing import boxed_answer_reward, tiny_addition_dataset

from _helpers import tiny_config


def faulty_reward(fault: str, release: threading.Event):
    """A reward that scores 1.0 except on one completion, the first it ever sees, where it has ``fault`` (a hang
    blocks until ``release`` is set)."""
    poison: list[str] = []

    def flaky_reward(completions, **kwargs):
        texts = [completion_text(c) for c in completions]
        if not poison:
            poison.append(texts[0])
        scores = []
        for text in texts:
            if text != poison[0]:
                scores.append(1.0)
            elif fault == "raises":
                raise ZeroDivisionError("the grader divided by zero")
            elif fault == "nan":
                scores.append(math.nan)
            elif fault == "inf":
                scores.append(-math.inf)
            else:  # hangs
                release.wait()
                scores.append(1.0)
        return scores

    return flaky_reward


@pytest.mark.parametrize("fault", ["raises", "nan", "inf", "hangs"])
def test_a_faulty_reward_costs_one_completion_not_the_run(tmp_path, tiny_model_path, caplog, fault):
    from edge_trl import EdgeGRPOTrainer

    release = threading.Event()  # ends the hanging reward's thread when the test is over
    args = tiny_config(tmp_path, max_steps=1, reward_timeout=2.0)
    trainer = EdgeGRPOTrainer(str(tiny_model_path), [faulty_reward(fault, release), boxed_answer_reward], args=args,
                              train_dataset=tiny_addition_dataset(16))  # fmt: skip
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="edge_trl.faults"):
        trainer.train()
    elapsed = time.perf_counter() - start
    release.set()
    logs = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert math.isfinite(logs["loss"]) and math.isfinite(logs["reward"])
    assert logs["rewards/flaky_reward/faults"] >= 1  # the poisoned completion (and any identical one)
    assert logs["rewards/flaky_reward/mean"] == 1.0  # the failed completions are left out, not scored 0
    warning = next(r.getMessage() for r in caplog.records if "flaky_reward" in r.getMessage())
    expected = {"raises": "ZeroDivisionError: the grader divided by zero", "nan": "returned nan",
                "inf": "returned -inf", "hangs": "RewardTimeout: no answer within 2 s"}[fault]  # fmt: skip
    assert expected in warning and "e.g. completion" in warning
    if fault == "hangs":  # the batch call and the poisoned completion alone each waited 2 s, no more
        assert elapsed < 30


def test_a_guarded_reward_keeps_its_name_and_values():
    from edge_trl.faults import guard_reward

    guarded = guard_reward(boxed_answer_reward, timeout=5)
    assert guarded.__name__ == "boxed_answer_reward"
    completions, answers = ["\\boxed{3}", "\\boxed{4}"], ["3", "5"]
    assert guarded(completions=completions, answer=answers) == boxed_answer_reward(completions, answers) == [1.0, 0.0]


def test_reward_timeout_is_validated(tmp_path):
    with pytest.raises(ValueError, match="reward_timeout=0 must be a positive number of seconds"):
        tiny_config(tmp_path, reward_timeout=0)
