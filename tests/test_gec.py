"""Guided Error Correction: the token-space assembly, and real training runs on the tiny offline model."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from datasets import Dataset

from edge_trl import EdgeGRPOTrainer, gec
from edge_trl.data import normalize_answer
from edge_trl.testing import boxed_answer_reward, tiny_addition_dataset

from _helpers import changed, logged, snapshot, tiny_config
from conftest import SHARED_DATA

EOS = 99
DATASET = tiny_addition_dataset(64)

# -- pure assembly -----------------------------------------------------------------------------------------------------


def test_branch_choice_is_deterministic_and_matches_the_probabilities():
    probs = (0.5, 0.25, 0.25)
    a = gec.choose_branches(50, probs, torch.Generator().manual_seed(4))
    assert a == gec.choose_branches(50, probs, torch.Generator().manual_seed(4))
    assert a != gec.choose_branches(50, probs, torch.Generator().manual_seed(5))
    draws = gec.choose_branches(40_000, probs, torch.Generator().manual_seed(0))
    for branch, p in zip(gec.BRANCHES, probs, strict=True):
        assert draws.count(branch) / len(draws) == pytest.approx(p, abs=0.01)
    assert set(gec.choose_branches(100, probs, torch.Generator(), force_reflection=True)) == {"reflect"}
    assert set(gec.choose_branches(100, (0.0, 1.0, 0.0), torch.Generator())) == {"answer"}


def test_reflection_is_response_then_cue_then_continuation():
    prompt, response, cue, continuation = [1, 2], [5, 6, EOS], [7, 8], [9, EOS]
    assert gec.reflection_prompt(prompt, response, cue, [EOS]) == [1, 2, 5, 6, 7, 8]
    out = gec.reflect(response, cue, continuation, [EOS], max_length=100)
    assert out.completion_ids == [5, 6, 7, 8, 9, EOS]  # the model's own final EOS is kept
    assert out.injected == [False, False, True, True, False, False]
    assert (out.generated_tokens, out.truncated) == (2, False)
    truncated_response = gec.reflect([5, 6], cue, [9], [EOS], max_length=100)
    assert truncated_response.completion_ids == [5, 6, 7, 8, 9]


def test_reflection_respects_the_length_limit_and_logprobs():
    out = gec.reflect(
        [5, 6, EOS], [7, 8], [9, 10, 11], [EOS], max_length=5, response_logprobs=[-1.0, -2.0, -0.1],
        continuation_logprobs=[-3.0, -4.0, -5.0],
    )  # fmt: skip
    assert out.completion_ids == [5, 6, 7, 8, 9] and out.truncated
    assert out.sampled_logprobs == [-1.0, -2.0, None, None, -3.0]  # injected tokens have no sampling log-prob


def test_answer_injection_and_solution_replacement():
    with_eos = gec.inject_answer([5, 6, EOS], [30, 31], [EOS], max_length=100)
    assert with_eos.completion_ids == [5, 6, 30, 31, EOS]
    assert with_eos.injected == [False, False, True, True, True]
    assert gec.inject_answer([5, 6], [30, 31], [EOS], max_length=100).completion_ids == [5, 6, 30, 31]
    solution = gec.replace_with_solution([40, 41, 42], [EOS], max_length=100, with_logprobs=True)
    assert solution.completion_ids == [40, 41, 42, EOS] and all(solution.injected)
    assert solution.sampled_logprobs == [None] * 4
    assert gec.replace_with_solution(list(range(10)), [EOS], max_length=4).truncated


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(142.0, "142"), (0.5, "0.5"), (["9.6\n"], "9.6"), ("  \\frac{1}{2} ", "\\frac{1}{2}"), (7, "7"),
     (None, None), ([], None), (float("nan"), None), ("", None), (["1", "2"], "1, 2")],
)  # fmt: skip
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.skipif(not (SHARED_DATA / "evaluation_suite").exists(), reason="../shared evaluation suite not present")
def test_normalize_answer_on_the_real_evaluation_suite():
    from datasets import load_from_disk

    suite = load_from_disk(str(SHARED_DATA / "evaluation_suite"))
    for name in ("amc", "minerva", "olympiad_bench", "aime", "math"):
        answers = [normalize_answer(a) for a in suite[name]["answer"]]
        assert all(isinstance(a, str) and a and a == a.strip() for a in answers), name
    amc_raw = suite["amc"]["answer"]
    assert isinstance(amc_raw[0], float)  # stored as floats such as 142.0 ...
    assert all(normalize_answer(a) == str(int(a)) for a in amc_raw if float(a).is_integer())  # ... graded as "142"
    minerva_raw = suite["minerva"]["answer"][0]
    assert isinstance(minerva_raw, list) and normalize_answer(minerva_raw) == minerva_raw[0].strip()


# -- the trainer -------------------------------------------------------------------------------------------------------


class RecordingTrainer(EdgeGRPOTrainer):
    """Records every generation call, and the inputs and outputs of each correction."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations)
        self.generate_calls.append({"prompts": [list(p) for p in prompt_ids], "completions": completion_ids})
        return completion_ids, logprobs

    def _generate_and_score_completions(self, inputs):
        self.batch = super()._generate_and_score_completions(inputs)
        return self.batch

    def _correct_wrong_responses(self, rows, prompts, result):
        out = super()._correct_wrong_responses(rows, prompts, result)
        self.corrections.append({"rows": rows, "before": result, "after": out})
        return out


