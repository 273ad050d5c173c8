"""A method and a reward of one file each (the documented examples), from Python and from the command line; the
registries; GEC's correctness rule; rewards by import path, file and reward model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_trl import EdgeGRPOTrainer, config_schema
from edge_trl.cli.main import app
from edge_trl.methods import METHODS, describe, load_plugin, method_presets
from edge_trl.rewards import REWARDS, get_reward_funcs, register_reward, reward_help
from edge_trl.testing import digit_share_reward, tiny_addition_dataset

from _helpers import logged, tiny_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plugins"
DATASET = tiny_addition_dataset(32)
runner = CliRunner()


@pytest.fixture(scope="module")
def plugin_files(tmp_path_factory) -> tuple[Path, Path]:
    """The two documented examples, each copied alone into a folder of its own: one file per method, per reward."""
    method_dir, reward_dir = tmp_path_factory.mktemp("my_method"), tmp_path_factory.mktemp("my_reward")
    method = Path(shutil.copy(EXAMPLES / "entropy_stop.py", method_dir))
    reward = Path(shutil.copy(EXAMPLES / "length_penalty.py", reward_dir))
    assert [p.name for p in method_dir.iterdir()] == ["entropy_stop.py"]
    assert [p.name for p in reward_dir.iterdir()] == ["length_penalty.py"]
    assert all(len(p.read_text().splitlines()) <= 45 for p in (method, reward))
    load_plugin(str(method))
    load_plugin(str(reward))
    return method, reward


def test_the_docs_show_the_tested_examples():
    layout = (Path(__file__).resolve().parents[1] / "docs" / "layout.md").read_text()
    for name in ("entropy_stop.py", "length_penalty.py"):
        assert f'--8<-- "examples/plugins/{name}"' in layout


def test_a_one_file_method_and_reward_train_from_python(tmp_path, tiny_model_path, plugin_files):
    assert "entropy_stop" in METHODS and "entropy-stop" in method_presets() and "length_penalty" in REWARDS
    length_penalty = REWARDS["length_penalty"].func
    args = tiny_config(
        tmp_path, cov_mode="entropy_stop", method_kwargs={"entropy_stop_ratio": 0.25}, max_steps=1,
        reward_kwargs={"length_penalty": {"max_length": 5}},
    )  # fmt: skip
    assert describe(args) == "entropy_stop"
    trainer = EdgeGRPOTrainer(
        str(tiny_model_path), reward_funcs=[digit_share_reward, length_penalty], args=args, train_dataset=DATASET
    )
    trainer.train()
    share = logged(trainer, "edge/entropy_stop_selected_share")
    assert share and 0.2 < share[0] <= 0.25  # k = int(0.25 * n) of the micro-batch's valid tokens
    assert logged(trainer, "rewards/length_penalty/mean")[0] < 0  # max_length=5 was bound (default 1000: 0)


def test_a_plugin_field_is_checked_and_unknown_method_kwargs_refused(tmp_path, plugin_files):
    with pytest.raises(ValueError, match=r"entropy_stop_ratio=2 must be a share"):
        tiny_config(tmp_path, cov_mode="entropy_stop", method_kwargs={"entropy_stop_ratio": 2})
    with pytest.raises(ValueError, match=r"method_kwargs has \['entropy_stop_ration'\].*entropy_stop_ratio"):
        tiny_config(tmp_path, method_kwargs={"entropy_stop_ration": 0.1})


def test_reward_kwargs_naming_no_reward_is_refused(tmp_path, tiny_model_path):
    args = tiny_config(tmp_path, reward_kwargs={"lenght_penalty": {"max_length": 5}})
    with pytest.raises(ValueError, match=r"reward_kwargs names \['lenght_penalty'\]"):
        EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)


def test_the_flag_cache_and_the_flags_see_a_plugin(plugin_files, monkeypatch, tmp_path):
    from edge_trl import methods

    monkeypatch.setenv(config_schema.CACHE_ENV, str(tmp_path / "cache"))
    with_plugin = config_schema.cache_key()
    fields = config_schema.trainer_fields()
    assert "entropy_stop" in fields["cov_mode"].choices and fields["entropy_stop_ratio"].kind == "float"
    monkeypatch.setattr(methods, "_PLUGIN_FILES", [])
    assert config_schema.cache_key() != with_plugin  # the cache is keyed on the plugin's file


def test_a_plugin_from_the_command_line_dry_run(tmp_path, plugin_files, tiny_model_path, data_file):
    method, reward = plugin_files
    result = runner.invoke(app, [
        "train", "--plugin", str(method), "--method", "entropy-stop", "--entropy-stop-ratio", "0.3",
        "--reward", f"accuracy,{reward}:length_penalty", "--set", "reward_kwargs={length_penalty: {max_length: 5}}",
        "--model", str(tiny_model_path), "--dataset", str(data_file), "--dry-run",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cov_mode: entropy_stop" in result.output and "entropy_stop_ratio: 0.3" in result.output
    assert "plugin:" in result.output and "length_penalty" in result.output
    bad = runner.invoke(app, ["train", "--plugin", str(method), "--entropy-stop-ratio", "x", "--dry-run"])
    assert bad.exit_code == 2 and "entropy_stop_ratio" in bad.output
    # a recipe names the plugin and sets its field like any other key
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"plugin: {method}\nmethod: entropy-stop\nentropy_stop_ratio: 0.4\n")
    from_recipe = runner.invoke(app, ["train", "--config", str(recipe), "--model", str(tiny_model_path),
                                      "--dataset", str(data_file), "--dry-run"])  # fmt: skip
    assert from_recipe.exit_code == 0, from_recipe.output
    assert "entropy_stop_ratio: 0.4" in from_recipe.output and "cov_mode: entropy_stop" in from_recipe.output
    # the plugin's own check runs before any process starts
    common = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--dry-run"]
    refused = runner.invoke(app, ["train", "--plugin", str(method), "--entropy-stop-ratio", "2", *common])
    assert refused.exit_code == 2 and "entropy_stop_ratio=2.0 must be a share of tokens" in refused.output


@pytest.mark.slow
def test_a_plugin_trains_from_the_command_line(tmp_path, plugin_files, tiny_model_path, data_file):
    """The worker process imports the plugin too: its mode acts and the file reward gets its bound setting."""
    method, reward = plugin_files
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "edge_trl.cli.main", "train", "--plugin", str(method), "--method", "entropy-stop",
         "--entropy-stop-ratio", "0.25", "--reward", f"boxed_answer,{reward}:length_penalty",
         "--set", "reward_kwargs={length_penalty: {max_length: 5}}", "--model", str(tiny_model_path),
         "--dataset", str(data_file), "--accelerate-config", "cpu", "--num-processes", "1", "--max-steps", "1",
         "--set", "max_completion_length=12", "--set", "num_generations=4", "--set", "per_device_train_batch_size=4",
         "--set", "steps_per_generation=1", "--output-dir", str(out), "--set", "save_steps=1"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    history = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    step = next(e for e in history if "loss" in e)
    assert 0.2 < step["edge/entropy_stop_selected_share"] <= 0.25
    assert step["rewards/length_penalty/mean"] < 0


# -- registries --------------------------------------------------------------------------------------------------------


def test_reward_help_is_generated_from_the_registry():
    assert all(name in reward_help() for name in REWARDS)
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert all(name in result.output for name in REWARDS)


def test_rewards_by_import_path_file_and_model(tmp_path, tiny_model_path):
    import trl.rewards

    assert get_reward_funcs("trl.rewards.accuracy_reward") == [trl.rewards.accuracy_reward]
    file = tmp_path / "my_rewards.py"
    file.write_text("def always_half(completions, **kwargs):\n    return [0.5] * len(completions)\n")
    (always_half,) = get_reward_funcs(f"{file}:always_half")
    assert always_half(["a", "b"]) == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"Unknown reward 'acuracy'.*import path.*file.*reward model"):
        get_reward_funcs("acuracy")
    with pytest.raises(ValueError, match=r"has no function 'missing'"):
        get_reward_funcs(f"{file}:missing")
    # A reward model: a local folder of a sequence-classification model, built here; TRL loads it.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = tmp_path / "reward-model"
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_path), num_labels=1)
    base.config.pad_token_id = AutoTokenizer.from_pretrained(str(tiny_model_path)).pad_token_id
    base.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(str(tiny_model_path)).save_pretrained(model_dir)
    assert get_reward_funcs(f"format,{model_dir}") == [REWARDS["format"].func, str(model_dir)]
    args = tiny_config(tmp_path / "rm", max_steps=1)
    trainer = EdgeGRPOTrainer(
        str(tiny_model_path), reward_funcs=get_reward_funcs(str(model_dir)), args=args, train_dataset=DATASET
    )
    trainer.train()
    assert logged(trainer, "rewards/reward-model/std")[0] > 0  # the model's scores, which differ by completion


# -- GEC decides by a named correctness reward ---------------------------------------------------------------------------


@register_reward("every_other", max_value=1.0, correctness=True)
def every_other(completions, **kwargs):
    """Test-only correctness reward: every other response of a batch is right (half of each group)."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def test_gec_decides_by_the_correctness_reward_not_the_sum(tmp_path, tiny_model_path, plugin_files):
    """With accuracy + a length penalty, the weighted sum never reaches the sum of the weights: every response used
    to count as wrong. The correctness reward decides now."""
    length_penalty = REWARDS["length_penalty"].func
    args = tiny_config(tmp_path, gec=True, gec_max_new_tokens=40, max_steps=1)
    trainer = EdgeGRPOTrainer(
        str(tiny_model_path), reward_funcs=[every_other, length_penalty], args=args, train_dataset=DATASET
    )
    trainer.train()
    before, corrected = logged(trainer, "gec/accuracy_before")[0], logged(trainer, "gec/corrected_share")[0]
    assert before == 0.5 and corrected == 0.5  # the weighted sum (never >= 1 + 0) would have called all wrong
    assert trainer._gec_rule.reward == "every_other" and trainer._gec_rule.threshold == 1.0


