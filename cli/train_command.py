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

from edge_trl.config_schema import ConfigField, coerce, config_fields, trainer_fields
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

    def __init__(self, config_field: ConfigField) -> None:
        self.config_field = config_field
        self.name = config_field.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return coerce(self.config_field, value, from_text=True)
        except ValueError as error:
            self.fail(str(error), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        if self.config_field.choices and len(self.config_field.choices) <= 6:
            return "[" + "|".join(self.config_field.choices) + "]"
        return {"int": "INT", "float": "FLOAT", "str": "TEXT", "yaml": "VALUE"}.get(self.config_field.kind, "VALUE")


def _field_option(config_field: ConfigField) -> click.Option:
    dashed, underscored = config_field.flag, "--" + config_field.name
    help_text = config_field.help
    if config_field.choices and len(config_field.choices) > 6:
        help_text += f" Choices: {', '.join(config_field.choices)}."
    if config_field.kind == "bool":
        names = [f"{dashed}/--no-{dashed[2:]}"]
        if underscored != dashed:
            names.append(f"{underscored}/--no_{config_field.name}")
        if config_field.name in ALIASES:
            names.append("/".join(ALIASES[config_field.name]))
        return click.Option([*names, config_field.name], default=None, help=help_text, is_flag=True)
    names = [dashed, *([underscored] if underscored != dashed else [])]
    return click.Option([*names, config_field.name], type=FieldType(config_field), default=None, help=help_text)


def option_fields() -> list[ConfigField]:
    """The fields that become flags: the run keys, then the trainer fields (a run key wins a shared name)."""
    keys = run_keys()
    run = [config_field for config_field in config_fields(RunSpec) if config_field.name in keys]
    trainer = [config_field for name, config_field in trainer_fields().items() if name not in keys]
    return [*run, *trainer]


def _plugin_arguments(args: list[str]) -> list[str]:
    """The values of every ``--plugin X`` / ``--plugin=X`` of a command line."""
    found = []
    for i, arg in enumerate(args):
        if arg == "--plugin" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


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
        self.fields: dict[str, ConfigField] | None = None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A --plugin may register methods whose fields are flags and cov_mode choices: import it before the flags are
        # built (it is imported again, as a run key, by every worker process).
        found = _plugin_arguments(args)
        if found:
            from edge_trl.run_spec import load_plugins

            load_plugins(found)
            if self.fields is not None:  # built before the plugin was known: rebuild with its fields
                self.params = _command_options()
                self.fields = None
        return super().parse_args(ctx, args)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self.fields is None:
            field_list = option_fields()
            clash = {config_field.name for config_field in field_list} & set(COMMAND_OPTIONS)
            if clash:
                raise RuntimeError(f"config fields {sorted(clash)} clash with options of `edge-trl train`")
            self.fields = {config_field.name: config_field for config_field in field_list}
            self.params += [_field_option(config_field) for config_field in field_list]
        return super().get_params(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options in sections, one line per flag (the underscore spelling is left out of the help)."""
        params = self.get_params(ctx)
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in params:
            config_field = self.fields.get(param.name) if isinstance(param, click.Option) else None
            if config_field is None:
                record = param.get_help_record(ctx)
                if record:
                    sections["Options"].append(record)
                continue
            title = dict(SECTIONS).get(config_field.owner, OTHER_SECTION)
            sections.setdefault(title, []).append(self._help_record(config_field, param, ctx))
        order = ["Options", *(title for _, title in SECTIONS), OTHER_SECTION]
        for title in order:
            if sections.get(title):
                with formatter.section(title):
                    formatter.write_dl(sections[title], col_max=34)

    @staticmethod
    def _help_record(config_field: ConfigField, param: click.Parameter, ctx: click.Context) -> tuple[str, str]:
        # --[no-]flag: short enough for 80 columns even with the longest TRL names
        name = (
            f"--[no-]{config_field.flag[2:]}"
            if config_field.kind == "bool"
            else f"{config_field.flag} {param.type.get_metavar(param, ctx)}"
        )
        default = _shown_default(config_field)
        return name, param.help + (f" [default: {default}]" if default is not None else "")


def _shown_default(config_field: ConfigField) -> Any:
    from edge_trl.presets import TRAINING_DEFAULTS

    if config_field.name in TRAINING_DEFAULTS:
        return TRAINING_DEFAULTS[config_field.name]
    return config_field.default if config_field.default not in (None, "", [], {}) else None


def run_train(**values: Any) -> None:
    from edge_trl.launch import LaunchError, TrainRequest, describe_exit, launch, resolve

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
    for note in prepared.notes:
        click.echo(f"note: {note}", err=True)
    if request.dry_run:
        click.echo(prepared.command_line())
        click.echo(prepared.run.to_yaml())
        return
    click.echo(f"+ {prepared.command_line()}", err=True)
    code, description = describe_exit(launch(prepared))
    if code != 0:
        click.secho(f"error: training failed ({description}); see the messages above.", err=True, fg="red")
        raise click.exceptions.Exit(code)


# The docs' flag reference is built from the same fields, with the defaults the command resolves: flag_reference.py.
