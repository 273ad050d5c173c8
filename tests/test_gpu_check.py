"""benchmarks/gpu_check.py: runs end to end at a tiny CPU scale, and its memory calculator agrees with the real
architecture and with the table in benchmarks/README.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
SHARED_CONFIG = REPO_ROOT.parent / "shared" / "data" / "qwen2.5-tokenizer" / "qwen2.5-math-1.5b-config" / "config.json"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_run_reports_every_field(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["scale"] == "tiny" and report["memory_kind"] == "RSS growth" and report["baseline"] == "trl"
    rows = {row["mode"]: row for row in report["rows"]}
    assert list(rows) == ["trl", "edge", "clip_cov", "kl_cov"]
    for row in rows.values():
        assert len(row["times_s"]) == report["rounds"] and row["median_cycle_s"] > 0
        assert row["time_vs_baseline"] > 0 and row["peak_memory_mib"] >= 0
        assert row["completion_mean_length"] > 0
        assert f"| {row['mode']} | {row['median_cycle_s']:.3f} |" in result.stdout
    # What ran, read from the logged metrics: nothing extra for TRL, EDA + GEC for edge, the covariance for Cov.
    assert not (rows["trl"]["gec_ran"] or rows["trl"]["eda_ran"] or rows["trl"]["cov_ran"])
    assert rows["edge"]["gec_ran"] and rows["edge"]["eda_ran"] and not rows["edge"]["cov_ran"]
    assert rows["edge"]["gec_corrected_share"] == 1.0  # random weights: every response wrong, every one corrected
    for mode in ("clip_cov", "kl_cov"):
        assert rows[mode]["cov_ran"] and not rows[mode]["gec_ran"] and not rows[mode]["eda_ran"]
        assert rows[mode]["cov_selected_share"] > 0
    assert "| mode | median cycle (s) | vs TRL | peak memory (MiB) | GEC ran | EDA ran | Cov ran |" in result.stdout


def test_memory_calculator_counts_the_real_architecture():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from edge_trl.testing import QWEN2_5_MATH_1_5B

    gpu_check = load_gpu_check()
    arch = gpu_check.Architecture()
    size = QWEN2_5_MATH_1_5B
    assert (arch.hidden, arch.intermediate, arch.layers, arch.heads, arch.kv_heads, arch.vocab) == (
        size.hidden_size, size.intermediate_size, size.num_hidden_layers, size.num_attention_heads,
        size.num_key_value_heads, size.vocab_size,
    )  # fmt: skip
    if SHARED_CONFIG.exists():  # the real config.json, when this machine has it
        real = json.loads(SHARED_CONFIG.read_text())
        assert (real["hidden_size"], real["num_hidden_layers"], real["num_key_value_heads"], real["vocab_size"]) == (
            arch.hidden, arch.layers, arch.kv_heads, arch.vocab,
        )  # fmt: skip
        assert real["tie_word_embeddings"] and real["max_position_embeddings"] == size.max_position_embeddings
    config = Qwen2Config(
        vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
        tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):  # no memory, no time: only the parameter shapes
        model = Qwen2ForCausalLM(config)
        params, lora_per_rank = gpu_check.parameter_count(arch)
        assert params == sum(p.numel() for p in model.parameters())
        lora = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        assert lora_per_rank * 16 == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_memory_table_in_readme_is_the_calculators_output():
    gpu_check = load_gpu_check()
    readme = (REPO_ROOT / "benchmarks" / "README.md").read_text()
    assert gpu_check.memory_table() in readme, "regenerate: python benchmarks/gpu_check.py --estimate-memory"
    # The calculator's own logic: checkpointing and vLLM colocate move the total the way they must.
    with_ckpt = gpu_check.estimate_memory(8, checkpointing=True)
    without = gpu_check.estimate_memory(8, checkpointing=False)
    assert without["activations"] > 10 * with_ckpt["activations"]
    vllm = gpu_check.estimate_memory(1, checkpointing=True, vllm_gpu_gib=80)
    assert vllm["vLLM colocate"] == pytest.approx(24.0) and vllm["KV cache (HF generation)"] == 0
