"""`edge-trl train`: resolve a run (method preset, recipe YAML, `--set`, flags), check it, start it with accelerate.

Everything that can be checked before processes start is checked here, so bad input gets one clear message instead
of a traceback from every rank. `resolve` fills a `RunSpec`; `launch` writes it to ``<output_dir>/edge_trl_run.yaml``
and starts ``edge_trl/worker.py`` on every process through `accelerate launch` (the way TRL's CLI launches its
scripts), and the worker reads the file back into the same `RunSpec`.

Nothing here imports torch, trl or transformers at module level: a dry run reads the config fields from their cache
(`edge_trl.config_schema`) and detects GPUs without torch.
"""

from __future__ import annotations

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

from edge_trl.checkpoints import newest_complete_checkpoint
from edge_trl.config_schema import ConfigField, coerce, config_fields, trainer_fields
from edge_trl.presets import (
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
from edge_trl.run_spec import RUN_FILE, RunSpec, run_keys
from edge_trl.validation import kl_cov_is_noop, kl_cov_noop_message, validate_edge_fields

logger = logging.getLogger(__name__)

LORA_DEFAULTS: dict[str, Any] = {
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
}
# A recipe may write `lora: {r: 8, alpha: 16}` for lora: true, lora_r: 8, lora_alpha: 16.
RECIPE_LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}
WORKER = Path(__file__).with_name("worker.py")


class LaunchError(ValueError):
    """Bad input to `edge-trl train`; the message names the option and the fix."""


@dataclass
class TrainRequest:
    """What the user gave `edge-trl train`, by layer; later layers win: recipe < ``--set`` < flags."""

    config: Path | None = None  # the --config recipe YAML
    overrides: list[str] = field(default_factory=list)  # --set key=value
    flags: dict[str, Any] = field(default_factory=dict)  # the flags given on the command line, by field name
    dry_run: bool = False


@dataclass
class PreparedRun:
    """A resolved, checked run and the `accelerate launch` command that starts it."""

    run: RunSpec
    launch_args: list[str]
    run_file: Path
    warnings: list[str]
    env: dict[str, str]
    worker: Path = WORKER

    def command(self) -> list[str]:
        return ["accelerate", "launch", *self.launch_args, str(self.worker), "--run", str(self.run_file)]

    def command_line(self) -> str:
        return shlex.join(self.command())


def known_fields() -> dict[str, ConfigField]:
    """Every key a recipe, ``--set`` or a flag may set: the EdgeGRPOConfig fields and the RunSpec keys."""
    run = {
        config_field.name: config_field for config_field in config_fields(RunSpec) if config_field.name in run_keys()
    }
    return {**trainer_fields(), **run}  # a run key wins (resume_from_checkpoint is both)


def _unknown_key_error(key: str, where: str, known: set[str]) -> LaunchError:
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return LaunchError(
        f"{where}: unknown setting {key!r}.{hint} Settings are EdgeGRPOConfig/GRPOConfig fields and run keys "
        "(model, method, dataset, reward, lora, ...)."
    )


def check_settings(values: dict[str, Any], fields: dict[str, ConfigField], where: str) -> dict[str, Any]:
    """``values`` with every key known and every value of its field's kind (converted: YAML reads 1e-6 as text)."""
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key_error(key, where, set(fields))
        try:
            checked[key] = coerce(fields[key], value)
        except ValueError as error:
            raise LaunchError(f"{where}: {error}") from error
    return checked


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


def load_recipe(path: Path) -> dict[str, Any]:
    """The settings of a recipe YAML (run keys and trainer fields, checked); unknown keys are an error, not dropped."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"--config {path}: no such file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise LaunchError(f"--config {path}: not valid YAML ({error}).") from error
    if not isinstance(data, dict):
        raise LaunchError(f"--config {path}: expected a mapping of settings at the top level.")
    lora = data.get("lora")
    if isinstance(lora, dict):
        if set(lora) - RECIPE_LORA_KEYS:
            raise LaunchError(
                f"--config {path}: lora must be true/false or a mapping with keys {sorted(RECIPE_LORA_KEYS)}."
            )
        data = {**data, "lora": True, **{f"lora_{key}": value for key, value in lora.items()}}
    return check_settings(data, known_fields(), f"--config {path}")


def user_settings(request: TrainRequest, fields: dict[str, ConfigField]) -> dict[str, Any]:
    """The user's settings, recipe < ``--set`` < flags, each checked against the fields."""
    settings = load_recipe(request.config) if request.config else {}
    settings.update(check_settings(parse_overrides(request.overrides), fields, "--set"))
    settings.update(check_settings(request.flags, fields, "command line"))
    return settings


