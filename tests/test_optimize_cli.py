"""`mwml optimize` through the real command: a tiny Tagger trained and made champion, its ONNX and int8 variants made, registered
and gated once for the module; then each variant answers as its parent through `mwml predict`, `predict-file` (in process and on
Ray Data) and `mwml serve` on 127.0.0.1, and what cannot be optimised or loaded is refused."""

import json
import signal

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import invoke, mwml_json, register, run_mwml, serve, terminate, train, write_tiny_config

from mwml.config import get_settings
from mwml.data import load
from mwml.models import ONNX_FILE, Tagger

pytestmark = pytest.mark.full  # the whole module is a long proof: `make test-full`

TOKEN = {"Authorization": "Bearer s3cret"}
PROJECTS = [("BERT for sentiment", "Classify the sentiment of tweets with a fine-tuned language model.")]  # predict-file covers 40 more


@pytest.fixture(scope="module")
def env_module(env_module) -> dict:
    "The module's MWML_HOME (conftest's), with an API token for the server."
    return {**env_module, "MWML_API_TOKEN": "s3cret"}


@pytest.fixture(scope="module")
def optimised(env_module, tmp_path_factory) -> dict:
    "A tiny Tagger trained and registered as champion, then `mwml optimize --methods onnx,int8 --json` on its run, once."
    run_id = train(env_module, "--config", write_tiny_config(tmp_path_factory.mktemp("config"), sample_size=240))
    champion = register(env_module, run_id, "champion")
    table = mwml_json("optimize", "--model", run_id, "--methods", "onnx,int8", "--repeats", "1", env=env_module)
    return {"run_id": run_id, "champion": champion, "table": table, "rows": {row["variant"]: row for row in table}}


@pytest.fixture(scope="module")
def holdout_csv(env_module, tmp_path_factory) -> str:
    "The first 40 holdout projects in a CSV file."
    path = tmp_path_factory.mktemp("holdout") / "holdout40.csv"
    load("holdout", get_settings(env_module)).head(40).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def parent_predictions(optimised, holdout_csv, env_module, tmp_path_factory) -> pd.DataFrame:
    "`mwml predict-file` of the torch parent (by its run id) on the 40 holdout projects."
    out = tmp_path_factory.mktemp("parent") / "parent.csv"
    r = run_mwml("predict-file", holdout_csv, out, "--model", optimised["run_id"], env=env_module)
    assert r.returncode == 0 and "40 rows predicted" in r.stdout, r.stderr
    return pd.read_csv(out)


def version_of(optimised: dict, variant: str) -> str:
    "The registry version `mwml optimize` gave `variant`."
    return optimised["rows"][variant]["version"]


def predict_file(holdout_csv: str, out, model: str, env: dict, *options) -> pd.DataFrame:
    "`mwml predict-file` of `model` on the holdout sample, read back."
    r = run_mwml("predict-file", holdout_csv, out, "--model", model, *options, env=env)
    assert r.returncode == 0 and "40 rows predicted" in r.stdout, r.stderr
    return pd.read_csv(out)


def assert_same_predictions(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-4):
    "The same rows, tags and abstentions; probabilities within `atol`."
    assert a.id.tolist() == b.id.tolist()
    assert a.predicted_tag.tolist() == b.predicted_tag.tolist() and a.abstained.tolist() == b.abstained.tolist()
    np.testing.assert_allclose(a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy(), atol=atol)


def test_optimize_prints_the_table_and_registers_gated_variants(optimised, env_module):
    rows, run_id = optimised["rows"], optimised["run_id"]
    assert [row["variant"] for row in optimised["table"]] == ["parent", "onnx", "int8"]
    assert [row["backend"] for row in optimised["table"]] == ["torch", "onnx", "onnx"]
    assert [row["method"] for row in optimised["table"]] == ["trained", "onnx", "int8"]
    assert rows["parent"]["run_id"] == run_id and rows["parent"]["gate"] == "" and rows["parent"]["speedup_b1"] == 1
    assert 0 < rows["int8"]["mb"] < rows["onnx"]["mb"], (rows["int8"]["mb"], rows["onnx"]["mb"])
    assert rows["onnx"]["f1"] == pytest.approx(rows["parent"]["f1"], abs=0.02)  # same logits within 1e-4: same answers

    s = get_settings(env_module)
    registry = mlflow.MlflowClient(s.tracking_uri)
    versions = [version_of(optimised, v) for v in ("onnx", "int8")]
    assert len(set(versions + [optimised["champion"]])) == 3, versions
    for variant, version in zip(("onnx", "int8"), versions):
        row = rows[variant]
        assert row["gate"] == "passed" or row["gate"].startswith("refused: "), row["gate"]
        mv = registry.get_model_version(s.model_name, version)
        assert mv.run_id == row["run_id"] != run_id and not mv.aliases, (mv.run_id, mv.aliases)
        tags = mv.tags
        assert (tags["variant"], tags["method"], tags["parent_run"], tags["backend"]) == (variant, variant, run_id, "onnx"), tags
        assert tags["gate"] in ("passed", "refused"), tags
        reasons = json.loads(tags["gate_reasons"])
        assert isinstance(reasons, list) and all(isinstance(reason, str) for reason in reasons), reasons
        assert row["gate"] == ("passed" if tags["gate"] == "passed" else "refused: " + "; ".join(reasons))
        run = registry.get_run(row["run_id"])
        assert run.data.tags["parent_run"] == run_id and run.data.tags["backend"] == "onnx"
    # gating is not promoting: the champion is still the parent's version
    assert str(registry.get_model_version_by_alias(s.model_name, "champion").version) == optimised["champion"]


