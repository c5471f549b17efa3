"""Measure what the project costs a new user and a developer: the virtual environment's size on disk and, on a fresh clone of
the committed tree, how long `make setup`, the quick tier (`make test`) and CI's run (`.ci/run`: `make test-full`, then the
linter) take, and whether they pass. CI's run is repeated, and once more beside a CPU burner (a process spinning on one core,
started and stopped here), to show the suite does not depend on the machine's speed. Every run is recorded with its pytest
summary and its slowest tests. Prints a Markdown table; writes benchmarks/results/footprint.json.

    .venv/bin/python benchmarks/footprint.py [--runs 3] [--burner-runs 1] [--skip-quick] [--skip-setup] [--keep-runs]

A fresh clone installs its own .venv (several GB, from the package index pip is configured with) in a temporary folder, removed
afterwards; it reads the data from the same mirror as this checkout when there is one. `--skip-setup` runs everything in this
checkout instead. `--keep-runs` adds this invocation's runs to those already in the JSON when they measured the same code: the
same commit, or one that differs from this one only in benchmarks/results/ and the README made from it (a long series can be
measured in parts, its first figures committed in between). Each run records its commit.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, Benchmark

from mwml.config import git_sha

SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed).*) in ([\d.]+)s", re.M)


def disk_gib(folder: Path) -> float:
    "Space the files under `folder` take on disk (as `du` counts it), GiB."
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total / 2**30


def slowest(log: str) -> list[str]:
    "The lines of pytest's `slowest N durations` table in `log` (the last such table)."
    _, _, table = log.rpartition("slowest 25 durations")
    lines = table.splitlines()[1:]
    return [line.strip() for line in lines[: next((i for i, line in enumerate(lines) if not line.strip()), len(lines))]]


def timed(command: list[str], cwd: Path, env: dict, log: Path, burner: bool = False) -> dict:
    "Run `command` in `cwd` (beside a one-core CPU burner if `burner`): seconds, exit code, pytest's summary, slowest tests."
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if burner else None
    start, load_start = time.perf_counter(), os.getloadavg()
    try:
        with log.open("w") as out:
            rc = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    seconds, text = time.perf_counter() - start, log.read_text(errors="replace")
    summaries = SUMMARY.findall(text)
    return {"command": " ".join(command), "burner": burner, "seconds": seconds, "returncode": rc,
            "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
            "pytest": {"summary": summaries[-1][0], "seconds": float(summaries[-1][1])} if summaries else None,
            "slowest": slowest(text), "tail": text.splitlines()[-5:]}  # fmt: skip


def same_code(sha: str) -> bool:
    "Whether commit `sha` and HEAD differ at most in measured results and the README `make readme` fills from them."
    unmeasured = [":(exclude)benchmarks/results", ":(exclude)README.md"]
    return subprocess.run(["git", "diff", "--quiet", sha, "HEAD", "--", ".", *unmeasured], cwd=ROOT).returncode == 0


def show(runs: list[dict]) -> str:
    "Minutes and exit codes of `runs`, for the table."
    if not runs:
        return "not measured"
    minutes = ", ".join(f"{r['seconds'] / 60:.1f}" for r in runs)
    return f"{minutes} min (exit {', '.join(str(r['returncode']) for r in runs)})"


def save(bench: Benchmark, result: dict):
    "Write the JSON as it stands (after each run, so a long series that is stopped keeps what it measured) and print the table."
    quick = [r for r in result["runs"] if r["tier"] == "quick"]
    ci = [r for r in result["runs"] if r["tier"] == "ci" and not r["burner"]]
    burned = [r for r in result["runs"] if r["tier"] == "ci" and r["burner"]]
    result["test_seconds"] = max((r["seconds"] for r in quick if r["returncode"] == 0), default=None)
    result["ci_seconds"] = max((r["seconds"] for r in ci + burned if r["returncode"] == 0), default=None)
    rows = [("virtual environment on disk", f"{result['venv_gib']:.1f} GiB"),
            ("make setup (fresh clone)", show([result["setup"]] if "setup" in result else [])),
            ("make test (quick tier)", show(quick)), (".ci/run (make test-full, make lint)", show(ci)),
            (".ci/run beside a CPU burner", show(burned))]  # fmt: skip
    bench.write(result, rows, ("measure", "footprint"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="CI runs (`.ci/run`) in a row")
    parser.add_argument("--burner-runs", type=int, default=1, help="CI runs beside a CPU burner, after those")
    parser.add_argument("--skip-quick", action="store_true", help="do not time `make test`")
    parser.add_argument("--skip-setup", action="store_true", help="run in this checkout instead of a fresh clone")
    parser.add_argument("--keep-runs", action="store_true", help="add to the runs the JSON already holds for this commit")
    args = parser.parse_args()
    bench = Benchmark("footprint", "torch", "ray", "mlflow")
    result = {"venv_gib": disk_gib(ROOT / ".venv"), "setup_seconds": None, "runs": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "MWML_HOME"))}
    env["CI"] = "true"  # as CI runs .ci/run
    mirror = ROOT.parent / "shared" / "data" / "madewithml"
    if mirror.is_dir():
        env.setdefault("MWML_DATA_MIRROR", str(mirror))
    previous = RESULTS / "footprint.json"
    if args.keep_runs and previous.exists():
        old = json.loads(previous.read_text())
        if old.get("git_sha") and same_code(old["git_sha"]):
            result.update({k: old[k] for k in ("setup", "setup_seconds", "fresh_venv_gib") if k in old})
            result["runs"] = old.get("runs", [])
    work = Path(tempfile.mkdtemp(prefix="mwml-footprint-"))
    where = ROOT
    result["where"] = "this checkout"
    try:
        if not args.skip_setup:
            where = work / "mwml"
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where)], check=True)
            result["where"] = "fresh clone of the committed tree"
            result["setup"] = timed(["make", "setup"], where, env, work / "setup.log")
            result["setup_seconds"] = result["setup"]["seconds"] if result["setup"]["returncode"] == 0 else None
            result["fresh_venv_gib"] = disk_gib(where / ".venv")
            save(bench, result)
        plan = [] if args.skip_quick else [("quick", ["make", "test"], False)]
        plan += [("ci", ["bash", ".ci/run"], False)] * args.runs + [("ci", ["bash", ".ci/run"], True)] * args.burner_runs
        for i, (tier, command, burner) in enumerate(plan):
            run = {"tier": tier, "git_sha": git_sha(where), **timed(command, where, env, work / f"{i}-{tier}.log", burner)}  # what ran
            result["runs"].append(run)
            print(f"{tier}{' + burner' if burner else ''}: {run['seconds'] / 60:.1f} min, exit {run['returncode']}, {run['pytest']}")
            save(bench, result)
    finally:
        failed = [r for r in result["runs"] if r["returncode"]] + [result["setup"]] * bool(result.get("setup", {}).get("returncode"))
        if failed:  # keep the clone and its logs to read
            print(f"{len(failed)} run(s) failed: the logs are in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
