"""`RunSpec`: one `edge-trl train` run, the one object the launcher hands to the worker.

Its fields other than ``trainer`` are the *run keys*: what to train and how to launch it. Each is a flag of
`edge-trl train` (help from the metadata) and a key a recipe YAML may hold. ``trainer`` holds the `EdgeGRPOConfig`
settings. The launcher fills every field (`edge_trl.launch.resolve`), writes the spec to
``<output_dir>/edge_trl_run.yaml``, and `edge_trl.worker` reads it back into this class. Adding a run setting means
adding a field here (and reading it where it acts).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_trl.data import TEMPLATES

RUN_FILE = "edge_trl_run.yaml"


def _method_presets() -> dict[str, Any]:
    from edge_trl.methods import method_presets

    return method_presets()


def _reward_help() -> str:
    from edge_trl.rewards import reward_help

    return reward_help()


def plugins(value: str | list[str] | None) -> list[str]:
    """The ``plugin`` run key as a list of files or modules."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [str(item).strip() for item in items if str(item).strip()]


def load_plugins(value: str | list[str] | None) -> None:
    """Import every plugin of ``value`` (``--plugin``): its methods and rewards register themselves."""
    from edge_trl.methods import load_plugin

    for item in plugins(value):
        load_plugin(item)


# Fields of RunSpec that are not flags nor recipe keys.
NOT_A_FLAG = {"trainer", "recipe"}


@dataclass
class RunSpec:
    """What `edge-trl train` runs. ``None`` = not given (the launcher fills a default)."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, local path or alias (e.g. qwen2.5-math-1.5b). Neither --model nor --dataset: "
            "the built-in tiny model and task."
        },
    )
    method: str | None = field(
        default=None,
        metadata={
            "help": "A named set of EdgeGRPOConfig values, a method's preset (edge_trl/methods/, and any --plugin's); "
            "default edge.",
            "choices_from": lambda: list(_method_presets()),
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local JSON/JSONL/Parquet file, save_to_disk folder, or a dataset shipped with "
            "edge-trl: deepscaler-hard-1k (EDGE-GRPO's 1,000 problems). Default: the model alias's recipe's, else "
            "agentica-org/DeepScaleR-Preview-Dataset."
        },
    )
    dataset_split: str | None = field(default=None, metadata={"help": "Split to train on (default train)."})
    prompt_column: str | None = field(default=None, metadata={"help": "Column with the problem (default: by name)."})
    answer_column: str | None = field(default=None, metadata={"help": "Column with the reference answer."})
    solution_column: str | None = field(default=None, metadata={"help": "Column with the reference solution (GEC)."})
    template: str | None = field(
        default=None,
        metadata={"help": "Prompt template: chat (default) or plain for base models.", "choices": list(TEMPLATES)},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest prompt, in tokens (chat template included); longer rows are an error before training "
            "starts (TRL 1.16 does not truncate prompts). Default: no check."
        },
    )
    drop_long_prompts: bool | None = field(
        default=None,
        metadata={"help": "Drop the prompts longer than --max-prompt-length (counted) instead of failing."},
    )
    reward: str | None = field(
        default=None,
        metadata={"help": "Comma-separated rewards (default format,accuracy).", "help_from": lambda: _reward_help()},
    )
    plugin: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated Python files (my_method.py) or modules (my_pkg.my_method) to import first, in "
            "this command and in every worker process: they may register methods (edge_trl.methods.register_method,"
            " their fields become flags) and rewards (edge_trl.rewards.register_reward)."
        },
    )
    vllm: str | None = field(
        default=None,
        metadata={
            "help": "Generate rollouts with vLLM: colocate (inside every training process, sharing its device) or "
            "server (a running `trl vllm-serve`; GPU only). Same as --use-vllm --vllm-mode MODE; the --vllm-* flags "
            "tune it. Default: colocate on a GPU machine with a tested vLLM installed, else transformers.",
            "choices": ["colocate", "server"],
        },
    )
    lora: bool | None = field(default=None, metadata={"help": "Train a LoRA adapter instead of the full model."})
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank (default 16; needs --lora)."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 32; needs --lora)."})
    lora_dropout: float | None = field(default=None, metadata={"help": "LoRA dropout (default 0.05; needs --lora)."})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "LoRA target modules (default all-linear; needs --lora)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'last' for the newest in --output-dir."}
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "single_gpu, multi_gpu, zero1, zero2, zero3, zero3_offload, fsdp, cpu (edge-trl configs), "
            "or a path. Default: single_gpu with a GPU, else cpu."
        },
    )
    num_processes: int | None = field(
        default=None, metadata={"help": "Processes in all (default: one per GPU; 2 on CPU)."}
    )
    num_machines: int = field(default=1, metadata={"help": "Machines of a multi-node run."})
    machine_rank: int = field(default=0, metadata={"help": "Rank of this machine in a multi-node run."})
    main_process_ip: str | None = field(default=None, metadata={"help": "Address of machine 0 (multi-node)."})
    main_process_port: int | None = field(default=None, metadata={"help": "Port of machine 0 (multi-node)."})
    recipe: str | None = field(
        default=None, metadata={"help": "The shipped recipe a model alias brought (filled by the launcher)."}
    )
    trainer: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "The EdgeGRPOConfig settings (filled by the launcher)."}
    )

    @property
    def uses_embedded_task(self) -> bool:
        from edge_trl.embedded import EMBEDDED_DATASET

        return self.dataset == EMBEDDED_DATASET

    def lora_settings(self) -> dict[str, Any] | None:
        """The LoRA settings of a resolved run, or None without LoRA."""
        if not self.lora:
            return None
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target_modules": self.lora_target_modules}  # fmt: skip

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def save(self, path: Path) -> None:
        """Written whole or not at all (a temporary file renamed): a worker never reads a half-written run."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(self.to_yaml())
        os.replace(partial, path)

    @property
    def run_file_name(self) -> str:
        """``edge_trl_run.yaml``; on machine rank k > 0 of a multi-machine run, ``edge_trl_run.machine{k}.yaml``, so
        that machines sharing one output directory do not overwrite each other's run (it differs in machine_rank)."""
        return RUN_FILE if not self.machine_rank else RUN_FILE.replace(".yaml", f".machine{self.machine_rank}.yaml")

    @classmethod
    def load(cls, path: Path) -> RunSpec:
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))


def run_keys() -> set[str]:
    """The RunSpec keys a recipe YAML, ``--set`` or a flag may give."""
    return {f.name for f in dataclasses.fields(RunSpec)} - NOT_A_FLAG
