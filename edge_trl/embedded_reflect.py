"""A variant of the embedded task whose completions show their work, and a warm-up that teaches reflection.

The prompt is the embedded one (``"437+285="``); the completion adds column by column from the units, each column
as ``digit+digit(+carry in)=column sum``, then boxes the sum::

    437+285=7+5=12 3+8+1=12 4+2+1=7 \\boxed{722}

At most 37 characters for two 3-digit operands (one token per character with the embedded tokenizer), 27 for two
2-digit ones. The reflective warm-up (``warm_up``) continues the shipped adder's supervised training on a mix of
correct traces and, with probability ``error_share``, *reflective* traces: a trace in which one column sum is wrong
(and everything after it follows from the wrong sum, so the box is wrong), then the cue ``" Wait!"``, then a correct
redo and its box::

    437+285=7+5=12 3+8+1=13 4+2+1=7 \\boxed{732} Wait! 7+5=12 3+8+1=12 4+2+1=7 \\boxed{722}

The loss covers correct traces and redos only: the wrong trace is never a target (the warm-up does not teach making
errors) and neither is the cue (GEC injects it). So the model learns that the cue means "do it again", and that a
trace ends after its box. ``reflection_rates`` measures whether it learnt it: the share of the model's own wrong
responses that a continuation turns right with the cue, and without it.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

from edge_trl import embedded

CUE = " Wait!"
# Easy: two 2-digit operands (2 columns); hard: two 3-digit operands (3 columns; 4-digit sums need a final carry).
DIFFICULTIES: dict[str, tuple[int, int]] = {"easy": (10, 99), "hard": (100, 999)}
MAX_TRACE = 38  # the longest trace, "9+9=18 9+9+1=19 9+9+1=19 \boxed{1999}", + EOS
# RoPE has no learned positions: the shipped adder (64 positions) is loaded with room for prompt + wrong trace +
# cue + redo (8 + 37 + 6 + 38 = 89 tokens).
MAX_POSITIONS = 128
# GEC's settings for this task: the cue above, the short answer sentence of the evidence benchmark, and room after
# the cue for a full redo (gec_cue_in_budget: the budget counts the cue).
GEC_SETTINGS: dict[str, Any] = {
    "gec_reflection_cue": CUE,
    "gec_answer_template": CUE + " \\boxed{{answer}}",
    "gec_max_new_tokens": len(CUE) + MAX_TRACE + 1,
}
_PROMPT = re.compile(r"^\s*(\d+)\+(\d+)=")


def trace(a: int, b: int, wrong_column: int | None = None, delta: int = 0) -> str:
    """The worked sum of ``a + b`` (operands of equal digit count), e.g. ``"7+5=12 3+8+1=12 4+2+1=7 \\boxed{722}"``.

    With ``wrong_column`` (0 = units), that column's sum is off by ``delta``; the carry and the digits after it
    follow from the wrong sum, as a consistent but wrong computation would.
    """
    da, db = str(a)[::-1], str(b)[::-1]
    steps, digits, carry = [], [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry + (delta if i == wrong_column else 0)
        steps.append(f"{x}+{y}={total}" if i == 0 else f"{x}+{y}+{carry}={total}")
        digits.append(str(total % 10))
        carry = total // 10
    if carry:
        digits.append(str(carry))
    return " ".join(steps) + f" \\boxed{{{int(''.join(reversed(digits)))}}}"


def wrong_trace(a: int, b: int, rng: random.Random) -> str:
    """A trace of ``a + b`` with one wrong column sum (off by 1 or 2, staying within 0-19) and so a wrong box."""
    columns = len(str(max(a, b)))
    while True:
        column, delta = rng.randrange(columns), rng.choice((-2, -1, 1, 2))
        text = trace(a, b, column, delta)
        column_sum = int(text.split(" ")[column].split("=")[1])
        if 0 <= column_sum <= 19 and text != trace(a, b):
            return text


def operands(prompt: str) -> tuple[int, int] | None:
    """``(a, b)`` of a prompt (or of any text that starts with one), None if it is not ``"a+b="``."""
    match = _PROMPT.match(prompt)
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_exact_trace(prompt: str, completion: str) -> bool:
    """The completion is exactly the correct worked sum of the prompt (no reflection, nothing else)."""
    pair = operands(prompt)
    return pair is not None and completion.strip() == trace(*pair)


def problem(rng: random.Random, difficulty: str) -> tuple[str, str]:
    low, high = DIFFICULTIES[difficulty]
    a, b = rng.randint(low, high), rng.randint(low, high)
    return embedded.EMBEDDED_TEMPLATE.format(a=a, b=b), str(a + b)


def dataset(num: int, seed: int = 0, hard_share: float = 0.5) -> Any:
    """``num`` problems (a share ``hard_share`` hard) with columns prompt, answer, difficulty and solution (the
    correct worked sum: GEC's solution branch)."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(num):
        difficulty = "hard" if rng.random() < hard_share else "easy"
        prompt, answer = problem(rng, difficulty)
        rows.append(
            {"prompt": prompt, "answer": answer, "difficulty": difficulty, "solution": trace(*operands(prompt))}
        )
    return Dataset.from_list(rows)


def held_out_problems(num_per_difficulty: int = 64) -> dict[str, list[tuple[str, str]]]:
    """Evaluation problems of each difficulty, drawn from a seed no training set uses."""
    rng = random.Random(30_000_001)
    return {d: [problem(rng, d) for _ in range(num_per_difficulty)] for d in DIFFICULTIES}


def training_example(rng: random.Random, hard_share: float, error_share: float) -> tuple[str, str, str]:
    """``(prompt, unscored, target)``: the text is prompt + unscored + target, the loss is on target (+ EOS).

    A correct example has nothing unscored; a reflective one has the wrong trace and the cue unscored."""
    prompt, _ = problem(rng, "hard" if rng.random() < hard_share else "easy")
    a, b = operands(prompt)
    if rng.random() < error_share:
        return prompt, wrong_trace(a, b, rng) + CUE, " " + trace(a, b)
    return prompt, "", trace(a, b)


def _step(model: Any, tokenizer: Any, optimizer: Any, examples: list[tuple[str, str, str]]) -> float:
    rows = []
    for prompt, unscored, target in examples:
        context = tokenizer(prompt + unscored)["input_ids"]  # one token per character: concatenation is exact
        rows.append((context, tokenizer(target)["input_ids"] + [tokenizer.eos_token_id]))
    return embedded.completion_loss_step(model, tokenizer, optimizer, rows).item()


def box_accuracy(texts: list[list[str]], problems: list[tuple[str, str]]) -> float:
    from edge_trl.rewards import last_boxed

    hits = [last_boxed(t) == a for group, (_, a) in zip(texts, problems, strict=True) for t in group]
    return sum(hits) / len(hits)


def warm_up(
    out: Path, seed: int, *, hard_share: float = 0.5, error_share: float = 0.5, target: float = 0.1,
    check_every: int = 100, min_steps: int = 300, max_steps: int = 4000, lr: float = 1e-3, batch: int = 64,
    reflection_problems: int = 64, log: Any = print,
) -> dict:  # fmt: skip
    """Supervised warm-up of the shipped adder on worked sums, a share ``error_share`` of them reflective, until
    the hard part's sampled accuracy (last box right, 8 samples of 64 held-out hard problems) reaches ``target``;
    saves the model to ``out`` and returns its step, accuracies and ``reflection_rates`` (on
    ``reflection_problems`` held-out problems of each difficulty)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(embedded.ASSET_DIR, max_position_embeddings=MAX_POSITIONS)
    tokenizer = AutoTokenizer.from_pretrained(embedded.ASSET_DIR)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(2_000 + seed)
    hard = held_out_problems()["hard"]
    model.train()
    for step in range(1, max_steps + 1):
        loss = _step(
            model, tokenizer, optimizer, [training_example(rng, hard_share, error_share) for _ in range(batch)]
        )
        if step >= min_steps and step % check_every == 0:
            texts = embedded.sample_completions(
                model, tokenizer, [p for p, _ in hard], samples=8, seed=seed, max_new_tokens=MAX_TRACE
            )
            sampled = box_accuracy(texts, hard)
            log(f"reflect warm-up seed {seed} step {step}: loss {loss:.3f}, hard sampled accuracy {sampled:.1%}")
            if sampled >= target:
                out.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(out)
                tokenizer.save_pretrained(out)
                info = {"seed": seed, "step": step, "hard_sampled": sampled, "error_share": error_share}
                info.update(reflection_rates(model, tokenizer, seed=seed, num=reflection_problems))
                return info
    raise RuntimeError(
        f"the reflective warm-up (seed {seed}) did not reach {target:.0%} on the hard part in {max_steps} steps"
    )


def continue_texts(model: Any, tokenizer: Any, contexts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """One sampled continuation (temperature 1) of each context, decoded without special tokens."""
    import torch

    tokenizer.padding_side = "left"
    continuations: list[str] = []
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    for start in range(0, len(contexts), 256):
        encoded = tokenizer(contexts[start : start + 256], return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        continuations += tokenizer.batch_decode(out[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)
    model.train(was_training)
    return continuations


def reflection_rates(model: Any, tokenizer: Any, seed: int = 0, samples: int = 4, num: int = 64) -> dict[str, Any]:
    """Does the cue make the model correct itself? From ``samples`` sampled responses to ``num`` held-out problems
    of each difficulty, the wrong ones (last box wrong) are continued twice, each once at temperature 1:

    * with the cue: prompt + response + ``" Wait!"`` -> continuation, right if its last box is the answer (GEC's
      reflection branch exactly);
    * without it: prompt + response -> continuation (the model may stop, or go on by itself), right likewise.

    Returns the counts and rates of both, the first-try accuracy, and ``fresh_try_rate``: for the same wrong
    responses, the chance that a fresh first try at the same problem is right (the share of right responses among the
    problem's other samples), what a reflection that merely starts over would reach."""
    from edge_trl.rewards import last_boxed

    problems = [row for rows in held_out_problems(num).values() for row in rows]
    texts = embedded.sample_completions(
        model, tokenizer, [p for p, _ in problems], samples=samples, seed=seed, max_new_tokens=MAX_TRACE
    )
    wrong, fresh = [], 0.0
    for group, (p, a) in zip(texts, problems, strict=True):
        right = sum(last_boxed(t) == a for t in group)
        for t in group:
            if last_boxed(t) != a:
                wrong.append((p, t, a))
                fresh += right / max(samples - 1, 1)
    budget = len(CUE) + MAX_TRACE
    with_cue = continue_texts(model, tokenizer, [p + t + CUE for p, t, _ in wrong], budget, seed + 1)
    without = continue_texts(model, tokenizer, [p + t for p, t, _ in wrong], budget, seed + 1)
    fixed_cue = sum(last_boxed(t + CUE + c) == a for (_, t, a), c in zip(wrong, with_cue, strict=True))
    fixed_none = sum(last_boxed(t + c) == a for (_, t, a), c in zip(wrong, without, strict=True))
    total = len(problems) * samples
    return {
        "first_try_accuracy": 1 - len(wrong) / total,
        "wrong_responses": len(wrong),
        "fixed_with_cue": fixed_cue,
        "fixed_without_cue": fixed_none,
        "rate_with_cue": fixed_cue / max(len(wrong), 1),
        "rate_without_cue": fixed_none / max(len(wrong), 1),
        "fresh_try_rate": fresh / max(len(wrong), 1),
        "example_with_cue": (wrong[0][0] + wrong[0][1] + CUE + with_cue[0]) if wrong else None,
        "example_without_cue": (wrong[0][0] + wrong[0][1] + "|" + without[0]) if wrong else None,
    }


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)
