"""`mwml evaluate`, `register`, `promote`, `leaderboard` and `test-model` through the real command,
against a real MLflow store (SQLite, and one real `mlflow server` on 127.0.0.1)."""

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import ROOT, invoke, register, run_mwml, runs, train

from mwml.cli import EXIT_REFUSED
from mwml.config import get_settings

# The baseline (seed 42) measured on holdout.csv: weighted F1 0.921, 95% bootstrap interval 0.880-0.958
# (benchmarks/results/evaluate.json). A trained baseline below the interval's low end has got worse.
BASELINE_F1_LOW = 0.879


INPUT = pd.DataFrame(
    {
        "title": ["YOLO object detection", "BERT for tweets", "Kubernetes model serving"],
        "description": ["Detect cars in images.", "Sentiment of short texts.", "Deploy and monitor models."],
    }
)

# Runs MLflow's own CLI in a Python started with -S: site-packages is put on sys.path as a plain folder, so its .pth
# files, among them the one that makes this project's editable mwml importable, are never run. The script checks that
# mwml cannot be imported, runs `mlflow models predict --env-manager local` (which predicts in this same process), and
# prints where the mwml it then imported came from.
ISOLATED_PREDICT = """
import importlib.util, sys
sys.path = [p for p in sys.path if p not in ("", {root!r})] + [{site!r}]
assert importlib.util.find_spec("mwml") is None, "mwml is importable before the model is loaded"
from mlflow.cli import cli
cli.main(["models", "predict", "-m", {uri!r}, "-i", {input!r}, "-o", {output!r}, "--env-manager", "local"],
         standalone_mode=False)
print("mwml loaded from", sys.modules["mwml"].__file__)
"""


