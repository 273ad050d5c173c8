"""Guided Error Correction (EDGE-GRPO, arXiv 2507.21848), in token space.

After the first rollout every response that is not correct is corrected before it is scored:

* ``reflect`` (p = 0.5): the response without its ending, then the cue " Wait! Something is wrong here.", then a fresh
  continuation of at most ``gec_max_new_tokens`` tokens sampled from the policy (it ends the way the model ends it);
* ``answer`` (p = 0.25): the response without its ending, then "\\nWait! Something is wrong here. After verification,
  the correct answer is \\boxed{<answer>}.", then the turn closed again if the model had closed it;
* ``solution`` (p = 0.25): the dataset's reference solution, then the turn closed.

A response's *ending* is its final run of stop tokens: EOS, and with conversational prompts the chat template's
end-of-turn token, e.g. ``<|im_end|>`` or ``<|im_end|><|endoftext|>`` for Qwen. Injected text goes before it, inside
the assistant turn; a corrected response is closed by ``turn_closing``: the end-of-turn token, then any EOS the model
had produced after it (plain prompts: the model's own ending).

Everything is done on token ids: the continuation prompt is prompt + response (ending stripped) + cue, and the
corrected response is response + cue + new tokens, so nothing is decoded and re-tokenized (the official code does,
and loses the EOS of every completion). These functions are pure; ``EdgeGRPOTrainer`` runs the generation and the
rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

BRANCHES = ("reflect", "answer", "solution")


def choose_branches(
    num: int,
    probs: Sequence[float],
    generator: torch.Generator,
    force_reflection: bool = False,
) -> list[str]:
    """Draw a correction branch for each of ``num`` wrong responses: ``reflect``/``answer``/``solution``.

    ``probs`` are the three branch probabilities (summing to 1). With ``force_reflection`` every draw is ``reflect``
    (the forced-reflection baseline). One uniform number is drawn per response either way, so the stream of random
    numbers does not depend on the mode.
    """
    draws = torch.rand(num, generator=generator).tolist()
    if force_reflection:
        return ["reflect"] * num
    cumulative = torch.tensor(probs, dtype=torch.float64).cumsum(0).tolist()
    return [BRANCHES[next((k for k, c in enumerate(cumulative) if u < c), len(BRANCHES) - 1)] for u in draws]


def split_ending(ids: Sequence[int], stop_token_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(body, ending)``: ``ending`` is the final run of stop tokens of ``ids`` (empty for a cut response)."""
    ids = list(ids)
    cut = len(ids)
    while cut > 0 and ids[cut - 1] in stop_token_ids:
        cut -= 1
    return ids[:cut], ids[cut:]


