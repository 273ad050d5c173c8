"""A local stand-in for the Hugging Face Hub, for tests that push for real over HTTP (the Hub's network cannot be
reached from tests): the Hub client talks to the endpoint HF_ENDPOINT names, here a small server on 127.0.0.1. It
answers whoami, create_repo, validate-yaml and the upload requests (preupload, commit) as the Hub does for regular
(non-LFS) files, except the first ``fail_first`` uploads, which it refuses with HTTP 400 (5xx answers and dropped
connections are retried by huggingface_hub itself for ~25 s before the upload fails; a 400 fails it at once). Each
commit's files are kept with their bytes, so a test can check what a push carried.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = "me/tiny-edge"


class StubHub(ThreadingHTTPServer):
    """The Hub endpoints an upload uses, on 127.0.0.1; records each request and each commit's files."""

    def __init__(self, fail_first: int):
        super().__init__(("127.0.0.1", 0), StubHubHandler)
        self.fail_first = fail_first
        self.uploads = 0  # preupload requests: one per upload_folder call
        self.requests: list[str] = []
        self.commits: list[dict] = []  # {"message": ..., "files": [...], "content": {path: bytes}}

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
            files = [item["value"] for item in items if item["key"] == "file"]
            content = {f["path"]: base64.b64decode(f["content"]) for f in files if f.get("encoding") == "base64"}
            self.server.commits.append(
                {"message": header["summary"], "files": [f["path"] for f in files], "content": content}
            )
            return self._answer(200, {"commitUrl": f"{self.server.endpoint}/{REPO}/commit/{'a' * 40}",
                                      "commitOid": "a" * 40})  # fmt: skip
        self._answer(404, {"error": "stub Hub: not found"})


@contextmanager
def running_stub_hub(fail_first: int = 0) -> Iterator[StubHub]:
    hub = StubHub(fail_first=fail_first)
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()


def hub_env(hub: StubHub) -> dict[str, str]:
    """The environment that points the Hub client (and `edge-trl train`'s pre-launch check) at ``hub``."""
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_stubTOKEN123",
            "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
