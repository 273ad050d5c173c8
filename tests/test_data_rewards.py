"""Math data loading/preparation and the verifiable rewards, on real competition answers."""

from __future__ import annotations

import json
import logging

import pytest
from datasets import Dataset

from edge_trl.data import (
    QWEN_MATH_SYSTEM_PROMPT,
    DatasetError,
    load_any_dataset,
    prepare_math_dataset,
)
from edge_trl.models import resolve_model
from edge_trl.rewards import (
    accuracy_reward,
    format_accuracy_reward,
    format_reward,
    get_reward_funcs,
    last_boxed,
)

from conftest import SHARED_DATA

ROWS = [
    {"problem": "What is 1 + 1?", "answer": "2", "solution": "1 + 1 = \\boxed{2}"},
    {"problem": "Half of 1?", "answer": 0.5, "solution": None},
    {"problem": "AMC-style", "answer": 142.0, "solution": "so \\boxed{142}"},
]


@pytest.fixture
def files(tmp_path):
    json_path = tmp_path / "data.json"
    json_path.write_text(json.dumps(ROWS))
    jsonl_path = tmp_path / "data.jsonl"
    jsonl_path.write_text("\n".join(json.dumps(r) for r in ROWS))
    # typed formats hold the answers as strings, as real datasets do
    dataset = Dataset.from_list([{**r, "answer": a} for r, a in zip(ROWS, ["2", "0.5", "142"], strict=True)])
    parquet_path = tmp_path / "data.parquet"
    dataset.to_parquet(str(parquet_path))
    disk_path = tmp_path / "on_disk"
    dataset.save_to_disk(str(disk_path))
    return {"json": json_path, "jsonl": jsonl_path, "parquet": parquet_path, "disk": disk_path}


@pytest.mark.parametrize("kind", ["json", "jsonl", "parquet", "disk"])
def test_loaders_and_preparation(files, kind):
    dataset = prepare_math_dataset(load_any_dataset(str(files[kind])))
    assert len(dataset) == 3
    assert dataset[0]["prompt"] == [
        {"role": "system", "content": QWEN_MATH_SYSTEM_PROMPT},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    assert dataset["answer"] == ["2", "0.5", "142"]  # numbers normalised to strings, 142.0 -> 142
    assert dataset[1]["solution"] is None and dataset[0]["solution"].endswith("\\boxed{2}")


def test_plain_template_and_explicit_columns():
    dataset = Dataset.from_list([{"q": "2+2?", "gold": ["4\n"]}])
    prepared = prepare_math_dataset(dataset, prompt_column="q", answer_column="gold", template="plain")
    assert prepared[0]["prompt"].startswith(QWEN_MATH_SYSTEM_PROMPT) and "Question: 2+2?" in prepared[0]["prompt"]
    assert prepared[0]["answer"] == "4"


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([{"problem": "x"}][:0], {}, "The dataset is empty"),
        ([{"text": "x", "answer": "1"}], {}, r"Cannot find the prompt column.*\['text', 'answer'\]"),
        ([{"problem": "x", "answer": "1"}], {"answer_column": "final"}, "no answer column 'final'"),
        ([{"problem": " ", "answer": "1"}, {"problem": None, "answer": "2"}], {}, "No row is left after dropping"),
        (
            [{"problem": "a", "answer": {"v": 1}}, {"problem": "b", "answer": {"v": 2}}],
            {},
            r"'answer' column holds answers of type dict in rows 0, 1",
        ),
        ([{"problem": "x", "answer": "1"}], {"template": "alpaca"}, "template='alpaca'"),
    ],
)
def test_bad_datasets_name_row_and_column(rows, kwargs, message):
    dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({"problem": [], "answer": []})
    with pytest.raises(DatasetError, match=message):
        prepare_math_dataset(dataset, **kwargs)


def test_rows_without_problem_or_answer_are_dropped_and_counted(caplog):
    rows = [{"problem": "1+1", "answer": "2"}, {"problem": None, "answer": "2"}, {"problem": "2+2", "answer": ""},
            {"problem": "  ", "answer": "3"}, {"problem": "3+3", "answer": "6"}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="edge_trl.data"):
        prepared = prepare_math_dataset(Dataset.from_list(rows), template="plain")
    assert [row["answer"] for row in prepared] == ["2", "6"]
    assert "Dropping 3 of 5 rows with an empty or missing 'problem' or 'answer' (rows 1, 2, 3)" in caplog.text


