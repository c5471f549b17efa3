"""The transformer tagger through the real CLI: in-process training, Ray Train with 2 workers,
resume after an interruption, and clear failures, all against a real local MLflow store."""

import json
import re
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import TINY, interrupt, invoke, run_mwml, runs, start_mwml, wait_for, write_tiny_config

from mwml.config import get_settings
from mwml.data import SOURCES
from mwml.models import Tagger


def artifacts(env: dict, run_id: str, path: str = "") -> set[str]:
    client = mlflow.MlflowClient(get_settings(env).tracking_uri)
    return {Path(a.path).name for a in client.list_artifacts(run_id, path)}


def test_train_tiny_tagger_in_process(env, tmp_path):
    out = tmp_path / "tagger"
    r = run_mwml("train", "--config", write_tiny_config(tmp_path, epochs=2), "--output", out, env=env)
    assert r.returncode == 0, r.stderr
    [run] = runs(env)
    assert run.info.status == "FINISHED" and run.info.run_id in r.stdout
    assert run.data.params["backbone"] == "tiny" and run.data.params["epochs"] == "2"
    assert run.data.tags["model"] == "tagger" and run.data.tags["data.holdout.sha256"] == SOURCES["holdout"].sha256
    client = mlflow.MlflowClient(get_settings(env).tracking_uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [0, 1, 2]  # 1 frozen + 2
    assert {"val_f1", "holdout_f1", "holdout_precision_mlops", "train_loss", "f1_score"} <= set(run.data.metrics)
    assert {"config.json", "scores.json", "tagger", "checkpoint", "training_curves.png"} <= artifacts(env, run.info.run_id)
    assert {"model.safetensors", "tagger.json", "tokenizer"} <= artifacts(env, run.info.run_id, "tagger")

    # the --output bundle and the MLflow artifact are the same model, and predict the same
    logged = client.download_artifacts(run.info.run_id, "tagger", str(tmp_path / "dl"))
    holdout = pd.read_csv(get_settings(env).raw_dir / "holdout.csv")
    a, b = Tagger.load(out), Tagger.load(logged)
    assert (a.predict_proba(holdout.title, holdout.description) == b.predict_proba(holdout.title, holdout.description)).all()


def test_train_tiny_tagger_on_ray_with_two_workers(env, tmp_path):
    r = run_mwml("train", "--config", write_tiny_config(tmp_path, epochs=2), "--num-workers", "2", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs(env)
    assert run.info.status == "FINISHED"
    assert run.data.params["num_workers"] == "2"
    client = mlflow.MlflowClient(get_settings(env).tracking_uri)
    logged = {m.step + 1: f"{m.value:.4f}" for m in client.get_metric_history(run.info.run_id, "valid_loss")}
    assert sorted(logged) == [1, 2, 3]
    assert "holdout_f1" in run.data.metrics
    assert {"model.safetensors", "tagger.json"} <= artifacts(env, run.info.run_id, "tagger")
    assert "training_curves.png" in artifacts(env, run.info.run_id)

    # the driver showed each epoch that rank 0 logged, once, with the value it logged
    shown = re.findall(r"epoch (\d+)/3: train_loss [\d.]+, valid_loss ([\d.]+)", r.stderr)
    assert {int(epoch): loss for epoch, loss in shown} == logged and len(shown) == 3, r.stderr[-3000:]


@pytest.mark.full
def test_interrupted_run_is_failed_then_resumes(env, tmp_path):
    config = write_tiny_config(tmp_path, epochs=6, sample_size=None, batch_size=4, patience=10)  # ~7 slow-ish epochs
    proc = start_mwml("train", "--config", config, env=env)
    home = get_settings(env).home
    checkpoints = lambda: list(home.glob("mlartifacts/**/checkpoint/slot-*/state.json"))  # noqa: E731
    wait_for(checkpoints, "a checkpoint was written", 300, every=0.2, process=proc)
    stderr = interrupt(proc)  # Ctrl+C once, then wait: the clean-up marks the run FAILED
    assert proc.returncode != 0, stderr[-3000:]
    [run] = runs(env)
    assert run.info.status == "FAILED"
    done = max(json.loads(p.read_text())["epochs_done"] for p in checkpoints())
    assert 1 <= done < 7  # 1 frozen + 6 epochs: stopped part-way

    r = run_mwml("train", "--resume", run.info.run_id, env=env)
    assert r.returncode == 0, r.stderr
    [run] = runs(env)  # the same run, continued
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(get_settings(env).tracking_uri)
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")})
    assert steps == list(range(7))


def test_resume_an_unknown_run(env):
    r = invoke("train", "--resume", "0123456789abcdef", env=env)
    assert r.returncode == 1 and "no MLflow run '0123456789abcdef'" in r.stderr


def test_unknown_backbone_offline_fails_fast_and_marks_the_run(env, tmp_path):
    start = time.monotonic()
    r = run_mwml("train", "--config", write_tiny_config(tmp_path), "--backbone", "no-such-org/no-such-model",
                 env={**env, "HF_HUB_OFFLINE": "1"}, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert "not in the local Hugging Face cache" in r.stderr and "Use 'minilm'" in r.stderr
    [run] = runs(env)
    assert run.info.status == "FAILED"
    print(f"failed in {time.monotonic() - start:.1f} s")  # seconds: no network wait


@pytest.mark.parametrize(("values", "message"), [({"sample_size": 4}, "fewer than 2 rows"), ({"epoch": 3}, "unknown config key")])
def test_bad_configs_are_clear_errors(env, tmp_path, values, message):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({**TINY, **values}))
    r = invoke("train", "--config", config, env=env)
    assert r.returncode == 1 and message in r.stderr, r.stderr
