"""The fields of `EdgeGRPOConfig` (and so of TRL's `GRPOConfig`) as plain data, cached on disk.

`edge-trl train` makes one flag per field and type-checks recipe/`--set` values against them, but importing the
config imports trl, transformers and torch (seconds). So the field list (name, kind, default, help, choices) is built
once from the live dataclass and stored as JSON in the user cache directory, keyed by the trl and transformers
versions and the source of the modules that define the fields: when any of them changes the cache is rebuilt, so a new
config field becomes a flag with no CLI edit.

Cache directory: ``$EDGE_TRL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edge-trl``, else ``~/.cache/edge-trl``. An
unreadable or corrupt cache is rebuilt; a read-only cache directory only costs the rebuild on every start.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import inspect
import json
import os
import tempfile
import types
import typing
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

CACHE_ENV = "EDGE_TRL_CACHE_DIR"
CACHE_FILE = "config-schema.json"
# Files whose content defines the fields: config.py, the method modules (their fields, the cov_mode choices), this
# module; and the files of the --plugin modules loaded in this process (plugin_files).
_PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_FILES = (
    _PACKAGE_DIR / "config.py",
    *sorted((_PACKAGE_DIR / "methods").glob("*.py")),
    _PACKAGE_DIR / "rewards.py",
    Path(__file__).resolve(),
)

KINDS = ("bool", "int", "float", "str", "yaml")  # yaml: lists, dicts, unions; the value is parsed as YAML


@dataclass(frozen=True)
class ConfigField:
    """One config field as the CLI sees it."""

    name: str
    kind: str  # one of KINDS
    optional: bool  # None is a valid value
    default: Any  # JSON-able; None when the dataclass default is not
    help: str
    choices: tuple[str, ...] | None = None
    owner: str = ""  # the class that declares the field (EdgeGRPOConfig, GRPOConfig, TrainingArguments, ...)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def config_fields(cls: type) -> list[ConfigField]:
    """The init fields of dataclass ``cls`` as `ConfigField`s, from their type hints and ``metadata``."""
    hints = typing.get_type_hints(cls)
    return [_field_spec(f, hints.get(f.name, f.type), _owner(cls, f.name)) for f in dataclasses.fields(cls) if f.init]


def _owner(cls: type, name: str) -> str:
    """The most derived class of ``cls``'s MRO that declares field ``name``."""
    # A method's field mixin names the section it belongs to (``_config_owner``: EdgeGRPOConfig).
    return next(
        (k.__dict__.get("_config_owner", k.__name__) for k in cls.__mro__ if name in inspect.get_annotations(k)),
        cls.__name__,
    )


def _field_spec(field: dataclasses.Field, hint: Any, owner: str) -> ConfigField:
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    plain = tuple(m for m in members if m not in enums)
    kind = "yaml"
    if len(plain) == 1 and plain[0] in (bool, int, float, str):
        kind = plain[0].__name__
    choices = field.metadata.get("choices")
    if choices is None and callable(field.metadata.get("choices_from")):  # live, e.g. the registered cov_modes
        choices = field.metadata["choices_from"]()
    if choices is None and enums and kind == "str":
        choices = [member.value for member in enums[0]]
    return ConfigField(
        name=field.name,
        kind=kind,
        optional=optional,
        default=_json_default(field),
        help=" ".join(str(_help(field)).replace("%%", "%").split()),
        choices=tuple(str(c) for c in choices) if choices is not None else None,
        owner=owner,
    )


def _help(field: dataclasses.Field) -> str:
    """The field's help; ``help_from`` (a callable) generates it live, e.g. from a registry."""
    generate = field.metadata.get("help_from")
    return generate() if callable(generate) else field.metadata.get("help", "")


def _json_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        value = field.default
    else:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


# -- the cache ---------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-trl"


