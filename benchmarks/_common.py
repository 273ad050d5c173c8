"""Shared by the benchmark scripts: timing one rollout cycle of a prepared trainer."""

from __future__ import annotations

import time
from typing import Any

import torch


def prepare_for_cycles(trainer: Any) -> Any:
    """Run one real optimizer step (prepares model, optimizer and accelerator; also a warm-up)."""
    trainer.args.max_steps = 1
    trainer.train()
    return trainer


def time_cycle(trainer: Any, rows: list) -> float:
    """Seconds for one rollout cycle: generation, then every micro-step's loss and backward, no optimizer step.

    No optimizer step means the weights, hence the work, stay identical from cycle to cycle, so cycles of different
    trainers can be interleaved and compared one to one.
    """
    trainer._step, trainer._buffered_inputs = 0, None
    micro_steps = trainer.args.steps_per_generation * trainer.num_iterations
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(micro_steps):
        trainer.training_step(trainer.model_wrapped, rows, None)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    trainer.model_wrapped.zero_grad(set_to_none=True)
    return elapsed
