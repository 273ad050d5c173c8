"""The docs' flag reference of `edge-trl train` (docs/hooks.py builds it into ``cli-reference.md``).

Every flag is listed from the fields the command itself is built from (`option_fields`), grouped by topic, with the
default the command really applies: each case below is resolved by `edge_trl.launch.resolve`, the code behind
``edge-trl train --dry-run``, so a changed preset, recipe or machine default changes the page with it. A field that
no case sets keeps its dataclass default (the worker builds `EdgeGRPOConfig` from the resolved settings only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_trl.cli.train_command import EPILOG, _command_options, option_fields
from edge_trl.config_schema import ConfigField

HUB_MODEL = "Qwen/Qwen2.5-Math-1.5B"
ALIAS = "qwen2.5-math-1.5b"


@dataclass(frozen=True)
class Case:
    """One `edge-trl train` command line, resolved on a machine with ``gpus`` GPUs."""

    label: str  # how the page names it
    args: tuple[str, ...]  # the flags, as typed
    gpus: int

    @property
    def command(self) -> str:
        return " ".join(("edge-trl train", *self.args))


# The main cases: what a newcomer runs first, the paper's recipe through the model alias, and any other model.
MAIN_CASES = (
    Case("built-in run", (), 0),
    Case(f"`{ALIAS}` recipe", ("--model", ALIAS), 1),
    Case("Hub model on GPU", ("--model", HUB_MODEL), 1),
    Case("Hub model on CPU", ("--model", HUB_MODEL), 0),
)
# Settings that change the defaults further, each on top of the Hub model on a GPU.
VARIANT_ARGS = (
    ("--method", "grpo"),
    ("--method", "eda"),
    ("--method", "gec"),
    ("--method", "force-reflection"),
    ("--method", "clip-cov"),
    ("--method", "kl-cov"),
    ("--lora",),
)
VARIANTS = tuple(Case(f"`{' '.join(args)}`", ("--model", HUB_MODEL, *args), 1) for args in VARIANT_ARGS)
# transformers 5 names gradient checkpointing activation_checkpointing: the launcher writes the old field's value there.
SAME_VALUE_AS = {"gradient_checkpointing": "activation_checkpointing"}
# Fields whose value names the method (the output folder): the method presets are not listed one by one.
NOT_BY_METHOD = {"output_dir": "with `--method M`: `outputs/<model folder>-M`"}


def machine_notes() -> dict[str, str]:
    """What a machine changes that the cases above cannot show (whether vLLM is installed where the docs are built),
    from the constants the launcher uses."""
    from edge_trl.presets import GPU_MICRO_BATCH, GPU_MICRO_BATCH_WITH_VLLM

    vllm = "On a GPU machine with a tested vLLM installed, `edge-trl train` sets `use_vllm: true` and `vllm_mode: colocate`."
    split = (
        f"On a GPU, a micro-batch above {GPU_MICRO_BATCH} ({GPU_MICRO_BATCH_WITH_VLLM} with vLLM) is split into "
        "gradient accumulation steps, so the batch per optimizer step stays the same; a value you give is kept."
    )
    return {"use_vllm": vllm, "vllm_mode": vllm, "per_device_train_batch_size": split,
            "gradient_accumulation_steps": split}  # fmt: skip


def _flag_values(args: tuple[str, ...]) -> dict[str, Any]:
    """The flags of ``args`` by field name, parsed by the command itself (types, ``--no-`` forms, aliases)."""
    import click

    from edge_trl.cli.train_command import TrainCommand

    command = TrainCommand()
    ctx = command.make_context("train", list(args), resilient_parsing=False)
    values = {}
    for param in command.get_params(ctx):
        if param.name in (command.fields or {}) and ctx.get_parameter_source(param.name) is (
            click.core.ParameterSource.COMMANDLINE
        ):
            values[param.name] = ctx.params[param.name]
    return values


def resolved_run(case: Case) -> dict[str, Any]:
    """The settings ``case`` resolves to, as ``edge-trl train --dry-run`` prints them: the run keys and the trainer
    settings in one mapping (a run key wins a shared name). Paths under the working directory are made relative."""
    from edge_trl.launch import TrainRequest, resolve

    prepared = resolve(TrainRequest(flags=_flag_values(case.args), dry_run=True), gpus=case.gpus)
    run = yaml.safe_load(prepared.run.to_yaml())  # the YAML the dry run prints
    trainer = run.pop("trainer") or {}
    return {key: _relative(value) for key, value in {**trainer, **run}.items()}


def _relative(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("/"):
        path, cwd = Path(value), Path.cwd()
        if path.is_relative_to(cwd):
            return str(path.relative_to(cwd))
        package = Path(__file__).resolve().parents[1]  # a checkout's root; shipped files are named from it
        if path.is_relative_to(package):
            return str(path.relative_to(package))
    return value


def effective(settings: dict[str, Any], config_field: ConfigField) -> Any:
    """The value a run gets for ``config_field``: the resolved setting, else the field's own default."""
    name = config_field.name
    for key in (name, SAME_VALUE_AS.get(name)):
        if key is not None and key in settings:
            return settings[key]
    return config_field.default


