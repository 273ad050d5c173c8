"""Guided Error Correction (EDGE-GRPO, arXiv 2507.21848): correct every wrong response of a rollout before scoring.

After TRL's rollout (``after_generate``, at TRL's ``_generate``), GEC scores it with TRL's own
``_calculate_rewards``, then corrects the wrong responses in token space (`edge_trl.gec`: reflection, answer
injection, reference solution; one batched regeneration, through TRL's ``_generate_single_turn``, for the reflection
branch) before TRL scores them again and computes advantages; it re-logs TRL's length metrics and ``num_tokens`` for
the corrected completions. The forced-reflection baseline (``force_reflection.py``) runs the same machinery with the
reflection branch only.

Which responses are wrong is never guessed: a named correctness reward decides (``gec_reward_name``, else the one
reward the registry marks as a correctness reward, e.g. ``accuracy``), or the weighted sum of the rewards when every
one declares its maximum. Otherwise the trainer refuses at construction (`correctness_rule`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from edge_trl.methods import Method, register_method
from edge_trl.presets import EDGE_GRPO_SETTINGS

if TYPE_CHECKING:
    import torch

    from edge_trl import gec as gec_tokens

logger = logging.getLogger(__name__)


@dataclass
class GECFields:
    _config_owner = "EdgeGRPOConfig"

    gec: bool = field(
        default=False,
        metadata={
            "help": "Guided Error Correction (EDGE-GRPO): correct every wrong response of a rollout before scoring it, "
            "by reflection (cue + fresh continuation), answer injection or the reference solution, so groups stop "
            "having identical rewards."
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
            "'accuracy_reward'). None: the one reward registered as a correctness reward (edge_trl.rewards: "
            "'accuracy'), else the weighted sum of the rewards when every one declares its maximum; otherwise the "
            "trainer refuses to start."
        },
    )
    gec_correct_threshold: float | None = field(
        default=None,
        metadata={
            "help": "GEC: a response is correct when the deciding reward is >= this. None: the deciding reward's "
            "declared maximum (1.0 for a named reward that declares none); for the sum, the weighted sum of the "
            "maxima (format 1 + accuracy 1 = 2, as the official code)."
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
            "through TRL's tool_mask, so the corrected ending's advantage does not train the wrong prefix; it masks "
            "the prefix of every such response, whether or not its correction ends right. Combines with "
            "gec_mask_injected. Default False: the prefix is trained on, as in the paper."
        },
    )


@dataclass(frozen=True)
class CorrectnessRule:
    """How GEC tells a correct response: ``reward`` (a reward function's name) at or above ``threshold``, or with
    ``reward=None`` the weighted sum of all rewards at or above ``threshold``."""

    reward: str | None
    threshold: float


def correctness_rule(args: Any, names: list[str], specs: list[Any], weights: list[float]) -> CorrectnessRule:
    """The rule GEC decides by, from the reward functions' ``names``, their registry ``specs`` (None: no metadata)
    and ``weights``; raises ValueError naming the rewards and ``gec_reward_name`` when no rule is sound."""
    threshold = args.gec_correct_threshold
    if args.gec_reward_name is not None:
        if args.gec_reward_name not in names:
            raise ValueError(
                f"gec_reward_name={args.gec_reward_name!r} is not one of the reward functions {names}: name the "
                "one that tells a correct answer."
            )
        spec = specs[names.index(args.gec_reward_name)]
        maximum = spec.max_value if spec is not None and spec.max_value is not None else 1.0
        return CorrectnessRule(args.gec_reward_name, maximum if threshold is None else threshold)
    correctness = [i for i, spec in enumerate(specs) if spec is not None and spec.correctness]
    if len(correctness) == 1:
        i = correctness[0]
        maximum = specs[i].max_value if specs[i].max_value is not None else 1.0
        return CorrectnessRule(names[i], maximum if threshold is None else threshold)
    if not correctness and specs and all(spec is not None and spec.max_value is not None for spec in specs):
        total = sum(w * spec.max_value for w, spec in zip(weights, specs, strict=True))
        return CorrectnessRule(None, total if threshold is None else threshold)
    if correctness:
        problem = f"the rewards {[names[i] for i in correctness]} are all correctness rewards"
    else:
        undeclared = [n for n, spec in zip(names, specs, strict=True) if spec is None or spec.max_value is None]
        problem = (
            f"none of the rewards {names} is a correctness reward, and {undeclared} declare no maximum, so their "
            "weighted sum says nothing about correctness"
        )
    raise ValueError(
        f"gec/force_reflection must tell a correct response from a wrong one, but {problem}. Set gec_reward_name to "
        "the reward that reaches its maximum exactly when the answer is right (e.g. gec_reward_name='accuracy_reward' "
        "with --reward accuracy,...), or register your reward with edge_trl.rewards.register_reward(..., "
        "correctness=True, max_value=1.0)."
    )


def is_correct(trainer: Any, rewards_per_func: Any) -> Any:
    """Correct = the deciding reward reaches its threshold (NaN, an unscorable response, counts as wrong)."""
    rule: CorrectnessRule = trainer._gec_rule
    score, _ = trainer._score(rewards_per_func, rule.reward)
    return score >= rule.threshold - 1e-6


@register_method
class GEC(Method):
    """GEC, and the machinery of the forced-reflection baseline (``force_reflection.py`` declares its switch)."""

    name = "gec"
    fields = GECFields
    builtin = True
    papers = ("edge-grpo",)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "gec": {"gec": True},
        # The official script also sets force_reflection; GEC wins over it (the official precedence), so it is left
        # out.
        "edge": {"eda": True, "gec": True, **EDGE_GRPO_SETTINGS},
    }

    def active(self, args: Any) -> bool:
        return bool(args.gec or args.force_reflection)

    def label(self, args: Any) -> str | None:
        if not args.gec:
            return None  # the forced-reflection baseline labels itself
        return "EDGE-GRPO (EDA + GEC)" if args.eda else "GEC"

    def tags(self, args: Any) -> list[str]:
        return ["gec"]

    def card_settings(self, args: Any) -> dict[str, Any]:
        return {
            "gec": args.gec, "gec_reflect_prob": args.gec_reflect_prob, "gec_answer_prob": args.gec_answer_prob,
            "gec_solution_prob": args.gec_solution_prob, "gec_max_new_tokens": args.gec_max_new_tokens,
            "gec_cue_in_budget": args.gec_cue_in_budget,
        }  # fmt: skip

    def validate(self, config: Any) -> None:
        probs = {name: getattr(config, name) for name in ("gec_reflect_prob", "gec_answer_prob", "gec_solution_prob")}
        for name, value in probs.items():
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value} must be a probability in [0, 1].")
        if abs(sum(probs.values()) - 1.0) > 1e-6:
            raise ValueError(
                f"gec_reflect_prob + gec_answer_prob + gec_solution_prob = {sum(probs.values()):g} must be 1 "
                "(the paper: 0.5, 0.25, 0.25)."
            )
        if "{answer}" not in config.gec_answer_template:
            raise ValueError(
                f"gec_answer_template={config.gec_answer_template!r} has no '{{answer}}' placeholder: add one where the "
                "reference answer goes, e.g. '... the correct answer is \\boxed{{answer}}.'"
            )
        if config.gec_max_new_tokens < 1:
            raise ValueError(f"gec_max_new_tokens={config.gec_max_new_tokens} must be >= 1.")
        if config.gec_mask_wrong_prefix and not (config.gec or config.force_reflection):
            raise ValueError(
                "gec_mask_wrong_prefix=True masks the wrong prefix of corrected responses, but nothing is corrected: "
                "set gec=True (or force_reflection=True), or drop gec_mask_wrong_prefix."
            )
        if (
            (config.gec or config.force_reflection)
            and config.use_vllm
            and config.vllm_mode not in ("server", "colocate")
        ):
            raise ValueError(f"GEC supports vllm_mode 'server' and 'colocate', got vllm_mode={config.vllm_mode!r}.")

    def setup(self, trainer: Any, train_dataset: Any) -> None:
        args = trainer.args
        if trainer.tools or trainer.rollout_func is not None or trainer.environment_factories is not None:
            raise ValueError(
                "gec/force_reflection correct plain single-turn completions; they cannot be combined with tools, "
                "rollout_func or environment_factory. Set gec=False and force_reflection=False, or drop those."
            )
        columns = getattr(train_dataset, "column_names", None)
        if columns is not None and args.gec_answer_column not in columns:
            raise ValueError(
                f"gec needs the reference answer of every prompt, but the training dataset has no column "
                f"{args.gec_answer_column!r} (columns: {columns}). Rename your answer column to "
                f"{args.gec_answer_column!r} or set gec_answer_column to its name."
            )
        if columns is not None and args.gec_solution_column not in columns and not args.reflection_only:
            logger.warning(
                "The training dataset has no %r column: GEC's solution branch falls back to answer injection.",
                args.gec_solution_column,
            )
        trainer._gec_rule = correctness_rule(
            args, list(trainer.reward_func_names), trainer.reward_specs, [float(w) for w in trainer.reward_weights]
        )
        # Injected text is tokenized once, without special tokens.
        trainer._gec_cue_ids = trainer._tokenizer(args.gec_reflection_cue, add_special_tokens=False)["input_ids"]
        if args.gec_cue_in_budget and args.gec_max_new_tokens <= len(trainer._gec_cue_ids):
            raise ValueError(
                f"gec_max_new_tokens={args.gec_max_new_tokens} leaves no room to continue after the reflection cue "
                f"({len(trainer._gec_cue_ids)} tokens): raise gec_max_new_tokens (the paper uses 256), or set "
                "gec_cue_in_budget=False to count only the tokens after the cue."
            )
        trainer._gec_calls = 0

    def after_generate(self, trainer: Any, rollout: Any, prompts: list, result: tuple) -> tuple:
        if not rollout.training:
            return result
        corrected = trainer._correct_wrong_responses(rollout.rows, prompts, result)
        _log_trained_lengths(trainer, result, corrected)
        return corrected

    def after_scoring(self, trainer: Any, rollout: Any, output: dict[str, Any]) -> dict[str, Any]:
        import torch

        from edge_trl.core_algos import collapsed_group_share

        if rollout.training and rollout.rewards_per_func is not None:  # TRL's rewards of the corrected responses
            rewards = rollout.rewards_per_func
            correct = is_correct(trainer, rewards)
            metrics = trainer._metrics["train"]
            metrics["gec/accuracy_after"].append(correct.float().mean().item())
            metrics["gec/collapsed_group_share_after"].append(
                collapsed_group_share(trainer._weighted_reward(rewards), trainer.num_generations)
            )
            # Whether reflection works on this model: the share of reflected responses that end right, to set
            # against gec/accuracy_before (a fresh try's odds). Every process joins the sum.
            fixed = int(correct[rollout.reflected_rows].sum()) if rollout.reflected_rows else 0
            counts = torch.tensor([len(rollout.reflected_rows), fixed], dtype=torch.float64)
            reflected, fixed = trainer.accelerator.reduce(counts.to(trainer.accelerator.device), "sum").tolist()
            if reflected:
                metrics["gec/reflect_success"].append(fixed / reflected)
        return output

    def resume_counters(self, trainer: Any) -> dict[str, int]:
        return {"gec_rollouts": trainer._gec_calls}

    def load_counters(self, trainer: Any, counters: dict[str, int], checkpoint: str) -> None:
        trainer._gec_calls = counters.get("gec_rollouts", 0)


def correct_wrong_responses(trainer: Any, rows: list[dict[str, Any]], prompts: list, result: tuple) -> tuple:
    """Correct the wrong responses of one rollout in token space (what and how: the module docstring)."""
    from trl.data_utils import is_conversational

    from edge_trl import gec as gec_tokens
    from edge_trl.data import normalize_answer

    (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images) = result
    args = trainer.args
    local = len(completion_ids)
    start = trainer.accelerator.process_index * local

    rewards = trainer._calculate_rewards(rows, prompts, completions, completion_ids)  # gathered over processes
    correct = is_correct(trainer, rewards)
    wrong = [i for i in range(local) if not bool(correct[start + i])]
    generator = trainer._seeded_generator(trainer._gec_calls)
    trainer._gec_calls += 1
    probs = (args.gec_reflect_prob, args.gec_answer_prob, args.gec_solution_prob)
    # With gec=True too, GEC wins (the official precedence): all three branches are drawn.
    drawn = gec_tokens.choose_branches(len(wrong), probs, generator, args.reflection_only)

    plan: dict[int, str] = {}
    answers: dict[int, str | None] = {}
    for i, branch in zip(wrong, drawn, strict=True):
        answers[i] = normalize_answer(rows[i].get(args.gec_answer_column))
        solution = rows[i].get(args.gec_solution_column)
        if branch == "solution" and not (isinstance(solution, str) and solution.strip()):
            branch = "answer"  # a row without a reference solution: inject its answer instead
        if branch == "answer" and answers[i] is None:
            branch = "reflect"  # nothing to inject
        plan[i] = branch

    # gec_cue_in_budget=False is the official code's budget: nothing is cut.
    max_length = trainer.max_completion_length + args.gec_max_new_tokens if args.gec_cue_in_budget else None
    # A response ends with a run of these (e.g. <|im_end|>, or <|im_end|><|endoftext|>): injections go before it.
    stops, end_of_turn = list(trainer.eos_token_ids), trainer.end_of_turn_token_ids
    reflect_ids = [i for i in wrong if plan[i] == "reflect"]
    if trainer._rollout is not None:  # scored again by TRL: after_scoring reads how many reflections end right
        trainer._rollout.reflected_rows = [start + i for i in reflect_ids]
    continuations, continuation_logprobs = trainer._generate_reflections(
        [
            gec_tokens.reflection_prompt(prompt_ids[i], completion_ids[i], trainer._gec_cue_ids, stops)
            for i in reflect_ids
        ]
    )
    corrections: dict[int, gec_tokens.Correction] = {}
    for k, i in enumerate(reflect_ids):
        corrections[i] = gec_tokens.reflect(
            completion_ids[i],
            trainer._gec_cue_ids,
            continuations[k],
            stops,
            max_length,
            None if logprobs is None else logprobs[i],
            None if continuation_logprobs is None else continuation_logprobs[k],
        )
    for i in wrong:
        if plan[i] == "answer":
            text = args.gec_answer_template.replace("{answer}", answers[i])
            injection = trainer._tokenizer(text, add_special_tokens=False)["input_ids"]
            response_logprobs = None if logprobs is None else logprobs[i]
            corrections[i] = gec_tokens.inject_answer(
                completion_ids[i], injection, stops, max_length, response_logprobs, end_of_turn
            )
        elif plan[i] == "solution":
            solution_ids = trainer._tokenizer(rows[i][args.gec_solution_column], add_special_tokens=False)["input_ids"]
            # Closed like the model closed this response; a cut one gets the end of turn (plain prompts: EOS).
            closing = gec_tokens.turn_closing(gec_tokens.split_ending(completion_ids[i], stops)[1], end_of_turn)
            closing = closing or end_of_turn or [trainer.eos_token_ids[0]]
            corrections[i] = gec_tokens.replace_with_solution(solution_ids, closing, max_length, logprobs is not None)

    completion_ids, completions = list(completion_ids), list(completions)
    if corrections:
        order = sorted(corrections)
        texts = trainer.processing_class.batch_decode(
            [corrections[i].completion_ids for i in order], skip_special_tokens=True
        )
        conversational = is_conversational({"prompt": prompts[0]})
        for i, text in zip(order, texts, strict=True):
            completion_ids[i] = corrections[i].completion_ids
            completions[i] = [{"role": "assistant", "content": text}] if conversational else text
            if logprobs is not None:
                logprobs[i] = corrections[i].sampled_logprobs
    if args.gec_mask_injected or args.gec_mask_wrong_prefix:
        tool_mask = [[1] * len(ids) for ids in completion_ids] if tool_mask is None else list(tool_mask)
        for i, correction in corrections.items():
            tool_mask[i] = gec_tokens.loss_mask(correction, args.gec_mask_injected, args.gec_mask_wrong_prefix)

    _log_gec(trainer, rewards, correct, corrections, local)
    return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images


def generate_reflections(trainer: Any, prompts: list[list[int]]) -> tuple[list[list[int]], list | None]:
    """All reflection continuations of this process in one batched call of TRL's generation backend."""
    import torch

    total = int(trainer.accelerator.gather(torch.tensor([len(prompts)], device=trainer.accelerator.device)).sum())
    if total == 0:
        return [], None
    # Every process joins the call (vLLM server mode and ZeRO-3 generation are collective): a process with
    # nothing to reflect generates one throw-away continuation.
    batch = prompts if prompts else [[trainer._tokenizer.pad_token_id, *trainer._gec_cue_ids]]
    # With gec_cue_in_budget the cue counts against the budget, so a reflected response never exceeds the
    # corrected-length limit; otherwise (the official code) the budget is all new tokens after the cue.
    budget = trainer.args.gec_max_new_tokens - (len(trainer._gec_cue_ids) if trainer.args.gec_cue_in_budget else 0)
    with _max_new_tokens(trainer, budget):
        continuations, logprobs = trainer._generate_single_turn(batch, None, {}, 1)
    if not prompts:
        return [], None
    return [list(c) for c in continuations], logprobs


@contextlib.contextmanager
def _max_new_tokens(trainer: Any, value: int) -> Iterator[None]:
    # TRL 1.16 reads the length limit from generation_config + generation_kwargs (transformers) or from
    # vllm_generation.max_completion_length (vLLM): set all of them for the duration of the call.
    saved: list[tuple[Any, str, Any]] = []
    targets = [(getattr(trainer, "generation_config", None), "max_new_tokens")]
    targets.append((getattr(trainer, "vllm_generation", None), "max_completion_length"))
    for obj, attr in targets:
        if obj is not None and hasattr(obj, attr):
            saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)
    kwargs = getattr(trainer, "generation_kwargs", None)
    saved_kwarg = kwargs.get("max_new_tokens") if isinstance(kwargs, dict) else None
    if isinstance(kwargs, dict):
        kwargs["max_new_tokens"] = value
    try:
        yield
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)
        if isinstance(kwargs, dict):
            kwargs["max_new_tokens"] = saved_kwarg