def branches_of(trainer: EdgeGRPOTrainer, record: dict) -> list[str]:
    """The correction each response received, read from its tokens (no trainer internals): the reference solution,
    the response followed by the injected answer, or the response followed by the reflection cue."""
    tokenizer, eos = trainer.processing_class, trainer.eos_token_ids[0]
    limit = trainer.max_completion_length + trainer.args.gec_max_new_tokens
    cue = tokenizer(trainer.args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
    branches = []
    for row, before, after in zip(record["rows"], record["before"][1], record["after"][1], strict=True):
        body, had_eos = gec.strip_eos(before, [eos])
        answer = normalize_answer(row["answer"])
        text = trainer.args.gec_answer_template.replace("{answer}", answer)
        injection = tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if had_eos else [])
        solution = (
            tokenizer(row["solution"], add_special_tokens=False)["input_ids"] + [eos] if row["solution"] else None
        )
        if solution is not None and after == solution[:limit]:
            branches.append("solution")
        elif after == (body + injection)[:limit]:
            branches.append("answer")
        elif after[: len(body) + len(cue)] == body + cue:
            branches.append("reflect")
        else:
            branches.append("uncorrected")
    return branches


def make_trainer(
    tmp_path, model_path, trainer_class=RecordingTrainer, dataset=DATASET, reward=boxed_answer_reward, **overrides
):
    fields = {"gec": True, "gec_max_new_tokens": 32, "max_steps": 1, **overrides}
    trainer = trainer_class(
        str(model_path), reward_funcs=reward, args=tiny_config(tmp_path, **fields), train_dataset=dataset
    )
    trainer.generate_calls, trainer.corrections = [], []
    return trainer


