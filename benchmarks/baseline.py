"""Measure the TF-IDF baseline: holdout quality with a bootstrap interval, training time, latency,
throughput, model size and peak memory. Prints a Markdown table; writes benchmarks/results/baseline.json.

    .venv/bin/python benchmarks/baseline.py [--repeats 5] [--bootstrap 1000]
"""

import argparse
import resource
import statistics
import tempfile
import time

import numpy as np
from common import bootstrap_interval, machine, write_result

from mwml.baseline import BaselineConfig, BaselineModel, classification_scores
from mwml.data import load, split


def timed(fn, repeats: int) -> list[float]:
    "Wall-clock seconds of `repeats` calls of `fn`."
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each measurement")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the interval")
    args = parser.parse_args()

    train, val = split(load("dataset"))
    holdout = load("holdout")
    config = BaselineConfig()
    fit_times = timed(lambda: BaselineModel(config).fit(train), args.repeats)
    model = BaselineModel(config).fit(train)
    predicted = model.predict(holdout)
    scores = classification_scores(holdout.tag, predicted, model.labels.classes)
    low, high = bootstrap_interval(holdout.tag, predicted, args.bootstrap)

    one = [holdout.iloc[[i]] for i in range(len(holdout))]
    single = [t for row in one for t in timed(lambda row=row: model.predict_proba(row), 1)]
    batch = timed(lambda: model.predict_proba(holdout), args.repeats)
    with tempfile.TemporaryDirectory() as d:
        size = sum(f.stat().st_size for f in model.save(d).iterdir())

    result = {
        "machine": machine("scikit-learn"),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
        "n_train": len(train),
        "n_holdout": len(holdout),
        "holdout": {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
                    "f1_ci95": [low, high], "f1_macro": scores["f1_macro"],
                    "f1_per_class": {c: v["f1"] for c, v in scores["per_class"].items()}},
        "fit_seconds_median": statistics.median(fit_times),
        "latency_ms_1_item": {"p50": 1000 * float(np.percentile(single, 50)), "p99": 1000 * float(np.percentile(single, 99))},
        "throughput_items_per_s_batch": len(holdout) / statistics.median(batch),
        "model_bytes": size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    h = result["holdout"]
    rows = [
        ("holdout weighted precision / recall / F1", f"{h['precision']:.3f} / {h['recall']:.3f} / {h['f1']:.3f}"),
        ("holdout weighted F1, 95% bootstrap interval", f"{low:.3f} – {high:.3f}"),
        ("holdout F1 per class", ", ".join(f"{c} {v:.3f}" for c, v in h["f1_per_class"].items())),
        ("fit time (median)", f"{result['fit_seconds_median']:.2f} s on {len(train)} rows"),
        ("latency, 1 item (p50 / p99)", "{p50:.1f} / {p99:.1f} ms".format(**result["latency_ms_1_item"])),
        ("throughput, whole holdout in one batch", f"{result['throughput_items_per_s_batch']:.0f} items/s"),
        ("model size", f"{size / 1e6:.1f} MB"),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB"),
    ]
    write_result("baseline", result, rows, ("measure", "baseline"))
    return result


if __name__ == "__main__":
    main()
