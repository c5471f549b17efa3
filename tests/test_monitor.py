"""Monitoring through the real parts: a tiny Tagger trained, registered and served by `mwml serve` on 127.0.0.1; ordinary and
off-domain traffic over real HTTP; `mwml monitor` reading the server's prediction log, its exit codes, the webhook arriving at
a local HTTP server, the Evidently page opened in headless Chromium, the MLflow metrics, and `--on-alert retrain`."""

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from browser import EVIDENTLY_DETAILS, chromium_path, open_report
from helpers import ROOT, interrupt, mwml_env, register, run_mwml, serve, train, write_tiny_config

from mwml.config import get_settings
from mwml.data import load

pytestmark = pytest.mark.full  # the whole module is a long proof: `make test-full`

TOKEN = {"Authorization": "Bearer s3cret"}
OFF_DOMAIN = ROOT / "benchmarks" / "offdomain.csv"  # hand-written projects that are not about machine learning


def now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture(scope="module")
def served(tmp_path_factory, good_files):
    "A tiny Tagger trained and registered as champion in a fresh MWML_HOME, served by `mwml serve` on 127.0.0.1."
    env = mwml_env(tmp_path_factory.mktemp("monitor") / "home", good_files, MWML_API_TOKEN="s3cret")
    version = register(env, train(env, "--config", write_tiny_config(get_settings(env).home, sample_size=400)))
    s = get_settings(env)
    registry = mlflow.MlflowClient(s.tracking_uri)
    version = registry.get_model_version(s.model_name, version)
    assert version.tags["reference"] == "true"  # registration stored the reference profile
    registry.set_registered_model_alias(s.model_name, "champion", version.version)
    server, base = serve(env)
    try:
        yield env, base, version
    finally:
        interrupt(server)  # Ctrl+C once: shutting down (uvicorn, then the interpreter with torch) can take several seconds


def send(base: str, projects: pd.DataFrame, feedback: str | None = None) -> list[str]:
    "POST `projects` to /predict in batches of 8; with `feedback`, POST each one's true tag (that column) to /feedback."
    ids = []
    for i in range(0, len(projects), 8):
        chunk = projects.iloc[i : i + 8]
        items = [{"title": t, "description": d} for t, d in zip(chunk.title, chunk.description)]
        r = httpx.post(f"{base}/predict", json={"items": items}, headers=TOKEN, timeout=60)
        assert r.status_code == 200, r.text
        ids += [p["id"] for p in r.json()["predictions"]]
    for pid, tag in zip(ids, projects[feedback] if feedback else []):
        r = httpx.post(f"{base}/feedback", json={"id": pid, "tag": tag}, headers=TOKEN, timeout=30)
        assert r.status_code == 200, r.text
    return ids


@pytest.fixture(scope="module")
def calm(served):
    "The holdout projects, sent through the server: the traffic the model was made for. (start, end) of that traffic."
    env, base, _ = served
    start = now()
    send(base, load("holdout", get_settings(env)))
    return start, now()


@pytest.fixture(scope="module")
def shifted(served, calm):
    "Off-domain projects (cooking, travel, sport ...) sent twice, each with `other` as its true tag. The time it started."
    env, base, _ = served
    start = now()
    projects = pd.concat([pd.read_csv(OFF_DOMAIN)] * 2, ignore_index=True).assign(tag="other")
    send(base, projects, feedback="tag")
    return start


@pytest.fixture
def webhook():
    "A local HTTP server that records the JSON bodies POSTed to it."
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


def test_ordinary_traffic_raises_no_alert(served, calm, tmp_path):
    env, _, version = served
    r = run_mwml("monitor", "--since", calm[0], "--until", calm[1], "--window", "200", "--reports", tmp_path, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert result["model"]["version"] == str(version.version) and result["alerts"] == 0
    assert [w["rows"] for w in result["windows"]] == [191]
    assert {c["name"] for c in result["windows"][0]["checks"]} >= {"evidently:text", "embedding_mmd", "predicted_tags_chi2"}


def test_off_domain_traffic_alerts_reports_and_retrains_on_the_feedback(served, shifted, webhook, tmp_path):
    "One pass as cron would run it: the alert (exit 4, webhook), the JSON and HTML reports, MLflow, then a challenger retrained."
    env, _, version = served
    url, received = webhook
    r = run_mwml("monitor", "--since", shifted, "--window", "60", "--reports", tmp_path, "--on-alert", "retrain", "--json",
                 env={**env, "MWML_ALERT_WEBHOOK": url}, timeout=900)  # fmt: skip
    assert r.returncode == 4, r.stdout + r.stderr  # 4: an alert, for cron and CI
    result = json.loads(r.stdout)
    assert result["alerts"] == 2 and result["alert_delivered"] is True
    assert all("input drift" in w["verdict"] for w in result["windows"])

    assert len(received) == 1 and received[0]["alerts"] == 2 and received[0]["model"]["version"] == str(version.version)
    assert {"evidently:text", "embedding_mmd"} <= {c["name"] for c in received[0]["fired"][0]["checks"]}
    report = json.loads(Path(received[0]["report"]["json"]).read_text())
    assert report["alerts"] == 2 and Path(report["html"]).parent == tmp_path

    s = get_settings(env)
    client = mlflow.MlflowClient(s.tracking_uri)
    [monitoring] = client.search_runs([client.get_experiment_by_name("monitoring").experiment_id], f"run_id = '{result['mlflow_run_id']}'")
    assert monitoring.data.tags["alerts"] == "2" and monitoring.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(monitoring.info.run_id, "embedding_mmd.p_value")] == [0, 1]
    assert (tmp_path / "evidently-workspace").is_dir()

    page = open_report(Path(report["html"]), expand=EVIDENTLY_DETAILS, chromium=chromium_path())
    assert page.ok, page  # no console errors, no page errors, nothing fetched from the network
    assert page.chart_count >= 4, page  # the drift histograms of the four descriptors, at least

    retrained = result["retrained"]
    data = Path(retrained["data"])
    assert data.parent == s.raw_dir and data.name.startswith("feedback-")
    feedback = pd.read_csv(data)
    assert len(feedback) == 60 and set(feedback.tag) == {"other"}  # the 60 distinct labelled rows, duplicates dropped
    new = client.get_model_version(s.model_name, retrained["version"])
    assert int(new.version) > int(version.version) and new.tags["gate"] in ("promoted", "refused")
    assert client.get_run(new.run_id).data.params["extra_data"] == str(data)
    assert client.get_run(new.run_id).data.tags["data.extra.sha256"]
