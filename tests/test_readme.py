"""README.md's measured figures come from benchmarks/results/*.json: `tools/readme.py --check` notices a changed
JSON, and the prose outside the generated blocks carries no hand-typed measurement."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "tools" / "readme.py"
BLOCK = re.compile(r"<!-- figures:[\w-]+ -->.*?<!-- /figures -->", re.S)
FENCE = re.compile(r"```.*?```", re.S)
# a measurement as prose would quote one: a duration, a size, a rate, a speed-up or a score like 0.921
MEASUREMENT = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds|min|minutes|GiB|GB|MB|items/s)\b|\b\d+(?:\.\d+)?x\b|\b0\.\d{2,}\b")


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(README), "--check", "--root", str(root)], capture_output=True, text=True)


@pytest.fixture
def project(tmp_path) -> Path:
    "A copy of what the README is made from: the notebooks, the README and the benchmark results."
    (tmp_path / "nbs").mkdir()
    for nb in (ROOT / "nbs").glob("*.ipynb"):  # index.ipynb, and the others whose `#| slow` cells the README counts
        shutil.copy(nb, tmp_path / "nbs")
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def test_check_passes_on_the_committed_readme(project):
    done = check(project)
    assert done.returncode == 0, done.stderr


def test_check_fails_when_a_json_changes(project):
    path = project / "benchmarks" / "results" / "baseline.json"
    result = json.loads(path.read_text())
    result["fit_seconds_median"] += 1.0
    path.write_text(json.dumps(result))
    done = check(project)
    assert done.returncode == 1
    assert "README.md" in done.stderr and "nbs/index.ipynb (its figure blocks)" in done.stderr


def test_regenerating_makes_the_check_pass_again(project):
    path = project / "benchmarks" / "results" / "baseline.json"
    result = json.loads(path.read_text())
    result["fit_seconds_median"] = 12.345
    path.write_text(json.dumps(result))
    subprocess.run([sys.executable, str(README), "--root", str(project)], check=True, capture_output=True)
    assert check(project).returncode == 0
    assert "12.35 s on" in (project / "README.md").read_text()


def test_no_hand_typed_measurement_outside_the_generated_blocks():
    prose = FENCE.sub("", BLOCK.sub("", (ROOT / "README.md").read_text()))
    found = sorted({m.group(0) for m in MEASUREMENT.finditer(prose)})
    assert not found, f"README.md quotes measurements that no benchmark JSON backs: {found}"


def test_the_detector_finds_the_figures_that_used_to_drift():
    "The last test can fail: the prose this issue found stale would be caught."
    stale = "Where the time goes: the model 18 ms; HTTP adds about 8 ms; 1.9x the naive handler; F1 0.921."
    assert {m.group(0) for m in MEASUREMENT.finditer(stale)} == {"18 ms", "8 ms", "1.9x", "0.921"}


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name)
def test_every_result_names_the_script_machine_and_load(path):
    "A JSON written by hand (as train_gpu.json once was) lacks what `benchmarks/common.py` records."
    result = json.loads(path.read_text())
    script = ROOT / "benchmarks" / result["command"].split()[0]
    assert script.exists() and script.suffix == ".py", f"{path.name}: {result['command']!r} is not a script in benchmarks/"
    assert {"git_sha", "git_dirty", "started", "finished", "load_average"} <= set(result)
    assert {"cpu", "cores", "ram_gib", "python", "versions", "stack_vs_pins"} <= set(result["machine"])


def test_check_fails_when_a_notebook_gains_a_slow_cell(project):
    "The README counts `#| slow` cells: a new one makes it stale, so the claim cannot outlive the code."
    nb = json.loads((project / "nbs" / "index.ipynb").read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "abcd1234", "metadata": {}, "outputs": [],
                        "source": ["#| slow\n", "1 + 1"]})  # fmt: skip
    (project / "nbs" / "index.ipynb").write_text(json.dumps(nb, indent=1))
    done = check(project)
    assert done.returncode == 1 and "README.md" in done.stderr
