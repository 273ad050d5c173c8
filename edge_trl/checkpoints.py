"""Checkpoints: the ``checkpoint-<step>`` folders of a run, which of them are complete, and exact resume.

**Lookup.** ``checkpoint_dirs`` lists the folders, ``newest_complete_checkpoint`` finds the one
``--resume-from-checkpoint last`` resumes from: the newest *complete* one. A kill during a save (preemption, OOM
killer, a full disk) leaves a partial folder behind; ``checkpoint_problem`` says what is wrong with one. Complete means:

* ``trainer_state.json`` is present and parses, with a ``global_step`` (the Trainer writes it last, so a folder
  without it was never finished; edge-trl's own files are written first, see ``save_resume_state``);
* model weights are present (``model.safetensors``, its shards named by ``model.safetensors.index.json``,
  ``adapter_model.safetensors`` or ``pytorch_model.bin``) and every ``*.safetensors`` file is whole: its header parses
  and the file is as long as the header says (a cheap check, no tensor is read);
* the optimizer, the scheduler and the RNG state are present (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``;
  or, with DeepSpeed, its ``global_step*`` folder), and every torch file (``*.pt``, ``*.pth``, ``*.bin``) is a whole
  zip archive (``torch.save``'s format; a truncated one has no end-of-archive record);
* ``edge_trl_state.json``, when present, parses.

**Exact resume**: the training state that TRL 1.16 / transformers 5 checkpoints do not keep, saved and restored.

A transformers checkpoint holds the weights, the optimizer, the scheduler, the RNG states of every process and the
``TrainerState``; on resume the Trainer skips the batches already trained in the current epoch. Measured on CPU
(``tests/test_resume.py``), TRL's ``GRPOTrainer`` then continues bit-identically, except in two cases:

* **A rollout that spans the checkpoint** (``steps_per_generation * num_iterations`` micro-steps per rollout, and a
  checkpoint that is not at a rollout boundary, e.g. ``num_iterations=2`` and an odd step): TRL keeps the rollout in
  ``_buffered_inputs`` and its micro-step counter in ``_step``; neither is saved, so the resumed run generates a new
  rollout (with the new weights) and trains on its first slices instead of the remaining slices of the old one.
* **A resume at an epoch boundary or later epoch**: TRL's ``RepeatSampler`` draws each epoch's order from one
  generator seeded once; a resumed run builds a fresh sampler, so epoch ``e`` gets epoch 0's order again.

edge-trl also keeps two counters of its own: GEC's branch-draw counter and Clip-Cov's generator, seeded from TRL's
``_step``. Both would restart at 0.

What is saved, in the checkpoint folder:

* ``edge_trl_state.json`` (process 0; the values are the same on every process): TRL's ``_step``, GEC's rollout
  counter and, with dynamic sampling, the number of generation batches drawn (the prompt position in the sampler's
  order, extra batches included);
* ``edge_trl_rollout_{process}.pt`` (every process, only when the checkpoint falls inside a rollout): TRL's
  ``_buffered_inputs``, the process's share of the rollout still to be trained on.

The data order across epochs is made resumable by ``ResumableRepeatSampler`` (same order as TRL's uninterrupted).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch and trl are imported where used: `edge-trl train` looks checkpoints up before any heavy import.

logger = logging.getLogger(__name__)

STATE_FILE = "edge_trl_state.json"
ROLLOUT_FILE = "edge_trl_rollout_{process}.pt"
STATE_FORMAT = 1
TRAINER_STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
                "adapter_model.bin")  # fmt: skip


# -- lookup -------------------------------------------------------------------------------------------------------------


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, oldest (lowest step) first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-<step>`` folder of ``output_dir``, complete or not, or None."""
    return next(reversed(checkpoint_dirs(output_dir)), None)


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of ``output_dir`` (None if there is none) and the newer ones skipped, each with
    what is wrong with it (``checkpoint_problem``)."""
    skipped = []
    for folder in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """What makes ``folder`` an incomplete checkpoint (a missing or truncated file), or None when it is complete.

    The rules are in the module docstring; every check reads at most a file's header and its size.
    """
    folder = Path(folder)
    try:
        state = json.loads((folder / TRAINER_STATE_FILE).read_text())
    except FileNotFoundError:
        return f"{TRAINER_STATE_FILE} is missing (the save did not finish)"
    except (OSError, ValueError) as error:
        return f"{TRAINER_STATE_FILE} does not parse ({error})"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE_FILE} has no global_step"
    deepspeed = any(p.is_dir() for p in folder.glob("global_step*"))
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not deepspeed:
        return f"the model weights are missing (none of {', '.join(WEIGHT_FILES)})"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = index_shards(index)
        except ValueError as error:
            return str(error)
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            return f"weight shard {missing[0]} is missing"
    required = [] if deepspeed else ["optimizer.pt", "scheduler.pt"]
    missing = [name for name in required if not (folder / name).is_file()]
    if not any(folder.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    if missing:
        return f"{missing[0]} is missing"
    for path in sorted(folder.iterdir()):
        problem = _file_problem(path)
        if problem is not None:
            return f"{path.name} {problem}"
    return None


def index_shards(index: Path) -> list[str]:
    """The weight files a ``model.safetensors.index.json`` names, sorted; ValueError saying why when it does not
    parse."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"{index.name} does not parse ({error})") from None


