"""Scale-out: the Serve config file that `serve build` checks, and mwml on a real two-node Ray cluster started with
`ray start` (train, tune, batch prediction and serving with every node used, then a node killed while requests flow)."""

import subprocess
import sys
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from mwml.serve import AppArgs

ROOT = Path(__file__).resolve().parent.parent
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
