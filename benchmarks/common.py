"""What every benchmark shares: the machine it ran on, bootstrap intervals, and writing results."""

import json
import os
import platform
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

RESULTS = Path(__file__).resolve().parent / "results"


def machine(*packages: str) -> dict:
    "Where and with what a benchmark ran."
    info = {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {**info, **{p: version(p) for p in packages}}


def bootstrap_interval(y_true, y_pred, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    "95% bootstrap interval of the weighted F1 (rows resampled with replacement)."
    rng, y_true, y_pred = np.random.default_rng(seed), np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for _ in range(n):
        i = rng.integers(0, len(y_true), len(y_true))
        scores.append(f1_score(y_true[i], y_pred[i], average="weighted", zero_division=0))
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


def write_result(name: str, result: dict, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Path:
    "Write `result` as results/<name>.json and print `rows` as a Markdown table."
    result = {"benchmark": name, "when": datetime.now(UTC).isoformat(timespec="seconds"), **result}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nwrote {path}")
    return path
