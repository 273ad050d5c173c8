"""The training script `accelerate launch` starts on every process of an `edge-trl train` run.

Usage (written by `edge-trl train`, see its --dry-run): ``accelerate launch ... worker.py --run RUN.yaml``. The file
holds the resolved `RunSpec`; nothing here reads the command line of `edge-trl` itself.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from edge_trl.run_spec import RunSpec

# Exit codes of a worker (and of `edge-trl train`): 2 bad input, 3 the Hub push failed (the model is saved locally),
# 4 the final model folder does not load (the checkpoints are kept).
EXIT_MODEL_NOT_SAVED = 4


def build_trainer(run: RunSpec) -> Any:
    from edge_trl.run_spec import load_plugins

    load_plugins(run.plugin)  # before the config: a plugin's methods and rewards register themselves
    from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer, embedded
    from edge_trl.data import load_any_dataset, prepare_math_dataset
    from edge_trl.methods import method_fields
    from edge_trl.rewards import get_reward_funcs

    # The fields of methods registered by plugins are flags and recipe keys; the config holds them in method_kwargs.
    settings = dict(run.trainer)
    plugin_fields = {f.name for f in method_fields()}
    method_kwargs = {key: settings.pop(key) for key in list(settings) if key in plugin_fields}
    if method_kwargs:
        settings["method_kwargs"] = {**(settings.get("method_kwargs") or {}), **method_kwargs}
    args = EdgeGRPOConfig(**settings)
    callbacks = []
    if run.uses_embedded_task:  # the built-in task: generated, plain prompts
        dataset = embedded.addition_dataset(50_000, seed=args.seed)
        from transformers import AutoTokenizer

        callbacks.append(embedded.held_out_callback(AutoTokenizer.from_pretrained(run.model)))
    else:
        dataset = prepare_math_dataset(
            load_any_dataset(run.dataset, split=run.dataset_split),
            template=run.template,
            prompt_column=run.prompt_column,
            answer_column=run.answer_column,
            solution_column=run.solution_column,
        )
        if run.max_prompt_length is not None:  # the launcher checked a local file; a Hub dataset is checked here
            from transformers import AutoTokenizer

            from edge_trl.data import check_prompt_lengths

            tokenizer = AutoTokenizer.from_pretrained(run.model)
            dataset = check_prompt_lengths(dataset, tokenizer, run.max_prompt_length, drop=bool(run.drop_long_prompts))
    peft_config = None
    if run.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=run.lora_r,
            lora_alpha=run.lora_alpha,
            lora_dropout=run.lora_dropout,
            target_modules=run.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    trainer = EdgeGRPOTrainer(
        run.model,
        reward_funcs=get_reward_funcs(run.reward),
        args=args,
        train_dataset=dataset,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.edge_run_info = {"method": run.method, "dataset": run.dataset, "model": run.model}
    return trainer


def silence_unactionable_warnings() -> None:
    """Warnings raised inside TRL/transformers that a user of edge-trl cannot act on."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _watch_for_preemption(trainer: Any) -> Any:
    """SIGTERM / SIGINT save a checkpoint at the next step boundary and stop training (edge_trl.faults)."""
    from edge_trl.faults import PreemptionCallback

    preemption = PreemptionCallback()
    preemption.install()
    trainer.add_callback(preemption)
    return preemption


def _report_preemption(trainer: Any, preemption: Any) -> int:
    """Exit 128 + the signal (130 for SIGINT, 143 for SIGTERM), as a process killed by it, after saying how to go on."""
    signum = preemption.received or signal.SIGTERM
    if trainer.is_world_process_zero():
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
        print(
            f"edge-trl: stopped by {signal.Signals(signum).name} after step {trainer.state.global_step}; checkpoint "
            f"saved in {checkpoint}. Resume with the same command plus --resume-from-checkpoint last.",
            file=sys.stderr,
            flush=True,
        )
    return 128 + int(signum)


