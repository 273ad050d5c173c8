"""Run by tests/test_entropy_law.py under `accelerate launch` with two CPU processes.

Usage: entropy_law_two_ranks.py MODEL_DIR OUTPUT_DIR. Trains 6 steps with ``entropy_law=True`` (a 1-log window, so the
law is fitted from step 4 on) and a checkpoint at step 3, then, in the same processes, a second trainer resumes from
that checkpoint and finishes the run. Each rank writes rank{N}.json with both log histories.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.testing import CPU_RUN_SETTINGS, digit_share_reward, tiny_addition_dataset
from edge_trl.worker import exit_now


def main() -> None:
    model_dir, output_dir = sys.argv[1], Path(sys.argv[2])
    settings = {
        **CPU_RUN_SETTINGS,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 12,
        "max_steps": 6,
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": 3,
        "entropy_law": True,
        "entropy_law_metric": "digit_share_reward",
        "entropy_law_window": 1,
        "entropy_law_min_r2": -1e9,  # every fit passes the R² test: the flags then depend on a and b only
        "entropy_law_metric_max": None,
    }
    histories = {}
    for phase, resume in (("full", None), ("resumed", str(output_dir / "full" / "checkpoint-3"))):
        args = EdgeGRPOConfig(output_dir=str(output_dir / phase), **settings)
        trainer = EdgeGRPOTrainer(
            model_dir, reward_funcs=digit_share_reward, args=args, train_dataset=tiny_addition_dataset(64)
        )
        trainer.train(resume_from_checkpoint=resume)
        histories[phase] = trainer.state.log_history
    rank = trainer.accelerator.process_index
    (output_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, **histories}))


if __name__ == "__main__":
    main()
    exit_now(0)  # as edge_trl.worker does: a complete run must not fail in the C++ teardown of gloo/DeepSpeed
