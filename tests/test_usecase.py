"""The main use case done right and the authors' recipes.

Dry runs of the real CLI for the resolution rules; real subprocesses for the Hub check, signals and noise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge_trl import launch
from edge_trl.cli.main import app
from edge_trl.presets import shipped_recipes
from edge_trl.testing import tiny_addition_dataset

runner = CliRunner()
RECIPES_DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


@pytest.fixture
def one_gpu(monkeypatch):
    """Pretend the machine has one CUDA device: the dry run resolves the GPU defaults."""
    monkeypatch.setattr(launch, "gpu_count", lambda precise=False: 1)


def dry_run(*args: str) -> tuple[str, dict]:
    """The notes printed and the resolved RunSpec of a dry run."""
    result = runner.invoke(app, ["train", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("accelerate launch"))
    notes = "\n".join(line for line in lines[:start] if line.startswith("note:"))
    return notes, yaml.safe_load("\n".join(lines[start + 1 :]))


def edge_trl(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge_trl.cli.main", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)  # fmt: skip


# -- 14.2: a model alias runs its recipe -------------------------------------------------------------------------------


def test_alias_runs_its_recipe_and_flags_override_it(small_data_file):
    data = ["--dataset", str(small_data_file)]
    notes, spec = dry_run("--model", "qwen2.5-math-1.5b", *data, "--num-processes", "1")
    recipe = yaml.safe_load(Path(spec["recipe"]).read_text())
    assert Path(spec["recipe"]).name == "edge_grpo_qwen2.5_math_1.5b.yaml"
    assert "recipe edge_grpo_qwen2.5_math_1.5b.yaml applied" in notes
    for key in ("max_completion_length", "gradient_accumulation_steps", "loss_type", "temperature", "save_steps"):
        assert spec["trainer"][key] == recipe[key], key
    assert spec["dataset"] == str(small_data_file)  # the flag beats the recipe's dataset

    _, spec = dry_run("--model", "qwen2.5-math-1.5b", *data, "--num-processes", "1", "--max-completion-length", "64",
                      "--set", "temperature=0.9")  # fmt: skip
    assert spec["trainer"]["max_completion_length"] == 64 and spec["trainer"]["temperature"] == 0.9

    # the Hub id, or a method the alias has no recipe for, runs without one
    notes, spec = dry_run("--model", "Qwen/Qwen2.5-Math-1.5B", *data, "--num-processes", "1")
    assert spec["recipe"] is None and "recipe" not in notes
    _, spec = dry_run("--model", "qwen2.5-math-1.5b", *data, "--num-processes", "1", "--method", "clip-cov")
    assert spec["recipe"] is None
    _, spec = dry_run("--model", "qwen2.5-math-7b", *data, "--num-processes", "1", "--method", "kl-cov")
    assert Path(spec["recipe"]).name == "kl_cov_qwen2.5_math_7b.yaml"


# -- 14.3: LoRA's learning rate ----------------------------------------------------------------------------------------


def test_lora_scales_the_default_learning_rate_and_an_explicit_one_wins(tmp_path, tiny_model_path, small_data_file):
    base = ["--model", str(tiny_model_path), "--dataset", str(small_data_file), "--num-processes", "1"]
    _, spec = dry_run(*base)
    assert spec["trainer"]["learning_rate"] == 1e-6
    notes, spec = dry_run(*base, "--lora")
    assert spec["trainer"]["learning_rate"] == 1e-5
    assert "learning_rate 1e-05 = 10 x the full fine-tuning 1e-06 (LoRA Without Regret" in notes
    assert dry_run(*base, "--lora", "--learning-rate", "3e-5")[1]["trainer"]["learning_rate"] == 3e-5
    assert dry_run(*base, "--lora", "--set", "learning_rate=2e-5")[1]["trainer"]["learning_rate"] == 2e-5
    own = tmp_path / "own.yaml"
    own.write_text("learning_rate: 4.0e-6\n")
    notes, spec = dry_run(*base, "--lora", "--config", str(own))  # the user's own recipe is explicit
    assert spec["trainer"]["learning_rate"] == 4e-6 and "LoRA Without Regret" not in notes
    # a shipped recipe holds full fine-tuning values; the main use case, with no --dataset, trains on the paper's data
    _, spec = dry_run("--model", "qwen2.5-math-1.5b", "--lora", "--num-processes", "1")
    assert spec["trainer"]["learning_rate"] == 1e-5 and spec["dataset"] == "deepscaler-hard-1k"


# -- 14.4: GPU defaults ------------------------------------------------------------------------------------------------


def test_gpu_defaults_fit_24_gb_and_keep_the_batch(one_gpu, monkeypatch, small_data_file):
    real_find_spec = importlib.util.find_spec

    def vllm_installed(installed: bool) -> None:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if installed else None)
                            if name == "vllm" else real_find_spec(name, *a))  # fmt: skip

    args = ["--model", "qwen2.5-math-1.5b", "--dataset", str(small_data_file), "--lora"]
    vllm_installed(False)
    notes, spec = dry_run(*args)
    trainer = spec["trainer"]
    assert trainer["bf16"] is True and trainer["activation_checkpointing"] is True
    assert "use_vllm" not in trainer
    # the recipe's 8 responses per optimizer step: micro-batch 4 (fits 24 GB with HF generation) x 2 accumulation
    assert (trainer["per_device_train_batch_size"], trainer["gradient_accumulation_steps"]) == (4, 2)
    assert "micro-batch 8 -> per_device_train_batch_size 4 x gradient_accumulation_steps 2" in notes
    assert dry_run(*args, "--no-gradient-checkpointing")[1]["trainer"]["activation_checkpointing"] is False
    # an explicit micro-batch is kept
    trainer = dry_run(*args, "--per-device-train-batch-size", "8")[1]["trainer"]
    assert (trainer["per_device_train_batch_size"], trainer["gradient_accumulation_steps"]) == (8, 1)
    # Clip-Cov: the rollout keeps its 64 responses and its 8 optimizer steps
    trainer = dry_run(*args, "--method", "clip-cov")[1]["trainer"]
    assert (trainer["per_device_train_batch_size"], trainer["gradient_accumulation_steps"]) == (4, 2)
    assert trainer["steps_per_generation"] == 16  # 16 micro-batches of 4 = 64 responses = 8 steps of 8

    # with vLLM installed: colocated generation, and the smaller micro-batch that fits next to it
    vllm_installed(True)
    trainer = dry_run(*args)[1]["trainer"]
    assert trainer["use_vllm"] is True and trainer["vllm_mode"] == "colocate"
    assert (trainer["per_device_train_batch_size"], trainer["gradient_accumulation_steps"]) == (2, 4)
    assert dry_run(*args, "--no-use-vllm")[1]["trainer"]["use_vllm"] is False


def test_cpu_defaults_train_a_bf16_checkpoint_in_fp32(tmp_path, tiny_model_path, small_data_file):
    import torch
    from transformers import AutoModelForCausalLM

    from edge_trl.launch import TrainRequest, resolve
    from edge_trl.worker import build_trainer

    bf16_model = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16).save_pretrained(bf16_model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bf16_model / name).write_bytes((tiny_model_path / name).read_bytes())
    flags = {"model": str(bf16_model), "dataset": str(small_data_file), "num_processes": 1, "method": "grpo",
             "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4, "num_generations": 4}  # fmt: skip
    prepared = resolve(TrainRequest(flags=flags, dry_run=True), gpus=0)
    assert prepared.run.trainer["model_init_kwargs"] == {"dtype": "float32"}
    assert prepared.run.trainer["activation_checkpointing"] is False and prepared.env["DS_ACCELERATOR"] == "cpu"
    trainer = build_trainer(prepared.run)
    assert trainer.model.dtype == torch.float32


# -- 10.2, 18.2: the authors' recipes (docs/recipes.md) ----------------------------------------------------------------


def doc_table(marker: str) -> list[dict[str, str]]:
    """The rows of the table between ``<!-- marker -->`` and ``<!-- /marker -->`` in docs/recipes.md, by header."""
    text = RECIPES_DOC.read_text()
    table = text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0].strip().splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True)) for row in table[2:]]


@pytest.mark.parametrize("method", ["edge", "clip-cov", "kl-cov"])
def test_presets_resolve_to_the_authors_table(tiny_model_path, small_data_file, method):
    rows = doc_table("authors-table")
    assert len(rows) >= 20
    assert all(re.search(r"\.(sh|py|yaml):\d+", row["source"]) for row in rows)  # every row cites file:line
    _, spec = dry_run("--model", str(tiny_model_path), "--dataset", str(small_data_file), "--num-processes", "1",
                      "--method", method)  # fmt: skip
    checked = 0
    for row in rows:
        field, cell = row["field"].strip("`"), row[method]
        if cell == "–":
            continue
        assert spec["trainer"][field] == yaml.safe_load(cell), (method, field)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    "recipe", ["edge_grpo_qwen2.5_math_1.5b", "kl_cov_qwen2.5_math_7b", "kl_cov_qwen2.5_7b", "clip_cov_qwen2.5_7b"]
)
def test_shipped_recipes_resolve_to_the_recipes_table(recipe):
    """Each recipe through its model alias, as a user runs it: every cell is the resolved value ('–': not set)."""
    rows = doc_table("recipes-table")
    shipped = yaml.safe_load(shipped_recipes()[recipe].read_text())
    notes, spec = dry_run("--model", shipped["model"], "--method", shipped["method"], "--num-processes", "1")
    assert f"recipe {recipe}.yaml applied" in notes
    for row in rows:
        field, cell = row["field"].strip("`"), row[recipe]
        value = spec["trainer"].get(field) if field not in spec else spec[field]
        assert value == (None if cell == "–" else yaml.safe_load(cell)), (recipe, field)


# -- 14.5: smaller things ----------------------------------------------------------------------------------------------


def test_malformed_structured_set_value_is_an_error(tiny_model_path, small_data_file):
    base = ["train", "--model", str(tiny_model_path), "--dataset", str(small_data_file), "--dry-run"]
    for args in (["--set", "model_init_kwargs={dtype:float32}"], ["--model-init-kwargs", "{dtype:float32}"]):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "needs a space after each colon, e.g. model_init_kwargs='{dtype: float32}'" in result.output
    _, spec = dry_run(*base[1:-1], "--set", "model_init_kwargs={dtype: float32, attn_implementation: eager}")
    assert spec["trainer"]["model_init_kwargs"] == {"dtype": "float32", "attn_implementation": "eager"}


def check_card_metadata(path: Path) -> dict:
    """The card's metadata as huggingface_hub reads it, checked offline: `ModelCard` parses the YAML block (a
    mapping, or ValueError), every key is one of `ModelCardData`'s fields (TRL's template wrote ``licence``, a key
    the Hub does not know), and the Hub ids are valid repository ids. (`ModelCard.validate` posts the card to the
    Hub, so it cannot run here.)"""
    import inspect

    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.utils import validate_repo_id

    card = ModelCard.load(path)
    metadata = card.data.to_dict()
    assert set(metadata) <= set(inspect.signature(ModelCardData).parameters), metadata
    assert ModelCardData(**metadata).to_dict() == metadata
    for repo_id in [metadata.get("base_model"), *(metadata.get("datasets") or [])]:
        if repo_id is not None:
            validate_repo_id(repo_id)
    return metadata


def test_model_card_of_a_lora_run(tmp_path, tiny_model_path):
    """A LoRA run on a local base model and a local data file: the card shows no local path, renders a math problem
    in the trained prompt format, cites the method's papers, and its quick start (the adapter on its base, merged)
    runs as written."""
    from peft import LoraConfig

    from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
    from edge_trl.data import QWEN_MATH_SYSTEM_PROMPT, prepare_math_dataset
    from edge_trl.testing import digit_share_reward

    (tmp_path / "tiny-base").symlink_to(tiny_model_path)
    args = EdgeGRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", eda=True,
                          cov_mode="kl_cov", num_iterations=2, per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=8)  # fmt: skip
    dataset = prepare_math_dataset(tiny_addition_dataset(8, conversational=False))
    trainer = EdgeGRPOTrainer(str(tmp_path / "tiny-base"), reward_funcs=digit_share_reward, args=args,
                              train_dataset=dataset, peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"))  # fmt: skip
    trainer.edge_run_info = {"model": str(tmp_path / "tiny-base"), "method": "edge"}
    trainer.save_model()  # the adapter and the tokenizer (and PEFT's card), then the run's card, as the worker does
    trainer.create_model_card(dataset_name=str(tmp_path / "data" / "train.jsonl"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card and "None" not in card.split("## Citations")[0]
    assert "`tiny-base` (a local model)" in card and "`train.jsonl` (local data)" in card
    assert "time machine" not in card and "pipeline(" not in card
    assert json.dumps(QWEN_MATH_SYSTEM_PROMPT) in card and "\\boxed" in card  # the trained format, as Python source
    assert 'PeftModel.from_pretrained(base, "out").merge_and_unload()' in card
    assert "Entropy-Driven GRPO with Guided Error Correction" in card and "The Entropy Mechanism of" in card
    assert "vonwerra2020trl" in card and "shao2024deepseekmath" in card  # TRL's citations are kept
    metadata = check_card_metadata(tmp_path / "out" / "README.md")
    assert "licence" not in metadata and "base_model" not in metadata  # a local base model has no Hub id
    assert metadata["library_name"] == "peft" and {"edge-trl", "eda", "kl-cov", "lora"} <= set(metadata["tags"])
    # the quick start, as a user copies it from the card (run where the names it shows are folders)
    code = card.split("```python\n")[1].split("```")[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_model_card_of_a_hub_run_names_hub_ids():
    from edge_trl.model_card import CardRun, dataset_reference, public_name, render_model_card

    run = CardRun(base_model="Qwen/Qwen2.5-Math-1.5B", model_id="me/qwen-math-edge", method="EDGE-GRPO (EDA + GEC)",
                  dataset="/home/me/data/deepscaler_hard-1k.json", method_flag="edge", papers=["edge-grpo"],
                  prompt="Please reason step by step.\n\nQuestion: 1+1?\nAnswer:", max_new_tokens=3000)  # fmt: skip
    card = render_model_card(run, "---\nlicence: license\ntags:\n- trl\n- grpo\n---\n# Model Card for None\n")
    assert "/home/me" not in card and "`deepscaler_hard-1k.json` (local data)" in card
    assert "[Qwen/Qwen2.5-Math-1.5B](https://huggingface.co/Qwen/Qwen2.5-Math-1.5B)" in card
    assert 'AutoModelForCausalLM.from_pretrained("me/qwen-math-edge"' in card and "PeftModel" not in card
    assert '"Please reason step by step.\\n\\nQuestion: Find the remainder' in card  # the plain template, filled
    assert "Entropy Mechanism" not in card
    import yaml

    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "Qwen/Qwen2.5-Math-1.5B" and "licence" not in metadata
    assert metadata["tags"][:3] == ["trl", "grpo", "edge-trl"] and "datasets" not in metadata
    assert public_name("agentica-org/DeepScaleR-Preview-Dataset") == "agentica-org/DeepScaleR-Preview-Dataset"
    assert public_name("./local/model/") == "model" and public_name("embedded:addition") == "embedded:addition"
    assert dataset_reference("deepscaler-hard-1k") == "`deepscaler-hard-1k` (shipped with edge-trl)"


def test_push_to_hub_fails_in_seconds_when_the_hub_is_unreachable(tmp_path, tiny_model_path, small_data_file):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["train", "--model", str(tiny_model_path), "--dataset", str(small_data_file), "--num-processes", "1",
            "--output-dir", str(tmp_path / "out"), "--push-to-hub", "--hub-model-id", "me/tiny"]  # fmt: skip
    unreachable = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_x"}
    start = time.monotonic()
    result = edge_trl(*args, env=unreachable)
    assert time.monotonic() - start < 60 and result.returncode == 2, result.stderr[-3000:]
    assert f"cannot reach the Hub at http://127.0.0.1:{port}" in result.stderr and "and retry" in result.stderr
    assert f"hf upload me/tiny {tmp_path / 'out'}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "edge_trl_run.yaml").exists()  # no process was started

    offline = edge_trl(*args, env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_x"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr and "hf upload" in offline.stderr


def test_help_is_readable_at_80_columns():
    result = subprocess.run([sys.executable, "-m", "edge_trl.cli.main", "train", "--help"], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "80"}, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout
    for flag in ("--accelerate-config", "--resume-from-checkpoint", "--per-device-train-batch-size"):
        assert re.search(rf"^\s+{re.escape(flag)}\b", result.stdout, re.MULTILINE), flag


KILL_WORKER = """
import os, signal, sys
if sys.argv and sys.argv[0].endswith("worker.py"):
    os.kill(os.getpid(), signal.SIGTERM)
