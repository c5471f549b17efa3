"""Measure online inference: in-process latency and batch throughput (with where the time goes: tokenisation
vs model, medians of 20 calls), then one-item requests over HTTP on 127.0.0.1 at concurrency 1, 8 and 32 for (a) a naive
per-request FastAPI handler (benchmarks/naive_server.py), (b) `mwml serve --replicas 0` (uvicorn alone,
asyncio micro-batching) and (c) `mwml serve --replicas 1` (Ray Serve, the same micro-batching in each replica).

Every server gets the same requests at every concurrency: a warm-up that is not counted, then `--repeats`
runs of `--requests` requests each; the JSON keeps every run and the median and range over them. For the
two `mwml serve` modes each run's batch-size histogram is read from `/metrics` (`mwml_batch_size`, the
difference between before and after the run). Servers are driven only through the public CLI and HTTP.
Prints a Markdown table; writes benchmarks/results/serve.json (or `--output`).

    .venv/bin/python benchmarks/serve.py                  # trains the model first: TrainConfig defaults, seed 42 (~4 min)
    .venv/bin/python benchmarks/serve.py --model FOLDER   # a saved Tagger, e.g. from benchmarks/train.py --output FOLDER
    .venv/bin/python benchmarks/serve.py --model champion # the registry's champion that `make run` leaves
    .venv/bin/python benchmarks/serve.py --model VARIANTS/int8 --naive-model VARIANTS/parent \
        --output benchmarks/results/serve-int8.json       # `mwml serve` on the int8 variant, the naive handler on torch fp32

The load generator runs on the same machine as the server and shares its cores.
"""

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from common import Benchmark, weights_sha256

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# under Ray Serve each sample also has a `replica` label (one scrape covers every replica): buckets are summed over replicas
BUCKET = re.compile(r'^mwml_batch_size_bucket\{le="([^"]+)"(?:,replica="[^"]+")?\}\s+(\S+)$', re.M)
PUSH_S = 1.5  # Ray Serve replicas push their metrics every second: wait this long before reading a run's last batches


def percentiles(ms: list[float]) -> dict:
    "p50 and p99 of latencies in ms."
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def in_process(ref: str, items: list[dict], repeats: int) -> dict:
    "Latency of one item, throughput at batch 64 and tokenisation vs model time, without HTTP (medians of `repeats`)."
    import torch

    from mwml.predict import Predictor

    predictor = Predictor.load(ref)
    for item in items[:10]:
        predictor.predict([item])  # warm up
    one = []
    for item in items[:200]:
        start = time.perf_counter()
        predictor.predict([item])
        one.append((time.perf_counter() - start) * 1000)
    batch = items[:64]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    out = {"one_item": percentiles(one), "batch64_items_per_s": spread(rates)}
    tagger = predictor.model
    if predictor.backend == "torch":
        split = {}
        for size in (1, 64):
            texts = tagger.texts([i["title"] for i in items[:size]], [i["description"] for i in items[:size]])
            tokens = tagger.encode(texts)
            with torch.inference_mode():
                model_ms = median_ms(lambda tokens=tokens: tagger.model(tokens), 20)
            split[f"batch_{size}"] = {"tokenise_ms": median_ms(lambda texts=texts: tagger.encode(texts), 20), "model_ms": model_ms}
        out["time_split"] = split
    return out


def median_ms(fn, n: int) -> float:
    "Median wall-clock milliseconds of `n` calls of `fn` (a median, so one stall on a shared machine does not count)."
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def spread(values: list[float]) -> dict:
    "Median, min and max of repeated measurements, and the values themselves."
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def batch_buckets(metrics_text: str) -> dict[str, float]:
    "Cumulative `mwml_batch_size` histogram buckets (le -> count, summed over replicas) from a /metrics page; {} without one."
    buckets = {}
    for le, n in BUCKET.findall(metrics_text):
        buckets[le] = buckets.get(le, 0.0) + float(n)
    return buckets


def histogram_between(before: dict[str, float], after: dict[str, float]) -> dict | None:
    "Forward passes per batch-size bucket (`<=1`, `<=2`, ...) between two readings, and how many in all; None without /metrics."
    if not after:
        return None
    cum = {le: after[le] - before.get(le, 0.0) for le in after}
    order = sorted(cum, key=lambda le: float(le))
    counts, previous = {}, 0.0
    for le in order:
        label = "+Inf" if le == "+Inf" else f"<={float(le):g}"
        counts[label], previous = int(round(cum[le] - previous)), cum[le]
    return {"batches": int(round(cum[order[-1]])), "per_bucket": counts}


