"""Every shipped accelerate config that can run on CPU, end to end on 2 CPU processes, as a user runs it.

For each config (DDP through ``cpu``, DeepSpeed ZeRO-1/2/3 and ZeRO-3 with offload; LoRA for ZeRO-2 and ZeRO-3) one
``edge-trl train`` run of the default method (EDGE-GRPO: GEC's collective generation, EDA's gathers) plus KL-Cov (its
covariance reductions), pushing to a local stand-in of the Hub, and one run resumed from its first checkpoint. Each
case checks: the loss is finite and the weights moved; the final folder loads with ``from_pretrained`` (or
``PeftModel.from_pretrained``); the resumed run ends with the same weights and the same last step as the
uninterrupted one; the push carried the weights, byte for byte. FSDP cannot run on CPU through accelerate (see
``edge_trl.accelerate_setup.FSDP_NEEDS_GPU``): torch's FSDP2 is exercised directly instead, with edge-trl's save check.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from edge_trl.accelerate_configs import CONFIG_DIR

from _helpers import launch_two_ranks
from _stub_hub import REPO, hub_env, running_stub_hub

pytestmark = pytest.mark.slow

TINY = ["--per-device-train-batch-size", "4", "--num-generations", "4", "--max-completion-length", "16",
        "--gec-max-new-tokens", "32", "--learning-rate", "1e-3", "--logging-steps", "1"]  # fmt: skip
# KL-Cov acts only on a policy that moved since the rollout: 2 optimizer steps per rollout, 5% of the tokens.
KL_COV = ["--cov-mode", "kl_cov", "--kl-cov-ratio", "0.05", "--steps-per-generation", "2"]
CASES = [("cpu", False), ("zero1", False), ("zero2", False), ("zero2", True), ("zero3", False), ("zero3", True),
         ("zero3_offload", False)]  # fmt: skip


def edge_trl(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge_trl.cli.main", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)  # fmt: skip


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def weights(folder: Path, lora: bool) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ("adapter_model.safetensors" if lora else "model.safetensors")))


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]


def losses(output_dir: Path) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in log_history(output_dir) if "loss" in entry}


@pytest.mark.parametrize(("config", "lora"), CASES, ids=[f"{c}-{'lora' if lora else 'full'}" for c, lora in CASES])
def test_config_trains_saves_resumes_and_pushes(tmp_path, tiny_model_path, small_data_file, config, lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = ["--model", str(tiny_model_path), "--dataset", str(small_data_file), "--accelerate-config", config,
              "--num-processes", "2", "--max-steps", "2", "--save-steps", "1", *TINY, *KL_COV,
              *(["--lora"] if lora else [])]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    with running_stub_hub() as hub:
        first = edge_trl("train", *common, "--output-dir", str(full), "--push-to-hub", "--hub-model-id", REPO,
                         env=hub_env(hub))  # fmt: skip
        succeeded(first)
        assert f"training finished; model saved in {full}" in first.stdout
        # GEC's reflections ran (its collective generation), KL-Cov penalised tokens at step 2
        logged = {key for entry in log_history(full) for key in entry}
        assert {"gec/reflect_count", "edge/kl_cov_penalty", "edge/eda_scale_max"} <= logged
        assert all(math.isfinite(loss) for loss in losses(full).values()) and sorted(losses(full)) == [1, 2]

        # the final folder loads, and its weights moved
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        initial = {name: p.detach().clone() for name, p in base.named_parameters()}
        if lora:
            model = PeftModel.from_pretrained(base, full)
            lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
            assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at 0
        else:
            model = AutoModelForCausalLM.from_pretrained(full)
            assert any(not torch.equal(initial[name], p) for name, p in model.named_parameters())

        # the push carried the weights, byte for byte
        final = next(commit for commit in hub.commits if commit["message"] == "End of training")
        weight_file = "adapter_model.safetensors" if lora else "model.safetensors"
        assert final["content"][weight_file] == (full / weight_file).read_bytes()

    # resumed from checkpoint-1 (inside a rollout: steps_per_generation=2), it ends where the uninterrupted run ended
    second = edge_trl("train", *common, "--output-dir", str(resumed), "--resume-from-checkpoint",
                      str(full / "checkpoint-1"))  # fmt: skip
    succeeded(second)
    assert losses(resumed)[2] == pytest.approx(losses(full)[2], rel=1e-5, abs=1e-7)
    expected, got = weights(full, lora), weights(resumed, lora)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_zero3_without_16bit_save_is_not_called_saved_and_says_how_to_recover(tmp_path, tiny_model_path,
                                                                                small_data_file):  # fmt: skip
    """The config that "saved" nothing loadable (zero3 before `zero3_save_16bit_model: true`): exit 4, no final push,
    the checkpoints kept, and the printed recovery command gives weights that load."""
    from transformers import AutoModelForCausalLM

    config = yaml.safe_load((CONFIG_DIR / "zero3.yaml").read_text())
    del config["deepspeed_config"]["zero3_save_16bit_model"]
    config_file = tmp_path / "zero3_no_16bit.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    with running_stub_hub() as hub:
        result = edge_trl("train", "--model", str(tiny_model_path), "--dataset", str(small_data_file),
                          "--accelerate-config", str(config_file), "--num-processes", "2", "--max-steps", "1",
                          "--output-dir", str(out), *TINY, "--push-to-hub", "--hub-model-id", REPO,
                          env=hub_env(hub))  # fmt: skip
        assert not any(commit["message"] == "End of training" for commit in hub.commits)
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-6000:]
    assert "training finished; model saved" not in result.stdout
    assert f"the model saved in {out} does not load" in result.stderr
    assert "model.safetensors" in result.stderr and "zero3_save_16bit_model: true" in result.stderr
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    command = result.stderr.split("rebuild the weights with `", 1)[1].split("`", 1)[0]
    interpreter, *arguments = command.split()
    assert interpreter == "python", command  # the user's environment's Python: here, the one running the tests
    recovered = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=300)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    AutoModelForCausalLM.from_pretrained(out)  # loads now


# -- GEC under sharding with uneven work ---------------------------------------------------------------------------------


def test_gec_with_one_rank_all_correct_does_not_deadlock_under_zero3_and_matches_ddp(tmp_path, tiny_model_path):
    """Rank 0's responses are all correct, rank 1's all wrong and all reflected: under ZeRO-3 generation is collective,
    so rank 0 joins rank 1's reflection call with a throw-away prompt. Same result as DDP."""
    runs = {config: launch_two_ranks(tiny_model_path, tmp_path / config, "gec_uneven", port, config=config)
            for config, port in (("cpu", 29541), ("zero3", 29542))}  # fmt: skip
    for ranks in runs.values():
        reflected = [[e["reflected"] for e in r["gec_calls"]] for r in ranks]
        assert reflected[0] == [0] * len(reflected[0]) and all(n > 0 for n in reflected[1])  # uneven, every rollout
        # rank 1's reflections stay wrong and rank 0's rows are right: read at rank 0's rows, the share would be 1
        for r in ranks:
            success = [e["gec/reflect_success"] for e in r["log_history"] if "gec/reflect_success" in e]
            assert success == [0.0] * len(reflected[1])
    ddp, zero3 = runs["cpu"], runs["zero3"]
    assert [r["gec_calls"] for r in zero3] == [r["gec_calls"] for r in ddp]  # the same completions, corrected alike
    for key in ("loss", "gec/accuracy_after", "gec/reflect_count"):
        ddp_values = [e[key] for e in ddp[0]["log_history"] if key in e]
        assert ddp_values and [e[key] for e in zero3[0]["log_history"] if key in e] == pytest.approx(ddp_values, 1e-4)
    assert zero3[0]["param_checksum"] == pytest.approx(ddp[0]["param_checksum"], rel=1e-6)