# -- topics ------------------------------------------------------------------------------------------------------------

TOPICS: tuple[tuple[str, str, Callable[[ConfigField], bool]], ...] = (
    ("edge-trl methods", "EDA, GEC, Clip-Cov / KL-Cov, dynamic sampling, the entropy law, rewards (`EdgeGRPOConfig`).",
     lambda f: f.owner == "EdgeGRPOConfig"),
    ("Run: model, data, reward, launch", "What to train and how `accelerate launch` starts it (run keys).",
     lambda f: f.owner == "RunSpec"),
    ("vLLM rollouts", "Rollouts generated by vLLM (TRL).", lambda f: "vllm" in f.name),
    ("Generation", "How completions are sampled (TRL).",
     lambda f: f.name in {"num_generations", "num_generations_eval", "max_completion_length", "generation_batch_size",
                          "steps_per_generation", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                          "generation_kwargs", "chat_template_kwargs", "cache_implementation", "use_cache",
                          "ds3_gather_for_generation", "use_transformers_paged", "mask_truncated_completions",
                          "max_tool_calling_iterations"} or f.name.startswith("transformers_continuous")
     or f.name == "use_transformers_continuous_batching"),
    ("Optimisation: loss, optimizer, schedule, precision", "The GRPO loss and the training loop (TRL, transformers).",
     lambda f: f.name in {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                          "num_train_epochs", "max_steps", "weight_decay", "max_grad_norm", "optim", "optim_args",
                          "optim_target_modules", "beta", "epsilon", "epsilon_high", "delta", "num_iterations",
                          "loss_type", "scale_rewards", "importance_sampling_level", "reward_weights",
                          "multi_objective_aggregation", "bf16", "fp16", "tf32", "gradient_checkpointing",
                          "gradient_checkpointing_kwargs", "activation_checkpointing",
                          "activation_checkpointing_kwargs", "seed", "data_seed", "model_init_kwargs", "use_cpu",
                          "disable_dropout", "cast_lm_head_to_fp32", "top_entropy_quantile",
                          "off_policy_mask_threshold", "use_bias_correction_kl", "label_smoothing_factor",
                          "average_tokens_across_devices", "auto_find_batch_size", "shuffle_dataset",
                          "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "router_aux_loss_coef"}
     or f.name.startswith(("lr_", "warmup_", "adam_", "entropy_", "sapo_", "vespo_"))
     or f.name == "use_adaptive_entropy"),
    ("Logging, saving, evaluation and the Hub", "What is logged, saved, evaluated and pushed (TRL, transformers).",
     lambda f: f.name.startswith(("log", "save_", "hub_", "eval_", "trackio_", "push_to_hub"))
     or f.name in {"output_dir", "report_to", "run_name", "project", "num_completions_to_print", "disable_tqdm",
                   "include_num_input_tokens_seen", "eval_strategy", "per_device_eval_batch_size",
                   "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "save_strategy",
                   "enable_jit_checkpoint", "include_for_metrics", "batch_eval_metrics", "prediction_loss_only",
                   "skip_memory_metrics", "bf16_full_eval", "fp16_full_eval", "restore_callback_states_from_checkpoint"}),
    ("The rest of TRL and transformers", "Distributed set-up, data loading, kernels and the remaining fields.",
     lambda f: True),
)  # fmt: skip


# The order of the page; a field belongs to the first topic of TOPICS whose test it passes (vLLM before generation).
ORDER = ("edge-trl methods", "Run: model, data, reward, launch", "Generation",
         "Optimisation: loss, optimizer, schedule, precision", "vLLM rollouts",
         "Logging, saving, evaluation and the Hub", "The rest of TRL and transformers")  # fmt: skip


# The methods' fields in the order of the docs' method pages (the dataclass order follows its bases, last first).
METHOD_ORDER = ("eda", "gec", "force_reflection", "cov_", "clip_cov", "kl_cov", "dynamic_sampling", "max_num_gen",
                "entropy_law", "reward", "method")  # fmt: skip


def _method_rank(config_field: ConfigField) -> int:
    return next((i for i, prefix in enumerate(METHOD_ORDER) if config_field.name.startswith(prefix)), len(METHOD_ORDER))


def topic_of(config_field: ConfigField) -> str:
    return next(title for title, _, test in TOPICS if test(config_field))


# -- Markdown ----------------------------------------------------------------------------------------------------------

_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_MARKDOWN_LINK = re.compile(r"(\[[^\]\n]+\]\([^)\s]+\))")


def help_markdown(text: str) -> str:
    """A help text as Markdown: its links and code spans kept, everything else literal (a ``*``, ``_``, ``{`` or ``<``
    in prose is text, not emphasis, an attribute list or HTML)."""
    out, position = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_prose(text[position : match.start()]))
        out.append(match.group(0))
        position = match.end()
    out.append(_prose(text[position:]))
    return "".join(out)