def gpu_count(precise: bool = False) -> int:
    """The CUDA devices this machine offers to a run.

    ``precise``: ask torch (seconds to import; used before a real launch). Otherwise count the devices the NVIDIA
    driver lists in /proc/driver/nvidia/gpus, limited by CUDA_VISIBLE_DEVICES: instant, enough for a dry run.
    """
    if precise:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    driver = Path("/proc/driver/nvidia/gpus")
    devices = len(list(driver.iterdir())) if driver.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [item for item in visible.split(",") if item.strip()]
        ids = ids[: next((i for i, item in enumerate(ids) if item.strip() == "-1"), len(ids))]
        devices = min(devices, len(ids))
    return devices


# -- the steps of resolve ----------------------------------------------------------------------------------------------


def _apply_embedded_default(run: RunSpec, has_gpu: bool) -> tuple[RunSpec, dict[str, Any]]:
    """Neither model nor dataset: the built-in tiny model and task (offline, CPU, a few minutes) and its settings."""
    if run.model is not None or run.dataset is not None:
        return run, {}
    from edge_trl import embedded

    run = dataclasses.replace(
        run, model=str(embedded.ASSET_DIR), dataset=embedded.EMBEDDED_DATASET, method=run.method or "grpo",
        reward=run.reward or "accuracy", template=run.template or "plain",
        num_processes=run.num_processes or (None if has_gpu else 1),
    )  # fmt: skip
    return run, embedded.EMBEDDED_TRAINING


def _resolve_method(method: str | None) -> str:
    method = (method or DEFAULT_METHOD).lower().replace("_", "-")
    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise LaunchError(f"--method {method!r} is unknown.{hint} Methods: {', '.join(METHODS)}.")
    return method


def _resolve_model(model: str | None) -> str:
    from edge_trl.models import resolve_model

    if model is None:
        raise LaunchError(
            "--dataset needs a model: pass --model (a Hub id, a local path or an alias such as qwen2.5-math-1.5b), "
            "or neither, for the built-in tiny model and task."
        )
    try:
        return resolve_model(str(model))
    except ValueError as error:
        raise LaunchError(f"--model: {error}") from error


def _check_reward(reward: str) -> None:
    from edge_trl.rewards import get_reward_funcs

    try:
        get_reward_funcs(reward)
    except ValueError as error:
        raise LaunchError(f"--reward: {error}") from error


def _check_dataset(run: RunSpec) -> None:
    """A local dataset is loaded and prepared, so a wrong column or split, a bad answer type or a dataset with no usable
    row fails here, not on every rank (and dropped rows are reported once)."""
    from edge_trl.data import DatasetError, load_any_dataset, prepare_math_dataset

    source = str(run.dataset)
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in (".json", ".jsonl", ".parquet")
    if not looks_local:
        return  # a Hub id: checked by the workers, which can reach the Hub
    if not path.exists():
        raise LaunchError(f"--dataset {source}: no such file or folder.")
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    columns = {"prompt_column": run.prompt_column, "answer_column": run.answer_column,
               "solution_column": run.solution_column}  # fmt: skip
    disable_progress_bar()  # a quick look, not a job worth a progress bar
    try:
        dataset = load_any_dataset(str(path), split=run.dataset_split)
        if len(dataset) == 0:
            raise DatasetError("The dataset is empty: it has no rows to train on.")
        # Every row: the rows dropped (empty problem or answer) are counted and named here, before processes start.
        prepare_math_dataset(dataset, template=run.template, **columns)
    except DatasetError as error:
        raise LaunchError(f"--dataset {source}: {error}") from error
    finally:
        enable_progress_bar()


