"""Verifiable rewards for math reasoning: accuracy (math-verify), format, and EDGE-GRPO's format + accuracy.

Every function follows TRL's reward-function signature (``completions`` plus dataset columns as keyword lists,
``**kwargs`` for the rest) and never raises inside training: a completion that cannot be parsed, a grader timeout or
an internal math-verify error scores 0.0. Use them by name (``get_reward_funcs("accuracy,format")``, or
``--reward accuracy,format`` on the command line) or pass the functions to ``EdgeGRPOTrainer`` directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from edge_trl.data import normalize_answer

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of a completion: a plain string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else str(content)
    return "" if completion is None else str(completion)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced: not a parsable box


def boxed_answer_matches(text: str, reference: Any, *, whole_text: bool = False) -> bool:
    """Exact match, no math-verify: the last ``\\boxed{...}`` of ``text`` equals the normalised ``reference`` as a
    string; with ``whole_text``, ``text`` (stripped) must also be nothing but that box. For synthetic tasks with
    canonical answers (the addition tasks of the tests and of the embedded model); real math uses ``accuracy_reward``.
    """
    boxed = last_boxed(text)
    if boxed is None or boxed != normalize_answer(reference):
        return False
    return not whole_text or text.strip() == f"\\boxed{{{boxed}}}"


def boxed_answer_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the last ``\\boxed{...}`` of a completion equals the reference answer as a string, else 0.0
    (``boxed_answer_matches``: a plain exact-match grader for synthetic tasks; math-verify grades real math)."""
    return [float(boxed_answer_matches(completion_text(c), a)) for c, a in zip(completions, answer, strict=True)]


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify times out through signal.alarm, which only works in the main thread.
    return (10, 5) if threading.current_thread() is threading.main_thread() else (None, None)


def is_equivalent(prediction: str, reference: Any) -> bool:
    """Whether the answer ``prediction`` (the content of a box) equals ``reference`` by math-verify."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_text = normalize_answer(reference)
    if gold_text is None or not prediction.strip():
        return False
    parsing_timeout, verify_timeout = _timeouts()
    configs = [LatexExtractionConfig(normalization_config=NormalizationConfig(units=True)), ExprExtractionConfig()]
    try:
        gold = parse(f"\\boxed{{{gold_text}}}", extraction_config=configs, parsing_timeout=parsing_timeout)
        pred = parse(f"\\boxed{{{prediction}}}", extraction_config=configs, parsing_timeout=parsing_timeout)
        if gold and pred and verify(gold, pred, timeout_seconds=verify_timeout):
            return True
    except Exception as error:  # math-verify must never break training
        logger.debug("math-verify failed on %r vs %r: %s", prediction, gold_text, error)
    # Textual answers math-verify cannot parse (e.g. "\text{(C)}"): compare normalised strings.
    return _squash(prediction) == _squash(gold_text)


def _squash(text: str) -> str:
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    for wrapper in ("\\text{", "\\mathrm{", "\\textbf{"):
        text = text.replace(wrapper, "{")
    return "".join(ch for ch in text if not ch.isspace() and ch not in "{}$").rstrip(".")


def accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the final ``\\boxed{}`` answer of a completion equals the reference ``answer`` (math-verify), else 0.0.

    The reference may be a string, a number or a one-element list (normalised by ``normalize_answer``).
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        boxed = last_boxed(completion_text(completion))
        rewards.append(float(boxed is not None and is_equivalent(boxed, reference)))
    return rewards


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the completion contains a non-empty, brace-balanced ``\\boxed{...}`` answer, else 0.0."""
    return [float(bool(last_boxed(completion_text(c)))) for c in completions]


def format_accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """EDGE-GRPO's reward: format (0 or 1) + accuracy (0 or 1), so 2.0 is a correct, well-formatted answer."""
    accuracy = accuracy_reward(completions, answer)
    return [f + a for f, a in zip(format_reward(completions), accuracy, strict=True)]


REWARDS: dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "format_accuracy": format_accuracy_reward,
}


def get_reward_funcs(names: str | Sequence[str]) -> list[RewardFunc]:
    """Reward functions by name: ``"accuracy,format"`` or ``["accuracy", "format"]``. Unknown names are an error."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError(f"No reward named: choose from {', '.join(REWARDS)}.")
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"Unknown reward {', '.join(map(repr, unknown))}: choose from {', '.join(REWARDS)}.")
    return [REWARDS[n] for n in names]
