"""`edge-trl train`: resolve a run (method preset, recipe YAML, flags), check it, and start it with `accelerate launch`.

Everything that can be checked before processes start is checked here, so bad input gets one clear message instead
of a traceback from every rank. The resolved run is written to ``<output_dir>/edge_trl_run.yaml`` and handed to
``edge_trl/worker.py``, which `accelerate launch` starts on every process (the same way TRL's CLI launches its
scripts through accelerate's launch API).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from edge_trl.recipes import (
    CPU_DEFAULTS,
    DEEPSPEED_CONFIGS,
    DEFAULT_DATASET,
    DEFAULT_METHOD,
    DEFAULT_REWARDS,
    GPU_ONLY_CONFIGS,
    METHODS,
    TRAINING_DEFAULTS,
    shipped_accelerate_configs,
)

logger = logging.getLogger(__name__)

RUN_FILE = "edge_trl_run.yaml"
# Keys a recipe YAML may hold besides EdgeGRPOConfig fields.
RUN_KEYS = {
    "model", "method", "dataset", "dataset_split", "reward", "prompt_column", "answer_column", "solution_column",
    "template", "lora",
}  # fmt: skip
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


class LaunchError(ValueError):
    """Bad input to `edge-trl train`; the message names the option and the fix."""


@dataclass
class TrainOptions:
    """What the user asked for on the command line (None = not given)."""

    model: str | None = None
    method: str | None = None
    dataset: str | None = None
    dataset_split: str | None = None
    prompt_column: str | None = None
    answer_column: str | None = None
    solution_column: str | None = None
    template: str | None = None
    reward: str | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    accelerate_config: str | None = None
    num_processes: int | None = None
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    lora: bool | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_target_modules: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool | None = None
    hub_strategy: str | None = None
    output_dir: Path | None = None
    resume_from_checkpoint: str | None = None
    report_to: str | None = None
    seed: int | None = None
    max_steps: int | None = None


@dataclass
class LaunchPlan:
    spec: dict[str, Any]
    launch_args: list[str]
    worker: Path
    spec_path: Path
    warnings: list[str]
    env: dict[str, str]

    def command(self) -> list[str]:
        return ["accelerate", "launch", *self.launch_args, str(self.worker), "--spec", str(self.spec_path)]

    def command_line(self) -> str:
        return shlex.join(self.command())


def _config_fields() -> dict[str, dataclasses.Field]:
    from edge_trl.config import EdgeGRPOConfig

    return {f.name: f for f in dataclasses.fields(EdgeGRPOConfig) if f.init}


def _unknown_key_error(key: str, where: str, known: set[str]) -> LaunchError:
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return LaunchError(f"{where}: unknown setting {key!r}.{hint} Settings are EdgeGRPOConfig/GRPOConfig fields.")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items, values parsed as YAML (numbers, booleans, lists, null)."""
    parsed = {}
    for item in items:
        if "=" not in item:
            raise LaunchError(f"--set {item!r}: use KEY=VALUE, e.g. --set learning_rate=2e-6.")
        key, raw = item.split("=", 1)
        try:
            parsed[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise LaunchError(f"--set {item!r}: cannot parse the value ({error}).") from error
    return parsed


def _check_types(values: dict[str, Any], fields: dict[str, dataclasses.Field], where: str) -> None:
    """Type-check ``values`` against the fields' defaults, in place; numbers YAML reads as text (1e-6) are converted."""
    for key, value in list(values.items()):
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else None
        if value is None or default is None:
            continue
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            with contextlib.suppress(ValueError):
                value = values[key] = float(value) if isinstance(default, float) else int(value)
        ok = True
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                ok = False
        if not ok:
            raise LaunchError(f"{where}: {key}={value!r} has the wrong type; expected a {type(default).__name__}.")


def load_recipe(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run keys, trainer fields) of a recipe YAML; unknown keys are an error, not dropped."""
    if not path.is_file():
        raise LaunchError(f"--config {path}: no such file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise LaunchError(f"--config {path}: not valid YAML ({error}).") from error
    if not isinstance(data, dict):
        raise LaunchError(f"--config {path}: expected a mapping of settings at the top level.")
    fields = _config_fields()
    run = {k: v for k, v in data.items() if k in RUN_KEYS}
    trainer = {k: v for k, v in data.items() if k not in RUN_KEYS}
    for key in trainer:
        if key not in fields:
            raise _unknown_key_error(key, f"--config {path}", set(fields) | RUN_KEYS)
    if "lora" in run:
        lora = run["lora"]
        if lora is True:
            run["lora"] = {}
        elif lora is False or lora is None:
            run["lora"] = None
        elif not isinstance(lora, dict) or set(lora) - LORA_KEYS:
            raise LaunchError(f"--config {path}: lora must be true/false or a mapping with keys {sorted(LORA_KEYS)}.")
    _check_types(trainer, fields, f"--config {path}")
    return run, trainer


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def find_last_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _validate_trainer_settings(settings: dict[str, Any], num_processes: int) -> list[str]:
    """EdgeGRPOConfig's own checks plus TRL's batch checks, without building TrainingArguments here."""
    from edge_trl.config import EdgeGRPOConfig

    fields = _config_fields()
    values = {name: (f.default if f.default is not dataclasses.MISSING else None) for name, f in fields.items()}
    values.update(settings)
    grad_accum = values["gradient_accumulation_steps"]
    if values.get("steps_per_generation") is None:
        values["steps_per_generation"] = grad_accum
    namespace = SimpleNamespace(**values)
    try:
        EdgeGRPOConfig._validate_edge(namespace)
    except ValueError as error:
        raise LaunchError(str(error)) from error
    generations = values["num_generations"]
    if generations < 2:
        raise LaunchError(f"num_generations={generations}: GRPO needs at least 2 generations per prompt.")
    batch = values["per_device_train_batch_size"] * num_processes * values["steps_per_generation"]
    if batch % generations:
        raise LaunchError(
            f"per_device_train_batch_size ({values['per_device_train_batch_size']}) x processes ({num_processes}) x "
            f"steps_per_generation ({values['steps_per_generation']}) = {batch} completions per rollout is not a "
            f"multiple of num_generations={generations}: change per_device_train_batch_size or num_generations."
        )
    warnings = []
    if values["cov_mode"] == "kl_cov" and EdgeGRPOConfig.kl_cov_is_noop.fget(namespace):
        warnings.append(
            "cov_mode='kl_cov' is a no-op with these settings (fully on-policy: log pi - log pi_old = 0). "
            "Set num_iterations=2 or steps_per_generation > gradient_accumulation_steps (--set num_iterations=2)."
        )
    return warnings


def _resolve_accelerate(options: TrainOptions, has_gpu: bool) -> tuple[list[str], int, str, dict[str, str]]:
    shipped = shipped_accelerate_configs()
    name = options.accelerate_config or ("single_gpu" if has_gpu else "cpu")
    path = Path(name).expanduser()
    if name in shipped:
        config_path = shipped[name]
    elif path.is_file():
        config_path, name = path, str(path)
    else:
        raise LaunchError(
            f"--accelerate-config {name!r}: not a shipped config ({', '.join(shipped)}) nor an existing file."
        )
    if name in GPU_ONLY_CONFIGS and not has_gpu:
        raise LaunchError(
            f"--accelerate-config {name} needs a GPU, and this machine has none (torch sees no CUDA device): "
            "use --accelerate-config cpu to train on CPU processes."
        )
    if name in DEEPSPEED_CONFIGS and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError(
            f"--accelerate-config {name} uses DeepSpeed, which is not installed: "
            'pip install --no-build-isolation "edge-trl[deepspeed]"'
        )
    config = yaml.safe_load(config_path.read_text()) or {}
    if options.num_processes is not None:
        processes = options.num_processes
    elif name in ("single_gpu",):
        processes = 1
    elif has_gpu and name in (*GPU_ONLY_CONFIGS, *DEEPSPEED_CONFIGS):
        import torch

        processes = max(1, torch.cuda.device_count()) * options.num_machines
    else:
        processes = int(config.get("num_processes", 1))
    if processes < 1:
        raise LaunchError(f"--num-processes {processes}: must be at least 1.")
    if name == "single_gpu" and processes > 1:
        raise LaunchError("--accelerate-config single_gpu runs one process: use multi_gpu (or a zero config).")

    env: dict[str, str] = {}
    on_cpu = not has_gpu
    if on_cpu and processes == 1 and name == "cpu":
        # One CPU process: accelerate's plain CPU launcher.
        args = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]  # fmt: skip
    else:
        args = ["--config_file", str(config_path), "--num_processes", str(processes)]
        args += ["--num_machines", str(options.num_machines), "--machine_rank", str(options.machine_rank)]
        if options.main_process_ip:
            args += ["--main_process_ip", options.main_process_ip]
        if options.main_process_port:
            args += ["--main_process_port", str(options.main_process_port)]
        if on_cpu and processes > 1 and config.get("distributed_type") in ("MULTI_GPU", "DEEPSPEED"):
            # Several CPU processes: torchrun + gloo (accelerate's --cpu would start only one).
            args += ["--multi_gpu"] if config.get("distributed_type") == "MULTI_GPU" else []
    if on_cpu:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return args, processes, name, env


def _check_dataset(source: str, split: str, columns: dict[str, str | None], template: str) -> None:
    from edge_trl.data import DatasetError, load_any_dataset, prepare_math_dataset

    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in (".json", ".jsonl", ".parquet")
    if not looks_local:
        return  # a Hub id: checked by the workers, which can reach the Hub
    if not path.exists():
        raise LaunchError(f"--dataset {source}: no such file or folder.")
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    disable_progress_bar()  # a quick look, not a job worth a progress bar
    try:
        dataset = load_any_dataset(str(path), split=split)
        prepare_math_dataset(dataset.select(range(min(len(dataset), 64))), template=template, **columns)
        if len(dataset) == 0:
            raise DatasetError("The dataset is empty: it has no rows to train on.")
    except DatasetError as error:
        raise LaunchError(f"--dataset {source}: {error}") from error
    finally:
        enable_progress_bar()


def resolve(options: TrainOptions, has_gpu: bool | None = None) -> LaunchPlan:
    """Everything `edge-trl train` will run, checked. Raises LaunchError with an actionable message."""
    from edge_trl.models import resolve_model
    from edge_trl.rewards import get_reward_funcs

    has_gpu = gpu_available() if has_gpu is None else has_gpu
    fields = _config_fields()
    run, recipe = load_recipe(options.config) if options.config else ({}, {})
    overrides = parse_overrides(options.overrides)
    for key in overrides:
        if key not in fields:
            raise _unknown_key_error(key, f"--set {key}=...", set(fields))
    _check_types(overrides, fields, "--set")

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(options, name)
        return value if value is not None else run.get(name, default)

    from edge_trl import embedded

    use_embedded = pick("model") is None and pick("dataset") is None
    if use_embedded:  # the built-in tiny model and task: offline, CPU, a few minutes
        run = {**run, "model": str(embedded.ASSET_DIR), "dataset": embedded.EMBEDDED_DATASET, "method": "grpo",
               "reward": "accuracy", "template": "plain", **{k: v for k, v in run.items() if k in ("method",)}}  # fmt: skip
        if options.num_processes is None and not has_gpu:
            options = dataclasses.replace(options, num_processes=1)
    method = (pick("method", DEFAULT_METHOD) or DEFAULT_METHOD).lower().replace("_", "-")
    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise LaunchError(f"--method {method!r} is unknown.{hint} Methods: {', '.join(METHODS)}.")
    model_name = pick("model")
    if model_name is None:
        raise LaunchError(
            "--dataset needs a model: pass --model (a Hub id, a local path or an alias such as qwen2.5-math-1.5b), "
            "or neither, for the built-in tiny model and task."
        )
    try:
        model = resolve_model(str(model_name))
    except ValueError as error:
        raise LaunchError(f"--model: {error}") from error
    reward = pick("reward", DEFAULT_REWARDS)
    try:
        get_reward_funcs(reward)
    except ValueError as error:
        raise LaunchError(f"--reward: {error}") from error

    dataset = pick("dataset", DEFAULT_DATASET)
    dataset_split = pick("dataset_split", "train")
    template = pick("template", "chat")
    if template not in ("chat", "plain"):
        raise LaunchError(f"--template {template!r}: use chat or plain.")
    columns = {c: pick(c) for c in ("prompt_column", "answer_column", "solution_column")}
    if dataset != embedded.EMBEDDED_DATASET:
        _check_dataset(str(dataset), dataset_split, columns, template)

    launch_args, processes, accelerate_name, env = _resolve_accelerate(options, has_gpu)

    lora = run.get("lora")
    if options.lora is not None:
        lora = {} if options.lora else None
    if lora is not None:
        lora = {
            "r": options.lora_r or lora.get("r", 16),
            "alpha": options.lora_alpha or lora.get("alpha", 32),
            "dropout": options.lora_dropout if options.lora_dropout is not None else lora.get("dropout", 0.05),
            "target_modules": options.lora_target_modules or lora.get("target_modules", "all-linear"),
        }
    elif any(v is not None for v in (options.lora_r, options.lora_alpha, options.lora_dropout,
                                      options.lora_target_modules)):  # fmt: skip
        raise LaunchError("--lora-r/--lora-alpha/--lora-dropout/--lora-target-modules need --lora.")

    output_dir = options.output_dir or Path(recipe.get("output_dir") or overrides.get("output_dir") or (
        Path("outputs") / f"{Path(model).name}-{method}"
    ))  # fmt: skip
    defaults = {**TRAINING_DEFAULTS, **(embedded.EMBEDDED_TRAINING if use_embedded else {})}
    output_dir = Path(output_dir).expanduser().resolve()
    settings: dict[str, Any] = {**defaults, **(CPU_DEFAULTS if not has_gpu else {}), **METHODS[method]}
    settings.update(recipe)
    settings.update(overrides)
    flags = {
        "output_dir": str(output_dir), "seed": options.seed, "report_to": options.report_to,
        "max_steps": options.max_steps, "hub_model_id": options.hub_model_id,
        "hub_private_repo": options.hub_private, "hub_strategy": options.hub_strategy,
    }  # fmt: skip
    settings.update({k: v for k, v in flags.items() if v is not None})
    if options.push_to_hub:
        settings["push_to_hub"] = True
    if not has_gpu and settings.get("bf16"):
        raise LaunchError("bf16=True needs a GPU; this machine has none: drop bf16 (training runs in fp32 on CPU).")
    if settings.get("hub_strategy") not in (None, "end", "every_save", "checkpoint", "all_checkpoints"):
        raise LaunchError(
            f"--hub-strategy {settings['hub_strategy']!r}: use end, every_save, checkpoint or all_checkpoints."
        )
    warnings = _validate_trainer_settings(settings, processes)

    if settings.get("push_to_hub"):
        from huggingface_hub import get_token

        if get_token() is None:
            raise LaunchError(
                "--push-to-hub needs a Hugging Face token: run `hf auth login` (or `huggingface-cli login`) or set "
                "HF_TOKEN; --hub-model-id alone does not give write access."
            )
    if lora is not None and accelerate_name in ("zero3", "zero3_offload"):
        warnings.append(
            "LoRA with ZeRO-3: the frozen base weights are sharded too and gathered for every generation "
            "(ds3_gather_for_generation); with a model that fits one GPU, zero2 is faster."
        )

    resume = options.resume_from_checkpoint
    if resume == "last":
        last = find_last_checkpoint(output_dir)
        if last is None:
            raise LaunchError(
                f"--resume-from-checkpoint last: no checkpoint-* folder in {output_dir}; "
                "train without it first, or point to a checkpoint folder."
            )
        resume = str(last)
    elif resume is not None and not Path(resume).is_dir():
        raise LaunchError(f"--resume-from-checkpoint {resume}: no such checkpoint folder.")

    from edge_trl import worker

    spec = {
        "model": model,
        "method": method,
        "dataset": {"source": str(dataset), "split": dataset_split, "template": template, **columns},
        "reward": reward,
        "lora": lora,
        "trainer": settings,
        "resume_from_checkpoint": resume,
        "accelerate_config": accelerate_name,
        "num_processes": processes,
    }
    spec_path = Path(output_dir) / RUN_FILE
    return LaunchPlan(spec, launch_args, Path(worker.__file__), spec_path, warnings, env)


def write_spec(plan: LaunchPlan) -> None:
    plan.spec_path.parent.mkdir(parents=True, exist_ok=True)
    plan.spec_path.write_text(yaml.safe_dump(plan.spec, sort_keys=False))


def launch(plan: LaunchPlan) -> int:
    """Run the plan through accelerate's launch API; returns the exit code."""
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser

    write_spec(plan)
    os.environ.update(plan.env)
    args = launch_command_parser().parse_args([*plan.launch_args, str(plan.worker), "--spec", str(plan.spec_path)])
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    except SystemExit as error:  # torchrun reports a failed rank this way
        return int(error.code or 0)
    except Exception as error:  # ChildFailedError and friends: the rank already printed its error
        logger.debug("launch failed: %r", error)
        return 1
    return 0
