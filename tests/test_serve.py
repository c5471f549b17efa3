"""The HTTP API: every endpoint's validation and auth through FastAPI's TestClient, and system tests of `mwml serve` in both
modes over real HTTP on 127.0.0.1: uvicorn alone (`--replicas 0`) and Ray Serve with two replicas (answers, a killed
replica, a promoted champion picked up on SIGHUP by every replica, Ctrl+C and SIGTERM)."""

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import mlflow
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from helpers import (
    free_port,
    hammer,
    hang_up,
    in_flight_at,
    interrupt,
    lost,
    mwml_env,
    register,
    run_mwml,
    serve,
    start_mwml,
    terminate,
    train,
    wait_for,
    wait_until_ready,
)

from mwml.config import get_settings
from mwml.data import load
from mwml.models import Tagger
from mwml.predict import Predictor
from mwml.serve import Engine, PredictionLog, Route, ServeConfig, build_app

TOKEN = {"Authorization": "Bearer s3cret"}
CLASSES = ["computer-vision", "mlops", "natural-language-processing", "other"]


class Explodes(Predictor):
    "A predictor whose model fails on the title `boom`, to see the server survive a model failure."

    def predict_frame(self, items):
        if "boom" in set(items.title):
            raise RuntimeError("the model failed")
        return super().predict_frame(items)


class Held(Predictor):
    "A predictor that holds each batch until the test opens `gate`, so that a queue builds behind it; `entered`: a batch is in."

    def __init__(self, *args):
        super().__init__(*args)
        self.entered, self.gate = threading.Event(), threading.Event()

    def predict_frame(self, items):
        self.entered.set()
        self.gate.wait(120)
        return super().predict_frame(items)


@pytest.fixture
def client(tmp_path, untrained_tiny):
    folder = untrained_tiny
    config = ServeConfig(model=str(folder), max_items=3, max_body_bytes=2_000, prediction_log=str(tmp_path / "log.db"), token="s3cret")
    engine = Engine(config, Explodes(Tagger.load(folder), {"ref": str(folder)}))
    with TestClient(build_app(engine)) as c:
        yield c


@pytest.mark.parametrize(("method", "path"), [("get", "/model"), ("post", "/predict"), ("post", "/feedback"), ("get", "/metrics"),
                                              ("get", "/docs"), ("get", "/openapi.json")])  # fmt: skip
def test_every_endpoint_but_the_probes_wants_the_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = getattr(client, method)(path, headers=headers)
        assert r.status_code == 401 and "Bearer <MWML_API_TOKEN>" in r.json()["detail"], r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_the_probes_need_no_token(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}


