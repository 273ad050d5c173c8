"""`edge-trl train` and `edge-trl configs`: dry runs, bad input, and real launches through accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge_trl import launch
from edge_trl.cli.main import app
from edge_trl.presets import METHODS, shipped_accelerate_configs, shipped_recipes
from edge_trl.run_spec import run_keys

runner = CliRunner()
TINY_RUN = ["--set", "max_completion_length=16", "--set", "num_generations=4", "--set", "per_device_train_batch_size=4"]


@pytest.fixture
def as_gpu_machine(monkeypatch):
    """Pretend the machine has 4 CUDA devices: the GPU configs cannot run here, but their dry runs can."""
    monkeypatch.setattr(launch, "gpu_count", lambda precise=False: 4)


def dry_run(*args: str) -> tuple[str, dict]:
    result = runner.invoke(app, ["train", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    command_index = next(i for i, line in enumerate(lines) if line.startswith("accelerate launch"))
    return lines[command_index], yaml.safe_load("\n".join(lines[command_index + 1 :]))


def fail(*args: str) -> str:
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


# -- dry runs ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "zero3_offload", "fsdp"])
def test_dry_run_for_each_gpu_config(as_gpu_machine, tiny_model_path, data_file, config):
    command, spec = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file), "--accelerate-config", config)
    assert f"--config_file {shipped_accelerate_configs()[config]}" in command
    expected_processes = 1 if config == "single_gpu" else 4
    assert f"--num_processes {expected_processes}" in command and spec["num_processes"] == expected_processes
    assert command.endswith(f"worker.py --run {spec['trainer']['output_dir']}/edge_trl_run.yaml")
    assert "use_cpu" not in spec["trainer"]
    assert spec["trainer"]["bf16"] and spec["trainer"]["activation_checkpointing"]  # the GPU defaults, shown


def test_dry_run_cpu_config(tiny_model_path, data_file):
    command, spec = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file))  # no GPU: cpu by default
    assert "cpu.yaml --num_processes 2" in command and "--multi_gpu" in command
    assert spec["trainer"]["use_cpu"] and spec["trainer"]["bf16"] is False
    assert spec["accelerate_config"] == "cpu"
    single, _ = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file), "--num-processes", "1")
    assert "--cpu --num_processes 1" in single


def test_multi_node_options_are_passed_through(as_gpu_machine, tiny_model_path, data_file):
    command, _spec = dry_run(
        "--model", str(tiny_model_path), "--dataset", str(data_file), "--accelerate-config", "zero3",
        "--num-machines", "2", "--machine-rank", "1", "--main-process-ip", "10.0.0.1", "--main-process-port", "29555",
    )  # fmt: skip
    assert "--num_processes 8 --num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1" in command
    assert "--main_process_port 29555" in command


@pytest.mark.parametrize("method", list(METHODS))
def test_dry_run_for_each_method(tiny_model_path, data_file, method):
    _, spec = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file), "--method", method)
    for key, value in METHODS[method].items():
        assert spec["trainer"][key] == value
    assert spec["method"] == method


def test_default_method_is_edge_and_flags_override_presets(tiny_model_path, data_file):
    _, spec = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file))
    assert spec["trainer"]["eda"] and spec["trainer"]["gec"] and spec["reward"] == "format,accuracy"
    _, spec = dry_run("--model", str(tiny_model_path), "--dataset", str(data_file), "--method", "kl-cov",
                      "--set", "num_iterations=3", "--set", "kl_cov_coef=0.5", "--seed", "7")  # fmt: skip
    assert spec["trainer"]["num_iterations"] == 3 and spec["trainer"]["kl_cov_coef"] == 0.5
    assert spec["trainer"]["seed"] == 7


def test_model_alias_and_lora_options(tiny_model_path, data_file):
    _, spec = dry_run("--model", "qwen2.5-math-1.5b", "--dataset", str(data_file), "--lora", "--lora-r", "8")
    assert spec["model"] == "Qwen/Qwen2.5-Math-1.5B"
    lora = {key: spec[key] for key in ("lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")}
    assert lora == {
        "lora": True,
        "lora_r": 8,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": "all-linear",
    }


def test_yaml_recipe_with_flag_override(tmp_path, tiny_model_path, data_file):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        model: {tiny_model_path}
        dataset: {data_file}
        method: clip-cov
        learning_rate: 1.0e-5
        num_generations: 4
        clip_cov_ratio: 0.001
        lora: {{r: 4}}
    """)
    )
    _, spec = dry_run("--config", str(recipe), "--set", "learning_rate=3e-6", "--lora-alpha", "16")
    trainer = spec["trainer"]
    assert trainer["learning_rate"] == 3e-6  # the flag wins over the recipe
    assert trainer["num_generations"] == 4 and trainer["clip_cov_ratio"] == 0.001 and trainer["cov_mode"] == "clip_cov"
    assert spec["lora"] and spec["lora_r"] == 4 and spec["lora_alpha"] == 16
    recipe.write_text(recipe.read_text() + "learning_rat: 1.0\n")
    assert "unknown setting 'learning_rat'. Did you mean 'learning_rate'" in fail("--config", str(recipe))


