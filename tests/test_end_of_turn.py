"""End of turn with the real Qwen2.5 tokenizer: ``<|im_end|>`` stops rollouts, reflections and eval, and GEC injects
inside the assistant turn, for a base generation config (EOS ``<|endoftext|>`` only) and an instruct one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from edge_trl import EdgeGRPOTrainer, gec
from edge_trl.data import normalize_answer
from edge_trl.end_of_turn import end_of_turn_token_ids
from edge_trl.evaluation import evaluate, generate_transformers
from edge_trl.testing import Qwen2Size, boxed_answer_reward, build_qwen2, tiny_addition_dataset

from _helpers import tiny_config
from conftest import REPO_ROOT

QWEN_TOKENIZER = REPO_ROOT.parent / "shared" / "data" / "qwen2.5-tokenizer"
pytestmark = pytest.mark.skipif(
    not (QWEN_TOKENIZER / "tokenizer.json").exists(), reason="../shared/data/qwen2.5-tokenizer not present"
)

# The real ids, written out here so the tests check the product's derivation from the template.
IM_END, ENDOFTEXT = 151645, 151643
GENERATION_CONFIGS = {
    "base": {"eos_token_id": ENDOFTEXT, "bos_token_id": ENDOFTEXT},  # as Qwen2.5-Math-1.5B ships it
    "instruct": {"eos_token_id": [IM_END, ENDOFTEXT], "bos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT},
}
# Added to <|im_end|>'s embedding along a dimension every final hidden state shares: P(<|im_end|>) ~ 0.18 a step.
IM_END_BIAS = 1.3


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return AutoTokenizer.from_pretrained(QWEN_TOKENIZER)


@pytest.fixture(scope="module")
def qwen_models(tmp_path_factory, qwen_tokenizer) -> dict[str, Path]:
    """A random-weight Qwen2 (64 hidden, 2 layers, Qwen2.5's 151936 vocabulary) that often emits <|im_end|>, saved
    with the real tokenizer and each generation config."""
    model = build_qwen2(qwen_tokenizer, Qwen2Size(64, 128, 2, 4, 2, vocab_size=151936))
    with torch.no_grad():
        embedding = model.model.embed_tokens.weight  # tied with the output layer
        embedding[:, 0] = 10.0  # dimension 0 dominates every normalized final hidden state, with the same sign
        embedding[IM_END, 0] += IM_END_BIAS
    paths = {}
    for name, generation in GENERATION_CONFIGS.items():
        path = tmp_path_factory.mktemp(f"qwen-{name}")
        model.generation_config = GenerationConfig(**generation)
        model.save_pretrained(path)
        qwen_tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


def test_end_of_turn_is_read_from_the_chat_template(qwen_tokenizer, tiny_model_path):
    assert end_of_turn_token_ids(qwen_tokenizer) == [IM_END]
    assert qwen_tokenizer.eos_token_id == ENDOFTEXT  # so EOS alone would not end the turn
    tiny = AutoTokenizer.from_pretrained(tiny_model_path)  # its template closes turns with its EOS
    assert end_of_turn_token_ids(tiny) == [tiny.eos_token_id]
    tiny.chat_template = None
    assert end_of_turn_token_ids(tiny) == []


# -- GEC's token assembly on the real ids ------------------------------------------------------------------------------

STOPS, EOT = [ENDOFTEXT, IM_END], [IM_END]  # TRL's eos_token_ids with the base config + the end of turn


@pytest.mark.parametrize(
    ("ending", "closing"),
    [([IM_END, ENDOFTEXT], [IM_END, ENDOFTEXT]), ([IM_END], [IM_END]), ([ENDOFTEXT], [IM_END, ENDOFTEXT]), ([], [])],
    ids=["im_end+endoftext", "im_end", "endoftext-alone", "cut"],
)
def test_gec_assembly_injects_inside_the_turn(ending, closing):
    body, cue, injection, solution, continuation = [5, 6], [7, 8], [30, 31], [40, 41], [9, IM_END]
    response = body + ending
    assert gec.split_ending(response, STOPS) == (body, ending)
    assert gec.turn_closing(ending, EOT) == closing
    # reflect: the continuation prompt has no end of turn before the cue; the continuation closes the turn itself
    assert gec.reflection_prompt([1, 2], response, cue, STOPS) == [1, 2, *body, *cue]
    assert gec.reflect(response, cue, continuation, STOPS, max_length=None).completion_ids == body + cue + continuation
    # answer: injected before the end of turn, the turn closed the way the model closed it
    answer = gec.inject_answer(response, injection, STOPS, max_length=None, end_of_turn_ids=EOT)
    assert answer.completion_ids == body + injection + closing
    assert answer.injected == [False] * 2 + [True] * (len(injection) + len(closing))
    # solution: closed the same way (the trainer closes a cut response's solution with the end of turn)
    assert gec.replace_with_solution(solution, closing or EOT, None).completion_ids == solution + (closing or EOT)
    # plain prompts (no end of turn): the model's own ending comes back unchanged
    assert gec.inject_answer([*body, ENDOFTEXT], injection, STOPS, None).completion_ids == body + injection + [
        ENDOFTEXT
    ]


# -- the trainer: rollouts and every GEC branch with the real tokenizer ------------------------------------------------


class Recorder(EdgeGRPOTrainer):
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations)
        self.generate_calls.append({"prompts": [list(p) for p in prompt_ids], "completions": completion_ids})
        return completion_ids, logprobs

    def _correct_wrong_responses(self, rows, prompts, result):
        out = super()._correct_wrong_responses(rows, prompts, result)
        self.corrections.append({"rows": rows, "before": result, "after": out})
        return out


def make_trainer(tmp_path, model_path, dataset, **overrides):
    fields = {"gec": True, "gec_max_new_tokens": 64, "max_steps": 1, "per_device_train_batch_size": 12,
              "num_generations": 4, **overrides}  # fmt: skip
    trainer = Recorder(
        str(model_path), reward_funcs=boxed_answer_reward, args=tiny_config(tmp_path, **fields), train_dataset=dataset
    )
    trainer.generate_calls, trainer.corrections = [], []
    return trainer


def ends_turn_only_at_the_end(ids: list[int]) -> bool:
    return IM_END not in ids[:-1] and ENDOFTEXT not in ids[:-1]


@pytest.mark.parametrize("generation", ["base", "instruct"])
def test_rollouts_stop_at_end_of_turn_and_gec_injects_inside_it(tmp_path, qwen_models, qwen_tokenizer, generation):
    trainer = make_trainer(tmp_path, qwen_models[generation], tiny_addition_dataset(24))
    expected_stops = [ENDOFTEXT, IM_END] if generation == "base" else [IM_END, ENDOFTEXT]
    assert trainer.eos_token_ids == expected_stops and trainer.end_of_turn_token_ids == [IM_END]
    assert IM_END in trainer.generation_config.eos_token_id
    trainer.train()

    record = trainer.corrections[0]
    prompt_ids, before_ids, *_ = record["before"]
    after_ids = record["after"][1]
    _, reflection = trainer.generate_calls
    # The model emits <|im_end|> often: the rollout stops there, with the base config too.
    assert sum(ids[-1:] == [IM_END] for ids in before_ids) >= len(before_ids) // 2
    assert all(ends_turn_only_at_the_end(ids) for ids in before_ids)
    assert all(ends_turn_only_at_the_end(ids) for ids in reflection["completions"])

    cue = qwen_tokenizer(trainer.args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
    seen, k = set(), 0
    for i, (row, before, after) in enumerate(zip(record["rows"], before_ids, after_ids, strict=True)):
        closed = before[-1:] == [IM_END]
        body = before[:-1] if closed else before
        injection = qwen_tokenizer(
            trainer.args.gec_answer_template.replace("{answer}", normalize_answer(row["answer"])),
            add_special_tokens=False,
        )["input_ids"]
        solution = qwen_tokenizer(row["solution"], add_special_tokens=False)["input_ids"]
        if after[: len(body) + len(cue)] == body + cue:  # reflect
            seen.add("reflect")
            assert reflection["prompts"][k] == prompt_ids[i] + body + cue  # the turn is open before the cue
            assert IM_END not in reflection["prompts"][k][len(prompt_ids[i]) :]
            assert after == body + cue + list(reflection["completions"][k])
            k += 1
        elif after == body + injection + ([IM_END] if closed else []):
            seen.add("answer")  # the answer is inside the turn, which is closed as the model closed it
        else:
            assert after == [*solution, IM_END], i  # the solution closes the turn, not with <|endoftext|> alone
            seen.add("solution")
        assert ends_turn_only_at_the_end(after)
    assert seen == {"reflect", "answer", "solution"} and k == len(reflection["prompts"])


def test_plain_prompts_keep_the_models_eos_only(tmp_path, qwen_models):
    trainer = make_trainer(tmp_path, qwen_models["base"], tiny_addition_dataset(8, conversational=False), gec=False)
    assert trainer.eos_token_ids == [ENDOFTEXT] and trainer.end_of_turn_token_ids == []
    assert trainer.generation_config.eos_token_id == [ENDOFTEXT]


# -- edge-trl eval -----------------------------------------------------------------------------------------------------


def test_eval_stops_at_end_of_turn(tmp_path, qwen_models, qwen_tokenizer):
    suite = tmp_path / "suite"
    DatasetDict(
        {"aime": Dataset.from_list([{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)])}
    ).save_to_disk(str(suite))
    settings = {"benchmarks": ["aime24"], "data": suite, "samples": 4, "temperature": 1.0, "max_new_tokens": 12,
                "backend": "transformers", "show_progress": False}  # fmt: skip
    texts = {
        name: [p["completions"] for p in evaluate(str(qwen_models[name]), **settings)["per_problem"]["aime24"]]
        for name in ("base", "instruct")
    }
    # The instruct config stops at <|im_end|> by itself; the base one now does too: the same samples, same seed.
    assert texts["base"] == texts["instruct"]

    # What the base config generated before: past <|im_end|>, into text that is no longer the answer.
    model = AutoModelForCausalLM.from_pretrained(qwen_models["base"])
    prompt = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 0 + 1?"}], tokenize=False, add_generation_prompt=True
    )
    runs = {}
    for stops in ((), (IM_END,)):
        torch.manual_seed(0)
        runs[stops] = generate_transformers(model, qwen_tokenizer, [prompt], 8, 1.0, 1.0, 12, 8, None, stops)[0]
    for unstopped, stopped in zip(runs[()], runs[(IM_END,)], strict=True):
        assert unstopped.startswith(stopped.rstrip("\ufffd"))  # a prefix may end inside a multi-byte character
    assert sum(len(a) > len(b) for a, b in zip(runs[()], runs[(IM_END,)], strict=True)) >= 4
