"""Two real processes: `accelerate launch --multi_gpu --num_processes 2` with use_cpu (torchrun + gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_trl.accelerate_configs import CONFIG_DIR

SCRIPT = Path(__file__).parent / "scripts" / "train_two_ranks.py"


@pytest.mark.slow
def test_two_cpu_processes_train_and_gather_metrics(tmp_path, tiny_model_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIG_DIR / "cpu.yaml"),
        "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533",
        str(SCRIPT), str(tiny_model_path), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["backend"] == "gloo"
    assert all(r["params_changed"] for r in ranks)
    # DDP kept the replicas in sync, while each rank generated for its own prompts
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert ranks[0]["seen_prompts"] != ranks[1]["seen_prompts"]

    # Metrics are gathered across ranks: every rank logs the same global values for the same step
    # (rollout metrics come every num_iterations=2 steps, loss metrics every step).
    expected_counts = {
        "edge/eda_scale_max": 2,
        "edge/adv_var_after_eda": 2,
        "edge/collapsed_group_share": 2,
        "edge/kl_cov_penalty": 4,
        "edge/cov_mean": 4,
    }
    for key, count in expected_counts.items():
        per_rank = [[entry[key] for entry in r["log_history"] if key in entry] for r in ranks]
        assert len(per_rank[0]) == count, key
        assert per_rank[0] == pytest.approx(per_rank[1]), key
    penalties = [e["edge/kl_cov_penalty"] for e in ranks[0]["log_history"] if "edge/kl_cov_penalty" in e]
    assert penalties[1] > 0 and penalties[3] > 0
