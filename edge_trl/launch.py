"""`edge-trl train`: resolve a run (method preset, recipe YAML, `--set`, flags), check it, start it with accelerate.

This module is the pipeline: settings precedence and recipes, the trainer settings (CPU/GPU defaults, LoRA learning
rate, GPU micro-batch), resume, the launch and its exit codes. Two concerns live in their own modules and are called
from `resolve`: the accelerate config, process count and environment (`edge_trl.accelerate_setup`), and every check
that can run before processes start, so bad input gets one clear message instead of a traceback from every rank
(`edge_trl.prelaunch_checks`). `resolve` fills a `RunSpec`; `launch` writes it to ``<output_dir>/edge_trl_run.yaml``
and starts ``edge_trl/worker.py`` on every process through `accelerate launch` (the way TRL's CLI launches its
scripts), and the worker reads the file back into the same `RunSpec`.

Nothing here imports torch, trl or transformers at module level: a dry run reads the config fields from their cache
(`edge_trl.config_schema`) and detects GPUs without torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_trl.accelerate_setup import gpu_count, resolve_accelerate
from edge_trl.checkpoints import newest_complete_checkpoint
from edge_trl.config_schema import ConfigField, coerce, config_fields, trainer_fields
from edge_trl.methods import method_presets
from edge_trl.prelaunch_checks import (
    LaunchError,
    check_dataset,
    check_hub_reachable,
    check_hub_token,
    check_prompt_length_settings,
    check_reward,
    check_vllm_setup,
    validate_trainer_settings,
)
from edge_trl.presets import (
    CPU_DEFAULTS,
    DEFAULT_DATASET,
    DEFAULT_METHOD,
    DEFAULT_REWARDS,
    GPU_DEFAULTS,
    GPU_MICRO_BATCH,
    GPU_MICRO_BATCH_WITH_VLLM,
    LORA_LEARNING_RATE_FACTOR,
    TRAINING_DEFAULTS,
    shipped_recipes,
    vllm_defaults,
)
from edge_trl.run_spec import RunSpec, load_plugins, run_keys

__all__ = ["LaunchError", "PreparedRun", "TrainRequest", "gpu_count", "launch", "resolve"]

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


def bf16_on_cpu_warning() -> str:
    """What bf16 costs on this CPU: fast with bfloat16 instructions (AVX512-BF16, AMX), slow without (emulated on
    AVX2). Measured on an AMD EPYC with AVX512-BF16: an MLP block's forward and backward 2.1x faster than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    speed = (
        f"this CPU has {' and '.join(native)}, so bf16 should run faster than fp32"
        if native
        else "this CPU shows no bfloat16 instructions (avx512_bf16, amx_bf16), so bf16 is emulated and slower than "
        "the fp32 default; drop --bf16 for speed"
    )
    return f"bf16 on CPU (autocast to bfloat16): {speed}. Useful to try a GPU recipe's precision on CPU."


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
    notes: list[str] = field(default_factory=list)  # defaults the resolution chose, printed by a dry run

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
    settings.update(explicit_settings(request, fields))
    return settings


def explicit_settings(request: TrainRequest, fields: dict[str, ConfigField]) -> dict[str, Any]:
    """The settings of ``--set`` and the flags, checked: what the user typed for this run."""
    settings = check_settings(parse_overrides(request.overrides), fields, "--set")
    settings.update(check_settings(request.flags, fields, "command line"))
    return settings


def _is_shipped_recipe(path: Path) -> bool:
    return Path(path).expanduser().resolve() in {shipped.resolve() for shipped in shipped_recipes().values()}


def alias_recipe(model: Any, method: str | None) -> Path | None:
    """The shipped recipe of a model alias, for the method asked (default edge): the recipe whose ``model`` is
    ``model`` and whose ``method`` is the method. A Hub id or a path has none (the way to opt out of a recipe)."""
    from edge_trl.models import MODEL_ALIASES

    alias = str(model or "").strip().lower()
    if alias not in MODEL_ALIASES:
        return None
    wanted = _resolve_method(method)
    for path in shipped_recipes().values():
        recipe = yaml.safe_load(path.read_text()) or {}
        if str(recipe.get("model", "")).lower() == alias and _resolve_method(recipe.get("method")) == wanted:
            return path
    return None


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


