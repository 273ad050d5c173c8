"""Methods as plugins: one module per method, assembled by a registry.

A method is a [`Method`][edge_trl.methods.Method] subclass registered with [`register_method`][edge_trl.methods.register_method]. Its module holds everything about it:

* ``fields``: a dataclass of its config fields (help, choices in ``metadata``), mixed into ``EdgeGRPOConfig`` for
  the built-in methods; a user's method declares its own and they become flags, recipe keys and ``--set`` keys;
* ``presets``: its ``--method`` presets (name -> ``EdgeGRPOConfig`` values) and ``label``: its name on a model card;
* ``papers`` / ``card_settings``: the papers its model card cites (keys of ``edge_trl.model_card.PAPERS`` or
  ``Paper`` objects of its own) and the settings it shows;
* its hooks at the trainer's seams ([`Method`][edge_trl.methods.Method] lists them); the math lives in ``edge_trl.core_algos``.

``EdgeGRPOTrainer`` calls the hooks of every registered method, in registration order, and holds no method's code.
A method in a user's file: ``edge-trl train --plugin my_method.py --method my-method`` imports the file (in every
worker process too), or from Python ``import my_method`` before building the config.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "METHODS",
    "Method",
    "active_methods",
    "describe",
    "load_plugin",
    "loaded_plugin_files",
    "method_fields",
    "method_params",
    "method_presets",
    "register_method",
]


class Method:
    """A training method: its fields, preset, card entry and the hooks it needs (every hook defaults to a no-op).

    Hooks receive the trainer (an ``EdgeGRPOTrainer``); per-run state belongs on the trainer, not on the method (one
    instance serves every trainer). In call order:

    * ``setup(trainer, train_dataset)``: after TRL's construction (checks that need the trainer);
    * ``rollout(trainer)``: return a whole rollout in TRL's layout to replace TRL's generate-and-score (dynamic
      sampling), else None;
    * ``start_rollout(trainer, rollout)``: before TRL generates and scores one generation batch;
    * ``after_generate(trainer, rollout, prompts, result)``: TRL's ``_generate`` result, before scoring (GEC);
    * ``after_scoring(trainer, rollout, output)``: TRL's scored generation batch (advantages computed);
    * ``after_rollout(trainer, output)``: the rollout about to be buffered by TRL;
    * ``prepare_inputs(trainer)``: at each training micro-step, before its loss;
    * ``loss_active(trainer, inputs)``: whether ``in_loss`` acts on this micro-batch (else TRL's loss runs alone);
    * ``loss_advantages(trainer, inputs, entropies, mask)``: the micro-batch's advantages as this method changes
      them from the training forward's entropies, or None (used by ``in_loss`` and by covariance selections);
    * ``in_loss(trainer, loss, logps, entropies)``: right after the training forward inside TRL's loss; returns the
      log-probs TRL's surrogate uses (``loss`` is the trainer's ``_LossState``: inputs, penalty, selected...);
    * ``resume_counters(trainer)`` / ``load_counters(trainer, counters, checkpoint)``: state saved with checkpoints.
    """

    name: ClassVar[str] = ""
    fields: ClassVar[type | None] = None
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    papers: ClassVar[tuple[str, ...]] = ()
    # True: the fields are mixed into EdgeGRPOConfig (built-in methods); False: they live in its method_kwargs.
    builtin: ClassVar[bool] = False

    def active(self, args: Any) -> bool:
        """Whether ``args`` turns the method on."""
        return False

    def label(self, args: Any) -> str | None:
        """Its name on a model card when active (e.g. 'KL-Cov'), or None."""
        return None

    def tags(self, args: Any) -> list[str]:
        return []

    def card_settings(self, args: Any) -> dict[str, Any]:
        """The settings its model card shows when active: by default every field of the method."""
        params = self.params(args)
        return {} if params is None else dataclasses.asdict(params)

    def validate(self, config: Any) -> None:
        """Checks of its fields (raise ValueError naming the field and the fix). ``config`` is an ``EdgeGRPOConfig``,
        or the resolved settings of ``edge-trl train`` (checked before any process starts); ``self.params(config)``
        reads this method's fields from either."""

    def params(self, args: Any) -> Any:
        """This method's fields with the values of ``args`` (see `method_params`)."""
        return method_params(args, self)

    def on_register(self) -> None:
        """Called once registered (e.g. a covariance mode adds itself to ``COV_MODES``)."""

    # -- trainer seams -------------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, train_dataset: Any) -> None: ...
    def rollout(self, trainer: Any) -> dict[str, Any] | None:
        return None

    def start_rollout(self, trainer: Any, rollout: Any) -> None: ...
    def after_generate(self, trainer: Any, rollout: Any, prompts: list, result: tuple) -> tuple:
        return result

    def after_scoring(self, trainer: Any, rollout: Any, output: dict[str, Any]) -> dict[str, Any]:
        return output

    def after_rollout(self, trainer: Any, output: dict[str, Any]) -> None: ...
    def prepare_inputs(self, trainer: Any) -> None: ...
    def loss_active(self, trainer: Any, inputs: dict[str, Any]) -> bool:
        return False

    def needs_loss_entropies(self, trainer: Any, inputs: dict[str, Any]) -> bool:
        """Whether ``loss_advantages`` needs the token entropies of the training forward."""
        return False

    def loss_advantages(self, trainer: Any, inputs: dict[str, Any], entropies: Any, mask: Any) -> Any:
        return None

    def in_loss(self, trainer: Any, loss: Any, logps: Any, entropies: Any) -> Any:
        return logps

    def resume_counters(self, trainer: Any) -> dict[str, int]:
        return {}

    def load_counters(self, trainer: Any, counters: dict[str, int], checkpoint: str) -> None: ...