def _resolve_lora(run: RunSpec) -> RunSpec:
    given = {key: getattr(run, key) for key in LORA_DEFAULTS if getattr(run, key) is not None}
    if not run.lora:
        if given:
            raise LaunchError("--lora-r/--lora-alpha/--lora-dropout/--lora-target-modules need --lora.")
        return dataclasses.replace(run, lora=False)
    for key, value in (("lora_r", run.lora_r), ("lora_alpha", run.lora_alpha)):
        if value is not None and value < 1:
            raise LaunchError(f"--{key.replace('_', '-')} {value}: must be at least 1.")
    if run.lora_dropout is not None and not 0 <= run.lora_dropout <= 1:
        raise LaunchError(f"--lora-dropout {run.lora_dropout}: must be in [0, 1].")
    return dataclasses.replace(run, **{**LORA_DEFAULTS, **given})


@dataclass
class AccelerateSetup:
    """What `accelerate launch` gets: its arguments, the process count, the environment."""

    config_name: str
    args: list[str]
    processes: int
    env: dict[str, str]
    target_has_gpu: bool  # the machine the command is for (a dry run may prepare a GPU command on a CPU machine)
    warnings: list[str]


def _accelerate_config_path(name: str) -> tuple[str, Path]:
    shipped = shipped_accelerate_configs()
    if name in shipped:
        return name, shipped[name]
    path = Path(name).expanduser()
    if path.is_file():
        return str(path), path
    raise LaunchError(
        f"--accelerate-config {name!r}: not a shipped config ({', '.join(shipped)}) nor an existing file."
    )


def _resolve_accelerate(run: RunSpec, gpus: int, dry_run: bool) -> AccelerateSetup:
    name, config_path = _accelerate_config_path(run.accelerate_config or ("single_gpu" if gpus else "cpu"))
    warnings = []
    target_has_gpu = gpus > 0
    if name in GPU_ONLY_CONFIGS and not gpus:
        if not dry_run:
            raise LaunchError(
                f"--accelerate-config {name} needs a GPU, and this machine has none (no CUDA device): use "
                "--accelerate-config cpu to train on CPU processes, or --dry-run to print the command for a GPU machine."
            )
        target_has_gpu = True  # a dry run prepares the command for a GPU machine
        warnings.append(
            f"this machine has no GPU: the command below is for a GPU machine (--accelerate-config {name}); "
            "running it here would fail."
        )
    if name in DEEPSPEED_CONFIGS and not gpus:
        warnings.append(
            f"this machine has no GPU: --accelerate-config {name} runs DeepSpeed on CPU processes here (slow; meant "
            "for tests). On a GPU machine the command uses one process per GPU."
        )
    if name in DEEPSPEED_CONFIGS and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError(
            f"--accelerate-config {name} uses DeepSpeed, which is not installed: "
            'pip install --no-build-isolation "edge-trl[deepspeed]"'
        )
    if run.num_machines < 1 or not 0 <= run.machine_rank < run.num_machines:
        raise LaunchError(
            f"--num-machines {run.num_machines} --machine-rank {run.machine_rank}: need num_machines >= 1 and "
            "0 <= machine_rank < num_machines."
        )
    config = yaml.safe_load(config_path.read_text()) or {}
    if run.num_processes is not None:
        processes = run.num_processes
    elif name == "single_gpu":
        processes = 1
    elif gpus and name in (*GPU_ONLY_CONFIGS, *DEEPSPEED_CONFIGS):
        processes = gpus * run.num_machines
    else:
        processes = int(config.get("num_processes", 1))
        if target_has_gpu and not gpus:
            warnings.append(f"{processes} processes in all, from the config: pass --num-processes for your machines.")
    if processes < 1:
        raise LaunchError(f"--num-processes {processes}: must be at least 1.")
    if name == "single_gpu" and processes > 1:
        raise LaunchError("--accelerate-config single_gpu runs one process: use multi_gpu (or a zero config).")

    on_cpu = not target_has_gpu
    if on_cpu and processes == 1 and name == "cpu":  # one CPU process: accelerate's plain CPU launcher
        args = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]  # fmt: skip
    else:
        args = ["--config_file", str(config_path), "--num_processes", str(processes)]
        args += ["--num_machines", str(run.num_machines), "--machine_rank", str(run.machine_rank)]
        if run.main_process_ip:
            args += ["--main_process_ip", run.main_process_ip]
        if run.main_process_port:
            args += ["--main_process_port", str(run.main_process_port)]
        if on_cpu and processes > 1 and config.get("distributed_type") == "MULTI_GPU":
            args += ["--multi_gpu"]  # several CPU processes: torchrun + gloo (accelerate's --cpu starts only one)
    env = {}
    if on_cpu:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return AccelerateSetup(name, args, processes, env, target_has_gpu, warnings)


