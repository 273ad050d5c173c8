"""The accelerate side of `edge-trl train`: which shipped config (or file), how many processes, which launcher
arguments and environment, for the machine the command is for. No torch import unless a real run counts GPUs."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge_trl.errors import LaunchError
from edge_trl.presets import DEEPSPEED_CONFIGS, GPU_ONLY_CONFIGS, shipped_accelerate_configs
from edge_trl.run_spec import RunSpec

# Where FSDP stops on CPU processes (accelerate 1.15, torch 2.13), tested in tests/test_distributed.py: torch's FSDP2
# (`fully_shard`) itself shards, trains and generates on CPU over gloo, but accelerate's AcceleratorState switches to
# FSDP only from a GPU-family distributed type (accelerate/state.py, AcceleratorState.__init__): CPU processes are
# MULTI_CPU with use_cpu (PartialState._prepare_backend), or NO without, so the FSDP plugin would be dropped and the
# model silently wrapped in DDP instead.
FSDP_NEEDS_GPU = (
    "FSDP cannot run on CPU processes through accelerate (1.15): it would drop the FSDP plugin and train plain DDP "
    "without saying so."
)


def gpu_count(precise: bool = False) -> int:
    """The CUDA devices this machine offers to a run.

    ``precise``: ask torch (seconds to import; used before a real launch). Otherwise count the devices the NVIDIA
    driver lists in /proc/driver/nvidia/gpus, limited by CUDA_VISIBLE_DEVICES: instant, enough for a dry run.
    """
    if precise:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    driver = Path("/proc/driver/nvidia/gpus")
    devices = len(list(driver.iterdir())) if driver.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [item for item in visible.split(",") if item.strip()]
        ids = ids[: next((i for i, item in enumerate(ids) if item.strip() == "-1"), len(ids))]
        devices = min(devices, len(ids))
    return devices


@dataclass
class AccelerateSetup:
    """What `accelerate launch` gets: its arguments, the process count, the environment."""

    config_name: str
    args: list[str]
    processes: int
    env: dict[str, str]
    target_has_gpu: bool  # the machine the command is for (a dry run may prepare a GPU command on a CPU machine)
    warnings: list[str]


def accelerate_config_path(name: str) -> tuple[str, Path]:
    shipped = shipped_accelerate_configs()
    if name in shipped:
        return name, shipped[name]
    path = Path(name).expanduser()
    if path.is_file():
        return str(path), path
    raise LaunchError(
        f"--accelerate-config {name!r}: not a shipped config ({', '.join(shipped)}) nor an existing file."
    )


def resolve_accelerate(run: RunSpec, gpus: int, dry_run: bool) -> AccelerateSetup:
    name, config_path = accelerate_config_path(run.accelerate_config or ("single_gpu" if gpus else "cpu"))
    config = yaml.safe_load(config_path.read_text()) or {}
    warnings = []
    target_has_gpu = gpus > 0
    fsdp = config.get("distributed_type") == "FSDP"
    if (name in GPU_ONLY_CONFIGS or fsdp) and not gpus:
        why = f" {FSDP_NEEDS_GPU}" if fsdp else ""
        if not dry_run:
            raise LaunchError(
                f"--accelerate-config {name} needs a GPU, and this machine has none (no CUDA device).{why} Use "
                "--accelerate-config cpu to train on CPU processes, or --dry-run to print the command for a GPU machine."
            )
        target_has_gpu = True  # a dry run prepares the command for a GPU machine
        warnings.append(
            f"this machine has no GPU: the command below is for a GPU machine (--accelerate-config {name}); "
            "running it here would fail."
        )
    if name in DEEPSPEED_CONFIGS and not gpus:
        warnings.append(
            f"this machine has no GPU: --accelerate-config {name} runs DeepSpeed on CPU processes here (slow; meant "
            "for tests). On a GPU machine the command uses one process per GPU."
        )
    if name in DEEPSPEED_CONFIGS and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError(
            f"--accelerate-config {name} uses DeepSpeed, which is not installed: "
            'pip install --no-build-isolation "edge-trl[deepspeed]"'
        )
    if run.num_machines < 1 or not 0 <= run.machine_rank < run.num_machines:
        raise LaunchError(
            f"--num-machines {run.num_machines} --machine-rank {run.machine_rank}: need num_machines >= 1 and "
            "0 <= machine_rank < num_machines."
        )
    if run.num_processes is not None:
        processes = run.num_processes
    elif name == "single_gpu":
        processes = 1
    elif gpus and name in (*GPU_ONLY_CONFIGS, *DEEPSPEED_CONFIGS):
        processes = gpus * run.num_machines
    else:
        processes = int(config.get("num_processes", 1))
        if target_has_gpu and not gpus:
            warnings.append(f"{processes} processes in all, from the config: pass --num-processes for your machines.")
    if processes < 1:
        raise LaunchError(f"--num-processes {processes}: must be at least 1.")
    if name == "single_gpu" and processes > 1:
        raise LaunchError("--accelerate-config single_gpu runs one process: use multi_gpu (or a zero config).")

    on_cpu = not target_has_gpu
    if on_cpu and processes == 1 and name == "cpu":  # one CPU process: accelerate's plain CPU launcher
        args = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]  # fmt: skip
    else:
        args = ["--config_file", str(config_path), "--num_processes", str(processes)]
        args += ["--num_machines", str(run.num_machines), "--machine_rank", str(run.machine_rank)]
        if run.main_process_ip:
            args += ["--main_process_ip", run.main_process_ip]
        if run.main_process_port:
            args += ["--main_process_port", str(run.main_process_port)]
        if on_cpu and processes > 1 and config.get("distributed_type") == "MULTI_GPU":
            args += ["--multi_gpu"]  # several CPU processes: torchrun + gloo (accelerate's --cpu starts only one)
    env = {}
    if on_cpu:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        # DeepSpeed, once imported, warns "Setting accelerator to CPU ... unable to detect it" unless told
        env["DS_ACCELERATOR"] = os.environ.get("DS_ACCELERATOR", "cpu")
    return AccelerateSetup(name, args, processes, env, target_has_gpu, warnings)
