"""`mwml tune`: a small real Ray Tune search through the CLI, its parent and child MLflow runs, the
best config fed back to `mwml train`, and resuming an interrupted search."""

import json
import time

from conftest import interrupt, run_mwml, runs, start_mwml

from mwml.config import get_settings
from mwml.train import TrainConfig

TINY = {"backbone": "tiny", "epochs": 1, "sample_size": 96, "batch_size": 16, "max_length": 64, "lr": 1e-2}
SPACE = {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}, "dropout": {"type": "uniform", "low": 0.0, "high": 0.3}}


def write_inputs(folder):
    (folder / "base.json").write_text(json.dumps(TINY))
    (folder / "space.json").write_text(json.dumps(SPACE))
    return ["--config", folder / "base.json", "--space", folder / "space.json", "--max-epochs", "1"]


def test_search_interrupted_resumed_tracked_and_its_best_config_trains(env, tmp_path):
    best = tmp_path / "best.json"
    proc = start_mwml("tune", "--num-samples", "4", "--name", "job", "--output", best, *write_inputs(tmp_path), env=env)
    deadline = time.monotonic() + 300
    while not [run for run in runs(env) if run.data.tags.get("mlflow.parentRunId") and run.info.status == "FINISHED"]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no finished trial within 300 s"
        time.sleep(1)
    interrupt(proc, every=90)  # Tune stops gracefully on the first Ctrl+C, saving its state
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

    config = TrainConfig.from_file(best)
    assert config.backbone == "tiny" and SPACE["lr"]["low"] <= config.lr <= SPACE["lr"]["high"]
    assert same_parent.data.params["best_lr"] == str(config.lr)
    r = run_mwml("train", "--config", best, env=env)  # the best config is what `mwml train --config` takes
    assert r.returncode == 0, r.stderr


def test_invalid_space_fails_before_anything_starts(env, tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"learning_rate": {"type": "uniform", "low": 0, "high": 1}}))
    r = run_mwml("tune", "--space", tmp_path / "space.json", env=env)
    assert r.returncode == 1 and "learning_rate: not a training config field" in r.stderr
    assert runs(env) == [] and not (get_settings(env).home / "ray_results").exists()
