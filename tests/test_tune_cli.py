"""`mwml tune`: small real Ray Tune searches through the CLI (Optuna and HyperOpt), their parent and
child MLflow runs, trial identity and progress, the best config fed back to `mwml train`, and
resuming an interrupted search."""

import json
import math
import re

import mlflow
import pytest
from helpers import TINY, interrupt, invoke, run_mwml, runs, start_mwml, wait_for

from mwml.config import get_settings
from mwml.train import TrainConfig

SPACE = {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}, "dropout": {"type": "uniform", "low": 0.0, "high": 0.3}}


def write_inputs(folder):
    (folder / "base.json").write_text(json.dumps(TINY))
    (folder / "space.json").write_text(json.dumps(SPACE))
    return ["--config", folder / "base.json", "--space", folder / "space.json", "--max-epochs", "1"]


def lowest_valid_loss(env: dict, runs_: list) -> dict[str, float]:
    "Each trial's lowest validation loss, from the epochs its own MLflow run logged, by Tune trial id."
    client = mlflow.MlflowClient(get_settings(env).tracking_uri)
    return {run.data.tags["trial_id"]: min((m.value for m in client.get_metric_history(run.info.run_id, "valid_loss")), default=math.inf)
            for run in runs_}  # fmt: skip


@pytest.mark.full
def test_hyperopt_search_shows_each_trial_as_it_ends(env, tmp_path):
    r = run_mwml("tune", "--search", "hyperopt", "--num-samples", "2", "--json", *write_inputs(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    [parent] = [run for run in runs(env) if run.data.tags.get("kind") == "tune"]
    assert parent.data.params["algorithm"] == "hyperopt"
    children = [run for run in runs(env) if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [(c.info.status, c.data.tags.get("early_stopped")) for c in children] == [("FINISHED", None)] * 2  # both ran all epochs

    # trials are Tune's trials: distinct ids, the same in the table and in MLflow
    ids = [trial["trial"] for trial in result["trials"]]
    assert len(set(ids)) == 2 and set(ids) == {c.data.tags["trial_id"] for c in children}

    # the best trial is the arg-min of what the trials themselves logged
    lowest = lowest_valid_loss(env, children)
    assert result["best"]["trial"] == min(lowest, key=lowest.get)
    assert result["best"]["valid_loss"] == pytest.approx(lowest[result["best"]["trial"]])

    # one progress line per trial as it ended, with its status and its lowest validation loss
    ended = re.findall(r"trial (\S+) (done|stopped early|failed): best validation loss ([\d.]+) after 2 epochs \((\d)/2", r.stderr)
    assert sorted(trial for trial, *_ in ended) == sorted(ids), r.stderr[-3000:]
    statuses = {trial["trial"]: trial["status"] for trial in result["trials"]}
    assert {trial: status for trial, status, *_ in ended} == statuses == dict.fromkeys(ids, "done")
    assert {trial: float(loss) for trial, _, loss, _ in ended} == pytest.approx(lowest, abs=5e-5)
    assert sorted(count for *_, count in ended) == ["1", "2"]


@pytest.mark.full
def test_search_interrupted_resumed_tracked_and_its_best_config_trains(env, tmp_path):
    best = tmp_path / "best.json"
    proc = start_mwml("tune", "--num-samples", "4", "--name", "job", "--output", best, *write_inputs(tmp_path), env=env)
    finished_trial = lambda: [run for run in runs(env) if run.data.tags.get("mlflow.parentRunId") and run.info.status == "FINISHED"]  # noqa: E731
    wait_for(finished_trial, "a trial finished", 300, every=1, process=proc)
    interrupt(proc)  # Tune stops gracefully on the first Ctrl+C, saving its state
    [parent] = [run for run in runs(env) if run.data.tags.get("kind") == "tune"]
    assert (get_settings(env).home / "ray_results" / "job" / "mwml-search.json").exists()

    r = run_mwml("tune", "--resume", "--output", best, *write_inputs(tmp_path), env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 trials, 0 failed" in r.stdout
    all_runs = runs(env)
    [same_parent] = [run for run in all_runs if run.data.tags.get("kind") == "tune"]
    assert same_parent.info.run_id == parent.info.run_id and same_parent.info.status == "FINISHED"
    assert same_parent.data.metrics["trials"] == 4 and "best_valid_loss" in same_parent.data.metrics
    children = [run for run in all_runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) >= 4 and "RUNNING" not in {c.info.status for c in children}  # an interrupted trial runs again
    assert all(c.data.params["backbone"] == "tiny" for c in children)

    # each of the 4 trials completed once (the interrupted one was re-run under the same Tune id), and the best
    # printed is the arg-min of the validation losses the completed trials logged themselves
    completed = [c for c in children if c.info.status == "FINISHED" and "early_stopped" not in c.data.tags]
    assert sorted({c.data.tags["trial_id"] for c in completed}) == sorted(c.data.tags["trial_id"] for c in completed)
    assert len(completed) == 4
    lowest = lowest_valid_loss(env, completed)
    printed = re.search(r"best: trial (\S+) \(validation loss ([\d.]+)", r.stdout)
    assert printed and printed[1] == min(lowest, key=lowest.get)
    assert float(printed[2]) == pytest.approx(min(lowest.values()), abs=5e-5)

    config = TrainConfig.from_file(best)
    assert config.backbone == "tiny" and SPACE["lr"]["low"] <= config.lr <= SPACE["lr"]["high"]
    assert same_parent.data.params["best_lr"] == str(config.lr)
    r = run_mwml("train", "--config", best, env=env)  # the best config is what `mwml train --config` takes
    assert r.returncode == 0, r.stderr


def test_invalid_space_fails_before_anything_starts(env, tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"learning_rate": {"type": "uniform", "low": 0, "high": 1}}))
    r = invoke("tune", "--space", tmp_path / "space.json", env=env)
    assert r.returncode == 1 and "learning_rate: not a training config field" in r.stderr
    assert runs(env) == [] and not (get_settings(env).home / "ray_results").exists()