def test_gec_corrects_in_token_space_with_one_batched_regeneration(tmp_path, tiny_model_path):
    # the tiny tokenizer spends 57 tokens on the injected sentence: leave room for it
    trainer = make_trainer(tmp_path, tiny_model_path, gec_max_new_tokens=64)
    limit = trainer.max_completion_length + 64
    trainer.train()
    assert len(trainer.corrections) == 1
    record = trainer.corrections[0]
    prompt_ids, before_ids, *_ = record["before"]
    _, after_ids, tool_mask, after_texts, *_ = record["after"]
    rows, tokenizer, eos = record["rows"], trainer.processing_class, trainer.eos_token_ids[0]
    cue = tokenizer(trainer.args.gec_reflection_cue, add_special_tokens=False)["input_ids"]

    # The random model never answers right: every response is corrected.
    assert logged(trainer, "gec/accuracy_before") == [0.0]
    assert logged(trainer, "gec/corrected_share") == [1.0]
    # Two generation calls: the rollout, then one batch with exactly the reflection-branch responses.
    assert len(trainer.generate_calls) == 2
    rollout, reflection = trainer.generate_calls
    assert len(rollout["prompts"]) == len(before_ids) == 8
    plan = branches_of(trainer, record)
    assert "uncorrected" not in plan
    reflected = [i for i in range(8) if plan[i] == "reflect"]
    assert len(reflection["prompts"]) == len(reflected) == logged(trainer, "gec/reflect_count")[0] > 0
    for k, i in enumerate(reflected):
        body = gec.strip_eos(before_ids[i], [eos])[0]
        assert reflection["prompts"][k] == prompt_ids[i] + body + cue  # continuation prompt, in token space
        continuation = reflection["completions"][k]
        assert after_ids[i] == body + cue + continuation and len(after_ids[i]) <= limit
        if continuation and continuation[-1] == eos:
            assert after_ids[i][-1] == eos  # the model's EOS survives
    for i in set(range(8)) - set(reflected):
        answer = normalize_answer(rows[i]["answer"])
        injection = tokenizer(trainer.args.gec_answer_template.replace("{answer}", answer), add_special_tokens=False)[
            "input_ids"
        ]
        body, had_eos = gec.strip_eos(before_ids[i], [eos])
        if plan[i] == "answer":
            assert after_ids[i] == (body + injection + ([eos] if had_eos else []))[:limit]
        else:
            assert plan[i] == "solution"
            solution = tokenizer(rows[i]["solution"], add_special_tokens=False)["input_ids"] + [eos]
            assert after_ids[i] == solution[:limit]
        # rewards are recomputed on the corrected text: an injected or replaced answer is right
        assert boxed_answer_reward([after_texts[i]], [answer]) == [1.0]
    assert tool_mask is None  # injected tokens are trained on by default
    assert logged(trainer, "gec/accuracy_after")[0] == pytest.approx((8 - len(reflected)) / 8)
    for key in ("gec/answer_count", "gec/solution_count", "gec/collapsed_group_share_before",
                "gec/collapsed_group_share_after", "gec/reflection_new_tokens_mean"):  # fmt: skip
        assert logged(trainer, key), key
    assert logged(trainer, "gec/collapsed_group_share_before") == [1.0]  # all wrong: every group collapsed


def test_gec_branches_are_reproducible_under_a_seed(tmp_path, tiny_model_path):
    plans = []
    for run in range(2):
        trainer = make_trainer(tmp_path / str(run), tiny_model_path, gec_reflect_prob=0.0, gec_answer_prob=0.5,
                               gec_solution_prob=0.5)  # fmt: skip
        trainer.train()
        plans.append([ids for ids in trainer.corrections[0]["after"][1]])
    assert plans[0] == plans[1]
    assert len(trainer.generate_calls) == 1  # no reflection branch drawn: no regeneration at all