def test_configs_command_lists_and_prints():
    result = runner.invoke(app, ["configs"])
    assert result.exit_code == 0
    for name in [*shipped_accelerate_configs(), *shipped_recipes()]:
        assert name in result.output
    assert set(shipped_accelerate_configs()) >= {"single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "fsdp", "cpu"}
    printed = runner.invoke(app, ["configs", "zero2"])
    assert printed.exit_code == 0 and "zero_stage: 2" in printed.output
    recipe = runner.invoke(app, ["configs", "edge_grpo_qwen2.5_math_1.5b"])
    assert "method: edge" in recipe.output
    assert runner.invoke(app, ["configs", "zero9"]).exit_code == 2


def test_shipped_configs_are_valid_for_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    for name, path in shipped_accelerate_configs().items():
        config = load_config_from_file(str(path))
        assert config.num_machines >= 1, name
    for name, path in shipped_recipes().items():
        settings = launch.load_recipe(path)
        assert settings["method"] in METHODS and set(settings) - run_keys(), name  # run keys and trainer fields


# -- bad input ---------------------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(tmp_path, tiny_model_path, data_file, monkeypatch):
    model, data = ["--model", str(tiny_model_path)], ["--dataset", str(data_file)]
    assert "Did you mean 'qwen2.5-math-7b'" in fail("--model", "qwen2.5-math-7", *data)
    assert f"method='edg' is not one of: {', '.join(METHODS)}" in fail(*model, *data, "--method", "edg")
    assert "Did you mean 'edge'?" in fail(*model, *data, "--method", "edg")
    assert "no such file or folder" in fail(*model, "--dataset", str(tmp_path / "missing.jsonl"))
    assert "no answer column 'final'" in fail(*model, *data, "--answer-column", "final")
    assert "needs a GPU" in fail(*model, *data, "--accelerate-config", "multi_gpu")
    assert "not a shipped config" in fail(*model, *data, "--accelerate-config", "tpu_pod")
    assert "unknown setting 'lr'" in fail(*model, *data, "--set", "lr=1e-5")
    assert "learning_rate='fast' has the wrong type" in fail(*model, *data, "--set", "learning_rate=fast")
    assert "no checkpoint-* folder" in fail(*model, *data, "--output-dir", str(tmp_path), "--resume-from-checkpoint",
                                            "last")  # fmt: skip
    assert "need --lora" in fail(*model, *data, "--lora-r", "8")
    assert "not a multiple of num_generations=3" in fail(*model, *data, "--set", "num_generations=3")
    assert "gec_reflect_prob + gec_answer_prob" in fail(*model, *data, "--set", "gec_reflect_prob=0.9")
    assert "Unknown reward 'acc'" in fail(*model, *data, "--reward", "acc")
    # no Hugging Face login: refuse to start a run whose push would fail at the end
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert "--push-to-hub needs a Hugging Face token" in fail(*model, *data, "--push-to-hub")


def test_missing_deepspeed_is_a_clear_error(tiny_model_path, data_file, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)
    )
    output = fail("--model", str(tiny_model_path), "--dataset", str(data_file), "--accelerate-config", "zero2")
    assert 'pip install --no-build-isolation "edge-trl[deepspeed]"' in output


