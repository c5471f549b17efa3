"""Measure what the project costs a new user: the virtual environment's size on disk and, on a fresh clone of
the committed tree, how long `make setup` and `make test` take (and whether they pass). Prints a Markdown
table; writes benchmarks/results/footprint.json.

    .venv/bin/python benchmarks/footprint.py [--skip-setup] [--skip-test]

A fresh clone installs its own .venv (several GB, from the package index pip is configured with) in a
temporary folder, removed afterwards; it reads the data from the same mirror as this checkout when there
is one. `--skip-setup` measures only this checkout's .venv (and, without `--skip-test`, times `make test` here).
"""

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, Benchmark


def disk_gib(folder: Path) -> float:
    "Space the files under `folder` take on disk (as `du` counts it), GiB."
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total / 2**30


def timed_make(target: str, cwd: Path, env: dict, log: Path) -> dict:
    "Run `make target` in `cwd`: seconds, exit code and the log's last lines."
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(["make", target], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return {"seconds": time.perf_counter() - start, "returncode": rc, "tail": log.read_text().splitlines()[-5:]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-setup", action="store_true", help="do not clone and set up a fresh copy")
    parser.add_argument("--skip-test", action="store_true", help="do not time `make test`")
    args = parser.parse_args()
    bench = Benchmark("footprint", "torch", "ray", "mlflow")
    result = {"venv_gib": disk_gib(ROOT / ".venv"), "setup_seconds": None, "test_seconds": None}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "MWML_HOME"))}
    mirror = ROOT.parent / "shared" / "data" / "madewithml"
    if mirror.is_dir():
        env.setdefault("MWML_DATA_MIRROR", str(mirror))
    work = Path(tempfile.mkdtemp(prefix="mwml-footprint-"))
    try:
        where = ROOT
        if not args.skip_setup:
            where = work / "mwml"
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where)], check=True)
            result["setup"] = timed_make("setup", where, env, work / "setup.log")
            result["setup_seconds"] = result["setup"]["seconds"] if result["setup"]["returncode"] == 0 else None
            result["fresh_venv_gib"] = disk_gib(where / ".venv")
        if not args.skip_test:
            result["test"] = timed_make("test", where, env, work / "test.log")
            result["test_seconds"] = result["test"]["seconds"] if result["test"]["returncode"] == 0 else None
        result["where"] = "fresh clone of the committed tree" if where != ROOT else "this checkout"
    finally:
        failed = [step for step in ("setup", "test") if result.get(step, {}).get("returncode", 0) != 0]
        if failed:  # keep the clone and its logs to read
            print(f"make {' and make '.join(failed)} failed: the logs are in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def show(key):
        return "not measured" if key not in result else f"{result[key]['seconds'] / 60:.1f} min (exit {result[key]['returncode']})"

    rows = [("virtual environment on disk", f"{result['venv_gib']:.1f} GiB"), ("make setup (fresh clone)", show("setup")),
            ("make test", show("test"))]  # fmt: skip
    bench.write(result, rows, ("measure", "footprint"))


if __name__ == "__main__":
    main()
