"""The HTTP API: every endpoint's validation and auth through FastAPI's TestClient, and one system
test of `mwml serve` on Ray Serve over real HTTP on 127.0.0.1 (answers, a killed replica, a reload)."""

import os
import signal
import subprocess
import threading
import time

import httpx
import mlflow
import numpy as np
import psutil
import pytest
from conftest import MWML, ROOT, free_port, run_mwml
from fastapi.testclient import TestClient

from mwml.config import get_settings
from mwml.data import load
from mwml.models import Tagger, TaggerConfig
from mwml.predict import Predictor
from mwml.serve import Engine, PredictionLog, ServeConfig, build_app

TOKEN = {"Authorization": "Bearer s3cret"}


class Explodes(Predictor):
    "A predictor whose model fails on the title `boom`, to see the server survive a model failure."

    def predict_frame(self, items):
        if "boom" in set(items.title):
            raise RuntimeError("the model failed")
        return super().predict_frame(items)


@pytest.fixture
def client(tmp_path):
    folder = tmp_path / "tiny"
    Tagger.create(TaggerConfig(backbone="tiny")).save(folder)
    config = ServeConfig(model=str(folder), max_items=3, max_body_bytes=2_000, prediction_log=str(tmp_path / "log.db"), token="s3cret")
    engine = Engine(config, Explodes(Tagger.load(folder), {"ref": str(folder)}))
    with TestClient(build_app(engine)) as c:
        yield c


@pytest.mark.parametrize(("method", "path"), [("get", "/ready"), ("get", "/model"), ("post", "/predict"), ("post", "/feedback"),
                                              ("get", "/metrics"), ("post", "/admin/reload")])  # fmt: skip
def test_every_endpoint_but_health_wants_the_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = getattr(client, method)(path, headers=headers)
        assert r.status_code == 401 and "Bearer <MWML_API_TOKEN>" in r.json()["detail"]
    assert client.get("/health").status_code == 200


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
    assert message in str(r.json()["detail"])


def test_bodies_that_are_not_json_or_not_utf8_are_400(client):
    r = client.post("/predict", content=b"{not json", headers={**TOKEN, "content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["detail"]
    r = client.post(
        "/predict", content='{"items": [{"title": "é"}]}'.encode("latin-1"), headers={**TOKEN, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "not UTF-8" in r.json()["detail"]


def test_feedback_and_the_prediction_log(client, tmp_path):
    r = client.post("/predict", json={"items": [{"title": "YOLO", "description": "cars"}]}, headers=TOKEN)
    [answer] = r.json()["predictions"]
    assert client.post("/feedback", json={"id": answer["id"], "tag": "computer-vision"}, headers=TOKEN).json() == {"recorded": True}
    r = client.post("/feedback", json={"id": "nope", "tag": "mlops"}, headers=TOKEN)
    assert r.status_code == 404 and "no prediction with id 'nope'" in r.json()["detail"]
    r = client.post("/feedback", json={"id": answer["id"], "tag": "robotics"}, headers=TOKEN)
    assert r.status_code == 422 and "'robotics' is not one of" in r.json()["detail"]
    log = PredictionLog(tmp_path / "log.db").read()
    assert log.id.tolist() == [answer["id"]] and log.true_tag.tolist() == ["computer-vision"]
    assert log.title.tolist() == ["YOLO"] and log.tag.tolist() == [answer["tag"]] and log.latency_ms.iloc[0] > 0


def test_a_model_failure_is_a_500_with_an_error_id_and_the_server_goes_on(client):
    r = client.post("/predict", json={"items": [{"title": "boom"}]}, headers=TOKEN)
    assert r.status_code == 500 and len(r.json()["error_id"]) == 12
    assert client.post("/predict", json={"items": [{"title": "fine"}]}, headers=TOKEN).status_code == 200
    metrics = client.get("/metrics", headers=TOKEN).text
    assert 'mwml_requests_total{endpoint="/predict",status="500"} 1.0' in metrics
    assert 'mwml_requests_total{endpoint="/predict",status="200"} 1.0' in metrics


def test_model_info_ready_and_docs(client):
    info = client.get("/model", headers=TOKEN).json()
    assert info["backend"] == "torch" and info["classes"] == ["computer-vision", "mlops", "natural-language-processing", "other"]
    assert client.get("/ready", headers=TOKEN).json() == {"ready": True}
    assert "/predict" in client.get("/openapi.json", headers=TOKEN).json()["paths"]
    assert client.get("/docs", headers=TOKEN).status_code == 200 and client.get("/docs").status_code == 401


# --- the system test: `mwml serve` on Ray Serve, real HTTP ---------------------------------------------------------------


def registered_baseline(env, *args) -> str:
    "Train a baseline, register it and make it champion; return its version."
    r = run_mwml("train", "--model", "baseline", *args, env=env)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("MLflow run ")[1].split()[0]
    r = run_mwml("register", run_id, env=env)
    version = r.stdout.split("version ")[1].split()[0]
    mlflow.MlflowClient(get_settings(env).tracking_uri).set_registered_model_alias("mwml-tagger", "champion", version)
    return version


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


def test_mwml_serve_on_ray_serve(env):
    env = {**env, "MWML_API_TOKEN": "s3cret"}
    registered_baseline(env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(MWML), "serve", "--replicas", "2", "--port", str(port)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/ready", headers=TOKEN, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)

        # the server's answers are Predictor's answers
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

        # kill one replica during load: only requests in flight on it may fail; the rest are served, the replica comes back
        results = []
        threads = hammer(f"{base}/predict", 400, 8, TOKEN, results)
        time.sleep(2)
        replicas = [p for p in psutil.Process(server.pid).children(recursive=True) if "ServeReplica" in " ".join(p.cmdline())]
        assert len(replicas) == 2, replicas
        replicas[0].send_signal(signal.SIGKILL)
        for t in threads:
            t.join()
        failed = [s for s in results if s != 200]
        print(f"killed a replica under load: {len(results) - len(failed)} of {len(results)} served, failures {failed}")
        assert len(results) == 400 and len(failed) <= 8, failed  # at most the 8 requests in flight (our concurrency)
        assert all(s == 200 for s in results[-100:])

        # a newly promoted champion is picked up on SIGHUP while requests keep flowing, none dropped
        new_version = registered_baseline(env, "--C", "0.5")
        results = []
        threads = hammer(f"{base}/predict", 200, 4, TOKEN, results)
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/model", headers=TOKEN, timeout=10).json()["version"] != new_version:
            assert time.monotonic() < deadline, "the new champion was not picked up"
            time.sleep(1)
        for t in threads:
            t.join()
        assert results.count(200) == len(results) == 200, [s for s in results if s != 200]
        assert httpx.post(f"{base}/predict", json={"items": [{"title": "GAN art"}]}, headers=TOKEN, timeout=30).status_code == 200
        assert "mwml_request_latency_seconds_bucket" in httpx.get(f"{base}/metrics", headers=TOKEN).text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode is not None
    assert os.path.exists(get_settings(env).home / "predictions.db")
