"""`edge-trl train`'s generated flags, the config-field cache behind them, the typed run spec, and lazy start-up."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge_trl import config_schema, launch
from edge_trl.cli.main import app
from edge_trl.config_schema import build_trainer_fields, trainer_fields
from edge_trl.run_spec import RunSpec

runner = CliRunner()
HEAVY_MODULES = ("torch", "trl", "transformers", "datasets", "math_verify")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, private cache directory for the config-field schema."""
    monkeypatch.setenv(config_schema.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / config_schema.CACHE_FILE


def dry_run(*args: str) -> tuple[str, dict, str]:
    result = runner.invoke(app, ["train", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("accelerate launch"))
    return lines[start], yaml.safe_load("\n".join(lines[start + 1 :])), "\n".join(lines[:start])


# -- every config field is a flag --------------------------------------------------------------------------------------


def test_help_lists_every_config_field_as_a_flag_within_80_columns():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    shown = {line.split()[0] for line in result.output.splitlines() if line.startswith("  --")}
    for name, config_field in trainer_fields().items():
        assert (f"--[no-]{config_field.flag[2:]}" if config_field.kind == "bool" else config_field.flag) in shown, name
    assert "--model TEXT" in result.output and "--[no-]lora " in result.output  # the RunSpec keys
    assert "edge-trl (EdgeGRPOConfig):" in result.output and "GRPO (TRL GRPOConfig):" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_trl_style_flags_reach_the_trainer(tiny_model_path, data_file):
    _, spec, _ = dry_run(
        "--model", str(tiny_model_path), "--dataset", str(data_file),
        "--per-device-train-batch-size", "4", "--num_generations", "4", "--max-completion-length", "16",
        "--no-gradient-checkpointing", "--eda", "--cov-mode", "clip-cov", "--eda-max-scale", "none",
        "--report-to", "[tensorboard]", "--lr-scheduler-type", "cosine", "--hub-private",
    )  # fmt: skip
    trainer = spec["trainer"]
    assert (trainer["per_device_train_batch_size"], trainer["num_generations"], trainer["max_completion_length"]) == (
        4, 4, 16,
    )  # fmt: skip
    # written under transformers 5's name (the old one makes it warn); the flag beats the CPU default
    assert trainer["activation_checkpointing"] is False and trainer["eda"] is True
    assert "gradient_checkpointing" not in trainer
    assert trainer["cov_mode"] == "clip_cov" and trainer["eda_max_scale"] is None
    assert trainer["report_to"] == ["tensorboard"] and trainer["lr_scheduler_type"] == "cosine"
    assert trainer["hub_private_repo"] is True


def test_only_given_flags_override_and_precedence_holds(tmp_path, tiny_model_path, data_file):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        model: {tiny_model_path}
        dataset: {data_file}
        method: edge
        learning_rate: 1.0e-5
        temperature: 0.7
        top_p: 0.9
        max_completion_length: 32
    """)
    )
    _, spec, _ = dry_run("--config", str(recipe), "--set", "temperature=0.8", "--set", "top_p=0.95", "--top-p", "0.5")
    trainer = spec["trainer"]
    assert trainer["num_generations"] == 8  # CLI default (edge_trl/presets.py)
    assert trainer["eda"] is True and trainer["gec"] is True  # method preset; the --eda flag was not given
    assert trainer["learning_rate"] == 1e-5 and trainer["max_completion_length"] == 32  # recipe over CLI defaults
    assert trainer["temperature"] == 0.8  # --set over the recipe
    assert trainer["top_p"] == 0.5  # a given flag over --set
    _, spec, _ = dry_run("--config", str(recipe), "--no-eda")
    assert spec["trainer"]["eda"] is False and spec["trainer"]["gec"] is True  # a given flag over the preset


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eda-scope", "global"], "eda_scope='global' is not one of: group, batch"),
        (["--hub-strategy", "sometimes"], "hub_strategy='sometimes' is not one of: end, every_save"),
        (["--set", "save_strategy=hourly"], "save_strategy='hourly' is not one of"),
        (["--num-generations", "four"], "num_generations='four' has the wrong type; expected a int"),
        (["--template", "markdown"], "template='markdown' is not one of: chat, plain"),
    ],
)
def test_choices_and_types_come_from_the_field_metadata(tiny_model_path, data_file, args, message):
    result = runner.invoke(app, ["train", "--model", str(tiny_model_path), "--dataset", str(data_file), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_hyphenated_kl_cov_gets_the_no_op_warning(as_gpu, tiny_model_path, data_file):
    """`--set cov_mode=kl-cov` used to skip the warning: the check normalised a copy, the warning read the original."""
    for args in (["--set", "cov_mode=kl-cov"], ["--cov-mode", "KL-Cov"]):
        _, spec, messages = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file), "--method", "grpo",
                                    *args)  # fmt: skip
        assert spec["trainer"]["cov_mode"] == "kl_cov"
        assert "warning: cov_mode='kl_cov' is a no-op" in messages and "num_iterations=2" in messages


# -- --dry-run without a GPU -------------------------------------------------------------------------------------------


@pytest.fixture
def as_gpu(monkeypatch):
    monkeypatch.setattr(launch, "gpu_count", lambda precise=False: 4)


@pytest.mark.parametrize("config", ["fsdp", "single_gpu", "multi_gpu", "zero3"])
def test_dry_run_of_a_gpu_config_without_gpu_warns_and_a_real_run_refuses(monkeypatch, tiny_model_path, data_file,
                                                                            config):  # fmt: skip
    monkeypatch.setattr(launch, "gpu_count", lambda precise=False: 0)
    args = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--accelerate-config", config]
    command, spec, messages = dry_run(*args)
    assert "warning: this machine has no GPU" in messages
    assert f"{config}.yaml --num_processes" in command and spec["accelerate_config"] == config
    if config != "zero3":  # a GPU-only config: the command and settings are for a GPU machine
        assert "use_cpu" not in spec["trainer"] and spec["trainer"]["bf16"] is True  # the GPU defaults
        real = runner.invoke(app, ["train", *args])
        assert real.exit_code == 2 and f"--accelerate-config {config} needs a GPU" in real.output, real.output


# -- the config-field cache --------------------------------------------------------------------------------------------


def test_cached_schema_equals_the_live_dataclass_fields(cache):
    first = trainer_fields()
    assert cache.is_file() and not list(cache.parent.glob("*.tmp"))  # written atomically: no temporary left
    stored = json.loads(cache.read_text())
    assert stored["key"] == config_schema.cache_key()
    live = {config_field.name: config_field for config_field in build_trainer_fields()}
    assert trainer_fields() == first == live  # the second call reads the file
    from edge_trl.methods.covariance import COV_MODES

    assert live["cov_mode"].choices == ("none", *COV_MODES) and live["eda"].owner == "EdgeGRPOConfig"


def test_cache_is_rebuilt_when_its_key_changes_or_it_is_corrupt(cache, monkeypatch):
    builds = []
    real_build = config_schema.build_trainer_fields
    monkeypatch.setattr(config_schema, "build_trainer_fields", lambda: builds.append(1) or real_build())
    trainer_fields()
    trainer_fields()
    assert len(builds) == 1  # fresh cache: read, not rebuilt
    monkeypatch.setattr(config_schema, "cache_key", lambda: "trl==9.9 transformers==9.9")  # e.g. TRL upgraded
    trainer_fields()
    assert len(builds) == 2 and json.loads(cache.read_text())["key"] == "trl==9.9 transformers==9.9"
    cache.write_text('{"key": "trl==9.9 transformers==9.9", "fields": [{"nam')  # a half-written file
    assert trainer_fields() == {config_field.name: config_field for config_field in real_build()}
    assert len(builds) == 3


def test_cache_key_follows_the_source_of_the_fields(tmp_path, monkeypatch):
    source = tmp_path / "config.py"
    source.write_text("eda: bool = False\n")
    monkeypatch.setattr(config_schema, "SOURCE_FILES", (source,))
    before = config_schema.cache_key()
    source.write_text("eda: bool = False\nnew_knob: int = 3\n")
    assert config_schema.cache_key() != before


def test_unwritable_cache_dir_still_works(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(config_schema.CACHE_ENV, str(blocker / "cache"))  # cannot be created
    assert "learning_rate" in trainer_fields()


def test_a_new_config_field_becomes_a_flag_with_no_cli_edit(cache, monkeypatch, tiny_model_path, data_file):
    from edge_trl.config import EdgeGRPOConfig

    @dataclasses.dataclass
    class WithNewField(EdgeGRPOConfig):
        new_knob: int = dataclasses.field(default=3, metadata={"help": "A knob added after the CLI was written."})

    # What editing config.py does: the cache key changes and the live dataclass has the field.
    monkeypatch.setattr(config_schema, "cache_key", lambda: "edited config.py")
    monkeypatch.setattr(config_schema, "build_trainer_fields", lambda: config_schema.config_fields(WithNewField))
    assert "--new-knob INT" in runner.invoke(app, ["train", "--help"]).output
    _, spec, _ = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file), "--new-knob", "5")
    assert spec["trainer"]["new_knob"] == 5


# -- one typed run spec, launcher to worker ----------------------------------------------------------------------------


def test_run_spec_round_trips_to_the_worker(tmp_path, tiny_model_path, data_file):
    from edge_trl import worker

    prepared = launch.resolve(
        launch.TrainRequest(
            flags={
                "model": str(tiny_model_path),
                "dataset": str(data_file),
                "lora": True,
                "lora_r": 4,
                "output_dir": str(tmp_path / "run"),
                "per_device_train_batch_size": 4,
                "num_generations": 4,
                "max_completion_length": 8,
            },
            overrides=["cov_mode=Clip-Cov"],
            dry_run=True,
        ),
        gpus=0,
    )
    prepared.run.save(prepared.run_file)
    loaded = RunSpec.load(prepared.run_file)
    assert loaded == prepared.run and loaded.trainer["cov_mode"] == "clip_cov"
    trainer = worker.build_trainer(loaded)
    assert trainer.args.per_device_train_batch_size == 4 and trainer.args.cov_mode == "clip_cov"
    assert trainer.args.output_dir == str(tmp_path / "run")
    assert any("lora_A" in name for name, _ in trainer.model.named_parameters())


def test_last_checkpoint_is_the_highest_step(tmp_path):
    from edge_trl.checkpoints import checkpoint_dirs, last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-11").write_text("a file, not a checkpoint")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert last_checkpoint(tmp_path).name == "checkpoint-10"


# -- start-up: nothing heavy is imported -------------------------------------------------------------------------------

PROBE = """
import sys
sys.argv = ["edge-trl", *sys.argv[1:]]
from edge_trl.cli.main import main
try:
    main()
except SystemExit as exit:
    code = exit.code or 0
else:
    code = 0
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def probe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY_MODULES), *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)  # fmt: skip