METHODS: dict[str, Method] = {}
"""The registered methods by name, in registration (and so hook) order."""
_PLUGIN_FILES: list[Path] = []


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls()`` under ``cls.name`` (a later registration of the same name replaces it)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered as a method.")
    if cls.fields is not None and not dataclasses.is_dataclass(cls.fields):
        raise TypeError(f"{cls.__name__}.fields must be a dataclass of the method's config fields.")
    method = cls()
    METHODS[cls.name] = method
    method.on_register()
    return cls


def active_methods(args: Any) -> list[Method]:
    return [method for method in METHODS.values() if method.active(args)]


def method_presets() -> dict[str, dict[str, Any]]:
    """Every ``--method`` preset by name: ``grpo`` (nothing on), then each method's, in registration order."""
    presets: dict[str, dict[str, Any]] = {"grpo": {}}
    for method in METHODS.values():
        presets.update(method.presets)
    return presets


def method_fields(include_builtin: bool = False) -> list[dataclasses.Field]:
    """The config fields the registered methods declare (by default those of user methods, outside EdgeGRPOConfig)."""
    fields: list[dataclasses.Field] = []
    for method in METHODS.values():
        if method.fields is not None and (include_builtin or not method.builtin):
            fields.extend(dataclasses.fields(method.fields))
    return fields


def method_params(args: Any, method: Method) -> Any:
    """An instance of ``method.fields`` with the values of ``args``: a config attribute (a built-in field, or a
    subclass that declares it), else ``args.method_kwargs[name]``, else the field's default."""
    if method.fields is None:
        return None
    extra = getattr(args, "method_kwargs", None) or {}
    values = {}
    for field in dataclasses.fields(method.fields):
        if hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
        elif field.name in extra:
            values[field.name] = extra[field.name]
    return method.fields(**values)


def describe(args: Any) -> str:
    """A short label of what a config turns on, e.g. 'EDGE-GRPO (EDA + GEC) + KL-Cov'; 'GRPO' for none."""
    labels = [label for method in METHODS.values() if method.active(args) and (label := method.label(args))]
    return " + ".join(dict.fromkeys(labels)) or "GRPO"


def load_plugin(spec: str) -> None:
    """Import a user's module that registers methods or rewards: a file (``path/to/my_method.py``) or a module name
    (``my_pkg.my_method``). A file is imported once, under a name derived from its resolved path."""
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ValueError(f"--plugin {spec}: no such file. Give a Python file or an importable module name.")
        resolved = path.resolve()
        name = "edge_trl_plugin_" + "".join(c if c.isalnum() else "_" for c in str(resolved))
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, resolved)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _PLUGIN_FILES.append(resolved)
        return
    try:
        module = importlib.import_module(spec)
    except ImportError as error:
        raise ValueError(
            f"--plugin {spec}: cannot import it ({error}). Give a Python file or a module name."
        ) from error
    if getattr(module, "__file__", None):
        _PLUGIN_FILES.append(Path(module.__file__).resolve())


def loaded_plugin_files() -> list[Path]:
    """The files of the plugins [`load_plugin`][edge_trl.methods.load_plugin] imported in this process."""
    return list(dict.fromkeys(_PLUGIN_FILES))


def _register_builtin() -> None:
    # Registration order is hook order: EDA, GEC (and forced reflection), dynamic sampling, covariance modes, and the
    # entropy law (a diagnostic).
    for module in (
        "eda",
        "gec",
        "force_reflection",
        "dynamic_sampling",
        "covariance",
        "clip_cov",
        "kl_cov",
        "entropy_law",
    ):
        importlib.import_module(f"edge_trl.methods.{module}")


_register_builtin()
