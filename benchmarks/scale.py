"""Measure mwml on one node and on a real two-node Ray cluster: why Ray Serve's own batching made batches of 1 (the
same replica with `serve.batch` and with mwml's `MicroBatcher`, driven through a deployment handle, so without the
HTTP proxy), `mwml serve` at concurrency 32 (uvicorn alone; Ray Serve with 2 replicas on one node, behind HAProxy, the
default, and behind Ray's Python HTTP proxy; on two nodes, behind the cluster's default proxy),
and `mwml predict-file` (in-process, Ray Data on one node, on two nodes) over 100,000 rows with the TF-IDF baseline
and 2,000 rows with MiniLM.

The "two nodes" are two `ray start` processes on this one machine (tests/ray_cluster.py), 1 CPU each, so they
split the same cores as the one-node runs: the figures show what a second node costs and what the code does on a
cluster (placement, routing, failure), not a speed-up. Writes benchmarks/results/scale.json.

    .venv/bin/python benchmarks/scale.py                 # an untrained MiniLM bundle (speed does not depend on weights)
    .venv/bin/python benchmarks/scale.py --model FOLDER  # a saved Tagger, e.g. from benchmarks/train.py --output FOLDER
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
from common import Benchmark, weights_sha256
from serve import BIN, PUSH_S, free_port, load, loadavg, start, stop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from helpers import running_mlflow_server  # noqa: E402  (the tests' tracking server: a cluster refuses a SQLite store)
from ray_cluster import start_cluster  # noqa: E402  (the same cluster the tests start)

CONCURRENCY = 32


def untrained_minilm(folder: Path) -> str:
    "A MiniLM Tagger with a fresh head: the product's compute, no training needed to time it."
    from mwml.data import LabelIndex
    from mwml.models import Tagger, TaggerConfig

    Tagger.create(TaggerConfig(backbone="minilm"), LabelIndex(("computer-vision", "mlops", "natural-language-processing", "other"))).save(
        folder
    )
    return str(folder)


def baseline_model(folder: Path, env: dict) -> str:
    "The TF-IDF baseline trained by `mwml train --model baseline --output folder` in a throw-away home."
    subprocess.run([str(BIN / "mwml"), "train", "--model", "baseline", "--output", str(folder)], env=env, check=True, capture_output=True)
    return str(folder)


def batcher_experiment(ref: str, items: list[dict], requests: int, repeats: int) -> dict:
    "One Ray Serve replica with `serve.batch`, then with `MicroBatcher`, called through a handle at concurrency 32."
    import ray
    from ray import serve

    from mwml.predict import Predictor
    from mwml.serve import MicroBatcher

    @serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 1})
    class Batched:
        def __init__(self, ref: str, batcher: str):
            import torch

            torch.set_num_threads(2)
            self.predictor, self.sizes = Predictor.load(ref), []
            if batcher == "serve.batch":
                self.batched = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)(self.run_async)
            else:
                self.batched = MicroBatcher(self.run, 32, 0.0)

        def run(self, batch: list[dict]) -> list[dict]:
            self.sizes.append(len(batch))
            return self.predictor.predict(batch)

        async def run_async(self, batch: list[dict]) -> list[dict]:
            return await asyncio.to_thread(self.run, batch)

        async def __call__(self, item: dict) -> str:
            return (await self.batched(item))["tag"]

        def batch_sizes(self) -> list[int]:
            return self.sizes

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    try:
        for batcher in ("serve.batch", "MicroBatcher"):
            handle = serve.run(Batched.bind(ref, batcher), name=f"exp-{batcher}", route_prefix=None)
            for item in items[:CONCURRENCY]:  # warm up
                handle.remote(item).result()
            runs = []
            for rep in range(repeats):
                start_sizes = len(handle.batch_sizes.remote().result())
                t0 = time.perf_counter()
                asyncio.run(drive(handle, items, requests, rep))
                seconds = time.perf_counter() - t0
                sizes = handle.batch_sizes.remote().result()[start_sizes:]
                runs.append({"items_per_s": requests / seconds, "batches": len(sizes), "mean_batch": sum(sizes) / len(sizes)})
            out[batcher] = {"runs": runs, **{k: median([r[k] for r in runs]) for k in ("items_per_s", "mean_batch")}}
            print(f"handle, {batcher}: {out[batcher]['items_per_s']:.1f} items/s, mean batch {out[batcher]['mean_batch']:.1f}", flush=True)
            serve.delete(f"exp-{batcher}")
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


async def drive(handle, items: list[dict], n: int, offset: int):
    "`n` single-item calls through a Serve handle, `CONCURRENCY` in flight."
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i):
        async with sem:
            await handle.remote(items[(offset * n + i) % len(items)])

    await asyncio.gather(*[one(i) for i in range(n)])


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def serve_at_32(name: str, replicas: int, ref: str, env: dict, items: list[dict], requests: int, repeats: int, work: Path) -> dict:
    "`mwml serve --replicas N` under `CONCURRENCY` one-item requests: throughput, latency and batch sizes (from /metrics)."
    port = free_port()
    cmd = [str(BIN / "mwml"), "serve", "--model", ref, "--port", str(port), "--replicas", str(replicas)]
    before = loadavg()
    proc, startup = start(cmd, port, env, HERE.parent, work / f"{name}.log")
    try:
        r = asyncio.run(load(f"http://127.0.0.1:{port}", items, requests, CONCURRENCY, 2 * CONCURRENCY, repeats))
        time.sleep(PUSH_S)  # the replicas' last metrics
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        stop(proc)
    totals = {
        kind: sum(float(v) for v in re.findall(rf"^mwml_batch_size_{kind}(?:{{[^}}]*}})? (\S+)$", text, re.M)) for kind in ("sum", "count")
    }
    mean = totals["sum"] / totals["count"] if totals["count"] else None  # every forward pass since start, warm-up included
    print(f"{name}: {r['items_per_s']['median']:.1f} items/s, p99 {r['p99_ms']['median']:.0f} ms, mean batch {mean}", flush=True)
    return {**r, "mean_batch": mean, "startup_seconds": startup, "load_average": {"start": before, "end": loadavg()}}


def predict_file(name: str, model: str, src: Path, env: dict, work: Path, ray: bool, actors: int | None = None) -> dict:
    "One `mwml predict-file` run: wall seconds and rows per second, the output kept to compare."
    dst = work / f"{name}.csv"
    cmd = [str(BIN / "mwml"), "predict-file", str(src), str(dst), "--model", model, *(["--ray"] if ray else [])]
    cmd += ["--num-actors", str(actors)] if actors else []
    before, t0 = loadavg(), time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-3000:]}")
    rows = len(pd.read_csv(dst))
    print(f"predict-file {name}: {rows} rows in {seconds:.1f} s ({rows / seconds:.0f} rows/s)", flush=True)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "load_average": {"start": before, "end": loadavg()}}


def same_predictions(a: Path, b: Path) -> bool:
    "Whether two predict-file outputs hold the same tags and (to 1e-6) the same probabilities."
    x, y = pd.read_csv(a), pd.read_csv(b)
    try:
        pd.testing.assert_frame_equal(x, y, atol=1e-6)
        return True
    except AssertionError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved Tagger folder (default: an untrained MiniLM bundle)")
    parser.add_argument("--requests", type=int, default=256, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for predict-file with the baseline")
    parser.add_argument("--minilm-rows", type=int, default=2_000, help="rows for predict-file with MiniLM")
    args = parser.parse_args()
    bench = Benchmark("scale", "torch", "ray", "mlflow")
    work = Path(tempfile.mkdtemp(prefix="mwml-bench-scale-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MWML_API_TOKEN")}
    env.update(MWML_HOME=str(work / "home"), MWML_SERVE_PREDICTION_LOG=str(work / "predictions.db"))
    os.environ.update(MWML_HOME=env["MWML_HOME"])

    from mwml.data import load as load_data

    ref = str(Path(args.model).resolve()) if args.model else untrained_minilm(work / "minilm")
    baseline = baseline_model(work / "baseline", env)
    holdout = load_data("holdout")
    items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
    result = {"model": {"ref": ref, "how": f"--model {args.model}" if args.model else "untrained MiniLM bundle (same compute)",
                        "sha256": weights_sha256(Path(ref))}, "requests_per_run": args.requests, "repeats": args.repeats}  # fmt: skip

    result["batcher_via_handle"] = batcher_experiment(ref, items, args.requests, args.repeats)

    projects = pd.concat([load_data("dataset"), holdout])[["title", "description"]]
    big, small = work / "projects-big.csv", work / "projects-small.csv"
    pd.concat([projects] * (args.rows // len(projects) + 1)).head(args.rows).to_csv(big, index=False)
    projects.head(args.minilm_rows).to_csv(small, index=False)

    serve, predict = {}, {}
    serve["uvicorn (--replicas 0)"] = serve_at_32("uvicorn", 0, ref, env, items, args.requests, args.repeats, work)
    serve["Ray Serve, 2 replicas, 1 node"] = serve_at_32("ray-1node", 2, ref, env, items, args.requests, args.repeats, work)
    serve["Ray Serve, 2 replicas, 1 node, Ray's HTTP proxy"] = serve_at_32(
        "ray-1node-proxy", 2, ref, {**env, "MWML_SERVE_INGRESS": "proxy"}, items, args.requests, args.repeats, work
    )
    for name, model, src in (("baseline", baseline, big), ("minilm", ref, small)):
        predict[f"{name}, in-process"] = predict_file(f"{name}-local", model, src, env, work, ray=False)
        predict[f"{name}, Ray Data, 1 node"] = predict_file(f"{name}-ray1", model, src, env, work, ray=True)

    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    t0 = time.perf_counter()
    node_env = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_health_check_failure_threshold": "10"}  # as tests/test_scale.py
    cluster = start_cluster(root, node_env=node_env)
    result["cluster"] = {"nodes": 2, "cpus_per_node": 1, "start_seconds": time.perf_counter() - t0, "timings": cluster.timings}
    try:
        with running_mlflow_server(work / "tracking") as tracking:
            on_cluster = {**env, **cluster.env, "MLFLOW_TRACKING_URI": tracking}
            two = serve_at_32("ray-2nodes", 2, ref, on_cluster, items, args.requests, args.repeats, work)
            serve["Ray Serve, 2 replicas, 2 nodes"] = two
            for name, model, src in (("baseline", baseline, big), ("minilm", ref, small)):
                predict[f"{name}, Ray Data, 2 nodes"] = predict_file(f"{name}-ray2", model, src, on_cluster, work, ray=True, actors=2)
            result["cluster"]["memory_mib"] = cluster.memory_mb()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    for name in ("baseline", "minilm"):
        predict[f"{name}: all three outputs identical"] = same_predictions(work / f"{name}-local.csv", work / f"{name}-ray1.csv") and \
            same_predictions(work / f"{name}-local.csv", work / f"{name}-ray2.csv")  # fmt: skip
    result["serve_at_32"], result["predict_file"] = serve, predict
    rows = [(name, f"{r['items_per_s']['median']:.0f} ({r['items_per_s']['min']:.0f}–{r['items_per_s']['max']:.0f})",
             f"{r['p99_ms']['median']:.0f}", f"{r['mean_batch']:.1f}" if r["mean_batch"] else "–")
            for name, r in serve.items()]  # fmt: skip
    rows += [(f"handle, {b}", f"{r['items_per_s']:.0f}", "–", f"{r['mean_batch']:.1f}") for b, r in result["batcher_via_handle"].items()]
    rows += [(f"predict-file {name}", f"{r['rows_per_s']:.0f} rows/s ({r['rows']} rows)", "–", "–")
             for name, r in predict.items() if isinstance(r, dict)]  # fmt: skip
    bench.write(result, rows, ("what", "items/s (range)", "p99 ms", "mean batch"))


if __name__ == "__main__":
    main()
