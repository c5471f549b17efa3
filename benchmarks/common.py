"""What every benchmark shares: the machine and software it ran on, holdout figures with intervals (from
`mwml.evaluate`, the library's one bootstrap), and writing results.

Every JSON a benchmark writes records where it ran (CPU model, cores, RAM, GPU and driver), the versions
of Python and the packages, where that stack differs from the pins in settings.ini, the git commit (and
whether the tree had uncommitted changes), the date, and the load average when it started and ended, so
a figure measured on a busy machine says so.
"""

import configparser
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from mwml.config import git_sha

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def cpu_model() -> str:
    "The CPU's model name, from /proc/cpuinfo where there is one."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    "Physical memory in GiB."
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def gpu() -> dict | None:
    "The first CUDA GPU: name, count, driver, the CUDA and cuDNN versions torch was built with; None without one."
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True)
        driver = smi.stdout.splitlines()[0].strip() if smi.returncode == 0 and smi.stdout.strip() else None
    except OSError:
        driver = None
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "driver": driver,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}  # fmt: skip


def pinned() -> tuple[str, list[Requirement]]:
    "(min_python, requirements + dev_requirements) as settings.ini pins them."
    ini = configparser.ConfigParser()
    ini.read(ROOT / "settings.ini")
    s = ini["DEFAULT"]
    reqs = (s.get("requirements", "") + " " + s.get("dev_requirements", "")).split()
    return s.get("min_python", "3"), [Requirement(r) for r in reqs]


def stack_vs_pins() -> list[str]:
    "Where the installed stack differs from settings.ini: one line per package (or Python) outside its pin; [] when none."
    min_python, reqs = pinned()
    python = platform.python_version()
    out = [] if Version(python) >= Version(min_python) else [f"python {python} (pinned >={min_python})"]
    for req in reqs:
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            out.append(f"{req.name} not installed (pinned {req.specifier or 'any'})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            out.append(f"{req.name} {installed} (pinned {req.specifier})")
    return out


def git_state() -> dict:
    "The commit of the working tree (`mwml.config.git_sha`) and whether it had uncommitted changes."
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
    return {"git_sha": git_sha(ROOT), "git_dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def machine(*packages: str) -> dict:
    "Where and with what a benchmark ran: CPU, cores, RAM, GPU, Python, `packages` and mwml versions, differences from the pins."
    versions = {}
    for p in ("mwml", *packages):
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "ram_gib": ram_gib(),
            "gpu": gpu(), "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "stack_vs_pins": stack_vs_pins()}  # fmt: skip


def holdout_scores(model, projects) -> dict:
    "Holdout figures of a trained model, each `{value, low, high}`: `mwml.evaluate.evaluate` with the settings' seed."
    from mwml.config import get_settings
    from mwml.evaluate import evaluate

    report, _ = evaluate(model, projects, seed=get_settings().seed)
    calibration = report["calibration"]
    return {"n": report["n"], "n_boot": report["n_boot"], "seed": report["seed"], "level": report["level"], **report["overall"],
            "f1_per_class": {c["tag"]: c["f1"] for c in report["per_class"]}, "ece": calibration["ece"],
            "temperature": calibration.get("temperature"), "threshold": calibration.get("threshold")}  # fmt: skip


def weights_sha256(folder: Path) -> str:
    "sha256 over a saved model folder's files, so a benchmark that reuses the folder names the model it measured."
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return digest.hexdigest()


def interval(v: dict, digits: int = 3) -> str:
    "`{value, low, high}` as `0.959 (0.929–0.985)`."
    return f"{v['value']:.{digits}f} ({v['low']:.{digits}f}–{v['high']:.{digits}f})"


class Benchmark:
    "One benchmark run: notes when and under what load it started; `write` adds the machine, the end load and the result."

    def __init__(self, name: str, *packages: str):
        self.name, self.packages = name, packages
        self.started, self.load_start, self.t0 = datetime.now(UTC), os.getloadavg(), time.perf_counter()
        self.git = git_state()  # the code that runs is the code at the start

    def write(self, result: dict, rows: list[tuple[str, ...]], header: tuple[str, ...], path: Path | None = None) -> Path:
        "Write results/<name>.json (or `path`) and print `rows` as a Markdown table."
        head = {"benchmark": self.name, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "started": self.started.isoformat(timespec="seconds"), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "wall_seconds": time.perf_counter() - self.t0, **self.git,
                "load_average": {"start": [round(x, 2) for x in self.load_start], "end": [round(x, 2) for x in os.getloadavg()]},
                "machine": machine(*self.packages)}  # fmt: skip
        path = Path(path) if path else RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**head, **result}, indent=2, default=str) + "\n")
        tmp.replace(path)
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\nwrote {path}")
        return path
