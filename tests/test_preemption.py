"""Preemption and a dead rank on the 2-process CPU run, with real signals.

* SIGTERM to the `edge-trl train` launcher (what `kill`, SLURM and spot instances send; torchrun forwards it to each
  rank): the ranks save a complete checkpoint at the next step boundary, the run exits 143 with the resume command,
  and `--resume-from-checkpoint last` continues from it.
* Ctrl-C in a terminal: SIGINT to the launcher's whole process group (the launcher and every rank): the same, exit 130.
* SIGKILL to one rank mid-run: the other is stopped and the launcher exits within a minute, not after a 30-minute
  collective timeout, naming the dead rank and the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from edge_trl.checkpoints import checkpoint_problem

TINY_RUN = ["--set", "max_completion_length=8", "--set", "num_generations=4", "--set", "per_device_train_batch_size=4",
            "--method", "grpo", "--reward", "format", "--num-processes", "2", "--accelerate-config", "cpu",
            "--set", "save_steps=1000", "--set", "logging_steps=1"]  # fmt: skip


class Launch:
    """`edge-trl train` in a child process, its output (stdout and stderr) collected line by line."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        # Its own process group, as a shell gives a foreground job: what Ctrl-C signals.
        self.process = subprocess.Popen([sys.executable, "-m", "edge_trl.cli.main", "train", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, self.output[-5000:]
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: " + self.output[-3000:]
            time.sleep(0.2)

    def ranks(self) -> list[psutil.Process]:
        return [
            p for p in psutil.Process(self.process.pid).children(recursive=True) if "worker.py" in " ".join(p.cmdline())
        ]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_next_step_and_resumes(tmp_path, tiny_model_path, data_file):
    out = tmp_path / "run"
    common = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--output-dir", str(out), *TINY_RUN]
    run = Launch(*common, "--max-steps", "200")
    run.wait_for("'loss'")  # training is under way (the first step is logged)
    os.kill(run.process.pid, signal.SIGTERM)
    assert run.process.wait(timeout=120) == 143, run.output[-5000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_problem(checkpoints[0]) is None
    step = int(checkpoints[0].name.split("-")[1])
    assert 1 <= step < 200
    assert "SIGTERM received: saving a checkpoint at the end of this step" in run.output
    assert f"stopped by SIGTERM after step {step}; checkpoint saved in {checkpoints[0]}" in run.output
    assert "--resume-from-checkpoint last" in run.output

    resumed = Launch(*common, "--max-steps", str(step + 1), "--resume-from-checkpoint", "last")
    assert resumed.process.wait(timeout=300) == 0, resumed.output[-5000:]
    state = json.loads((out / f"checkpoint-{step + 1}" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, step + 2))  # continued


@pytest.mark.slow
def test_ctrl_c_saves_a_complete_checkpoint_and_exits_130(tmp_path, tiny_model_path, data_file):
    out = tmp_path / "run"
    run = Launch("--model", str(tiny_model_path), "--dataset", str(data_file), "--output-dir", str(out), *TINY_RUN,
                 "--max-steps", "200")  # fmt: skip
    run.wait_for("'loss'")
    assert len(run.ranks()) == 2
    os.killpg(run.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: every process of the job
    assert run.process.wait(timeout=120) == 130, run.output[-5000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_problem(checkpoints[0]) is None, checkpoints
    step = int(checkpoints[0].name.split("-")[1])
    assert f"stopped by SIGINT after step {step}; checkpoint saved in {checkpoints[0]}" in run.output
    assert "Resume with the same command plus --resume-from-checkpoint last" in run.output
    assert "KeyboardInterrupt" not in run.output


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_within_a_minute(tmp_path, tiny_model_path, data_file):
    run = Launch("--model", str(tiny_model_path), "--dataset", str(data_file), "--output-dir", str(tmp_path / "run"),
                 *TINY_RUN, "--max-steps", "500")  # fmt: skip
    run.wait_for("'loss'")
    ranks = run.ranks()
    assert len(ranks) == 2, [p.cmdline() for p in ranks]
    killed_at = time.monotonic()
    ranks[1].send_signal(signal.SIGKILL)
    code = run.process.wait(timeout=120)
    waited = time.monotonic() - killed_at
    assert code != 0 and waited < 60, (code, waited, run.output[-3000:])
    assert "training failed" in run.output
    assert f"(pid {ranks[1].pid}) was killed by SIGKILL (exit code 137)" in run.output  # the cause, named
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)  # no rank left behind
