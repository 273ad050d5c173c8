"""`edge-trl eval`: pass@1 / pass@k on AIME24, AMC23, MATH500, Minerva and OlympiadBench.

Defaults follow the EDGE-GRPO evaluation (temperature 0.1, one sample, 3000 new tokens, the Qwen-math system
prompt), so numbers are comparable with the paper's table. Benchmarks come from the Hub (ids in ``BENCHMARKS``) or
from a local ``datasets.save_to_disk`` folder such as the EDGE-GRPO evaluation suite (``--data``). Generation goes
through vLLM when it is installed and a GPU is present, otherwise through batched transformers ``generate``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_trl.data import QWEN_MATH_SYSTEM_PROMPT, load_any_dataset, prepare_math_dataset
from edge_trl.end_of_turn import end_of_turn_token_ids
from edge_trl.rewards import accuracy_reward

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    local_name: str  # split name in the EDGE-GRPO evaluation suite (a DatasetDict folder)
    hub_id: str
    hub_split: str


BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("aime", "HuggingFaceH4/aime_2024", "train"),
    "amc23": Benchmark("amc", "zwhe99/amc23", "test"),
    "math500": Benchmark("math", "HuggingFaceH4/MATH-500", "test"),
    "minerva": Benchmark("minerva", "math-ai/minervamath", "test"),
    "olympiadbench": Benchmark("olympiad_bench", "math-ai/olympiadbench", "test"),
}


def parse_benchmarks(names: str | Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"Unknown benchmark {', '.join(map(repr, unknown))}: choose from {', '.join(BENCHMARKS)}.")
    return list(names)


def load_benchmark(name: str, data: str | Path | None = None, limit: int | None = None) -> Any:
    """The benchmark's problems as a prepared dataset (``prompt`` conversational, ``answer`` a string)."""
    spec = BENCHMARKS[name]
    if data is not None:
        dataset = load_any_dataset(str(data), split=spec.local_name)
    else:
        dataset = load_any_dataset(spec.hub_id, split=spec.hub_split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al., 2021): 1 - C(n - c, k) / C(n, k)."""
    if k > num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}.")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def ks_for(samples: int) -> list[int]:
    """The k reported for ``samples`` samples: 1, 2, 4, ... up to and including ``samples``."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return [*ks, samples] if samples not in ks else ks


def summarize(per_problem: dict[str, list[dict[str, Any]]], samples: int) -> dict[str, Any]:
    """Per-benchmark pass@k (means over problems) and their problem-weighted average."""
    ks = ks_for(samples)
    benchmarks = {}
    for name, problems in per_problem.items():
        n = len(problems)
        benchmarks[name] = {"problems": n}
        for k in ks:
            values = [pass_at_k(samples, sum(p["correct"]), k) for p in problems]
            benchmarks[name][f"pass@{k}"] = sum(values) / n if n else 0.0
    total = sum(b["problems"] for b in benchmarks.values())
    average = {"problems": total}
    for k in ks:
        key = f"pass@{k}"
        average[key] = sum(b[key] * b["problems"] for b in benchmarks.values()) / total if total else 0.0
    return {"benchmarks": benchmarks, "weighted_average": average}


def _load_model(model: str, adapter: str | None, dtype: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter or model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter)  # evaluated as an adapter, no manual merge
    lm.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return lm, tokenizer


def _render(prompts: list[Any], tokenizer: Any) -> list[str]:
    if isinstance(prompts[0], str):
        return prompts
    if tokenizer.chat_template is None:
        raise ValueError(
            "The model's tokenizer has no chat template: evaluate with the plain prompt template (--template plain)."
        )
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


def generate_transformers(
    model: Any, tokenizer: Any, prompts: list[str], samples: int, temperature: float, top_p: float,
    max_new_tokens: int, batch_size: int, progress: Any = None, stop_token_ids: Sequence[int] = (),
) -> list[list[str]]:  # fmt: skip
    """``samples`` completions per prompt with batched ``generate`` (greedy when temperature is 0).

    Generation stops at the model's EOS and at ``stop_token_ids`` (the chat template's end of turn).
    """
    import torch

    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    eos += [t for t in stop_token_ids if t not in eos]
    expanded = [p for p in prompts for _ in range(samples)]
    texts: list[str] = []
    do_sample = temperature > 0
    for start in range(0, len(expanded), batch_size):
        batch = tokenizer(expanded[start : start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)  # fmt: skip
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos or None,
            )
        texts.extend(tokenizer.batch_decode(out[:, batch["input_ids"].size(1) :], skip_special_tokens=True))
        if progress is not None:
            progress.update(min(batch_size, len(expanded) - start))
    return [texts[i * samples : (i + 1) * samples] for i in range(len(prompts))]


