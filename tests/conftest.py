"""Shared fixtures: each test gets its own MWML_HOME, and runs the real `mwml` command in a subprocess."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
import pytest

from mwml.config import get_settings
from mwml.data import SOURCES, fetch

ROOT = Path(__file__).resolve().parent.parent
# Progress bars are for people at a terminal; in test logs they are noise (the library leaves them on).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
MWML = Path(sys.executable).parent / "mwml"


def pytest_addoption(parser):
    parser.addoption("--model", default=None, help="tests/model: the model to test (folder, run id, alias or version)")


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on right now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def good_files(tmp_path_factory) -> Path:
    "A folder with the four verified data files, fetched once per test session (downloaded when there is no mirror)."
    folder = tmp_path_factory.mktemp("good-data")
    for name in SOURCES:
        shutil.copy(fetch(name), folder / SOURCES[name].file)
    return folder


@pytest.fixture
def env(tmp_path, good_files) -> dict:
    "Environment for one CLI run: a fresh MWML_HOME whose data comes from the session's verified copy, no test flags."
    home = tmp_path / "home"
    home.mkdir()
    variables = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MWML_DATA_DIR", "IN_TEST", "MWML_DEBUG")}
    return {**variables, "MWML_HOME": str(home), "MWML_DATA_MIRROR": str(good_files)}


def run_mwml(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run the installed `mwml` command as a user would, from the project folder."
    return subprocess.run([str(MWML), *map(str, args)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def raw_dir(env: dict) -> Path:
    "The data/raw folder that `env` points at."
    return get_settings(env).raw_dir


def snapshot(folder: Path) -> dict:
    "Every file under `folder` (temporary ones included) with its bytes."
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def runs(env: dict, tracking_uri: str | None = None) -> list:
    "Every run of the mwml experiment in the store `env` (or `tracking_uri`) points at."
    client = mlflow.MlflowClient(tracking_uri or get_settings(env).tracking_uri)
    experiment = client.get_experiment_by_name("mwml")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def start_mwml(*args, env: dict) -> subprocess.Popen:
    "Start `mwml` in the background, with Ctrl+C working as in a terminal (a background CI job may ignore SIGINT)."
    return subprocess.Popen([str(MWML), *map(str, args)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def interrupt(proc: subprocess.Popen, every: float = 5, patience: float = 180) -> None:
    "Press Ctrl+C on `proc` (again every `every` seconds, as a user would) until it exits."
    deadline = time.monotonic() + patience
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=every)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def terminate(proc: subprocess.Popen, patience: float = 90, sig: signal.Signals = signal.SIGTERM) -> str:
    "Send `sig` to `proc` (a server stops cleanly on SIGTERM or Ctrl+C), kill it if it lingers past `patience` seconds; its stderr."
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=patience)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        return f"did not stop within {patience} s of {sig.name}\n" + proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:  # killed, yet its output pipes stay open: a process it started outlived it
        raise AssertionError(f"pid {proc.pid} was killed but a child of it still holds its output open") from None


def wait_until_ready(server: subprocess.Popen, base: str, patience: float = 180):
    "Poll `base`/ready (no token: it is a probe) until it answers 200; fail if `server` exits first."
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the server did not get ready")


@contextmanager
def running_mlflow_server(folder: Path):
    "A real `mlflow server` on 127.0.0.1 with its SQLite store and served artifacts in `folder`: yields its URL."
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "served")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:  # the server, its uvicorn worker and job runners: the whole process group (up to 25 s to exit on SIGTERM: then killed)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    "A real `mlflow server` on 127.0.0.1 for one test."
    with running_mlflow_server(tmp_path) as url:
        yield url


def hammer(url: str, n: int, concurrency: int, headers: dict, results: list):
    "Send `n` one-item predictions from `concurrency` threads; append each status (or the exception name) to `results`."

    def worker(ids):
        with httpx.Client(timeout=30) as http:
            for i in ids:
                try:
                    results.append(http.post(url, json={"items": [{"title": f"object detection {i}"}]}, headers=headers).status_code)
                except httpx.HTTPError as e:
                    results.append(type(e).__name__)

    threads = [threading.Thread(target=worker, args=(range(k, n, concurrency),)) for k in range(concurrency)]
    for t in threads:
        t.start()
    return threads
