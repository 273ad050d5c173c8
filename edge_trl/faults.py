"""Faults a long run must survive: a reward function that fails on one completion, and preemption.

**Reward functions** (``guard_reward``). A user reward can raise, return NaN/inf or hang on one pathological
completion (math-verify can, on some LaTeX). EdgeGRPOTrainer wraps every plain-callable reward so that none of these
stops or hangs the run:

* the function runs on the whole batch first, in a helper thread, with ``reward_timeout`` seconds to return;
* if it raises or times out, it runs again on each completion alone (each with ``reward_timeout`` seconds), so only
  the completions it fails on are lost;
* a failed completion (raised, timed out, NaN, +-inf, not a number) scores ``None``, which TRL 1.16 turns into NaN:
  left out of the weighted sum of rewards (``nansum``) and, when no reward scores it, out of its group's baseline,
  with advantage 0 (TRL's "unscorable" completion). So a fault neither rewards nor punishes the model;
* ``rewards/<name>/faults`` (through TRL's ``log_metric``) logs the number of failed completions per call, averaged over
  the logging steps, and a warning names the function, the fault and one example completion.

A timed-out call cannot be killed: the thread is asked to stop (an exception raised in it at its next Python bytecode,
which ends a pure-Python loop; not a blocking C call such as ``time.sleep``) and is left behind as a daemon thread.
In the helper thread ``signal``-based timeouts do not work (math-verify's own are off there; ``reward_timeout``
replaces them).

**Preemption** (``PreemptionCallback``). SIGTERM (what SLURM and spot instances send before killing a job) and SIGINT
(Ctrl-C) set a flag; at the end of the current optimizer step every process agrees (one all-reduce of the flag, so all
stop at the same step), a checkpoint is saved and training stops. Repeated signals are ignored (SLURM signals every
process and torchrun forwards the signal to the ranks too). The step and the save must fit in the grace period the
scheduler gives before SIGKILL (torchrun's own: 30 s after it forwards the signal).

**A Hub upload that fails during training** (``warn_if_upload_fails``). With ``push_to_hub`` and a ``hub_strategy``
other than ``end``, transformers 5.24 uploads ``output_dir`` after each save in background futures
(``Trainer._push_from_checkpoint``, ``run_as_future=True``) and never looks at their outcome: a failed upload stops
nothing but says nothing either. Each upload gets a callback that warns when it fails. The next save uploads the whole
``output_dir`` again (transformers skips a save only while the previous upload is still running), and the push at the
end of training uploads everything; if that one fails too, the worker exits 3 with the model saved locally.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# Keyword arguments TRL 1.16 passes to reward functions that are not one value per completion.
_SHARED_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


class RewardTimeout(Exception):
    """A reward function did not return within ``reward_timeout`` seconds."""


def _call_with_timeout(func: Callable[..., Any], kwargs: dict[str, Any], timeout: float) -> Any:
    """``func(**kwargs)`` in a daemon thread; raises what it raised, or RewardTimeout after ``timeout`` seconds."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func(**kwargs)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True, name="edge-trl-reward")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        # Ask the thread to stop: raises RewardTimeout in it at its next bytecode (CPython's documented C API).
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(RewardTimeout))
        raise RewardTimeout(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _score(value: Any) -> float | None:
    """A reward value as a finite float, None for a missing one; raises ValueError for NaN, inf or a non-number."""
    if value is None:
        return None
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned {score}")
    return score


def guard_reward(func: Callable[..., Sequence[Any]], timeout: float) -> Callable[..., list[float | None]]:
    """``func`` (a TRL reward function) that never raises, hangs or returns NaN/inf for one completion: see the module
    docstring. Keeps ``func``'s name (TRL names the reward metrics after it)."""
    name = getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def guarded(**kwargs: Any) -> list[float | None]:
        completions = kwargs["completions"]
        count = len(completions)
        faults: list[tuple[int, str]] = []  # (completion index, what went wrong)
        try:
            values = list(_call_with_timeout(func, kwargs, timeout))
        except Exception as error:  # one bad completion: score each alone, to lose only the bad ones
            values = []
            for index in range(count):
                single = {k: (v if k in _SHARED_KWARGS or not _per_completion(v, count) else v[index : index + 1])
                          for k, v in kwargs.items()}  # fmt: skip
                try:
                    result = list(_call_with_timeout(func, single, timeout))
                    values.append(result[0] if len(result) == 1 else math.nan)
                except Exception as single_error:
                    values.append(None)
                    faults.append((index, f"{type(single_error).__name__}: {single_error}"))
            if not faults:  # every completion scored alone: the batch call itself failed
                faults.append((-1, f"{type(error).__name__}: {error} (on the batch; each completion alone scored)"))
        if len(values) != count:
            return values  # TRL raises its own error naming the function and the lengths
        scores: list[float | None] = []
        for index, value in enumerate(values):
            try:
                scores.append(_score(value))
            except (TypeError, ValueError) as error:
                scores.append(None)
                faults.append((index, f"{error}" if isinstance(error, ValueError) else f"returned {value!r}"))
        failed = sum(index >= 0 for index, _ in faults)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"rewards/{name}/faults", float(failed))
        if faults:
            index, problem = faults[0]
            example = f"; e.g. completion {str(completions[index])[:200]!r}" if index >= 0 else ""
            logger.warning(
                "reward function %r failed on %d of %d completions (%s)%s. They score None: left out of the reward "
                "sum and of their group's baseline (advantage 0). See edge_trl.faults.",
                name, failed, count, problem, example,
            )  # fmt: skip
        return scores

    return guarded