def test_warnings_for_no_op_kl_cov_and_lora_with_zero3(as_gpu_machine, tiny_model_path, data_file):
    result = runner.invoke(app, ["train", "--model", str(tiny_model_path), "--dataset", str(data_file), "--method",
                                 "kl-cov", "--set", "steps_per_generation=1", "--lora", "--accelerate-config", "zero3",
                                 "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: cov_mode='kl_cov' is a no-op" in result.output
    assert "warning: LoRA with ZeRO-3" in result.output


# -- real launches -----------------------------------------------------------------------------------------------------


def edge_trl(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge_trl.cli.main", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_train_two_cpu_processes_with_lora_then_resume(tmp_path, tiny_model_path, data_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    common = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--lora", "--accelerate-config", "cpu",
              "--num-processes", "2", "--output-dir", str(out), *TINY_RUN, "--set", "gec_max_new_tokens=96",
              "--set", "save_steps=1"]  # fmt: skip
    first = edge_trl("train", *common, "--max-steps", "2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "--num_processes 2" in first.stderr and "training finished" in first.stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoint-2" / "adapter_config.json").is_file()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    for folder in (out, out / "checkpoint-2"):  # the adapter loads on its base model
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), folder)
        assert any("lora_A" in name for name, _ in model.named_parameters())

    resumed = edge_trl("train", *common, "--max-steps", "3", "--resume-from-checkpoint", "last")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]  # continued, not restarted


HUB_MOCK = '''
"""Test-only: the Hub's network boundary, recorded into $EDGE_TEST_HUB_DIR instead of sent."""
import json, os, shutil
from concurrent.futures import Future
from pathlib import Path
import huggingface_hub

ROOT = Path(os.environ["EDGE_TEST_HUB_DIR"])

def _record(kind, **info):
    with open(ROOT / "calls.jsonl", "a") as f:
        f.write(json.dumps({"call": kind, **{k: str(v) for k, v in info.items() if k != "token"}}) + "\\n")

def create_repo(self, repo_id, *args, **kwargs):
    _record("create_repo", repo_id=repo_id, private=kwargs.get("private"))
    return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

def upload_folder(self, *args, repo_id=None, folder_path=None, run_as_future=False, **kwargs):
    future = Future()
    if os.environ.get("EDGE_TEST_HUB_FAIL"):
        if not run_as_future:
            raise ConnectionError("the Hub is unreachable")
        future.set_exception(ConnectionError("the Hub is unreachable"))
        return future
    target = ROOT / "uploaded" / repo_id.replace("/", "__")
    ignore = shutil.ignore_patterns(*(kwargs.get("ignore_patterns") or []))
    shutil.copytree(folder_path, target, dirs_exist_ok=True, ignore=ignore)
    _record("upload_folder", repo_id=repo_id)
    future.set_result(None)
    return future if run_as_future else None

def whoami(self, *args, **kwargs):
    return {"name": "me"}

huggingface_hub.HfApi.create_repo = create_repo
huggingface_hub.HfApi.whoami = whoami
huggingface_hub.HfApi.upload_folder = upload_folder
'''