def _file_problem(path: Path) -> str | None:
    """A truncated weights/torch file, or an unreadable edge-trl state (None: looks whole, or not checked)."""
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
        return "is truncated or not a torch file (no zip end record)"
    if path.name == STATE_FILE:
        try:
            json.loads(path.read_text())
        except ValueError as error:
            return f"does not parse ({error})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    # safetensors layout: 8-byte little-endian header length N, N bytes of JSON header, then the tensor data, whose
    # end is the largest data_offsets end in the header.
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"is truncated ({size} bytes)"
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            return f"is truncated (header of {header_size} bytes, file of {size})"
        try:
            header = json.loads(f.read(header_size))
        except ValueError as error:
            return f"has an unreadable header ({error})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


# -- exact resume -------------------------------------------------------------------------------------------------------


def rollout_in_progress(step: int, steps_per_generation: int, num_iterations: int) -> bool:
    """True when micro-step ``step`` is inside a rollout: TRL 1.16 ``_prepare_inputs`` generates a new rollout only
    when ``step % (steps_per_generation * num_iterations) == 0``, and reuses ``_buffered_inputs`` otherwise."""
    return step % (steps_per_generation * num_iterations) != 0


def save_resume_state(
    checkpoint_dir: str | os.PathLike,
    state: dict[str, Any],
    buffered_inputs: list[dict[str, Any]] | None,
    process_index: int,
    is_main_process: bool,
) -> None:
    """Write ``state`` (JSON, by the main process) and this process's ``buffered_inputs`` (if any) to the checkpoint.

    Files are written to a temporary name and renamed, so a kill during the save never leaves a half-written file
    under the final name.
    """
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if is_main_process:
        _atomic_write(folder / STATE_FILE, lambda f: f.write(json.dumps({"format": STATE_FORMAT, **state}).encode()))
    if buffered_inputs is not None:
        import torch

        _atomic_write(folder / ROLLOUT_FILE.format(process=process_index), lambda f: torch.save(buffered_inputs, f))


def load_resume_state(
    checkpoint_dir: str | os.PathLike, process_index: int, device: torch.device
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The saved state (None for a checkpoint written without edge-trl's state) and this process's rollout buffer
    (None when the checkpoint was at a rollout boundary)."""
    folder = Path(checkpoint_dir)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return None, None
    state = json.loads(state_path.read_text())
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{state_path} has format {state.get('format')!r}, this edge-trl reads format {STATE_FORMAT}: resume "
            "with the edge-trl version that wrote the checkpoint."
        )
    import torch

    rollout_path = folder / ROLLOUT_FILE.format(process=process_index)
    # A CPU process's device can be "cpu:0" (several CPU processes under accelerate), which torch.load's
    # map_location does not accept: CPU devices load to plain "cpu".
    location = "cpu" if torch.device(device).type == "cpu" else device
    buffered = torch.load(rollout_path, map_location=location, weights_only=True) if rollout_path.is_file() else None
    return state, buffered


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def __getattr__(name: str) -> Any:
    # ResumableRepeatSampler subclasses TRL's sampler: built on first use, so importing this module stays light.
    if name == "ResumableRepeatSampler":
        return _resumable_repeat_sampler()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _resumable_repeat_sampler() -> type:
    import torch
    from trl.trainer.utils import RepeatSampler

    class ResumableRepeatSampler(RepeatSampler):
        """TRL's ``RepeatSampler`` whose epoch order can be recomputed: the same orders as TRL's in an uninterrupted run.

        TRL 1.16's sampler seeds its generator once and draws one permutation per ``__iter__``, i.e. per epoch, so a
        resumed run (a fresh sampler) would replay epoch 0's order. The Trainer calls ``set_epoch(epoch)`` before each
        epoch (through accelerate's data loader), and here that re-seeds the generator and skips the ``epoch`` permutations
        already drawn: the next ``__iter__`` yields epoch ``epoch``'s order whether or not the run was interrupted.
        """

        def chunk(self, number: int) -> list[int]:
            """The prompt indices of generation batch ``number`` counted from the start of training: epoch
            ``number // batches_per_epoch``'s order, recomputed from the seed like ``set_epoch`` (this sampler's own
            generator is left alone). Dynamic sampling draws its prompts with it, past the epoch's end if needed."""
            per_epoch = self.num_samples // self.batch_size
            if per_epoch == 0:
                raise ValueError(
                    f"The training set has {self.num_samples} prompts, fewer than one generation batch's "
                    f"{self.batch_size}."
                )
            epoch, position = divmod(number, per_epoch)
            if getattr(self, "_order_epoch", None) != epoch:
                if self.shuffle:
                    generator = torch.Generator()
                    generator.manual_seed(self.seed if self.seed is not None else 0)
                    for _ in range(epoch):
                        torch.randperm(self.num_samples, generator=generator)
                    self._order = torch.randperm(self.num_samples, generator=generator).tolist()
                else:
                    self._order = list(range(self.num_samples))
                self._order_epoch = epoch
            return self._order[position * self.batch_size : (position + 1) * self.batch_size]

        def set_epoch(self, epoch: int) -> None:
            if not self.shuffle or self.seed is None:
                return  # unshuffled: nothing to replay; unseeded: no reproducible order to begin with
            self.generator.manual_seed(self.seed)
            for _ in range(epoch):
                torch.randperm(self.num_samples, generator=self.generator)

    return ResumableRepeatSampler
