"""What the test suite itself promises, so that its parallel workers cannot disturb each other: each worker's Ray looks for a
cluster to join only in a folder of its own, and the `mwml` commands a test starts inherit that folder."""

import os

from helpers import mwml_env
from ray._private.services import canonicalize_bootstrap_address


def test_each_worker_has_its_own_ray_folder_and_passes_it_on(tmp_path):
    folder = os.environ["RAY_TMPDIR"]  # set by conftest.py for this worker, before any test runs
    assert os.path.isdir(folder) and os.environ.get("PYTEST_XDIST_WORKER", "main") in folder, folder
    assert mwml_env(tmp_path / "home")["RAY_TMPDIR"] == folder


def test_a_local_ray_init_cannot_join_a_cluster_another_worker_started(tmp_path, monkeypatch):
    "`ray.init()` without an address joins the cluster that `ray start` last recorded in its temporary folder, if any."
    other = tmp_path / "other-worker"
    (other / "ray").mkdir(parents=True)
    (other / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")  # what `ray start` leaves behind
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "this-worker"))
    assert canonicalize_bootstrap_address(None) is None  # ray.init() starts a Ray of its own
    monkeypatch.setenv("RAY_TMPDIR", str(other))
    assert canonicalize_bootstrap_address(None).endswith(":6379")  # in the other worker's folder it would have joined it