@pytest.mark.slow
def test_push_to_hub_uploads_model_and_card(tmp_path, tiny_model_path, data_file):
    hub = tmp_path / "hub"
    hub.mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HUB_MOCK)
    env = {"PYTHONPATH": str(tmp_path / "site"), "EDGE_TEST_HUB_DIR": str(hub), "HF_TOKEN": "hf_secretTOKEN123",
           "HF_HUB_OFFLINE": "0"}  # fmt: skip  # the mock is the Hub's network boundary
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_path), "--dataset", str(data_file), "--lora", "--num-processes", "1",
            "--output-dir", str(out), "--max-steps", "1", *TINY_RUN, "--set", "gec_max_new_tokens=96",
            "--push-to-hub", "--hub-model-id", "me/tiny-edge", "--hub-private"]  # fmt: skip
    result = edge_trl(*args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "hf_secretTOKEN123" not in result.stdout + result.stderr  # the token is never printed
    calls = [json.loads(line) for line in (hub / "calls.jsonl").read_text().splitlines()]
    assert {"call": "create_repo", "repo_id": "me/tiny-edge", "private": "True"} in calls
    uploaded = hub / "uploaded" / "me__tiny-edge"
    assert (uploaded / "adapter_model.safetensors").is_file() and (uploaded / "adapter_config.json").is_file()
    assert not list(uploaded.glob("checkpoint-*"))
    card = (uploaded / "README.md").read_text()
    assert "Trained with edge-trl" in card and "EDGE-GRPO (EDA + GEC)" in card
    # public names only: the file's and the folder's names, not their paths on this machine
    assert f"`{data_file.name}` (local data)" in card and f"`{tiny_model_path.name}` (a local model)" in card
    assert str(data_file.parent) not in card and str(tiny_model_path.parent) not in card
    assert 'PeftModel.from_pretrained(base, "me/tiny-edge").merge_and_unload()' in card
    assert "`gec/accuracy_after`" in card and "`reward`" in card  # final metrics

    # A failed push keeps the local result and says how to retry.
    failed = edge_trl(*args, "--output-dir", str(tmp_path / "run2"), env={**env, "EDGE_TEST_HUB_FAIL": "1"})
    assert failed.returncode == 3
    assert "pushing to the Hub failed" in failed.stderr and "retry with: hf upload me/tiny-edge" in failed.stderr
    assert (tmp_path / "run2" / "adapter_model.safetensors").is_file()
    assert "hf_secretTOKEN123" not in failed.stdout + failed.stderr


# -- the embedded default ----------------------------------------------------------------------------------------------


def test_embedded_default_dry_run():
    command, spec = dry_run()
    assert "--cpu --num_processes 1" in command
    assert spec["dataset"] == "embedded:addition" and spec["method"] == "grpo"
    assert Path(spec["model"], "model.safetensors").is_file()  # shipped with the package
    assert spec["trainer"]["max_steps"] == 600 and spec["reward"] == "accuracy"
    _, spec = dry_run("--method", "edge", "--max-steps", "10")
    assert spec["trainer"]["gec"] and spec["trainer"]["max_steps"] == 10


def test_embedded_model_starts_neither_at_zero_nor_near_full():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_trl import embedded

    model = AutoModelForCausalLM.from_pretrained(embedded.ASSET_DIR)
    tokenizer = AutoTokenizer.from_pretrained(embedded.ASSET_DIR)
    problems = embedded.held_out_problems(200)
    greedy = embedded.accuracy(model, tokenizer, problems, greedy=True)
    sampled = embedded.accuracy(model, tokenizer, problems, greedy=False)
    assert 0.1 <= sampled <= 0.5 and 0.3 <= greedy <= 0.8
    assert tokenizer.decode(tokenizer("\\boxed{82}")["input_ids"]) == "\\boxed{82}"  # the decoder fuses characters


@pytest.mark.slow
def test_embedded_default_visibly_learns_within_five_minutes(tmp_path):
    import time

    start = time.perf_counter()
    result = edge_trl("train", "--output-dir", str(tmp_path / "run"), timeout=420)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    curve = json.loads((tmp_path / "run" / "accuracy_curve.json").read_text())
    assert curve[0]["step"] == 0 and curve[-1]["step"] == 600
    assert curve[-1]["greedy"] - curve[0]["greedy"] >= 0.20, curve
    assert "start -> end: greedy" in result.stdout and "[held-out] step    0" in result.stdout
    assert elapsed < 300, f"the embedded default took {elapsed:.0f} s"
    plotted = runner.invoke(app, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curve.png")])
    assert plotted.exit_code == 0 and "held-out accuracy (greedy)" in plotted.output
