"""Bad data (issue #12, item 5): a clear error naming rows or columns before any process starts, or the bad rows
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
