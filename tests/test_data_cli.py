"""`mwml data`: fetching with checksums (local and HTTP mirrors, offline, slow networks) and validation."""

import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest
from helpers import answers, free_port, invoke, raw_dir, run_mwml, snapshot, wait_for

from mwml.data import SOURCES, sha256_bytes


def test_fetch_from_folder_mirror_verifies_and_caches(env, good_files):
    r = run_mwml("data", "fetch", env={**env, "MWML_DATA_MIRROR": str(good_files)})
    assert r.returncode == 0, r.stderr
    cached = snapshot(raw_dir(env))
    assert sorted(map(str, cached)) == sorted(s.file for s in SOURCES.values())
    for source in SOURCES.values():
        assert sha256_bytes(cached[type(next(iter(cached)))(source.file)]) == source.sha256


def test_tampered_mirror_is_refused_and_cache_untouched(env, good_files, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(good_files, mirror)
    data = bytearray((mirror / "dataset.csv").read_bytes())
    data[500] ^= 0x01  # one byte changed
    (mirror / "dataset.csv").write_bytes(bytes(data))
    # the cache already holds a good holdout.csv (and no dataset.csv)
    raw_dir(env).mkdir(parents=True)
    shutil.copy(good_files / "holdout.csv", raw_dir(env) / "holdout.csv")
    before = snapshot(raw_dir(env))

    r = invoke("data", "fetch", "dataset", env={**env, "MWML_DATA_MIRROR": str(mirror)})
    assert r.returncode != 0
    assert SOURCES["dataset"].sha256 in r.stderr, r.stderr  # expected
    assert sha256_bytes(bytes(data)) in r.stderr, r.stderr  # actual
    assert "Traceback" not in r.stderr
    assert snapshot(raw_dir(env)) == before

    # a good cached copy survives a forced re-fetch from the bad mirror
    shutil.copy(good_files / "dataset.csv", raw_dir(env) / "dataset.csv")
    before = snapshot(raw_dir(env))
    r = invoke("data", "fetch", "dataset", "--force", env={**env, "MWML_DATA_MIRROR": str(mirror)})
    assert r.returncode != 0 and snapshot(raw_dir(env)) == before


def test_fetch_over_http_from_a_url_mirror(env, good_files):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(good_files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/tags.csv"), "the mirror's HTTP server answers", 60, every=0.1, process=server)
        r = run_mwml("data", "fetch", "holdout", "tags", env={**env, "MWML_DATA_MIRROR": f"http://127.0.0.1:{port}/"})
    finally:
        server.terminate()
        server.wait(10)
    assert r.returncode == 0, r.stderr
    assert sha256_bytes((raw_dir(env) / "holdout.csv").read_bytes()) == SOURCES["holdout"].sha256


def test_offline_fetch_fails_with_a_hint(env):
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens: like a machine without a network
    r = invoke("data", "fetch", "holdout", env={**env, "MWML_DATA_MIRROR": closed})
    assert r.returncode == 1
    assert "cannot download" in r.stderr and "MWML_DATA_MIRROR" in r.stderr
    assert snapshot(raw_dir(env)) == {}


def test_a_silent_server_times_out_instead_of_hanging(env):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        r = invoke("data", "fetch", "holdout", env={**env, "MWML_DATA_MIRROR": url, "MWML_HTTP_TIMEOUT": "1"})
    finally:
        listener.close()
    assert r.returncode == 1
    assert "timed out" in r.stderr, r.stderr


def test_unknown_file_name(env):
    r = invoke("data", "fetch", "weights", env=env)
    assert r.returncode == 1 and "unknown data file 'weights'" in r.stderr


@pytest.fixture
def bad_csv(tmp_path, good_files):
    "holdout.csv without `description`, with one null tag and one unknown tag."
    df = pd.read_csv(good_files / "holdout.csv", dtype=str).drop(columns="description")
    df.loc[3, "tag"] = None
    df.loc[7, "tag"] = "quantum-computing"
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return path


def test_validate_lists_every_problem(env, bad_csv):
    r = invoke("data", "validate", bad_csv, env=env)
    assert r.returncode == 1
    assert "breaks 3 rule(s)" in r.stderr, r.stderr
    assert "missing column 'description'" in r.stderr
    assert "column 'tag': empty in 1 row(s), e.g. row 3" in r.stderr
    assert "row 7: 'quantum-computing'" in r.stderr


def test_validate_accepts_the_real_files(env, good_files):
    for name in ("dataset.csv", "holdout.csv"):
        r = invoke("data", "validate", good_files / name, env=env)
        assert r.returncode == 0 and "meets the data contract" in r.stdout, r.stderr
    r = run_mwml("data", "validate", "--unlabelled", good_files / "projects.csv", env=env)
    assert r.returncode == 0, r.stderr


def test_validate_unreadable_input(env, tmp_path):
    r = invoke("data", "validate", tmp_path / "missing.csv", env=env)
    assert r.returncode == 1 and "no such file" in r.stderr
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    r = invoke("data", "validate", binary, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr


def test_split_writes_stratified_files(env, good_files, tmp_path):
    out = tmp_path / "split"
    r = run_mwml("data", "split", "--output", out, "--seed", "7", env={**env, "MWML_DATA_MIRROR": str(good_files)})
    assert r.returncode == 0, r.stderr
    train, val = pd.read_csv(out / "train.csv"), pd.read_csv(out / "val.csv")
    assert (len(train), len(val)) == (611, 153)
    assert set(train.id).isdisjoint(val.id)
    assert val.tag.value_counts()["mlops"] == 13
