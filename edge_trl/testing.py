"""Tiny offline models, data and measurement helpers shared by the tests, the benchmarks and the demos.

The split: everything the tests *and* the benchmarks use lives here (model and tokenizer builders, the addition
data, cheap rewards, reading logged metrics, timing a rollout cycle, peak memory); test-only configs and asserts live
in ``tests/_helpers.py``.

Everything here is built locally: a Qwen2-architecture causal LM with random weights and a byte-level BPE tokenizer
trained on the spot with `tokenizers` (through ``Qwen2Tokenizer.train_new_from_iterator``, which reloads identically
with ``AutoTokenizer``). Nothing touches the Hugging Face Hub.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase
from transformers.models.qwen2 import Qwen2Tokenizer

from edge_trl.embedded import addition_dataset
from edge_trl.random_models import Qwen2Size, build_qwen2

# Re-exported for the tests: the one exact-match grader lives in edge_trl.rewards.
from edge_trl.rewards import boxed_answer_reward as boxed_answer_reward

QUESTION_TEMPLATE = "What is {a} + {b}?"

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


# The settings of every short CPU training run in the tests and their scripts: fp32 on CPU, no checkpointing, nothing
# reported or saved, one log entry per step, seed 0, no progress bar.
CPU_RUN_SETTINGS: dict[str, Any] = {
    "bf16": False,
    "gradient_checkpointing": False,
    "use_cpu": True,
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "disable_tqdm": True,
}


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


# Qwen2.5-Math-1.5B's architecture, from its config.json, so that nothing needs the Hub to build it (random weights).
QWEN2_5_MATH_1_5B = Qwen2Size(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=4096,
)


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
    size = Qwen2Size(hidden_size, hidden_size * 2, num_hidden_layers, num_attention_heads, num_key_value_heads)
    model = build_qwen2(tokenizer, size, initializer_range=initializer_range, seed=seed)
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
    """Two-number addition prompts "What is a + b?" (operands 0-49) with their answers and worked solutions
    (columns prompt, answer, solution): ``edge_trl.embedded.addition_dataset`` in the tests' question style."""
    return addition_dataset(
        num_prompts, seed, max_operand=49, template=QUESTION_TEMPLATE, conversational=conversational, solutions=True
    )


def digit_share_reward(completions: list, **_: object) -> list[float]:
    """A cheap, real, graded reward: the share of digit characters in each completion.

    Random-weight models almost never solve a task, so an accuracy reward gives every group equal rewards; this one
    varies within a group, which exercises advantages, EDA and the covariance methods.
    """
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]


def even_answer_constant_reward(completions: list, answer: list, **_: object) -> list[float]:
    """Constant (1.0) on the prompts whose answer is even, the graded digit share on the others: the groups of
    even-answer prompts always have equal rewards (dynamic sampling drops them)."""
    varied = digit_share_reward(completions)
    return [1.0 if int(a) % 2 == 0 else v for a, v in zip(answer, varied, strict=True)]


def logged(trainer: Any, key: str) -> list[float]:
    """Every logged value of ``key`` in the trainer's history, one per logging step."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def quiet(trainer: Any) -> Any:
    """Remove the console printer and progress bar of a trainer (benchmarks print their own table)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def prepare_for_cycles(trainer: Any) -> Any:
    """Run one real optimizer step (prepares model, optimizer and accelerator; also a warm-up)."""
    trainer.args.max_steps = 1
    trainer.train()
    return trainer


def time_cycle(trainer: Any, rows: list) -> float:
    """Seconds for one rollout cycle: generation, then every micro-step's loss and backward, no optimizer step.

    No optimizer step means the weights, hence the work, stay identical from cycle to cycle, so cycles of different
    trainers can be interleaved and compared one to one.
    """
    trainer._step, trainer._buffered_inputs = 0, None
    micro_steps = trainer.args.steps_per_generation * trainer.num_iterations
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(micro_steps):
        trainer.training_step(trainer.model_wrapped, rows, None)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    trainer.model_wrapped.zero_grad(set_to_none=True)
    return elapsed


class RssGrowth:
    """Peak growth of this process's resident memory while the context is open (sampled every millisecond; Linux).

    On CPU torch keeps no peak-memory statistic; this is the CPU stand-in for ``torch.cuda.max_memory_allocated``.
    """

    def __enter__(self) -> RssGrowth:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base
