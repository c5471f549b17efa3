"""Measure online inference: in-process latency and batch throughput (with where the time goes:
tokenisation vs model), then over HTTP on 127.0.0.1 at concurrency 1, 8 and 32 for (a) a naive
per-request FastAPI + transformers handler, (b) `mwml serve` with uvicorn alone (asyncio
micro-batching) and (c) `mwml serve` on Ray Serve (one replica, `serve.batch`). Prints a Markdown
table; writes benchmarks/results/serve.json.

    .venv/bin/python benchmarks/serve.py --model FOLDER   # a saved Tagger; default: train one (about 3 min)
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from common import machine, write_result

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def in_process(folder: str, items: list[dict]) -> dict:
    "Latency of one item, throughput at batch 64, and tokenisation vs model time, without HTTP."
    import torch

    from mwml.predict import Predictor

    predictor = Predictor.load(folder)
    tagger = predictor.model
    for item in items[:5]:
        predictor.predict([item])  # warm up
    one = []
    for item in items[:200]:
        start = time.perf_counter()
        predictor.predict([item])
        one.append((time.perf_counter() - start) * 1000)
    batch = items[:64]
    start = time.perf_counter()
    for _ in range(5):
        predictor.predict(batch)
    batch_s = (time.perf_counter() - start) / 5
    split = {}
    for size in (1, 64):
        texts = tagger.texts([i["title"] for i in items[:size]], [i["description"] for i in items[:size]])
        t0 = time.perf_counter()
        for _ in range(20):
            tokens = tagger.encode(texts)
        t1 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(20):
                tagger.model(tokens)
        t2 = time.perf_counter()
        split[f"batch_{size}"] = {"tokenise_ms": (t1 - t0) / 20 * 1000, "model_ms": (t2 - t1) / 20 * 1000}
    return {"one_item": percentiles(one), "batch64_items_per_s": 64 / batch_s, "time_split": split}


async def load(url: str, items: list[dict], n: int, concurrency: int, headers: dict) -> dict:
    "Send `n` one-item requests with `concurrency` in flight; latency percentiles, throughput, errors."
    latencies, errors, sem = [], 0, asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i):
            nonlocal errors
            async with sem:
                start = time.perf_counter()
                try:
                    async with session.post(url, json={"items": [items[i % len(items)]]}, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*[one(i) for i in range(min(concurrency * 2, n))])  # warm up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        seconds = time.perf_counter() - start
    return {"requests": n, "concurrency": concurrency, "errors": errors, "items_per_s": n / seconds, **percentiles(latencies)}


def start(cmd: list[str], port: int, env: dict, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                time.sleep(2)
                return proc
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"{cmd} did not come up")


def stop(proc: subprocess.Popen):
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="folder of a saved Tagger (default: train one)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per mwml serve measurement at concurrency 32")
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    from mwml.data import load as load_data

    folder = args.model
    if not folder:
        from mwml.train import train

        folder = str(Path(tempfile.mkdtemp()) / "tagger")
        train(output=folder)
    holdout = load_data("holdout")
    items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
    result = {"model": folder, "in_process": in_process(folder, items), "http": {}}

    env = {**os.environ, "MODEL_DIR": folder, "MWML_HOME": tempfile.mkdtemp()}
    servers = {
        "naive FastAPI + transformers": ([str(BIN / "uvicorn"), "naive_server:app", "--port", "{port}", "--log-level", "warning"], HERE),
        "mwml serve, uvicorn alone": ([str(BIN / "mwml"), "serve", "--model", folder, "--replicas", "0", "--port", "{port}"], HERE.parent),
        "mwml serve, Ray Serve x1": ([str(BIN / "mwml"), "serve", "--model", folder, "--replicas", "1", "--port", "{port}"], HERE.parent),
    }
    for name, (cmd, cwd) in servers.items():
        port = 8700 + len(result["http"])
        proc = start([c.format(port=port) for c in cmd], port, env, cwd)
        try:
            runs = {}
            for concurrency in (1, 8, 32):
                n = {1: 200, 8: 500}.get(concurrency, args.requests if name.startswith("mwml") else 500)
                runs[str(concurrency)] = asyncio.run(load(f"http://127.0.0.1:{port}/predict", items, n, concurrency, {}))
                print(name, concurrency, runs[str(concurrency)], flush=True)
            result["http"][name] = runs
        finally:
            stop(proc)

    ip = result["in_process"]
    rows = [("in-process Predictor", f"1 item: p50 {ip['one_item']['p50_ms']:.1f} / p99 {ip['one_item']['p99_ms']:.1f} ms", "", "",
             f"batch 64: {ip['batch64_items_per_s']:.0f} items/s")]  # fmt: skip
    for name, runs in result["http"].items():
        rows.append(
            (name, *(f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms, {r['items_per_s']:.0f}/s, {r['errors']} err" for r in runs.values()), "")
        )
    header = ("server", "concurrency 1: p50 / p99, throughput", "concurrency 8", "concurrency 32", "")
    write_result("serve", {"machine": machine("torch", "transformers", "fastapi", "uvicorn", "ray"), **result}, rows, header)


if __name__ == "__main__":
    main()
