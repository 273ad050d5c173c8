"""Evidence benchmark: does each method fix the problem its paper names, where that problem occurs?

A mixed-difficulty addition task on CPU (``edge_trl.embedded.mixed_addition_dataset``): half the prompts are the
embedded 2-digit task, half have two 3-digit operands. For every seed, a warm-up continues the shipped adder's
supervised training on the mix until its sampled accuracy on the hard part reaches 3% (``embedded.mixed_warm_up``),
so most hard groups of 8 responses are all wrong at the start (advantage collapse). Then five methods train from that
same warm-up with the same data and the same rollout schedule, the one of the authors' recipes scaled down: each
rollout of 16 prompts x 8 responses is cut into 4 optimizer mini-batches (``steps_per_generation=4``), so training is
off-policy after the first mini-batch, where KL-Cov acts:

* ``grpo``: TRL's GRPO (token-mean loss, PPO clip 0.2, no KL);
* ``gec``: Guided Error Correction (EDGE-GRPO's three branches, short cue for a char-level model);
* ``edge``: EDA + GEC (EDGE-GRPO);
* ``clip-cov``: Clip-Cov with the authors' PPO clip of 1;
* ``kl-cov``: KL-Cov, the authors' unclipped loss, coefficient 1;
* ``dynamic-sampling``: GRPO plus DAPO's dynamic sampling (groups whose responses are all right or all wrong are
  dropped and more prompts generated until the rollout is full);
* ``gec-masked``: GEC with ``gec_mask_injected=True``: the injected cue and answer carry no gradient;
* ``eda``: Entropy-Driven Advantage alone.

Besides optimizer steps and training seconds, every evaluation records the tokens generated for training so far
(``gen_tokens``: every completion token of every generation call, so dynamic sampling's extra generation batches and
GEC's reflections count), for comparisons at equal generation compute.

Grids (``--grid``), each a preset of the flags below that explicit flags override:

* ``first``: the first grid (round 1): the first 5 methods, 200 steps on the 50/50 mix;
* ``entropy``: entropy collapse for real: GRPO, Clip-Cov and KL-Cov trained on the easy part only at 2e-4 for 3,000
  steps, the setting calibrated on one seed (``benchmarks/results/evidence2/calibration``);
* ``advantage``: the fixes of advantage collapse side by side on the first grid's task: GRPO, dynamic sampling, GEC,
  GEC masked, EDA and EDGE;
* ``peers``: Clip-Cov and KL-Cov against TRL's own entropy controls in the ``entropy`` grid's setting: an entropy
  bonus (``entropy_coef``), Skywork-OR1's adaptive coefficient (``use_adaptive_entropy``), the 80/20 rule
  (``top_entropy_quantile=0.2``) and DAPO's clip-higher (``epsilon_high=0.28``), with GRPO run again; Clip-Cov's and
  KL-Cov's runs are read from the ``entropy`` grid (``--reuse``, ``--reuse-methods``), not rerun.
* ``reflect``: round 3, part B: the same fixes plus ``gec-prefix-masked`` (GEC with ``gec_mask_wrong_prefix``) on
  the task with worked sums, from a warm-up that teaches the cue " Wait!" to mean "redo it"
  (``--task reflect``, ``edge_trl.embedded_reflect``); each warm-up records how often the cue turns its wrong
  responses right, and GEC runs log how often the reflection branch does (``reflect/count``, ``reflect/fixed``) and
  how often its continuation redoes the sum rather than writing a box at once (``reflect/redo``);
* ``reflect-diagnosis``: after the reflect grid, its GEC variants rerun with ``reflect/redo`` logged (bit for bit the
  grid's runs otherwise) and ``gec-fully-masked`` (both masks: only what the policy wrote after the cue is trained),
  an exploratory variant that is not among the pre-registered claims; GRPO's runs are read from the grid.

Held-out pass@k (k = 1, 4, 16, unbiased estimator from 16 samples per problem at temperature 1) on 64 easy and 64
hard problems every ``--eval-every`` steps, with two graders: ``box`` (the last ``\\boxed{}`` is right: what the
reward trains) and ``strict`` (the completion is exactly ``\\boxed{answer}``). Training time excludes evaluation.

Every (method, seed) run is written to ``<out>/runs/<method>-<seed>.json`` as soon as it ends and skipped when it
exists, so a killed grid resumes where it stopped. A run in progress holds ``<out>/runs/<method>-<seed>.lock`` (its
pid): several processes may work on one grid without running a job twice, and a lock whose process is gone is taken
over. Runs are interleaved: seed-major, the method order rotating with
the seed, so every method sees the machine's load at every stage of the grid. ``--analyse-only`` rebuilds the tables,
plots and claims from the saved runs.

    python benchmarks/evidence.py                 # the first grid: 5 methods x 5 seeds, 38 min on 2 loaded cores
    python benchmarks/evidence.py --grid entropy    # round 2, part 1: 3 methods x 5 seeds x 3,000 steps
    python benchmarks/evidence.py --grid advantage  # round 2, part 2: 6 methods x 5 seeds x 200 steps
    python benchmarks/evidence.py --grid reflect    # round 3, part B: 7 methods x 5 seeds x 200 steps, worked sums
    python benchmarks/evidence.py --grid reflect-diagnosis   # what GEC's reflections write; GEC with both masks
    python benchmarks/evidence.py --grid peers      # round 3, part A: GRPO and 4 TRL entropy controls x 5 seeds
    python benchmarks/evidence.py --smoke --out /tmp/evidence   # every column, every method x 2 seeds, about 1 min
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainerCallback

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer, embedded, embedded_reflect
from edge_trl.core_algos import token_covariance
from edge_trl.rewards import boxed_answer_matches, boxed_answer_reward, last_boxed
from edge_trl.testing import quiet

# GEC's texts, shortened: with one token per character the paper's cue is 31 tokens and its answer sentence 85.
SHORT_GEC = {
    "gec_reflection_cue": " Wait!",
    "gec_answer_template": " Wait! \\boxed{{answer}}",
    "gec_max_new_tokens": 16,
}
# The papers' token shares (Clip-Cov 2e-4, KL-Cov 2e-3) give k = max(1, int(ratio * n)) = 1 token of the ~400 of a
# mini-batch here (0.25%); the shares below are scaled up (to 1% and 2%) so that the methods act on a few tokens per
# mini-batch. Clip-Cov's covariance bounds (1, 5) are set for a 7B model's covariances; here every token with a
# positive covariance is a candidate and the ratio alone selects. The selected share is measured and reported.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "gec": {"gec": True, **SHORT_GEC},
    "edge": {"eda": True, "gec": True, **SHORT_GEC},
    "clip-cov": {
        "cov_mode": "clip_cov",
        "epsilon": 1.0,
        "clip_cov_ratio": 0.01,
        "clip_cov_lb": 0.0,
        "clip_cov_ub": 1e9,
    },
    "kl-cov": {"cov_mode": "kl_cov", "kl_cov_ratio": 0.02, "kl_cov_coef": 1.0},
    # The metric is the accuracy reward's name (here the only reward). The batch cap is verl's default of 10 doubled:
    # at the start about 40% of groups are collapsed, and a rollout that cannot fill stops the run.
    "dynamic-sampling": {
        "dynamic_sampling": True,
        "dynamic_sampling_metric": "boxed_answer_reward",
        "max_num_gen_batches": 20,
    },
    "gec-masked": {"gec": True, "gec_mask_injected": True, **SHORT_GEC},
    "eda": {"eda": True},
    # The wrong prefix a reflection or an injected answer keeps carries no gradient (the credit-assignment reading).
    "gec-prefix-masked": {"gec": True, "gec_mask_wrong_prefix": True, **SHORT_GEC},
    # Both masks: of a corrected response only what the policy generated after the cue carries gradient (an
    # exploratory variant, added after the reflect grid's diagnosis; not among its pre-registered claims).
    "gec-fully-masked": {"gec": True, "gec_mask_injected": True, "gec_mask_wrong_prefix": True, **SHORT_GEC},
    # TRL 1.16's own entropy controls, the tools a user would pick instead of Clip-Cov or KL-Cov (settings chosen on
    # seed 0, benchmarks/results/evidence3/calibration): an entropy bonus, loss - coef * mean token entropy;
    "entropy-bonus": {"entropy_coef": 1e-2},
    # Skywork-OR1's adaptive coefficient: +delta per step while the entropy is at or below the target (and the bonus
    # applies), -delta above it; the target is the easy-part rollouts' starting entropy;
    "adaptive-entropy": {"use_adaptive_entropy": True, "entropy_coef": 0.0, "entropy_target": 0.16},
    # the "80/20" rule: only the top 20% of tokens by entropy carry the policy loss (rho = 0.2);
    "top-entropy-20": {"top_entropy_quantile": 0.2},
    # DAPO's clip-higher: the upper PPO clip at 1 + 0.28, the lower at 1 - 0.2.
    "clip-higher": {"epsilon_high": 0.28},
}
ENTROPY_PEERS = ("entropy-bonus", "adaptive-entropy", "top-entropy-20", "clip-higher")
# Seed-0 variants the peers' settings were chosen from (``--methods``; not in the grids or the smoke test).
CALIBRATION: dict[str, dict[str, Any]] = {
    **{f"entropy-bonus-{c}": {"entropy_coef": float(c)} for c in ("1e-3", "1e-2", "1e-1")},
    "adaptive-entropy-0.16": {"use_adaptive_entropy": True, "entropy_coef": 0.0, "entropy_target": 0.16},
    "adaptive-entropy-0.12": {"use_adaptive_entropy": True, "entropy_coef": 0.0, "entropy_target": 0.12},
}
FIRST_GRID_METHODS = ["grpo", "gec", "edge", "clip-cov", "kl-cov"]
# The reflect task's schedule and warm-up, shared by the reflect grid and its diagnosis.
REFLECT_TASK: dict[str, Any] = {
    "task": "reflect", "steps": 200, "eval_every": 50, "eval_problems": 64, "warmup_target": 0.1,
    "warmup_min_steps": 300, "warmup_check_every": 25,
}  # fmt: skip
# Presets of the command-line flags; explicit flags override them.
GRIDS: dict[str, dict[str, Any]] = {
    "first": {"methods": FIRST_GRID_METHODS, "out": Path("benchmarks/results/evidence")},
    "entropy": {
        "methods": ["grpo", "clip-cov", "kl-cov"], "train_hard_share": 0.0, "learning_rate": 2e-4, "steps": 3000,
        "eval_every": 250, "out": Path("benchmarks/results/evidence2/entropy"),
        "warmup_dir": Path("benchmarks/results/evidence2/warmups"),
    },
    # Round 3: the entropy grid's setting; Clip-Cov's and KL-Cov's runs are read from round 2, GRPO is run again
    # (round 2's runs do not reproduce bit for bit in this software environment: benchmarks/README.md).
    "peers": {
        "methods": ["grpo", "clip-cov", "kl-cov", *ENTROPY_PEERS], "train_hard_share": 0.0, "learning_rate": 2e-4,
        "steps": 3000, "eval_every": 250, "out": Path("benchmarks/results/evidence3/peers"),
        "warmup_dir": Path("benchmarks/results/evidence3/peers/warmups"),  # rebuilt here: they differ from round 2's
        "reuse": [Path("benchmarks/results/evidence2/entropy/runs")], "reuse_methods": ["clip-cov", "kl-cov"],
    },
    "advantage": {
        "methods": ["grpo", "dynamic-sampling", "gec", "gec-masked", "eda", "edge"],
        "out": Path("benchmarks/results/evidence2/advantage"),
        "warmup_dir": Path("benchmarks/results/evidence2/warmups"),
    },
    "reflect": {
        **REFLECT_TASK, "methods": ["grpo", "gec", "gec-masked", "gec-prefix-masked", "eda", "edge",
        "dynamic-sampling"], "out": Path("benchmarks/results/evidence3/reflect"),
    },
    # After the reflect grid: what the reflection branch writes (``reflect/redo``: the GEC variants rerun, bit for
    # bit the grid's runs otherwise) and GEC with both masks; GRPO's runs are read from the grid.
    "reflect-diagnosis": {
        **REFLECT_TASK, "methods": ["grpo", "gec", "gec-masked", "gec-prefix-masked", "gec-fully-masked"],
        "out": Path("benchmarks/results/evidence3/reflect-diagnosis"),
        "warmup_dir": Path("benchmarks/results/evidence3/reflect/warmups"),
        "reuse": [Path("benchmarks/results/evidence3/reflect/runs")],
        "reuse_methods": ["grpo"],
    },
}  # fmt: skip
ADVANTAGE_FIXES = ("dynamic-sampling", "gec", "gec-masked", "gec-prefix-masked", "gec-fully-masked", "eda", "edge")
GEC_METHODS = ("gec", "gec-masked", "gec-prefix-masked", "gec-fully-masked", "edge")
COV_METHODS = ("clip-cov", "kl-cov")
PARTS = ("easy", "hard", "all")
MIN_SEEDS = 3  # fewer paired seeds than this: no verdict
GRADERS = ("box", "strict")
KS = (1, 4, 16)
SAMPLES = 16
MAX_COMPLETION = 14  # "\boxed{1998}" + EOS = 13 tokens
EVAL_COLUMNS = [f"{part}/{grader}/pass@{k}" for part in PARTS for grader in GRADERS for k in KS]
LOG_COLUMNS = [
    "reward", "entropy", "edge/collapsed_group_share", "diag/cov", "edge/cov_mean", "edge/cov_selected_mean",
    "edge/clip_cov_selected_share", "edge/kl_cov_selected_share", "edge/kl_cov_penalty", "gec/corrected_share",
    "gec/collapsed_group_share_before", "gec/collapsed_group_share_after", "gec/reflect_count",
    "dynamic_sampling/gen_batches", "dynamic_sampling/kept_group_share", "completions/mean_length", "reflect/count",
    "reflect/fixed", "reflect/redo", "entropy_coef",
]  # fmt: skip


class Task:
    """What a grid trains on: the embedded mixed-difficulty addition (``addition``), or its variant with worked sums
    and a reflective warm-up (``reflect``, ``edge_trl.embedded_reflect``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        reflect = name == "reflect"
        self.max_completion = embedded_reflect.MAX_TRACE if reflect else MAX_COMPLETION
        self.held_out = embedded_reflect.held_out_problems if reflect else embedded.mixed_held_out_problems
        self.dataset = embedded_reflect.dataset if reflect else embedded.mixed_addition_dataset
        self.gec_settings = embedded_reflect.GEC_SETTINGS if reflect else {}

    def strict(self, prompt: str, text: str, answer: str) -> bool:
        """The strict grader: exactly ``\\boxed{answer}`` (addition) or exactly the correct worked sum (reflect)."""
        if self.name == "reflect":
            return embedded_reflect.is_exact_trace(prompt, text)
        return boxed_answer_matches(text, answer, whole_text=True)

    def warm_up(self, path: Path, seed: int, cli: argparse.Namespace) -> dict[str, Any]:
        common = {"target": cli.warmup_target, "min_steps": cli.warmup_min_steps, "check_every": cli.warmup_check_every,
                  "log": lambda m: print(m, flush=True)}  # fmt: skip
        if self.name == "reflect":
            return embedded_reflect.warm_up(path, seed, reflection_problems=cli.eval_problems, **common)
        return embedded.mixed_warm_up(path, seed, **common)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def grade(text: str, answer: str, grader: str, task: Task | None = None, prompt: str = "") -> bool:
    if grader == "strict":
        return (task or Task("addition")).strict(prompt, text, answer)
    return last_boxed(text) == answer


def evaluate(
    model: Any, tokenizer: Any, problems: dict[str, list[tuple[str, str]]], seed: int, task: Task | None = None
) -> dict[str, float]:
    """Held-out pass@k of every part and grader, from ``SAMPLES`` samples per problem."""
    task = task or Task("addition")
    values: dict[str, float] = {}
    for part, rows in problems.items():
        texts = embedded.sample_completions(
            model, tokenizer, [p for p, _ in rows], samples=SAMPLES, seed=seed, max_new_tokens=task.max_completion
        )
        for grader in GRADERS:
            correct = [
                sum(grade(t, a, grader, task, p) for t in group) for group, (p, a) in zip(texts, rows, strict=True)
            ]
            for k in KS:
                values[f"{part}/{grader}/pass@{k}"] = statistics.fmean(pass_at_k(SAMPLES, c, k) for c in correct)
    for grader in GRADERS:  # equal numbers of easy and hard problems: "all" is their mean
        for k in KS:
            key = f"{grader}/pass@{k}"
            values[f"all/{key}"] = statistics.fmean(values[f"{part}/{key}"] for part in problems)
    return values


class HeldOutPassAtK(TrainerCallback):
    """Measures held-out pass@k at step 0, every ``every`` steps and at the end, with the training seconds so far
    (wall time minus the time of these evaluations) and the machine's 1-minute load average."""

    def __init__(
        self,
        tokenizer: Any,
        problems: dict[str, list[tuple[str, str]]],
        every: int,
        seed: int,
        task: Task | None = None,
    ) -> None:
        self.tokenizer, self.problems, self.every, self.seed, self.task = tokenizer, problems, every, seed, task
        self.trainer: DiagnosedTrainer | None = None  # set once the trainer exists: it counts the generated tokens
        self.points: list[dict[str, float]] = []
        self.start = self.eval_seconds = 0.0

    def _measure(self, state: Any, model: Any) -> None:
        begin = time.perf_counter()
        # The same sampling seed for every method at a given step and run seed: common random numbers.
        point = evaluate(model, self.tokenizer, self.problems, self.seed * 100_003 + state.global_step, self.task)
        point.update(
            step=state.global_step,
            train_s=begin - self.start - self.eval_seconds,
            gen_tokens=self.trainer.generated_tokens if self.trainer is not None else 0,
            load1=os.getloadavg()[0],
        )
        self.points.append(point)
        self.eval_seconds += time.perf_counter() - begin

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = time.perf_counter()
        self._measure(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._measure(state, model)


# A reflection that redoes the sum starts, after the cue, with a worked column ("7+5=12 ..."), not with a box.
WORKED_COLUMN = re.compile(r"\s*\d\+\d")


class DiagnosedTrainer(EdgeGRPOTrainer):
    """EdgeGRPOTrainer that logs ``diag/cov``, the covariance of log pi and A over the mini-batch's valid tokens
    (``core_algos.token_covariance``) at the rollout policy (TRL's old log-probs), the same way for every method, so
    vanilla, GEC and EDGE get the entropy-change predictor too (``edge/cov_mean`` exists only with a cov_mode).
    It also counts ``generated_tokens``: the completion tokens of every call of TRL's generation backend, the
    rollouts, dynamic sampling's extra batches and GEC's reflection continuations alike (injected text is not
    generated and not counted)."""

    generated_tokens = 0

    def _generate_reflections(self, prompts: list[list[int]]) -> tuple[list[list[int]], list | None]:
        """GEC's reflection continuations, scored here (``reflect/*``): how many the reflection turns right, read
        from the prompt's operands (a benchmark-side measure: the trainer does not score branches separately)."""
        continuations, logprobs = super()._generate_reflections(prompts)
        if prompts:
            decode = self.processing_class.decode
            fixed = redone = 0
            for prompt, continuation in zip(prompts, continuations, strict=True):
                pair = embedded_reflect.operands(decode(prompt, skip_special_tokens=True))
                text = decode(continuation, skip_special_tokens=True)
                fixed += pair is not None and last_boxed(text) == str(sum(pair))
                redone += WORKED_COLUMN.match(text) is not None
            metrics = self._metrics["train"]
            metrics["reflect/count"].append(float(len(prompts)))
            metrics["reflect/fixed"].append(float(fixed))
            metrics["reflect/redo"].append(float(redone))
        return continuations, logprobs

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        self.generated_tokens += sum(len(ids) for ids in completion_ids)
        return completion_ids, logprobs

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is not None:  # always there here: steps_per_generation > 1 makes TRL compute them
            mask = inputs["completion_mask"]
            cov = token_covariance(inputs["advantages"], old_logps, mask)
            self._metrics["train"]["diag/cov"].append((cov.sum() / mask.sum().clamp(min=1)).item())
        return super()._compute_loss(model, inputs)


def start_collapse(model_dir: Path, seed: int, group_size: int = 8, task: Task | None = None) -> dict[str, float]:
    """Advantage collapse at the start, per difficulty: the expected share of GRPO groups of ``group_size`` responses
    that are all wrong (no gradient) or all right, estimated from 16 samples per held-out problem without bias (the
    chance that ``group_size`` of the 16 samples drawn without replacement are all wrong: C(16 - c, g) / C(16, g))."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shares: dict[str, float] = {}
    task = task or Task("addition")
    for part, rows in task.held_out().items():
        texts = embedded.sample_completions(
            model, tokenizer, [q for q, _ in rows], samples=SAMPLES, seed=seed, max_new_tokens=task.max_completion
        )
        correct = [sum(grade(t, a, "box") for t in group) for group, (_, a) in zip(texts, rows, strict=True)]
        total = math.comb(SAMPLES, group_size)
        shares[f"{part} all-wrong share"] = statistics.fmean(
            math.comb(SAMPLES - c, group_size) / total for c in correct
        )
        shares[f"{part} all-right share"] = statistics.fmean(math.comb(c, group_size) / total for c in correct)
    return shares


def warm_up(warmups: Path, seed: int, cli: argparse.Namespace) -> Path:
    """The seed's warm-up, trained once and shared by every method (and by grids that name the same folder).
    Deterministic: the same seed and flags give the same model (the first grid's and round 2's agree)."""
    path = warmups / f"seed-{seed}"
    info_path = warmups / f"seed-{seed}.json"
    warmups.mkdir(parents=True, exist_ok=True)
    lock = warmups / f"seed-{seed}.lock"
    while not take_job(lock):  # another process is training this warm-up: wait for it
        time.sleep(5)
    try:
        if not (info_path.exists() and (path / "config.json").exists()):
            train_warm_up(path, info_path, seed, cli)
    finally:
        lock.unlink(missing_ok=True)
    return path


def train_warm_up(path: Path, info_path: Path, seed: int, cli: argparse.Namespace) -> None:
    begin = time.perf_counter()
    task = Task(cli.task)
    info = task.warm_up(path, seed, cli)
    info["seconds"] = time.perf_counter() - begin
    info.update(start_collapse(path, seed, task=task))
    info_path.write_text(json.dumps(info))  # last: it marks the warm-up complete


def take_job(lock: Path) -> bool:
    """Takes a job's lock (O_EXCL): False when a live process holds it. A lock whose process is gone (a killed
    grid) is taken over, so a grid stays resumable."""
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:  # alive, another user's
                return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def save_session(grid_path: Path, session: dict[str, Any]) -> None:
    """Writes this process's session into grid.json, re-reading it first: other processes may share the grid."""
    grid = json.loads(grid_path.read_text()) if grid_path.exists() else {"sessions": []}
    grid["sessions"] = [s for s in grid["sessions"] if s.get("id") != session["id"]] + [session]
    temporary = grid_path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(grid, indent=1))
    temporary.replace(grid_path)