def test_there_is_no_http_reload(client):
    "Reloading is SIGHUP's job in both modes (see the notebook): under Ray Serve a request would reload one replica only."
    assert client.post("/admin/reload", headers=TOKEN).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"items": []}, 422, "items: List should have at least 1 item"),
        ({"items": [{"title": "x"}] * 4}, 422, "items: List should have at most 3 items"),
        ({"items": [{"title": ""}]}, 422, "items.0.title: String should have at least 1 character"),
        ({"items": [{"title": "x" * 201}]}, 422, "items.0.title: String should have at most 200 characters"),
        ({"items": [{"title": "x", "description": "y" * 2001}]}, 413, "over the 2000-byte limit"),
        ({"items": [{"title": "x", "descripton": "typo"}]}, 422, "items.0.descripton: Extra inputs are not permitted"),
        ({"items": [{"title": 3}]}, 422, "items.0.title: Input should be a valid string"),
        ({"things": []}, 422, "things: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_predict_validates_with_the_field_and_the_limit(client, body, status, message):
    r = client.post("/predict", json=body, headers=TOKEN)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    if status == 422:  # the body the schema declares: one line per problem
        assert isinstance(detail, list) and all(isinstance(line, str) for line in detail), detail
        assert any(line.startswith(message) for line in detail), detail
    else:
        assert message in detail


def test_bodies_that_are_not_json_or_not_utf8_are_400(client):
    json_type = {**TOKEN, "content-type": "application/json"}
    r = client.post("/predict", content=b"{not json", headers=json_type)
    assert r.status_code == 400 and "not JSON" in r.json()["detail"]
    r = client.post("/predict", content='{"items": [{"title": "é"}]}'.encode("latin-1"), headers=json_type)
    assert r.status_code == 400 and "not UTF-8" in r.json()["detail"]


def test_a_body_nested_too_deeply_is_400_not_a_crash(tmp_path, untrained_tiny):
    "The fuzzer's kind of finding: a body under the size limit that Python's json cannot parse used to be a 500."
    with TestClient(build_app(Engine(ServeConfig(model=str(untrained_tiny), prediction_log=str(tmp_path / "log.db"))).load())) as c:
        r = c.post("/predict", content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"], r.text


def test_a_declared_length_over_the_limit_is_refused_unread(client):
    r = client.post("/predict", content=b'{"items": [{"title": "x"}]}', headers={**TOKEN, "content-length": "2001"})
    assert r.status_code == 413 and "over the 2000-byte limit" in r.json()["detail"]


def test_feedback_and_the_prediction_log(client, tmp_path):
    r = client.post("/predict", json={"items": [{"title": "YOLO", "description": "cars"}]}, headers=TOKEN)
    [answer] = r.json()["predictions"]
    assert client.post("/feedback", json={"id": answer["id"], "tag": "computer-vision"}, headers=TOKEN).json() == {"recorded": True}
    r = client.post("/feedback", json={"id": "nope", "tag": "mlops"}, headers=TOKEN)
    assert r.status_code == 404 and "no prediction with id 'nope'" in r.json()["detail"]
    r = client.post("/feedback", json={"id": answer["id"], "tag": "robotics"}, headers=TOKEN)
    expected = "tag: Input should be 'computer-vision', 'mlops', 'natural-language-processing' or 'other'"
    assert r.status_code == 422 and r.json()["detail"] == [expected], r.text
    log = PredictionLog(tmp_path / "log.db").read()
    assert log.id.tolist() == [answer["id"]] and log.true_tag.tolist() == ["computer-vision"]
    assert log.title.tolist() == ["YOLO"] and log.tag.tolist() == [answer["tag"]] and log.latency_ms.iloc[0] > 0


class Records(logging.Handler):
    "Keep the records of a logger, tracebacks included."

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_model_failure_is_a_500_with_an_error_id_in_the_log_and_the_server_goes_on(client):
    records = Records()
    logging.getLogger("mwml.serve").addHandler(records)
    try:
        r = client.post("/predict", json={"items": [{"title": "boom"}]}, headers=TOKEN)
    finally:
        logging.getLogger("mwml.serve").removeHandler(records)
    assert r.status_code == 500 and set(r.json()) == {"detail", "error_id"} and len(r.json()["error_id"]) == 12
    [record] = records.records
    assert r.json()["error_id"] in record.getMessage() and "the model failed" in str(record.exc_info[1])
    assert client.post("/predict", json={"items": [{"title": "fine"}]}, headers=TOKEN).status_code == 200
    metrics = client.get("/metrics", headers=TOKEN).text
    assert 'mwml_requests_total{endpoint="/predict",status="500"} 1.0' in metrics
    assert 'mwml_requests_total{endpoint="/predict",status="200"} 1.0' in metrics


def test_an_overloaded_server_refuses_at_once_with_503_and_retry_after(tmp_path, untrained_tiny):
    "The model is held busy and four items wait: the next request is refused while the model is still held; the rest are answered."
    model = Held(Tagger.load(untrained_tiny), {"ref": str(untrained_tiny)})
    engine = Engine(ServeConfig(model=str(untrained_tiny), max_queued=4, prediction_log=str(tmp_path / "log.db")), model)
    one = {"items": [{"title": "object detection"}]}
    with TestClient(build_app(engine)) as client, ThreadPoolExecutor(5) as pool:
        accepted = [pool.submit(client.post, "/predict", json=one)]
        wait_for(model.entered.is_set, "the first request's batch is in the model")
        accepted += [pool.submit(client.post, "/predict", json=one) for _ in range(4)]
        wait_for(lambda: metric(client.get("/metrics").text, "mwml_queued_items") == 4, "four items wait behind it")
        refused = client.post("/predict", json={"items": [{"title": "YOLO"}, {"title": "BERT"}]})  # answered: the model is held
        model.gate.set()
        statuses = [f.result().status_code for f in accepted]
        after = client.post("/predict", json=one)
        metrics = client.get("/metrics").text
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1, refused.text
    assert refused.json()["detail"].startswith("the server is overloaded: 4 items wait (at most 4)"), refused.text
    assert statuses == [200] * 5 and after.status_code == 200, (statuses, after.text)
    assert (metric(metrics, "mwml_shed_total"), metric(metrics, "mwml_queued_items")) == (1, 0)
    assert len(engine.log.read()) == 6  # every answer is logged; the refused request left nothing


@pytest.fixture
def small_disk(tmp_path):
    "A 2 MB tmpfs: a disk that really fills up (mounting one needs root)."
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"a full disk needs a small tmpfs, and `mount` failed (run as root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path) -> Path:
    "Write a file that takes every free byte of `disk`; the file."
    filler, block = disk / "filler", 1 << 16
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while block:
            try:
                os.write(fd, b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                block //= 2
    finally:
        os.close(fd)
    return filler


class CopyToo:
    "The smallest roll-out router: the champion answers, and `model` answers a copy of each item in the shadow."

    def __init__(self, model: Predictor):
        self.model = model

    def route(self, key):
        return Route("champion", shadows=(("copy", self.model),))

    def describe(self):
        return {}


def test_a_full_disk_is_a_503_that_says_so_loses_nothing_and_counts_unlogged_shadows(small_disk, untrained_tiny):
    "Served answers: a 503 naming the full disk, no row half-written, served again once there is room; shadows: counted as unlogged."
    shadow = Held(Tagger.load(untrained_tiny), {})  # no reference: answers in this process, where the test holds it
    engine = Engine(ServeConfig(model=str(untrained_tiny), prediction_log=str(small_disk / "log.db")),
                    Predictor(Tagger.load(untrained_tiny), {"ref": str(untrained_tiny)}))  # fmt: skip
    engine.router = CopyToo(shadow)
    big = {"items": [{"title": f"object detection {i}", "description": "d" * 2000} for i in range(64)]}  # 128 kB more in the log
    with TestClient(build_app(engine)) as client:
        assert client.post("/predict", json=big).status_code == 200  # logged; its 64 shadow copies are held in the model
        wait_for(shadow.entered.is_set, "the shadow copies reached their model")
        filler = fill(small_disk)
        full = client.post("/predict", json=big)
        shadow.gate.set()  # the copies are answered now, and the log cannot take them
        wait_for(lambda: metric(client.get("/metrics").text, "mwml_shadow_unlogged_total") == 64, "64 shadow answers counted")
        assert (full.status_code, full.headers["Retry-After"]) == (503, "5"), full.text
        assert "prediction log cannot be written" in full.json()["detail"] and "disk is full" in full.json()["detail"], full.text
        assert len(engine.log.read()) == 64  # the first request's rows, none of the second's
        filler.unlink()
        assert client.post("/predict", json=big).status_code == 200
    assert len(engine.log.read()) == 128


def test_unknown_paths_share_one_metrics_label(client):
    for i in range(20):
        assert client.get(f"/scan-{i}", headers=TOKEN).status_code == 404
    metrics = client.get("/metrics", headers=TOKEN).text
    assert 'mwml_requests_total{endpoint="other",status="404"} 20.0' in metrics and "scan-" not in metrics


def test_model_info_and_docs(client):
    r = client.get("/model", headers=TOKEN)
    info = r.json()
    assert info["backend"] == "torch" and info["classes"] == CLASSES and info["ref"] and info["metrics"] == {}
    assert len(r.headers["X-Mwml-Replica"]) == 8
    assert client.get("/docs", headers=TOKEN).status_code == 200


def test_the_schema_describes_every_answer(client):
    "Every status a route declares has a JSON schema; the 422 is ours (`Problems`), not FastAPI's default."
    schema = client.get("/openapi.json", headers=TOKEN).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response["content"]
                assert content, (method, path, status)
                if status == "422":
                    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Problems"}
            assert ("401" in operation["responses"]) == (path not in ("/health", "/ready")), (method, path)
    assert schema["components"]["schemas"]["Problems"]["properties"]["detail"]["items"] == {"type": "string"}
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}


# --- system tests: `mwml serve` in both modes, real HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, good_files):
    "One MWML_HOME for this module's servers: a baseline trained once, registered as version 1 and, as a promotion to come, 2."
    env = mwml_env(tmp_path_factory.mktemp("serve") / "home", good_files, MWML_API_TOKEN="s3cret", MWML_REVIEW_TOKEN="review-t0ken")
    registry = mlflow.MlflowClient(get_settings(env).tracking_uri)
    first = registry.get_model_version(get_settings(env).model_name, register(env, train(env, "--model", "baseline")))
    second = registry.create_model_version(first.name, first.source, first.run_id)  # a new version: what a promotion brings
    return env, str(first.version), str(second.version)


def promote(env: dict, version: str):
    "Make `version` the champion."
    mlflow.MlflowClient(get_settings(env).tracking_uri).set_registered_model_alias(get_settings(env).model_name, "champion", version)


def assert_serves_the_champion(base: str, env: dict) -> int:
    "The server's answers on 20 holdout items are the champion's, as Predictor gives them; return the items predicted."
    holdout = load("holdout", get_settings(env)).head(20)
    items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
    served = []
    for i in range(0, 20, 4):
        r = httpx.post(f"{base}/predict", json={"items": items[i : i + 4]}, headers=TOKEN, timeout=30)
        assert r.status_code == 200, r.text
        served += r.json()["predictions"]
    mlflow.set_tracking_uri(get_settings(env).tracking_uri)
    expected = Predictor.load("champion", settings=get_settings(env)).predict(items)
    assert [a["tag"] for a in served] == [e["tag"] for e in expected]
    np.testing.assert_allclose([list(a["probabilities"].values()) for a in served],
                               [list(e["probabilities"].values()) for e in expected], atol=1e-6)  # fmt: skip
    return len(items)


def reload_under_load(server, base: str, env: dict, version: str, requests: int = 200):
    """Promote `version`, send SIGHUP while `requests` predictions flow; wait until `/model` says `version`. None may fail: each
    is answered, or shed with a Retry-After when the replicas are short of capacity meanwhile (admission's answer, never a loss)."""
    promote(env, version)
    results = []
    threads = hammer(f"{base}/predict", requests, 4, TOKEN, results)
    server.send_signal(signal.SIGHUP)
    picked_up = lambda: httpx.get(f"{base}/model", headers=TOKEN, timeout=10).json()["version"] == version  # noqa: E731
    wait_for(picked_up, "the new champion was picked up after SIGHUP", 180, process=server)
    for t in threads:
        t.join()
    print(f"reloaded under load: {results.count(200)} of {len(results)} served, {results.count('shed')} shed")
    assert len(results) == requests and results.count(200) and not lost(results), lost(results)


def metric(text: str, name: str) -> float:
    "The value of the unlabelled sample `name` in Prometheus text."
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    return value


def per_replica(text: str, name: str) -> dict[str, float]:
    "The value of sample `name` per `replica` label in Prometheus text."
    pattern = re.compile(rf'^{name}\{{replica="([^"]+)"\}} (\S+)$', re.M)
    return {replica: float(value) for replica, value in pattern.findall(text)}


def assert_answers_after_clients_hang_up(base: str):
    "1,000 clients hang up mid-request (Ray Serve cancels their requests: that once stopped the batcher); then 200 are answered."
    hang_up(base, 1000, TOKEN)
    # "then": once the server takes work again. Requests whose cancellation has not reached their replica yet are still computed,
    # and a request meanwhile may be shed (503, Retry-After) by design; an outage (the batcher dead) never takes work again
    one = {"items": [{"title": "object detection", "description": "after the crowd"}]}
    takes_work = lambda: httpx.post(f"{base}/predict", json=one, headers=TOKEN, timeout=30).status_code == 200  # noqa: E731
    wait_for(takes_work, "an answer after the hang-ups", 60)
    answered = []
    for t in hammer(f"{base}/predict", 200, 8, TOKEN, answered):
        t.join()
    assert answered == [200] * 200, [s for s in answered if s != 200]


def serve_first_version(served, replicas: int):
    "Promote the first version and start `mwml serve --replicas N` on a free port: (env, first, second, base URL, process)."
    env, first, second = served
    promote(env, first)
    port = free_port()
    return env, first, second, f"http://127.0.0.1:{port}", start_mwml("serve", "--replicas", replicas, "--port", port, env=env)


def test_mwml_serve_on_uvicorn_reloads_on_sighup_and_stops_on_ctrl_c(served):
    env, first, second, base, server = serve_first_version(served, 0)
    try:
        wait_until_ready(server, base)
        assert httpx.get(f"{base}/model", headers=TOKEN).json()["version"] == first
        items = assert_serves_the_champion(base, env)

        reload_under_load(server, base, env, second)  # SIGHUP used to stop uvicorn
        items += 200
        items += assert_serves_the_champion(base, env)
        replicas = {httpx.get(f"{base}/model", headers=TOKEN).headers["X-Mwml-Replica"] for _ in range(5)}
        assert len(replicas) == 1  # one process, one engine

        # every item went through the batcher once: the batch-size histogram the benchmark reads counts them all
        metrics = httpx.get(f"{base}/metrics", headers=TOKEN).text
        assert metric(metrics, "mwml_batch_size_sum") == items
        assert 1 <= metric(metrics, "mwml_batch_size_count") <= items
        assert_answers_after_clients_hang_up(base)
    finally:
        stderr = interrupt(server)  # Ctrl+C once: shutting down (uvicorn, then the interpreter with torch) can take several seconds
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


BODY = json.dumps({"items": [{"title": "held back", "description": "a body sent in two parts"}]}).encode()


def half_sent(base: str) -> socket.socket:
    "Start a `/predict` and send half its body: the request is in flight, waiting for the rest, until `rest_of` sends it."
    url = urlsplit(base)
    client = socket.create_connection((url.hostname, url.port), timeout=60)
    head = f"POST /predict HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: {TOKEN['Authorization']}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    client.sendall(head.encode() + BODY[: len(BODY) // 2])
    return client


def rest_of(client: socket.socket) -> bytes:
    "Send the rest of a `half_sent` body; the whole answer, read until the server closes the connection."
    client.sendall(BODY[len(BODY) // 2 :])
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    return answer


def in_flight(base: str) -> float:
    "The requests the server is handling now, this scrape of /metrics included."
    return metric(httpx.get(f"{base}/metrics", headers=TOKEN, timeout=10).text, "mwml_requests_in_flight")


def refuses_connections(base: str) -> bool:
    "Whether a new connection to the server is refused (its port is closed)."
    try:
        httpx.get(f"{base}/health", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_finishes_requests_in_flight_within_the_grace_period_refuses_new_ones_and_exits_0(served):
    "Two requests are in flight at SIGTERM: the port closes, one is finished and answered, the other is given up after `grace_s`."
    promote(served[0], served[1])
    server, base = serve({**served[0], "MWML_SERVE_GRACE_S": "2"})
    finished, abandoned = half_sent(base), half_sent(base)
    try:
        wait_for(lambda: in_flight(base) == 3, "both half-sent requests are in flight", process=server)
        server.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(base), "the port closed: new requests are refused", process=server)
        answer = rest_of(finished)
        stderr = server.communicate(timeout=60)[1]  # `abandoned` never completes: the grace period ends the wait for it
    finally:
        finished.close()
        abandoned.close()
    assert answer.startswith(b"HTTP/1.1 200") and b'"predictions"' in answer, answer
    assert server.returncode == 0, stderr
    # the one traceback is uvicorn's report of the abandoned request, cancelled when the grace period ended
    assert stderr.count("Traceback") == stderr.count("CancelledError: Task cancelled, timeout graceful shutdown exceeded") == 1, stderr


@pytest.mark.full
def test_a_second_sigterm_ends_the_server_at_once(served):
    "A request holds the graceful stop (grace period 600 s); a second SIGTERM ends the process without waiting for it."
    promote(served[0], served[1])
    server, base = serve({**served[0], "MWML_SERVE_GRACE_S": "600"})
    held = half_sent(base)
    try:
        wait_for(lambda: in_flight(base) == 2, "the half-sent request is in flight", process=server)
        server.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(base), "the port closed: the graceful stop began", process=server)
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=120)  # far less than the 600 s the graceful stop would wait
    finally:
        held.close()
        if server.poll() is None:
            server.kill()
    assert server.returncode == -signal.SIGTERM


@pytest.mark.full
def test_every_answer_a_client_got_is_in_the_log_after_kill_9(served):
    "kill -9 during a burst of writes: every id a client got back is in the log (its row is committed before the answer goes)."
    promote(served[0], served[1])
    server, base = serve(served[0])
    acknowledged = []

    def client():  # until the server is gone
        with httpx.Client(timeout=30) as http:
            while True:
                try:
                    r = http.post(f"{base}/predict", json={"items": [{"title": "object detection"}] * 4}, headers=TOKEN)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.extend(p["id"] for p in r.json()["predictions"])

    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    wait_for(lambda: len(acknowledged) >= 400, "400 answers acknowledged", process=server)
    server.kill()  # SIGKILL: no clean-up of any kind
    server.communicate()
    for t in clients:
        t.join()
    logged = set(PredictionLog(get_settings(served[0]).home / "predictions.db").read().id)
    assert set(acknowledged) - logged == set(), f"{len(set(acknowledged) - logged)} of {len(acknowledged)} acknowledged ids not logged"


def replica_of(base: str) -> str | None:
    "The replica that answers `/model`; None when the connection drops (HAProxy may still route to a replica being replaced)."
    try:
        return httpx.get(f"{base}/model", headers=TOKEN, timeout=10).headers["X-Mwml-Replica"]
    except httpx.TransportError:
        return None


def wait_for_two_replicas(base: str, timeout: float = 180) -> set[str]:
    "Block until answers come from two different replicas; their ids."

    def two():
        replicas = {replica_of(base) for _ in range(20)} - {None}
        return replicas if len(replicas) == 2 else None

    return wait_for(two, "two replicas answered", timeout, every=1)


@pytest.fixture(scope="module")
def ray_serve(served):
    "`mwml serve --replicas 2` of the first version, for this module's Ray Serve tests: (env, first, second, base URL, process)."
    env, first, second, base, server = serve_first_version(served, 2)
    try:
        wait_until_ready(server, base, patience=300)
        yield env, first, second, base, server
    finally:
        stderr = terminate(server, patience=60)
    assert server.returncode == 0, stderr
    rows = PredictionLog(get_settings(env).home / "predictions.db").read()
    assert first in set(rows.model_version), set(rows.model_version)


def assert_metrics_cover(base: str, live: set[str], items: int):
    "Once each replica in `live` has answered a prediction, one /metrics scrape covers them all, each sample labelled with its replica."
    answered, item = set(), {"title": "Transformers for text", "description": "attention models that tag news articles"}

    def every_replica_predicted():  # the router may have sent all earlier predictions (`items` in all) to one replica
        nonlocal items
        r = httpx.post(f"{base}/predict", json={"items": [item]}, headers=TOKEN, timeout=30)
        assert r.status_code == 200, r.text
        items += 1
        answered.add(r.headers["X-Mwml-Replica"])
        return live <= answered

    wait_for(every_replica_predicted, f"every replica of {live} answered a prediction", 120, every=0)

    def covered():  # a replica pushes its metrics every second: its batches and its requests may come in different pushes
        text = httpx.get(f"{base}/metrics", headers=TOKEN, timeout=10).text
        sums = per_replica(text, "mwml_batch_size_sum")
        timed = all(f'mwml_request_latency_seconds_count{{endpoint="/predict",replica="{r}"}}' in text for r in live)
        return live <= set(sums) and sum(sums[r] for r in live) >= items and timed

    wait_for(covered, f"/metrics covers replicas {live}: {items} items predicted, /predict timed on each", 120, every=1)


def test_mwml_serve_on_ray_serve(ray_serve):
    "Two replicas answer as the champion does, serve the review routes, share one /metrics, and outlive clients that hang up."
    env, _, _, base, _ = ray_serve
    items = assert_serves_the_champion(base, env)
    # the review room's routes are in the replicas too (`mwml serve`'s setup hook): a reviewer's token works on every one
    assert httpx.get(f"{base}/review", timeout=10).status_code == 401  # the sign-in page
    token = json.loads(run_mwml("review", "add-reviewer", "ann", "--json", env=env).stdout)["token"]  # in the log every replica reads
    reviewer = {"Authorization": f"Bearer {token}", "X-Mwml-Reviewer": "ann"}
    assert httpx.get(f"{base}/review/next", headers=reviewer, timeout=10).json()["item"] is None  # nothing queued yet
    live = wait_for_two_replicas(base)  # /ready needs only one; the other may still be loading its model
    assert_metrics_cover(base, live, items)
    assert_answers_after_clients_hang_up(base)


@pytest.mark.full
def test_ray_serve_survives_a_killed_replica_and_reloads_every_replica(ray_serve):
    env, first, second, base, server = ray_serve
    wait_for_two_replicas(base)  # both replicas answer before one is killed

    # kill one replica during load, once both have answered in it: only the requests in flight at the kill may be lost; the rest
    # are served or, while the survivor carries both replicas' load, shed with a Retry-After (its queue would wait more than
    # max_wait_s: by design), and the replica comes back
    results, record = [], []
    threads = hammer(f"{base}/predict", 400, 8, TOKEN, results, record)
    wait_for(lambda: len({replica for *_, replica in list(record)} - {None}) == 2, "both replicas answered during the load", 120)
    replicas = [p for p in psutil.Process(server.pid).children(recursive=True) if "ServeReplica" in " ".join(p.cmdline())]
    assert len(replicas) == 2, replicas
    kill = time.monotonic()
    replicas[0].send_signal(signal.SIGKILL)
    for t in threads:
        t.join()
    flying, gone = in_flight_at(kill, record), lost(results)
    print(f"killed a replica under load: {results.count(200)} of {len(results)} served, {results.count('shed')} shed, "
          f"{flying} in flight, lost {gone}")  # fmt: skip
    assert len(results) == 400 and len(gone) <= flying, gone  # no more than the requests in flight at the kill
    wait_for_two_replicas(base)  # Serve has replaced the killed one
    fresh = []
    for t in hammer(f"{base}/predict", 40, 4, TOKEN, fresh):
        t.join()
    assert fresh == [200] * 40, fresh

    # a newly promoted champion is picked up on SIGHUP while requests keep flowing, none dropped, by EVERY replica: 40 answers
    # in a row come from both replicas and all name the new version (both successors load the model: slow on a busy machine)
    reload_under_load(server, base, env, second)

    def every_replica_serves_second():
        seen = {(r.headers["X-Mwml-Replica"], r.json()["version"]) for r in [httpx.get(f"{base}/model", headers=TOKEN, timeout=10)
                                                                             for _ in range(40)]}  # fmt: skip
        return {replica for replica, _ in seen} if len(seen) == 2 and {version for _, version in seen} == {second} else None

    live = wait_for(every_replica_serves_second, f"every replica serves version {second}", 180, every=1)
    assert_metrics_cover(base, live, assert_serves_the_champion(base, env))
    rows = PredictionLog(get_settings(env).home / "predictions.db").read()
    assert {first, second} <= set(rows.model_version), set(rows.model_version)