def _per_completion(value: Any, count: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == count


def guard_reward_funcs(reward_funcs: Any, timeout: float) -> Any:
    """TRL's ``reward_funcs`` argument with every plain synchronous callable guarded; models (given by name or as a
    module) and async functions are left as they are."""
    import inspect

    import torch

    def guard(func: Any) -> Any:
        if isinstance(func, (str, torch.nn.Module)) or not callable(func) or inspect.iscoroutinefunction(func):
            return func
        return guard_reward(func, timeout)

    if isinstance(reward_funcs, (list, tuple)):
        return [guard(func) for func in reward_funcs]
    return None if reward_funcs is None else guard(reward_funcs)


def warn_if_upload_fails(upload: Future, step: int) -> None:
    """Warn (once, when it ends) if the background Hub ``upload`` of the save at ``step`` failed."""
    if getattr(upload, "_edge_trl_watched", False):
        return
    upload._edge_trl_watched = True  # transformers keeps earlier uploads in the same list

    def report(done: Future) -> None:
        error = None if done.cancelled() else done.exception()
        if error is not None:
            logger.warning(
                "uploading the checkpoint of step %d to the Hub failed (%s: %s). Training goes on; the next save "
                "uploads again, and so does the end of training.",
                step, type(error).__name__, str(error)[:300],
            )  # fmt: skip

    upload.add_done_callback(report)


class PreemptionCallback(TrainerCallback):
    """Save a checkpoint at the next optimizer-step boundary after SIGTERM or SIGINT, then stop training.

    ``install()`` sets the signal handlers (main thread only). After ``trainer.train()`` returns, ``signal_name`` is
    the signal received (None: none) and ``stopped_early`` whether training stopped before its last step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_early = False

    @property
    def signal_name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            return  # already stopping (SLURM and torchrun both signal each rank)
        self.received = signum
        print(
            f"edge-trl: {signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
            "stopping.",
            file=sys.stderr,
            flush=True,
        )

    def _any_process_signalled(self) -> bool:
        import torch
        import torch.distributed as dist

        flag = self.received is not None
        if not (dist.is_available() and dist.is_initialized()):
            return flag
        from accelerate import PartialState

        tensor = torch.tensor([int(flag)], device=PartialState().device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)  # every process stops at the same step
        return bool(tensor.item())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._any_process_signalled():
            self.stopped_early = state.global_step < state.max_steps
            control.should_save = True
            control.should_training_stop = True
        return control
