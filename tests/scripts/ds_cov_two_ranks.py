"""Run by tests/test_multiprocess.py under `accelerate launch` with two CPU processes (one launch for several checks).

Usage: ds_cov_two_ranks.py MODEL_DIR OUTPUT_DIR. Each rank writes rank{N}.json; rank 0 writes the parameter updates
of the Clip-Cov runs to cov-{scope}.pt.

* ``cov-step`` / ``cov-micro_batch``: ``split_runs.cov_split_run`` with 2 processes x micro-batch 4 (GA 1), for the
  comparison with 8 x GA 1 and 4 x GA 2 in one process;
* ``ds``: dynamic sampling with EDA, 6 responses per rank and groups of 4 (the middle group spans both ranks), a reward
  constant on the prompts with an even answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from split_runs import cov_split_run

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.testing import CPU_RUN_SETTINGS, even_answer_constant_reward, tiny_addition_dataset
from edge_trl.worker import exit_now


class RecordingTrainer(EdgeGRPOTrainer):
    def _score_generation_batch(self, inputs):
        self.drawn.append([row["answer"] for row in inputs])
        return super()._score_generation_batch(inputs)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        texts = self.processing_class.batch_decode(output["prompt_ids"], skip_special_tokens=True)
        self.trained.append({"prompts": texts, "rows": int(output["advantages"].size(0))})
        return output


def dynamic_sampling_run(model_dir: str, output_dir: Path) -> dict:
    args = EdgeGRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=6,  # global 12 = 3 groups of 4: the middle group spans both ranks
        num_generations=4,
        max_completion_length=12,
        max_steps=3,
        learning_rate=1e-3,
        eda=True,
        dynamic_sampling=True,
        dynamic_sampling_metric="even_answer_constant_reward",
        **CPU_RUN_SETTINGS,
    )
    dataset = tiny_addition_dataset(64)
    trainer = RecordingTrainer(model_dir, reward_funcs=even_answer_constant_reward, args=args, train_dataset=dataset)
    trainer.drawn, trainer.trained = [], []
    trainer.train()
    sampler = trainer._train_sampler
    return {
        "drawn": trainer.drawn,
        "trained": trainer.trained,
        "order": [[dataset[i]["answer"] for i in sampler.chunk(k)] for k in range(len(trainer.drawn))],
        "questions": {str(row["prompt"][-1]["content"]): row["answer"] for row in dataset},
        "batches_drawn": trainer._ds_batches_drawn,
        "param_checksum": float(sum(p.detach().double().sum() for p in trainer.model.parameters())),
        "log_history": trainer.state.log_history,
    }


def main() -> None:
    model_dir, output_dir = sys.argv[1], Path(sys.argv[2])
    record = {}
    for scope in ("step", "micro_batch"):
        result = cov_split_run(model_dir, output_dir / f"cov-{scope}", per_device=4, accumulation=1, scope=scope)
        record[f"cov-{scope}"] = result["selected"]
        if torch.distributed.get_rank() == 0:
            torch.save(result["update"], output_dir / f"cov-{scope}.pt")
    record["ds"] = dynamic_sampling_run(model_dir, output_dir / "ds")
    record["world_size"] = torch.distributed.get_world_size()
    (output_dir / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
    exit_now(0)  # as edge_trl.worker does: a complete run must not fail in the C++ teardown of gloo/DeepSpeed
