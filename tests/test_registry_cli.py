"""`mwml evaluate`, `register`, `promote`, `leaderboard` and `test-model` through the real command,
against a real MLflow store (SQLite, and one real `mlflow server` on 127.0.0.1)."""

import json
import re

import mlflow
import pandas as pd
import pytest
from conftest import run_mwml, runs

from mwml.config import get_settings
from mwml.models import Tagger, TaggerConfig


def trained_run(env, *args) -> str:
    "Train a baseline through the CLI; return its MLflow run id."
    r = run_mwml("train", "--model", "baseline", *args, env=env)
    assert r.returncode == 0, r.stderr
    return re.search(r"MLflow run ([0-9a-f]{32})", r.stdout).group(1)


def aliases(env, tracking_uri=None) -> dict:
    client = mlflow.MlflowClient(tracking_uri or get_settings(env).tracking_uri)
    return {a: str(v) for a, v in client.get_registered_model("mwml-tagger").aliases.items()}


def test_register_promote_evaluate_and_refuse(env, tmp_path):
    good = trained_run(env)
    r = run_mwml("register", good, env=env)
    assert r.returncode == 0 and "version 1 (alias challenger)" in r.stdout, r.stderr
    r = run_mwml("promote", env=env)
    assert r.returncode == 0 and "promoted: version 1 is now the champion" in r.stdout, r.stdout + r.stderr
    assert aliases(env) == {"champion": "1"}

    # a weak challenger is refused with the reason, and champion does not move
    weak = trained_run(env, "--C", "0.001")
    assert run_mwml("register", weak, env=env).returncode == 0
    r = run_mwml("promote", env=env)
    assert r.returncode == 1 and "refused: version 2 stays challenger" in r.stdout, r.stdout + r.stderr
    assert "F1 of mlops drops" in r.stdout  # C=0.001 is still inside the F1 interval, but breaks mlops
    assert aliases(env) == {"champion": "1", "challenger": "2"}

    # evaluate the champion: a JSON report on disk and an MLflow run with the figures
    report_path = tmp_path / "eval.json"
    r = run_mwml("evaluate", "--model", "champion", "--output", report_path, env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(report_path.read_text())
    f1 = report["overall"]["f1"]
    assert f1["low"] < f1["value"] < f1["high"] and f1["value"] > 0.9
    assert report["model"]["version"] == "1" and report["n"] == 191
    assert {s["slice"] for s in report["slices"]} >= {"short_text", "nlp_transformers", "cv_video"}
    [evaluation] = [run for run in runs(env) if run.data.tags.get("model") == "evaluation"]
    assert evaluation.data.metrics["holdout_f1"] == pytest.approx(f1["value"])
    assert evaluation.data.tags["evaluated.run_id"] == good

    # the pyfunc flavour answers like the model
    mlflow.set_tracking_uri(get_settings(env).tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/mwml-tagger@champion")
    out = pyfunc.predict(pd.DataFrame({"title": ["YOLO object detection"], "description": ["Detect cars in images."]}))
    assert out.tag.tolist() == ["computer-vision"] and out.filter(like="p_").sum(axis=1).round(6).tolist() == [1.0]

    r = run_mwml("leaderboard", env=env)
    assert r.returncode == 0 and re.search(r"^\s*1\s+champion\s+baseline", r.stdout, re.M), r.stdout


def test_bad_references_and_data_are_refused_and_leave_the_registry_alone(env, tmp_path):
    good = trained_run(env)
    assert run_mwml("register", good, env=env).returncode == 0
    before = aliases(env)

    r = run_mwml("evaluate", "--model", "gold", env=env)
    assert r.returncode == 1 and "has no alias 'gold'; its aliases are ['challenger']" in r.stderr

    mlflow.set_tracking_uri(get_settings(env).tracking_uri)
    with mlflow.start_run(experiment_id=runs(env)[0].info.experiment_id) as empty:
        mlflow.log_param("note", "no model")
    r = run_mwml("register", empty.info.run_id, env=env)
    assert r.returncode == 1 and f"run {empty.info.run_id} has no model" in r.stderr

    unknown = tmp_path / "robots.csv"
    unknown.write_text("id,created_on,title,description,tag\n1,2020-01-01 00:00:00,Robot arm,Grasping with RL,robotics\n")
    r = run_mwml("evaluate", "--model", "challenger", "--data", unknown, env=env)
    assert r.returncode == 1 and "labels the model does not know: ['robotics']" in r.stderr

    r = run_mwml("promote", "--model", "7", env=env)
    assert r.returncode == 1 and "has no version '7'" in r.stderr
    assert aliases(env) == before
    assert mlflow.MlflowClient(get_settings(env).tracking_uri).get_registered_model("mwml-tagger").latest_versions[0].version in (1, "1")


def test_registry_through_a_tracking_server(env, mlflow_server):
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_server}
    run_id = trained_run(env)
    assert run_mwml("register", run_id, env=env).returncode == 0
    r = run_mwml("promote", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert aliases(env, mlflow_server) == {"champion": "1"}
    r = run_mwml("evaluate", "--model", "champion", env=env)
    assert r.returncode == 0 and "f1" in r.stdout, r.stderr
    assert not (get_settings(env).home / "mlflow.db").exists()


def test_model_tests_pass_a_trained_model_and_fail_an_untrained_one(env, tmp_path):
    r = run_mwml("train", "--model", "baseline", "--output", tmp_path / "baseline", env=env)
    assert r.returncode == 0, r.stderr
    r = run_mwml("test-model", "--model", tmp_path / "baseline", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout
    r = run_mwml("report", "nbs/06_evaluate.ipynb", "-p", "model", tmp_path / "baseline", "-p", "n_boot", "200", env=env)
    assert r.returncode == 0, r.stderr
    [html] = get_settings(env).reports_dir.glob("06_evaluate-*.html")
    assert "confusion matrix" in html.read_text() and "<img" in html.read_text()  # the plots are in the report

    Tagger.create(TaggerConfig(backbone="tiny")).save(tmp_path / "untrained")
    r = run_mwml("test-model", "--model", tmp_path / "untrained", env=env)
    assert r.returncode == 1, r.stdout
    assert "pass rate" in r.stdout and "is below the minimum" in r.stdout
