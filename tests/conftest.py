"""Shared fixtures: a tiny offline Qwen2 model built once per test session. No test reaches the Hub."""

from __future__ import annotations

import os

# Set before transformers / datasets / huggingface_hub are imported anywhere: any Hub access fails fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "edge-grpo"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_trl.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


def _addition_file(tmp_path_factory: pytest.TempPathFactory, rows: int) -> Path:
    from edge_trl.testing import tiny_addition_dataset

    path = tmp_path_factory.mktemp("data") / "addition.jsonl"
    tiny_addition_dataset(rows).to_json(str(path))
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local JSONL math dataset (problem/answer/solution) of 64 addition problems, for `edge-trl train` runs."""
    return _addition_file(tmp_path_factory, 64)


@pytest.fixture(scope="session")
def small_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with 16 problems, for runs that check the dataset or train a step or two."""
    return _addition_file(tmp_path_factory, 16)