def generate_vllm(
    llm: Any, adapter: str | None, prompts: list[str], samples: int, temperature: float, top_p: float,
    max_new_tokens: int, seed: int, stop_token_ids: Sequence[int] = (),
) -> list[list[str]]:  # fmt: skip
    from vllm import SamplingParams

    # vLLM stops at the model's EOS by itself; the chat template's end of turn is added.
    params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                            stop_token_ids=list(stop_token_ids) or None)  # fmt: skip
    lora = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, adapter)
    outputs = llm.generate(prompts, params, lora_request=lora)
    return [[o.text for o in out.outputs] for out in outputs]


def use_vllm() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def evaluate(
    model: str,
    benchmarks: Sequence[str],
    adapter: str | None = None,
    data: str | Path | None = None,
    samples: int = 1,
    temperature: float = 0.1,
    top_p: float = 1.0,
    max_new_tokens: int = 3000,
    batch_size: int = 16,
    limit: int | None = None,
    system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT,
    template: str = "chat",
    seed: int = 0,
    backend: str = "auto",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Generate and grade; returns the summary plus per-problem results (prompt, answer, completions, correct)."""
    import torch
    from tqdm.auto import tqdm

    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1.")
    torch.manual_seed(seed)
    datasets = {name: load_benchmark(name, data, limit) for name in benchmarks}
    prepared = {
        name: prepare_math_dataset(ds, system_prompt=system_prompt, template=template) for name, ds in datasets.items()
    }
    backend = ("vllm" if use_vllm() else "transformers") if backend == "auto" else backend
    lm = tokenizer = None
    # Both backends compute in the same precision, so greedy decoding agrees (vLLM would run a float32 checkpoint in
    # bfloat16 on CPU).
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if backend == "transformers":
        lm, tokenizer = _load_model(model, adapter, dtype)
    else:
        from edge_trl.vllm_support import check_vllm

        check_vllm("colocate", model)  # installed, a tested version, a head size its CPU backend runs (ValueErrors)
        from transformers import AutoTokenizer
        from vllm import LLM

        tokenizer = AutoTokenizer.from_pretrained(adapter or model)
        lm = LLM(model=model, enable_lora=adapter is not None, seed=seed, dtype=dtype)

    total = sum(len(ds) for ds in prepared.values()) * samples
    progress = tqdm(total=total, desc="edge-trl eval", unit="completion", disable=not show_progress)
    per_problem: dict[str, list[dict[str, Any]]] = {}
    start = time.perf_counter()
    for name, ds in prepared.items():
        raw_prompts = list(ds["prompt"])
        prompts = _render(raw_prompts, tokenizer)
        # Chat-rendered prompts: the template's end of turn (Qwen: <|im_end|>) stops generation, whatever the EOS.
        stops = [] if isinstance(raw_prompts[0], str) else end_of_turn_token_ids(tokenizer)
        if backend == "vllm":
            completions = generate_vllm(lm, adapter, prompts, samples, temperature, top_p, max_new_tokens, seed, stops)
            progress.update(len(prompts) * samples)
        else:
            completions = generate_transformers(
                lm, tokenizer, prompts, samples, temperature, top_p, max_new_tokens, batch_size, progress, stops
            )
        answers = list(ds["answer"])
        per_problem[name] = []
        for prompt, answer, texts in zip(prompts, answers, completions, strict=True):
            correct = [bool(r) for r in accuracy_reward(texts, [answer] * len(texts))]
            per_problem[name].append({"prompt": prompt, "answer": answer, "completions": texts, "correct": correct})
    progress.close()
    elapsed = time.perf_counter() - start
    result = summarize(per_problem, samples)
    problems = result["weighted_average"]["problems"]
    result["settings"] = {
        "model": model, "adapter": adapter, "data": str(data) if data else "hub", "samples": samples,
        "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "backend": backend,
        "seed": seed, "limit": limit, "template": template, "seconds": elapsed,
        "problems_per_second": problems / elapsed if elapsed > 0 else None,
    }  # fmt: skip
    result["per_problem"] = per_problem
    return result


def format_table(result: dict[str, Any]) -> str:
    keys = [k for k in result["weighted_average"] if k.startswith("pass@")]
    header = "| benchmark | problems | " + " | ".join(keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 2)]
    rows = [*result["benchmarks"].items(), ("weighted average", result["weighted_average"])]
    for name, values in rows:
        cells = " | ".join(f"{100 * values[k]:.1f}" for k in keys)
        lines.append(f"| {name} | {values['problems']} | {cells} |")
    return "\n".join(lines)


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path