def test_gec_refuses_when_no_reward_tells_correctness(tmp_path, tiny_model_path):
    args = tiny_config(tmp_path, gec=True, gec_max_new_tokens=40)
    with pytest.raises(ValueError, match=r"\['digit_share_reward'\].*gec_reward_name") as error:
        EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=args, train_dataset=DATASET)
    assert "correctness reward" in str(error.value)
    # named explicitly, it decides (at 1.0, having declared no maximum)
    named = tiny_config(tmp_path, gec=True, gec_max_new_tokens=40, gec_reward_name="digit_share_reward")
    trainer = EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=named, train_dataset=DATASET)
    assert trainer._gec_rule.reward == "digit_share_reward"


def test_the_sum_decides_only_when_every_reward_declares_its_maximum(tmp_path, tiny_model_path):
    args = tiny_config(tmp_path, gec=True, gec_max_new_tokens=40)
    rewards = get_reward_funcs("format")  # no correctness reward, but a declared maximum
    trainer = EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=rewards, args=args, train_dataset=DATASET)
    assert trainer._gec_rule.reward is None and trainer._gec_rule.threshold == 1.0
    shipped = EdgeGRPOTrainer(
        str(tiny_model_path), reward_funcs=get_reward_funcs("format,accuracy"), args=args, train_dataset=DATASET
    )
    assert shipped._gec_rule.reward == "accuracy_reward"
