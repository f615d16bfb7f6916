"""Play a reader on their own machine: ``make lab`` serves the chapters and runs one.

The documented command itself (``make lab``, with only the address, a token and,
as root in CI containers, ``--allow-root`` added through ``LAB_ARGS``) starts JupyterLab on 127.0.0.1. The test then does
what the browser does: it opens a chapter through the server's REST API
(a session, as clicking the file does), runs every code cell over the kernel's
websocket, checks that each cell ran without an error and printed what the
stored notebook printed, and shuts the server down through its API. An
instructor's ``make lab-exercises`` is played the same way.

``make test-lab`` runs this file after installing ``requirements-lab.txt``;
elsewhere it is skipped when JupyterLab is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "03_pyramid_pooling.ipynb"  # the quickest chapter (about 25 s on a laptop CPU)
START_SECONDS = 120
CELL_SECONDS = 300

if importlib.util.find_spec("jupyterlab") is None or importlib.util.find_spec("websocket") is None:
    if os.environ.get("ESA_LAB_REQUIRED"):
        raise RuntimeError("JupyterLab is not installed in this environment: run `make lab-deps`")
    pytestmark = pytest.mark.skip(reason="JupyterLab is not installed (make lab-deps)")
elif shutil.which("make") is None:
    pytestmark = pytest.mark.skip(reason="the documented command needs make")

import websocket  # noqa: E402  (websocket-client, after the skip above)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``make`` target that runs JupyterLab, and the REST calls the browser would make."""

    def __init__(self, target: str, tmp: Path) -> None:
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={self.port} "
                f"--ServerApp.port_retries=0 --IdentityProvider.token={self.token}")
        if os.geteuid() == 0:  # CI containers run as root; Jupyter refuses that unless told
            args += " --allow-root"
        # Keep the reader's own Jupyter settings and the kernels of other environments out.
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"),
               "JUPYTER_DATA_DIR": str(tmp / "data"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
               "MPLBACKEND": "Agg"}
        self.log = (tmp / f"{target}.log").open("w+")
        self.process = subprocess.Popen(["make", "--no-print-directory", target, f"LAB_ARGS={args}"],
                                        cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as reply:
            text = reply.read()
        return json.loads(text) if text else None

    def wait_until_up(self) -> dict:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited:\n{self.output()}")
            try:
                return self.request("GET", "/api/status")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise AssertionError(f"no server after {START_SECONDS} s:\n{self.output()}")

    def shutdown(self) -> int:
        """Shut down through the API, as File > Shut Down does; returns make's exit status."""
        if self.process.poll() is None:
            try:
                self.request("POST", "/api/shutdown")
            except (urllib.error.URLError, ConnectionError):
                pass
            try:
                self.process.wait(timeout=START_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=30)
                raise AssertionError(f"the server did not shut down:\n{self.output()}") from None
        self.log.close()
        return self.process.returncode


def _execute(ws: websocket.WebSocket, session: str, code: str) -> tuple[str, list[dict]]:
    """Run ``code`` on the kernel behind ``ws``; returns the reply status and the outputs."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "session": session, "username": "reader",
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    outputs, status, idle = [], None, False
    while status is None or not idle:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            status = msg["content"]["status"]
        elif kind == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif kind in {"stream", "error", "execute_result", "display_data"}:
            outputs.append({"output_type": kind, **msg["content"]})
    return status, outputs


def _stdout(outputs) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream"
                   and o["name"] == "stdout")


def _open_and_run(server: Server, path: str, cells: list) -> list[tuple[str, list[dict]]]:
    """Open ``path`` as the browser does (a session with the notebook's kernel) and run ``cells``."""
    nb = server.request("GET", f"/api/contents/{path}?type=notebook&content=1")
    kernel_name = nb["content"]["metadata"]["kernelspec"]["name"]
    session = server.request("POST", "/api/sessions", {
        "path": path, "type": "notebook", "name": path, "kernel": {"name": kernel_name}})
    url = (f"ws://127.0.0.1:{server.port}/api/kernels/{session['kernel']['id']}/channels"
           f"?session_id={session['id']}")
    ws = websocket.create_connection(url, timeout=CELL_SECONDS,
                                     header=[f"Authorization: token {server.token}"])
    try:
        results = [_execute(ws, session["id"], cell.source) for cell in cells]
    finally:
        ws.close()
        server.request("DELETE", f"/api/sessions/{session['id']}")
    return results


def test_make_lab_serves_the_chapters_and_runs_one(tmp_path):
    server = Server("lab", tmp_path)
    try:
        server.wait_until_up()
        listed = {item["name"] for item in server.request("GET", "/api/contents/")["content"]}
        assert CHAPTER in listed and "exercises" in listed
        # The notebooks' kernel is this environment's Python, registered by `make lab`.
        specs = server.request("GET", "/api/kernelspecs")["kernelspecs"]
        argv = specs["python3"]["spec"]["argv"]
        assert Path(argv[0]).parent == (ROOT / ".venv" / "bin"), argv

        stored = nbformat.read(ROOT / "notebooks" / CHAPTER, as_version=4)
        code = [c for c in stored.cells if c.cell_type == "code"]
        results = _open_and_run(server, CHAPTER, code)
    finally:
        returncode = server.shutdown()
    assert returncode == 0, server.output()
    errors = [(i, o) for i, (_, outs) in enumerate(results) for o in outs
              if o["output_type"] == "error"]
    assert not errors, errors
    assert [status for status, _ in results] == ["ok"] * len(code)
    # Same printed text as the stored, checked run, except where nbval ignores it.
    for cell, (_, outputs) in zip(code, results):
        if "nbval-ignore-output" in cell.metadata.get("tags", []):
            continue
        stored_text = "".join(o.get("text", "") for o in cell.outputs
                              if o.output_type == "stream" and o.name == "stdout")
        assert _stdout(outputs) == stored_text, cell.source
    # Nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def test_make_lab_exercises_opens_the_student_versions(tmp_path):
    student = ROOT / "notebooks" / "exercises" / "student"
    server = Server("lab-exercises", tmp_path)
    if not student.is_dir():
        # Without them the command says what is missing instead of opening an empty lab.
        assert server.process.wait(timeout=START_SECONDS) != 0
        assert "notebooks/exercises/student/ is missing" in server.output()
        return
    try:
        server.wait_until_up()
        listed = sorted(item["name"] for item in server.request("GET", "/api/contents/")["content"]
                        if item["type"] == "notebook")
        expected = sorted(p.name for p in student.glob("*.ipynb"))
        assert listed == expected and expected
        # A student notebook opens and its set-up cells run: the header and the imports.
        first = nbformat.read(student / expected[0], as_version=4)
        setup = [c for c in first.cells if c.cell_type == "code"][:2]
        results = _open_and_run(server, expected[0], setup)
    finally:
        returncode = server.shutdown()
    assert returncode == 0, server.output()
    assert [status for status, _ in results] == ["ok", "ok"], results
    assert re.search(r"esa_tutorial", setup[1].source)
