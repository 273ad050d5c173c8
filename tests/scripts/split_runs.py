"""Runs shared by tests/test_cov_scope.py (in the test process) and tests/scripts/ds_cov_two_ranks.py (two processes).

``cov_split_run`` trains one optimizer step of Clip-Cov on a *fixed* rollout, split as asked (micro-batch size x
gradient accumulation, one or two processes): every response is a function of its prompt and its copy number, so the
three splits train on the very same tokens, and only the split differs. It returns the parameter update and the
selected tokens, each token named by its response's rollout position and its own position (``token_keys``).
"""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.core_algos import token_keys
from edge_trl.testing import CPU_RUN_SETTINGS, digit_share_reward, tiny_addition_dataset
from edge_trl.trainer import RESPONSE_IDS_KEY

DATASET_SIZE = 32


def content_reward(completions: list, **_: object) -> list[float]:
    """A reward of the completion's text alone (length mod 5 plus the digit share), the same whatever the split."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [len(t) % 5 / 4 + s for t, s in zip(texts, digit_share_reward(completions), strict=True)]


class FixedRollouts(EdgeGRPOTrainer):
    """Completions drawn from a generator seeded by (prompt tokens, copy number), not sampled from the model; records
    the keys of the tokens Clip-Cov selects."""

    selected_keys: list[int]

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        specials = set(self.processing_class.all_special_ids)
        vocab = [t for t in range(len(self.processing_class)) if t not in specials]
        seen: Counter = Counter()
        completions = []
        for ids in prompt_ids:
            copy = seen[tuple(ids)]
            seen[tuple(ids)] += 1
            seed = zlib.crc32(bytes(str(list(ids)), "ascii")) * 131 + copy
            generator = torch.Generator().manual_seed(seed)
            length = 6 + int(torch.randint(0, 7, (1,), generator=generator))
            picks = torch.randint(0, len(vocab), (length,), generator=generator).tolist()
            completions.append([vocab[p] for p in picks])
        return completions, None

    def _apply_loss_hooks(self, inputs, logps, entropies):
        out = super()._apply_loss_hooks(inputs, logps, entropies)
        keys = token_keys(inputs[RESPONSE_IDS_KEY], logps.size(1))[self._loss.selected]
        self.selected_keys.extend(keys.tolist())
        return out


def cov_split_run(model_dir: str, output_dir: Path, per_device: int, accumulation: int, scope: str) -> dict[str, Any]:
    """One Clip-Cov optimizer step (SGD, so the update is linear in the gradient) on the fixed rollout of 2 prompts x
    4 responses. Returns ``update`` (parameter name -> change) and ``selected`` (token keys, this process)."""
    args = EdgeGRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_generations=4,
        max_completion_length=12,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        loss_type="grpo",  # a per-sequence mean: the same gradient for any split of 8 equal-weight sequences
        cov_mode="clip_cov",
        clip_cov_ratio=0.1,
        clip_cov_lb=-1e9,
        clip_cov_ub=1e9,
        cov_scope=scope,
        **CPU_RUN_SETTINGS,
    )
    trainer = FixedRollouts(
        model_dir, reward_funcs=content_reward, args=args, train_dataset=tiny_addition_dataset(DATASET_SIZE)
    )
    trainer.selected_keys = []
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    update = {n: (p.detach() - before[n]) for n, p in trainer.model.named_parameters()}
    return {"update": update, "selected": sorted(trainer.selected_keys)}
