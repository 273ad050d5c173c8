"""Is the final model folder loadable? Checked on the main process before "model saved" is printed or a push starts.

A save can succeed and still leave nothing loadable: DeepSpeed ZeRO-3 without ``zero3_save_16bit_model: true``
(``stage3_gather_16bit_weights_on_model_save``) writes its sharded ``global_step*`` states instead of the weights,
and a save of parameters that were never gathered writes empty (0-element) tensors. ``saved_model_problems`` reads
only the files' headers (``safetensors``) and compares them with the names and shapes of the trained model's
parameters, so it costs milliseconds for any model size and needs no collective, no GPU and no second copy of the
model in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_trl.checkpoints import _safetensors_problem, index_shards

FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def expected_parameters(model: Any) -> dict[str, tuple[int, ...]]:
    """The parameter names and full shapes the saved model must hold: ``model.named_parameters()`` with tied
    duplicates removed (as ``save_pretrained`` writes them). Under ZeRO-3 a parameter is a local shard and its full
    shape is ``ds_shape``."""
    return {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}


def saved_model_problems(
    folder: str | Path, expected: dict[str, tuple[int, ...]] | None = None, adapter: bool = False
) -> list[str]:
    """What keeps ``folder`` from loading with ``from_pretrained`` (``PeftModel.from_pretrained`` when ``adapter``);
    an empty list when nothing does.

    Full model: ``config.json`` and ``model.safetensors`` (or the shards its index names), every file whole, no empty
    tensor, and, when ``expected`` is given, every expected parameter present with its shape. Adapter:
    ``adapter_config.json`` and ``adapter_model.safetensors`` with at least one tensor and no empty one (the
    trainable parameters' names carry PEFT's adapter name, which the saved file drops, so only the count is compared
    with ``expected``).
    """
    folder = Path(folder)
    config = "adapter_config.json" if adapter else "config.json"
    problems = [] if (folder / config).is_file() else [f"{config} is missing"]
    files = _weight_files(folder, adapter, problems)
    tensors: dict[str, tuple[int, ...]] = {}
    for path in files:
        problem = _safetensors_problem(path)
        if problem is not None:
            problems.append(f"{path.name} {problem}")
            continue
        tensors.update(_tensor_shapes(path))
    if files and not problems:
        problems += [f"{name} is empty (shape {list(shape)}): it was saved without being gathered"
                     for name, shape in tensors.items() if 0 in shape]  # fmt: skip
        problems += _compare(tensors, expected, adapter)
    return problems


def recovery_hint(folder: str | Path) -> str:
    """How to get loadable weights back from what was saved, for the error message."""
    folder = Path(folder)
    if (folder / "zero_to_fp32.py").is_file() and any(folder.glob("global_step*")):
        return (
            f"DeepSpeed saved its sharded states instead: rebuild the weights with `python {folder}/zero_to_fp32.py "
            f"{folder} {folder}` (pytorch_model.bin; its --safe_serialization refuses tied embeddings), and add `zero3_save_16bit_model: true` to the deepspeed_config "
            "of your accelerate config (the shipped zero3 configs have it) so the next run saves them itself."
        )
    return "the checkpoints are kept: resume from the newest with --resume-from-checkpoint last to save again."


def _weight_files(folder: Path, adapter: bool, problems: list[str]) -> list[Path]:
    if adapter:
        path = folder / ADAPTER_WEIGHTS
        if not path.is_file():
            problems.append(f"{ADAPTER_WEIGHTS} is missing")
            return []
        return [path]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = index_shards(index)
        except ValueError as error:
            problems.append(str(error))
            return []
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        problems += [f"weight shard {shard} (named by {index.name}) is missing" for shard in missing]
        return [folder / shard for shard in shards if shard not in missing]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    problems.append("the weights are missing (no model.safetensors nor model.safetensors.index.json)")
    return []


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _compare(
    tensors: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]] | None, adapter: bool
) -> list[str]:
    if not tensors:
        return ["the weight files hold no tensor"]
    if expected is None:
        return []
    if adapter:
        if len(tensors) != len(expected):
            return [f"{ADAPTER_WEIGHTS} holds {len(tensors)} tensors, the adapter has {len(expected)}"]
        return []
    missing = [name for name in expected if name not in tensors]
    wrong = [f"{name} has shape {list(tensors[name])}, the model {list(shape)}"
             for name, shape in expected.items() if name in tensors and tensors[name] != shape]  # fmt: skip
    return [*_first(missing, "missing from the saved weights"), *wrong[:5]]


def _first(names: Iterable[str], what: str, limit: int = 5) -> list[str]:
    names = list(names)
    if not names:
        return []
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return [f"{len(names)} parameters {what}: {', '.join(names[:limit])}{more}"]
