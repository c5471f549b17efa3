"""Measure the tuning room: a Ray Tune search (Optuna TPE + ASHA) with the MiniLM backbone on a
subsample of dataset.csv, what ASHA saved, and the best config against the default one on holdout.csv
(both trained on all of dataset.csv's training split, with 95% bootstrap intervals).
Prints a Markdown table; writes benchmarks/results/tune.json.

    .venv/bin/python benchmarks/tune.py [--num-samples 12] [--sample-size 300] [--max-epochs 4]

Runs are tracked in a throw-away MLflow store and Ray results go to a throw-away MWML_HOME.
"""

import argparse
import os
import tempfile
import time
from dataclasses import asdict

from common import Benchmark, holdout_scores, interval


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=12, help="trials")
    parser.add_argument("--sample-size", type=int, default=300, help="rows of dataset.csv the search tunes on")
    parser.add_argument("--max-epochs", type=int, default=4, help="most epochs (after the frozen one) a trial may run")
    args = parser.parse_args()
    bench = Benchmark("tune", "torch", "ray", "optuna", "hyperopt", "mlflow")
    home = tempfile.mkdtemp()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"

    from mwml.config import get_settings
    from mwml.data import load
    from mwml.train import TrainConfig, train
    from mwml.tune import SEARCH_SPACE, cap_epochs, search

    settings = get_settings({**os.environ, "MWML_HOME": home, "MWML_DATA_DIR": str(get_settings().data_dir)})
    base, space = cap_epochs(TrainConfig(sample_size=args.sample_size), SEARCH_SPACE, args.max_epochs)
    start = time.perf_counter()
    found = search(base, space, args.num_samples, settings=settings)
    search_seconds = time.perf_counter() - start
    trials = found.trials
    ran = int(trials.epochs_run.sum())
    planned = int(sum(base.freeze_epochs + int(e) for e in trials.epochs))

    holdout = load("holdout")
    default, best = TrainConfig(), TrainConfig.from_dict({**asdict(found.best_config), "sample_size": None})
    judged = {}
    for name, config in (("default config", default), ("best trial's config", best)):
        start = time.perf_counter()
        result = train(config, settings=settings)
        seconds = time.perf_counter() - start
        judged[name] = {"seconds": seconds, "holdout": holdout_scores(result.tagger, holdout), "config": asdict(config)}

    best_values = {k: v for k, v in asdict(found.best_config).items() if k in space}
    rows = [
        ("search", f"{len(trials)} trials ({(trials.status == 'failed').sum()} failed) in {search_seconds / 60:.1f} min, "
                   f"{args.sample_size} rows, MiniLM, Optuna TPE + ASHA"),
        ("ASHA", f"{ran} trial-epochs run of {planned} had every trial run to the end ({1 - ran / planned:.0%} saved); "
                 f"{(trials.status == 'stopped early').sum()} trials stopped early"),
        ("best trial", ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in best_values.items())),
    ] + [
        (f"holdout, {name}", f"F1 {interval(r['holdout']['f1'])}, mlops F1 {interval(r['holdout']['f1_per_class']['mlops'])}, "
                             f"trained in {r['seconds']:.0f} s")
        for name, r in judged.items()
    ]  # fmt: skip
    result = {"search_seconds": search_seconds, "num_samples": args.num_samples, "sample_size": args.sample_size,
              "max_epochs": args.max_epochs,
              "space": space, "trials": trials.drop(columns=["trial_id"], errors="ignore").to_dict("records"), "trial_epochs_run": ran,
              "trial_epochs_if_run_to_end": planned, "best_config": asdict(found.best_config), "holdout": judged}  # fmt: skip
    bench.write(result, rows, ("measure", "tuning"))


if __name__ == "__main__":
    main()