def _log_gec(
    trainer: Any,
    rewards: torch.Tensor,
    correct: torch.Tensor,
    corrections: dict[int, gec_tokens.Correction],
    local: int,
) -> None:
    import torch

    from edge_trl.core_algos import collapsed_group_share

    branches = [c.branch for c in corrections.values()]
    reflect_tokens = sum(c.generated_tokens for c in corrections.values() if c.branch == "reflect")
    counts = torch.tensor(
        [
            len(corrections),
            branches.count("reflect"),
            branches.count("answer"),
            branches.count("solution"),
            sum(c.truncated for c in corrections.values()),
            reflect_tokens,
            local,
        ],
        dtype=torch.float64,
        device=trainer.accelerator.device,
    )
    corrected, reflect, answer, solution, truncated, tokens, total = trainer.accelerator.reduce(
        counts, reduction="sum"
    ).tolist()
    metrics = trainer._metrics["train"]
    metrics["gec/corrected_share"].append(corrected / max(total, 1.0))
    metrics["gec/reflect_count"].append(reflect)
    metrics["gec/answer_count"].append(answer)
    metrics["gec/solution_count"].append(solution)
    metrics["gec/truncated_count"].append(truncated)
    metrics["gec/reflection_new_tokens_mean"].append(tokens / max(reflect, 1.0))
    metrics["gec/accuracy_before"].append(correct.float().mean().item())
    metrics["gec/collapsed_group_share_before"].append(
        collapsed_group_share(trainer._weighted_reward(rewards), trainer.num_generations)
    )


