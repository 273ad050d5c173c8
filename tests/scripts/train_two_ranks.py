"""Run by tests/test_multiprocess.py under `accelerate launch` with two CPU processes.

Usage: train_two_ranks.py MODEL_DIR OUTPUT_DIR [core|gec|gec_uneven]. Each rank writes rank{N}.json with what it saw
and its final state. `core`: EDA + KL-Cov; `gec`: full EDGE-GRPO (GEC + EDA) with an exact-match answer reward;
`gec_uneven`: GEC reflecting every wrong response, with a reward under which rank 0's responses are all correct and
rank 1's all wrong, so only rank 1 has reflections to generate (tests/test_distributed.py runs it under DDP and ZeRO-3).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.testing import CPU_RUN_SETTINGS, boxed_answer_reward, digit_share_reward, tiny_addition_dataset
from edge_trl.worker import exit_now


def rank_split_reward(completions: list, **kwargs: object) -> list[float]:
    """Correct (>= 1) for every completion of rank 0, wrong (< 1) for every one of rank 1; graded by digit share so
    that groups keep a non-zero spread."""
    shares = digit_share_reward(completions, **kwargs)
    if int(os.environ.get("RANK", "0")) == 0:
        return [1.0 + 0.1 * share for share in shares]
    return [0.9 * share for share in shares]


GEC_REFLECT_ONLY = {"gec_reflect_prob": 1.0, "gec_answer_prob": 0.0, "gec_solution_prob": 0.0}
FEATURES = {
    "core": ({"eda": True, "cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2}, digit_share_reward),
    "gec": ({"eda": True, "gec": True, "gec_max_new_tokens": 96}, boxed_answer_reward),
    "gec_uneven": (
        {
            "gec": True,
            "gec_max_new_tokens": 48,
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "gec_reward_name": "rank_split_reward",  # correct at >= 1 (the default threshold)
            **GEC_REFLECT_ONLY,
        },
        rank_split_reward,
    ),
}


class RecordingTrainer(EdgeGRPOTrainer):
    seen_prompts: list[str]
    gec_calls: list[dict]  # per GEC call on this rank: how many reflections it asked for, and the corrected responses

    def _generate_and_score_completions(self, inputs):
        self.seen_prompts.extend(str(row["prompt"]) for row in inputs)
        return super()._generate_and_score_completions(inputs)

    def _generate_reflections(self, prompts):
        self.gec_calls.append({"reflected": len(prompts)})
        return super()._generate_reflections(prompts)

    def _correct_wrong_responses(self, rows, prompts, result):
        corrected = super()._correct_wrong_responses(rows, prompts, result)
        self.gec_calls[-1]["completion_ids"] = [list(map(int, ids)) for ids in corrected[1]]
        return corrected


def main() -> None:
    model_dir, output_dir = sys.argv[1], Path(sys.argv[2])
    features, reward = FEATURES[sys.argv[3] if len(sys.argv) > 3 else "core"]
    settings = {
        "per_device_train_batch_size": 6,  # global 12 = 3 groups of 4: the middle group spans both ranks
        "num_generations": 4,
        "max_completion_length": 12,
        "max_steps": 4,
        "learning_rate": 1e-3,
        **CPU_RUN_SETTINGS,
    }
    args = EdgeGRPOConfig(output_dir=str(output_dir), **{**settings, **features})
    trainer = RecordingTrainer(model_dir, reward_funcs=reward, args=args, train_dataset=tiny_addition_dataset(64))
    trainer.seen_prompts, trainer.gec_calls = [], []
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
        "gec_calls": trainer.gec_calls,
    }
    (output_dir / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
    exit_now(0)  # as edge_trl.worker does: a complete run must not fail in the C++ teardown of gloo/DeepSpeed
