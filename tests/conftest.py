"""Fixtures the tests share (plain helpers are in helpers.py), the two tiers and how parallel workers split the modules.

Tiers: `make test` runs `pytest -m "not full"`, the quick tier (every real part once, each room's happy path and bad input);
`make test-full` runs everything. A test joins the full tier with `@pytest.mark.full` (or a module's `pytestmark`).

Parallel runs (pytest-xdist, `--dist load`): tests go to whichever worker is free, so a module's fixtures (a server, a trained
model, a Ray cluster) may be built once on each worker. `--dist loadgroup` with `xdist_group` marks is no option today: xdist
3.8 renames node ids in a way pytest 9 no longer reads, so the marks are silently ignored (the suite ran as `--dist load`
while it asked for groups). `--dist loadfile`, each module whole on one worker, was tried: test_scale's node-killing tests then
shared one cluster in a row, and Ray Train never placed its second worker after the serve test had killed and restarted a
node (the test hung until pytest-timeout failed it). Two tests may run Ray side by side: each worker has its own Ray
temporary folder, so a `ray.init()` can never attach to a cluster that another worker's test started, and each `mwml serve`
picks its own HAProxy and fallback-proxy ports (`mwml.serve.ray_serve_env`).
"""

import os
import shutil
from pathlib import Path

import pytest
from helpers import mwml_env, running_mlflow_server

from mwml.data import SOURCES, fetch

# Progress bars are for people at a terminal; in test logs they are noise (the library leaves them on).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# A short folder of this worker's own (Ray's socket paths must stay under 108 characters): Ray looks for a cluster to join there.
os.environ["RAY_TMPDIR"] = f"/tmp/mw-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
Path(os.environ["RAY_TMPDIR"]).mkdir(exist_ok=True)


def pytest_addoption(parser):
    parser.addoption("--model", default=None, help="tests/model: the model to test (folder, run id, alias or version)")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def good_files(tmp_path_factory) -> Path:
    "A folder with the four verified data files, fetched once per test session (downloaded when there is no mirror)."
    folder = tmp_path_factory.mktemp("good-data")
    for name in SOURCES:
        shutil.copy(fetch(name), folder / SOURCES[name].file)
    return folder


@pytest.fixture
def env(tmp_path, good_files) -> dict:
    "Environment for one CLI run: a fresh MWML_HOME whose data comes from the session's verified copy, no test flags."
    return mwml_env(tmp_path / "home", good_files)


@pytest.fixture(scope="module")
def env_module(tmp_path_factory, good_files) -> dict:
    "One MWML_HOME for a module's tests (its data from the session's verified copy), for modules that build on each other's state."
    return mwml_env(tmp_path_factory.mktemp("home"), good_files)


@pytest.fixture(scope="session")
def untrained_tiny(tmp_path_factory) -> Path:
    "A saved, randomly initialised tiny Tagger (made once per session): a model that loads fast and answers, for API tests."
    from mwml.models import Tagger, TaggerConfig

    folder = tmp_path_factory.mktemp("untrained") / "tiny"
    Tagger.create(TaggerConfig(backbone="tiny")).save(folder)
    return folder


@pytest.fixture
def mlflow_server(tmp_path):
    "A real `mlflow server` on 127.0.0.1 for one test."
    with running_mlflow_server(tmp_path) as url:
        yield url
