"""Validate the main use case, `edge-trl train --model qwen2.5-math-1.5b --lora`, on one GPU, without the Hub.

Builds random weights of the real Qwen2.5-Math-1.5B architecture (hidden 1536, 28 layers, 12 heads, 2 KV heads,
intermediate 8960, vocabulary 151936, tied embeddings; embedded in ``edge_trl.testing.QWEN2_5_MATH_1_5B``), then trains
it in bf16 with gradient checkpointing and LoRA r=16 on all linear layers, 8 generations per prompt, long completions,
under four trainers that live side by side in this process:

* ``trl``: TRL's own GRPOTrainer, the baseline;
* ``edge``: EdgeGRPOTrainer with EDA + GEC (EDGE-GRPO, the default method of the CLI);
* ``clip_cov`` and ``kl_cov``: EdgeGRPOTrainer with each covariance method.

Every mode uses ``num_iterations=2`` (so that KL-Cov acts; the same for the baseline) and the rewards exact-match
``\\boxed{}`` (which decides what GEC corrects: with random weights every response is wrong) plus the share of digits
(which varies within a group, so advantages, EDA and the covariances are not all zero). Printed and written to
``--out`` (JSON), per mode:

* the median time of a rollout cycle (generation + loss + backward of each micro-step, no optimizer step), the modes
  taking turns cycle by cycle, and its ratio to TRL's;
* peak memory of the mode's first real optimizer step: ``torch.cuda.max_memory_allocated`` on a GPU (minus what the
  trainers built before it hold), the growth of resident memory (RSS) on CPU;
* whether GEC, EDA and the covariance method ran, read from the logged ``gec/`` and ``edge/`` metrics.

    python benchmarks/gpu_check.py                         # GPU: the real architecture (all 4 modes: ~4 x 3.1 GB weights)
    python benchmarks/gpu_check.py --modes trl edge        # a 24 GB GPU: two modes
    python benchmarks/gpu_check.py --tiny                  # CPU smoke scale (the test suite runs it)
    python benchmarks/gpu_check.py --estimate-memory       # the memory table of benchmarks/README.md, computed
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
MODES: dict[str, dict[str, Any] | None] = {  # EdgeGRPOConfig overrides; None: TRL's GRPOTrainer
    "trl": None,
    "edge": {"eda": True, "gec": True, "gec_reward_name": "boxed_answer_reward"},
    "clip_cov": {"cov_mode": "clip_cov"},
    "kl_cov": {"cov_mode": "kl_cov"},
}


# ---------------------------------------------------------------------------------------------------------------------
# The memory calculator (--estimate-memory): the README's table is this function's output.


@dataclass(frozen=True)
class Architecture:
    hidden: int = 1536
    intermediate: int = 8960
    layers: int = 28
    heads: int = 12
    kv_heads: int = 2
    vocab: int = 151936


def parameter_count(arch: Architecture) -> tuple[int, int]:
    """(all parameters, LoRA r=1 parameters) of a Qwen2 model with tied embeddings: q/k/v have biases, o and MLP not.
    A LoRA of rank r on a linear layer (in, out) adds r * (in + out) parameters; "all-linear" skips the LM head."""
    h, i, kv = arch.hidden, arch.intermediate, arch.hidden // arch.heads * arch.kv_heads
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
    per_layer = sum(a * b for a, b in linears) + h + 2 * kv + 2 * h  # + q/k/v biases + two RMSNorm weights
    lora_per_layer = sum(a + b for a, b in linears)
    return arch.vocab * h + arch.layers * per_layer + h, arch.layers * lora_per_layer


def activation_bytes_per_token_layer(arch: Architecture) -> int:
    """Bytes one token keeps for backward in one decoder layer (bf16, SDPA/flash attention, LoRA with dropout):

    * two RMSNorms, computed in fp32 (fp32 input, fp32 normalised, bf16 output): 2 x 10h;
    * attention: LoRA dropout output + mask for q, k, v, o (4 x 3h), q and its rotary copy (4h), K and V expanded to
      all heads for SDPA (4h), attention output (2h): 22h;
    * MLP: LoRA dropout output + mask of gate and up (6h); gate, up, SiLU output, product (4 x 2i), down's LoRA
      dropout output + mask (3i): 6h + 11i.
    Total 48h + 11i. An estimate (about +-25%): the exact set depends on the kernels and the PEFT version.
    """
    return 48 * arch.hidden + 11 * arch.intermediate


def estimate_memory(
    micro_batch: int,
    *,
    checkpointing: bool,
    sequence_tokens: int = 3000 + 256,
    generations: int = 8,
    lora_rank: int = 16,
    vllm_gpu_gib: float | None = None,
    vllm_utilization: float = 0.3,
    arch: Architecture = Architecture(),
) -> dict[str, float]:
    """Peak GPU memory (GiB) of one GRPO step with LoRA, item by item, and the total.

    ``sequence_tokens``: a full-length response, 3000 completion tokens + 256 tokens GEC may add (the prompt is
    ignored: a 128-token prompt adds 4% to the token-proportional items). Generation and the loss do not overlap in
    time, so the peak is weights + LoRA states + max(generation, loss step). With ``vllm_gpu_gib``, vLLM colocate
    reserves ``vllm_utilization`` of that GPU (its own weights and KV cache) and HF generation's KV cache goes away.
    """
    params, lora_per_rank = parameter_count(arch)
    tokens = micro_batch * sequence_tokens
    head_dim = arch.hidden // arch.heads
    items = {
        "weights (bf16, 2 B/param)": params * 2,
        # LoRA weights are fp32 (PEFT upcasts adapters): weight 4 + gradient 4 + Adam's two moments 8 bytes.
        "LoRA params + grads + Adam (16 B/param)": lora_per_rank * lora_rank * 16,
        # Checkpointing keeps each layer's bf16 input and recomputes one layer at a time during backward.
        "activations": (
            tokens * (arch.layers * 2 * arch.hidden + activation_bytes_per_token_layer(arch))
            if checkpointing
            else tokens * arch.layers * activation_bytes_per_token_layer(arch)
        ),
        # The bf16 logits of the micro-batch and their gradient, plus one row's fp32 log-softmax (TRL's per-row loop).
        "logits (151936 vocab)": tokens * arch.vocab * 2 * 2 + sequence_tokens * arch.vocab * 4,
        # HF generate: K and V, bf16, every layer, all generations of a prompt at full length.
        "KV cache (HF generation)": (
            0 if vllm_gpu_gib else generations * sequence_tokens * arch.layers * 2 * arch.kv_heads * head_dim * 2
        ),
    }
    result = {name: value / GIB for name, value in items.items()}
    loss_step = result["activations"] + result["logits (151936 vocab)"]
    fixed = result["weights (bf16, 2 B/param)"] + result["LoRA params + grads + Adam (16 B/param)"]
    result["vLLM colocate"] = vllm_utilization * vllm_gpu_gib if vllm_gpu_gib else 0.0
    result["total"] = fixed + max(loss_step, result["KV cache (HF generation)"]) + result["vLLM colocate"]
    return result


def memory_table() -> str:
    """The README's memory table (markdown), from ``estimate_memory``."""
    params, lora_per_rank = parameter_count(Architecture())
    lines = [
        f"Qwen2.5-Math-1.5B: {params / 1e9:.3f}B parameters; LoRA r=16 all-linear: {lora_per_rank * 16 / 1e6:.2f}M; "
        f"activations {activation_bytes_per_token_layer(Architecture()) / 1024:.0f} KiB per token per layer "
        "(no checkpointing); sequences of 3000 + 256 tokens; 8 generations. GiB.",
        "",
        "| micro-batch | checkpointing | weights | LoRA+Adam | activations | logits | KV (HF gen.) | total, HF gen. "
        "| total, vLLM 0.3 on 24 GB | total, vLLM 0.3 on 80 GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for micro_batch in (1, 2, 4, 8):
        for checkpointing in (True, False):
            hf = estimate_memory(micro_batch, checkpointing=checkpointing)
            v24 = estimate_memory(micro_batch, checkpointing=checkpointing, vllm_gpu_gib=24)["total"]
            v80 = estimate_memory(micro_batch, checkpointing=checkpointing, vllm_gpu_gib=80)["total"]
            values = list(hf.values())
            cells = " | ".join(f"{v:.1f}" for v in values[:5])
            lines.append(
                f"| {micro_batch} | {'yes' if checkpointing else 'no'} | {cells} | {_fit(hf['total'])} "
                f"| {_fit(v24, 24)} | {_fit(v80, 80)} |"
            )
    return "\n".join(lines)


def _fit(total: float, gpu: float | None = None) -> str:
    if gpu is None:
        return f"{total:.1f} ({'24 GB ok' if total <= 22 else '80 GB ok' if total <= 76 else 'no fit'})"
    return f"{total:.1f} ({'fits' if total <= gpu * 0.93 else 'no fit'})"  # ~7% for CUDA context and fragmentation


# ---------------------------------------------------------------------------------------------------------------------
# The run.


def build_model(workdir: Path, cli: argparse.Namespace) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from edge_trl.testing import QWEN2_5_MATH_1_5B, Qwen2Size, build_qwen2, build_tiny_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(cli.tokenizer) if cli.tokenizer else build_tiny_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    size = Qwen2Size(64, 128, 2, 4, 2) if cli.tiny else QWEN2_5_MATH_1_5B
    model = build_qwen2(tokenizer, size, initializer_range=0.3 if cli.tiny else 0.02)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    path = workdir / "model"
    model.to(torch.bfloat16 if cli.bf16 else torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_trainer(model_path: Path, mode: str, cli: argparse.Namespace, workdir: Path) -> Any:
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
    from edge_trl.testing import boxed_answer_reward, digit_share_reward, quiet, tiny_addition_dataset

    on_gpu = torch.cuda.is_available()
    fields = {
        "output_dir": str(workdir / mode),
        "per_device_train_batch_size": cli.num_generations,  # one prompt's group per micro-batch
        "num_generations": cli.num_generations,
        "num_iterations": 2,  # KL-Cov acts only off-policy; the same for every mode
        "max_completion_length": cli.completion_length,
        "learning_rate": 1e-5,
        "beta": 0.0,
        "loss_type": "grpo",
        "bf16": cli.bf16,
        "gradient_checkpointing": on_gpu,
        "model_init_kwargs": {"dtype": "bfloat16" if cli.bf16 else "float32"},
        "use_cpu": not on_gpu,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
    }
    overrides = MODES[mode]
    if overrides is None:
        args, trainer_class = GRPOConfig(**fields), GRPOTrainer
    else:
        args, trainer_class = EdgeGRPOConfig(**fields, **overrides), EdgeGRPOTrainer
    trainer = trainer_class(
        str(model_path),
        reward_funcs=[boxed_answer_reward, digit_share_reward],
        args=args,
        train_dataset=tiny_addition_dataset(256),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    return quiet(trainer)


def what_ran(trainer: Any) -> dict[str, Any]:
    """Whether GEC, EDA and a covariance method ran in the logged step, with the metric that shows it."""
    from edge_trl.testing import logged

    def last(key: str) -> float | None:
        values = logged(trainer, key)
        return values[-1] if values else None

    corrected, eda_scale, cov = last("gec/corrected_share"), last("edge/eda_scale_mean"), last("edge/cov_mean")
    selected = next((last(k) for k in ("edge/clip_cov_selected_share", "edge/kl_cov_selected_share") if last(k)), None)
    return {
        "gec_ran": bool(corrected), "gec_corrected_share": corrected,
        "eda_ran": eda_scale is not None, "eda_scale_mean": eda_scale,
        "cov_ran": cov is not None, "cov_mean": cov, "cov_selected_share": selected,
        "completion_mean_length": last("completions/mean_length"),
    }  # fmt: skip


def run(cli: argparse.Namespace) -> dict[str, Any]:
    import os

    import torch

    from edge_trl.testing import RssGrowth, prepare_for_cycles, time_cycle

    on_gpu = torch.cuda.is_available()
    trainers, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_model(Path(tmp), cli)
        for mode in cli.modes:
            # Peak memory of building the trainer and its first real step, minus what earlier trainers hold.
            if on_gpu:
                torch.cuda.synchronize()
                held = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            with RssGrowth() as rss:
                trainers[mode] = prepare_for_cycles(make_trainer(model_path, mode, cli, Path(tmp)))
            peak = torch.cuda.max_memory_allocated() - held if on_gpu else rss.growth
            rows[mode] = {"mode": mode, "peak_memory_mib": peak / 2**20, "times_s": [], **what_ran(trainers[mode])}
        batches = iter(trainers[cli.modes[0]].get_train_dataloader())
        for round_index in range(cli.rounds):
            batch = next(batches)  # the same prompts for every mode of a round
            shift = round_index % len(cli.modes)  # rotate, so no mode always runs first
            for mode in cli.modes[shift:] + cli.modes[:shift]:
                rows[mode]["times_s"].append(time_cycle(trainers[mode], batch))
    baseline = statistics.median(rows[cli.modes[0]]["times_s"])
    for row in rows.values():
        row["median_cycle_s"] = statistics.median(row["times_s"])
        row["time_vs_baseline"] = row["median_cycle_s"] / baseline
    return {
        "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({os.cpu_count()} cores)",
        "scale": "tiny" if cli.tiny else "qwen2.5-math-1.5b",
        "dtype": "bf16" if cli.bf16 else "fp32",
        "gradient_checkpointing": on_gpu,
        "lora": "r=16 all-linear",
        "num_generations": cli.num_generations,
        "completion_length": cli.completion_length,
        "rounds": cli.rounds,
        "baseline": cli.modes[0],
        "memory_kind": "torch.cuda.max_memory_allocated" if on_gpu else "RSS growth",
        "rows": list(rows.values()),
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\ndevice: {report['device']}; model: {report['scale']} (random weights), {report['dtype']}, LoRA "
        f"{report['lora']}, gradient checkpointing {report['gradient_checkpointing']}; {report['num_generations']} "
        f"generations x up to {report['completion_length']} tokens; median of {report['rounds']} interleaved cycles; "
        f"memory: {report['memory_kind']}"
    )
    print("| mode | median cycle (s) | vs TRL | peak memory (MiB) | GEC ran | EDA ran | Cov ran | mean length |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        gec = f"yes ({r['gec_corrected_share']:.0%} corrected)" if r["gec_ran"] else "no"
        eda = f"yes (mean scale {r['eda_scale_mean']:.3f})" if r["eda_ran"] else "no"
        cov = (
            f"yes (cov mean {r['cov_mean']:.3g}, selected {r['cov_selected_share'] or 0:.2%})" if r["cov_ran"] else "no"
        )
        print(
            f"| {r['mode']} | {r['median_cycle_s']:.3f} | {r['time_vs_baseline']:.3f}x | {r['peak_memory_mib']:.0f} "
            f"| {gec} | {eda} | {cov} | {r['completion_mean_length']} |"
        )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model in fp32 (CPU smoke scale)")
    parser.add_argument("--estimate-memory", action="store_true", help="print the memory table and exit")
    parser.add_argument(
        "--modes", nargs="*", default=list(MODES), choices=list(MODES), help="the first is the baseline"
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed cycles per mode (default 3; 2 with --tiny)")
    parser.add_argument("--num-generations", type=int, default=None, help="default 8; 4 with --tiny")
    parser.add_argument("--completion-length", type=int, default=None, help="default 3000; 16 with --tiny")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: the tiny offline one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    cli = parser.parse_args(argv)
    if cli.estimate_memory:
        print(memory_table())
        return None
    cli.rounds = cli.rounds or (2 if cli.tiny else 3)
    cli.num_generations = cli.num_generations or (4 if cli.tiny else 8)
    cli.completion_length = cli.completion_length or (16 if cli.tiny else 3000)
    cli.bf16 = not cli.tiny
    report = run(cli)
    print_report(report)
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