def strip_eos(ids: Sequence[int], eos_token_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The response without its ending (final stop tokens), and whether it had one."""
    body, ending = split_ending(ids, eos_token_ids)
    return body, bool(ending)


def turn_closing(ending: Sequence[int], end_of_turn_ids: Sequence[int] = ()) -> list[int]:
    """How a corrected response is closed, given the ``ending`` the model gave its response.

    With a chat template (``end_of_turn_ids``, e.g. ``[<|im_end|>]``): the end-of-turn token, then whatever else the
    model emitted in its ending (``<|im_end|><|endoftext|>`` stays so, a bare ``<|endoftext|>`` becomes
    ``<|im_end|><|endoftext|>``), so the turn is always closed. Plain prompts: the model's own ending. A cut response
    (no ending) stays open: ``[]``.
    """
    if not ending:
        return []
    return [*end_of_turn_ids, *(t for t in ending if t not in end_of_turn_ids)]


@dataclass
class Correction:
    """One corrected response: its token ids and which of them were injected rather than sampled."""

    branch: str
    completion_ids: list[int]
    injected: list[bool]
    generated_tokens: int = 0
    truncated: bool = False
    sampled_logprobs: list[float | None] | None = field(default=None, repr=False)
    prefix_length: int = 0  # leading tokens that are the policy's own (wrong) response, kept by reflect / answer


def loss_mask(correction: Correction, mask_injected: bool, mask_wrong_prefix: bool) -> list[int]:
    """Which tokens of a corrected response the loss covers (1) or skips (0, through TRL's ``tool_mask``).

    ``mask_injected``: the injected tokens (cue, answer text, reference solution) are skipped. ``mask_wrong_prefix``:
    the first ``prefix_length`` tokens, the wrong response a reflection or an injected answer keeps, are skipped, so
    the advantage the corrected ending earns does not reinforce the tokens that were wrong.
    """
    return [
        0 if (mask_injected and injected) or (mask_wrong_prefix and k < correction.prefix_length) else 1
        for k, injected in enumerate(correction.injected)
    ]


def _finish(
    branch: str,
    parts: list[tuple[list[int], bool]],
    max_length: int | None,
    logprobs: list[float | None] | None,
    generated: int = 0,
    prefix_length: int = 0,
) -> Correction:
    # max_length None: no cap (the official code's budget, see EdgeGRPOConfig.gec_cue_in_budget).
    ids = [t for chunk, _ in parts for t in chunk]
    injected = [inj for chunk, inj in parts for _ in chunk]
    truncated = max_length is not None and len(ids) > max_length
    return Correction(
        branch,
        ids[:max_length],
        injected[:max_length],
        generated,
        truncated,
        None if logprobs is None else logprobs[:max_length],
        min(prefix_length, len(ids[:max_length])),
    )


def reflection_prompt(
    prompt_ids: Sequence[int], response_ids: Sequence[int], cue_ids: Sequence[int], stop_token_ids: Sequence[int]
) -> list[int]:
    """The prompt a reflection continues from: prompt + response (ending stripped, so the turn is open) + cue.

    ``stop_token_ids``: EOS and the end-of-turn token (all the tokens that end a response).
    """
    return list(prompt_ids) + split_ending(response_ids, stop_token_ids)[0] + list(cue_ids)


def reflect(
    response_ids: Sequence[int],
    cue_ids: Sequence[int],
    continuation_ids: Sequence[int],
    stop_token_ids: Sequence[int],
    max_length: int | None,
    response_logprobs: Sequence[float | None] | None = None,
    continuation_logprobs: Sequence[float | None] | None = None,
) -> Correction:
    """response (ending stripped) + cue + continuation; the cue is injected. The continuation keeps its own ending
    (sampled with the same stop tokens, it closes the turn the way the model does)."""
    body, _ = split_ending(response_ids, stop_token_ids)
    logprobs = None
    if response_logprobs is not None:
        cont = list(continuation_logprobs) if continuation_logprobs is not None else [None] * len(continuation_ids)
        logprobs = list(response_logprobs)[: len(body)] + [None] * len(cue_ids) + cont
    parts = [(body, False), (list(cue_ids), True), (list(continuation_ids), False)]
    return _finish("reflect", parts, max_length, logprobs, generated=len(continuation_ids), prefix_length=len(body))


def inject_answer(
    response_ids: Sequence[int],
    injection_ids: Sequence[int],
    stop_token_ids: Sequence[int],
    max_length: int | None,
    response_logprobs: Sequence[float | None] | None = None,
    end_of_turn_ids: Sequence[int] = (),
) -> Correction:
    """response (ending stripped) + injected answer text (inside the turn) + ``turn_closing`` of the model's ending
    (nothing if the response was cut). ``stop_token_ids``: EOS and the end-of-turn token."""
    body, ending = split_ending(response_ids, stop_token_ids)
    tail = turn_closing(ending, end_of_turn_ids)
    logprobs = None
    if response_logprobs is not None:
        logprobs = list(response_logprobs)[: len(body)] + [None] * (len(injection_ids) + len(tail))
    parts = [(body, False), (list(injection_ids) + tail, True)]
    return _finish("answer", parts, max_length, logprobs, prefix_length=len(body))


def replace_with_solution(
    solution_ids: Sequence[int],
    closing_ids: Sequence[int],
    max_length: int | None,
    with_logprobs: bool = False,
) -> Correction:
    """The reference solution + ``closing_ids`` (the turn's end: ``turn_closing`` of the model's ending, or the
    end-of-turn token / EOS for a cut response), every token injected."""
    ids = [*solution_ids, *closing_ids]
    logprobs = [None] * len(ids) if with_logprobs else None
    return _finish("solution", [(ids, True)], max_length, logprobs)