def predict_with_mlflow_cli(env: dict, uri: str, tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    "(predictions of `mlflow models predict` on INPUT, the file the mwml it used was imported from)."
    source, output = tmp_path / "input.json", tmp_path / "predictions.json"
    source.write_text(json.dumps({"dataframe_split": {"columns": list(INPUT.columns), "data": INPUT.values.tolist()}}))
    site = sysconfig.get_paths()["purelib"]
    script = ISOLATED_PREDICT.format(root=str(ROOT), site=site, uri=uri, input=str(source), output=str(output))
    isolated = {**env, "MLFLOW_TRACKING_URI": get_settings(env).tracking_uri, "PYTHONNOUSERSITE": "1"}
    isolated.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-S", "-c", script], env=isolated, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [line] = [line for line in r.stdout.splitlines() if line.startswith("mwml loaded from ")]
    return pd.DataFrame(json.loads(output.read_text())["predictions"]), Path(line.removeprefix("mwml loaded from "))


def aliases(env, tracking_uri=None) -> dict:
    client = mlflow.MlflowClient(tracking_uri or get_settings(env).tracking_uri)
    return {a: str(v) for a, v in client.get_registered_model("mwml-tagger").aliases.items()}


def test_register_promote_evaluate_and_refuse(env, tmp_path):
    good = train(env, "--model", "baseline")
    r = run_mwml("register", good, env=env)
    assert r.returncode == 0 and "version 1 (alias challenger)" in r.stdout, r.stderr
    r = run_mwml("promote", env=env)
    assert r.returncode == 0 and "promoted: version 1 is now the champion" in r.stdout, r.stdout + r.stderr
    assert aliases(env) == {"champion": "1"}

    # a weak challenger is refused with the reason, and champion does not move
    weak = train(env, "--model", "baseline", "--C", "0.001")
    register(env, weak)
    r = invoke("promote", "--json", env=env)  # the decision as JSON for scripts; the exit code says "refused"
    assert r.returncode == EXIT_REFUSED, r.stdout + r.stderr
    decision = json.loads(r.stdout)
    assert decision["promoted"] is False and decision["versions"] == {"challenger": "2", "champion": "1"}
    assert any("F1 of mlops drops" in reason for reason in decision["reasons"])  # C=0.001 is inside the F1 interval, breaks mlops
    assert aliases(env) == {"champion": "1", "challenger": "2"}

    # evaluate the champion: a JSON report on disk and an MLflow run with the figures
    report_path = tmp_path / "eval.json"
    r = run_mwml("evaluate", "--model", "champion", "--output", report_path, "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(report_path.read_text())
    assert json.loads(r.stdout)["overall"] == report["overall"]  # --json prints the report it writes
    f1 = report["overall"]["f1"]
    assert f1["low"] < f1["value"] < f1["high"] and f1["value"] >= BASELINE_F1_LOW, f1
    assert report["model"]["version"] == "1" and report["n"] == 191
    assert {s["slice"] for s in report["slices"]} >= {"short_text", "nlp_transformers", "cv_video"}
    [evaluation] = [run for run in runs(env) if run.data.tags.get("model") == "evaluation"]
    assert evaluation.data.metrics["holdout_f1"] == pytest.approx(f1["value"])
    assert evaluation.data.tags["evaluated.run_id"] == good
    client = mlflow.MlflowClient(get_settings(env).tracking_uri)
    figures = {a.path: a.file_size for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"confusion_matrix.png", "reliability.png", "evaluation.json"} <= set(figures), figures
    assert min(figures["confusion_matrix.png"], figures["reliability.png"]) > 1000, figures  # real images, not empty files

    # the pyfunc flavour answers like the model
    mlflow.set_tracking_uri(get_settings(env).tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/mwml-tagger@champion")
    out = pyfunc.predict(INPUT.head(1))
    assert out.tag.tolist() == ["computer-vision"] and out.filter(like="p_").sum(axis=1).round(6).tolist() == [1.0]
    cli_out, mwml_file = predict_with_mlflow_cli(env, "models:/mwml-tagger/1", tmp_path)
    assert cli_out.tag.tolist() == pyfunc.predict(INPUT).tag.tolist()
    pd.testing.assert_frame_equal(cli_out.filter(like="p_"), pyfunc.predict(INPUT).filter(like="p_"), atol=1e-9)
    assert mwml_file.parts[-3:] == ("code", "mwml", "__init__.py") and ROOT not in mwml_file.parents, mwml_file

    r = run_mwml("leaderboard", env=env)
    assert r.returncode == 0 and re.search(r"^\s*1\s+champion\s+baseline", r.stdout, re.M), r.stdout
    assert "evaluating every version" in r.stderr  # it says what it is doing, on stderr
    r = invoke("leaderboard", "--json", env=env)
    board = json.loads(r.stdout)
    assert [row["version"] for row in board] == [1, 2] and board[0]["alias"] == "champion", board


def test_bad_references_and_data_are_refused_and_leave_the_registry_alone(env, tmp_path):
    register(env, train(env, "--model", "baseline"))
    before = aliases(env)

    r = invoke("evaluate", "--model", "gold", env=env)
    assert r.returncode == 1 and "has no alias 'gold'; its aliases are ['challenger']" in r.stderr

    mlflow.set_tracking_uri(get_settings(env).tracking_uri)
    with mlflow.start_run(experiment_id=runs(env)[0].info.experiment_id) as empty:
        mlflow.log_param("note", "no model")
    r = invoke("register", empty.info.run_id, env=env)
    assert r.returncode == 1 and f"run {empty.info.run_id} has no model" in r.stderr

    unknown = tmp_path / "robots.csv"
    unknown.write_text("id,created_on,title,description,tag\n1,2020-01-01 00:00:00,Robot arm,Grasping with RL,robotics\n")
    r = invoke("evaluate", "--model", "challenger", "--data", unknown, env=env)
    assert r.returncode == 1 and "labels the model does not know: ['robotics']" in r.stderr

    r = invoke("promote", "--model", "7", env=env)
    assert r.returncode == 1 and "has no version '7'" in r.stderr
    assert aliases(env) == before
    assert mlflow.MlflowClient(get_settings(env).tracking_uri).get_registered_model("mwml-tagger").latest_versions[0].version in (1, "1")


@pytest.mark.full
def test_registry_through_a_tracking_server(env, mlflow_server):
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_server}
    register(env, train(env, "--model", "baseline"))
    r = run_mwml("promote", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert aliases(env, mlflow_server) == {"champion": "1"}
    r = run_mwml("evaluate", "--model", "champion", env=env)
    assert r.returncode == 0 and "f1" in r.stdout, r.stderr
    assert not (get_settings(env).home / "mlflow.db").exists()


@pytest.mark.full
def test_model_tests_pass_a_trained_model_and_fail_an_untrained_one(env, tmp_path, untrained_tiny):
    r = run_mwml("train", "--model", "baseline", "--output", tmp_path / "baseline", env=env)
    assert r.returncode == 0, r.stderr
    r = run_mwml("test-model", "--model", tmp_path / "baseline", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout
    r = run_mwml("report", "nbs/06_evaluate.ipynb", "-p", "model", tmp_path / "baseline", "-p", "n_boot", "200", env=env)
    assert r.returncode == 0, r.stderr
    [html] = get_settings(env).reports_dir.glob("06_evaluate-*.html")
    assert "confusion matrix" in html.read_text() and "<img" in html.read_text()  # the plots are in the report

    r = run_mwml("test-model", "--model", untrained_tiny, env=env)
    assert r.returncode == 1, r.stdout
    assert "pass rate" in r.stdout and "is below the minimum" in r.stdout
