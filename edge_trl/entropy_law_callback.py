"""The training callback of the entropy-performance law (``EdgeGRPOConfig.entropy_law``); the law itself, its fit and
its points are in `edge_trl.entropy_law`."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from edge_trl.entropy_law import ENTROPY_KEY, law_logs, metric_key


class EntropyLawCallback(TrainerCallback):
    """Refits the law at every log and adds ``entropy_law/*`` to that log (see [`law_logs`][edge_trl.entropy_law.law_logs]).

    It reads only ``state.log_history``, whose metrics TRL has already averaged over processes, so every process logs
    the same values, and a resumed run (whose history comes back from the checkpoint) the same values as an
    uninterrupted one. It must run before the callbacks that report logs (the trainer puts it first).
    """

    def __init__(self, metric: str, window: int, min_r2: float, metric_max: float | None) -> None:
        self.metric, self.window, self.min_r2, self.metric_max = metric, window, min_r2, metric_max

    @classmethod
    def for_trainer(cls, trainer: Any) -> EntropyLawCallback:
        args = trainer.args
        strategy = getattr(args, "eval_strategy", "no")
        evaluates = getattr(strategy, "value", strategy) != "no"
        metric = metric_key(args.entropy_law_metric, list(trainer.reward_func_names), evaluates)
        return cls(metric, args.entropy_law_window, args.entropy_law_min_r2, args.entropy_law_metric_max)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        # Only logs that bring a point's data (not the end-of-training summary, nor an evaluation of another metric).
        if logs is None or not state.log_history or (ENTROPY_KEY not in logs and self.metric not in logs):
            return
        history = state.log_history
        # The trainer appended this log to the history before calling back; the law's own keys are not inputs.
        update = law_logs(history, self.metric, self.window, self.min_r2, self.metric_max)
        if update:
            logs.update(update)
            history[-1].update(update)
