"""`edge-trl eval`: pass@k arithmetic, and real end-to-end runs of the tiny offline model."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict
from typer.testing import CliRunner

from edge_trl.cli.main import app
from edge_trl.evaluation import ks_for, pass_at_k, summarize

from conftest import SHARED_DATA

runner = CliRunner()


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0 and pass_at_k(4, 3, 2) == 1.0
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="pass@3 needs at least 3 samples"):
        pass_at_k(2, 1, 3)


def test_summary_and_weighted_average_arithmetic():
    per_problem = {
        "aime24": [{"correct": [True, False]}, {"correct": [False, False]}],  # pass@1 = 0.25, pass@2 = 0.5
        # pass@1 = 0.625, pass@2 = 0.75
        "math500": [{"correct": c} for c in ([True, True], [True, False], [False, False], [True, True])],
    }
    summary = summarize(per_problem, samples=2)
    assert summary["benchmarks"]["aime24"] == {"problems": 2, "pass@1": 0.25, "pass@2": 0.5}
    assert summary["benchmarks"]["math500"] == {"problems": 4, "pass@1": 0.625, "pass@2": 0.75}
    average = summary["weighted_average"]
    assert average["problems"] == 6
    assert average["pass@1"] == pytest.approx((2 * 0.25 + 4 * 0.625) / 6)
    assert average["pass@2"] == pytest.approx((2 * 0.5 + 4 * 0.75) / 6)


@pytest.fixture(scope="module")
def local_suite(tmp_path_factory):
    """A suite in the EDGE-GRPO evaluation-suite format: one split per benchmark, mixed answer types."""
    path = tmp_path_factory.mktemp("suite")
    DatasetDict(
        {
            "aime": Dataset.from_list([{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]),
            "amc": Dataset.from_list([{"problem": f"Compute {i} * 3.", "answer": float(3 * i)} for i in range(3)]),
            "minerva": Dataset.from_list([{"problem": "Speed?", "answer": ["9.6\n"]}]),
        }
    ).save_to_disk(str(path))
    return path


def run_eval(*args: str):
    return runner.invoke(app, ["eval", *args])


def check_result_file(path, benchmarks, samples, limit_sizes):
    result = json.loads(path.read_text())
    assert set(result["benchmarks"]) == set(benchmarks)
    for name, size in limit_sizes.items():
        problems = result["per_problem"][name]
        assert len(problems) == size == result["benchmarks"][name]["problems"]
        assert all(len(p["completions"]) == samples == len(p["correct"]) for p in problems)
        mean = sum(sum(p["correct"]) / samples for p in problems) / size
        assert result["benchmarks"][name]["pass@1"] == pytest.approx(mean)
    total = sum(limit_sizes.values())
    weighted = sum(result["benchmarks"][n]["pass@1"] * limit_sizes[n] for n in limit_sizes) / total
    assert result["weighted_average"]["pass@1"] == pytest.approx(weighted)
    assert result["weighted_average"]["problems"] == total
    assert result["settings"]["backend"] == "transformers" and result["settings"]["problems_per_second"] > 0
    return result


def test_eval_end_to_end_on_a_local_suite(tmp_path, tiny_model_path, local_suite):
    out = tmp_path / "results.json"
    result = run_eval(
        "--model", str(tiny_model_path), "--data", str(local_suite), "--benchmarks", "aime24,amc23,minerva",
        "--samples", "2", "--temperature", "0.7", "--max-new-tokens", "8", "--limit", "3", "--output", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "weighted average" in result.output and "pass@2" in result.output
    data = check_result_file(out, ["aime24", "amc23", "minerva"], 2, {"aime24": 3, "amc23": 3, "minerva": 1})
    assert data["per_problem"]["amc23"][1]["answer"] == "3"  # 3.0 graded as "3"
    assert data["per_problem"]["minerva"][0]["answer"] == "9.6"
    assert data["settings"]["temperature"] == 0.7 and data["settings"]["max_new_tokens"] == 8
    assert not list(local_suite.rglob("cache-*.arrow"))  # no cache file written into the user's data folder


def test_eval_with_a_lora_adapter(tmp_path, tiny_model_path, local_suite):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(adapter)
    out = tmp_path / "adapter.json"
    result = run_eval("--model", str(tiny_model_path), "--adapter", str(adapter), "--data", str(local_suite),
                      "--benchmarks", "aime24", "--max-new-tokens", "4", "--limit", "2", "--output", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["settings"]["adapter"] == str(adapter)


@pytest.mark.skipif(not (SHARED_DATA / "evaluation_suite").exists(), reason="../shared evaluation suite not present")
def test_eval_on_the_real_edge_grpo_suite(tmp_path, tiny_model_path):
    out = tmp_path / "suite.json"
    names = "aime24,amc23,math500,minerva,olympiadbench"
    result = run_eval("--model", str(tiny_model_path), "--data", str(SHARED_DATA / "evaluation_suite"),
                      "--benchmarks", names, "--max-new-tokens", "4", "--limit", "2", "--output", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    check_result_file(out, names.split(","), 1, dict.fromkeys(names.split(","), 2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmarks", "gsm8k"], "Unknown benchmark 'gsm8k'"),
        (["--model", "qwen2.5-math-1.5"], "Did you mean 'qwen2.5-math-1.5b'"),
        (["--adapter", "/nonexistent/adapter"], "no adapter_config.json"),
        (["--data", "/nonexistent/suite"], "--data /nonexistent/suite: no such folder"),
        (["--backend", "tensorrt"], "--backend 'tensorrt'"),
    ],
)
def test_eval_bad_input_is_a_clear_error(tiny_model_path, local_suite, args, message):
    base = {"--model": str(tiny_model_path), "--data": str(local_suite), "--benchmarks": "aime24"}
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    argv = [x for key, value in {**base, **overrides}.items() for x in (key, value)]
    result = run_eval(*argv, "--limit", "1", "--max-new-tokens", "2")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
