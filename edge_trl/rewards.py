"""Verifiable rewards for math reasoning: accuracy (math-verify), format, and EDGE-GRPO's format + accuracy.

Every function follows TRL's reward-function signature (``completions`` plus dataset columns as keyword lists,
``**kwargs`` for the rest) and never raises inside training: a completion that cannot be parsed, a grader timeout or
an internal math-verify error scores 0.0. Use them by name (``get_reward_funcs("accuracy,format")``, or
``--reward accuracy,format`` on the command line) or pass the functions to ``EdgeGRPOTrainer`` directly.

The registry ([`register_reward`][edge_trl.rewards.register_reward], ``REWARDS``) carries each reward's metadata: its maximum value and whether it
is a correctness reward (1 at its maximum exactly when the answer is right; GEC decides by it). ``--reward`` also takes
an import path (``my_pkg.rewards.my_reward``), a file (``path/to/rewards.py:my_reward``) and a reward model (a Hub id
or a local folder, loaded by TRL as ``AutoModelForSequenceClassification``), as ``trl grpo`` does; a reward's keyword
arguments come from ``reward_kwargs`` (`bind_reward_kwargs`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_trl.data import normalize_answer

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]


@dataclass(frozen=True)
class RewardSpec:
    """A registered reward: ``name`` (what ``--reward`` takes), the function, its maximum value (None: unbounded or
    unknown), whether it is a correctness reward (at ``max_value`` exactly when the answer is right) and a one-line
    description (the ``--reward`` help and the docs list are generated from these)."""

    name: str
    func: RewardFunc
    max_value: float | None = None
    correctness: bool = False
    description: str = ""


REWARDS: dict[str, RewardSpec] = {}
"""The registered rewards by name, in registration order."""
_SPEC_ATTRIBUTE = "_edge_trl_reward"


def register_reward(
    name: str, *, max_value: float | None = None, correctness: bool = False, description: str = ""
) -> Callable[[RewardFunc], RewardFunc]:
    """Register a reward function under ``name`` with its metadata (decorator); ``--reward name`` selects it. A
    correctness reward needs its ``max_value`` (reached exactly when the answer is right)."""
    if correctness and max_value is None:
        raise ValueError(f"register_reward({name!r}): a correctness reward needs its max_value (e.g. 1.0).")

    def decorator(func: RewardFunc) -> RewardFunc:
        text = description or (func.__doc__ or "").strip().split("\n")[0]
        spec = RewardSpec(name, func, max_value, correctness, text)
        REWARDS[name] = spec
        setattr(func, _SPEC_ATTRIBUTE, spec)
        return func

    return decorator


def reward_spec(func: Any) -> RewardSpec | None:
    """The registry entry of a reward function (also through ``functools.partial``), or None (no metadata)."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, _SPEC_ATTRIBUTE, None)


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


@register_reward("boxed_answer", max_value=1.0, correctness=True)
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


@register_reward("accuracy", max_value=1.0, correctness=True)
def accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the final ``\\boxed{}`` answer of a completion equals the reference ``answer`` (math-verify), else 0.0.

    The reference may be a string, a number or a one-element list (normalised by ``normalize_answer``).
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        boxed = last_boxed(completion_text(completion))
        rewards.append(float(boxed is not None and is_equivalent(boxed, reference)))
    return rewards


@register_reward("format", max_value=1.0)
def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the completion contains a non-empty, brace-balanced ``\\boxed{...}`` answer, else 0.0."""
    return [float(bool(last_boxed(completion_text(c)))) for c in completions]


@register_reward("format_accuracy", max_value=2.0, correctness=True)
def format_accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """EDGE-GRPO's reward: format (0 or 1) + accuracy (0 or 1), so 2.0 is a correct, well-formatted answer."""
    accuracy = accuracy_reward(completions, answer)
    return [f + a for f, a in zip(format_reward(completions), accuracy, strict=True)]


def reward_help() -> str:
    """The ``--reward`` help, generated from the registry."""
    names = ", ".join(REWARDS)
    return (
        f"Comma-separated rewards (default format,accuracy): registered names ({names}), import paths "
        "(my_pkg.rewards.my_reward), files (path/to/rewards.py:my_reward), or a reward model (a Hub id or a local "
        "folder, loaded as a sequence-classification model), as trl grpo's --reward_funcs takes them."
    )


