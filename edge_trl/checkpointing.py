"""Exact resume: the training state that TRL 1.16 / transformers 5 checkpoints do not keep, saved and restored.

A transformers checkpoint holds the weights, the optimizer, the scheduler, the RNG states of every process and the
``TrainerState``; on resume the Trainer skips the batches already trained in the current epoch. Measured on CPU
(``tests/test_resume.py``), TRL's ``GRPOTrainer`` then continues bit-identically, except in two cases:

* **A rollout that spans the checkpoint** (``steps_per_generation * num_iterations`` micro-steps per rollout, and a
  checkpoint that is not at a rollout boundary, e.g. ``num_iterations=2`` and an odd step): TRL keeps the rollout in
  ``_buffered_inputs`` and its micro-step counter in ``_step``; neither is saved, so the resumed run generates a new
  rollout (with the new weights) and trains on its first slices instead of the remaining slices of the old one.
* **A resume at an epoch boundary or later epoch**: TRL's ``RepeatSampler`` draws each epoch's order from one
  generator seeded once; a resumed run builds a fresh sampler, so epoch ``e`` gets epoch 0's order again.

edge-trl also keeps two counters of its own: GEC's branch-draw counter and Clip-Cov's generator, seeded from TRL's
``_step``. Both would restart at 0.

What is saved, in the checkpoint folder:

* ``edge_trl_state.json`` (process 0; the values are the same on every process): TRL's ``_step`` and GEC's rollout
  counter;
* ``edge_trl_rollout_{process}.pt`` (every process, only when the checkpoint falls inside a rollout): TRL's
  ``_buffered_inputs``, the process's share of the rollout still to be trained on.

The data order across epochs is made resumable by ``ResumableRepeatSampler`` (same order as TRL's uninterrupted).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from trl.trainer.utils import RepeatSampler

logger = logging.getLogger(__name__)

STATE_FILE = "edge_trl_state.json"
ROLLOUT_FILE = "edge_trl_rollout_{process}.pt"
STATE_FORMAT = 1


def rollout_in_progress(step: int, steps_per_generation: int, num_iterations: int) -> bool:
    """True when micro-step ``step`` is inside a rollout: TRL 1.16 ``_prepare_inputs`` generates a new rollout only
    when ``step % (steps_per_generation * num_iterations) == 0``, and reuses ``_buffered_inputs`` otherwise."""
    return step % (steps_per_generation * num_iterations) != 0


def save_resume_state(
    checkpoint_dir: str | os.PathLike,
    state: dict[str, Any],
    buffered_inputs: list[dict[str, Any]] | None,
    process_index: int,
    is_main_process: bool,
) -> None:
    """Write ``state`` (JSON, by the main process) and this process's ``buffered_inputs`` (if any) to the checkpoint.

    Files are written to a temporary name and renamed, so a kill during the save never leaves a half-written file
    under the final name.
    """
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if is_main_process:
        _atomic_write(folder / STATE_FILE, lambda f: f.write(json.dumps({"format": STATE_FORMAT, **state}).encode()))
    if buffered_inputs is not None:
        _atomic_write(folder / ROLLOUT_FILE.format(process=process_index), lambda f: torch.save(buffered_inputs, f))


def load_resume_state(
    checkpoint_dir: str | os.PathLike, process_index: int, device: torch.device
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The saved state (None for a checkpoint written without edge-trl's state) and this process's rollout buffer
    (None when the checkpoint was at a rollout boundary)."""
    folder = Path(checkpoint_dir)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return None, None
    state = json.loads(state_path.read_text())
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{state_path} has format {state.get('format')!r}, this edge-trl reads format {STATE_FORMAT}: resume "
            "with the edge-trl version that wrote the checkpoint."
        )
    rollout_path = folder / ROLLOUT_FILE.format(process=process_index)
    buffered = torch.load(rollout_path, map_location=device, weights_only=True) if rollout_path.is_file() else None
    return state, buffered


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResumableRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose epoch order can be recomputed: the same orders as TRL's in an uninterrupted run.

    TRL 1.16's sampler seeds its generator once and draws one permutation per ``__iter__``, i.e. per epoch, so a
    resumed run (a fresh sampler) would replay epoch 0's order. The Trainer calls ``set_epoch(epoch)`` before each
    epoch (through accelerate's data loader), and here that re-seeds the generator and skips the ``epoch`` permutations
    already drawn: the next ``__iter__`` yields epoch ``epoch``'s order whether or not the run was interrupted.
    """

    def set_epoch(self, epoch: int) -> None:
        if not self.shuffle or self.seed is None:
            return  # unshuffled: nothing to replay; unseeded: no reproducible order to begin with
        self.generator.manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.num_samples, generator=self.generator)