async def metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    "The batch-size buckets a server reports now; {} if it has no /metrics."
    try:
        async with session.get(f"{base}/metrics") as r:
            return batch_buckets(await r.text()) if r.status == 200 else {}
    except aiohttp.ClientError:
        return {}


async def load(base: str, items: list[dict], n: int, concurrency: int, warmup: int, repeats: int) -> dict:
    "Warm up with `warmup` requests, then `repeats` runs of `n` one-item requests with `concurrency` in flight."
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(i, latencies, errors):
            async with sem:
                start = time.perf_counter()
                try:
                    async with session.post(f"{base}/predict", json={"items": [items[i % len(items)]]}) as r:
                        await r.read()
                        if r.status != 200:
                            errors.append(r.status)
                except (TimeoutError, aiohttp.ClientError) as e:
                    errors.append(type(e).__name__)
                latencies.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*[one(i, [], []) for i in range(warmup)])
        runs = []
        for rep in range(repeats):
            latencies, errors = [], []
            before = await metrics(session, base)
            start = time.perf_counter()
            await asyncio.gather(*[one(rep * n + i, latencies, errors) for i in range(n)])
            seconds = time.perf_counter() - start
            await asyncio.sleep(PUSH_S)
            after = await metrics(session, base)
            runs.append({"requests": n, "errors": len(errors), "error_kinds": sorted({str(e) for e in errors}),
                         "seconds": seconds, "items_per_s": n / seconds, **percentiles(latencies),
                         "batch_sizes": histogram_between(before, after)})  # fmt: skip
    return {"concurrency": concurrency, "requests_per_run": n, "warmup_requests": warmup, "runs": runs,
            **{k: spread([r[k] for r in runs]) for k in ("items_per_s", "p50_ms", "p99_ms")},
            "errors": sum(r["errors"] for r in runs)}  # fmt: skip


def loadavg() -> list[float]:
    "The 1, 5 and 15-minute load averages now."
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    "A TCP port nobody listens on now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict, cwd: Path, log: Path) -> tuple[subprocess.Popen, float]:
    "(the server process, seconds until /health answered 200)."
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{' '.join(cmd)} did not come up; see {log}")


def tree_rss_mib(pid: int) -> float | None:
    "Resident memory of a process and all its descendants (Ray's too), MiB."
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def stop(proc: subprocess.Popen):
    "SIGTERM (the servers shut down cleanly on it), then kill the whole process group if it lingers."
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def trained_model(folder: Path) -> str:
    "Train the tagger with TrainConfig's defaults (seed 42) into `folder`, tracked in a throw-away MLflow store."
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    from mwml.train import TrainConfig, train

    train(TrainConfig(), output=folder)
    return str(folder)


def model_ref(value: str) -> str:
    "A `--model` value as the servers take it: a folder made absolute (the naive server runs in benchmarks/), else as given."
    return str(Path(value).resolve()) if Path(value).exists() else value


def vs_naive(http: dict, naive: str) -> dict:
    "Per server and concurrency: its median items/s over the naive handler's."
    base = {c: r["items_per_s"]["median"] for c, r in http[naive]["by_concurrency"].items()}
    return {
        name: {c: r["items_per_s"]["median"] / base[c] for c, r in h["by_concurrency"].items()} for name, h in http.items() if name != naive
    }