def _trainer_settings(
    run: RunSpec, user: dict[str, Any], embedded_training: dict[str, Any], target_has_gpu: bool
) -> dict[str, Any]:
    """EdgeGRPOConfig settings: CLI defaults < (CPU defaults) < method preset < the user's settings."""
    settings = {**TRAINING_DEFAULTS, **embedded_training, **({} if target_has_gpu else CPU_DEFAULTS)}
    settings.update(METHODS[run.method])
    settings.update(user)
    output_dir = settings.get("output_dir") or Path("outputs") / f"{Path(run.model).name}-{run.method}"
    settings["output_dir"] = str(Path(output_dir).expanduser().resolve())
    if not target_has_gpu and settings.get("bf16"):
        raise LaunchError("bf16=True needs a GPU; this machine has none: drop bf16 (training runs in fp32 on CPU).")
    return settings


def validate_trainer_settings(
    settings: dict[str, Any], num_processes: int, fields: dict[str, ConfigField]
) -> list[str]:
    """EdgeGRPOConfig's own checks plus TRL's batch checks, without importing trl; returns the warnings.

    Normalises ``settings`` in place (``cov_mode='kl-cov'`` -> ``'kl_cov'``), so the run reads what was checked.
    """
    values = {name: config_field.default for name, config_field in fields.items()}
    values.update(settings)
    if values.get("steps_per_generation") is None:
        values["steps_per_generation"] = values["gradient_accumulation_steps"]
    config = SimpleNamespace(**values)
    cov_modes = tuple(mode for mode in fields["cov_mode"].choices or () if mode != "none")
    try:
        validate_edge_fields(config, cov_modes=cov_modes)
    except ValueError as error:
        raise LaunchError(str(error)) from error
    if "cov_mode" in settings:
        settings["cov_mode"] = config.cov_mode
    if config.num_generations < 2:
        raise LaunchError(f"num_generations={config.num_generations}: GRPO needs at least 2 generations per prompt.")
    batch = config.per_device_train_batch_size * num_processes * config.steps_per_generation
    if batch % config.num_generations:
        raise LaunchError(
            f"per_device_train_batch_size ({config.per_device_train_batch_size}) x processes ({num_processes}) x "
            f"steps_per_generation ({config.steps_per_generation}) = {batch} completions per rollout is not a "
            f"multiple of num_generations={config.num_generations}: change per_device_train_batch_size or "
            "num_generations."
        )
    steps = (config.gradient_accumulation_steps, config.steps_per_generation, config.num_iterations)
    if config.cov_mode == "kl_cov" and kl_cov_is_noop(*steps):
        return [kl_cov_noop_message(*steps)]
    return []


def _check_hub_token(settings: dict[str, Any]) -> None:
    if not settings.get("push_to_hub"):
        return
    from huggingface_hub import get_token

    if get_token() is None:
        raise LaunchError(
            "--push-to-hub needs a Hugging Face token: run `hf auth login` (or `huggingface-cli login`) or set "
            "HF_TOKEN; --hub-model-id alone does not give write access."
        )


