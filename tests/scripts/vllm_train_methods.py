"""Train a tiny Qwen2 (head_dim 64) one step with every edge-trl method through TRL's vLLM colocate path, on CPU.

Run by tests/test_vllm_train.py in one subprocess (vLLM's engine wants its own process, and the trainers run one
after the other so the machine holds one engine at a time). Writes a JSON report: per method the logged metrics,
the weight-sync check (vLLM's log-probs after the sync against the trained model's and the initial model's), and
for the GEC methods every generation call and every reflection, as the trainer saw them.

    python tests/scripts/vllm_train_methods.py MODEL_DIR OUT.json [METHOD ...]
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default (4) is too much for a shared CI box
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# vLLM's colocated engine joins a torch.distributed group at MASTER_PORT; without one set, accelerate may fall back to
# 29500, which another job on a shared machine (torchrun's default) can hold: EADDRINUSE.
os.environ.setdefault("MASTER_PORT", str(_free_port()))

BASE: dict[str, Any] = {
    "use_vllm": True,
    "vllm_mode": "colocate",
    "vllm_max_model_length": 256,
    "use_cpu": True,
    "bf16": False,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 8,
    "max_steps": 1,
    "learning_rate": 0.05,  # large, so the policy visibly moves and a missed weight sync would show
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
    "disable_tqdm": True,
}
# length_reward decides correctness (named: it is no registered correctness reward); below 1, every response is wrong.
GEC = {"gec_max_new_tokens": 30, "gec_answer_template": " \\boxed{{answer}}", "gec_reflection_cue": " Wait!",
       "gec_reward_name": "length_reward"}  # fmt: skip
METHODS: dict[str, dict[str, Any]] = {
    "eda_group": {"eda": True},
    "eda_batch": {"eda": True, "eda_scope": "batch"},
    "clip_cov": {"cov_mode": "clip_cov", "clip_cov_ratio": 0.05, "clip_cov_lb": -10.0, "clip_cov_ub": 10.0},
    "kl_cov": {"cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2},
    "gec": {"gec": True, **GEC},
    "edge": {"eda": True, "gec": True, **GEC},
    # Token-level importance sampling here (TRL's default, sequence_mask, everywhere else): both levels are checked.
    "force_reflection": {"force_reflection": True, "vllm_importance_sampling_mode": "token_truncate", **GEC},
    "lora": {"eda": True, "gec": True, **GEC},
    "gec_no_sync": {"gec": True, **GEC},
    "gec_stale_layer": {"gec": True, **GEC},
    # Dynamic sampling refills through vLLM (every key of a vLLM rollout regrouped), with Clip-Cov's step scope.
    "dynamic_sampling": {
        "dynamic_sampling": True,
        "dynamic_sampling_metric": "even_constant_length_reward",
        "cov_mode": "clip_cov",
        "cov_scope": "step",
        "clip_cov_ratio": 0.05,
        "clip_cov_lb": -10.0,
        "clip_cov_ub": 10.0,
    },
}


def length_reward(completions: list, **_: object) -> list[float]:
    """A graded reward below 1 (so every response is "wrong" for GEC) that varies within a group."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [min(len(text), 199) / 200 for text in texts]


def even_constant_length_reward(completions: list, answer: list, **_: object) -> list[float]:
    """1.0 on the prompts whose answer is even (their groups are all equal: dynamic sampling drops them), the
    graded length reward on the others."""
    return [1.0 if int(a) % 2 == 0 else r for a, r in zip(answer, length_reward(completions), strict=True)]


def make_trainer_class():
    from edge_trl import EdgeGRPOTrainer

    class RecordingTrainer(EdgeGRPOTrainer):
        """Records what the rollout sends to vLLM and what GEC makes of it; computes nothing differently."""

        def __init__(self, *args, **kwargs):
            self.calls: list[dict[str, Any]] = []
            self.reflections: list[dict[str, Any]] = []
            self.rollouts: list[dict[str, Any]] = []
            super().__init__(*args, **kwargs)

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            result = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.calls.append(
                {
                    "prompts": len(prompt_ids),
                    "max_tokens": self.vllm_generation.max_completion_length,
                    "lengths": [len(c) for c in result[0]],
                }
            )
            return result

        def _generate_reflections(self, prompts):
            continuations, logprobs = super()._generate_reflections(prompts)
            self.reflections.append({"prompts": prompts, "continuations": continuations, "logprobs": logprobs})
            return continuations, logprobs

        def _correct_wrong_responses(self, rows, prompts, result):
            corrected = super()._correct_wrong_responses(rows, prompts, result)
            self.rollouts.append({"before": [list(c) for c in result[1]], "after": [list(c) for c in corrected[1]]})
            return corrected

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.rollouts and "importance_sampling_ratio" in output:
                self.rollouts[-1]["is_ratio"] = output["importance_sampling_ratio"].tolist()
                self.rollouts[-1]["completion_mask"] = output["completion_mask"].tolist()
                self.rollouts[-1]["sampling_logps"] = output["sampling_per_token_logps"].tolist()
                self.rollouts[-1]["old_logps"] = output["old_per_token_logps"].tolist()
            return output

    return RecordingTrainer


