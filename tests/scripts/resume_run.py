"""Kill-and-resume runs, driven by tests/test_resume.py (one interpreter, one forked child per training run).

Usage: resume_run.py MODEL_DIR WORK_DIR CONFIG [CONFIG ...]

For each CONFIG (a key of CONFIGS) three real training runs, each in its own forked child process:

1. ``full``: uninterrupted, ``max_steps`` steps;
2. ``killed``: the same run, killed with SIGKILL (``os.kill``) by this parent right after ``checkpoint-{KILL_AT}`` is
   written (a callback writes a marker file from ``on_save`` and waits to be killed, so the kill point is exact);
3. ``resumed``: a fresh process that resumes from the newest checkpoint of the killed run with
   ``trainer.train(resume_from_checkpoint=...)`` and finishes the run.

``full`` and ``resumed`` write ``WORK_DIR/CONFIG/{phase}.json`` (log history, and each rollout this process generated:
the step it was generated at and its prompts) and ``{phase}.pt`` (final weights).
Forking after the imports saves an interpreter start and the imports per run (~10 s each on a loaded CPU).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.presets import METHODS
from edge_trl.testing import (
    boxed_answer_reward,
    digit_share_reward,
    even_answer_constant_reward,
    tiny_addition_dataset,
)

MAX_STEPS, SAVE_STEPS, KILL_AT = 4, 2, 2
BASE: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 12,
    "max_steps": MAX_STEPS,
    "save_strategy": "steps",
    "save_steps": SAVE_STEPS,
    "learning_rate": 1e-3,
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "logging_steps": 1,
    "use_cpu": True,
    "seed": 0,
    "disable_tqdm": True,
}
# Settings that make each method act on a random tiny model: GEC needs wrong answers (an exact-match reward, which a
# random model never meets) and room to reflect; Clip-/KL-Cov need candidate tokens.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "gec": {"gec_max_new_tokens": 32},
    "clip_cov": {"clip_cov_ratio": 0.05, "clip_cov_lb": -1e9, "clip_cov_ub": 1e9},
    "kl_cov": {"kl_cov_ratio": 0.05},
}


def _edge(method: str, **extra: Any) -> dict[str, Any]:
    settings = dict(METHODS[method])
    if settings.get("gec") or settings.get("force_reflection"):
        settings.update(METHOD_SETTINGS["gec"])
    if settings.get("cov_mode") in METHOD_SETTINGS:
        settings.update(METHOD_SETTINGS[settings["cov_mode"]])
    if settings.get("dynamic_sampling"):  # the Cov presets filter on accuracy; these runs have one other reward
        settings["dynamic_sampling_metric"] = "reward"
    return {"trainer": "edge", **settings, **extra}


# name -> trainer ("trl" or "edge"), config overrides, and optionally "num_prompts" (dataset size).
CONFIGS: dict[str, dict[str, Any]] = {
    "trl": {"trainer": "trl"},
    # One rollout of 4 optimizer steps: the checkpoint at step 2 falls inside TRL's rollout buffer.
    "trl-steps_per_generation": {"trainer": "trl", "steps_per_generation": 4},
    # 4 prompts, 2 per step: the checkpoint at step 2 is an epoch boundary, the resumed run starts epoch 2.
    "trl-epochs": {"trainer": "trl", "num_prompts": 4},
    "grpo-epochs": {"trainer": "edge", "num_prompts": 4},
    **{method: _edge(method) for method in METHODS},
    "eda-batch": _edge("eda", eda_scope="batch"),
    "edge-steps_per_generation": _edge("edge", steps_per_generation=4),
    # Extra generation batches move the prompt position: it is saved and restored.
    "dynamic-sampling": _edge("eda", dynamic_sampling=True, dynamic_sampling_metric="even_answer_constant_reward"),
    # The step-scope selection (and its generator) after a resume inside a rollout.
    "clip-cov-step": _edge("clip-cov", cov_scope="step"),
}


class KilledAfterSave(TrainerCallback):
    """Announces that checkpoint-``step`` is complete, then waits for the SIGKILL."""

    def __init__(self, step: int, marker: Path) -> None:
        self.step, self.marker = step, marker

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.marker.write_text(str(state.global_step))
            time.sleep(600)


def build_trainer(name: str, model_dir: str, output_dir: Path) -> GRPOTrainer:
    spec = dict(CONFIGS[name])
    kind, num_prompts = spec.pop("trainer"), spec.pop("num_prompts", 64)
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if kind == "trl" else (EdgeGRPOConfig, EdgeGRPOTrainer)
    args = config_class(output_dir=str(output_dir), **{**BASE, **spec})
    corrects = spec.get("gec") or spec.get("force_reflection")
    reward = boxed_answer_reward if corrects else digit_share_reward
    if spec.get("dynamic_sampling"):
        reward = even_answer_constant_reward
    return trainer_class(model_dir, reward_funcs=reward, args=args, train_dataset=tiny_addition_dataset(num_prompts))


def record_rollouts(trainer: GRPOTrainer) -> list[dict[str, Any]]:
    """Make ``trainer`` note each training rollout it generates (step, prompts); returns the list it fills."""
    rollouts: list[dict[str, Any]] = []
    generate = trainer._generate_and_score_completions

    def noting(inputs):
        if trainer.model.training:
            rollouts.append({"step": trainer.state.global_step, "prompts": [str(row["prompt"]) for row in inputs]})
        return generate(inputs)

    trainer._generate_and_score_completions = noting
    return rollouts


def record(trainer: GRPOTrainer, rollouts: list[dict[str, Any]], path: Path) -> None:
    result = {"log_history": trainer.state.log_history, "rollouts": rollouts}
    path.with_suffix(".json").write_text(json.dumps(result))
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    torch.save(weights, path.with_suffix(".pt"))


def in_child(task) -> int:
    """Fork; run ``task`` in the child (exit 0, or 1 with the traceback on stderr); return the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            task()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_ok(pid: int, what: str) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed (status {status})")


def run_config(name: str, model_dir: str, work_dir: Path) -> None:
    out = work_dir / name
    out.mkdir(parents=True, exist_ok=True)

    def full() -> None:
        trainer = build_trainer(name, model_dir, out / "full-run")
        rollouts = record_rollouts(trainer)
        trainer.train()
        record(trainer, rollouts, out / "full")

    wait_ok(in_child(full), f"{name}: uninterrupted run")

    marker = out / "checkpoint-written"

    def killed() -> None:
        trainer = build_trainer(name, model_dir, out / "killed-run")
        trainer.add_callback(KilledAfterSave(KILL_AT, marker))
        trainer.train()

    pid = in_child(killed)
    while not marker.exists():
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            raise SystemExit(f"{name}: the run ended (status {status}) before checkpoint-{KILL_AT} was written")
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

    def resumed() -> None:
        checkpoint = get_last_checkpoint(str(out / "killed-run"))
        assert checkpoint is not None and checkpoint.endswith(f"checkpoint-{KILL_AT}"), checkpoint
        trainer = build_trainer(name, model_dir, out / "killed-run")
        rollouts = record_rollouts(trainer)
        trainer.train(resume_from_checkpoint=checkpoint)
        record(trainer, rollouts, out / "resumed")

    wait_ok(in_child(resumed), f"{name}: resumed run")


def main() -> None:
    model_dir, work_dir = sys.argv[1], Path(sys.argv[2])
    for name in sys.argv[3:]:
        start = time.perf_counter()
        run_config(name, model_dir, work_dir)
        print(f"{name}: {time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
