"""The ``checkpoint-<step>`` folders the Trainer writes into an output directory."""

from __future__ import annotations

from pathlib import Path


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, oldest (lowest step) first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder of ``output_dir``, or None."""
    return next(reversed(checkpoint_dirs(output_dir)), None)
