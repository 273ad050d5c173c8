"""Tiny offline models and data for tests, benchmarks and demos.

Everything here is built locally: a Qwen2-architecture causal LM with random weights and a byte-level BPE tokenizer
trained on the spot with `tokenizers` (through ``Qwen2Tokenizer.train_new_from_iterator``, which reloads identically
with ``AutoTokenizer``). Nothing touches the Hugging Face Hub.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2 import Qwen2Tokenizer

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Qwen2.5's chat template, reduced to plain role/content messages.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus(seed: int, size: int = 2000) -> list[str]:
    rng = random.Random(seed)
    words = [
        "the",
        "answer",
        "is",
        "so",
        "we",
        "get",
        "then",
        "add",
        "subtract",
        "multiply",
        "step",
        "first",
        "next",
        "final",
        "therefore",
    ]
    lines = []
    for _ in range(size):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? {' '.join(rng.choices(words, k=6))} \\boxed{{{a + b}}}")
        lines.append(
            f"system\nuser\nassistant\nPlease reason step by step, and put your final answer within \\boxed{{}}. {a}*{b}-{a}"
        )
    return lines


def build_tiny_tokenizer(vocab_size: int = 400, seed: int = 0) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer with Qwen's special tokens and chat template, trained locally."""
    base = Qwen2Tokenizer()
    tokenizer = base.train_new_from_iterator(
        _corpus(seed), vocab_size=vocab_size, new_special_tokens=[PAD_TOKEN, IM_START, IM_END]
    )
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN, "eos_token": IM_END})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(
    output_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int = 400,
    initializer_range: float = 0.3,
    seed: int = 0,
) -> Path:
    """Save a tiny random-weight Qwen2ForCausalLM and its tokenizer to ``output_dir`` and return the path.

    ``initializer_range`` is larger than Qwen's 0.02 so that the random model's next-token distributions are peaked
    to different degrees (entropies around 3.2-3.8 nats rather than a flat log(V) everywhere), which gives
    entropy-driven methods something to act on. Reuses ``output_dir`` when it already holds a model.
    """
    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists() and (output_dir / "tokenizer_config.json").exists():
        return output_dir
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, seed=seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    # Fail here, not in a test, if the tokenizer does not reload identically.
    reloaded = AutoTokenizer.from_pretrained(output_dir)
    probe = "What is 12 + 7? \\boxed{19}"
    if reloaded(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
        raise RuntimeError(f"The tiny tokenizer saved to {output_dir} does not reload identically.")
    return output_dir


def tiny_addition_dataset(num_prompts: int = 64, seed: int = 0, conversational: bool = True) -> Dataset:
    """Two-number addition prompts with their answers and worked solutions (columns prompt, answer, solution)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_prompts):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        question = f"What is {a} + {b}?"
        prompt = [{"role": "user", "content": question}] if conversational else question
        solution = f"We add {a} and {b}. The answer is \\boxed{{{a + b}}}."
        rows.append({"prompt": prompt, "answer": str(a + b), "solution": solution})
    return Dataset.from_list(rows)


def digit_share_reward(completions: list, **_: object) -> list[float]:
    """A cheap, real, graded reward: the share of digit characters in each completion.

    Random-weight models almost never solve a task, so an accuracy reward gives every group equal rewards; this one
    varies within a group, which exercises advantages, EDA and the covariance methods.
    """
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]


def boxed_answer_reward(completions: list, answer: list, **_: object) -> list[float]:
    """1.0 when the last ``\\boxed{...}`` of a completion equals the reference answer as a string, else 0.0.

    A plain exact-match grader for tests on the synthetic addition task (math-verify grades real math).
    """
    from edge_trl.data import normalize_answer
    from edge_trl.rewards import completion_text, last_boxed

    boxed = [last_boxed(completion_text(c)) for c in completions]
    return [float(b is not None and b == normalize_answer(a)) for b, a in zip(boxed, answer, strict=True)]