# -- several machines ----------------------------------------------------------------------------------------------------


def machines_command(model: Path, data: Path, out: Path, port: int, steps: int, timeout: int) -> list[str]:
    return [sys.executable, "-m", "edge_trl.cli.main", "train", "--model", str(model), "--dataset", str(data),
            "--accelerate-config", "cpu", "--num-processes", "2", "--num-machines", "2", "--main-process-ip",
            "127.0.0.1", "--main-process-port", str(port), "--output-dir", str(out), "--max-steps", str(steps),
            "--ddp-timeout", str(timeout), *TINY]  # fmt: skip


def start_machine(command: list[str], rank: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*command, "--machine-rank", str(rank)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env)  # fmt: skip


def test_two_machines_train_together_and_save_once(tmp_path, tiny_model_path, small_data_file):
    out = tmp_path / "run"
    command = machines_command(tiny_model_path, small_data_file, out, 29551, steps=2, timeout=120)
    machines = [start_machine(command, rank, tmp_path / f"machine{rank}.log") for rank in (0, 1)]
    codes = [machine.wait(timeout=600) for machine in machines]
    logs = [(tmp_path / f"machine{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert f"training finished; model saved in {out}" in logs[0]
    assert "training finished" not in logs[1]  # one save, by the main process
    assert "--num_machines 2 --machine_rank 1" in logs[1]
    # one world of 2 processes: a random-number state per process, each machine's run file kept apart
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (out / "edge_trl_run.yaml").is_file() and (out / "edge_trl_run.machine1.yaml").is_file()
    assert (out / "model.safetensors").is_file()


def _tree(pid: int) -> list:
    import psutil

    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_when_one_machine_dies_or_freezes_the_other_exits_with_a_message(tmp_path, tiny_model_path,
                                                                           small_data_file, how):  # fmt: skip
    """Killed: its connections close, the other machine fails at its next collective. Frozen (SIGSTOP): nothing
    closes, the other gives up after --ddp-timeout (10 s here; the default is 1800 s)."""
    out, timeout = tmp_path / "run", 10
    command = machines_command(tiny_model_path, small_data_file, out, 29552 + (how == "frozen"), 10_000, timeout)
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    main, other = (start_machine(command, rank, logs[rank]) for rank in (0, 1))
    try:
        deadline = time.monotonic() + 300
        while "'loss'" not in logs[0].read_text():  # training is under way
            assert main.poll() is None and time.monotonic() < deadline, logs[0].read_text()[-3000:]
            time.sleep(0.5)
        processes = _tree(other.pid)
        stopped = time.monotonic()
        for process in processes:
            process.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        code = main.wait(timeout=timeout + 120)
        waited = time.monotonic() - stopped
    finally:
        for process in _tree(other.pid) if other.poll() is None else []:
            process.kill()
        main.kill()
    output = logs[0].read_text()
    assert code != 0, output[-3000:]
    assert "this is machine rank 0 of 2" in output and f"--ddp-timeout {timeout} s" in output
    if how == "frozen":
        assert "Timed out" in output and timeout - 1 <= waited, output[-3000:]
    else:
        assert "Connection closed by peer" in output and waited < timeout + 30


# -- FSDP ----------------------------------------------------------------------------------------------------------------


def test_fsdp_on_cpu_is_refused_with_the_reason_for_shipped_and_own_configs(tmp_path, tiny_model_path, small_data_file):
    """accelerate drops the FSDP plugin on CPU processes and trains DDP instead: a shipped or a user's FSDP config is
    refused on a machine without GPU rather than silently run as something else."""
    own = yaml.safe_load((CONFIG_DIR / "fsdp.yaml").read_text()) | {"use_cpu": True, "num_processes": 2}
    own_file = tmp_path / "fsdp_cpu.yaml"
    own_file.write_text(yaml.safe_dump(own))
    for config in ("fsdp", str(own_file)):
        result = edge_trl(
            "train",
            "--model",
            str(tiny_model_path),
            "--dataset",
            str(small_data_file),
            "--accelerate-config",
            config,
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
        )
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
        assert "FSDP cannot run on CPU processes through accelerate" in result.stderr
        assert not (tmp_path / "out").exists()  # refused before any process started


def test_fsdp2_shards_generates_unevenly_trains_and_saves_on_cpu(tmp_path, tiny_model_path):
    script = Path(__file__).parent / "scripts" / "fsdp2_cpu.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             "29562", str(script), str(tiny_model_path), str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    found = json.loads((tmp_path / "result.json").read_text())
    assert found["generated_lengths"] == [6 + 4, 6 + 24]  # no deadlock although rank 0 stopped first
    assert math.isfinite(found["loss"]) and found["moved"] and found["reloaded_equal"]
    assert found["full_problems"] == []  # the gathered full state dict passes edge-trl's save check
    assert any("has shape" in problem for problem in found["shard_problems"])  # a save of local shards is caught


# -- the main use case's GPU settings, run on CPU ------------------------------------------------------------------------


def test_single_gpu_defaults_of_the_main_use_case_train_two_steps_on_cpu(tmp_path, tiny_model_path, small_data_file,
                                                                         monkeypatch):  # fmt: skip
    """`edge-trl train --model M --lora` resolved as on a one-GPU machine (bf16, activation checkpointing, LoRA, the
    micro-batch of 8 split into 4 x 2 accumulation steps), then trained 2 steps on CPU with exactly those settings
    (only `use_cpu` added: the device; lengths shortened for the tiny model)."""
    from edge_trl import launch
    from edge_trl.launch import TrainRequest

    monkeypatch.setattr(launch, "gpu_count", lambda precise=False: 1)
    flags = {"model": str(tiny_model_path), "dataset": str(small_data_file), "lora": True, "max_steps": 2,
             "max_completion_length": 16, "gec_max_new_tokens": 32, "output_dir": str(tmp_path / "run"),
             "save_strategy": "no"}  # fmt: skip
    prepared = launch.resolve(TrainRequest(flags=flags))
    settings = prepared.run.trainer
    assert prepared.run.accelerate_config == "single_gpu" and prepared.run.lora
    assert settings["bf16"] and settings["activation_checkpointing"]
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]) == (4, 2)
    assert settings["num_generations"] == 8 and "use_cpu" not in settings

    run = prepared.run
    run.trainer = {**settings, "use_cpu": True}
    run_file = tmp_path / "run.yaml"
    run.save(run_file)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "edge_trl.worker", "--run", str(run_file)], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "training finished" in result.stdout
    args = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert args.bf16 and args.activation_checkpointing and args.gradient_accumulation_steps == 2
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_bf16_on_cpu_is_allowed_with_a_warning(tiny_model_path, small_data_file):
    result = edge_trl("train", "--model", str(tiny_model_path), "--dataset", str(small_data_file), "--bf16",
                      "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    flags = set(Path("/proc/cpuinfo").read_text().split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert "bf16 on CPU" in result.stderr
    assert ("should run faster than fp32" if native else "is emulated and slower") in result.stderr
    assert "bf16: true" in result.stdout