SYNC_PROMPTS = [f"What is {a} + {b}?" for a in (3, 12, 25, 40) for b in (1, 7, 18, 26, 33, 49, 58, 64)]
# Faults the weight-sync check must catch (tests/test_vllm_train.py): no sync at all, and a sync that leaves one
# decoder layer stale. Each is a GEC run whose vLLM engine is fed this way from the first rollout on.
SYNC_FAULTS = {"gec_no_sync": "no_sync", "gec_stale_layer": "stale_layer"}
STALE_LAYER = ".layers.1."


def inject_sync_fault(generation: Any, fault: str) -> None:
    if fault == "no_sync":
        generation.sync_weights = lambda: None
    elif fault == "stale_layer":
        full = generation._iter_named_params
        generation._iter_named_params = lambda: ((n, p) for n, p in full() if STALE_LAYER not in n)


def sync_check(trainer: Any, model_dir: str) -> dict[str, list[float]]:
    """Per sampled token: vLLM's log-prob after the sync, and the trained model's (float32 and bfloat16 copies) and
    the initial model's, on 32 prompts' completions (about 150 tokens).

    vLLM runs the float32 checkpoint in bfloat16 on CPU, so the bfloat16 copy of the trained model measures the
    rounding noise to expect at the probabilities seen; the test gates on it.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    trainer.vllm_generation.sync_weights()  # what TRL does before the next rollout
    prompts = [trainer.processing_class(p, add_special_tokens=False)["input_ids"] for p in SYNC_PROMPTS]
    _, completion_ids, logprobs, _ = trainer.vllm_generation.generate(prompts, None, 1)

    # Fresh copies hold the trained weights: a deepcopy of the trainer's model would keep accelerate's forward
    # wrapper, which still calls the original model.
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(trained, "merge_and_unload"):  # LoRA: vLLM holds the merged model
        trained = copy.deepcopy(trained).merge_and_unload()
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir)
    fp32.load_state_dict(trained.state_dict())
    models = {
        "trained": fp32.eval(),
        "trained_bf16": copy.deepcopy(fp32).to(torch.bfloat16).eval(),
        "initial": AutoModelForCausalLM.from_pretrained(model_dir).eval(),
    }
    report: dict[str, list[float]] = {"vllm": [], **{name: [] for name in models}}
    for prompt, ids, row in zip(prompts, completion_ids, logprobs, strict=True):
        ids = list(ids)
        report["vllm"] += [lp[0] for lp in row]
        for name, model in models.items():
            with torch.no_grad():
                logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1].float()
            logps = torch.log_softmax(logits / trainer.temperature, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
            report[name] += logps.tolist()
    return report


def run(model_dir: str, name: str) -> dict[str, Any]:
    from peft import LoraConfig

    from edge_trl import EdgeGRPOConfig
    from edge_trl.testing import tiny_addition_dataset

    args = EdgeGRPOConfig(output_dir=os.path.join(os.path.dirname(sys.argv[2]), name), **BASE, **METHODS[name])
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear") if name == "lora" else None
    start = time.perf_counter()
    trainer = make_trainer_class()(
        model_dir,
        reward_funcs=even_constant_length_reward if name == "dynamic_sampling" else length_reward,
        args=args,
        train_dataset=tiny_addition_dataset(16),
        peft_config=peft_config,
    )
    init_s = time.perf_counter() - start
    if name in SYNC_FAULTS:
        inject_sync_fault(trainer.vllm_generation, SYNC_FAULTS[name])
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    report = {
        "init_s": init_s,
        "train_s": train_s,
        "generation_class": type(trainer.vllm_generation).__name__,
        "log": trainer.state.log_history,
        "calls": trainer.calls,
        "reflections": trainer.reflections,
        "rollouts": trainer.rollouts,
        "eos_token_ids": list(trainer.eos_token_ids),
        "cue_ids": getattr(trainer, "_gec_cue_ids", None),
        "sync": sync_check(trainer, model_dir),
    }
    del trainer
    gc.collect()
    return report


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    names = sys.argv[3:] or list(METHODS)
    reports = {}
    for name in names:
        reports[name] = run(model_dir, name)
        print(f"{name}: init {reports[name]['init_s']:.1f} s, train {reports[name]['train_s']:.1f} s", flush=True)
        with open(out, "w") as f:  # written after every method, so a crash keeps what ran
            json.dump(reports, f)


if __name__ == "__main__":
    main()