def _load_requested_plugins(request: TrainRequest) -> None:
    """Import the ``plugin`` modules a flag, ``--set`` or the ``--config`` recipe names, before the settings are read
    (their methods' fields are settings too)."""
    found = [request.flags.get("plugin")]
    found += [value for key, value in parse_overrides(request.overrides).items() if key == "plugin"]
    if request.config:
        found.append(load_recipe(request.config).get("plugin"))
    try:
        for value in found:
            load_plugins(value)
    except (ValueError, ImportError, SyntaxError) as error:
        raise LaunchError(f"--plugin: {error}") from error


def _resolve_method(method: str | None) -> str:
    method = (method or DEFAULT_METHOD).lower().replace("_", "-")
    methods = method_presets()
    if method not in methods:
        close = difflib.get_close_matches(method, list(methods), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise LaunchError(f"--method {method!r} is unknown.{hint} Methods: {', '.join(methods)}.")
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


def _trainer_settings(
    run: RunSpec, user: dict[str, Any], embedded_training: dict[str, Any], target_has_gpu: bool
) -> dict[str, Any]:
    """EdgeGRPOConfig settings: CLI defaults < CPU or GPU defaults < method preset < the user's settings."""
    machine = GPU_DEFAULTS | vllm_defaults(target_has_gpu) if target_has_gpu else CPU_DEFAULTS
    settings = {**TRAINING_DEFAULTS, **embedded_training, **machine}
    settings.update(method_presets()[run.method])
    if run.vllm is not None:  # --vllm MODE stands for use_vllm + vllm_mode; the --vllm-* flags still win
        settings.update(use_vllm=True, vllm_mode=run.vllm)
    settings.update(user)
    _use_activation_checkpointing_name(settings, user)
    output_dir = settings.get("output_dir") or Path("outputs") / f"{Path(run.model).name}-{run.method}"
    settings["output_dir"] = str(Path(output_dir).expanduser().resolve())
    return settings


def _use_activation_checkpointing_name(settings: dict[str, Any], user: dict[str, Any]) -> None:
    """Write checkpointing as ``activation_checkpointing``, where transformers (5.x) has it.

    transformers deprecates ``gradient_checkpointing`` with a FutureWarning whenever the new name is unset, and TRL
    sets the old one; a user's ``gradient_checkpointing`` still wins over our default.
    """
    if "activation_checkpointing" not in trainer_fields():
        return
    value = settings.pop("gradient_checkpointing", None)
    if "gradient_checkpointing" in user and "activation_checkpointing" not in user:
        settings["activation_checkpointing"] = user["gradient_checkpointing"]
    elif value is not None and "activation_checkpointing" not in user:
        settings["activation_checkpointing"] = value


def apply_lora_learning_rate(settings: dict[str, Any], explicit: set[str]) -> str | None:
    """With ``--lora``, the default learning rate times LORA_LEARNING_RATE_FACTOR; returns the note to show.

    Explicit means given for this run: a flag, ``--set`` or the user's own ``--config`` recipe. The CLI default, the
    method preset and a shipped recipe (brought by a model alias or named by ``--config``) hold full-fine-tuning
    values, so they are scaled.
    """
    if "learning_rate" in explicit:
        return None
    full = float(settings["learning_rate"])
    settings["learning_rate"] = float(f"{full * LORA_LEARNING_RATE_FACTOR:.6g}")  # 1e-05, not 9.999999999999999e-06
    return (
        f"--lora: learning_rate {settings['learning_rate']:g} = {LORA_LEARNING_RATE_FACTOR:g} x the full fine-tuning "
        f"{full:g} (LoRA Without Regret, Schulman et al. 2025); --learning-rate sets it."
    )


def fit_gpu_micro_batch(settings: dict[str, Any], explicit: set[str]) -> str | None:
    """On a GPU, split a micro-batch larger than fits 24 GB (benchmarks/README.md, memory table) into gradient
    accumulation steps: the completions per optimizer step and per rollout stay the same. Returns the note to show.

    An explicit ``per_device_train_batch_size`` (flag, ``--set``, the user's own recipe) is kept as given.
    """
    limit = GPU_MICRO_BATCH_WITH_VLLM if settings.get("use_vllm") else GPU_MICRO_BATCH
    micro_batch = int(settings.get("per_device_train_batch_size", 8))
    if "per_device_train_batch_size" in explicit or micro_batch <= limit:
        return None
    split = next((n for n in range(limit, 0, -1) if micro_batch % n == 0), 1)
    factor = micro_batch // split
    accumulation = int(settings.get("gradient_accumulation_steps", 1))
    settings["per_device_train_batch_size"] = split
    settings["gradient_accumulation_steps"] = accumulation * factor
    if settings.get("steps_per_generation") is not None:  # counted in micro-batches: the rollout keeps its size
        settings["steps_per_generation"] = int(settings["steps_per_generation"]) * factor
    return (
        f"GPU: micro-batch {micro_batch} -> per_device_train_batch_size {split} x gradient_accumulation_steps "
        f"{accumulation * factor} (same batch; fits 24 GB, see the memory table); --per-device-train-batch-size "
        "keeps yours."
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
    _load_requested_plugins(request)
    fields = known_fields()
    notes: list[str] = []
    explicit = set(explicit_settings(request, fields))
    if request.config and not _is_shipped_recipe(request.config):  # a shipped recipe holds full-FT defaults
        explicit |= set(load_recipe(request.config))
    settings = user_settings(request, fields)
    recipe = None if request.config else alias_recipe(settings.get("model"), settings.get("method"))
    if recipe is not None:  # below --set and the flags, like --config
        settings = {**load_recipe(recipe), **settings}
        notes.append(f"recipe {recipe.name} applied for --model {settings['model']} (flags and --set override it; "
                     "a Hub id instead of the alias skips it).")  # fmt: skip
    keys = run_keys()
    run = RunSpec(**{key: value for key, value in settings.items() if key in keys})
    user_trainer = {key: value for key, value in settings.items() if key not in keys}

    run, embedded_training = _apply_embedded_default(run, has_gpu=gpus > 0)
    run = dataclasses.replace(
        run, method=_resolve_method(run.method), model=_resolve_model(run.model), reward=run.reward or DEFAULT_REWARDS,
        dataset=run.dataset or DEFAULT_DATASET, dataset_split=run.dataset_split or "train",
        template=run.template or "chat", recipe=str(recipe) if recipe else None,
    )  # fmt: skip
    check_reward(run.reward)
    check_prompt_length_settings(run)
    if not run.uses_embedded_task:
        check_dataset(run)
    run = _resolve_lora(run)
    accelerate = resolve_accelerate(run, gpus, request.dry_run)
    run = dataclasses.replace(run, accelerate_config=accelerate.config_name, num_processes=accelerate.processes)

    trainer = _trainer_settings(run, user_trainer, embedded_training, accelerate.target_has_gpu)
    if run.lora:
        notes.append(apply_lora_learning_rate(trainer, explicit))
    if accelerate.target_has_gpu:
        notes.append(fit_gpu_micro_batch(trainer, explicit))
    warnings = [*accelerate.warnings, *validate_trainer_settings(trainer, accelerate.processes, fields)]
    if not accelerate.target_has_gpu and trainer.get("bf16"):
        warnings.append(bf16_on_cpu_warning())
    warnings += check_vllm_setup(run, trainer, accelerate, request.dry_run)
    check_hub_token(trainer)
    if not request.dry_run:  # a dry run may prepare the command for another machine: no network
        check_hub_reachable(trainer)
    if run.lora and accelerate.config_name in ("zero3", "zero3_offload"):
        warnings.append(
            "LoRA with ZeRO-3: the frozen base weights are sharded too and gathered for every generation "
            "(ds3_gather_for_generation); with a model that fits one GPU, zero2 is faster."
        )
    output_dir = Path(trainer["output_dir"])
    run = dataclasses.replace(
        run, trainer=trainer, resume_from_checkpoint=_resolve_resume(run.resume_from_checkpoint, output_dir, warnings)
    )
    notes = [note for note in notes if note]
    return PreparedRun(run, accelerate.args, output_dir / run.run_file_name, warnings, accelerate.env, notes=notes)


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
        for line in failed_ranks(error):
            print(f"edge-trl: {line}", file=sys.stderr, flush=True)
        if prepared.run.num_machines > 1:
            print(f"edge-trl: {multi_machine_failure(prepared.run)}", file=sys.stderr, flush=True)
        return _exit_code(error) or 1
    return 0


def multi_machine_failure(run: RunSpec) -> str:
    """What a failure on one machine of several means, and how long the others take to notice."""
    timeout = int(run.trainer.get("ddp_timeout", 1800))
    return (
        f"this is machine rank {run.machine_rank} of {run.num_machines}. A process that dies on another machine closes "
        "its connections, and the collectives here fail within seconds ('Connection closed by peer'); one that stops "
        "answering without closing them (a frozen machine, a cut network) is given up on after --ddp-timeout "
        f"{timeout} s. Read the other machines' logs, then start every machine again with the same command plus "
        "--resume-from-checkpoint last."
    )


def _failures(error: Exception) -> list[tuple[int, Any]]:
    """The ranks torchrun saw end badly (``ChildFailedError.failures``), the cause first: once one rank fails, torchrun
    stops the others with SIGTERM, and those are listed too. The cause is the earliest failure not ended by SIGTERM
    (when every rank got SIGTERM, from a scheduler say, the earliest)."""
    import signal

    found = [(rank, failure) for rank, failure in (getattr(error, "failures", None) or {}).items()
             if isinstance(getattr(failure, "exitcode", None), int) and failure.exitcode]  # fmt: skip
    return sorted(found, key=lambda item: (item[1].exitcode == -signal.SIGTERM, getattr(item[1], "timestamp", 0),
                                           item[0]))  # fmt: skip


def failed_ranks(error: Exception) -> list[str]:
    """One line per rank torchrun saw fail, the cause first: which rank, and the signal that killed it or its exit
    code. When one rank dies, torchrun stops the others within seconds; their tracebacks (gloo's "Connection reset by
    peer", NCCL's "remote process exited") follow from it and say nothing of the cause."""
    lines = []
    failures = _failures(error)
    for position, (rank, failure) in enumerate(failures):
        code = failure.exitcode
        if position and code == -15:
            lines.append(f"rank {rank} (pid {failure.pid}) was stopped by torchrun (SIGTERM) after rank "
                         f"{failures[0][0]} failed.")  # fmt: skip
        elif code < 0:
            _, how = describe_exit(code)
            cause = " (e.g. by the out-of-memory killer or a scheduler)" if -code == 9 else ""
            lines.append(f"rank {rank} (pid {failure.pid}) was {how}{cause}; torchrun stopped the other ranks, so "
                         "their errors above (a closed connection in a collective) follow from it.")  # fmt: skip
        else:
            lines.append(f"rank {rank} (pid {failure.pid}) failed with exit code {code}: its error is above.")
    return lines


def _exit_code(error: Exception) -> int:
    """The code the run ends with: -N when a signal N stopped it, as subprocess reports it (the launcher itself got
    it: torchrun raises SignalException with ``sigval`` once it has forwarded the signal to the ranks and they have
    exited), else the code of the rank that failed first (`_failures`): -N when a signal killed it, or its own exit
    code (a worker's 2, 3 or 4 keep their meaning through torchrun); 0 when none is known."""
    sigval = getattr(error, "sigval", None)
    if sigval is not None:
        return -int(sigval)
    failures = _failures(error)
    return failures[0][1].exitcode if failures else 0


def describe_exit(code: int) -> tuple[int, str]:
    """The exit status a shell would give for a worker's return code, and how to say it.

    A process killed by signal N has return code -N (Python's subprocess): it is reported by the signal's name and
    exits 128 + N, as shells do (143 for SIGTERM), instead of the 241 that ``exit(-15)`` gives.
    """
    if code < 0:
        import signal

        number = -code
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return 128 + number, f"killed by {name} (exit code {128 + number})"
    return code, f"exit code {code}"
