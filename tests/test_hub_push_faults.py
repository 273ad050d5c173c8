"""A Hub upload that fails during training, for real: the Hub client talks HTTP to the endpoint
HF_ENDPOINT names, here a small local server standing in for the Hub (the Hub's network cannot be reached from
tests; tests/_stub_hub.py), which refuses the first ``fail_first`` uploads with HTTP 400.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_trl.testing import tiny_addition_dataset

from _stub_hub import REPO, StubHub, hub_env, running_stub_hub


@pytest.fixture
def stub_hub(request) -> Iterator[StubHub]:
    with running_stub_hub(fail_first=request.param) as hub:
        yield hub


def train(tmp_path: Path, model: Path, hub: StubHub, output_dir: Path) -> subprocess.CompletedProcess:
    data = tmp_path / "addition.jsonl"
    tiny_addition_dataset(16).to_json(str(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **hub_env(hub)}
    args = ["train", "--model", str(model), "--dataset", str(data), "--num-processes", "1", "--method", "grpo",
            "--reward", "format", "--output-dir", str(output_dir), "--max-steps", "3", "--set", "save_steps=1",
            "--set", "max_completion_length=8", "--set", "num_generations=4", "--set", "per_device_train_batch_size=4",
            "--push-to-hub", "--hub-model-id", REPO, "--set", "hub_strategy=every_save"]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "edge_trl.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stub_hub", [1], indirect=True)
def test_a_failed_upload_during_training_warns_and_the_next_save_retries(tmp_path, tiny_model_path, stub_hub):
    out = tmp_path / "run"
    result = train(tmp_path, tiny_model_path, stub_hub, out)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "uploading the checkpoint of step 1 to the Hub failed (BadRequestError" in output, output[-5000:]
    assert "stub Hub: upload refused" in output  # the Hub's own answer, passed on
    assert "Training goes on; the next save uploads again" in output
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # training went on to max_steps
    messages = [commit["message"] for commit in stub_hub.commits]
    # Step 1's upload failed; a later save uploaded again (step 2's, or step 3's if step 1's was still running then).
    assert messages[0] in ("Training in progress, step 2", "Training in progress, step 3"), messages
    assert messages[-1] == "End of training", messages
    final = next(commit for commit in stub_hub.commits if commit["message"] == "End of training")
    assert "model.safetensors" in final["files"] and not any(f.startswith("checkpoint-") for f in final["files"])
    assert "hf_stubTOKEN123" not in output


@pytest.mark.slow
@pytest.mark.parametrize("stub_hub", [10_000], indirect=True)
def test_uploads_that_always_fail_keep_training_and_exit_3_with_the_model_saved(tmp_path, tiny_model_path, stub_hub):
    out = tmp_path / "run"
    result = train(tmp_path, tiny_model_path, stub_hub, out)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output[-5000:]
    assert output.count("to the Hub failed (BadRequestError") >= 2, output[-5000:]  # every save tried again
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert (out / "model.safetensors").is_file()  # the local result is intact
    assert "pushing to the Hub failed" in result.stderr and f"retry with: hf upload {REPO} {out}" in result.stderr
    assert stub_hub.commits == [] and stub_hub.uploads >= 3
