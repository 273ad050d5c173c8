"""The checks of `edge-trl train` that run before any process starts: reward names, the dataset and its prompt
lengths, the trainer settings (EdgeGRPOConfig's own rules and TRL's batch rules, without importing trl), vLLM, and
the Hub. Each failure is a `LaunchError` whose message names the option and the fix (exit code 2)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from edge_trl.config_schema import ConfigField
from edge_trl.errors import LaunchError
from edge_trl.run_spec import RunSpec
from edge_trl.validation import kl_cov_is_noop, kl_cov_noop_message, validate_edge_fields

if TYPE_CHECKING:
    from edge_trl.accelerate_setup import AccelerateSetup

logger = logging.getLogger(__name__)


def check_reward(reward: str) -> None:
    from edge_trl.rewards import get_reward_funcs

    try:
        get_reward_funcs(reward)
    except ValueError as error:
        raise LaunchError(f"--reward: {error}") from error


def check_dataset(run: RunSpec) -> None:
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
        prepared = prepare_math_dataset(dataset, template=run.template, **columns)
        if run.max_prompt_length is not None:
            _check_prompt_lengths(run, prepared)
    except DatasetError as error:
        raise LaunchError(f"--dataset {source}: {error}") from error
    finally:
        enable_progress_bar()


def _check_prompt_lengths(run: RunSpec, prepared: Any) -> None:
    """Prompts longer than ``max_prompt_length``: an error naming them, or counted (``drop_long_prompts``). The
    tokenizer is loaded only for this check; if it cannot be (a Hub model not reachable from here), the workers check."""
    from transformers import AutoTokenizer

    from edge_trl.data import check_prompt_lengths

    try:
        tokenizer = AutoTokenizer.from_pretrained(run.model)
    except (OSError, ValueError) as error:
        logger.debug("no tokenizer for the prompt-length check here (%s): the workers check", error)
        return
    check_prompt_lengths(prepared, tokenizer, run.max_prompt_length, drop=bool(run.drop_long_prompts))


def check_prompt_length_settings(run: RunSpec) -> None:
    if run.max_prompt_length is not None and run.max_prompt_length < 1:
        raise LaunchError(f"--max-prompt-length {run.max_prompt_length}: must be at least 1 (tokens).")
    if run.drop_long_prompts and run.max_prompt_length is None:
        raise LaunchError("--drop-long-prompts needs --max-prompt-length (the limit, in tokens).")


def check_vllm_setup(run: RunSpec, trainer: dict[str, Any], accelerate: AccelerateSetup, dry_run: bool) -> list[str]:
    """A vLLM run's checks before any process starts (edge_trl.vllm_support.check_vllm): vLLM installed and of a
    tested version, a reachable server, a head_dim the CPU backend takes. A real run refuses (exit 2); a dry run, which
    may prepare the command for another machine, warns. On CPU the child processes get vLLM's CPU settings."""
    if not trainer.get("use_vllm"):
        return []
    from edge_trl.vllm_support import VLLMSetupError, check_vllm, cpu_environment

    mode = trainer.get("vllm_mode", "colocate")
    warnings = []
    try:
        check_vllm(
            mode, run.model, server_host=trainer.get("vllm_server_host", "0.0.0.0"),
            server_port=int(trainer.get("vllm_server_port", 8000)),
            timeout=float(trainer.get("vllm_server_timeout", 240.0)), on_cpu=not accelerate.target_has_gpu,
        )  # fmt: skip
    except VLLMSetupError as error:
        if not dry_run:
            raise LaunchError(str(error)) from error
        warnings.append(f"{error} (dry run: printed anyway)")
    if not accelerate.target_has_gpu:
        accelerate.env.update(cpu_environment())
        if accelerate.processes > 1:
            warnings.append(
                f"vLLM colocate on {accelerate.processes} CPU processes is untested (one vLLM engine per process): "
                "use --num-processes 1."
            )
    return warnings


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


def check_hub_token(settings: dict[str, Any]) -> None:
    if not settings.get("push_to_hub"):
        return
    from huggingface_hub import get_token

    if get_token() is None:
        raise LaunchError(
            "--push-to-hub needs a Hugging Face token: run `hf auth login` (or `huggingface-cli login`) or set "
            "HF_TOKEN; --hub-model-id alone does not give write access."
        )


def check_hub_reachable(settings: dict[str, Any]) -> None:
    """Before any process starts: a ``--push-to-hub`` run fails here, in seconds, when the Hub cannot be reached
    (offline mode, no network, a wrong HF_ENDPOINT) or rejects the token, instead of in every rank's Trainer set-up
    after the model has loaded. One ``whoami`` call checks the endpoint and the token at once."""
    if not settings.get("push_to_hub"):
        return
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    later = (
        "Or train without --push-to-hub and upload the result afterwards: hf upload "
        f"{settings.get('hub_model_id') or '<repo-id>'} {settings.get('output_dir')}"
    )
    try:
        HfApi().whoami()
    except OfflineModeIsEnabled:
        raise LaunchError(
            f"--push-to-hub: HF_HUB_OFFLINE is set, so the Hub cannot be reached. Unset it to push. {later}"
        ) from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise LaunchError(
                f"--push-to-hub: the Hub rejected the token (HTTP {status}): run `hf auth login` or set a valid "
                f"HF_TOKEN with write access. {later}"
            ) from None
        raise LaunchError(
            f"--push-to-hub: the Hub at {constants.ENDPOINT} answered {error}. Retry later. {later}"
        ) from None
    except Exception as error:  # network errors of the HTTP client (httpx, requests) share no base class
        raise LaunchError(
            f"--push-to-hub: cannot reach the Hub at {constants.ENDPOINT} ({type(error).__name__}: {error}). Check "
            f"the network (and HF_ENDPOINT) and retry. {later}"
        ) from None