def cache_key() -> str:
    """Changes whenever the fields can: trl or transformers upgraded, or a file that defines fields edited."""
    parts = []
    for package in ("trl", "transformers"):
        try:
            parts.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} missing")
    for path in (*SOURCE_FILES, *plugin_files()):
        parts.append(f"{path}:{hashlib.sha256(path.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def plugin_files() -> list[Path]:
    """The files of the ``--plugin`` modules this process loaded (their fields and modes are flags too)."""
    from edge_trl.methods import loaded_plugin_files

    return loaded_plugin_files()


def build_trainer_fields() -> list[ConfigField]:
    """The live fields of `EdgeGRPOConfig` and of the methods registered from plugins (imports trl: seconds)."""
    from edge_trl.config import EdgeGRPOConfig
    from edge_trl.methods import method_fields

    hints: dict[str, Any] = {}
    plugin = []
    for field in method_fields():
        owner = next(m for m in _plugin_field_owners() if field.name in {f.name for f in dataclasses.fields(m)})
        hints = typing.get_type_hints(owner)
        plugin.append(_field_spec(field, hints.get(field.name, field.type), "EdgeGRPOConfig"))
    return [*config_fields(EdgeGRPOConfig), *plugin]


def _plugin_field_owners() -> list[type]:
    from edge_trl.methods import METHODS

    return [m.fields for m in METHODS.values() if m.fields is not None and not m.builtin]


def trainer_fields() -> dict[str, ConfigField]:
    """The fields of `EdgeGRPOConfig` by name, from the cache when it is fresh, else built and cached."""
    key = cache_key()
    path = cache_dir() / CACHE_FILE
    try:
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            return {f["name"]: _from_json(f) for f in stored["fields"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable, corrupt or from another layout: rebuild
    config_field_list = build_trainer_fields()
    _write_atomically(path, {"key": key, "fields": [dataclasses.asdict(s) for s in config_field_list]})
    return {s.name: s for s in config_field_list}


def _from_json(data: dict[str, Any]) -> ConfigField:
    choices = data.get("choices")
    return ConfigField(**{**data, "choices": tuple(choices) if choices is not None else None})


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file. Failures are ignored
    (an unwritable cache only costs a rebuild next time)."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


# -- values ------------------------------------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _check_mapping(name: str, value: Any) -> Any:
    """A structured value, refused when YAML read a mistyped ``{key:value}`` (no space after the colon) as the key
    ``'key:value'`` with no value: that is never what was meant."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None and isinstance(key, str) and ":" in key:
                left, right = key.split(":", 1)
                raise ValueError(
                    f"{name}: cannot read {{{key}}}: a mapping needs a space after each colon, e.g. "
                    f"{name}='{{{left}: {right}}}' (YAML flow mapping)."
                )
            _check_mapping(name, item)
    elif isinstance(value, list):
        for item in value:
            _check_mapping(name, item)
    return value


def coerce(config_field: ConfigField, value: Any, from_text: bool = False) -> Any:
    """``value`` converted to the field's kind and checked against its choices; raises ``ValueError`` naming the
    field. ``from_text``: the value is a command-line string (YAML and ``--set`` values arrive already parsed)."""
    if value is None:
        return None
    if from_text and config_field.kind == "yaml":
        try:
            return _check_mapping(config_field.name, yaml.safe_load(value))
        except yaml.YAMLError as error:
            raise ValueError(f"{config_field.name}={value!r}: cannot parse the value ({error}).") from error
    if config_field.kind == "yaml":
        return _check_mapping(config_field.name, value)
    is_null = isinstance(value, str) and value.strip().lower() in ("none", "null")
    if is_null and config_field.optional and not (config_field.choices and value in config_field.choices):
        return None
    wrong_type = ValueError(f"{config_field.name}={value!r} has the wrong type; expected a {config_field.kind}.")
    if config_field.kind == "bool":
        if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise wrong_type
    elif config_field.kind in ("int", "float"):
        if isinstance(value, bool):
            raise wrong_type
        if isinstance(value, str):  # YAML reads 1e-6 as text
            try:
                value = (
                    float(value)
                    if config_field.kind == "float" or not value.strip().lstrip("-").isdigit()
                    else int(value)
                )
            except ValueError:
                raise wrong_type from None
        if not isinstance(value, (int, float)):
            raise wrong_type
        if config_field.kind == "int":
            if not float(value).is_integer():
                raise wrong_type
            value = int(value)
        else:
            value = float(value)
    elif config_field.kind == "str":
        if isinstance(value, (list, dict)):
            raise wrong_type
        value = str(value)
    if config_field.choices and value not in config_field.choices:
        lowered = str(value).strip().lower()  # 'KL-Cov' -> 'kl_cov', 'every-save' -> 'every_save'
        spellings = [
            s for s in (lowered, lowered.replace("-", "_"), lowered.replace("_", "-")) if s in config_field.choices
        ]
        if not spellings:
            close = difflib.get_close_matches(lowered, config_field.choices, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{config_field.name}={value!r} is not one of: {', '.join(config_field.choices)}.{hint}")
        value = spellings[0]
    return value
