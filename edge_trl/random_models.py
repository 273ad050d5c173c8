"""Random-weight Qwen2 causal LMs, built locally: the one builder of the embedded adder (``edge_trl.embedded``), the
tests' tiny model and the benchmarks' models (``edge_trl.testing``). Nothing touches the Hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Qwen2Size:
    """The dimensions of a Qwen2 causal LM; ``vocab_size=None`` takes the tokenizer's length."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int | None = None
    max_position_embeddings: int = 1024


def build_qwen2(tokenizer: Any, size: Qwen2Size, *, initializer_range: float = 0.02, seed: int = 0) -> Any:
    """A random-weight Qwen2ForCausalLM of ``size`` (tied embeddings) using ``tokenizer``'s pad and EOS tokens.

    The one builder of every tiny or full-size random model in edge-trl: the test model (``build_tiny_model``), the
    embedded adder (``edge_trl.embedded``) and the benchmarks. The weights depend only on ``size``,
    ``initializer_range`` and ``seed`` (``torch.manual_seed(seed)`` right before initialisation).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=size.vocab_size or len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)