def test_gec_mask_injected_excludes_exactly_the_injected_tokens(tmp_path, tiny_model_path):
    trainer = make_trainer(tmp_path, tiny_model_path, gec_mask_injected=True)
    trainer.train()
    _, before_ids, *_ = trainer.corrections[0]["before"]
    _, after_ids, tool_mask, *_ = trainer.corrections[0]["after"]
    eos = trainer.eos_token_ids[0]
    cue = trainer.processing_class(trainer.args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
    plan = branches_of(trainer, trainer.corrections[0])
    assert {"reflect", "answer", "solution"} <= set(plan)
    for i, ids in enumerate(after_ids):
        assert len(tool_mask[i]) == len(ids)
        body, _ = gec.strip_eos(before_ids[i], [eos])
        if plan[i] == "reflect":  # sampled, injected cue, sampled
            expected = [1] * len(body) + [0] * len(cue) + [1] * (len(ids) - len(body) - len(cue))
        elif plan[i] == "answer":  # sampled, then injected answer (and EOS)
            expected = [1] * len(body) + [0] * (len(ids) - len(body))
        else:  # reference solution: all injected
            expected = [0] * len(ids)
        assert tool_mask[i] == expected, i
        # TRL carries it into the training batch, where the loss multiplies it into the completion mask
        assert trainer.batch["tool_mask"][i, : len(ids)].tolist() == expected, i


@pytest.mark.parametrize("mask_injected", [False, True])
def test_gec_mask_wrong_prefix_excludes_exactly_the_kept_response(tmp_path, tiny_model_path, mask_injected):
    trainer = make_trainer(tmp_path, tiny_model_path, gec_mask_wrong_prefix=True, gec_mask_injected=mask_injected)
    trainer.train()
    _, before_ids, *_ = trainer.corrections[0]["before"]
    _, after_ids, tool_mask, *_ = trainer.corrections[0]["after"]
    eos = trainer.eos_token_ids[0]
    cue = trainer.processing_class(trainer.args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
    plan = branches_of(trainer, trainer.corrections[0])
    assert {"reflect", "answer", "solution"} <= set(plan)
    injected = 0 if mask_injected else 1
    for i, ids in enumerate(after_ids):
        body, _ = gec.strip_eos(before_ids[i], [eos])
        if plan[i] == "reflect":  # the policy's wrong response, the injected cue, the sampled continuation
            expected = [0] * len(body) + [injected] * len(cue) + [1] * (len(ids) - len(body) - len(cue))
        elif plan[i] == "answer":  # the policy's wrong response, then the injected answer (and EOS)
            expected = [0] * len(body) + [injected] * (len(ids) - len(body))
        elif plan[i] == "solution":  # no prefix of the policy's: only injected tokens
            expected = [injected] * len(ids)
        else:
            expected = [1] * len(ids)
        assert tool_mask[i] == expected, (i, plan[i])
        assert trainer.batch["tool_mask"][i, : len(ids)].tolist() == expected, i


def test_loss_mask_of_a_cut_correction_covers_the_kept_prefix_only():
    # A reflection cut inside the wrong response: every kept token is prefix; nothing of the cue survives.
    cut = gec.reflect([5, 6, 7, 8, 1], [9, 9], [3, 4, 1], stop_token_ids=[1], max_length=3)
    assert cut.completion_ids == [5, 6, 7] and cut.prefix_length == 3
    assert gec.loss_mask(cut, mask_injected=False, mask_wrong_prefix=True) == [0, 0, 0]
    whole = gec.reflect([5, 6, 1], [9, 9], [3, 1], stop_token_ids=[1], max_length=None)
    assert whole.completion_ids == [5, 6, 9, 9, 3, 1]
    assert gec.loss_mask(whole, mask_injected=False, mask_wrong_prefix=True) == [0, 0, 1, 1, 1, 1]
    assert gec.loss_mask(whole, mask_injected=True, mask_wrong_prefix=True) == [0, 0, 0, 0, 1, 1]
    assert gec.loss_mask(whole, mask_injected=False, mask_wrong_prefix=False) == [1] * 6
    solution = gec.replace_with_solution([3, 4], [1], max_length=None)
    assert solution.prefix_length == 0 and gec.loss_mask(solution, False, True) == [1, 1, 1]


def test_gec_mask_wrong_prefix_needs_a_correction(tmp_path):
    with pytest.raises(ValueError, match=r"gec_mask_wrong_prefix=True .* set gec=True"):
        tiny_config(tmp_path, gec_mask_wrong_prefix=True)


def test_gec_without_answer_column_fails_at_construction(tmp_path, tiny_model_path):
    dataset = DATASET.remove_columns("answer")
    with pytest.raises(ValueError, match=r"no column 'answer'.*gec_answer_column"):
        EdgeGRPOTrainer(
            str(tiny_model_path), reward_funcs=boxed_answer_reward, train_dataset=dataset,
            args=tiny_config(tmp_path, gec=True),
        )  # fmt: skip
    with pytest.raises(ValueError, match="gec_reward_name='accuracy'"):
        EdgeGRPOTrainer(
            str(tiny_model_path), reward_funcs=boxed_answer_reward, train_dataset=DATASET,
            args=tiny_config(tmp_path, gec=True, gec_reward_name="accuracy"),
        )  # fmt: skip


def test_rows_without_solution_fall_back_to_answer_injection(tmp_path, tiny_model_path):
    dataset = DATASET.map(lambda row: {"solution": None})
    trainer = make_trainer(tmp_path, tiny_model_path, dataset=dataset, gec_reflect_prob=0.0, gec_answer_prob=0.0,
                           gec_solution_prob=1.0)  # fmt: skip
    trainer.train()
    assert logged(trainer, "gec/solution_count") == [0.0]
    assert logged(trainer, "gec/answer_count") == [8.0]


@pytest.mark.parametrize("mode", ["gec", "force_reflection"])
def test_full_edge_grpo_and_forced_reflection_train(tmp_path, tiny_model_path, mode):
    features = {"gec": True, "eda": True} if mode == "gec" else {"gec": False, "force_reflection": True}
    trainer = make_trainer(tmp_path, tiny_model_path, max_steps=3, **features)
    before = snapshot(trainer.model)
    trainer.train()
    assert all(math.isfinite(loss) for loss in logged(trainer, "loss"))
    if mode == "force_reflection":
        assert logged(trainer, "gec/answer_count") == [0.0] * 3
        assert logged(trainer, "gec/reflect_count") == [8.0] * 3
        # a random model does not find the answer by reflecting: the groups stay collapsed and nothing is learned,
        # which is exactly the failure GEC's answer/solution branches fix
        assert logged(trainer, "gec/collapsed_group_share_after") == [1.0] * 3
        assert not changed(before, trainer.model)
    else:
        assert changed(before, trainer.model)
        assert min(logged(trainer, "gec/collapsed_group_share_after")) < 1.0
        after, before_acc = logged(trainer, "gec/accuracy_after"), logged(trainer, "gec/accuracy_before")
        assert sum(after) > sum(before_acc)  # injected answers and solutions are right
        assert logged(trainer, "edge/eda_scale_max")


@pytest.mark.skipif(not (SHARED_DATA / "train_data").exists(), reason="../shared training data not present")
def test_deepscaler_hard_1k_trains_one_step_with_gec(tmp_path, tiny_model_path):
    records = json.loads((SHARED_DATA / "train_data" / "deepscaler_hard-1k.json").read_text())
    assert len(records) == 1000 and {"problem", "answer", "solution"} <= set(records[0])
    rows = [{"prompt": [{"role": "user", "content": r["problem"]}], "answer": r["answer"], "solution": r["solution"]}
            for r in records[:16]]  # fmt: skip
    trainer = make_trainer(tmp_path, tiny_model_path, dataset=Dataset.from_list(rows), gec_max_new_tokens=96)
    before = snapshot(trainer.model)
    trainer.train()
    assert changed(before, trainer.model)
    assert logged(trainer, "gec/corrected_share") == [1.0]
    # long reference solutions are cut at max_completion_length + gec_max_new_tokens
    assert all(len(ids) <= 12 + 96 for ids in trainer.corrections[0]["after"][1])
    assert logged(trainer, "gec/truncated_count")[0] == logged(trainer, "gec/solution_count")[0]


def test_gec_with_force_reflection_follows_the_official_precedence(tmp_path, tiny_model_path, caplog):
    # The official train_grpo.sh sets both; its code checks GEC first, so all three branches are drawn.
    with caplog.at_level(logging.WARNING, logger="edge_trl.config"):
        both = make_trainer(tmp_path / "both", tiny_model_path, force_reflection=True, max_steps=2)
    assert "gec=True with force_reflection=True: GEC takes precedence" in caplog.text
    both.train()
    gec_only = make_trainer(tmp_path / "gec", tiny_model_path, max_steps=2)
    gec_only.train()
    counts = {b: logged(both, f"gec/{b}_count") for b in gec.BRANCHES}
    assert sum(counts["answer"]) + sum(counts["solution"]) > 0 and sum(counts["reflect"]) > 0
    assert sum(map(sum, counts.values())) == 16  # the random model is always wrong: 8 corrections per step
    assert counts == {b: logged(gec_only, f"gec/{b}_count") for b in gec.BRANCHES}  # exactly GEC's draws


def test_length_metrics_and_num_tokens_count_the_corrected_completions(tmp_path, tiny_model_path):
    trainer = make_trainer(tmp_path, tiny_model_path, gec=False, force_reflection=True)
    trainer.train()
    prompt_ids, before_ids, *_ = trainer.corrections[0]["before"]
    after_ids = trainer.corrections[0]["after"][1]
    trained = trainer.batch["completion_mask"].sum(1).float()  # the completions the loss sees
    assert trained.tolist() == [len(ids) for ids in after_ids]
    assert logged(trainer, "gec/reflect_count") == [8.0]
    assert logged(trainer, "completions/mean_length") == [pytest.approx(trained.mean().item())]
    assert logged(trainer, "completions/max_length") == [trained.max().item()]
    assert logged(trainer, "completions/min_length") == [trained.min().item()]
    before_mean = sum(len(ids) for ids in before_ids) / len(before_ids)
    assert logged(trainer, "gec/mean_length_before") == [pytest.approx(before_mean)]
    assert before_mean < trained.mean().item()  # the cue and continuation were added
    ends = [*trainer.eos_token_ids, trainer.processing_class.pad_token_id]
    clipped = sum(ids[-1] not in ends for ids in after_ids) / len(after_ids)
    assert logged(trainer, "completions/clipped_ratio") == [pytest.approx(clipped)]
    assert logged(trainer, "num_tokens") == [sum(map(len, prompt_ids)) + trained.sum().item()]


@pytest.mark.parametrize("cue_in_budget", [True, False], ids=["cue-in-budget", "official-budget"])
def test_reflection_budget_with_and_without_the_cue(tmp_path, tiny_model_path, cue_in_budget):
    trainer = make_trainer(tmp_path, tiny_model_path, gec=False, force_reflection=True, gec_max_new_tokens=40,
                           gec_cue_in_budget=cue_in_budget)  # fmt: skip
    trainer.train()
    cue = trainer.processing_class(trainer.args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
    continuations = trainer.generate_calls[1]["completions"]
    budget = 40 - len(cue) if cue_in_budget else 40  # official: 40 new tokens after the cue
    assert max(map(len, continuations)) == budget  # the random model rarely stops: some use the whole budget
    before_ids, after_ids = trainer.corrections[0]["before"][1], trainer.corrections[0]["after"][1]
    eos = trainer.eos_token_ids[0]
    for before, after, continuation in zip(before_ids, after_ids, continuations, strict=True):
        assert after == gec.strip_eos(before, [eos])[0] + cue + list(continuation)  # nothing is cut
    longest = max(map(len, after_ids))
    cap = trainer.max_completion_length + 40
    assert longest <= cap if cue_in_budget else longest > cap


def cue_and_even_length_reward(completions: list, **_: object) -> list[float]:
    """Right when the completion holds GEC's cue and has an even number of characters: a tiny model's first tries
    never hold the cue, and about half of its reflections end right."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float("Something is wrong" in text and len(text) % 2 == 0) for text in texts]


def test_reflect_success_is_the_share_of_reflected_responses_that_end_right(tmp_path, tiny_model_path):
    trainer = make_trainer(tmp_path, tiny_model_path, reward=cue_and_even_length_reward, max_steps=3, gec=False,
                           force_reflection=True, gec_reward_name="cue_and_even_length_reward")  # fmt: skip
    trainer.train()
    expected = []
    for record in trainer.corrections:
        texts = record["after"][3]
        assert cue_and_even_length_reward(record["before"][3]) == [0.0] * len(texts)  # every first try is wrong
        expected.append(sum(cue_and_even_length_reward(texts)) / len(texts))
    assert logged(trainer, "gec/reflect_count") == [8.0] * 3
    assert logged(trainer, "gec/reflect_success") == pytest.approx(expected)
    assert 0 < sum(expected) < 3  # some reflections end right and some do not: the share is not a constant
