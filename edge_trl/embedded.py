"""The embedded default: a tiny model and a verifiable task built into edge-trl, so `edge-trl train` with no
--model and no --dataset trains something real, offline, on a laptop CPU, in a few minutes.

The task is two-number addition, ``"37+45="`` → ``"\\boxed{82}"``, generated here (no download). The model is a
Qwen2-architecture LM (hidden 128, 2 layers, 4 heads, ~0.56M parameters) with a byte-level tokenizer without merges
(one token per character, and a decoder that fuses them back, so ``\\boxed`` decodes as written). It ships in
``edge_trl/assets/embedded-adder`` after a short supervised warm-up that this module also contains::

    python -m edge_trl.embedded --out edge_trl/assets/embedded-adder

The warm-up stops at the first evaluation where sampled held-out accuracy reaches ``--target`` (default 20%):
accuracy jumps sharply, at a different step for each seed, so the checkpoint is chosen by measured accuracy, not by
step count. The shipped one starts GRPO at about 24% sampled / 61% greedy accuracy.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "embedded-adder"
EMBEDDED_DATASET = "embedded:addition"
PAD, EOS = "<|endoftext|>", "<|im_end|>"
MAX_NEW_TOKENS = 12
# The shipped model's dimensions (edge_trl.testing.Qwen2Size fields; the vocabulary is the tokenizer's 258 tokens).
EMBEDDED_MODEL_SIZE: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
}

# Training settings of the embedded run (below any explicit flag). Measured on 2 CPU cores: about 0.27 s/step,
# greedy held-out accuracy 57% -> 82% after 450 steps.
EMBEDDED_TRAINING: dict[str, Any] = {
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 128,
    "num_generations": 8,
    "max_completion_length": MAX_NEW_TOKENS,
    "max_steps": 600,
    "temperature": 1.0,
    "beta": 0.0,
    "logging_steps": 25,
    "save_steps": 150,
}


EMBEDDED_TEMPLATE = "{a}+{b}="


def _operands(rng: random.Random, max_operand: int) -> tuple[int, int]:
    return rng.randint(0, max_operand), rng.randint(0, max_operand)


def addition_problem(rng: random.Random, max_operand: int = 99, template: str = EMBEDDED_TEMPLATE) -> tuple[str, str]:
    """One (prompt, answer) pair, e.g. ``("37+45=", "82")``."""
    a, b = _operands(rng, max_operand)
    return template.format(a=a, b=b), str(a + b)


def addition_dataset(
    num: int,
    seed: int = 0,
    *,
    max_operand: int = 99,
    template: str = EMBEDDED_TEMPLATE,
    conversational: bool = False,
    solutions: bool = False,
) -> Any:
    """``num`` two-number addition problems (operands 0 to ``max_operand``) as a dataset with columns prompt and
    answer, plus solution (a worked sentence ending in ``\\boxed{sum}``) with ``solutions``. Prompts are plain text
    (``template`` filled with ``a`` and ``b``), or one user message with ``conversational``. The embedded task is the
    default; ``edge_trl.testing.tiny_addition_dataset`` is the tests' "What is a + b?" variant of it."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(num):
        a, b = _operands(rng, max_operand)
        question = template.format(a=a, b=b)
        row = {"prompt": [{"role": "user", "content": question}] if conversational else question, "answer": str(a + b)}
        if solutions:
            row["solution"] = f"We add {a} and {b}. The answer is \\boxed{{{a + b}}}."
        rows.append(row)
    return Dataset.from_list(rows)


# The mixed-difficulty task of the evidence benchmark (benchmarks/evidence.py): "easy" is the embedded task (operands
# 0-99, what the shipped model learned), "hard" has two 3-digit operands (100-999, 3 column additions, the 4-digit
# sums need a final carry); the model never saw those before its warm-up.
DIFFICULTIES: dict[str, tuple[int, int]] = {"easy": (0, 99), "hard": (100, 999)}


