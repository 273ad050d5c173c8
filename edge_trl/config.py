"""EdgeGRPOConfig: TRL's GRPOConfig plus the knobs of EDGE-GRPO (EDA) and Clip-Cov / KL-Cov."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import GRPOConfig

from edge_trl.methods import method_fields
from edge_trl.methods.clip_cov import ClipCovFields
from edge_trl.methods.covariance import COV_MODES, CovarianceFields
from edge_trl.methods.dynamic_sampling import DynamicSamplingFields
from edge_trl.methods.eda import EDAFields
from edge_trl.methods.entropy_law import EntropyLawFields
from edge_trl.methods.force_reflection import ForceReflectionFields
from edge_trl.methods.gec import GECFields
from edge_trl.methods.kl_cov import KLCovFields
from edge_trl.validation import (  # noqa: F401  (EDA_SCOPES, COV_LOSS_TYPES: re-exported where they always were)
    COV_LOSS_TYPES,
    COV_SCOPES,
    EDA_SCOPES,
    kl_cov_is_noop,
    kl_cov_noop_message,
    validate_edge_fields,
)

logger = logging.getLogger(__name__)


@dataclass
class EdgeGRPOConfig(
    EDAFields,
    CovarianceFields,
    ClipCovFields,
    KLCovFields,
    GECFields,
    ForceReflectionFields,
    DynamicSamplingFields,
    EntropyLawFields,
    GRPOConfig,
):
    r"""Configuration for [`EdgeGRPOTrainer`][edge_trl.EdgeGRPOTrainer]: every field of TRL's
    [`GRPOConfig`](https://huggingface.co/docs/trl/en/grpo_trainer#trl.GRPOConfig) (and so of transformers'
    [`TrainingArguments`](https://huggingface.co/docs/transformers/en/main_classes/trainer#transformers.TrainingArguments)),
    plus the fields each built-in method declares in its module (`edge_trl/methods/`), mixed in here:

    - Entropy-Driven Advantage (EDGE-GRPO, arXiv 2507.21848): `eda`, `eda_scope`, `eda_entropy_floor`,
      `eda_min_scale`, `eda_max_scale`.
    - Covariance-based entropy control (Cui et al., arXiv 2505.22617): `cov_mode`, `clip_cov_ratio`, `clip_cov_lb`,
      `clip_cov_ub`, `kl_cov_ratio`, `kl_cov_coef`, `kl_cov_clip`, and where the tokens are chosen, `cov_scope`.
    - Guided Error Correction (EDGE-GRPO) and the forced-reflection baseline: `gec`, `force_reflection`,
      `gec_reflection_cue`, `gec_answer_template`, `gec_reflect_prob`, `gec_answer_prob`, `gec_solution_prob`,
      `gec_max_new_tokens`, `gec_cue_in_budget`, `gec_answer_column`, `gec_solution_column`, `gec_reward_name`,
      `gec_correct_threshold`, `gec_mask_injected`, `gec_mask_wrong_prefix` (experimental).
    - DAPO dynamic sampling (Yu et al., arXiv 2503.14476, section 3.2): `dynamic_sampling`,
      `dynamic_sampling_metric`, `max_num_gen_batches`.
    - Rewards: `reward_timeout`, `reward_kwargs`.
    - Methods registered from a user's module (`--plugin`): `method_kwargs`.
    - The entropy-performance law $R = -a \exp(H) + b$ (Cui et al., arXiv 2505.22617), fitted while training:
      `entropy_law`, `entropy_law_metric`, `entropy_law_window`, `entropy_law_min_r2`, `entropy_law_metric_max`.

    With every feature off (the defaults) the trainer is numerically identical to TRL's `GRPOTrainer`.
    """

    reward_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds a reward function may take on a batch, then on each completion alone; a completion it "
            "fails on (raises, hangs past this, returns NaN/inf) scores None and is counted in rewards/<name>/faults "
            "(edge_trl.faults)."
        },
    )
    reward_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments bound once to reward functions, by reward name: e.g. {length_penalty: "
            "{max_length: 512}}. A name is a registered reward's (--reward), or a function's __name__."
        },
    )
    method_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "The settings of methods registered from your own module (edge_trl.methods.register_method, "
            "--plugin), by field name: e.g. {entropy_stop_ratio: 0.2}. On the command line each such field is also "
            "a flag of its own."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_edge()
        if self.cov_mode == "kl_cov" and self.kl_cov_is_noop:
            logger.warning(
                kl_cov_noop_message(self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations)
            )
        if self.gec and self.force_reflection:
            logger.warning(
                "gec=True with force_reflection=True: GEC takes precedence, as in the official EDGE-GRPO code "
                "(train_grpo.sh sets both), so wrong responses are corrected by all three branches (reflection, "
                "answer, solution), not by reflection only. Set gec=False for the forced-reflection baseline."
            )

    def _validate_edge(self) -> None:
        """The checks of the edge-trl fields (in `edge_trl.validation`, which the CLI runs without importing trl)."""
        validate_edge_fields(self, cov_modes=tuple(COV_MODES))
        if self.reward_kwargs is not None and not (
            isinstance(self.reward_kwargs, dict) and all(isinstance(v, dict) for v in self.reward_kwargs.values())
        ):
            raise ValueError(
                f"reward_kwargs={self.reward_kwargs!r} must map reward names to keyword arguments, e.g. "
                "{'length_penalty': {'max_length': 512}}."
            )
        known = {f.name: f for f in method_fields()}
        unknown = sorted(set(self.method_kwargs or {}) - set(known))
        if unknown:
            raise ValueError(
                f"method_kwargs has {unknown}, which no registered method declares (their fields: "
                f"{sorted(known) or 'none'}): import or --plugin the module that registers the method, or fix the name."
            )

    @property
    def gec_correction_active(self) -> bool:
        """True when wrong responses are corrected (GEC or the forced-reflection baseline)."""
        return self.gec or self.force_reflection

    @property
    def reflection_only(self) -> bool:
        """True for the forced-reflection baseline alone: with gec=True as well, GEC's three branches win."""
        return self.force_reflection and not self.gec

    @property
    def kl_cov_is_noop(self) -> bool:
        """True when the policy never moves between rollout and loss, so |log pi - log pi_old| is identically 0.

        That is TRL's own test for skipping old log-probs: every optimizer step starts on fresh rollouts
        (gradient_accumulation_steps is a multiple of steps_per_generation * num_iterations). With vLLM, TRL
        recomputes log pi_old with the training model itself, so the difference is 0 there too.
        """
        return kl_cov_is_noop(self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations)
