"""The forced-reflection baseline (EDGE-GRPO, arXiv 2507.21848): correct every wrong response by reflection only.

It runs GEC's machinery (``gec.py``) with the reflection branch alone; with ``gec=True`` as well, GEC wins, as in the
official code (all three branches are drawn; ``EdgeGRPOConfig`` warns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_trl.methods import Method, register_method


@dataclass
class ForceReflectionFields:
    _config_owner = "EdgeGRPOConfig"

    force_reflection: bool = field(
        default=False,
        metadata={
            "help": "The forced-reflection baseline: correct every wrong response by reflection only (implies the "
            "GEC machinery; the branch probabilities are ignored). With gec=True as well, GEC wins, as in the "
            "official code: all three branches are drawn (a warning says so)."
        },
    )


@register_method
class ForceReflection(Method):
    name = "force_reflection"
    fields = ForceReflectionFields
    builtin = True
    papers = ("edge-grpo",)
    presets: ClassVar[dict[str, dict[str, Any]]] = {"force-reflection": {"force_reflection": True}}

    def active(self, args: Any) -> bool:
        return bool(args.force_reflection and not args.gec)  # with gec=True as well, GEC's three branches win

    def label(self, args: Any) -> str:
        return "forced reflection"

    def tags(self, args: Any) -> list[str]:
        return ["gec"]

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {"force_reflection": True, "gec_max_new_tokens": args.gec_max_new_tokens}
