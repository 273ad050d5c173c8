"""The how-to guide (docs/guides/own-data-and-reward.md) runs as written: its reward file is saved as `my_rewards.py`,
its Python example executed with only the model and the sizes swapped for the tiny offline model, and its command line
dry-run, on a JSONL file of the guide's layout."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from edge_trl import rewards
from edge_trl.testing import CPU_RUN_SETTINGS

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "own-data-and-reward.md"
# What the test changes in the example: the model, the sizes (a CPU and seconds), and CPU settings.
SWAPS = {
    "max_completion_length=512": "max_completion_length=12",
    "max_steps=200": "max_steps=2",
    "num_generations=8": "num_generations=4",
    "learning_rate=1e-6": "learning_rate=1e-3",
    "per_device_eval_batch_size=8": "per_device_eval_batch_size=4",
    "args = EdgeGRPOConfig(": "args = EdgeGRPOConfig(**CPU_RUN_SETTINGS,",
}


def guide_block(marker: str, language: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```", text, flags=re.S)
    assert match, f"the guide has no {language} block after <!-- {marker} -->"
    return match.group(1)


@pytest.fixture
def guide_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the guide's data file and reward file, as the working directory and on sys.path; the reward
    registry is restored afterwards (the guide's file registers a reward)."""
    monkeypatch.setattr(rewards, "REWARDS", dict(rewards.REWARDS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"question": f"What is {a} + {b}?", "final_answer": a + b} for a in range(4) for b in range(5)]
    (tmp_path / "my_problems.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "my_rewards.py").write_text(guide_block("guide-reward", "python"))
    yield tmp_path
    import sys

    sys.modules.pop("my_rewards", None)


def test_guide_example_trains_and_evaluates(tiny_model_path, guide_dir, capsys):
    code = guide_block("guide-example", "python")
    assert '"Qwen/Qwen2.5-0.5B-Instruct"' in code
    code = code.replace('"Qwen/Qwen2.5-0.5B-Instruct"', repr(str(tiny_model_path)))
    for old, new in SWAPS.items():
        assert old in code, old
        code = code.replace(old, new)

    namespace: dict = {"CPU_RUN_SETTINGS": CPU_RUN_SETTINGS}
    exec(compile(code, str(GUIDE), "exec"), namespace)

    trainer, metrics = namespace["trainer"], namespace["metrics"]
    assert trainer.state.global_step == 2
    assert 0.0 <= metrics["eval_reward"] <= 1.0
    assert "held-out reward:" in capsys.readouterr().out
    assert (guide_dir / "my-run" / "config.json").is_file() and (
        guide_dir / "my-run" / "tokenizer_config.json"
    ).is_file()
    # the reward it trained with is the guide's own, logged under its name, and GEC ran on it
    logs = trainer.state.log_history
    assert any("rewards/exact_boxed_reward/mean" in entry for entry in logs)
    assert any("gec/corrected_share" in entry for entry in logs)
    # and it scores what it says: exact \boxed{} match, spaces ignored; registered as a correctness reward
    reward = namespace["exact_boxed_reward"]
    assert reward(["so \\boxed{4 2}", "\\boxed{41}", "no box"], answer=["42", "42", "42"]) == [1.0, 0.0, 0.0]
    assert rewards.REWARDS["exact_boxed"].correctness and rewards.REWARDS["exact_boxed"].max_value == 1.0


def test_guide_command_line_resolves(guide_dir):
    from typer.testing import CliRunner

    from edge_trl.cli.main import app

    command = shlex.split(guide_block("cli-reward", "bash").replace("\\\n", " "))
    assert command[:2] == ["edge-trl", "train"] and "--dry-run" in command
    result = CliRunner().invoke(app, command[1:])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("accelerate launch"))
    run = yaml.safe_load("\n".join(lines[start + 1 :]))
    assert run["reward"] == "my_rewards.py:exact_boxed_reward"
    assert (run["prompt_column"], run["answer_column"]) == ("question", "final_answer")
