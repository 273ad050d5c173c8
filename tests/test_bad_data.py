"""Bad data: a clear error naming rows or columns before any process starts, or the bad rows
dropped and counted. Real files, the real CLI (dry runs: they check the dataset like a real launch) and the worker."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edge_trl import worker
from edge_trl.cli.main import app
from edge_trl.run_spec import RunSpec


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train(tiny_model_path: Path, data: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_path), "--dataset", str(data), *extra,
                                      "--dry-run"])  # fmt: skip
    return result.exit_code, result.output


GOOD = [{"problem": f"{i}+1", "answer": str(i + 1)} for i in range(6)]


def test_rows_without_problem_or_answer_are_dropped_and_counted(tmp_path, tiny_model_path, caplog):
    data = write_rows(tmp_path / "d.jsonl", [*GOOD, {"problem": "", "answer": "1"}, {"problem": "2+2", "answer": None}])
    code, output = train(tiny_model_path, data)
    assert code == 0, output
    assert "Dropping 2 of 8 rows with an empty or missing 'problem' or 'answer' (rows 6, 7)" in caplog.text


def test_bad_data_is_an_error_before_processes_start(tmp_path, tiny_model_path):
    wrong_type = write_rows(tmp_path / "t.jsonl", [{"problem": "1+1", "answer": {"value": 2}}] * 3)
    code, output = train(tiny_model_path, wrong_type)
    assert code == 2 and "'answer' column holds answers of type dict in rows 0, 1, 2" in output
    all_empty = write_rows(tmp_path / "e.jsonl", [{"problem": " ", "answer": "1"}, {"problem": "x", "answer": ""}])
    code, output = train(tiny_model_path, all_empty)
    assert code == 2 and "No row is left after dropping the rows with an empty 'problem' or 'answer'" in output
    good = write_rows(tmp_path / "g.jsonl", GOOD)
    code, output = train(tiny_model_path, good, "--dataset-split", "test")
    assert code == 2 and "has one split, 'train', not 'test'" in output
    code, output = train(tiny_model_path, good, "--prompt-column", "question")
    assert code == 2 and "no prompt column 'question'" in output


def test_the_worker_reports_bad_data_without_a_traceback(tmp_path, tiny_model_path, capsys):
    """What a rank does with a dataset that changed after the launcher checked it (or a Hub dataset it could not)."""
    data = write_rows(tmp_path / "g.jsonl", GOOD)
    run = RunSpec(model=str(tiny_model_path), dataset=str(data), dataset_split="validation", template="plain",
                  reward="format", trainer={"output_dir": str(tmp_path / "out"), "use_cpu": True})  # fmt: skip
    run.save(tmp_path / "run.yaml")
    assert worker.main(["--run", str(tmp_path / "run.yaml")]) == 2
    assert "error: " in capsys.readouterr().err


LONG = {"problem": "1+" * 300 + "1", "answer": "301"}  # hundreds of tokens; GOOD's prompts take a few dozen


def test_prompts_longer_than_max_prompt_length_are_an_error_or_dropped(tmp_path, tiny_model_path, caplog):
    data = write_rows(tmp_path / "long.jsonl", [*GOOD, LONG, LONG])
    code, output = train(tiny_model_path, data, "--max-prompt-length", "200")
    assert code == 2, output
    assert "2 of 8 prompts are longer than max_prompt_length=200 tokens (rows 6, 7" in output
    assert "raise --max-prompt-length, or pass --drop-long-prompts" in output
    code, output = train(tiny_model_path, data, "--max-prompt-length", "200", "--drop-long-prompts")
    assert code == 0, output
    assert "2 of 8 prompts are longer than max_prompt_length=200 tokens" in caplog.text and "other 6" in caplog.text
    assert train(tiny_model_path, data)[0] == 0  # no limit given: no check (and no tokenizer loaded)
    code, output = train(tiny_model_path, data, "--drop-long-prompts")
    assert code == 2 and "--drop-long-prompts needs --max-prompt-length" in output


def test_the_worker_checks_prompt_lengths_too(tmp_path, tiny_model_path, capsys):
    """What a rank does with a dataset the launcher could not check (a Hub dataset)."""
    data = write_rows(tmp_path / "long.jsonl", [*GOOD, LONG])
    run = RunSpec(model=str(tiny_model_path), dataset=str(data), dataset_split="train", max_prompt_length=200,
                  reward="format", template="chat", trainer={"output_dir": str(tmp_path / "out"), "use_cpu": True})  # fmt: skip
    run.save(tmp_path / "run.yaml")
    assert worker.main(["--run", str(tmp_path / "run.yaml")]) == 2
    assert "1 of 7 prompts are longer than max_prompt_length=200 tokens (rows 6" in capsys.readouterr().err
