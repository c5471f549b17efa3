"""Evaluate the baseline and the (calibrated) MiniLM tagger the way the promotion gate does:
holdout figures with 95% bootstrap intervals, per class, slices, calibration, behavioural pass
rates, and how long evaluation and the suite take. Prints a Markdown table; writes
benchmarks/results/evaluate.json.

    .venv/bin/python benchmarks/evaluate.py [--tagger FOLDER]

Without --tagger it trains one with the default config (about 3 minutes on 2 CPU cores). Runs go
to a throw-away MLflow store.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import Benchmark, weights_sha256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tagger", help="folder of a trained Tagger (default: train one)")
    args = parser.parse_args()
    bench = Benchmark("evaluate", "torch", "transformers", "scikit-learn")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"

    from mwml.baseline import train_baseline
    from mwml.behavioral import run_suite
    from mwml.config import get_settings
    from mwml.data import load
    from mwml.evaluate import evaluate
    from mwml.models import Tagger
    from mwml.train import train

    holdout = load("holdout")
    models = {"baseline": train_baseline().model, "tagger": Tagger.load(args.tagger) if args.tagger else train().tagger}
    results = {}
    for name, model in models.items():
        start = time.perf_counter()
        report, _ = evaluate(model, holdout, seed=get_settings().seed)
        evaluated = time.perf_counter()
        suite = run_suite(model, holdout)
        results[name] = {
            "evaluate_seconds": evaluated - start, "suite_seconds": time.perf_counter() - evaluated,
            "overall": report["overall"], "per_class": {c["tag"]: c["f1"] for c in report["per_class"]},
            "slices": report["slices"], "ece": report["calibration"]["ece"],
            "temperature": report["calibration"].get("temperature"), "threshold": report["calibration"].get("threshold"),
            "quadrants": {k: v["count"] for k, v in report["quadrants"].items()}, "pass_rates": suite.pass_rates(),
            "suite_cases": len(suite.cases),
        }  # fmt: skip

    def interval(v):
        return f"{v['value']:.3f} ({v['low']:.3f}–{v['high']:.3f})"

    rows = [
        (name, interval(r["overall"]["f1"]), interval(r["overall"]["f1_macro"]), interval(r["per_class"]["mlops"]), f"{r['ece']:.3f}",
         " / ".join(f"{r['pass_rates'][k]:.2f}" for k in ("MFT", "INV", "DIR")),
         f"{r['evaluate_seconds']:.1f} + {r['suite_seconds']:.1f} s")
        for name, r in results.items()
    ]  # fmt: skip
    header = ("model", "holdout F1 (95% CI)", "macro F1", "mlops F1", "ECE", "MFT / INV / DIR", "evaluate + suite")
    tagger = (
        {"ref": args.tagger, "sha256": weights_sha256(Path(args.tagger))}
        if args.tagger
        else {"ref": "trained by this script (TrainConfig defaults)"}
    )
    bench.write({"tagger": tagger, "models": results}, rows, header)


if __name__ == "__main__":
    main()