def row(name: str, by_c: dict) -> tuple[str, ...]:
    "A table row: per concurrency, median p50 / p99 and median throughput (range)."
    cells = []
    for r in by_c.values():
        t = r["items_per_s"]
        cells.append(f"{r['p50_ms']['median']:.0f} / {r['p99_ms']['median']:.0f} ms, {t['median']:.0f}/s ({t['min']:.0f}–{t['max']:.0f})")
    return (name, *cells)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="what `mwml serve --model` takes: a Tagger folder, champion, a version (default: train one)")
    parser.add_argument("--requests", type=int, default=256, help="requests per run, the same for every server and concurrency")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="requests in flight")
    parser.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas for the Ray Serve mode")
    parser.add_argument("--naive-model", help="what the naive handler serves, e.g. the torch parent of an int8 --model (default: --model)")
    parser.add_argument("--output", type=Path, help="the JSON to write (default benchmarks/results/serve.json)")
    args = parser.parse_args()
    bench = Benchmark("serve", "torch", "transformers", "fastapi", "uvicorn", "ray")
    work = Path(tempfile.mkdtemp(prefix="mwml-bench-serve-"))

    from mwml.data import load as load_data

    if args.model:
        ref = model_ref(args.model)
        how = f"--model {args.model}"
    else:
        ref, how = trained_model(work / "tagger"), "trained by this script: TrainConfig defaults (seed 42) on dataset.csv"
    holdout = load_data("holdout")
    items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
    naive_ref = model_ref(args.naive_model) if args.naive_model else ref
    result = {"model": {"ref": ref, "how": how}, "requests_per_run": args.requests, "repeats": args.repeats}
    result["naive_model"] = {"ref": naive_ref, "how": f"--naive-model {args.naive_model}" if args.naive_model else "the same as --model"}
    for entry in (result["model"], result["naive_model"]):
        if Path(entry["ref"]).is_dir():
            entry["sha256"] = weights_sha256(Path(entry["ref"]))
    env = {**os.environ, "MWML_MODEL": ref, "MWML_SERVE_PREDICTION_LOG": str(work / "predictions.db")}
    env.pop("MWML_API_TOKEN", None)
    naive = "naive FastAPI handler"
    mwml = [str(BIN / "mwml"), "serve", "--model", ref, "--port", "{port}", "--replicas"]
    servers = {
        naive: ([str(BIN / "uvicorn"), "naive_server:app", "--port", "{port}", "--log-level", "warning"], HERE),
        "mwml serve --replicas 0 (uvicorn)": ([*mwml, "0"], HERE.parent),
        f"mwml serve --replicas {args.replicas} (Ray Serve)": ([*mwml, str(args.replicas)], HERE.parent),
    }
    result["http"] = {}
    for i, (name, (cmd, cwd)) in enumerate(servers.items()):
        port = free_port()
        before = loadavg()
        server_env = {**env, "MWML_MODEL": naive_ref} if name == naive else env
        proc, startup = start([c.format(port=port) for c in cmd], port, server_env, cwd, work / f"server{i}.log")
        try:
            by_c = {}
            for c in args.concurrency:
                warmup = max(16, 2 * c)
                by_c[str(c)] = asyncio.run(load(f"http://127.0.0.1:{port}", items, args.requests, c, warmup, args.repeats))
                r = by_c[str(c)]
                print(name, c, f"{r['items_per_s']['median']:.1f}/s p50 {r['p50_ms']['median']:.0f} ms errors {r['errors']}", flush=True)
            command = " ".join([Path(cmd[0]).name, *cmd[1:]]).replace("{port}", "PORT")
            result["http"][name] = {"command": command, "startup_seconds": startup, "rss_mib_after": tree_rss_mib(proc.pid),
                                    "load_average": {"start": before, "end": loadavg()}, "by_concurrency": by_c}  # fmt: skip
        finally:
            stop(proc)
    result["throughput_vs_naive"] = vs_naive(result["http"], naive)
    # in-process last, with no server left running: the model alone, to set the HTTP figures against
    before = loadavg()
    result["in_process"] = {**in_process(ref, items, args.repeats), "load_average": {"start": before, "end": loadavg()}}
    print("in-process", result["in_process"], flush=True)

    ip = result["in_process"]
    rows = [("in-process `Predictor`", f"1 item: p50 {ip['one_item']['p50_ms']:.1f} / p99 {ip['one_item']['p99_ms']:.1f} ms", "",
             f"batch of 64: {ip['batch64_items_per_s']['median']:.0f} items/s")]  # fmt: skip
    rows += [row(name, r["by_concurrency"]) for name, r in result["http"].items()]
    header = ("server", *(f"concurrency {c}: p50 / p99, items/s (range)" for c in args.concurrency))
    bench.write(result, rows, header, args.output)
    for name, ratios in result["throughput_vs_naive"].items():
        print(f"{name}: " + ", ".join(f"{x:.1f}x the naive handler's items/s at concurrency {c}" for c, x in ratios.items()))


if __name__ == "__main__":
    main()