def test_predict_with_the_onnx_version_answers_as_the_parent(optimised, env_module):
    for title, description in PROJECTS:
        answers = []
        for model in (version_of(optimised, "onnx"), optimised["run_id"]):
            r = run_mwml("predict", "--title", title, "--description", description, "--model", model, "--json", env=env_module)
            assert r.returncode == 0, r.stderr
            answers.append(json.loads(r.stdout))
        onnx, torch = answers
        assert (onnx["tag"], onnx["abstained"]) == (torch["tag"], torch["abstained"]), answers
        assert list(onnx["probabilities"]) == list(torch["probabilities"])
        np.testing.assert_allclose(list(onnx["probabilities"].values()), list(torch["probabilities"].values()), atol=1e-4)


def test_predict_file_with_the_onnx_version_in_process_and_on_ray_data(optimised, env_module, holdout_csv, parent_predictions, tmp_path):
    onnx = version_of(optimised, "onnx")
    local = predict_file(holdout_csv, tmp_path / "onnx.csv", onnx, env_module)
    assert_same_predictions(local, parent_predictions)
    on_ray = predict_file(holdout_csv, tmp_path / "onnx-ray.csv", onnx, env_module, "--ray", "--num-actors", "1")
    assert_same_predictions(on_ray, parent_predictions)
    assert parent_predictions.predicted_tag.nunique() > 1, parent_predictions.predicted_tag.value_counts()  # not a constant model


def test_serve_the_int8_version(optimised, env_module, holdout_csv, tmp_path):
    # int8 quantises activations per batch (one scale per tensor), so an answer depends a little on the batch it was in
    # (up to ~3e-3 in probability here, enough to flip a tag near the threshold): compare the same batches of 16 rows.
    # Sent one request at a time, each request is one batch of the server's batcher, as each chunk is one of predict-file's.
    int8 = version_of(optimised, "int8")
    expected = predict_file(holdout_csv, tmp_path / "int8.csv", int8, env_module, "--chunk-size", "16")
    items = [{"title": t, "description": d} for t, d in zip(expected.title, expected.description.fillna(""))]
    server, base = serve(env_module, "--model", int8)
    try:
        info = httpx.get(f"{base}/model", headers=TOKEN, timeout=10).json()
        assert info["backend"] == "onnx" and info["version"] == int8, info
        served = []
        for i in range(0, len(items), 16):
            r = httpx.post(f"{base}/predict", json={"items": items[i : i + 16]}, headers=TOKEN, timeout=30)
            assert r.status_code == 200, r.text
            served += r.json()["predictions"]
    finally:
        stderr = terminate(server, 120, signal.SIGINT)  # Ctrl+C
    assert server.returncode == 0 and "Traceback" not in stderr, stderr
    assert [a["tag"] for a in served] == expected.predicted_tag.tolist()
    np.testing.assert_allclose([list(a["probabilities"].values()) for a in served], expected.filter(like="p_").to_numpy(), atol=1e-6)


def test_optimize_refuses_unknown_methods_and_variants(optimised, env_module):
    r = invoke("optimize", "--methods", "onnx,bogus", env=env_module)
    assert r.returncode == 1 and "unknown method(s) ['bogus']" in r.stderr and "onnx, int8, distill, prune" in r.stderr, r.stderr
    s = get_settings(env_module)
    registry = mlflow.MlflowClient(s.tracking_uri)
    before = len(registry.search_model_versions(f"name='{s.model_name}'"))
    r = invoke("optimize", "--model", version_of(optimised, "onnx"), "--methods", "int8", env=env_module)
    assert r.returncode == 1 and "optimise a trained torch Tagger" in r.stderr and "onnx backend" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert len(registry.search_model_versions(f"name='{s.model_name}'")) == before  # nothing registered


def test_an_altered_onnx_bundle_is_refused(optimised, env_module, tmp_path):
    "The onnx variant's bundle, downloaded from its run, loads; with one byte of model.onnx changed, `mwml predict` refuses it."
    run = optimised["rows"]["onnx"]["run_id"]
    folder = mlflow.artifacts.download_artifacts(
        run_id=run, artifact_path="tagger", dst_path=str(tmp_path), tracking_uri=get_settings(env_module).tracking_uri
    )
    assert Tagger.load(folder).backend == "onnx"
    graph = bytearray((tmp_path / "tagger" / ONNX_FILE).read_bytes())
    graph[len(graph) // 2] ^= 0xFF
    (tmp_path / "tagger" / ONNX_FILE).write_bytes(bytes(graph))
    r = invoke("predict", "--title", "YOLO", "--model", folder, env=env_module)
    assert r.returncode == 1 and "sha256" in r.stderr and ONNX_FILE in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
