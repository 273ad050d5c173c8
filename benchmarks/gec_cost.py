"""What Guided Error Correction costs per step, as a function of the share of wrong responses.

For each share f of wrong responses (set exactly by a reward that marks the first (1 - f) of every batch correct),
three trainers live side by side in one process on the same model, prompts and seed, and take turns rollout cycle by
rollout cycle (generation, loss and backward; no optimizer step, so the work stays identical), with fixed-length
generation:

* ``trl``: TRL's GRPOTrainer (no correction);
* ``gec``: EdgeGRPOTrainer with forced reflection (every wrong response is continued: the most expensive branch),
  regenerating only the wrong responses, in one batched call;
* ``gec whole batch``: the same, but the continuation call regenerates every response of the batch and throws the
  right ones away (what the official EDGE-GRPO code pays for its generation).

Reported: the median cycle time over the rounds as a ratio to TRL, next to the bound 1 + f * L_cont / L_total, where L_cont is the
number of tokens a reflection adds (cue + continuation) and L_total the tokens of a rollout response: the extra work
if step time were proportional to generated tokens.

    python benchmarks/gec_cost.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.testing import build_tiny_model, prepare_for_cycles, quiet, time_cycle, tiny_addition_dataset


def share_wrong_reward(wrong_share: float):
    def reward(completions: list, **_: object) -> list[float]:
        n = len(completions)
        n_right = round((1 - wrong_share) * n)
        return [1.0 if i < n_right else 0.0 for i in range(n)]

    reward.__name__ = f"first_{1 - wrong_share:.2f}_right"
    return reward


class WholeBatchRegeneration(EdgeGRPOTrainer):
    """Continues every response of the batch, then keeps only the wrong ones' continuations (official-code cost)."""

    def _correct_wrong_responses(self, rows, prompts, result):
        self._all_reflection_prompts = [
            [*prompt, *completion, *self._gec_cue_ids] for prompt, completion in zip(result[0], result[1], strict=True)
        ]
        return super()._correct_wrong_responses(rows, prompts, result)

    def _generate_reflections(self, prompts):
        if not prompts:
            return super()._generate_reflections(prompts)
        everything, logprobs = super()._generate_reflections(self._all_reflection_prompts)
        wanted = {tuple(p) for p in prompts}
        kept = [c for p, c in zip(self._all_reflection_prompts, everything, strict=True) if tuple(p) in wanted]
        return kept[: len(prompts)], logprobs


def make_trainer(model_path: Path, mode: str, wrong_share: float, cli: argparse.Namespace, workdir: Path) -> Any:
    common = {
        "output_dir": str(workdir),
        "per_device_train_batch_size": cli.batch_size,
        "num_generations": 8,
        "max_completion_length": cli.length,
        "generation_kwargs": {"min_new_tokens": cli.length},
        "max_steps": 1,
        "learning_rate": 1e-6,
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
    }
    reward = share_wrong_reward(wrong_share)
    if mode == "trl":
        args, trainer_class = GRPOConfig(**common), GRPOTrainer
    else:
        cue_tokens = len(AutoTokenizer.from_pretrained(model_path)(" Wait! Something is wrong here.")["input_ids"])
        args = EdgeGRPOConfig(**common, force_reflection=True, gec_max_new_tokens=cue_tokens + cli.length)
        trainer_class = EdgeGRPOTrainer if mode == "gec" else WholeBatchRegeneration
    trainer = trainer_class(str(model_path), reward_funcs=reward, args=args, train_dataset=tiny_addition_dataset(1024))
    return prepare_for_cycles(quiet(trainer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shares", type=float, nargs="*", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--rounds", type=int, default=15, help="timed cycles per trainer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=32, help="rollout tokens = continuation tokens")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gec_cost.json"))
    cli = parser.parse_args()
    modes = ["trl", "gec", "gec whole batch"]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_tiny_model(Path(tmp) / "model", hidden_size=256, num_hidden_layers=4)
        cue_tokens = len(AutoTokenizer.from_pretrained(model_path)(" Wait! Something is wrong here.")["input_ids"])
        samples: dict[tuple[float, str], list[float]] = {}
        for share in cli.shares:
            trainers = {mode: make_trainer(model_path, mode, share, cli, Path(tmp) / "run") for mode in modes}
            batches = iter(trainers["trl"].get_train_dataloader())
            for round_index in range(cli.rounds):
                rows = next(batches)
                for mode in modes[round_index % 3 :] + modes[: round_index % 3]:
                    samples.setdefault((share, mode), []).append(time_cycle(trainers[mode], rows))
            for mode in modes:
                print(f"f_wrong={share:.2f} {mode:<16} median {statistics.median(samples[(share, mode)]):.3f}s/cycle")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (2 cores)"
    l_cont = cue_tokens + cli.length
    rows = []
    print(f"\ndevice: {device}; batch {cli.batch_size}; rollout L_total={cli.length} tokens; reflection adds "
          f"L_cont={l_cont} tokens (cue {cue_tokens} + {cli.length}); median of {cli.rounds} interleaved cycles")  # fmt: skip
    print("| f_wrong | TRL s/cycle | GEC s/cycle | GEC / TRL | bound 1 + f·L_cont/L_total | whole-batch regen / TRL |")
    print("|---|---|---|---|---|---|")
    for share in cli.shares:
        trl, gec, whole = (statistics.median(samples[(share, m)]) for m in modes)
        bound = 1 + share * l_cont / cli.length
        rows.append({"f_wrong": share, "trl_s": trl, "gec_s": gec, "whole_batch_s": whole, "gec_ratio": gec / trl,
                     "bound": bound, "whole_batch_ratio": whole / trl})  # fmt: skip
        print(f"| {share:.2f} | {trl:.3f} | {gec:.3f} | {gec / trl:.2f}x | {bound:.2f}x | {whole / trl:.2f}x |")
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps({"device": device, "l_cont": l_cont, "l_total": cli.length, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
