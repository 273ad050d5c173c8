"""Run by tests/test_multiprocess.py under `accelerate launch` with two CPU processes.

Usage: train_two_ranks.py MODEL_DIR OUTPUT_DIR [core|gec]. Each rank writes rank{N}.json with what it saw and its
final state. `core`: EDA + KL-Cov; `gec`: full EDGE-GRPO (GEC + EDA) with an exact-match answer reward.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.testing import boxed_answer_reward, digit_share_reward, tiny_addition_dataset

FEATURES = {
    "core": ({"eda": True, "cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2}, digit_share_reward),
    "gec": ({"eda": True, "gec": True, "gec_max_new_tokens": 96}, boxed_answer_reward),
}


class RecordingTrainer(EdgeGRPOTrainer):
    seen_prompts: list[str]

    def _generate_and_score_completions(self, inputs):
        self.seen_prompts.extend(str(row["prompt"]) for row in inputs)
        return super()._generate_and_score_completions(inputs)


def main() -> None:
    model_dir, output_dir = sys.argv[1], Path(sys.argv[2])
    features, reward = FEATURES[sys.argv[3] if len(sys.argv) > 3 else "core"]
    args = EdgeGRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=6,  # global 12 = 3 groups of 4: the middle group spans both ranks
        num_generations=4,
        max_completion_length=12,
        max_steps=4,
        learning_rate=1e-3,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        **features,
    )
    trainer = RecordingTrainer(model_dir, reward_funcs=reward, args=args, train_dataset=tiny_addition_dataset(64))
    trainer.seen_prompts = []
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "backend": str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else None,
        "seen_prompts": trainer.seen_prompts,
        "param_checksum": float(sum(p.detach().double().sum() for p in after.values())),
        "params_changed": any(not torch.equal(before[n], after[n].detach()) for n in before),
        "log_history": trainer.state.log_history,
    }
    (output_dir / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
