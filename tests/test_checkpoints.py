"""A partial checkpoint, as a kill during a save leaves it: `--resume-from-checkpoint last` skips it.

A real checkpoint is written by a one-step training run; copies of it are then broken the way an interrupted save
breaks them (a file missing, a file cut short) and the lookup and `edge-trl train --dry-run` are run on them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge_trl.checkpoints import checkpoint_problem, newest_complete_checkpoint
from edge_trl.cli.main import app
from edge_trl.testing import boxed_answer_reward, tiny_addition_dataset

from _helpers import tiny_config


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, tiny_model_path) -> Path:
    from edge_trl import EdgeGRPOTrainer

    out = tmp_path_factory.mktemp("ckpt")
    args = tiny_config(out, max_steps=1, save_strategy="steps", save_steps=1)
    trainer = EdgeGRPOTrainer(str(tiny_model_path), boxed_answer_reward, args=args,
                              train_dataset=tiny_addition_dataset(16))  # fmt: skip
    trainer.train()
    return out / "checkpoint-1"


def two_checkpoints(real_checkpoint: Path, output_dir: Path) -> Path:
    """``output_dir`` with checkpoint-1 and checkpoint-2, both whole copies of the real checkpoint."""
    for step in (1, 2):
        shutil.copytree(real_checkpoint, output_dir / f"checkpoint-{step}")
    return output_dir / "checkpoint-2"


def resumed_from(output_dir: Path, tiny_model_path: Path, small_data_file: Path) -> tuple[str, str]:
    """The checkpoint `edge-trl train --resume-from-checkpoint last --dry-run` picks, and its output."""
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_path), "--dataset", str(small_data_file),
                                      "--output-dir", str(output_dir), "--resume-from-checkpoint", "last",
                                      "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.output[result.output.index("model:") :])
    return spec["resume_from_checkpoint"], result.output


def test_a_whole_checkpoint_is_complete(real_checkpoint):
    assert checkpoint_problem(real_checkpoint) is None
    assert newest_complete_checkpoint(real_checkpoint.parent) == (real_checkpoint, [])


@pytest.mark.parametrize("missing", ["trainer_state.json", "optimizer.pt", "model.safetensors", "rng_state.pth"])
def test_a_checkpoint_with_a_missing_file_is_skipped(
    tmp_path, real_checkpoint, tiny_model_path, small_data_file, missing
):
    partial = two_checkpoints(real_checkpoint, tmp_path)
    (partial / missing).unlink()
    assert missing in checkpoint_problem(partial) and "missing" in checkpoint_problem(partial)
    picked, output = resumed_from(tmp_path, tiny_model_path, small_data_file)
    assert picked == str(tmp_path / "checkpoint-1")
    assert f"skipping {partial}, an incomplete checkpoint: " in output and missing in output


@pytest.mark.parametrize("truncated", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_a_checkpoint_with_a_truncated_file_is_skipped(tmp_path, real_checkpoint, tiny_model_path, small_data_file,
                                                       truncated):  # fmt: skip
    partial = two_checkpoints(real_checkpoint, tmp_path)
    path = partial / truncated
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a write cut off halfway
    problem = checkpoint_problem(partial)
    assert problem.startswith(truncated) or truncated in problem
    picked, output = resumed_from(tmp_path, tiny_model_path, small_data_file)
    assert picked == str(tmp_path / "checkpoint-1") and f"skipping {partial}" in output


def test_only_partial_checkpoints_is_a_clear_error(tmp_path, real_checkpoint, tiny_model_path, small_data_file):
    partial = two_checkpoints(real_checkpoint, tmp_path)
    shutil.rmtree(tmp_path / "checkpoint-1")
    (partial / "trainer_state.json").unlink()
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_path), "--dataset", str(small_data_file),
                                      "--output-dir", str(tmp_path), "--resume-from-checkpoint", "last"])  # fmt: skip
    assert result.exit_code == 2 and "only incomplete checkpoints" in result.output


def test_the_skipped_choice_resumes_for_real(tmp_path, real_checkpoint, tiny_model_path):
    """The checkpoint picked past a truncated one resumes training with a real trainer."""
    from edge_trl import EdgeGRPOTrainer

    partial = two_checkpoints(real_checkpoint, tmp_path)
    weights = partial / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    picked, skipped = newest_complete_checkpoint(tmp_path)
    assert picked == tmp_path / "checkpoint-1" and [folder for folder, _ in skipped] == [partial]
    trainer = EdgeGRPOTrainer(str(tiny_model_path), boxed_answer_reward, args=tiny_config(tmp_path, max_steps=2),
                              train_dataset=tiny_addition_dataset(16))  # fmt: skip
    trainer.train(resume_from_checkpoint=str(picked))
    assert trainer.state.global_step == 2 and [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2]
