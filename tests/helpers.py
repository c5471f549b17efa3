"""Plain helpers the tests share (fixtures live in conftest.py): the environment of one `mwml` run, the command run as a user
would, servers started and stopped, waiting on events, a real `mlflow server`, and models trained through the CLI by their ids.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import mlflow

from mwml.config import get_settings

ROOT = Path(__file__).resolve().parent.parent
MWML = Path(sys.executable).parent / "mwml"
# Variables of the caller's shell that would point a test's `mwml` at someone else's store, data, cluster or debug mode.
FOREIGN = ("MLFLOW_TRACKING_URI", "MWML_DATA_DIR", "IN_TEST", "MWML_DEBUG", "RAY_ADDRESS")
# The tiny randomly initialised tagger the tests train: one epoch (after the frozen one) on a sample, short texts. lr 1e-2: after
# one epoch a random 2-layer BERT predicts more than one tag (lower rates predict `other` only).
TINY = {"backbone": "tiny", "epochs": 1, "sample_size": 96, "batch_size": 16, "max_length": 64, "lr": 1e-2}


def mwml_env(home: Path,  # the run's MWML_HOME (created if missing)
             data_mirror: Path | str | None = None,  # where the data files come from; default the caller's MWML_DATA_MIRROR
             **variables,  # more variables, e.g. MWML_API_TOKEN="s3cret"
             ) -> dict:  # fmt: skip
    "The environment of one `mwml` run: the caller's, less what points elsewhere, with its own home."
    Path(home).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    if data_mirror is not None:
        env["MWML_DATA_MIRROR"] = str(data_mirror)
    return {**env, "MWML_HOME": str(home), **{k: str(v) for k, v in variables.items()}}


def free_port(host: str = "127.0.0.1",  # where to look; "" is every interface (where Ray's GCS binds)
              ) -> int:  # fmt: skip
    "A TCP port on `host` that nothing listens on right now."
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_mwml(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run the installed `mwml` command as a user would, from the project folder."
    return subprocess.run([str(MWML), *map(str, args)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def invoke(*args, env: dict) -> subprocess.CompletedProcess:
    """Run `mwml ARGS` in this process with Typer's CliRunner, for checks of an answer (an error message, a refusal) that need no
    process of their own: seconds of imports saved each time. The environment is `env` alone, and put back afterwards."""
    from typer.testing import CliRunner

    from mwml.cli import app

    before = dict(os.environ)
    try:
        r = CliRunner().invoke(app, list(map(str, args)), env={**dict.fromkeys(before), **env})
    finally:
        os.environ.clear()
        os.environ.update(before)
    return subprocess.CompletedProcess(["mwml", *map(str, args)], r.exit_code, r.stdout, r.stderr)


def mwml_json(*args, env: dict, timeout: float = 600):
    "Run `mwml ... --json`, check it succeeded, and return what it printed."
    r = run_mwml(*args, "--json", env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


def train(env: dict, *args) -> str:
    "Train through `mwml train ... --json` (e.g. `--model baseline`, `--config tiny.json`); the MLflow run id."
    return mwml_json("train", *args, env=env)["run_id"]


def register(env: dict, run_id: str, alias: str = "challenger") -> str:
    "Register the run's model through `mwml register --json`, with `alias`; the new version."
    return mwml_json("register", run_id, "--alias", alias, env=env)["version"]


def write_tiny_config(folder: Path, **values) -> Path:
    "A JSON training config for the tiny tagger (TINY with `values` over it) in `folder`; its path."
    path = Path(folder) / "tiny.json"
    path.write_text(json.dumps({**TINY, **values}))
    return path


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


def wait_for(condition, what: str, patience: float = 120, every: float = 0.5, process: subprocess.Popen | None = None):
    "Poll `condition()` until it is truthy and return its value; fail naming `what` after `patience` s or if `process` exits."
    deadline = time.monotonic() + patience
    while not (value := condition()):
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"{what}: the process exited ({process.returncode}) first\n{out[-2000:]}\n{err[-4000:]}")
        assert time.monotonic() < deadline, f"{what}: not within {patience} s"
        time.sleep(every)
    return value


def interrupt(proc: subprocess.Popen, patience: float = 180) -> str:
    "Press Ctrl+C once on `proc` and wait for it to end (kill it past `patience` s, and fail); its stderr."
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=patience)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        stderr = proc.communicate()[1]
        raise AssertionError(f"pid {proc.pid} did not end within {patience} s of Ctrl+C\n{stderr[-4000:]}") from None


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


def answers(url: str) -> bool:
    "Whether GET `url` answers 200 (no token: the probes need none)."
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_ready(server: subprocess.Popen, base: str, patience: float = 180):
    "Wait until `base`/ready answers 200; fail if `server` exits first."
    wait_for(lambda: answers(f"{base}/ready"), f"the server at {base} got ready", patience, every=0.5, process=server)


def serve(env: dict, *args, replicas: int = 0) -> tuple[subprocess.Popen, str]:
    "Start `mwml serve --replicas N` (and `args`) on a free port and wait until it is ready: (process, base URL)."
    port = free_port()
    server = start_mwml("serve", "--replicas", replicas, "--port", port, *args, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, base, patience=300 if replicas else 180)
    except BaseException:
        terminate(server)
        raise
    return server, base


@contextmanager
def running_mlflow_server(folder: Path):
    "A real `mlflow server` on 127.0.0.1 with its SQLite store and served artifacts in `folder`: yields its URL once /health answers."
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "served")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/health"), "mlflow server /health", 180, process=server)
        yield url
    finally:  # the server, its uvicorn worker and job runners: the whole process group (up to 25 s to exit on SIGTERM: then killed)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def hammer(url: str, n: int, concurrency: int, headers: dict, results: list, record: list | None = None):
    """Send `n` one-item predictions from `concurrency` threads; append each status (or the exception name; "shed" for a 503 with
    Retry-After: refused by load shedding, to be retried) to `results` and, with `record`, each request's (start, end, replica that
    answered or None) to it, in the same order. The started threads."""

    def worker(ids):
        with httpx.Client(timeout=30) as http:
            for i in ids:
                start, replica = time.monotonic(), None
                try:
                    r = http.post(url, json={"items": [{"title": f"object detection {i}"}]}, headers=headers)
                    outcome, replica = r.status_code, r.headers.get("X-Mwml-Replica")
                    if outcome == 503 and "Retry-After" in r.headers:
                        outcome = "shed"
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                with lock:
                    results.append(outcome)
                    if record is not None:
                        record.append((start, time.monotonic(), replica))

    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(range(k, n, concurrency),)) for k in range(concurrency)]
    for t in threads:
        t.start()
    return threads


def lost(results: list) -> list:
    "`hammer`'s outcomes that are neither answered (200) nor shed with a Retry-After: requests a client cannot simply retry later."
    return [outcome for outcome in results if outcome not in (200, "shed")]


def in_flight_at(moment: float, record: list) -> int:
    "How many of `hammer`'s requests (its `record`) were in flight at monotonic time `moment`."
    return sum(start <= moment <= end for start, end, _ in record)


def hang_up(base: str, n: int, headers: dict, concurrency: int = 20):
    """`n` clients that each send a one-item `/predict` to `base` and close the connection before the answer: at once, or up to
    45 ms later (client `i` waits `i % 10` * 5 ms), so that some go while their item waits and some while it is computed."""
    url = urlsplit(base)
    body = json.dumps({"items": [{"title": "object detection", "description": "a client that gives up"}]}).encode()
    fields = {"Host": url.netloc, "Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
    request = ("POST /predict HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode() + body

    def give_up(i: int):
        with socket.create_connection((url.hostname, url.port), timeout=30) as s:
            s.sendall(request)
            time.sleep(i % 10 * 0.005)  # the client's patience, not a wait for the server

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(give_up, range(n)))