def _prose(text: str) -> str:
    out = []
    for index, piece in enumerate(_MARKDOWN_LINK.split(text)):
        if index % 2:  # a link: its label is prose, its target kept
            label, target = re.fullmatch(r"\[(.*)\]\((.*)\)", piece).groups()
            out.append(f"[{_escape(label)}]({target})")
        else:
            out.append(_escape(piece))
    return "".join(out)


def _escape(text: str) -> str:
    text = re.sub(r"([\\`*_{}\[\]#$|])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def value_markdown(value: Any) -> str:
    """A value as the dry run's YAML would read it, in a code span: strings JSON-quoted (quotes show spaces)."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = repr(value)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def _value_line(values: list[tuple[str, Any]]) -> list[str]:
    """``values``, (case label, value) pairs, grouped by value: one line per distinct value; the method presets of a
    line named together (``--method clip-cov, kl-cov``)."""
    groups: dict[str, list[str]] = {}
    for label, value in values:
        groups.setdefault(value_markdown(value), []).append(label)
    lines = []
    for value, labels in groups.items():
        methods = [
            label.removeprefix("`--method ").removesuffix("`") for label in labels if label.startswith("`--method ")
        ]
        others = [label for label in labels if not label.startswith("`--method ")]
        if methods:
            others.append("`--method` " + ", ".join(f"`{method}`" for method in methods))
        lines.append(f"{wrappable(value)}: {'; '.join(others)}")
    return lines


def wrappable(code: str) -> str:
    """A long value's code span may wrap (extra.css keeps a default's code on one line otherwise)."""
    return code + "{ .wrap }" if len(code) > 26 else code


def flag_entry(config_field: ConfigField, main: list[dict[str, Any]], variants: list[dict[str, Any]]) -> list[str]:
    """One flag: its name line (never broken), its help as Markdown, its defaults."""
    if config_field.kind == "bool":
        usage = f"<code>{config_field.flag}</code> / <code>--no-{config_field.flag[2:]}</code>"
    else:
        choices = config_field.choices or ()
        metavar = " | ".join(choices) if choices and len(choices) <= 6 else config_field.kind.upper()
        usage = f'<code>{config_field.flag}</code> <span class="flag-metavar">{metavar}</span>'
    lines = [
        f'<div class="flag" id="{config_field.name}" markdown>',
        f'<p class="flag-name">{usage} <span class="flag-field">{config_field.name}</span></p>',
        "",
        help_markdown(config_field.help) or "(no help text)",
    ]
    if config_field.choices and len(config_field.choices) > 6:
        lines[-1] += " Choices: " + ", ".join(f"`{choice}`" for choice in config_field.choices) + "."
    main_values = [
        (case.label, effective(settings, config_field)) for case, settings in zip(MAIN_CASES, main, strict=True)
    ]
    base = effective(main[2], config_field)
    changed = [
        (case.label, effective(settings, config_field))
        for case, settings in zip(VARIANTS, variants, strict=True)
        if effective(settings, config_field) != base and config_field.name not in NOT_BY_METHOD
    ]
    distinct = {value_markdown(value) for _, value in main_values}
    lines.append("")
    if len(distinct) == 1 and not changed:
        lines.append(f'<p class="flag-default" markdown>Default: {wrappable(next(iter(distinct)))}</p>')
    else:
        lines.append('<div class="flag-default" markdown>')
        lines.append("")
        lines.append("Default:")
        lines.append("")
        lines += [f"- {line}" for line in _value_line(main_values + changed)]
        if config_field.name in NOT_BY_METHOD:
            lines.append(f"- {NOT_BY_METHOD[config_field.name]}")
        lines += ["", "</div>"]
    note = machine_notes().get(config_field.name)
    if note:
        lines.append(f'<p class="flag-dataclass" markdown>{note}</p>')
    if config_field.default is not None and all(
        value_markdown(effective(s, config_field)) != value_markdown(config_field.default) for s in main
    ):
        lines.append(f'<p class="flag-dataclass" markdown>Field default (`EdgeGRPOConfig()` in Python): '
                     f"{wrappable(value_markdown(config_field.default))}</p>")  # fmt: skip
    lines += ["</div>", ""]
    return lines


def flag_reference(resolver: Callable[[Case], dict[str, Any]] = resolved_run) -> str:
    """The page: every flag of `edge-trl train`, by topic, with the defaults of the main cases resolved."""
    main = [resolver(case) for case in MAIN_CASES]
    variants = [resolver(case) for case in VARIANTS]
    by_topic: dict[str, list[ConfigField]] = {}
    for config_field in option_fields():
        by_topic.setdefault(topic_of(config_field), []).append(config_field)
    by_topic["edge-trl methods"] = sorted(by_topic.get("edge-trl methods", []), key=_method_rank)  # a stable sort
    machine = {0: "on a machine without GPU", 1: "on one GPU"}
    cases = "\n".join(f"- **{case.label}**: `{case.command}` {machine[case.gpus]}" for case in MAIN_CASES)
    lines = [
        "---",
        "search:",
        "  boost: 2",
        "---",
        "",
        "# Flag reference: edge-trl train",
        "",
        "Every flag of `edge-trl train`, generated when the docs are built from the fields the command is built "
        "from. Each flag also has an underscore spelling (`--per_device_train_batch_size`), each boolean flag a "
        "`--no-` form, and each field (the name in grey) is a `--set` key, a recipe key and an `EdgeGRPOConfig` "
        "argument. " + EPILOG,
        "",
        "**Defaults are what `edge-trl train` applies**, resolved by the code behind `edge-trl train --dry-run` "
        "(method preset, the model alias's recipe, CPU or GPU defaults). Where they differ, each value is named "
        "with the case it applies to:",
        "",
        cases,
        "",
        "and, on top of the Hub model on a GPU, the method presets (`--method grpo`, `eda`, `gec`, "
        "`force-reflection`, `clip-cov`, `kl-cov`; the default is `edge`) and `--lora`. A flag you give always wins; "
        "`edge-trl train ... --dry-run` prints the resolved run of any command line. On a GPU machine with a tested "
        "vLLM installed, the GPU cases also get `use_vllm: true` and `vllm_mode: colocate` "
        "([vLLM](vllm.md)).",
        "",
        "Topics: " + " · ".join(f"[{title}](#{_slug(title)})" for title in ORDER if by_topic.get(title)),
        "",
        "## Options of the command",
        "",
    ]
    for option in _command_options():
        metavar = "" if option.is_flag else f" {option.metavar or 'PATH'}"
        lines += [
            f'<div class="flag" id="{option.name}" markdown>',
            f'<p class="flag-name"><code>{option.opts[0]}{metavar}</code></p>',
            "",
            help_markdown(option.help or ""),
            "</div>",
            "",
        ]
    intros = {title: intro for title, intro, _ in TOPICS}
    for title in ORDER:
        intro = intros[title]
        if not by_topic.get(title):
            continue
        lines += [f"## {title}", "", intro, ""]
        for config_field in by_topic[title]:
            lines += flag_entry(config_field, main, variants)
    return "\n".join(lines) + "\n"


def _slug(title: str) -> str:
    """The anchor MkDocs' toc extension gives a heading."""
    slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
    return re.sub(r"[-\s]+", "-", slug)


__all__ = ["MAIN_CASES", "VARIANTS", "Case", "effective", "flag_reference", "resolved_run"]
