"""``qtutor course``, the command ``make course`` runs, starts headless, serves the learner folder, and stops."""
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qtutor.learner import INDEX

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_course_server_serves_the_learner_folder(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}  # headless, as in CI
    env |= {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    folder = tmp_path / "student"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "qtutor", "course", "--port", str(port), "--dir", str(folder)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"the server exited early:\n{log.read_text()}"
            try:
                assert "started" in _get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT_S} s:\n{log.read_text()}"
                time.sleep(1)

        listing = {c["name"]: c["type"] for c in _get(f"{base}/api/contents", token)["content"]}
        assert listing[INDEX] == "notebook" and listing["solutions"] == "directory"
        assert all(listing.get(p.name) == "notebook" for p in NOTEBOOKS)
        copy = _get(f"{base}/api/contents/{NOTEBOOKS[0].name}", token)["content"]
        assert "NotImplementedError" in "".join(c["source"] for c in copy["cells"])  # the learner's copy
        solution = _get(f"{base}/api/contents/solutions/{NOTEBOOKS[0].name}", token)["content"]
        assert "### BEGIN SOLUTION" in "".join(c["source"] for c in solution["cells"])
        with pytest.raises(urllib.error.HTTPError):  # and nothing without the token
            urllib.request.urlopen(f"{base}/api/contents", timeout=10)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    text = log.read_text()
    assert f"{base}/lab/tree/{INDEX}?token=" in text  # the URL a learner opens
