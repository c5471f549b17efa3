"""Measure the TF-IDF baseline: holdout quality with a bootstrap interval, training time, latency,
throughput, model size and peak memory (intervals from `mwml.evaluate`). Prints a Markdown table; writes benchmarks/results/baseline.json.

    .venv/bin/python benchmarks/baseline.py [--repeats 5]
"""

import argparse
import resource
import statistics
import tempfile
import time

import numpy as np
from common import Benchmark, holdout_scores, interval

from mwml.baseline import BaselineConfig, BaselineModel
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
    args = parser.parse_args()
    bench = Benchmark("baseline", "scikit-learn")

    train, val = split(load("dataset"))
    holdout = load("holdout")
    config = BaselineConfig()
    fit_times = timed(lambda: BaselineModel(config).fit(train), args.repeats)
    model = BaselineModel(config).fit(train)
    scores = holdout_scores(model, holdout)

    one = [holdout.iloc[[i]] for i in range(len(holdout))]
    single = [t for row in one for t in timed(lambda row=row: model.predict_proba(row), 1)]
    batch = timed(lambda: model.predict_proba(holdout), args.repeats)
    with tempfile.TemporaryDirectory() as d:
        size = sum(f.stat().st_size for f in model.save(d).iterdir())

    result = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
        "n_train": len(train),
        "n_holdout": len(holdout),
        "holdout": scores,
        "fit_seconds_median": statistics.median(fit_times),
        "latency_ms_1_item": {"p50": 1000 * float(np.percentile(single, 50)), "p99": 1000 * float(np.percentile(single, 99))},
        "throughput_items_per_s_batch": len(holdout) / statistics.median(batch),
        "model_bytes": size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    h = result["holdout"]
    rows = [
        ("holdout weighted precision / recall / F1", " / ".join(f"{h[m]['value']:.3f}" for m in ("precision", "recall", "f1"))),
        ("holdout weighted F1 (95% bootstrap interval)", interval(h["f1"])),
        ("holdout F1 per class", ", ".join(f"{c} {v['value']:.3f}" for c, v in sorted(h["f1_per_class"].items()))),
        ("fit time (median)", f"{result['fit_seconds_median']:.2f} s on {len(train)} rows"),
        ("latency, 1 item (p50 / p99)", "{p50:.1f} / {p99:.1f} ms".format(**result["latency_ms_1_item"])),
        ("throughput, whole holdout in one batch", f"{result['throughput_items_per_s_batch']:.0f} items/s"),
        ("model size", f"{size / 1e6:.1f} MB"),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB"),
    ]
    bench.write(result, rows, ("measure", "baseline"))
    return result


if __name__ == "__main__":
    main()
