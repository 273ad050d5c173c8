"""The chat template's end-of-turn token, a stop token wherever prompts are rendered with the template.

A base model's ``generation_config`` often names only its document end as EOS (Qwen2.5-Math-1.5B: ``<|endoftext|>``),
while the chat template closes every assistant turn with another token (Qwen: ``<|im_end|>``). Generation from a
chat-rendered prompt must stop there too (rollouts, GEC's reflections, ``edge-trl eval``), and GEC must place what it
injects before it. The token is read from the template itself, not hard-coded.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Unlikely to be split across tokens in a way that merges with the template's text around it.
_SENTINEL = "EDGE_TRL_END_OF_TURN_PROBE"


def end_of_turn_token_ids(tokenizer: Any) -> list[int]:
    """The token that closes an assistant turn in ``tokenizer``'s chat template, as a list (empty when none).

    Renders a user message and an assistant message whose content is a sentinel, and returns the first token after
    the sentinel when it is a special token (``<|im_end|>`` for Qwen, ``<|eot_id|>`` for Llama 3, ``</s>`` for a
    template that closes turns with EOS). A tokenizer without a chat template, or a template that renders nothing
    special after the assistant's content, gives ``[]``.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return []
    messages = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as error:  # a template may reject this conversation shape: then we cannot tell
        logger.warning("Could not render the chat template to find its end-of-turn token: %s", error)
        return []
    if not isinstance(text, str) or _SENTINEL not in text:
        return []
    suffix = text.split(_SENTINEL, 1)[1].lstrip(" \t")
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if ids and ids[0] in set(tokenizer.all_special_ids):
        return [ids[0]]
    return []
