"""A Hub upload that fails during training (issue #12, item 7), for real: the Hub client talks HTTP to the endpoint
HF_ENDPOINT names, here a small local server standing in for the Hub (the Hub's network cannot be reached from
tests). It answers whoami, create_repo, validate-yaml and the upload requests (preupload, commit) as the Hub does
for regular (non-LFS) files, except the first ``fail_first`` uploads, which it refuses with HTTP 400. (5xx answers and dropped
connections are retried by huggingface_hub itself for ~25 s before the upload fails; a 400 fails it at once.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_trl.testing import tiny_addition_dataset

REPO = "me/tiny-edge"


class StubHub(ThreadingHTTPServer):
    """The Hub endpoints an upload uses, on 127.0.0.1; records each request and each commit's files."""

    def __init__(self, fail_first: int):
        super().__init__(("127.0.0.1", 0), StubHubHandler)
        self.fail_first = fail_first
        self.uploads = 0  # preupload requests: one per upload_folder call
        self.requests: list[str] = []
        self.commits: list[dict] = []  # {"message": ..., "files": [...]}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StubHubHandler(BaseHTTPRequestHandler):
    server: StubHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        if self.path.startswith("/api/whoami-v2"):
            return self._answer(200, {"name": "me", "type": "user", "auth": {"accessToken": {"role": "write"}}})
        self._answer(404, {"error": "stub Hub: not found"})

    def do_POST(self) -> None:
        self.server.requests.append(f"POST {self.path}")
        body = self._body()
        if self.path.startswith("/api/validate-yaml"):  # the model card's metadata, checked before a commit
            return self._answer(200, {"errors": [], "warnings": []})
        if self.path.startswith("/api/repos/create"):
            return self._answer(200, {"url": f"{self.server.endpoint}/{REPO}"})
        if self.path.startswith(f"/api/models/{REPO}/preupload/"):
            self.server.uploads += 1
            if self.server.uploads <= self.server.fail_first:
                return self._answer(400, {"error": "stub Hub: upload refused"})
            files = json.loads(body)["files"]
            return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})  # fmt: skip
        if self.path.startswith(f"/api/models/{REPO}/commit/"):
            items = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(item["value"] for item in items if item["key"] == "header")
            files = [item["value"]["path"] for item in items if item["key"] == "file"]
            self.server.commits.append({"message": header["summary"], "files": files})
            return self._answer(200, {"commitUrl": f"{self.server.endpoint}/{REPO}/commit/{'a' * 40}",
                                      "commitOid": "a" * 40})  # fmt: skip
        self._answer(404, {"error": "stub Hub: not found"})


@pytest.fixture
def stub_hub(request) -> Iterator[StubHub]:
    hub = StubHub(fail_first=request.param)
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.shutdown()
    hub.server_close()


def train(tmp_path: Path, model: Path, hub: StubHub, output_dir: Path) -> subprocess.CompletedProcess:
    data = tmp_path / "addition.jsonl"
    tiny_addition_dataset(16).to_json(str(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_ENDPOINT": hub.endpoint,
           "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_stubTOKEN123", "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
    args = ["train", "--model", str(model), "--dataset", str(data), "--num-processes", "1", "--method", "grpo",
            "--reward", "format", "--output-dir", str(output_dir), "--max-steps", "3", "--set", "save_steps=1",
            "--set", "max_completion_length=8", "--set", "num_generations=4", "--set", "per_device_train_batch_size=4",
            "--push-to-hub", "--hub-model-id", REPO, "--set", "hub_strategy=every_save"]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "edge_trl.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stub_hub", [1], indirect=True)
def test_a_failed_upload_during_training_warns_and_the_next_save_retries(tmp_path, tiny_model_path, stub_hub):
    out = tmp_path / "run"
    result = train(tmp_path, tiny_model_path, stub_hub, out)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "uploading the checkpoint of step 1 to the Hub failed (BadRequestError" in output, output[-5000:]
    assert "stub Hub: upload refused" in output  # the Hub's own answer, passed on
    assert "Training goes on; the next save uploads again" in output
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # training went on to max_steps
    messages = [commit["message"] for commit in stub_hub.commits]
    # Step 1's upload failed; a later save uploaded again (step 2's, or step 3's if step 1's was still running then).
    assert messages[0] in ("Training in progress, step 2", "Training in progress, step 3"), messages
    assert messages[-1] == "End of training", messages
    final = next(commit for commit in stub_hub.commits if commit["message"] == "End of training")
    assert "model.safetensors" in final["files"] and not any(f.startswith("checkpoint-") for f in final["files"])
    assert "hf_stubTOKEN123" not in output


@pytest.mark.slow
@pytest.mark.parametrize("stub_hub", [10_000], indirect=True)
def test_uploads_that_always_fail_keep_training_and_exit_3_with_the_model_saved(tmp_path, tiny_model_path, stub_hub):
    out = tmp_path / "run"
    result = train(tmp_path, tiny_model_path, stub_hub, out)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output[-5000:]
    assert output.count("to the Hub failed (BadRequestError") >= 2, output[-5000:]  # every save tried again
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert (out / "model.safetensors").is_file()  # the local result is intact
    assert "pushing to the Hub failed" in result.stderr and f"retry with: hf upload {REPO} {out}" in result.stderr
    assert stub_hub.commits == [] and stub_hub.uploads >= 3
