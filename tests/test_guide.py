"""The how-to guide's Python example (docs/guides/own-data-and-reward.md) runs as written: its code block is executed
with only the model and the sizes swapped for the tiny offline model, on a JSONL file of the guide's layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def guide_example() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r"<!-- guide-example -->\n```python\n(.*?)```", text, flags=re.S)
    assert match, "the guide has no example after <!-- guide-example -->"
    return match.group(1)


def test_guide_example_trains_and_evaluates(tiny_model_path, tmp_path, monkeypatch, capsys):
    code = guide_example()
    assert '"Qwen/Qwen2.5-0.5B-Instruct"' in code
    code = code.replace('"Qwen/Qwen2.5-0.5B-Instruct"', repr(str(tiny_model_path)))
    for old, new in SWAPS.items():
        assert old in code, old
        code = code.replace(old, new)
    rows = [{"question": f"What is {a} + {b}?", "final_answer": a + b} for a in range(4) for b in range(5)]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_problems.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    namespace: dict = {"CPU_RUN_SETTINGS": CPU_RUN_SETTINGS}
    exec(compile(code, str(GUIDE), "exec"), namespace)

    trainer, metrics = namespace["trainer"], namespace["metrics"]
    assert trainer.state.global_step == 2
    assert 0.0 <= metrics["eval_reward"] <= 1.0
    assert "held-out reward:" in capsys.readouterr().out
    assert (tmp_path / "my-run" / "config.json").is_file() and (tmp_path / "my-run" / "tokenizer_config.json").is_file()
    # the reward it trained with is the guide's own, logged under its name
    assert any("rewards/exact_boxed_reward/mean" in entry for entry in trainer.state.log_history)
    # and it scores what it says: exact \boxed{} match, spaces ignored
    reward = namespace["exact_boxed_reward"]
    assert reward(["so \\boxed{4 2}", "\\boxed{41}", "no box"], answer=["42", "42", "42"]) == [1.0, 0.0, 0.0]
