"""Scale-out: the Serve config file that `serve build` checks, and mwml on a real two-node Ray cluster started with
`ray start` (train, tune, batch prediction and serving with every node used, then a node killed while requests flow)."""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import (
    ROOT,
    free_port,
    hammer,
    in_flight_at,
    lost,
    mwml_env,
    register,
    run_mwml,
    running_mlflow_server,
    start_mwml,
    terminate,
    train,
    wait_for,
    wait_until_ready,
)
from ray.serve.schema import ServeDeploySchema
from ray_cluster import start_cluster

from mwml.config import SECRETS_NAMESPACE, get_settings
from mwml.data import load
from mwml.predict import Predictor
from mwml.serve import AppArgs

SERVE = Path(sys.executable).parent / "serve"


def test_the_sample_serve_config_is_what_serve_build_writes(tmp_path):
    built = tmp_path / "built.yaml"
    r = subprocess.run([str(SERVE), "build", "mwml.serve:application", "-o", str(built)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [app] = yaml.safe_load(built.read_text())["applications"]
    sample = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    [mine] = ServeDeploySchema.model_validate(sample).applications  # a config `serve deploy` accepts
    assert mine.import_path == "mwml.serve:app" and AppArgs(**mine.args).replicas == 2
    [deployment] = sample["applications"][0]["deployments"]
    assert deployment == {**app["deployments"][0], "num_replicas": 2}  # the code's deployment, with two replicas
    assert set(mine.runtime_env["env_vars"]) == {"MLFLOW_TRACKING_URI", "MWML_SERVE_PREDICTION_LOG"}


# --- mwml on a real two-node Ray cluster (`ray start`, 1 CPU a node), one cluster for the module -------------------------


@pytest.fixture(scope="module")
def ray_nodes(tmp_path_factory):
    "A head and a second node (custom resource `node2`) on 127.0.0.1; every process of both stopped afterwards."
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths must stay under 108 characters
    # Serve's proxy prefers replicas on its own node; with the proxy on the head only, spread requests over both nodes
    # Two nodes and a test's worth of processes on two cores: a raylet starved for a few seconds must not be declared dead
    c = start_cluster(root, node_env={"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_health_check_failure_threshold": "10"})
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    "The tracking server every node's workers log to."
    with running_mlflow_server(tmp_path_factory.mktemp("tracking")) as url:
        yield url


@pytest.fixture(scope="module")
def on_cluster(ray_nodes, tracking, good_files, tmp_path_factory):
    "Environment for `mwml` commands that run on the cluster: RAY_ADDRESS (and its token), the tracking server, a home."
    return {**mwml_env(tmp_path_factory.mktemp("scale") / "home", good_files), **ray_nodes.env, "MLFLOW_TRACKING_URI": tracking}


@pytest.fixture
def cluster(ray_nodes):
    "The module's cluster with both nodes up: a test that kills the second node leaves it to the next test that needs it to start."
    ray_nodes.ensure_second_node()
    return ray_nodes


def both_nodes(cluster) -> set[str]:
    "The ids of the head and the second node."
    return {cluster.head_id(), cluster.node2_id()}


@pytest.fixture(scope="module")
def trained(ray_nodes, on_cluster):
    "`mwml train --num-workers 2` on the cluster, then `mwml register`: (the run id, the registered version)."
    ray_nodes.ensure_second_node()
    run_id = train(on_cluster, "--backbone", "tiny", "--epochs", "1", "--sample-size", "200", "--num-workers", "2")
    return run_id, register(on_cluster, run_id)


@pytest.mark.full
def test_train_puts_one_worker_on_each_node_and_tracks_through_the_server(cluster, on_cluster, trained):
    run_id, _ = trained
    assert set(cluster.actor_nodes("RayTrainWorker")) == both_nodes(cluster)
    run = mlflow.MlflowClient(on_cluster["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["num_workers"] == "2"
    assert "valid_loss" in run.data.metrics  # logged by the rank-0 worker, wherever it ran


@pytest.mark.full
def test_a_file_tracking_store_is_refused_on_a_multi_node_cluster(on_cluster):
    env = {**on_cluster, "MLFLOW_TRACKING_URI": f"sqlite:///{on_cluster['MWML_HOME']}/local.db"}
    r = run_mwml("train", "--backbone", "tiny", "--epochs", "1", "--sample-size", "200", "--num-workers", "2", env=env)
    assert r.returncode != 0 and "the Ray cluster has 2 nodes" in r.stderr and "start a tracking server" in r.stderr, r.stderr[-3000:]


@pytest.mark.full
def test_tune_runs_its_trials_on_the_cluster(cluster, on_cluster):
    r = run_mwml("tune", "--backbone", "tiny", "--num-samples", "4", "--sample-size", "200", "--max-epochs", "2", "--json",
                 env=on_cluster, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.startswith("{"), r.stdout[:3000]  # the command's output is the JSON alone: workers print to stderr
    result = json.loads(r.stdout)
    assert len(result["trials"]) == 4, result
    assert set(cluster.actor_nodes("ImplicitFunc")) == both_nodes(cluster)  # Tune's trial actors


@pytest.mark.full
def test_predict_file_on_both_nodes_matches_the_local_run(cluster, on_cluster, trained, tmp_path):
    _, version = trained
    projects = load("holdout", get_settings(on_cluster))[["title", "description"]]
    projects.to_csv(tmp_path / "in.csv", index=False)
    cluster.wait_idle()  # both CPUs free, so that each node can take an actor
    r = run_mwml("predict-file", tmp_path / "in.csv", tmp_path / "ray.csv", "--model", version, "--ray", "--num-actors", "2",
                 "--chunk-size", "50", env=on_cluster)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert set(cluster.actor_nodes("_RayPredict")) == both_nodes(cluster)
    local = {k: v for k, v in on_cluster.items() if k != "RAY_ADDRESS"}
    r = run_mwml("predict-file", tmp_path / "in.csv", tmp_path / "local.csv", "--model", version, env=local)
    assert r.returncode == 0, r.stderr[-4000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ray.csv"), pd.read_csv(tmp_path / "local.csv"), atol=1e-6)


def refusing_replicas(base: str) -> set[str]:
    "The replicas that answered 401 to one of 10 predictions sent without the API token."
    answers = [httpx.post(f"{base}/predict", json={"items": [{"title": "no token"}]}, timeout=30) for _ in range(10)]
    return {r.headers["X-Mwml-Replica"] for r in answers if r.status_code == 401}


@pytest.mark.full
def test_serve_puts_a_replica_on_each_node_and_survives_losing_one(cluster, on_cluster, trained, tmp_path):
    _, version = trained
    port = free_port()
    # a secret the nodes' own environments lack: it reaches the replicas through Ray's key-value store, never the runtime_env
    env = {**on_cluster, "MWML_SERVE_PREDICTION_LOG": str(tmp_path / "predictions.db"), "MWML_API_TOKEN": "cluster-s3cret"}
    token = {"Authorization": "Bearer cluster-s3cret"}
    cluster.wait_idle()
    server = start_mwml("serve", "--model", version, "--replicas", "2", "--port", port, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, base, patience=300)  # one replica answers (Serve may still be starting the other); slow if busy
        replicas_on_both = lambda: set(cluster.actor_nodes("ServeReplica", alive=True)) == both_nodes(cluster)  # noqa: E731
        wait_for(replicas_on_both, "a live replica on each node", 180, every=2)
        refused_by = set()

        def both_refuse() -> bool:  # a replica without the token would serve anyone: each must refuse a request without it
            refused_by.update(refusing_replicas(base))
            return len(refused_by) == 2

        wait_for(both_refuse, "both replicas refuse a request without the token", 120)
        shown = json.dumps([cluster.state("actors"), cluster.state("jobs")])  # what the dashboard shows of runtime_envs
        assert "cluster-s3cret" not in shown and "MWML_SECRETS_KEY" in shown
        holdout = load("holdout", get_settings(env)).head(16)
        items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
        answers = httpx.post(f"{base}/predict", json={"items": items}, headers=token, timeout=60).json()["predictions"]
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        expected = Predictor.load(version, settings=get_settings(env)).predict(items)
        assert [a["tag"] for a in answers] == [e["tag"] for e in expected]
        np.testing.assert_allclose([list(a["probabilities"].values()) for a in answers],
                                   [list(e["probabilities"].values()) for e in expected], atol=1e-6)  # fmt: skip

        # the second node dies while requests flow, once both replicas have answered in this load: only the requests in flight at
        # that moment may fail, and the head's replica serves on
        results, record = [], []
        threads = hammer(f"{base}/predict", 300, 4, token, results, record)
        wait_for(lambda: len({replica for *_, replica in list(record)} - {None}) == 2, "both replicas answered during the load", 120)
        kill = time.monotonic()
        cluster.kill_second_node()
        for t in threads:
            t.join()
        flying, gone = in_flight_at(kill, record), lost(results)
        print(f"killed the second node under load: {results.count(200)} of {len(results)} served, {results.count('shed')} shed "
              f"(Retry-After), {flying} in flight at the kill, lost {gone}")  # fmt: skip
        assert len(results) == 300 and len(gone) <= flying, gone  # no more than the requests in flight at the kill
        cluster.wait_nodes(1, timeout=300)  # the head has seen the node die (Serve then stops routing to its replica)
        after = []  # serving goes on on the head: every request sent after the kill has been absorbed succeeds
        for t in hammer(f"{base}/predict", 20, 2, token, after):
            t.join()
        assert after == [200] * 20, after
    finally:
        terminate(server)
    assert cluster.kv_keys(SECRETS_NAMESPACE) == []  # the server took its secrets out of the cluster's store as it exited


@pytest.mark.full
def test_a_node_dying_mid_training_ends_the_run_failed_with_the_reason(cluster, on_cluster):
    client = mlflow.MlflowClient(on_cluster["MLFLOW_TRACKING_URI"])

    def runs() -> list:  # experiment `mwml`'s runs; none before a run creates it (this test may be the first to train)
        experiment = client.get_experiment_by_name("mwml")
        return client.search_runs([experiment.experiment_id]) if experiment else []

    before = {r.info.run_id for r in runs()}
    cluster.wait_idle()  # an earlier test's replicas and trials have left the 1-CPU nodes: both workers can start at once
    trainer = start_mwml("train", "--backbone", "tiny", "--epochs", "60", "--sample-size", "400", "--num-workers", "2", env=on_cluster)
    try:

        def training():  # the new run, once it has logged an epoch with Ray Train's workers alive on both nodes
            new = [r for r in runs() if r.info.run_id not in before and "valid_loss" in r.data.metrics]
            return new if new and set(cluster.actor_nodes("RayTrainWorker", alive=True)) == both_nodes(cluster) else None

        [run] = wait_for(training, "a training run logged an epoch with a worker on each node", 600, every=1, process=trainer)
        cluster.kill_second_node()
        _, stderr = trainer.communicate(timeout=300)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.communicate()
    assert trainer.returncode != 0 and "Ray Train failed" in stderr and "is marked FAILED" in stderr, stderr[-3000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure"], run.data.tags


@pytest.mark.full
def test_a_ray_address_that_points_nowhere_fails_in_seconds(on_cluster):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    r = run_mwml("train", "--backbone", "tiny", "--num-workers", "2", env={**on_cluster, "RAY_ADDRESS": f"127.0.0.1:{port}"}, timeout=120)
    assert r.returncode != 0 and f"nothing answers at RAY_ADDRESS=127.0.0.1:{port}" in r.stderr, r.stderr[-3000:]
