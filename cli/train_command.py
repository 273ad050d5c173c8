"""The `edge-trl train` command, with one flag per config field, generated from the dataclasses.

The flags are the `RunSpec` fields (what to train, how to launch) and every `EdgeGRPOConfig` field (and so every
`GRPOConfig`/`TrainingArguments` field), as in `trl grpo`: ``--per-device-train-batch-size 4``; the underscore spelling
``--per_device_train_batch_size 4`` is accepted too. Boolean fields are ``--flag`` / ``--no-flag``. Help and choices
come from the field metadata. The trainer fields are read from a cache (`edge_trl.config_schema`), so building this
command imports neither trl nor torch, and a field added to the config becomes a flag with no edit here.

Only flags given on the command line override; the others leave the lower layers (CLI defaults < method preset <
``--config`` recipe < ``--set``) alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from edge_trl.config_schema import FieldSpec, coerce, field_specs, trainer_fields
from edge_trl.run_spec import RunSpec, run_keys

# Extra spellings kept from earlier versions of the CLI.
ALIASES: dict[str, tuple[str, str]] = {"hub_private_repo": ("--hub-private", "--hub-public")}
COMMAND_OPTIONS = ("config", "overrides", "dry_run")
SECTIONS = (
    ("RunSpec", "Run: what to train, how to launch it"),
    ("EdgeGRPOConfig", "edge-trl (EdgeGRPOConfig)"),
    ("GRPOConfig", "GRPO (TRL GRPOConfig)"),
)
OTHER_SECTION = "Trainer (transformers TrainingArguments)"
EPILOG = (
    "Settings, lowest to highest priority: CLI defaults, the --method preset, the --config recipe, --set key=value, "
    "then the flags given. Flags take the values --set takes; --no-FLAG turns a boolean off."
)


class FieldType(click.ParamType):
    """A flag's value, converted and checked the way recipe and --set values are (`config_schema.coerce`)."""

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec
        self.name = spec.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return coerce(self.spec, value, from_text=True)
        except ValueError as error:
            self.fail(str(error), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        if self.spec.choices and len(self.spec.choices) <= 6:
            return "[" + "|".join(self.spec.choices) + "]"
        return {"int": "INT", "float": "FLOAT", "str": "TEXT", "yaml": "VALUE"}.get(self.spec.kind, "VALUE")


def _field_option(spec: FieldSpec) -> click.Option:
    dashed, underscored = spec.flag, "--" + spec.name
    help_text = spec.help
    if spec.choices and len(spec.choices) > 6:
        help_text += f" Choices: {', '.join(spec.choices)}."
    if spec.kind == "bool":
        names = [f"{dashed}/--no-{dashed[2:]}"]
        if underscored != dashed:
            names.append(f"{underscored}/--no_{spec.name}")
        if spec.name in ALIASES:
            names.append("/".join(ALIASES[spec.name]))
        return click.Option([*names, spec.name], default=None, help=help_text, is_flag=True)
    names = [dashed, *([underscored] if underscored != dashed else [])]
    return click.Option([*names, spec.name], type=FieldType(spec), default=None, help=help_text)


def option_fields() -> list[FieldSpec]:
    """The fields that become flags: the run keys, then the trainer fields (a run key wins a shared name)."""
    keys = run_keys()
    run = [spec for spec in field_specs(RunSpec) if spec.name in keys]
    trainer = [spec for name, spec in trainer_fields().items() if name not in keys]
    return [*run, *trainer]


def _command_options() -> list[click.Option]:
    return [
        click.Option(
            ["--config", "config"],
            type=click.Path(path_type=Path),
            help="A recipe YAML: run keys and EdgeGRPOConfig fields (edge-trl configs lists the shipped ones).",
        ),
        click.Option(
            ["--set", "overrides"],
            multiple=True,
            metavar="KEY=VALUE",
            help="Set any setting; the value is read as YAML. Repeatable.",
        ),
        click.Option(["--dry-run", "dry_run"], is_flag=True, help="Print the command and the resolved run, then exit."),
    ]


class TrainCommand(click.Command):
    """A click command whose field options are built on first use, so `edge-trl --help` never reads the schema."""

    def __init__(self) -> None:
        super().__init__(
            "train",
            callback=run_train,
            params=_command_options(),
            help="Train with EdgeGRPOTrainer through `accelerate launch` (DeepSpeed/FSDP configs, LoRA, Hub push).",
            short_help="Train with EdgeGRPOTrainer through `accelerate launch`.",
            epilog=EPILOG,
        )
        self.fields: dict[str, FieldSpec] | None = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self.fields is None:
            specs = option_fields()
            clash = {spec.name for spec in specs} & set(COMMAND_OPTIONS)
            if clash:
                raise RuntimeError(f"config fields {sorted(clash)} clash with options of `edge-trl train`")
            self.fields = {spec.name: spec for spec in specs}
            self.params += [_field_option(spec) for spec in specs]
        return super().get_params(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options in sections, one line per flag (the underscore spelling is left out of the help)."""
        params = self.get_params(ctx)
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in params:
            spec = self.fields.get(param.name) if isinstance(param, click.Option) else None
            if spec is None:
                record = param.get_help_record(ctx)
                if record:
                    sections["Options"].append(record)
                continue
            owner = "RunSpec" if spec.owner == "RunSpec" else spec.owner
            title = dict(SECTIONS).get(owner, OTHER_SECTION)
            sections.setdefault(title, []).append(self._help_record(spec, param, ctx))
        order = ["Options", *(title for _, title in SECTIONS), OTHER_SECTION]
        for title in order:
            if sections.get(title):
                with formatter.section(title):
                    formatter.write_dl(sections[title], col_max=34)

    @staticmethod
    def _help_record(spec: FieldSpec, param: click.Parameter, ctx: click.Context) -> tuple[str, str]:
        # --[no-]flag: short enough for 80 columns even with the longest TRL names
        name = f"--[no-]{spec.flag[2:]}" if spec.kind == "bool" else f"{spec.flag} {param.type.get_metavar(param, ctx)}"
        default = _shown_default(spec)
        return name, param.help + (f" [default: {default}]" if default is not None else "")


def _shown_default(spec: FieldSpec) -> Any:
    from edge_trl.presets import TRAINING_DEFAULTS

    if spec.name in TRAINING_DEFAULTS:
        return TRAINING_DEFAULTS[spec.name]
    return spec.default if spec.default not in (None, "", [], {}) else None


def run_train(**values: Any) -> None:
    from edge_trl.launch import LaunchError, TrainRequest, launch, resolve

    ctx = click.get_current_context()
    fields = ctx.command.fields or {}
    flags = {
        name: value
        for name, value in values.items()
        if name in fields and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    request = TrainRequest(config=values["config"], overrides=list(values["overrides"]), flags=flags,
                           dry_run=values["dry_run"])  # fmt: skip
    try:
        prepared = resolve(request)
    except LaunchError as error:
        click.secho(f"error: {error}", err=True, fg="red")
        raise click.exceptions.Exit(2) from None
    for warning in prepared.warnings:
        click.secho(f"warning: {warning}", err=True, fg="yellow")
    if request.dry_run:
        click.echo(prepared.command_line())
        click.echo(prepared.run.to_yaml())
        return
    click.echo(f"+ {prepared.command_line()}", err=True)
    code = launch(prepared)
    if code != 0:
        click.secho(f"error: training failed (exit code {code}); see the messages above.", err=True, fg="red")
        raise click.exceptions.Exit(code)
