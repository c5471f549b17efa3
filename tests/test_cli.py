"""The command line as an interface: help everywhere without side effects, the version, settings errors in one line,
MWML_DEVICE honoured. (`--json` and the refused exit code are tested with the registry, in test_registry_cli.py.) Answers
that need no process of their own are checked in-process (`invoke`); each command still runs for real, as a subprocess,
somewhere in the suite."""

import json

import pytest
from helpers import invoke, run_mwml, runs

from mwml import __version__
from mwml.config import get_settings

COMMANDS = [[], ["data"], ["data", "fetch"], ["data", "validate"], ["data", "split"], ["train"], ["tune"], ["report"],
            ["pipeline"], ["evaluate"], ["register"], ["promote"], ["leaderboard"], ["test-model"], ["predict"],
            ["predict-file"], ["serve"]]  # fmt: skip


def test_every_command_has_help_and_it_leaves_no_files(env):
    "Every command's --help in-process (a subprocess each would cost seconds), then the real `mwml --help` once."
    from typer.testing import CliRunner

    from mwml.cli import app

    home = get_settings(env).home
    for command in COMMANDS:
        r = CliRunner().invoke(app, [*command, "--help"], env={"MWML_HOME": str(home)})
        assert r.exit_code == 0 and "Usage" in r.stdout, (command, r.output)
    r = run_mwml("--help", env=env)
    assert r.returncode == 0 and "Usage" in r.stdout, r.stderr
    assert list(home.iterdir()) == [], "--help must not create files"


def test_help_shows_the_environment_variables(env):
    assert "MWML_DEBUG" in invoke("--help", env=env).stdout
    serve_help = invoke("serve", "--help", env=env).stdout
    for variable in ("MWML_SERVE_MODEL", "MWML_SERVE_MAX_BATCH_SIZE", "MWML_DEVICE"):
        assert variable in serve_help, variable
    train_help = invoke("train", "--help", env={**env, "COLUMNS": "250"}).stdout
    assert "MWML_SEED" in train_help and "MWML_DEVICE" in train_help
    assert "tagger: base learning rate: the head's while frozen" in train_help  # --lr's help is TrainConfig.lr's docment


def test_version(env):
    r = invoke("--version", env=env)
    assert (r.returncode, r.stdout.strip()) == (0, f"mwml {__version__}")


@pytest.mark.parametrize(
    "variable, value, expected",
    [("MWML_SEED", "abc", "MWML_SEED='abc' is not valid: expected an integer"),
     ("MWML_LOG_LEVEL", "loud", "MWML_LOG_LEVEL='loud' is not valid: expected one of DEBUG, INFO"),
     ("MWML_HTTP_TIMEOUT", "0", "MWML_HTTP_TIMEOUT='0' is not valid: expected a number, e.g. 2.5, at least 0.1"),
     ("MWML_DEVICE", "tpu", "MWML_DEVICE='tpu' is not valid: expected one of auto, cuda, mps, cpu")],
)  # fmt: skip
def test_a_bad_setting_is_one_line_naming_it(env, variable, value, expected):
    r = invoke("data", "fetch", "holdout", env={**env, variable: value})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"error: {expected}" or (expected in r.stderr and len(r.stderr.strip().splitlines()) == 1), r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_serving_setting_is_one_line_before_anything_starts(env):
    r = invoke("serve", "--model", "champion", env={**env, "MWML_SERVE_MAX_ITEMS": "abc"})
    assert (
        r.returncode == 1 and r.stderr.strip() == "error: MWML_SERVE_MAX_ITEMS='abc' is not valid: expected an integer, e.g. 42, at least 1"
    ), r.stderr


def test_an_absent_gpu_is_refused_before_any_work_and_cpu_works(env, tmp_path):
    r = invoke("predict", "--title", "YOLO", "--device", "cuda", env=env)
    assert r.returncode == 1 and "'cuda' is not available on this machine" in r.stderr and "MWML_DEVICE" in r.stderr, r.stderr
    tiny = ["train", "--backbone", "tiny", "--epochs", "1", "--sample-size", "64"]
    r = invoke(*tiny, env={**env, "MWML_DEVICE": "cuda"})
    assert r.returncode == 1 and "set MWML_DEVICE=auto or cpu" in r.stderr, r.stderr[-2000:]
    assert {run.info.status for run in runs(env)} <= {"FAILED"}, "a refused run is marked FAILED, never left RUNNING"
    r = run_mwml(*tiny, "--output", tmp_path / "model", env={**env, "MWML_DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_mwml("predict", "--title", "YOLO", "--model", tmp_path / "model", "--json", env={**env, "MWML_DEVICE": "cpu"})
    assert r.returncode == 0 and "probabilities" in json.loads(r.stdout), r.stderr