def mixed_addition_problem(rng: random.Random, difficulty: str) -> tuple[str, str]:
    """One (prompt, answer) pair of the given difficulty (a key of ``DIFFICULTIES``), e.g. ``("123+456=", "579")``."""
    low, high = DIFFICULTIES[difficulty]
    a, b = rng.randint(low, high), rng.randint(low, high)
    return EMBEDDED_TEMPLATE.format(a=a, b=b), str(a + b)


def mixed_addition_dataset(num: int, seed: int = 0, hard_share: float = 0.5) -> Any:
    """``num`` problems, a share ``hard_share`` of them hard, with columns prompt, answer, difficulty and solution.

    The solution (GEC's solution branch) is the reference completion ``\\boxed{sum}``: with one token per character
    and completions of at most 14 tokens, a worked solution would be longer than anything the model writes.
    """
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(num):
        difficulty = "hard" if rng.random() < hard_share else "easy"
        prompt, answer = mixed_addition_problem(rng, difficulty)
        rows.append({"prompt": prompt, "answer": answer, "difficulty": difficulty, "solution": f"\\boxed{{{answer}}}"})
    return Dataset.from_list(rows)


def mixed_held_out_problems(num_per_difficulty: int = 64) -> dict[str, list[tuple[str, str]]]:
    """Evaluation problems of each difficulty, drawn from a seed no training set uses."""
    rng = random.Random(20_000_003)
    return {d: [mixed_addition_problem(rng, d) for _ in range(num_per_difficulty)] for d in DIFFICULTIES}