def test_loader_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_any_dataset(str(tmp_path / "missing.json"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.txt'"):
        load_any_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(DatasetError, match=r"not a `datasets\.save_to_disk` folder"):
        load_any_dataset(str(tmp_path))


def test_shipped_deepscaler_hard_1k_loads_offline(tmp_path, monkeypatch):
    """EDGE-GRPO's training set ships in the package and loads by name, offline (conftest sets HF_*_OFFLINE)."""
    monkeypatch.chdir(tmp_path)  # no local file of that name here
    dataset = load_any_dataset("deepscaler-hard-1k")
    assert len(dataset) == 1000 and {"problem", "answer", "solution"} <= set(dataset.column_names)
    prepared = prepare_math_dataset(dataset)  # what the worker does with it
    assert len(prepared) == 1000 and all(isinstance(a, str) and a for a in prepared["answer"])
    assert all(isinstance(s, str) and s for s in prepared["solution"])
    shared = SHARED_DATA / "train_data" / "deepscaler_hard-1k.json"
    if shared.exists():  # the authors' file, row for row
        assert dataset.to_list() == json.loads(shared.read_text())
    with pytest.raises(DatasetError, match="has one split, 'train', not 'test'"):
        load_any_dataset("deepscaler-hard-1k", split="test")
    (tmp_path / "deepscaler-hard-1k").write_text("x")  # a local file of the same name wins
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_any_dataset("deepscaler-hard-1k")


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data/edge-grpo not present")
def test_real_edge_grpo_files_load_and_prepare():
    train = prepare_math_dataset(load_any_dataset(str(SHARED_DATA / "train_data" / "deepscaler_hard-1k.json")))
    assert len(train) == 1000 and all(isinstance(a, str) and a for a in train["answer"])
    assert all(s is not None for s in train["solution"][:50])
    suite = SHARED_DATA / "evaluation_suite"
    sizes = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}
    for split, size in sizes.items():
        prepared = prepare_math_dataset(load_any_dataset(str(suite), split=split))
        assert len(prepared) == size and all(isinstance(a, str) and a for a in prepared["answer"])
    with pytest.raises(DatasetError, match=r"splits \[.*'aime'.*\], not 'train'"):
        load_any_dataset(str(suite), split="train")


# -- rewards -----------------------------------------------------------------------------------------------------------


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),  # fraction vs decimal
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{142}", 142.0, 1.0),  # AMC float reference
        ("\\boxed{142.0}", "142", 1.0),
        ("\\boxed{9.6}", ["9.6\n"], 1.0),  # Minerva one-element list
        ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", 1.0),  # interval
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0),  # LaTeX forms
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        ("first \\boxed{3} then \\boxed{4}", "4", 1.0),  # the last box counts
        ("\\boxed{\\text{(C)}}", "\\text{(C)}", 1.0),
        ("\\boxed{143}", "142", 0.0),  # wrong
        ("the answer is 142", "142", 0.0),  # no box
        ("", "142", 0.0),  # empty
        ("\\boxed{", "142", 0.0),  # unbalanced garbage
        ("\\boxed{}", "1", 0.0),
        ("\\boxed{\\frac{1}{0}}}}{{", "2", 0.0),
    ],
)
def test_accuracy_reward_on_competition_answers(completion, answer, expected):
    assert accuracy_reward([conv(completion)], [answer]) == [expected]
    assert accuracy_reward([completion], [answer]) == [expected]  # plain-string completions too


def test_format_and_combined_rewards():
    completions = [conv("\\boxed{2}"), conv("\\boxed{3}"), conv("no box"), conv("\\boxed{}")]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0]
    assert format_accuracy_reward(completions, ["2"] * 4) == [2.0, 1.0, 0.0, 0.0]


def test_rewards_never_raise_on_garbage():
    garbage = [conv("\\boxed{" + "(" * 500 + "}"), conv("\x00\\boxed{\\frac{}{}}"), [], None, conv("\\boxed{a=b=c}")]
    assert len(accuracy_reward(garbage, ["1"] * len(garbage))) == len(garbage)
    assert len(format_reward(garbage)) == len(garbage)


def test_rewards_by_name():
    assert get_reward_funcs("accuracy,format") == [accuracy_reward, format_reward]
    with pytest.raises(ValueError, match="Unknown reward 'acuracy'"):
        get_reward_funcs("acuracy")


def test_last_boxed():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("nothing") is None


def test_model_aliases():
    assert resolve_model("qwen2.5-math-1.5b") == "Qwen/Qwen2.5-Math-1.5B"
    assert resolve_model("Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert resolve_model("org/model") == "org/model"
    with pytest.raises(ValueError, match=r"Did you mean 'qwen2\.5-math-1\.5b'"):
        resolve_model("qwen2.5-math-1.5")


def test_boxed_answer_matches_is_exact_and_whole_text_is_strict():
    from edge_trl.rewards import boxed_answer_matches, boxed_answer_reward

    assert boxed_answer_matches("so \\boxed{3} then \\boxed{82}", 82)  # the last box, reference normalised
    assert not boxed_answer_matches("\\boxed{82.0}", "82")  # exact strings, no math-verify
    assert boxed_answer_matches(" \\boxed{82}\n", "82", whole_text=True)
    assert not boxed_answer_matches("x \\boxed{82}", "82", whole_text=True)  # the embedded task's strict metric
    assert not boxed_answer_matches("\\fbox{82}", "82", whole_text=True)
    completions = [[{"role": "assistant", "content": "\\boxed{5}"}], "\\boxed{6}"]
    assert boxed_answer_reward(completions, ["5", "5"]) == [1.0, 0.0]
