"""Measure the transformer tagger: holdout quality (95% bootstrap intervals from `mwml.evaluate`, per class,
calibration) and wall-clock training time, in-process and data-parallel on Ray Train, next to the baseline.
Prints a Markdown table; writes benchmarks/results/train.json, or train_gpu.json when it trains on a GPU.

    .venv/bin/python benchmarks/train.py [--workers 2] [--config FILE] [--skip-distributed] [--output FOLDER]
    .venv/bin/python benchmarks/train.py --device cuda   # on a GPU machine: writes results/train_gpu.json

Runs are tracked in a throw-away MLflow store, so benchmarking leaves your own store as it was.
"""

import argparse
import os
import resource
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from common import Benchmark, holdout_scores, interval, weights_sha256


def timed(fn):
    "(result of fn(), seconds it took)."
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def load_during(fn):
    "(result of fn(), seconds it took, the 1-minute load averages before and after)."
    before = os.getloadavg()
    result, seconds = timed(fn)
    return result, seconds, {"start": [round(x, 2) for x in before], "end": [round(x, 2) for x in os.getloadavg()]}


def peak_rss_mib() -> float:
    "The largest resident memory this process has had so far, MiB."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers for the data-parallel run")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (default: the defaults)")
    parser.add_argument("--device", help="auto, cpu or cuda (default: the MWML_DEVICE setting); on cuda writes train_gpu.json")
    parser.add_argument("--skip-distributed", action="store_true", help="only the in-process run")
    parser.add_argument("--output", help="also save the in-process tagger here (to reuse in evaluate.py / serve.py)")
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"

    from mwml.baseline import train_baseline
    from mwml.config import pick_device
    from mwml.data import load
    from mwml.train import TrainConfig, train, train_distributed

    device = pick_device(args.device)
    bench = Benchmark("train_gpu" if device == "cuda" else "train", "torch", "transformers", "fastai", "ray", "mlflow")
    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    if args.device:
        config = replace(config, device=args.device)
    holdout = load("holdout")
    runs, notes = {}, []
    baseline, seconds = timed(train_baseline)
    runs["baseline"] = {"seconds": seconds, "epochs_run": None, "holdout": holdout_scores(baseline.model, holdout)}
    result, seconds, load = load_during(lambda: train(config, output=args.output))
    runs["tagger, in-process"] = {"seconds": seconds, "load_average": load, "epochs_run": len(result.history), "device": device,
                                  "peak_rss_mib": peak_rss_mib(), "holdout": holdout_scores(result.tagger, holdout)}  # fmt: skip
    if device == "cuda":
        import torch

        runs["tagger, in-process"]["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    use_gpu = device == "cuda"
    if args.skip_distributed or args.workers < 1:
        notes.append("Ray Train run skipped (--skip-distributed)")
    elif use_gpu and torch.cuda.device_count() < args.workers:
        gpus = torch.cuda.device_count()
        notes.append(f"Ray Train run skipped: {args.workers} workers need {args.workers} GPUs, this machine has {gpus}")
    else:
        name = f"tagger, Ray Train x{args.workers}" + (" (GPU, NCCL)" if use_gpu else " (CPU, gloo)")
        try:
            result, seconds, load = load_during(lambda: train_distributed(config, num_workers=args.workers, use_gpu=use_gpu))
            runs[name] = {
                "seconds": seconds,
                "load_average": load,
                "epochs_run": len(result.history),
                "holdout": holdout_scores(result.tagger, holdout),
            }
        except Exception as e:  # e.g. Ray cannot start on an overloaded machine: keep the in-process figures, say why this is missing
            notes.append(f"{name} failed: {type(e).__name__}: {e}")

    rows = [
        (name, interval(r["holdout"]["f1"]), interval(r["holdout"]["f1_per_class"]["mlops"]), interval(r["holdout"]["f1_macro"]),
         f"{r['holdout']['ece']:.3f}", f"{r['seconds']:.0f} s")
        for name, r in runs.items()
    ]  # fmt: skip
    header = ("model", "holdout weighted F1 (95% CI)", "mlops F1", "macro F1", "ECE", "wall clock")
    out = {"device": device, "config": asdict(config), "runs": runs, "notes": notes}
    if args.output:
        out["saved_tagger"] = {"folder": str(Path(args.output).resolve()), "sha256": weights_sha256(Path(args.output))}
    bench.write(out, rows, header)


if __name__ == "__main__":
    main()
