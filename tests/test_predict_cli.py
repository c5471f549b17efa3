"""`mwml predict` and `mwml predict-file` through the real command: chunked files in bounded memory,
atomic output, and the same job on Ray Data."""

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import invoke, run_mwml, train

from mwml.predict import Predictor, predict_file


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, env_module) -> str:
    "A trained baseline saved to a folder (trained once for the module)."
    folder = tmp_path_factory.mktemp("model") / "baseline"
    train(env_module, "--model", "baseline", "--output", folder)
    return str(folder)


WORDS = np.array("object detection images language model text deploy monitoring pipeline graph data cnn bert".split())


def projects(n: int, description_words: int = 300, seed: int = 0, notes_words: int = 0) -> pd.DataFrame:
    "`n` synthetic projects (300 words: about 2 kB of description each), with a `notes` column the model never reads."
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(n), "title": [f"project {i} {WORDS[i % len(WORDS)]}" for i in range(n)],
                          "description": [" ".join(rng.choice(WORDS, description_words)) for _ in range(n)]})  # fmt: skip
    if notes_words:
        frame["notes"] = [" ".join(rng.choice(WORDS, notes_words)) for _ in range(n)]
    return frame


def traced_peak_mb(fn) -> float:
    "Peak of Python-tracked memory (numpy and pandas buffers included) while `fn()` runs, in MB."
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_predict_one_project(baseline, env_module):
    r = run_mwml(
        "predict", "--title", "YOLO object detection", "--description", "Detect cars in images", "--model", baseline, env=env_module
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tag: computer-vision")
    r = invoke("predict", "--title", "BERT", "--description", "sentiment of tweets", "--model", baseline, "--json", env=env_module)
    answer = json.loads(r.stdout)
    assert answer["tag"] == "natural-language-processing" and sum(answer["probabilities"].values()) == pytest.approx(1)
    r = invoke("predict", "--title", " ", "--model", baseline, env=env_module)
    assert r.returncode == 1 and "--title is empty" in r.stderr
    r = invoke("predict", "--title", "x", "--model", "champion", env=env_module)
    assert r.returncode == 1 and "no model is registered" in r.stderr


@pytest.mark.parametrize("device", ["cpu", "auto", "cuda"])
def test_predict_honours_mwml_device(baseline, env_module, device):
    r = invoke("predict", "--title", "YOLO", "--description", "Detect cars", "--model", baseline, "--json",
                 env={**env_module, "MWML_DEVICE": device})  # fmt: skip
    if device == "cuda" and not torch.cuda.is_available():  # an absent GPU is a one-line error naming the setting
        assert r.returncode == 1 and "'cuda' is not available" in r.stderr and "MWML_DEVICE" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    else:
        assert r.returncode == 0 and json.loads(r.stdout)["tag"] == "computer-vision", r.stderr


@pytest.mark.full
def test_predict_file_streams_10000_rows_in_bounded_memory(baseline, env_module, tmp_path):
    large = tmp_path / "large.csv"
    projects(10_000, description_words=30).to_csv(large, index=False)
    r = run_mwml("predict-file", large, tmp_path / "large.parquet", "--model", baseline, "--chunk-size", "500", env=env_module)
    assert r.returncode == 0 and "10000 rows predicted" in r.stdout, r.stderr
    out = pd.read_parquet(tmp_path / "large.parquet")
    assert len(out) == 10_000 and out.id.astype(int).tolist() == list(range(10_000))
    assert {"predicted_tag", "abstained", "p_mlops"} <= set(out.columns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.csv", "large.parquet"]  # no temporary file left


@pytest.mark.full
def test_predict_file_memory_follows_the_chunk_not_the_file(baseline, tmp_path):
    # 5,000 rows with short texts (cheap to predict) and a 300-word `notes` column the model never reads but the
    # output keeps: about 10 MB of CSV. The model is loaded before tracing, so the peak is the streaming alone.
    path = tmp_path / "wide.csv"
    projects(5_000, description_words=8, notes_words=300).to_csv(path, index=False)
    predictor = Predictor.load(baseline)
    peak = traced_peak_mb(lambda: predict_file(path, tmp_path / "tags.parquet", predictor, chunk_size=100, progress=False))
    file_mb = path.stat().st_size / 2**20
    # Holding the whole file in pandas takes more than its size (1.2x measured here: Python strings carry ~50 bytes of
    # overhead each), and 100-row chunks peaked at about 2 MB for this file when the bound was set. Half the file's
    # size separates the two: streaming passes with room to spare, reading the file whole cannot.
    print(f"peak traced memory {peak:.1f} MB for a {file_mb:.1f} MB file")
    assert peak < file_mb / 2, (peak, file_mb)
    assert len(pd.read_parquet(tmp_path / "tags.parquet", columns=["id"])) == 5_000


def test_predict_file_refuses_bad_input_and_writes_nothing(baseline, env_module, tmp_path):
    pd.DataFrame({"name": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    r = invoke("predict-file", tmp_path / "bad.csv", tmp_path / "out.csv", "--model", baseline, env=env_module)
    assert r.returncode == 1 and "needs columns title and description; missing ['title', 'description']" in r.stderr
    r = invoke("predict-file", tmp_path / "bad.csv", tmp_path / "out.json", "--model", baseline, env=env_module)
    assert r.returncode == 1 and "use a .csv or .parquet file" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


@pytest.mark.full
def test_predict_file_on_ray_data_matches_in_process(baseline, env_module, tmp_path):
    projects(300, description_words=30).to_csv(tmp_path / "in.csv", index=False)
    local = run_mwml("predict-file", tmp_path / "in.csv", tmp_path / "local.csv", "--model", baseline, "--chunk-size", "64", env=env_module)
    on_ray = run_mwml("predict-file", tmp_path / "in.csv", tmp_path / "ray.csv", "--model", baseline, "--chunk-size", "64", "--ray",
                      "--num-actors", "1", env=env_module)  # fmt: skip
    assert local.returncode == 0 and on_ray.returncode == 0, on_ray.stderr
    a, b = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "ray.csv")
    assert a.id.tolist() == b.id.tolist() and a.predicted_tag.tolist() == b.predicted_tag.tolist()
    np.testing.assert_allclose(a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy(), atol=1e-6)