def test_importing_the_cli_leaves_torch_trl_transformers_out():
    code = f"import sys, edge_trl.cli.main, edge_trl; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    lazy = subprocess.run([sys.executable, "-c", "from edge_trl import EdgeGRPOTrainer, kl_cov_mask; print('ok')"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert lazy.stdout.strip() == "ok", lazy.stderr[-2000:]


def test_start_up_commands_run_without_heavy_imports(tmp_path):
    env = {config_schema.CACHE_ENV: str(tmp_path / "cache")}
    assert probe("train", "--help", env=env).returncode == 0  # cold cache: builds the schema (imports trl)
    expected = {
        ("--help",): "train",
        ("configs",): "zero3",
        ("train", "--help"): "--per-device-train-batch-size",
        ("train", "--dry-run", "--output-dir", str(tmp_path / "run")): "embedded:addition",
    }
    for args, text in expected.items():
        result = probe(*args, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert text in result.stdout, args
        assert "HEAVY:\n" in result.stderr, (args, result.stderr[-500:])  # warm cache: none of the heavy modules


def test_machine_rank_outside_the_machines_is_refused(as_gpu, tiny_model_path, data_file):
    args = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--accelerate-config", "zero3"]
    result = runner.invoke(app, ["train", *args, "--num-machines", "2", "--machine-rank", "2", "--dry-run"])
    assert result.exit_code == 2 and "0 <= machine_rank < num_machines" in result.output, result.output
