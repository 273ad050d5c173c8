"""Entry point of the `edge-trl` command.

`train` resolves and launches a run through `accelerate launch`; `configs` lists the shipped accelerate configs and
recipes; `eval` scores a model on the math benchmarks; `plot` draws the curves of runs; `env` reports versions.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="edge-trl: entropy-aware GRPO (EDGE-GRPO, Clip-Cov, KL-Cov) on Hugging Face TRL.")

REPORTED_PACKAGES = ("edge-trl", "torch", "trl", "transformers", "peft", "accelerate", "datasets", "deepspeed", "vllm")


@app.command()
def env() -> None:
    """Print the versions of edge-trl and its stack, and the devices torch sees."""
    typer.echo(f"python: {platform.python_version()} ({platform.platform()})")
    for name in REPORTED_PACKAGES:
        try:
            typer.echo(f"{name}: {version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name}: not installed")
    import torch

    devices = f"cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu only"
    typer.echo(f"devices: {devices}")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


@app.command()
def train(
    model: Annotated[str | None, typer.Option(help="Hub id, local path or alias (e.g. qwen2.5-math-1.5b).")] = None,
    method: Annotated[
        str | None, typer.Option(help="grpo, eda, gec, edge (default), force-reflection, clip-cov or kl-cov.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Hub dataset id, local JSON/JSONL/Parquet file or save_to_disk folder.")
    ] = None,
    dataset_split: Annotated[str | None, typer.Option(help="Split to train on (default: train).")] = None,
    prompt_column: Annotated[str | None, typer.Option(help="Column with the problem (default: found by name).")] = None,
    answer_column: Annotated[str | None, typer.Option(help="Column with the reference answer.")] = None,
    solution_column: Annotated[str | None, typer.Option(help="Column with the reference solution (GEC).")] = None,
    template: Annotated[str | None, typer.Option(help="'chat' (default) or 'plain' for base models.")] = None,
    reward: Annotated[str | None, typer.Option(help="Comma-separated: format, accuracy, format_accuracy.")] = None,
    config: Annotated[Path | None, typer.Option(help="A recipe YAML: EdgeGRPOConfig fields and run keys.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any EdgeGRPOConfig field: --set key=value.")
    ] = None,
    accelerate_config: Annotated[
        str | None,
        typer.Option(help="single_gpu, multi_gpu, zero1, zero2, zero3, zero3_offload, fsdp, cpu, or a path."),
    ] = None,
    num_processes: Annotated[int | None, typer.Option(min=1)] = None,
    num_machines: Annotated[int, typer.Option(min=1)] = 1,
    machine_rank: Annotated[int, typer.Option(min=0)] = 0,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    lora: Annotated[bool, typer.Option("--lora", help="Train a LoRA adapter instead of the full model.")] = False,
    lora_r: Annotated[int | None, typer.Option(min=1)] = None,
    lora_alpha: Annotated[int | None, typer.Option(min=1)] = None,
    lora_dropout: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    lora_target_modules: Annotated[str | None, typer.Option(help="Default: all-linear.")] = None,
    push_to_hub: Annotated[bool, typer.Option("--push-to-hub")] = False,
    hub_model_id: str | None = None,
    hub_private: Annotated[bool | None, typer.Option("--hub-private/--hub-public")] = None,
    hub_strategy: Annotated[str | None, typer.Option(help="end, every_save, checkpoint, all_checkpoints.")] = None,
    output_dir: Path | None = None,
    resume_from_checkpoint: Annotated[
        str | None, typer.Option(help="A checkpoint folder, or 'last' for the newest in --output-dir.")
    ] = None,
    report_to: Annotated[str | None, typer.Option(help="none, tensorboard, wandb, ...")] = None,
    seed: int | None = None,
    max_steps: Annotated[int | None, typer.Option(min=1)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and resolved run, then exit.")] = False,
) -> None:
    """Train with EdgeGRPOTrainer through `accelerate launch` (DeepSpeed/FSDP configs, LoRA, Hub push)."""
    import yaml

    from edge_trl.launch import LaunchError, TrainOptions, launch, resolve

    options = TrainOptions(
        model=model, method=method, dataset=dataset, dataset_split=dataset_split, prompt_column=prompt_column,
        answer_column=answer_column, solution_column=solution_column, template=template, reward=reward,
        config=config, overrides=list(set_ or []), accelerate_config=accelerate_config,
        num_processes=num_processes, num_machines=num_machines, machine_rank=machine_rank,
        main_process_ip=main_process_ip, main_process_port=main_process_port, lora=True if lora else None,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_target_modules=lora_target_modules,
        push_to_hub=push_to_hub, hub_model_id=hub_model_id, hub_private=hub_private, hub_strategy=hub_strategy,
        output_dir=output_dir, resume_from_checkpoint=resume_from_checkpoint, report_to=report_to, seed=seed,
        max_steps=max_steps,
    )  # fmt: skip
    try:
        plan = resolve(options)
    except LaunchError as error:
        _fail(str(error))
    for warning in plan.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    if dry_run:
        typer.echo(plan.command_line())
        typer.echo(yaml.safe_dump(plan.spec, sort_keys=False))
        return
    typer.echo(f"+ {plan.command_line()}", err=True)
    code = launch(plan)
    if code != 0:
        typer.secho(f"error: training failed (exit code {code}); see the messages above.", err=True, fg="red")
        raise typer.Exit(code=code)


@app.command()
def configs(name: Annotated[str | None, typer.Argument(help="A config or recipe to print.")] = None) -> None:
    """List the shipped accelerate configs and recipes, or print one."""
    from edge_trl.recipes import shipped_accelerate_configs, shipped_recipes

    accelerate, recipes = shipped_accelerate_configs(), shipped_recipes()
    if name is not None:
        path = accelerate.get(name) or recipes.get(name)
        if path is None:
            _fail(f"no shipped config or recipe {name!r}: run `edge-trl configs` to list them.")
        typer.echo(path.read_text())
        return
    for title, entries in (("accelerate configs (--accelerate-config)", accelerate), ("recipes (--config)", recipes)):
        typer.echo(f"{title}:")
        for key, path in entries.items():
            first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line), "")
            typer.echo(f"  {key:<32} {first}")
        typer.echo("")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Output folders of runs (or checkpoint folders).")],
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("edge_trl_runs.png"),
    label: Annotated[list[str] | None, typer.Option(help="A label per run, in order (default: folder names).")] = None,
) -> None:
    """Plot reward, accuracy, entropy, advantage variance, collapsed-group share and Cov metrics of runs."""
    from edge_trl.plotting import NotARunError, plot_runs

    if label and len(label) != len(run_dirs):
        _fail(f"--label was given {len(label)} times for {len(run_dirs)} runs: give one per run, or none.")
    try:
        panels = plot_runs(run_dirs, out, labels=label or None)
    except NotARunError as error:
        _fail(str(error))
    typer.echo(f"wrote {out}: {', '.join(panels)}")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="Hub id, local path or alias (e.g. qwen2.5-math-1.5b).")],
    adapter: Annotated[Path | None, typer.Option(help="A LoRA adapter folder, evaluated on top of --model.")] = None,
    benchmarks: Annotated[
        str, typer.Option(help="Comma-separated: aime24, amc23, math500, minerva, olympiadbench.")
    ] = "aime24,amc23,math500,minerva,olympiadbench",
    data: Annotated[
        Path | None, typer.Option(help="A local save_to_disk folder with the benchmarks (default: the Hub).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem; pass@1 is their mean.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.1,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 3000,
    batch_size: Annotated[int, typer.Option(min=1, help="Completions per generate call (transformers).")] = 16,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N problems of each benchmark.")] = None,
    template: Annotated[str, typer.Option(help="'chat' (system + user messages) or 'plain' (base models).")] = "chat",
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("eval_results.json"),
    backend: Annotated[str, typer.Option(help="auto (vLLM with a GPU, else transformers), vllm, transformers.")] = (
        "auto"
    ),
    seed: int = 0,
) -> None:
    """pass@1 and pass@k on AIME24 / AMC23 / MATH500 / Minerva / OlympiadBench, as a table and a JSON file."""
    from edge_trl.data import DatasetError
    from edge_trl.evaluation import evaluate, format_table, parse_benchmarks, write_result
    from edge_trl.models import resolve_model

    try:
        names = parse_benchmarks(benchmarks)
        model_id = resolve_model(model)
        if adapter is not None and not (adapter / "adapter_config.json").exists():
            _fail(f"--adapter {adapter}: no adapter_config.json there; point to a saved LoRA adapter folder.")
        if data is not None and not data.exists():
            _fail(f"--data {data}: no such folder.")
        if backend not in ("auto", "vllm", "transformers"):
            _fail(f"--backend {backend!r}: use auto, vllm or transformers.")
        if template not in ("chat", "plain"):
            _fail(f"--template {template!r}: use chat or plain.")
        result = evaluate(
            model_id, names, adapter=str(adapter) if adapter else None, data=data, samples=samples,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
            limit=limit, template=template, seed=seed, backend=backend,
        )  # fmt: skip
    except (ValueError, DatasetError, OSError) as error:
        _fail(str(error))
    typer.echo(format_table(result))
    settings = result["settings"]
    typer.echo(f"{settings['problems_per_second']:.3f} problems/s with {settings['backend']}; results: {output}")
    write_result(result, output)


@app.callback()
def _root() -> None:
    """edge-trl command line."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
