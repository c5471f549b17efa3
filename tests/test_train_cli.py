"""`mwml train`, `mwml pipeline` and `mwml report` against a real MLflow store (SQLite, and a real
`mlflow server` on 127.0.0.1) and a real papermill run on the `mwml` kernel."""

import json
import re

import mlflow
import nbformat
import pandas as pd
import pytest
from helpers import ROOT, invoke, run_mwml, runs, write_tiny_config

from mwml.baseline import BaselineModel
from mwml.config import get_settings
from mwml.data import SOURCES


def measured(metric: str) -> tuple[float, float]:
    "The 95% bootstrap interval of the baseline's holdout `metric` as `benchmarks/baseline.py` measured it (its run is seeded)."
    holdout = json.loads((ROOT / "benchmarks" / "results" / "baseline.json").read_text())["holdout"]
    return holdout[metric]["low"], holdout[metric]["high"]


def test_train_tracks_everything_in_mlflow(env, tmp_path):
    out = tmp_path / "model"
    r = run_mwml("train", "--model", "baseline", "--C", "0.8", "--output", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "val" in r.stdout and "holdout" in r.stdout and "mlops" in r.stdout

    [run] = runs(env)
    assert run.info.status == "FINISHED"
    assert run.info.run_id in r.stdout
    assert run.data.params["C"] == "0.8" and run.data.params["n_holdout"] == "191"
    low, high = measured("f1")  # C=0.8 instead of 1.0 must not move F1 out of the measured interval
    assert low <= run.data.metrics["holdout_f1"] <= high
    assert {"val_f1", "holdout_precision", "holdout_recall", "holdout_f1_mlops"} <= set(run.data.metrics)
    assert run.data.tags["data.dataset.sha256"] == SOURCES["dataset"].sha256
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", run.data.tags["git_sha"])

    # the artifact in MLflow and the --output copy are the same model
    logged = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="model", dst_path=str(tmp_path / "dl"), tracking_uri=get_settings(env).tracking_uri
    )
    holdout = pd.read_csv(get_settings(env).raw_dir / "holdout.csv")
    a, b = BaselineModel.load(logged), BaselineModel.load(out)
    assert (a.predict_proba(holdout.title, holdout.description) == b.predict_proba(holdout.title, holdout.description)).all()


def test_a_run_that_fails_is_marked_failed(env, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "dataset.csv").write_text("id,created_on,title,description,tag\n")  # wrong checksum
    r = invoke("train", "--model", "baseline", env={**env, "MWML_DATA_MIRROR": str(mirror)})
    assert r.returncode == 1 and "sha256" in r.stderr
    [run] = runs(env)
    assert run.info.status == "FAILED"


def test_pipeline_prints_holdout_scores(env, tmp_path):
    # the real default (MiniLM, 7 epochs) is what `make run` and benchmarks/train.py run
    r = run_mwml("pipeline", "--config", write_tiny_config(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    scores = re.search(r"baseline on holdout.csv: weighted precision ([\d.]+), recall ([\d.]+), F1 ([\d.]+)", r.stdout)
    assert scores, r.stdout
    precision, recall, f1 = map(float, scores.groups())
    assert measured("f1")[0] <= f1 <= measured("f1")[1]  # above the interval would smell of leakage, below of a regression
    assert measured("precision")[0] <= precision <= measured("precision")[1]
    assert "tagger on holdout.csv: weighted precision" in r.stdout
    assert {run.data.tags["model"] for run in runs(env)} == {"baseline", "tagger"}
    assert "mlflow ui --backend-store-uri" in r.stdout


def test_train_against_a_tracking_server(env, mlflow_server, tmp_path):
    r = run_mwml("train", "--model", "baseline", env={**env, "MLFLOW_TRACKING_URI": mlflow_server})
    assert r.returncode == 0, r.stderr
    [run] = runs(env, mlflow_server)
    low, high = measured("f1")
    assert run.info.status == "FINISHED" and low <= run.data.metrics["holdout_f1"] <= high
    assert (tmp_path / "served").is_dir()  # artifacts went through the server
    assert not (get_settings(env).home / "mlflow.db").exists()


def test_report_writes_notebook_and_html(env):
    r = run_mwml("report", "nbs/02_baseline.ipynb", "-p", "C", "0.5", "-p", "char_ngram_max", "4", env=env)
    assert r.returncode == 0, r.stderr
    [notebook] = (get_settings(env).reports_dir).glob("02_baseline-*.ipynb")
    assert notebook.with_suffix(".html").exists()
    nb = nbformat.read(notebook, as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "C = 0.5" in injected.source and "char_ngram_max = 4" in injected.source
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    [run] = runs(env)  # the report's training run went to this home's store
    assert run.data.params["C"] == "0.5"


@pytest.mark.full
def test_a_failing_report_keeps_the_partial_notebook(env):
    r = run_mwml("report", "nbs/02_baseline.ipynb", "-p", "val_size", "1.5", env=env)
    assert r.returncode == 1
    assert "val_size must be between 0 and 1" in r.stderr
    [notebook] = get_settings(env).reports_dir.glob("02_baseline-*.ipynb")
    assert str(notebook) in r.stderr
    assert "val_size must be between 0 and 1" in notebook.read_text()
    assert "val_size must be between 0 and 1" in notebook.with_suffix(".html").read_text()


def test_report_refuses_unknown_parameters_before_running(env):
    r = invoke("report", "nbs/02_baseline.ipynb", "-p", "learning_rate", "0.1", env=env)
    assert r.returncode == 1 and "has no parameter learning_rate" in r.stderr
    assert not get_settings(env).reports_dir.exists()