def mixed_warm_up(
    out: Path, seed: int, *, hard_share: float = 0.5, target: float = 0.03, check_every: int = 50,
    min_steps: int = 150, max_steps: int = 1500, log: Any = print,
) -> dict:  # fmt: skip
    """Continue the shipped adder's supervised warm-up on the mixed task until the hard part's sampled accuracy
    (pass@1 over 16 samples of 64 held-out hard problems) reaches ``target``, then save it to ``out``.

    ``seed`` varies the warm-up data, its order and so the stopping step: each seed gives a different starting
    model with a low but non-zero sampled accuracy on the hard part, where most GRPO groups are all wrong.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(ASSET_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ASSET_DIR)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    rng = random.Random(1_000 + seed)
    hard = mixed_held_out_problems()["hard"]

    def problem(r: random.Random) -> tuple[str, str]:
        return mixed_addition_problem(r, "hard" if r.random() < hard_share else "easy")

    model.train()
    for step in range(1, max_steps + 1):
        _supervised_step(model, tokenizer, optimizer, rng, problem=problem)
        if step >= min_steps and step % check_every == 0:
            sampled = sampled_pass_rate(model, tokenizer, hard, samples=16, seed=seed)
            log(f"warm-up seed {seed} step {step}: hard sampled accuracy {sampled:.1%}")
            if sampled >= target:
                out.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(out)
                tokenizer.save_pretrained(out)
                return {"seed": seed, "step": step, "hard_sampled": sampled}
    raise RuntimeError(
        f"the mixed warm-up (seed {seed}) did not reach {target:.0%} on the hard part in {max_steps} steps"
    )


def sample_completions(
    model: Any, tokenizer: Any, prompts: list[str], *, samples: int, seed: int, max_new_tokens: int = 14
) -> list[list[str]]:
    """``samples`` completions per prompt at temperature 1 (one batched ``generate``), as decoded texts."""
    import torch

    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=None, top_p=None,
            num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)
    return [texts[i * samples : (i + 1) * samples] for i in range(len(prompts))]


def sampled_pass_rate(model: Any, tokenizer: Any, problems: list[tuple[str, str]], samples: int, seed: int) -> float:
    """Share of correct sampled completions (strict: exactly ``\\boxed{answer}``), ``samples`` per problem."""
    from edge_trl.rewards import boxed_answer_matches

    texts = sample_completions(model, tokenizer, [p for p, _ in problems], samples=samples, seed=seed)
    hits = [
        boxed_answer_matches(t, a, whole_text=True)
        for group, (_, a) in zip(texts, problems, strict=True)
        for t in group
    ]
    return sum(hits) / len(hits)


def held_out_problems(num: int = 300) -> list[tuple[str, str]]:
    """Evaluation problems, drawn from a seed no training set uses."""
    rng = random.Random(10_000_019)
    return [addition_problem(rng) for _ in range(num)]


def accuracy(model: Any, tokenizer: Any, problems: list[tuple[str, str]], greedy: bool, seed: int = 0) -> float:
    """Share of problems whose completion is exactly ``\\boxed{answer}`` (sampled at temperature 1, or greedy)."""
    import torch

    from edge_trl.rewards import boxed_answer_matches

    tokenizer.padding_side = "left"
    encoded = tokenizer([p for p, _ in problems], return_tensors="pt", padding=True).to(model.device)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **encoded,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=not greedy,
            temperature=None if greedy else 1.0,
            top_k=None,
            top_p=None,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)
    correct = [boxed_answer_matches(t, a, whole_text=True) for t, (_, a) in zip(texts, problems, strict=True)]
    return sum(correct) / len(problems)


def build_tokenizer() -> Any:
    from transformers.models.qwen2 import Qwen2Tokenizer

    rng = random.Random(0)
    corpus = ["".join(addition_problem(rng)) + "\\boxed{}" for _ in range(500)]
    # vocab_size 256 = the byte alphabet: no merges, one token per character.
    tokenizer = Qwen2Tokenizer().train_new_from_iterator(corpus, vocab_size=256, new_special_tokens=[PAD, EOS])
    tokenizer.add_special_tokens({"pad_token": PAD, "eos_token": EOS})
    return tokenizer


def warm_up(out: Path, seed: int = 0, target: float = 0.2, max_steps: int = 3000, log: Any = print) -> dict:
    """Supervised warm-up on addition until sampled held-out accuracy reaches ``target``; saves to ``out``."""
    import torch
    from transformers import GenerationConfig

    from edge_trl.random_models import Qwen2Size, build_qwen2

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_qwen2(tokenizer, Qwen2Size(**EMBEDDED_MODEL_SIZE), seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    rng, eos = random.Random(seed + 1), tokenizer.eos_token_id
    problems = held_out_problems(200)
    for step in range(1, max_steps + 1):
        loss = _supervised_step(model, tokenizer, optimizer, rng)
        if step % 25 == 0 and step >= 200:
            sampled = accuracy(model, tokenizer, problems, greedy=False)
            greedy = accuracy(model, tokenizer, problems, greedy=True)
            log(f"warm-up step {step}: loss {loss.item():.3f}, sampled {sampled:.1%}, greedy {greedy:.1%}")
            if sampled >= target:
                model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
                out.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(out)
                tokenizer.save_pretrained(out)
                return {"step": step, "sampled": sampled, "greedy": greedy}
    raise RuntimeError(f"the warm-up did not reach {target:.0%} sampled accuracy in {max_steps} steps")


def _supervised_step(
    model: Any, tokenizer: Any, optimizer: Any, rng: random.Random, batch: int = 64, problem: Any = addition_problem
) -> Any:
    """One cross-entropy step on ``batch`` fresh problems drawn by ``problem(rng)`` (the embedded task by default;
    loss on the completion ``\\boxed{answer}`` + EOS only)."""
    rows = [problem(rng) for _ in range(batch)]
    prompts = [tokenizer(p)["input_ids"] for p, _ in rows]
    targets = [tokenizer(f"\\boxed{{{a}}}")["input_ids"] + [tokenizer.eos_token_id] for _, a in rows]
    return completion_loss_step(model, tokenizer, optimizer, list(zip(prompts, targets, strict=True)))


def completion_loss_step(model: Any, tokenizer: Any, optimizer: Any, rows: list[tuple[list[int], list[int]]]) -> Any:
    """One optimizer step of cross-entropy on each row's target tokens only, given its context (right-padded)."""
    import torch

    length = max(len(c) + len(t) for c, t in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (c, t) in enumerate(rows):
        ids[i, : len(c) + len(t)] = torch.tensor(c + t)
        labels[i, len(c) : len(c) + len(t)] = torch.tensor(t)
        mask[i, : len(c) + len(t)] = 1
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss


def supervised_control(seconds: float, seed: int = 0, lr: float = 5e-4) -> dict[str, float]:
    """The honest control for "GRPO learns": the same wall-clock time spent on more supervised warm-up instead,
    from the shipped checkpoint. Returns held-out greedy/sampled accuracy and the steps it managed."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(ASSET_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ASSET_DIR)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng, steps, start = random.Random(seed + 7), 0, time.perf_counter()
    model.train()
    while time.perf_counter() - start < seconds:
        _supervised_step(model, tokenizer, optimizer, rng)
        steps += 1
    problems = held_out_problems()
    return {
        "steps": steps,
        "greedy": accuracy(model, tokenizer, problems, greedy=True),
        "sampled": accuracy(model, tokenizer, problems, greedy=False),
    }


def held_out_callback(tokenizer: Any, every: int = 50, num_problems: int = 300) -> Any:
    """A TrainerCallback that prints held-out accuracy (greedy and sampled) at the start, every ``every`` steps and at
    the end, then the curve; it also writes ``accuracy_curve.json`` to the output directory."""
    import json

    from transformers import TrainerCallback

    problems = held_out_problems(num_problems)

    class HeldOutAccuracy(TrainerCallback):
        def __init__(self) -> None:
            self.curve: list[dict[str, float]] = []

        def _measure(self, args, state, model) -> None:
            if not state.is_world_process_zero or model is None:
                return
            point = {
                "step": state.global_step,
                "greedy": accuracy(model, tokenizer, problems, greedy=True),
                "sampled": accuracy(model, tokenizer, problems, greedy=False, seed=state.global_step),
            }
            self.curve.append(point)
            print(
                f"[held-out] step {point['step']:>4}: greedy {point['greedy']:6.1%}  sampled {point['sampled']:6.1%}",
                flush=True,
            )
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / "accuracy_curve.json").write_text(json.dumps(self.curve, indent=1))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._measure(args, state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 and state.global_step < state.max_steps:
                self._measure(args, state, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._measure(args, state, model)
            if not state.is_world_process_zero or len(self.curve) < 2:
                return
            first, last = self.curve[0], self.curve[-1]
            print("\nheld-out accuracy (greedy), one bar per evaluation:", flush=True)
            for point in self.curve:
                print(f"  step {point['step']:>4} {'#' * round(40 * point['greedy']):<40} {point['greedy']:.1%}")
            print(
                f"start -> end: greedy {first['greedy']:.1%} -> {last['greedy']:.1%} "
                f"({100 * (last['greedy'] - first['greedy']):+.1f} points), sampled {first['sampled']:.1%} -> "
                f"{last['sampled']:.1%} ({100 * (last['sampled'] - first['sampled']):+.1f} points)",
                flush=True,
            )

    return HeldOutAccuracy()


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the embedded tiny model (supervised warm-up on addition).")
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.2, help="stop at this sampled held-out accuracy")
    parser.add_argument("--control-seconds", type=float, default=None,
                        help="instead: continue supervised training of the shipped model for this many seconds")  # fmt: skip
    options = parser.parse_args()
    if options.control_seconds is not None:
        result = supervised_control(options.control_seconds, options.seed)
        print(f"supervised control, {options.control_seconds:.0f} s ({result['steps']} steps): held-out greedy "
              f"{result['greedy']:.1%}, sampled {result['sampled']:.1%}")  # fmt: skip
        return
    result = warm_up(options.out, options.seed, options.target)
    print(f"saved {options.out}: step {result['step']}, sampled {result['sampled']:.1%}, greedy {result['greedy']:.1%}")


if __name__ == "__main__":
    main()
