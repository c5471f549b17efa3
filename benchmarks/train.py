"""Measure the transformer tagger: holdout quality (weighted F1 with a 95% bootstrap interval, per
class) and wall-clock training time, in-process and data-parallel on Ray Train, next to the baseline.
Prints a Markdown table; writes benchmarks/results/train.json.

    .venv/bin/python benchmarks/train.py [--workers 2] [--config FILE] [--skip-distributed]

Runs are tracked in a throw-away MLflow store, so benchmarking leaves your own store as it was.
"""

import argparse
import os
import tempfile
import time
from dataclasses import asdict

from common import bootstrap_interval, machine, write_result


def summary(tags: list[str], holdout, seconds: float, epochs: int | None = None) -> dict:
    "Holdout figures of predicted `tags`, with the F1 interval, the wall-clock time and the epochs run."
    from mwml.baseline import classification_scores

    scores = classification_scores(holdout.tag.tolist(), tags)
    low, high = bootstrap_interval(holdout.tag, tags)
    return {"seconds": seconds, "epochs_run": epochs, "precision": scores["precision"], "recall": scores["recall"],
            "f1": scores["f1"], "f1_ci95": [low, high], "f1_macro": scores["f1_macro"],
            "f1_per_class": {c: v["f1"] for c, v in scores["per_class"].items()}}  # fmt: skip


def timed(fn):
    "(result of fn(), seconds it took)."
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers for the data-parallel run")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (default: the defaults)")
    parser.add_argument("--skip-distributed", action="store_true", help="only the in-process run")
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"

    from mwml.baseline import train_baseline
    from mwml.data import load
    from mwml.train import TrainConfig, train, train_distributed

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    holdout = load("holdout")
    runs = {}
    baseline, seconds = timed(train_baseline)
    runs["baseline"] = summary(baseline.model.predict(holdout), holdout, seconds)
    tagger_runs = [("tagger, in-process", lambda: train(config))]
    if not args.skip_distributed:
        tagger_runs.append((f"tagger, Ray Train x{args.workers}", lambda: train_distributed(config, num_workers=args.workers)))
    for name, run in tagger_runs:
        result, seconds = timed(run)
        runs[name] = summary(result.tagger.predict(holdout.title, holdout.description)[0], holdout, seconds, len(result.history))

    rows = [
        (name, f"{r['precision']:.3f} / {r['recall']:.3f} / {r['f1']:.3f}", "{:.3f} – {:.3f}".format(*r["f1_ci95"]),
         f"{r['f1_per_class'].get('mlops', float('nan')):.3f}", f"{r['f1_macro']:.3f}", f"{r['seconds']:.0f} s")
        for name, r in runs.items()
    ]  # fmt: skip
    header = ("model", "holdout P / R / F1 (weighted)", "F1 95% CI", "mlops F1", "macro F1", "wall clock")
    write_result(
        "train", {"machine": machine("torch", "transformers", "fastai", "ray"), "config": asdict(config), "runs": runs}, rows, header
    )


if __name__ == "__main__":
    main()