def _load_from_file(item: str) -> RewardFunc:
    path_text, _, attribute = item.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"Reward {item!r}: no file {path_text!r}. A file reward is path/to/rewards.py:function.")
    from edge_trl.methods import load_plugin

    load_plugin(str(path))  # imported once, like --plugin (a file may register methods and rewards)
    import sys

    module = sys.modules["edge_trl_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))]
    if not callable(getattr(module, attribute, None)):
        raise ValueError(f"Reward {item!r}: {path_text} has no function {attribute!r}.")
    return getattr(module, attribute)


def _load_from_import_path(item: str) -> RewardFunc:
    module_name, _, attribute = item.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Reward {item!r}: cannot import {module_name!r} ({error}).") from error
    if not callable(getattr(module, attribute, None)):
        raise ValueError(f"Reward {item!r}: module {module_name!r} has no function {attribute!r}.")
    return getattr(module, attribute)


def is_reward_model(item: str) -> bool:
    """A local model folder (holds a config.json), or a Hub id ``owner/name`` that is no file nor import path."""
    path = Path(item).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    return item.count("/") == 1 and not item.endswith(".py") and ":" not in item


def resolve_reward(item: str) -> RewardFunc | str:
    """One ``--reward`` item: a registered name, ``path.py:fn``, ``pkg.module.fn`` or a reward model (returned as
    its id or path, for TRL to load). Raises ValueError saying which forms are accepted."""
    if item in REWARDS:
        return REWARDS[item].func
    if ":" in item and item.rpartition(":")[0].endswith(".py"):
        return _load_from_file(item)
    if is_reward_model(item):
        path = Path(item).expanduser()
        return str(path.resolve()) if path.is_dir() else item
    if "." in item and "/" not in item:
        return _load_from_import_path(item)
    raise ValueError(
        f"Unknown reward {item!r}: choose from {', '.join(REWARDS)}, or give an import path (my_pkg.rewards.fn), a "
        "file (path/to/rewards.py:fn) or a reward model (a Hub id or a local model folder)."
    )


def reward_items(names: str | Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError(f"No reward named: choose from {', '.join(REWARDS)}.")
    return list(names)


def get_reward_funcs(names: str | Sequence[str]) -> list[RewardFunc | str]:
    """Reward functions by ``--reward`` item: ``"accuracy,format"`` or ``["accuracy", "my_pkg.rewards.fn"]``. A reward
    model comes back as its id or path (TRL loads it). Unknown items are an error."""
    return [resolve_reward(item) for item in reward_items(names)]


def reward_name(func: Any) -> str:
    """The name TRL gives a reward function (its ``__name__``; a model: its id's last part)."""
    if isinstance(func, str):
        return func.split("/")[-1]
    return getattr(func, "__name__", type(func).__name__)


def bind_reward_kwargs(reward_funcs: list[Any], reward_kwargs: dict[str, dict[str, Any]] | None) -> list[Any]:
    """``reward_funcs`` with ``reward_kwargs[name]`` bound to the reward called ``name`` (its registered name or its
    ``__name__``), once, keeping its name and metadata. A name that matches no reward is an error."""
    if not reward_kwargs:
        return list(reward_funcs)
    bound, used = [], set()
    for func in reward_funcs:
        spec = reward_spec(func)
        keys = [k for k in (spec.name if spec else None, reward_name(func)) if k in reward_kwargs]
        if not keys or isinstance(func, str) or not callable(func):
            bound.append(func)
            continue
        used.update(keys)
        wrapped = functools.partial(func, **reward_kwargs[keys[0]])
        wrapped.__name__ = reward_name(func)
        wrapped.__doc__ = func.__doc__
        bound.append(wrapped)
    unknown = sorted(set(reward_kwargs) - used)
    if unknown:
        names = [n for f in reward_funcs for n in {reward_name(f), getattr(reward_spec(f), "name", None)} if n]
        raise ValueError(
            f"reward_kwargs names {unknown}, which are not among the rewards of this run {sorted(set(names))}: use "
            "a reward's --reward name or its function name."
        )
    return bound
