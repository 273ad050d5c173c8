"""EdgeGRPOConfig: TRL's GRPOConfig plus the knobs of EDGE-GRPO (EDA) and Clip-Cov / KL-Cov."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import GRPOConfig

from edge_trl.core_algos import COV_MODES
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
class EdgeGRPOConfig(GRPOConfig):
    r"""Configuration for [`EdgeGRPOTrainer`]: every [`trl.GRPOConfig`] field, plus:

    Entropy-Driven Advantage (EDGE-GRPO, arXiv 2507.21848):
        eda, eda_scope, eda_entropy_floor, eda_min_scale, eda_max_scale
    Covariance-based entropy control (Cui et al., arXiv 2505.22617):
        cov_mode, clip_cov_ratio, clip_cov_lb, clip_cov_ub, kl_cov_ratio, kl_cov_coef, kl_cov_clip
    Guided Error Correction (EDGE-GRPO) and the forced-reflection baseline:
        gec, force_reflection, gec_reflection_cue, gec_answer_template, gec_{reflect,answer,solution}_prob,
        gec_max_new_tokens, gec_cue_in_budget, gec_answer_column, gec_solution_column, gec_reward_name, gec_correct_threshold,
        gec_mask_injected, gec_mask_wrong_prefix (experimental)
    DAPO dynamic sampling (Yu et al., arXiv 2503.14476, section 3.2):
        dynamic_sampling, dynamic_sampling_metric, max_num_gen_batches
    Covariance selection scope:
        cov_scope
    Faults in reward functions:
        reward_timeout

    With every feature off (the defaults) the trainer is numerically identical to `trl.GRPOTrainer`.
    """

    eda: bool = field(
        default=False,
        metadata={
            "help": "Entropy-Driven Advantage (EDGE-GRPO): multiply each response's advantage by mean(H) / H_i, where "
            "H_i is the response's mean token entropy, so confident answers get larger updates."
        },
    )
    eda_scope: str = field(
        default="group",
        metadata={
            "help": "Set over which mean(H) is taken. 'group' (the paper): the num_generations responses of the same "
            "prompt, using entropies measured at rollout time (reused from TRL's old-log-prob forward when TRL makes "
            "one, otherwise one extra no-grad forward). 'batch' (what the official code does): the training "
            "micro-batch gathered across processes, from the training forward pass (free).",
            "choices": list(EDA_SCOPES),
        },
    )
    eda_entropy_floor: float = field(
        default=1e-6,
        metadata={"help": "Entropies are clamped to at least this value before the ratio, so it never divides by 0."},
    )
    eda_min_scale: float | None = field(
        default=None,
        metadata={"help": "Lower clamp of the EDA factor mean(H)/H_i. None: no lower clamp (the factor is > 0)."},
    )
    eda_max_scale: float | None = field(
        default=10.0,
        metadata={
            "help": "Upper clamp of the EDA factor mean(H)/H_i. Default 10: a response at most 10x more confident "
            "than its group gets at most a 10x advantage, which keeps near-deterministic responses from dominating "
            "the update. None reproduces the paper's unclamped formula."
        },
    )
    cov_mode: str = field(
        default="none",
        metadata={
            "help": "Covariance-based entropy control (Cui et al.). 'none', 'clip_cov' (stop the gradient of a random "
            "share of high-covariance tokens) or 'kl_cov' (the authors' unclipped -r*A loss plus a KL penalty on the "
            "top-k covariance tokens). The hyphenated spellings 'clip-cov' and 'kl-cov' are accepted; a mode "
            "registered with edge_trl.core_algos.register_cov_mode is accepted by its name.",
            "choices": ["none", *COV_MODES],
        },
    )
    clip_cov_ratio: float = field(
        default=2e-4,
        metadata={"help": "Clip-Cov: fraction of valid tokens whose gradient is stopped (k = max(1, ratio * n))."},
    )
    clip_cov_lb: float = field(
        default=1.0, metadata={"help": "Clip-Cov: only tokens with covariance strictly above this are candidates."}
    )
    clip_cov_ub: float = field(
        default=5.0, metadata={"help": "Clip-Cov: only tokens with covariance strictly below this are candidates."}
    )
    kl_cov_ratio: float = field(
        default=2e-3,
        metadata={
            "help": "KL-Cov: fraction of valid tokens (top by covariance) that get the KL penalty. 2e-3 = 0.2%, the "
            "paper's 7B setting (the official code's k_percent=0.2 means the same)."
        },
    )
    kl_cov_coef: float = field(
        default=1.0, metadata={"help": "KL-Cov: coefficient of |log pi - log pi_old| on the selected tokens."}
    )
    cov_scope: str = field(
        default="micro_batch",
        metadata={
            "help": "Over which tokens Clip-Cov / KL-Cov centre the covariance and count k = max(1, int(ratio * "
            "n_valid)). 'micro_batch' (default, the authors' code): each micro-batch of each process on its own, so the "
            "tokens chosen change with the micro-batch size and the number of processes. 'step': once per optimizer "
            "step over all its micro-batches and processes (one extra no-grad forward per step), so the choice and "
            "the update do not depend on how the step is split (the idea of verl PR #7830).",
            "choices": list(COV_SCOPES),
        },
    )
    kl_cov_clip: bool = field(
        default=False,
        metadata={
            "help": "KL-Cov: keep PPO's clipped surrogate -min(r*A, clip(r)*A) and add the penalty on top. Default "
            "False: the authors' loss, the unclipped -r*A on every token (compute_policy_loss_kl_cov in "
            "PRIME-RL/Entropy-Mechanism-of-RL and verl)."
        },
    )
    gec: bool = field(
        default=False,
        metadata={
            "help": "Guided Error Correction (EDGE-GRPO): correct every wrong response of a rollout before scoring it, "
            "by reflection (cue + fresh continuation), answer injection or the reference solution, so groups stop "
            "having identical rewards."
        },
    )
    force_reflection: bool = field(
        default=False,
        metadata={
            "help": "The forced-reflection baseline: correct every wrong response by reflection only (implies the "
            "GEC machinery; the branch probabilities are ignored). With gec=True as well, GEC wins, as in the "
            "official code: all three branches are drawn (a warning says so)."
        },
    )
    gec_reflection_cue: str = field(
        default=" Wait! Something is wrong here.",
        metadata={"help": "GEC: text appended to a wrong response before the model continues it (reflection)."},
    )
    gec_answer_template: str = field(
        default="\nWait! Something is wrong here. After verification, the correct answer is \\boxed{{answer}}.",
        metadata={"help": "GEC: text appended by answer injection; '{answer}' is replaced by the reference answer."},
    )
    gec_reflect_prob: float = field(default=0.5, metadata={"help": "GEC: probability of the reflection branch."})
    gec_answer_prob: float = field(default=0.25, metadata={"help": "GEC: probability of answer injection."})
    gec_solution_prob: float = field(
        default=0.25,
        metadata={
            "help": "GEC: probability of replacing the response by the reference solution (rows without a "
            "solution fall back to answer injection)."
        },
    )
    gec_max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "GEC: at most this many tokens are added by a reflection, the cue included, so a reflected "
            "response never exceeds max_completion_length + gec_max_new_tokens. Injected answers and reference "
            "solutions longer than that limit are cut there (they then end without EOS, like any truncated "
            "completion, and are counted in gec/truncated_count). See gec_cue_in_budget for the official budget."
        },
    )
    gec_cue_in_budget: bool = field(
        default=True,
        metadata={
            "help": "GEC: count the reflection cue inside gec_max_new_tokens and cut every corrected response at "
            "max_completion_length + gec_max_new_tokens, so lengths (and memory) stay bounded. False: the official "
            "code's budget, gec_max_new_tokens new tokens sampled after the cue and no cap on any corrected "
            "response (injected answers and reference solutions are kept whole, however long)."
        },
    )
    gec_answer_column: str = field(default="answer", metadata={"help": "GEC: dataset column of the reference answer."})
    gec_solution_column: str = field(
        default="solution", metadata={"help": "GEC: dataset column of the reference solution (optional)."}
    )
    gec_reward_name: str | None = field(
        default=None,
        metadata={
            "help": "GEC: name of the reward function that decides whether a response is correct (e.g. "
            "'accuracy_reward'). None: the weighted sum of all rewards."
        },
    )
    gec_correct_threshold: float | None = field(
        default=None,
        metadata={
            "help": "GEC: a response is correct when the deciding reward is >= this. None: 1.0 for a named reward; "
            "for the sum, the sum of the reward weights (every reward at its maximum of 1, as the official code's "
            "format 1 + accuracy 1)."
        },
    )
    gec_mask_injected: bool = field(
        default=False,
        metadata={
            "help": "GEC: exclude injected tokens (cue, injected answer, reference solution) from the loss through "
            "TRL's tool_mask. Default False: they are trained on, as in the paper."
        },
    )
    gec_mask_wrong_prefix: bool = field(
        default=False,
        metadata={
            "help": "GEC (experimental, not in the paper): exclude from the loss the policy's own wrong response that "
            "a corrected response keeps before the cue or the injected answer (reflection and answer branches), "
            "through TRL's tool_mask, so the corrected ending's advantage does not train the wrong prefix. "
            "Combines with gec_mask_injected. Default False: the prefix is trained on, as in the paper."
        },
    )

    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling (section 3.2; verl's algorithm.filter_groups): drop every group whose "
            "dynamic_sampling_metric is the same for all its responses, and generate from the next prompts until the "
            "kept groups fill the generation batch (the surplus is cut). With GEC, wrong responses are corrected "
            "first and only the groups still equal are dropped."
        },
    )
    dynamic_sampling_metric: str = field(
        default="accuracy_reward",
        metadata={
            "help": "Dynamic sampling: the name of the reward function whose values must differ within a group "
            "(default 'accuracy_reward', the authors' filter_groups_metric=acc), or 'reward' for the weighted sum "
            "of all rewards."
        },
    )
    max_num_gen_batches: int = field(
        default=10,
        metadata={
            "help": "Dynamic sampling: at most this many generation batches per rollout (verl's default 10); when "
            "they still do not fill the batch, training stops with an error. 0: unlimited."
        },
    )

    reward_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds a reward function may take on a batch, then on each completion alone; a completion it "
            "fails on (raises, hangs past this, returns NaN/inf) scores None and is counted in rewards/<name>/faults "
            "(edge_trl.faults)."
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