"""


def test_a_run_killed_by_a_signal_reports_it_and_exits_128_plus_n(tmp_path, tiny_model_path, small_data_file):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_WORKER)  # the worker process receives a real SIGTERM at start
    result = edge_trl("train", "--model", str(tiny_model_path), "--dataset", str(small_data_file), "--num-processes", "1",
                      "--output-dir", str(tmp_path / "out"), env={"PYTHONPATH": str(site)})  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM == 143, result.stderr[-3000:]
    assert "training failed (killed by SIGTERM (exit code 143))" in result.stderr


@pytest.mark.slow
def test_a_cpu_run_prints_no_warning_of_ours(tmp_path, tiny_model_path, small_data_file):
    result = edge_trl("train", "--model", str(tiny_model_path), "--dataset", str(small_data_file), "--num-processes", "1",
                      "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--method", "grpo",
                      "--set", "max_completion_length=8", "--set", "num_generations=4",
                      "--set", "per_device_train_batch_size=4")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FutureWarning" not in result.stderr and "Setting accelerator to CPU" not in result.stderr
    # DeepSpeed, when a run imports it, stays quiet with the environment the launcher sets on CPU
    quiet = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True,
                           env={**os.environ, "DS_ACCELERATOR": "cpu"}, timeout=120)  # fmt: skip
    if importlib.util.find_spec("deepspeed"):
        assert quiet.returncode == 0 and "Setting accelerator to CPU" not in quiet.stderr + quiet.stdout
