"""Step time and peak memory of EdgeGRPOTrainer against TRL's GRPOTrainer, side by side.

Every mode trains the same model on the same prompts from the same seed. Times: all trainers of a setting live in
one process and take turns cycle by cycle (a cycle = the micro-steps of one rollout: generation, loss and backward,
steps_per_generation x num_iterations of them; no optimizer step, so the weights and the work stay identical), the
order rotating every round, so drift of the machine hits every mode alike. Completions have a fixed length
(min_new_tokens = max_new_tokens). Reported: the median cycle time over the rounds, as a ratio to TRL's
GRPOTrainer in the same setting. Peak memory: on CUDA, torch.cuda.max_memory_allocated of a real train() per mode;
on CPU, where torch keeps no peak statistic, the growth of resident memory during train() in one fresh child process
per mode (sampled every millisecond, glibc told to keep freed memory so short peaks stay visible).

    python benchmarks/step_time.py                      # CPU, a small offline Qwen2 model
    python benchmarks/step_time.py --preset qwen2.5-math-1.5b --bf16 --lora   # GPU, 1.5B architecture, random weights
    python benchmarks/step_time.py --settings "dynamic sampling" "cov scope, grad-accum=2"   # the costs of dynamic sampling and the cov scope
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.testing import (
    QWEN2_5_MATH_1_5B,
    Qwen2Size,
    RssGrowth,
    build_qwen2,
    build_tiny_tokenizer,
    digit_share_reward,
    even_answer_constant_reward,
    prepare_for_cycles,
    quiet,
    time_cycle,
    tiny_addition_dataset,
)

# (setting, mode) -> EdgeGRPOConfig overrides. None means TRL's own GRPOTrainer, the baseline of its setting.
SETTINGS = {
    "on-policy": {
        "common": {},
        "modes": {
            "trl": None,
            "edge (all off)": {},
            "eda group (in-loss fwd)": {"eda": True},
            "eda batch": {"eda": True, "eda_scope": "batch"},
            "clip_cov": {"cov_mode": "clip_cov"},
        },
    },
    "grad-accum=2": {
        "common": {"gradient_accumulation_steps": 2},
        "modes": {
            "trl": None,
            "eda group (+1 no-grad fwd)": {"eda": True},
            "eda batch": {"eda": True, "eda_scope": "batch"},
            "clip_cov": {"cov_mode": "clip_cov"},
        },
    },
    "num_iterations=2": {
        "common": {"num_iterations": 2},
        "modes": {
            "trl": None,
            "eda group (reuses TRL fwd)": {"eda": True},
            "kl_cov": {"cov_mode": "kl_cov"},
            "eda + kl_cov": {"eda": True, "cov_mode": "kl_cov"},
        },
    },
    # A reward constant on the prompts with an even answer (about half): their groups have equal rewards, as
    # all-correct / all-wrong groups do on real data. TRL trains on them (zero advantage); dynamic sampling drops them
    # and generates from the next prompts. Cycle = one rollout, however many generation batches it takes.
    "dynamic sampling": {
        "common": {},
        "reward": "even_answer_constant_reward",
        "modes": {
            "trl": None,
            "edge (all off)": {},
            "dynamic sampling": {"dynamic_sampling": True, "dynamic_sampling_metric": "even_answer_constant_reward"},
        },
    },
    # cov_scope='step': one extra no-grad forward over the step's micro-batches before its first micro-batch.
    "cov scope, grad-accum=2": {
        "common": {"gradient_accumulation_steps": 2},
        "modes": {
            "trl": None,
            "clip_cov micro_batch": {"cov_mode": "clip_cov"},
            "clip_cov step (+1 no-grad fwd)": {"cov_mode": "clip_cov", "cov_scope": "step"},
            "kl_cov step (+1 no-grad fwd)": {"cov_mode": "kl_cov", "cov_scope": "step"},
        },
    },
}
REWARDS = {"digit_share_reward": digit_share_reward, "even_answer_constant_reward": even_answer_constant_reward}

PRESETS = {  # model size (vocab None: the tiny tokenizer's), initializer range
    "small": (Qwen2Size(256, 512, 4, 4, 2), 0.3),
    "qwen2.5-math-1.5b": (QWEN2_5_MATH_1_5B, 0.02),
}


def build_model(path: Path, preset: str) -> Path:
    tokenizer = build_tiny_tokenizer()
    size, initializer_range = PRESETS[preset]
    build_qwen2(tokenizer, size, initializer_range=initializer_range).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_trainer(
    model_path: Path,
    overrides: dict | None,
    common: dict,
    cli: argparse.Namespace,
    workdir: Path,
    reward: str = "digit_share_reward",
):
    on_gpu = torch.cuda.is_available()
    fields = {
        "output_dir": str(workdir),
        "per_device_train_batch_size": cli.batch_size,
        "num_generations": cli.num_generations,
        "max_completion_length": cli.completion_length,
        "generation_kwargs": {"min_new_tokens": cli.completion_length},
        "max_steps": cli.steps,
        "learning_rate": 1e-5,
        "bf16": cli.bf16,
        "gradient_checkpointing": False,
        "use_cpu": not on_gpu,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
        **common,
    }
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if overrides is None else (EdgeGRPOConfig, EdgeGRPOTrainer)
    args = config_class(**fields, **(overrides or {}))
    peft_config = None
    if cli.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = trainer_class(
        str(model_path),
        reward_funcs=REWARDS[reward],
        args=args,
        train_dataset=tiny_addition_dataset(512),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        peft_config=peft_config,
    )
    return quiet(trainer)


def peak_memory(
    model_path: Path,
    overrides: dict | None,
    common: dict,
    cli: argparse.Namespace,
    workdir: Path,
    reward: str = "digit_share_reward",
):
    """Peak memory of a real train(): CUDA bytes allocated, or the growth of RSS on CPU."""
    trainer = make_trainer(model_path, overrides, common, cli, workdir, reward)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssGrowth() as rss:
        trainer.train()
    peak = torch.cuda.max_memory_allocated() if on_gpu else rss.growth
    del trainer
    if on_gpu:
        torch.cuda.empty_cache()
    return peak


def _child_peak_rss(cli: argparse.Namespace, model_path: Path, setting: str, mode: str) -> int:
    """Peak growth of resident memory (bytes) during train() in a fresh process that runs this mode."""
    argv = [sys.executable, __file__, "--child", str(model_path), setting, mode, "--steps", str(cli.steps),
            "--batch-size", str(cli.batch_size), "--num-generations", str(cli.num_generations),
            "--completion-length", str(cli.completion_length)] + (["--lora"] if cli.lora else [])  # fmt: skip
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**40)}
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RSS_GROWTH ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory run of {setting}/{mode} failed: {result.stderr[-2000:]}")
    return int(lines[-1].split()[1])


def _median_or_nan(values: list) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="small")
    parser.add_argument("--rounds", type=int, default=20, help="timed cycles per mode")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of each memory run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--memory-rounds", type=int, default=1, help="CPU only: child processes per mode")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_time.json"))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SETTING", "MODE"), help=argparse.SUPPRESS)
    cli = parser.parse_args()

    if cli.child:  # one run in a fresh process, for the parent's peak-RSS measurement
        model, setting, mode = cli.child
        with tempfile.TemporaryDirectory() as tmp:
            spec = SETTINGS[setting]
            reward = spec.get("reward", "digit_share_reward")
            growth = peak_memory(Path(model), spec["modes"][mode], spec["common"], cli, Path(tmp), reward)
        print(f"RSS_GROWTH {growth}")
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_model(Path(tmp) / "model", cli.preset)
        samples: dict[tuple[str, str], dict[str, list]] = {}
        for setting in cli.settings:
            spec = SETTINGS[setting]
            reward = spec.get("reward", "digit_share_reward")
            trainers = {}
            for mode, overrides in spec["modes"].items():
                trainer = make_trainer(model_path, overrides, spec["common"], cli, Path(tmp) / "run", reward)
                trainers[mode] = prepare_for_cycles(trainer)
                samples[(setting, mode)] = {"times": [], "peaks": []}
            batches = iter(next(iter(trainers.values())).get_train_dataloader())
            modes = list(trainers)
            for round_index in range(cli.rounds):
                rows = next(batches)  # the same prompts for every mode of this round
                shift = round_index % len(modes)  # rotate, so no mode always runs first
                for mode in modes[shift:] + modes[:shift]:
                    trainers[mode]._step_selection = {}  # time_cycle rewinds _step: select anew (cov_scope='step')
                    samples[(setting, mode)]["times"].append(time_cycle(trainers[mode], rows))
            for mode in modes:
                times = samples[(setting, mode)]["times"]
                # generation batches per rollout (dynamic sampling), over the timed cycles (the warm-up step first)
                metrics = trainers[mode]._metrics["train"]
                samples[(setting, mode)]["gen_batches"] = metrics.get("dynamic_sampling/gen_batches", [])[1:]
                print(f"{setting:>17} {mode:<28} median cycle {statistics.median(times):.3f}s", flush=True)
            if torch.cuda.is_available():
                del trainers
                for mode, overrides in spec["modes"].items():
                    peak = peak_memory(model_path, overrides, spec["common"], cli, Path(tmp) / "run", reward)
                    samples[(setting, mode)]["peaks"].append(peak)
        if not torch.cuda.is_available():
            for _ in range(cli.memory_rounds):
                for setting in cli.settings:
                    for mode in SETTINGS[setting]["modes"]:
                        peak = _child_peak_rss(cli, model_path, setting, mode)
                        samples[(setting, mode)]["peaks"].append(peak)
                        print(f"memory {setting:>17} {mode:<28} RSS growth {peak / 2**20:.1f} MiB", flush=True)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    rows = []
    for setting in cli.settings:
        base = samples[(setting, "trl")]
        base_time, base_peak = statistics.median(base["times"]), _median_or_nan(base["peaks"])
        for mode in SETTINGS[setting]["modes"]:
            entry = samples[(setting, mode)]
            step, peak = statistics.median(entry["times"]), _median_or_nan(entry["peaks"])
            rows.append({
                "setting": setting, "mode": mode, "median_step_s": step, "time_ratio": step / base_time,
                "peak_mib": peak / 2**20, "memory_ratio": peak / base_peak if base_peak > 0 else float("nan"),
                "runs": len(entry["times"]),
                "gen_batches_median": _median_or_nan(entry.get("gen_batches", [])),
                "gen_batches_mean": statistics.mean(entry["gen_batches"]) if entry.get("gen_batches") else float("nan"),
            })  # fmt: skip

    memory_kind = "peak CUDA memory allocated" if torch.cuda.is_available() else "RSS growth during train()"
    header = (
        f"device: {device}; memory: {memory_kind}; preset {cli.preset}; batch {cli.batch_size} completions x {cli.completion_length} "
        f"tokens; median of {cli.rounds} interleaved rollout cycles per mode; bf16={cli.bf16}; lora={cli.lora}"
    )
    print("\n" + header)
    print("| setting | mode | median cycle (s) | time vs TRL | peak mem (MiB) | mem vs TRL | gen batches / rollout |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        batches = (
            ""
            if math.isnan(r["gen_batches_median"])
            else (f"median {r['gen_batches_median']:g}, mean {r['gen_batches_mean']:.2f}")
        )
        print(
            f"| {r['setting']} | {r['mode']} | {r['median_step_s']:.3f} | {r['time_ratio']:.3f}x | "
            f"{r['peak_mib']:.1f} | {r['memory_ratio']:.2f}x | {batches} |"
        )
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps({"header": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