def run(method: str, seed: int, model_dir: Path, cli: argparse.Namespace) -> dict[str, Any]:
    task = Task(cli.task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = {**METHODS, **CALIBRATION}[method]
    settings = {**spec, **(task.gec_settings if spec.get("gec") else {})}
    args = EdgeGRPOConfig(
        output_dir=str(cli.out / "tmp" / f"{method}-{seed}"), use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=cli.batch_size, steps_per_generation=cli.steps_per_generation, num_generations=8,
        learning_rate=cli.learning_rate, max_completion_length=task.max_completion, max_steps=cli.steps, beta=0.0,
        temperature=1.0, logging_steps=1, save_strategy="no", seed=seed, disable_tqdm=True, **settings,
    )  # fmt: skip
    problems = task.held_out(cli.eval_problems)
    held_out = HeldOutPassAtK(tokenizer, problems, cli.eval_every, seed, task)
    prompts_needed = cli.steps * cli.batch_size // 8 + 64
    trainer = DiagnosedTrainer(
        str(model_dir), reward_funcs=boxed_answer_reward, args=args, processing_class=tokenizer,
        train_dataset=task.dataset(prompts_needed, seed=seed, hard_share=cli.train_hard_share),
        callbacks=[held_out],
    )  # fmt: skip
    held_out.trainer = trainer
    begin = time.perf_counter()
    quiet(trainer).train()
    wall = time.perf_counter() - begin
    logs = [
        {"step": e["step"], **{k: e[k] for k in LOG_COLUMNS if k in e}}
        for e in trainer.state.log_history
        if "step" in e and "entropy" in e
    ]
    return {
        "method": method, "seed": seed, "wall_s": wall, "train_s": wall - held_out.eval_seconds,
        "learning_rate": cli.learning_rate, "gen_tokens": trainer.generated_tokens, "evals": held_out.points,
        "logs": logs,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------- statistics


def bootstrap_ci(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean."""
    rng = random.Random(seed)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    return mean, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def significance(ci: tuple[float, float, float]) -> str:
    _, low, high = ci
    return "significant" if low > 0 or high < 0 else "not significant"


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """y at x, linear between the points of (xs ascending); None outside their range."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[0] if xs and x == xs[0] else None


def at_level(run: dict, level_key: str, level: float, key: str) -> float | None:
    """``key`` where ``level_key`` first reaches ``level`` along the run (linear between evaluations)."""
    points = run["evals"]
    for before, after in itertools.pairwise(points):
        if before[level_key] <= level <= after[level_key] and after[level_key] > before[level_key]:
            t = (level - before[level_key]) / (after[level_key] - before[level_key])
            return before[key] + t * (after[key] - before[key])
    return points[0][key] if points[0][level_key] >= level else None


def log_mean(run: dict, key: str, first: float, last: float) -> float | None:
    """Mean of a logged metric over the fraction [first, last) of its logged steps (at least one step)."""
    values = [e[key] for e in run["logs"] if key in e]
    if not values:
        return None
    begin = min(int(first * len(values)), len(values) - 1)
    return statistics.fmean(values[begin : max(math.ceil(last * len(values)), begin + 1)])


def reflection_share(run: dict, first: float, last: float, key: str = "reflect/fixed") -> float | None:
    """GEC's reflection branch over the fraction [first, last) of the rollouts that reflected: the share of the
    wrong responses it continued whose continuation's box is right (``reflect/fixed``), or that redo the sum
    (``reflect/redo``), pooled over those rollouts; None for a run that did not log ``key``."""
    rollouts = [e for e in run["logs"] if e.get("reflect/count")]
    if not rollouts or key not in rollouts[0]:
        return None
    begin = min(int(first * len(rollouts)), len(rollouts) - 1)
    window = rollouts[begin : max(math.ceil(last * len(rollouts)), begin + 1)]
    return sum(e[key] for e in window) / sum(e["reflect/count"] for e in window)


def covariance_diagnostic(run: dict, windows: int = 10) -> dict[str, float]:
    """The covariance (logged before each update) against the entropy change that follows it.

    Cui et al. (arXiv 2505.22617, eq. of the entropy dynamics): under natural policy gradient with step eta, the
    entropy change is dH ~ -eta * Cov(log pi, A). The logged entropy is measured on each step's own mini-batch, so a
    per-step dH is mostly batch noise: the run is cut into ``windows`` windows of equal length, and the mean Cov of
    window w is set against the change of mean entropy from window w to w + 1 (their correlation). Also: the sum of
    -lr * Cov over the run (the prediction with plain SGD's step; Adam's effective step differs) and the measured
    total change of entropy (last 10% of steps - first 5%).
    """
    logs = [e for e in run["logs"] if "diag/cov" in e and "entropy" in e]
    size = max(1, len(logs) // windows)
    chunks = [logs[i : i + size] for i in range(0, size * (len(logs) // size), size)]
    covs = [statistics.fmean(e["diag/cov"] for e in c) for c in chunks]
    entropies = [statistics.fmean(e["entropy"] for e in c) for c in chunks]
    changes = [b - a for a, b in itertools.pairwise(entropies)]
    covs = covs[: len(changes)]
    correlation = statistics.correlation(covs, changes) if len(covs) > 2 and statistics.pstdev(covs) > 0 else 0.0
    return {
        "cov_mean": statistics.fmean(e["diag/cov"] for e in logs) if logs else 0.0,
        "corr_cov_dH": correlation,
        "predicted_total_dH": -run["learning_rate"] * sum(e["diag/cov"] for e in logs),
        "measured_total_dH": (log_mean(run, "entropy", 0.9, 1.0) or 0.0) - (log_mean(run, "entropy", 0.0, 0.05) or 0.0),
    }


def metric_table(runs: dict[str, list[dict]], methods: list[str]) -> dict[str, Any]:
    """Per-method values of every run, at equal steps (the last evaluation), at equal training time (the shortest
    run's training time, linear between evaluations) and at equal generated tokens (the fewest tokens any run
    generated, likewise), plus the start."""
    every_run = [r for rs in runs.values() for r in rs]
    common_time = min(r["evals"][-1]["train_s"] for r in every_run)
    common_pass1 = min(max(p["all/box/pass@1"] for p in r["evals"]) for r in every_run)
    # Runs of the first grid (round 1) have no token counts: no equal-token comparison for them.
    counted = all("gen_tokens" in p for r in every_run for p in r["evals"])
    common_tokens = min(r["evals"][-1]["gen_tokens"] for r in every_run) if counted else None
    table: dict[str, Any] = {
        "common_train_s": common_time, "common_all_box_pass1": common_pass1, "common_gen_tokens": common_tokens,
        "methods": {},
    }  # fmt: skip
    for method in methods:
        per_run = []
        for r in sorted(runs[method], key=lambda r: r["seed"]):
            times = [p["train_s"] for p in r["evals"]]
            tokens = [p["gen_tokens"] for p in r["evals"]] if counted else []
            values = {
                "seed": r["seed"],
                "train_s": r["train_s"],
                "wall_s": r["wall_s"],
                "gen_tokens": r.get("gen_tokens"),
            }
            for key in EVAL_COLUMNS:
                series = [p[key] for p in r["evals"]]
                values[f"start {key}"] = series[0]
                values[f"final {key}"] = series[-1]
                values[f"equal-time {key}"] = interpolate(times, series, common_time)
                values[f"equal-tokens {key}"] = interpolate(tokens, series, common_tokens) if counted else None
            values["all/box/pass@16 at equal pass@1"] = at_level(r, "all/box/pass@1", common_pass1, "all/box/pass@16")
            values["pass@16 curve"] = [
                {"step": p["step"], **{f"all/{g}/pass@16": p[f"all/{g}/pass@16"] for g in GRADERS}} for p in r["evals"]
            ]
            values["entropy start"] = log_mean(r, "entropy", 0.0, 0.05)
            values["entropy final"] = log_mean(r, "entropy", 0.9, 1.0)
            values["entropy final / start"] = values["entropy final"] / values["entropy start"]
            # The first evaluation after the start: when pass@16 falls, does it fall with the entropy or before it?
            early = r["evals"][1] if len(r["evals"]) > 1 else r["evals"][0]
            values["early step"] = early["step"]
            values["early all/box/pass@16"] = early["all/box/pass@16"]
            before = [e["entropy"] for e in r["logs"] if "entropy" in e and e["step"] <= early["step"]]
            window = before[-max(1, len(r["logs"]) // 20) :]  # the last 5% of the run's steps before it
            values["entropy early / start"] = statistics.fmean(window) / values["entropy start"] if window else None
            values["generation batches per rollout"] = log_mean(r, "dynamic_sampling/gen_batches", 0.0, 1.0)
            values["kept group share"] = log_mean(r, "dynamic_sampling/kept_group_share", 0.0, 1.0)
            values["collapsed share start"] = log_mean(r, "edge/collapsed_group_share", 0.0, 0.05)
            values["collapsed share final"] = log_mean(r, "edge/collapsed_group_share", 0.9, 1.0)
            values["collapsed share before GEC start"] = log_mean(r, "gec/collapsed_group_share_before", 0.0, 0.05)
            for key in ("edge/clip_cov_selected_share", "edge/kl_cov_selected_share"):
                values[key] = log_mean(r, key, 0.0, 1.0)
            values.update({f"cov {k}": v for k, v in covariance_diagnostic(r).items()})
            for name, (first, last) in {"run": (0.0, 1.0), "first 20%": (0.0, 0.2), "last 20%": (0.8, 1.0)}.items():
                values[f"reflection success {name}"] = reflection_share(r, first, last)
                values[f"reflection redo {name}"] = reflection_share(r, first, last, "reflect/redo")
            values["mean load1"] = statistics.fmean(p["load1"] for p in r["evals"])
            per_run.append(values)
        table["methods"][method] = per_run
    return table


def summarise(per_run: list[dict], key: str) -> tuple[float, float, float] | None:
    values = [v[key] for v in per_run if v.get(key) is not None]
    return bootstrap_ci(values) if values else None


def paired_difference(table: dict, method: str, key: str, baseline: str = "grpo") -> tuple[float, float, float] | None:
    """Mean and bootstrap CI of (method - baseline) over the seeds both have: same warm-up, same data."""
    base = {v["seed"]: v.get(key) for v in table["methods"][baseline]}
    diffs = [
        v[key] - base[v["seed"]]
        for v in table["methods"][method]
        if v.get(key) is not None and base.get(v["seed"]) is not None
    ]
    return bootstrap_ci(diffs) if len(diffs) >= MIN_SEEDS else None


def verdict(ci: tuple[float, float, float] | None, better: str = "higher") -> str:
    if ci is None:
        return f"not measured (< {MIN_SEEDS} seeds)"
    _, low, high = ci
    if (better == "higher" and low > 0) or (better == "lower" and high < 0):
        return "held"
    if (better == "higher" and high < 0) or (better == "lower" and low > 0):
        return "not held (opposite, significant)"
    return "not significant"


def fmt(ci: tuple[float, float, float] | None, percent: bool = True) -> str:
    if ci is None:
        return "n/a"
    mean, low, high = ci
    if percent:
        return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def claims(table: dict, methods: list[str], warmups: list[dict]) -> list[dict[str, str]]:
    """Each claim with its verdict (held / not held / not significant) and the evidence, paired by seed."""
    rows: list[dict[str, str]] = []
    vanilla = table["methods"]["grpo"]

    def add(claim: str, ci: Any, evidence: str, better: str = "higher") -> None:
        rows.append({"claim": claim, "verdict": verdict(ci, better), "evidence": evidence})

    hard = [w["hard all-wrong share"] for w in warmups if "hard all-wrong share" in w]
    if hard:
        ci = bootstrap_ci(hard)
        rows.append({
            "claim": "baseline: most (>= 50%) GRPO groups of hard problems are all wrong (collapsed) at the start",
            "verdict": "held" if ci[1] >= 0.5 else ("not held" if ci[2] < 0.5 else "not significant"),
            "evidence": f"hard all-wrong share {fmt(ci)} % of groups of 8 (easy: "
            f"{100 * statistics.fmean(w['easy all-wrong share'] for w in warmups):.1f}% all wrong, "
            f"{100 * statistics.fmean(w['easy all-right share'] for w in warmups):.1f}% all right); logged collapsed "
            f"share of GRPO's first 5% of steps, both parts: {fmt(summarise(vanilla, 'collapsed share start'))} %",
        })  # fmt: skip
    entropy_change = bootstrap_ci([v["entropy final"] - v["entropy start"] for v in vanilla])
    add(
        "baseline: GRPO's entropy falls", entropy_change, f"entropy final - start {fmt(entropy_change, False)}", "lower"
    )
    for grader in GRADERS:
        d1 = bootstrap_ci([v[f"final all/{grader}/pass@1"] - v[f"start all/{grader}/pass@1"] for v in vanilla])
        d16 = bootstrap_ci([v[f"final all/{grader}/pass@16"] - v[f"start all/{grader}/pass@16"] for v in vanilla])
        stalls = d1[1] > 0 and (d16[2] < d1[1] or d16[0] <= 0)
        rows.append({
            "claim": f"baseline ({grader}): GRPO's pass@16 falls or stalls while its pass@1 rises",
            "verdict": "held" if stalls else ("not held" if d1[1] > 0 else "not significant"),
            "evidence": f"pass@1 change {fmt(d1)} points, pass@16 change {fmt(d16)} points",
        })  # fmt: skip
    if any(m in methods for m in COV_METHODS):
        rows.extend(entropy_collapse_claims(table, vanilla))
    budgets = [("final", "equal steps"), ("equal-tokens", "equal generated tokens"), ("equal-time", "equal time")]
    if table.get("common_gen_tokens") is None:
        budgets = [b for b in budgets if b[0] != "equal-tokens"]
    for method in [m for m in ADVANTAGE_FIXES if m in methods]:
        for k in (1, 16):
            for when, label in budgets:
                ci = paired_difference(table, method, f"{when} hard/box/pass@{k}")
                add(f"{method} has higher hard pass@{k} than GRPO at {label} (box)", ci,
                    f"hard pass@{k} {method} - grpo {fmt(ci)} points")  # fmt: skip
        ci = paired_difference(table, method, "final hard/strict/pass@1")
        add(f"{method} has higher hard pass@1 than GRPO at equal steps (strict)", ci,
            f"hard pass@1 strict {method} - grpo {fmt(ci)} points")  # fmt: skip
    # The two readings the split methods test, each against its own baseline.
    for method, baseline, reading in (
        ("gec-masked", "gec", "masking GEC's injected tokens helps the hard part"),
        ("edge", "gec", "EDA helps on top of GEC"),
    ):
        if method in methods and baseline in methods:
            for k in (1, 16):
                ci = paired_difference(table, method, f"final hard/box/pass@{k}", baseline=baseline)
                add(f"{reading}: {method} has higher hard pass@{k} than {baseline} (equal steps, box)", ci,
                    f"hard pass@{k} {method} - {baseline} {fmt(ci)} points")  # fmt: skip
    for method in COV_METHODS:
        if method not in methods:
            continue
        ci = paired_difference(table, method, "entropy final")
        add(f"{method} keeps entropy higher than GRPO (equal steps)", ci, f"final entropy diff {fmt(ci, False)}")
        for grader in GRADERS:
            ci = paired_difference(table, method, f"final all/{grader}/pass@16")
            add(f"{method} keeps pass@16 higher than GRPO (equal steps, {grader})", ci,
                f"final pass@16 diff {fmt(ci)} points")  # fmt: skip
        ci = paired_difference(table, method, "all/box/pass@16 at equal pass@1")
        add(f"{method} has higher pass@16 than GRPO at equal pass@1 (box, pass@1 = "
            f"{table['common_all_box_pass1']:.1%})", ci, f"pass@16 diff {fmt(ci)} points")  # fmt: skip
    if any("rate_with_cue" in w for w in warmups):
        rows.extend(reflection_claims(table, methods, warmups))
    if any(m in methods for m in ENTROPY_PEERS):
        rows.extend(peer_claims(table, methods))
    every_run = [v for m in methods for v in table["methods"][m]]
    ci = bootstrap_ci([v["cov corr_cov_dH"] for v in every_run])
    pairs = [(v["cov cov_mean"], v["cov measured_total_dH"]) for v in every_run]
    across = statistics.correlation(*zip(*pairs, strict=True)) if len(pairs) > 2 else float("nan")
    add("covariance predicts the entropy change within a run (corr(Cov, next dH) < 0 over 10 windows, every run)",
        ci if len(every_run) >= MIN_SEEDS else None,
        f"mean within-run correlation {fmt(ci, False)}; across runs, corr(mean Cov, total dH) = {across:+.2f}",
        "lower")  # fmt: skip
    return rows


def reflection_claims(table: dict, methods: list[str], warmups: list[dict]) -> list[dict[str, str]]:
    """The reflect grid's pre-registered claims (benchmarks/README.md, round 3 part B): the warm-up's precondition,
    the reflection branch during training, the credit-assignment reading, and the verdict on GEC."""
    rows: list[dict[str, str]] = []
    cue, none, wrong = (sum(w[k] for w in warmups) for k in ("fixed_with_cue", "fixed_without_cue", "wrong_responses"))
    (cue_low, cue_high), (none_low, none_high) = (embedded_reflect.wilson_interval(n, wrong) for n in (cue, none))
    learnt = cue_low > none_high and (cue - none) / max(wrong, 1) >= 0.10
    rows.append({
        "claim": "precondition: after the warm-up the cue turns wrong responses right clearly more often than a "
        "continuation without it (95% Wilson intervals apart and >= 10 points)",
        "verdict": "held" if learnt else "not held",
        "evidence": f"with the cue {cue}/{wrong} = {100 * cue / max(wrong, 1):.1f}% [{100 * cue_low:.1f}, "
        f"{100 * cue_high:.1f}]; without {none}/{wrong} = {100 * none / max(wrong, 1):.1f}% [{100 * none_low:.1f}, "
        f"{100 * none_high:.1f}] ({len(warmups)} warm-ups pooled)",
    })  # fmt: skip
    baseline = none / max(wrong, 1)
    for method in [m for m in GEC_METHODS if m in methods]:
        rows_ = table["methods"][method]
        ci = summarise(rows_, "reflection success run")
        rows.append({
            "claim": f"{method}: the reflection branch turns more wrong responses right during training than the "
            f"warm-up does without the cue ({100 * baseline:.1f}%)",
            "verdict": "not measured" if ci is None else ("held" if ci[1] > baseline else "not held"),
            "evidence": f"reflection success over the run {fmt(ci)} %",
        })  # fmt: skip
        first, last = summarise(rows_, "reflection success first 20%"), summarise(rows_, "reflection success last 20%")
        diffs = [
            v["reflection success last 20%"] - v["reflection success first 20%"]
            for v in rows_
            if v["reflection success last 20%"] is not None and v["reflection success first 20%"] is not None
        ]
        ci = bootstrap_ci(diffs) if len(diffs) >= MIN_SEEDS else None
        rows.append({
            "claim": f"{method}: the reflection branch's success rate rises during training (last 20% of rollouts - "
            "first 20%)",
            "verdict": verdict(ci),
            "evidence": f"first 20% {fmt(first)} %, last 20% {fmt(last)} %; paired change {fmt(ci)} points",
        })  # fmt: skip
    if "gec-prefix-masked" in methods and "gec" in methods:
        for k in (1, 16):
            ci = paired_difference(table, "gec-prefix-masked", f"final hard/box/pass@{k}", baseline="gec")
            rows.append({
                "claim": f"credit assignment: masking the wrong prefix helps, gec-prefix-masked has higher hard "
                f"pass@{k} than gec (equal steps, box)",
                "verdict": verdict(ci), "evidence": f"hard pass@{k} gec-prefix-masked - gec {fmt(ci)} points",
            })  # fmt: skip
    # Exploratory (not pre-registered): both masks against each mask alone.
    for baseline in [m for m in ("gec", "gec-masked", "gec-prefix-masked") if {m, "gec-fully-masked"} <= set(methods)]:
        for k in (1, 16):
            ci = paired_difference(table, "gec-fully-masked", f"final hard/box/pass@{k}", baseline=baseline)
            rows.append({
                "claim": f"exploratory: gec-fully-masked has higher hard pass@{k} than {baseline} (equal steps, box)",
                "verdict": verdict(ci), "evidence": f"hard pass@{k} gec-fully-masked - {baseline} {fmt(ci)} points",
            })  # fmt: skip
    for method in [m for m in ("gec", "edge", "gec-fully-masked") if m in methods]:
        steps = paired_difference(table, method, "final hard/box/pass@1")
        tokens = paired_difference(table, method, "equal-tokens hard/box/pass@1")
        if steps is None:
            reading = "not measured (< 3 seeds)"
        elif steps[1] > 0 and (tokens is None or tokens[2] > 0):
            reading = "helps once the model can reflect"
        elif steps[2] < 0:
            reading = "still hurts"
        else:
            reading = "cannot be told apart from GRPO"
        rows.append({
            "claim": f"{'exploratory: ' if method == 'gec-fully-masked' else ''}verdict on {method} (pre-registered "
            "rule: helps = hard pass@1 above GRPO at equal steps, CI > 0, "
            "and not significantly below at equal generated tokens; hurts = below at equal steps, CI < 0)",
            "verdict": reading,
            "evidence": f"hard pass@1 {method} - grpo: equal steps {fmt(steps)}, equal tokens {fmt(tokens)} points",
        })  # fmt: skip
    return rows


# The peers' comparisons: (measure, table key, better direction, claim wording, percent points or ratio).
PEER_MEASURES = (
    ("entropy kept", "entropy final / start", "higher", "keeps more entropy (final / start) than", False),
    ("pass@1 cost", "final all/box/pass@1", "lower", "has lower pass@1 (a cost, equal steps, box) than", True),
    ("pass@16, equal steps", "final all/box/pass@16", "higher", "has higher pass@16 (equal steps, box) than", True),
    ("pass@16, equal pass@1", "all/box/pass@16 at equal pass@1", "higher", "has higher pass@16 at equal pass@1 than",
     True),
)  # fmt: skip
# A seed is unstable when its entropy ends above this multiple of its start (the bonus's runaway entropy) ...
ENTROPY_RUNAWAY = 1.5
# ... or its all-problem pass@1, by either grader, ends this much below its start (a collapse; GRPO gains about 21
# points here). The strict grader catches a policy that keeps the box right but writes other text around it.
PASS1_COLLAPSE = 0.05


def peer_baselines(methods: list[str]) -> list[str]:
    return [m for m in ("grpo", *COV_METHODS) if m in methods]


def peer_claims(table: dict, methods: list[str]) -> list[dict[str, str]]:
    """TRL's entropy controls against GRPO and against each Cov method, paired by seed; then every method's
    stability (no seed whose entropy runs away or whose pass@1 collapses)."""
    rows = []
    for method in [m for m in methods if m in ENTROPY_PEERS]:
        for baseline in peer_baselines(methods):
            for _, key, better, wording, percent in PEER_MEASURES:
                ci = paired_difference(table, method, key, baseline=baseline)
                unit = " points" if percent else ""
                rows.append({"claim": f"{method} {wording} {baseline}", "verdict": verdict(ci, better),
                             "evidence": f"{key}: {method} - {baseline} {fmt(ci, percent)}{unit}"})  # fmt: skip
    for method in methods:
        unstable = unstable_seeds(table["methods"][method])
        rows.append({
            "claim": f"{method} is stable: no seed's entropy ends above {ENTROPY_RUNAWAY}x its start and no seed's "
            f"all pass@1 (box or strict) ends {100 * PASS1_COLLAPSE:.0f}+ points below its start",
            "verdict": "held" if not unstable else f"not held ({len(unstable)} of {len(table['methods'][method])} seeds)",
            "evidence": "; ".join(unstable) or "every seed: entropy final / start "
            + ", ".join(f"{v['entropy final / start']:.2f}" for v in table["methods"][method]),
        })  # fmt: skip
    return rows


def unstable_seeds(per_run: list[dict]) -> list[str]:
    """The seeds whose entropy runs away or whose pass@1 collapses, each with why."""
    found = []
    for v in per_run:
        drop = min(v[f"final all/{g}/pass@1"] - v[f"start all/{g}/pass@1"] for g in GRADERS)
        if v["entropy final / start"] > ENTROPY_RUNAWAY or drop < -PASS1_COLLAPSE:
            found.append(f"seed {v['seed']}: entropy final / start {v['entropy final / start']:.2f}, all pass@1 "
                         + ", ".join(f"{g} {100 * v[f'start all/{g}/pass@1']:.1f} -> "
                                     f"{100 * v[f'final all/{g}/pass@1']:.1f}" for g in GRADERS))  # fmt: skip
    return found


def peer_matrix(table: dict, methods: list[str]) -> list[str]:
    """Each measure as a matrix: a row per method, a column per baseline, paired differences over seeds."""
    baselines = peer_baselines(methods)
    lines = []
    for title, key, better, _, percent in PEER_MEASURES:
        unit = "percent points" if percent else "ratio"
        lines += [f"{title}: {key}, method - baseline ({unit}, mean [95% CI]; the method's claim is {better}):", "",
                  "| method | " + " | ".join(f"- {b}" for b in baselines) + " |",
                  "|---|" + "---|" * len(baselines)]  # fmt: skip
        for method in [m for m in methods if m not in ("grpo",)]:
            cells = []
            for baseline in baselines:
                if baseline == method or (method in COV_METHODS and baseline in COV_METHODS):
                    cells.append("-")
                    continue
                ci = paired_difference(table, method, key, baseline=baseline)
                cells.append(fmt(ci, percent) + (" *" if ci is not None and significance(ci) == "significant" else ""))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("*: the 95% interval excludes 0 (paired by seed).")
    return lines


def entropy_collapse_claims(table: dict, vanilla: list[dict]) -> list[dict[str, str]]:
    """Did the setting produce the collapse the Cov methods are meant to prevent (round 2's calibration target)?"""
    rows = []
    ratio = bootstrap_ci([v["entropy final / start"] for v in vanilla])
    rows.append({
        "claim": "baseline: GRPO's entropy falls by at least half",
        "verdict": "held" if ratio[2] <= 0.5 else ("not held" if ratio[1] > 0.5 else "not significant"),
        "evidence": f"entropy final / start {ratio[0]:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}]",
    })  # fmt: skip
    for grader in GRADERS:
        key = f"all/{grader}/pass@16"
        # The peak step is chosen on the mean over seeds, then every seed is read at that step: a per-seed maximum
        # would be biased up by the evaluation's noise and could not fail to exceed the final value.
        curves = [v["pass@16 curve"] for v in vanilla]
        steps = [p["step"] for p in curves[0]]
        mean_curve = [statistics.fmean(p[key] for p in points) for points in zip(*curves, strict=True)]
        peak = max(range(len(mean_curve)), key=mean_curve.__getitem__)
        drop = bootstrap_ci([curve[peak][key] - curve[-1][key] for curve in curves])
        from_start = bootstrap_ci([v[f"start {key}"] - v[f"final {key}"] for v in vanilla])
        rows.append({
            "claim": f"baseline ({grader}): GRPO's pass@16 falls from its peak",
            "verdict": verdict(drop),
            "evidence": f"peak of the mean curve at step {steps[peak]}; peak - final {fmt(drop)} points; start - "
            f"final {fmt(from_start)} points",
        })  # fmt: skip
    # The mechanism's order: exploration should shrink as entropy does. The share of each fall already reached at
    # the first evaluation after the start says whether pass@16 fell with the entropy or before it.
    shares = [
        (
            (v["start all/box/pass@16"] - v["early all/box/pass@16"]) / (v["start all/box/pass@16"] - v["final all/box/pass@16"]),
            (1 - v["entropy early / start"]) / (1 - v["entropy final / start"]),
        )
        for v in vanilla
        if v["start all/box/pass@16"] > v["final all/box/pass@16"] and v["entropy final / start"] < 1
        and v.get("entropy early / start") is not None
    ]  # fmt: skip
    if len(shares) >= MIN_SEEDS:
        ci = bootstrap_ci([a - b for a, b in shares])
        rows.append({
            "claim": f"baseline: GRPO's pass@16 falls with its entropy, not before it (step {vanilla[0]['early step']})",
            "verdict": verdict(ci, "lower"),
            "evidence": f"share of the pass@16 fall (start - final) reached by step {vanilla[0]['early step']}: "
            f"{100 * statistics.fmean(a for a, _ in shares):.0f}%; share of the entropy fall: "
            f"{100 * statistics.fmean(b for _, b in shares):.0f}%; difference {fmt(ci)} points",
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------------- outputs


def plot(runs: dict[str, list[dict]], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("hard pass@1 (box)", "hard/box/pass@1", "step"), ("hard pass@1 (strict)", "hard/strict/pass@1", "step"),
        ("hard pass@1 (box) vs training seconds", "hard/box/pass@1", "train_s"),
        ("all pass@16 (box)", "all/box/pass@16", "step"), ("all pass@1 (box)", "all/box/pass@1", "step"),
        ("pass@16 vs pass@1 (all, box)", "all/box/pass@16", "all/box/pass@1"),
        ("entropy (logged, per step)", "entropy", "log"), ("collapsed-group share", "edge/collapsed_group_share", "log"),
        ("hard pass@16 (box)", "hard/box/pass@16", "step"),
        ("hard pass@1 (box) vs generated tokens", "hard/box/pass@1", "gen_tokens"),
        ("hard pass@16 (box) vs generated tokens", "hard/box/pass@16", "gen_tokens"),
        ("all pass@16 (box) vs training seconds", "all/box/pass@16", "train_s"),
    ]  # fmt: skip
    figure, axes = plt.subplots(3, 4, figsize=(20, 12.5))
    for axis, (title, key, x) in zip(axes.flat, panels, strict=True):
        for index, method in enumerate(methods):
            color = f"C{index}"
            for r in runs[method]:
                if x == "log":
                    points = [(e["step"], e[key]) for e in r["logs"] if key in e]
                    width = max(1, len(points) // 20)  # a moving mean: per-step values are noisy
                    xs = [p[0] for p in points][width - 1 :]
                    ys = [
                        statistics.fmean(p[1] for p in points[i - width + 1 : i + 1])
                        for i in range(width - 1, len(points))
                    ]
                elif all(x in p for p in r["evals"]):
                    xs = [p[x] for p in r["evals"]]
                    ys = [p[key] for p in r["evals"]]
                else:  # the first grid's runs have no token counts
                    continue
                axis.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8)
            curves = [[p[key] for p in r["evals"]] for r in runs[method]] if x == "step" else []
            if curves and len({len(c) for c in curves}) == 1:  # the mean over seeds, thick
                steps = [p["step"] for p in runs[method][0]["evals"]]
                axis.plot(steps, [statistics.fmean(v) for v in zip(*curves, strict=True)], color=color, linewidth=2.2)
            axis.plot([], [], color=color, linewidth=2.2, label=method)
        axis.set_title(title)
        axis.set_xlabel({"log": "step"}.get(x, x))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("thin: one line per seed; thick: the mean over seeds (panels against steps)")
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)


def markdown(table: dict, claim_rows: list[dict[str, str]], methods: list[str]) -> str:
    lines = [
        f"Equal training time: {table['common_train_s']:.0f} s (the shortest run). Mean over seeds [95% bootstrap "
        "interval], percent.",
        "",
        "| method | seeds | hard pass@1 box | hard pass@1 strict | all pass@1 box | all pass@16 box | all pass@16 strict "
        "| hard pass@1 box, equal time | entropy start -> final | logged collapsed share, start | selected share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        rows = table["methods"][method]

        def cell(key: str, rows: list[dict] = rows) -> str:
            ci = summarise(rows, key)
            return "n/a" if ci is None else f"{100 * ci[0]:.1f} [{100 * ci[1]:.1f}, {100 * ci[2]:.1f}]"

        shares = [summarise(rows, k) for k in ("edge/clip_cov_selected_share", "edge/kl_cov_selected_share")]
        share = next((f"{100 * s[0]:.2f}%" for s in shares if s is not None), "-")
        entropy = f"{summarise(rows, 'entropy start')[0]:.3f} -> {summarise(rows, 'entropy final')[0]:.3f}"
        lines.append(
            f"| {method} | {len(rows)} | {cell('final hard/box/pass@1')} | {cell('final hard/strict/pass@1')} | "
            f"{cell('final all/box/pass@1')} | {cell('final all/box/pass@16')} | {cell('final all/strict/pass@16')} | "
            f"{cell('equal-time hard/box/pass@1')} | {entropy} | {cell('collapsed share start')} | {share} |"
        )
    lines += ["", "| claim | verdict | evidence (paired by seed: method - grpo, mean [95% CI]) |", "|---|---|---|"]
    lines += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in claim_rows]
    lines += ["", "| method | cov mean | corr(Cov_t, dH_t) | predicted total dH (-lr * sum Cov) | measured dH |",
              "|---|---|---|---|---|"]  # fmt: skip
    for method in methods:
        rows = table["methods"][method]
        parts = [
            summarise(rows, f"cov {k}") for k in ("cov_mean", "corr_cov_dH", "predicted_total_dH", "measured_total_dH")
        ]
        lines.append(f"| {method} | " + " | ".join(fmt(p, False) for p in parts) + " |")
    if any(m in methods for m in ADVANTAGE_FIXES):
        lines += ["", *budget_table(table, methods)]
    if any(m in methods for m in COV_METHODS):
        lines += ["", *entropy_table(table, methods)]
    reflecting = [m for m in methods if any(v.get("reflection success run") is not None for v in table["methods"][m])]
    if reflecting:
        lines += ["", "GEC's reflection branch: share of the wrong responses it continued whose box is then right, "
                  "percent (mean over seeds [95% bootstrap interval]).", "",
                  "| method | over the run | first 20% of rollouts | last 20% of rollouts |", "|---|---|---|---|"]  # fmt: skip
        for method in reflecting:
            cells = [percent_cell(table["methods"][method], f"reflection success {w}") for w in ("run", "first 20%",
                     "last 20%")]  # fmt: skip
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    redoing = [m for m in methods if any(v.get("reflection redo run") is not None for v in table["methods"][m])]
    if redoing:
        lines += ["", "What the reflection branch writes after the cue: share of its continuations that redo the sum "
                  "(start with a worked column) rather than write a box at once, percent (runs that logged "
                  "`reflect/redo`).", "",
                  "| method | seeds | over the run | first 20% of rollouts | last 20% of rollouts |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for method in redoing:
            rows = [v for v in table["methods"][method] if v.get("reflection redo run") is not None]
            cells = [percent_cell(rows, f"reflection redo {w}") for w in ("run", "first 20%", "last 20%")]
            lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    if any(m in methods for m in ENTROPY_PEERS):
        lines += ["", *peer_matrix(table, methods)]
    return "\n".join(lines) + "\n"


def percent_cell(rows: list[dict], key: str) -> str:
    ci = summarise(rows, key)
    return "n/a" if ci is None else f"{100 * ci[0]:.1f} [{100 * ci[1]:.1f}, {100 * ci[2]:.1f}]"


def budget_table(table: dict, methods: list[str]) -> list[str]:
    """The hard part at the three budgets: equal steps, equal generated tokens, equal training time."""
    tokens = table.get("common_gen_tokens")
    grpo_tokens = statistics.fmean(v["gen_tokens"] or 0 for v in table["methods"]["grpo"])
    lines = [
        f"Hard part, box grader, percent (mean [95% bootstrap interval]). Equal tokens: {tokens or 0:,.0f} generated "
        f"tokens (the fewest of any run); equal time: {table['common_train_s']:.0f} training seconds.",
        "",
        "| method | generated tokens (x GRPO) | generation batches per rollout | hard pass@1, equal steps "
        "| hard pass@16, equal steps | hard pass@1, equal tokens | hard pass@16, equal tokens | hard pass@1, equal time "
        "| hard pass@16, equal time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        rows = table["methods"][method]
        ratio = statistics.fmean(v["gen_tokens"] or 0 for v in rows) / grpo_tokens if grpo_tokens else float("nan")
        batches = summarise(rows, "generation batches per rollout")
        cells = [percent_cell(rows, f"{when} hard/box/pass@{k}") for when in ("final", "equal-tokens", "equal-time")
                 for k in (1, 16)]  # fmt: skip
        lines.append(f"| {method} | {ratio:.2f} | {batches[0] if batches else 1:.2f} | " + " | ".join(cells) + " |")
    return lines


def entropy_table(table: dict, methods: list[str]) -> list[str]:
    """Entropy and exploration at the end of long runs: the collapse and what the Cov methods keep."""
    early = table["methods"]["grpo"][0]["early step"]
    lines = [
        f"Entropy (ratio to the first 5% of steps) and pass@k (percent, box grader unless said); step {early} is the "
        f"first evaluation after the start; pass@16 at equal pass@1 reads each run where its all pass@1 first reaches "
        f"{table['common_all_box_pass1']:.1%} (the lowest best pass@1 of any run).",
        "",
        f"| method | entropy at step {early} / start | entropy final / start | all pass@16: start | step {early} | final "
        "| all pass@16 strict: final | easy pass@16: final | hard pass@16: final | all pass@1: final "
        "| all pass@16 at equal pass@1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        rows = table["methods"][method]
        ratios = [summarise(rows, k) for k in ("entropy early / start", "entropy final / start")]
        cells = [f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]" if r else "n/a" for r in ratios]
        cells += [percent_cell(rows, k) for k in ("start all/box/pass@16", "early all/box/pass@16",
                  "final all/box/pass@16", "final all/strict/pass@16", "final easy/box/pass@16",
                  "final hard/box/pass@16", "final all/box/pass@1", "all/box/pass@16 at equal pass@1")]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def load_runs(
    out: Path, methods: list[str], seeds: list[int], reuse: list[Path] = (), reuse_methods: list[str] | None = None
) -> dict[str, list[dict]]:
    """The saved runs of each method, one per seed: the grid's own run first, a reused one only where it has none."""
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for folder in [out / "runs", *reuse]:
        for path in sorted(folder.glob("*.json")):
            r = json.loads(path.read_text())
            if folder != out / "runs" and not reused(r["method"], reuse_methods):
                continue
            if r["method"] in runs and r["seed"] in seeds and all(o["seed"] != r["seed"] for o in runs[r["method"]]):
                runs[r["method"]].append(r)
    return runs


def analyse(
    out: Path,
    methods: list[str],
    seeds: list[int],
    warmup_dir: Path | None = None,
    task: Task | None = None,
    reuse: list[Path] = (),
    reuse_methods: list[str] | None = None,
) -> dict[str, Any]:
    runs = load_runs(out, methods, seeds, reuse, reuse_methods)
    methods = [m for m in methods if runs[m]]
    table = metric_table(runs, methods)
    warmups = []
    warmup_dir = warmup_dir or out / "warmups"
    for path in sorted(warmup_dir.glob("seed-*.json")):
        info = json.loads(path.read_text())
        if "hard all-wrong share" not in info and (warmup_dir / path.stem / "config.json").exists():
            info.update(start_collapse(warmup_dir / path.stem, info["seed"], task=task))  # a grid from before it
            path.write_text(json.dumps(info))
        if info["seed"] in seeds:
            warmups.append(info)
    claim_rows = claims(table, methods, warmups) if "grpo" in methods else []
    grid = json.loads((out / "grid.json").read_text()) if (out / "grid.json").exists() else {}
    summary = {"grid": grid, "warmups": warmups, "table": table, "claims": claim_rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(markdown(table, claim_rows, methods))
    plot(runs, methods, out / "curves.png")
    return summary


# The flags' values when neither the grid's preset nor the command line sets them.
DEFAULTS: dict[str, Any] = {
    "grid": "first", "seeds": [0, 1, 2, 3, 4], "steps": 200, "batch_size": 32, "steps_per_generation": 4,
    "learning_rate": 1e-4, "eval_every": 50, "train_hard_share": 0.5, "eval_problems": 64, "warmup_target": 0.03,
    "warmup_min_steps": 150, "warmup_check_every": 50, "smoke": False, "analyse_only": False, "warmup_dir": None,
    "task": "addition", "warmups_only": False, "reuse": [], "reuse_methods": None,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags: those given, else ``--grid``'s preset, else ``DEFAULTS``."""
    # Without defaults, the parsed namespace holds only the flags given, so a preset never overrides one.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS
    )
    parser.add_argument("--grid", choices=list(GRIDS),
                        help="a preset of the flags below (see the module's docstring; default first); explicit "
                        "flags override it")  # fmt: skip
    parser.add_argument("--methods", nargs="*", choices=[*METHODS, *CALIBRATION])
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, help="completions per optimizer mini-batch")
    parser.add_argument("--steps-per-generation", type=int, help="optimizer mini-batches per rollout")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--train-hard-share", type=float,
                        help="share of hard problems in the training prompts (0: the easy part only, a narrower "
                        "task); the warm-up and the held-out evaluation keep the 50/50 mix")  # fmt: skip
    parser.add_argument("--eval-problems", type=int, help="held-out problems per difficulty")
    parser.add_argument("--warmup-target", type=float, help="hard-part sampled accuracy to stop at")
    parser.add_argument("--warmup-min-steps", type=int)
    parser.add_argument("--warmup-check-every", type=int)
    parser.add_argument("--smoke", action="store_true", help="every method x 2 seeds x 4 steps, tiny evaluations")
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--task", choices=["addition", "reflect"],
                        help="addition: answer with the box (rounds 1-2); reflect: worked sums and a reflective "
                        "warm-up (edge_trl.embedded_reflect)")  # fmt: skip
    parser.add_argument("--warmups-only", action="store_true",
                        help="train (or resume) the seeds' warm-ups, print them, and stop")  # fmt: skip
    parser.add_argument("--out", type=Path)
    parser.add_argument("--warmup-dir", type=Path, help="where the warm-ups live (default: <out>/warmups)")
    parser.add_argument("--reuse", nargs="*", type=Path,
                        help="runs folders of the same setting whose runs are read, not rerun (the peers grid: round "
                        "2's entropy runs)")  # fmt: skip
    parser.add_argument("--reuse-methods", nargs="*", choices=list(METHODS),
                        help="the methods whose runs --reuse provides (default: every method)")  # fmt: skip
    given = vars(parser.parse_args(argv))
    cli = argparse.Namespace(**{**DEFAULTS, **GRIDS[given.get("grid", DEFAULTS["grid"])], **given})
    if cli.warmup_dir is None or ("out" in given and "warmup_dir" not in given):
        cli.warmup_dir = cli.out / "warmups"  # a grid of one's own keeps its warm-ups beside it
    if cli.smoke:
        if "methods" not in given:
            cli.methods = list(METHODS)  # every method, whatever the grid
        cli.steps, cli.eval_every, cli.eval_problems, cli.batch_size, cli.steps_per_generation = 4, 2, 4, 16, 2
        cli.warmup_target, cli.warmup_min_steps, cli.warmup_check_every = 0.0, 1, 1
    if "grpo" not in cli.methods:
        cli.methods = ["grpo", *cli.methods]  # the baseline of every claim
    return cli


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = parse_args(argv)
    (cli.out / "runs").mkdir(parents=True, exist_ok=True)
    if cli.warmups_only:
        infos = [json.loads(warm_up(cli.warmup_dir, s, cli).with_suffix(".json").read_text()) for s in cli.seeds]
        for info in infos:
            print(json.dumps(info), flush=True)
        if cli.task == "reflect":  # the precondition, decided before any RL run
            precondition = reflection_claims({"methods": {}}, [], infos)[0]
            print(f"{precondition['claim']}: {precondition['verdict']} ({precondition['evidence']})", flush=True)
        return {"warmups": infos}
    if not cli.analyse_only:
        grid_path = cli.out / "grid.json"
        session = {
            "id": f"{time.time():.0f}-{os.getpid()}",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load": [],
            "runs": [],
            "args": {k: str(v) for k, v in vars(cli).items()},
        }
        begin = time.perf_counter()
        jobs = [(s, m) for i, s in enumerate(cli.seeds) for m in cli.methods[i % len(cli.methods) :] + cli.methods[: i % len(cli.methods)]]  # fmt: skip
        for done, (seed, method) in enumerate(jobs, start=1):
            path = cli.out / "runs" / f"{method}-{seed}.json"
            lock = path.with_suffix(".lock")
            if reused(method, cli.reuse_methods) and any((folder / path.name).exists() for folder in cli.reuse):
                continue  # a saved run of the same setting
            if path.exists() or not take_job(lock):
                continue
            try:
                if path.exists():  # finished by another process between the check and the lock
                    continue
                model_dir = warm_up(cli.warmup_dir, seed, cli)
                result = run(method, seed, model_dir, cli)
                path.write_text(json.dumps(result))
            finally:
                lock.unlink(missing_ok=True)
            session["load"].append(os.getloadavg()[0])
            session["runs"].append(path.stem)
            session["seconds"] = time.perf_counter() - begin
            save_session(grid_path, session)
            last = result["evals"][-1]
            print(
                f"[{done:>2}/{len(jobs)}] {time.perf_counter() - begin:7.0f}s  seed {seed} {method:<9} "
                f"{result['train_s']:5.0f}s train  hard pass@1 box {last['hard/box/pass@1']:.1%}  "
                f"all pass@16 box {last['all/box/pass@16']:.1%}  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return analyse(cli.out, cli.methods, cli.seeds, cli.warmup_dir, Task(cli.task), cli.reuse, cli.reuse_methods)


def reused(method: str, reuse_methods: list[str] | None) -> bool:
    return reuse_methods is None or method in reuse_methods


if __name__ == "__main__":
    main()