def start_cpu_process_group(settings: dict[str, Any]) -> None:
    """Start the gloo process group of a multi-process CPU run with the run's ``ddp_timeout``.

    transformers 5.24 passes ``ddp_timeout`` to the process group only off CPU (``TrainingArguments._setup_devices``
    drops it with ``use_cpu``), so a CPU rank whose peer froze would wait torch's default 30 minutes. accelerate and
    DeepSpeed reuse a group that is already started.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not settings.get("use_cpu"):
        return
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=float(settings.get("ddp_timeout", 1800))))


def final_save_problems(trainer: Any, adapter: bool) -> list[str]:
    """What keeps the final folder from loading (edge_trl.saved_model), checked by the main process against the
    trained model's parameters and shared with every process, so that all of them skip the (collective) push
    alike."""
    from accelerate.utils import broadcast_object_list

    from edge_trl.saved_model import expected_parameters, saved_model_problems

    problems: list[Any] = [None]
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        expected = expected_parameters(model)
        if adapter:  # the adapter file holds the trainable (LoRA) parameters only
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            expected = {name: shape for name, shape in expected.items() if name in trainable}
        problems = [saved_model_problems(trainer.args.output_dir, expected, adapter=adapter)]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(problems)
    return problems[0]


def main(argv: list[str] | None = None) -> int:
    silence_unactionable_warnings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="the run file written by `edge-trl train`")
    options = parser.parse_args(argv)
    run = RunSpec.load(options.run)
    start_cpu_process_group(run.trainer)
    try:
        return train(run)
    finally:
        end_process_group()


def end_process_group() -> None:
    """Close the process group before the interpreter exits: left open, a rank can abort at exit ("terminate called
    without an active exception", seen with ZeRO-3 on CPU) after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train(run: RunSpec) -> int:
    """Build the trainer, train, save (checked), push; the exit code."""
    try:
        trainer = build_trainer(run)
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    preemption = _watch_for_preemption(trainer)
    trainer.train(resume_from_checkpoint=run.resume_from_checkpoint)
    if preemption.stopped_early:
        return _report_preemption(trainer, preemption)
    # Save the final model (or LoRA adapter) locally first: Trainer.save_model would also push, and a failed push
    # must not cost the result.
    push, trainer.args.push_to_hub = trainer.args.push_to_hub, False
    trainer.save_model()
    trainer.args.push_to_hub = push
    # The run's card replaces the one PEFT wrote beside an adapter (its base model as a local path), so the folder is
    # ready for `hf upload` too; a push writes it again.
    trainer.create_model_card(dataset_name=run.dataset)
    output_dir = trainer.args.output_dir
    problems = final_save_problems(trainer, adapter=run.lora)
    if problems:  # never say "saved", nor push, what does not load
        if trainer.is_world_process_zero():
            from edge_trl.saved_model import recovery_hint

            listed = "".join(f"\n  - {problem}" for problem in problems)
            print(
                f"error: training finished, but the model saved in {output_dir} does not load:{listed}\n"
                f"The checkpoints are kept. {recovery_hint(output_dir)}",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_MODEL_NOT_SAVED
    if push:
        try:
            trainer.push_to_hub(dataset_name=run.dataset)
        except Exception as error:  # the Hub is remote: never lose the local result over it
            if trainer.is_world_process_zero():
                print(
                    f"error: pushing to the Hub failed ({type(error).__name__}: {error}). The trained model is "
                    f"saved in {output_dir}; retry with: hf upload {trainer.hub_model_id or '<repo-id>'} {output_dir}",
                    file=sys.stderr,
                    flush=True,
                )
            return 3
    if trainer.is_world_process_zero():
        print(f"edge-trl: training finished; model saved in {output_dir}", flush=True)
    return 0


def exit_now(code: int) -> None:
    """End the process with ``code`` once everything is written, skipping the interpreter's C++ teardown.

    After a resumed run on CPU processes, about 1 exit in 6 aborted in that teardown ("terminate called without an
    active exception", SIGABRT, no Python frame left: a library's C++ thread still joinable at exit), after the model
    was saved and the run reported finished: a complete run must not end as a failure for it. Training callbacks
    (loggers, the Hub's uploads) have finished by then; only the streams need flushing.
    """
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