def _resolve_resume(resume: str | None, output_dir: Path, warnings: list[str]) -> str | None:
    """The checkpoint folder to resume from; ``last`` is the newest *complete* one (a kill during a save leaves a
    partial folder: each one skipped is added to ``warnings`` with what is wrong with it)."""
    if resume == "last":
        last, skipped = newest_complete_checkpoint(output_dir)
        warnings.extend(
            f"--resume-from-checkpoint last: skipping {folder}, an incomplete checkpoint: {problem}."
            for folder, problem in skipped
        )
        if last is None:
            found = (
                f"only incomplete checkpoints in {output_dir}" if skipped else f"no checkpoint-* folder in {output_dir}"
            )
            raise LaunchError(
                f"--resume-from-checkpoint last: {found}; train without it first, or point to a checkpoint folder."
            )
        if skipped:
            warnings.append(f"--resume-from-checkpoint last: resuming from {last}.")
        return str(last)
    if resume is not None and not Path(resume).is_dir():
        raise LaunchError(f"--resume-from-checkpoint {resume}: no such checkpoint folder.")
    return resume


def resolve(request: TrainRequest, gpus: int | None = None) -> PreparedRun:
    """Everything `edge-trl train` will run, checked. Raises LaunchError with an actionable message.

    ``gpus``: the CUDA devices of this machine (default: detected; with torch only for a real run).
    """
    gpus = gpu_count(precise=not request.dry_run) if gpus is None else gpus
    fields = known_fields()
    settings = user_settings(request, fields)
    keys = run_keys()
    run = RunSpec(**{key: value for key, value in settings.items() if key in keys})
    user_trainer = {key: value for key, value in settings.items() if key not in keys}

    run, embedded_training = _apply_embedded_default(run, has_gpu=gpus > 0)
    run = dataclasses.replace(
        run, method=_resolve_method(run.method), model=_resolve_model(run.model), reward=run.reward or DEFAULT_REWARDS,
        dataset=run.dataset or DEFAULT_DATASET, dataset_split=run.dataset_split or "train",
        template=run.template or "chat",
    )  # fmt: skip
    _check_reward(run.reward)
    if not run.uses_embedded_task:
        _check_dataset(run)
    run = _resolve_lora(run)
    accelerate = _resolve_accelerate(run, gpus, request.dry_run)
    run = dataclasses.replace(run, accelerate_config=accelerate.config_name, num_processes=accelerate.processes)

    trainer = _trainer_settings(run, user_trainer, embedded_training, accelerate.target_has_gpu)
    warnings = [*accelerate.warnings, *validate_trainer_settings(trainer, accelerate.processes, fields)]
    _check_hub_token(trainer)
    if run.lora and accelerate.config_name in ("zero3", "zero3_offload"):
        warnings.append(
            "LoRA with ZeRO-3: the frozen base weights are sharded too and gathered for every generation "
            "(ds3_gather_for_generation); with a model that fits one GPU, zero2 is faster."
        )
    output_dir = Path(trainer["output_dir"])
    run = dataclasses.replace(
        run, trainer=trainer, resume_from_checkpoint=_resolve_resume(run.resume_from_checkpoint, output_dir, warnings)
    )
    return PreparedRun(run, accelerate.args, output_dir / RUN_FILE, warnings, accelerate.env)


def launch(prepared: PreparedRun) -> int:
    """Write the run file and start the worker through accelerate's launch API; returns the exit code."""
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser

    prepared.run.save(prepared.run_file)
    os.environ.update(prepared.env)
    args = launch_command_parser().parse_args(prepared.command()[2:])
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    except SystemExit as error:  # torchrun reports a failed rank this way
        return int(error.code or 0)
    except Exception as error:  # ChildFailedError and friends: the rank already printed its error
        logger.debug("launch failed: %r", error)
        return _signal_exit_code(error) or 1
    return 0


def _signal_exit_code(error: Exception) -> int | None:
    """128 + the signal when the launcher itself was stopped by one (torchrun raises SignalException after it has
    forwarded the signal to the ranks and they have exited: 143 for SIGTERM, 130 for Ctrl-C), else None."""
    sigval = getattr(error, "sigval", None)
    return None if sigval is None else 128 + int(sigval)