def _log_trained_lengths(trainer: Any, before: tuple, after: tuple) -> None:
    """Re-log TRL's length metrics and ``num_tokens`` for the corrected completions, the ones trained on.

    TRL 1.16 ``GRPOTrainer._generate`` (grpo_trainer.py ~2274-2310) logs them before GEC corrects anything; this
    recomputes them the same way (tool_mask-aware lengths, "clipped" = no final EOS or pad) and replaces the values
    it appended for this rollout. The uncorrected mean is kept as ``gec/mean_length_before``.
    """
    import torch

    device = trainer.accelerator.device

    def lengths(completion_ids: list, tool_mask: list | None) -> torch.Tensor:
        sizes = [sum(m) for m in tool_mask] if tool_mask is not None else [len(ids) for ids in completion_ids]
        return trainer.accelerator.gather(torch.tensor(sizes, device=device))

    before_lengths, after_lengths = lengths(before[1], before[2]), lengths(after[1], after[2])
    eos_and_pad = [*trainer.eos_token_ids, trainer._tokenizer.pad_token_id]
    truncated = torch.tensor([not ids or ids[-1] not in eos_and_pad for ids in after[1]], device=device)
    truncated = trainer.accelerator.gather(truncated)
    terminated = after_lengths[~truncated].float()
    if terminated.numel() == 0:  # as TRL: 0 when no completion terminated
        terminated = torch.zeros(1, device=device)
    trainer.state.num_input_tokens_seen += (after_lengths.sum() - before_lengths.sum()).item()
    metrics = trainer._metrics["train"]
    metrics["num_tokens"] = [trainer.state.num_input_tokens_seen]
    replaced = {
        "completions/mean_length": after_lengths.float().mean().item(),
        "completions/min_length": after_lengths.float().min().item(),
        "completions/max_length": after_lengths.float().max().item(),
        "completions/clipped_ratio": truncated.float().mean().item(),
        "completions/mean_terminated_length": terminated.mean().item(),
        "completions/min_terminated_length": terminated.min().item(),
        "completions/max_terminated_length": terminated.max().item(),
    }
    for key, value in replaced.items():
        metrics[key][-1] = value  # TRL appended this rollout's (uncorrected) value last
    metrics["gec/mean_length_before"].append(before_lengths.float().mean().item())
