"""Measure how `mwml serve` bends under pressure, in both modes (uvicorn alone, `--replicas 0`, and Ray Serve, `--replicas 1`),
driven only through the CLI, HTTP and signals, one-item requests of holdout texts:

1. capacity: concurrency 32, closed loop: items/s.
2. overload: arrivals at --overload x capacity (open loop) for --burst-s seconds. Each request's outcome, latency and
   `Retry-After`; the server's resident memory every second. Goals: accepted p99 <= 1 s, the rest 503 + Retry-After with a p99
   <= 50 ms, no other outcome, memory flat.
3. recovery: right after the burst, concurrency 32 in one-second windows: seconds until a window reaches 90% of capacity
   (goal <= 5 s).
4. hang-ups: 1,000 clients give up mid-request (the connection closed 0-45 ms after the request); then 200 ordinary requests
   (goal: every one answered).
5. soak (--soak-s, default 600; 0 skips it): 70% of capacity, open loop. Errors (goal 0), resident memory growth from the
   first minute to the last (goal < 5%), p99 of the first minute against the last.
6. SIGTERM with 32 requests in flight: how many were answered, the exit code, seconds to exit (goal: all, 0).
7. kill -9 during a write burst (a fresh server): every id a client got back is in the log afterwards.

Prints a Markdown table; writes benchmarks/results/reliability.json (or `--output`).

    .venv/bin/python benchmarks/reliability.py                   # trains the model first (TrainConfig defaults, ~4 min)
    .venv/bin/python benchmarks/reliability.py --model FOLDER    # a saved Tagger
    .venv/bin/python benchmarks/reliability.py --soak-s 0        # without the ten-minute soak

The load generator runs on the same machine as the server and shares its cores.
"""

import argparse
import asyncio
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
from common import Benchmark
from serve import BIN, free_port, load, model_ref, start, stop, trained_model, tree_rss_mib

CONCURRENCY = 32
TIMEOUT = aiohttp.ClientTimeout(total=120)


def p99(values: list[float]) -> float | None:
    "The 99th percentile, None for no values."
    return float(np.percentile(values, 99)) if values else None


class Sampler:
    "Resident memory of a process tree, once a second, in a background thread, while inside."

    def __init__(self, pid: int):
        self.pid, self.samples, self._stop = pid, [], threading.Event()

    def _run(self):
        start = time.perf_counter()
        while not self._stop.wait(1.0):
            self.samples.append((time.perf_counter() - start, tree_rss_mib(self.pid)))

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def post(session: aiohttp.ClientSession, base: str, item: dict) -> dict:
    "One `/predict`: its outcome (the status, or the exception's name), latency, `Retry-After` and the ids answered."
    start = time.perf_counter()
    try:
        async with session.post(f"{base}/predict", json={"items": [item]}) as r:
            body = await r.json(content_type=None)
            ids = [p["id"] for p in body.get("predictions", [])] if r.status == 200 else []
            outcome, retry_after = r.status, r.headers.get("Retry-After")
    except (TimeoutError, aiohttp.ClientError) as e:
        outcome, retry_after, ids = type(e).__name__, None, []
    return {"outcome": outcome, "ms": (time.perf_counter() - start) * 1000, "retry_after": retry_after, "ids": ids, "at": start}


async def open_loop(base: str, items: list[dict], rate: float, seconds: float) -> list[dict]:
    "Requests arriving at `rate` a second for `seconds`, whatever the answers take (an open loop): every request's `post`."
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=TIMEOUT) as session:
        start, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(post(session, base, items[i % len(items)])))
        return await asyncio.gather(*tasks)


def burst_figures(results: list[dict], rss: list[tuple[float, float]]) -> dict:
    "Accepted and refused requests of an overload, their latencies, anything else, and memory at its start and end."
    accepted = [r["ms"] for r in results if r["outcome"] == 200]
    refused = [r for r in results if r["outcome"] == 503]
    other = [str(r["outcome"]) for r in results if r["outcome"] not in (200, 503)]
    memory = [m for _, m in rss if m is not None]
    return {"requests": len(results), "accepted": len(accepted), "accepted_p99_ms": p99(accepted),
            "refused": len(refused), "refused_p99_ms": p99([r["ms"] for r in refused]),
            "refused_without_retry_after": sum(r["retry_after"] is None for r in refused),
            "other": len(other), "other_kinds": sorted(set(other)),
            "rss_mib": {"first": memory[0] if memory else None, "last": memory[-1] if memory else None,
                        "max": max(memory) if memory else None}}  # fmt: skip


async def recovery(base: str, items: list[dict], capacity: float, seconds: float = 15) -> dict:
    "Concurrency 32 for `seconds` right after a burst: items per one-second window, and the first second at 90% of `capacity`."
    done, start = [], time.perf_counter()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def worker(k: int):
            i = k
            while time.perf_counter() - start < seconds:
                if (await post(session, base, items[i % len(items)]))["outcome"] == 200:
                    done.append(time.perf_counter() - start)
                i += CONCURRENCY

        await asyncio.gather(*[worker(k) for k in range(CONCURRENCY)])
    windows = np.bincount(np.array(done, dtype=int), minlength=int(seconds))[: int(seconds)].tolist()
    back = next((s for s, n in enumerate(windows) if n >= 0.9 * capacity), None)
    return {"items_per_window": windows, "seconds_to_90pct_capacity": back}


async def hang_ups(base: str, items: list[dict], clients: int = 1000, then: int = 200) -> dict:
    "`clients` requests each abandoned 0-45 ms after it is sent (the connection closes), then `then` ordinary ones: their outcomes."
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=TIMEOUT) as session:

        async def give_up(i: int):
            request = asyncio.create_task(post(session, base, items[i % len(items)]))
            await asyncio.sleep(i % 10 * 0.005)
            request.cancel()  # aiohttp closes the connection of a cancelled request

        for start in range(0, clients, 50):
            await asyncio.gather(*[give_up(i) for i in range(start, min(clients, start + 50))])
        answers = await asyncio.gather(*[post(session, base, items[i % len(items)]) for i in range(then)])
    return {"gave_up": clients, "then": then, "answered": sum(a["outcome"] == 200 for a in answers),
            "other_kinds": sorted({str(a["outcome"]) for a in answers if a["outcome"] != 200})}  # fmt: skip


def soak_figures(results: list[dict], rss: list[tuple[float, float]], seconds: float) -> dict:
    "Errors over a soak, resident memory growth from the first minute to the last, and the p99 of each."
    start = min(r["at"] for r in results)
    first = [r["ms"] for r in results if r["outcome"] == 200 and r["at"] - start < 60]
    last = [r["ms"] for r in results if r["outcome"] == 200 and r["at"] - start >= seconds - 60]
    early = [m for t, m in rss if t < 60 and m is not None]
    late = [m for t, m in rss if t >= seconds - 60 and m is not None]
    growth = (np.median(late) / np.median(early) - 1) * 100 if early and late else None
    return {"seconds": seconds, "requests": len(results), "errors": sum(r["outcome"] != 200 for r in results),
            "error_kinds": sorted({str(r["outcome"]) for r in results if r["outcome"] != 200}),
            "rss_growth_pct": growth, "p99_ms_first_minute": p99(first), "p99_ms_last_minute": p99(last)}  # fmt: skip


async def in_flight_then(proc, base: str, items: list[dict], sig: signal.Signals, requests: int = CONCURRENCY) -> list[dict]:
    "Send `requests` at once and, once the server has them (its /metrics says so), send `sig` to its process group: the outcomes."
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=TIMEOUT) as session:
        flying = [asyncio.create_task(post(session, base, items[i % len(items)])) for i in range(requests)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(t.done() for t in flying):
            try:
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                if sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("mwml_requests_in_flight")) > requests / 2:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, sig)  # the whole server, Ray's processes too: as a crash of the machine's service would
        else:
            proc.send_signal(sig)
        return await asyncio.gather(*flying)


def sigterm(proc, base: str, items: list[dict]) -> dict:
    "SIGTERM with 32 requests in flight: how many were answered, the exit code, and the seconds until the process ended."
    answers = asyncio.run(in_flight_then(proc, base, items, signal.SIGTERM))
    start = time.perf_counter()
    code = proc.wait(120)
    return {"in_flight": len(answers), "answered": sum(a["outcome"] == 200 for a in answers), "exit_code": code,
            "seconds_to_exit": time.perf_counter() - start}  # fmt: skip


def killed_mid_write(proc, base: str, items: list[dict], log: Path) -> dict:
    "kill -9 of the whole server while 64 requests are in flight: are all the ids clients got back in the log?"
    from mwml.serve import read_predictions

    answers = asyncio.run(in_flight_then(proc, base, items, signal.SIGKILL, requests=64))
    proc.wait(60)
    acknowledged = {i for a in answers for i in a["ids"]}
    logged = set(read_predictions(log).id)
    return {"acknowledged": len(acknowledged), "missing_from_log": len(acknowledged - logged)}


def measure(mode: str, replicas: int, ref: str, items: list[dict], work: Path, args) -> dict:
    "Every measurement of one mode, on two servers: one for the load (ended by SIGTERM), a fresh one to kill -9."
    env = {**os.environ, "MWML_HOME": str(work / mode), "MWML_SERVE_PREDICTION_LOG": str(work / mode / "predictions.db")}
    env.pop("MWML_API_TOKEN", None)
    Path(env["MWML_HOME"]).mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "mwml"), "serve", "--model", ref, "--replicas", str(replicas), "--port"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, startup = start([*command, str(port)], port, env, work, work / f"{mode}.log")
    out = {"replicas": replicas, "startup_seconds": startup}
    try:
        out["capacity_items_per_s"] = capacity = asyncio.run(load(base, items, 512, CONCURRENCY, 64, 1))["items_per_s"]["median"]
        print(mode, f"capacity {capacity:.0f} items/s", flush=True)
        with Sampler(proc.pid) as rss:
            burst = asyncio.run(open_loop(base, items, args.overload * capacity, args.burst_s))
        out["overload"] = {"rate": args.overload * capacity, "seconds": args.burst_s, **burst_figures(burst, rss.samples)}
        out["recovery"] = asyncio.run(recovery(base, items, capacity))
        print(mode, "overload", out["overload"], "recovery", out["recovery"]["seconds_to_90pct_capacity"], flush=True)
        out["hang_ups"] = asyncio.run(hang_ups(base, items))
        print(mode, "hang-ups", out["hang_ups"], flush=True)
        if args.soak_s:
            with Sampler(proc.pid) as rss:
                soak = asyncio.run(open_loop(base, items, 0.7 * capacity, args.soak_s))
            out["soak"] = {"rate": 0.7 * capacity, **soak_figures(soak, rss.samples, args.soak_s)}
            print(mode, "soak", out["soak"], flush=True)
        out["sigterm"] = sigterm(proc, base, items)
        print(mode, "sigterm", out["sigterm"], flush=True)
    finally:
        stop(proc)
    port = free_port()
    proc, _ = start([*command, str(port)], port, env, work, work / f"{mode}-kill.log")
    try:
        out["kill_9"] = killed_mid_write(proc, f"http://127.0.0.1:{port}", items, Path(env["MWML_SERVE_PREDICTION_LOG"]))
    finally:
        stop(proc)
    print(mode, "kill -9", out["kill_9"], flush=True)
    return out


def row(mode: str, m: dict) -> tuple[str, ...]:
    "A table row for one mode."
    o, soak = m["overload"], m.get("soak")
    return (mode, f"{m['capacity_items_per_s']:.0f}/s",
            f"{o['accepted']} in p99 {o['accepted_p99_ms']:.0f} ms; {o['refused']} 503 in p99 {o['refused_p99_ms'] or 0:.0f} ms; "
            f"{o['other']} other",
            f"{m['recovery']['seconds_to_90pct_capacity']} s", f"{m['hang_ups']['answered']} of {m['hang_ups']['then']}",
            f"{soak['errors']} errors, RSS {soak['rss_growth_pct']:+.1f}%, p99 {soak['p99_ms_first_minute']:.0f} -> "
            f"{soak['p99_ms_last_minute']:.0f} ms" if soak else "not run",
            f"{m['sigterm']['answered']} of {m['sigterm']['in_flight']}, exit {m['sigterm']['exit_code']}",
            f"{m['kill_9']['missing_from_log']} of {m['kill_9']['acknowledged']} missing")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="what `mwml serve --model` takes: a Tagger folder, champion, a version (default: train one)")
    parser.add_argument("--overload", type=float, default=4.0, help="the burst's arrival rate, as a multiple of the measured capacity")
    parser.add_argument("--burst-s", type=float, default=60.0, help="the burst's length, seconds")
    parser.add_argument("--soak-s", type=float, default=600.0, help="the soak's length at 70%% of capacity, seconds; 0 skips it")
    parser.add_argument("--modes", nargs="+", default=["uvicorn", "ray-serve"], choices=["uvicorn", "ray-serve"])
    parser.add_argument("--output", type=Path, help="the JSON to write (default benchmarks/results/reliability.json)")
    args = parser.parse_args()
    bench = Benchmark("reliability", "torch", "fastapi", "uvicorn", "ray")
    work = Path(tempfile.mkdtemp(prefix="mwml-bench-reliability-"))
    from mwml.data import load as load_data

    ref = model_ref(args.model) if args.model else trained_model(work / "tagger")
    holdout = load_data("holdout")
    items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
    result = {"model": ref, "overload": args.overload, "burst_s": args.burst_s, "soak_s": args.soak_s, "modes": {}}
    for mode in args.modes:
        result["modes"][mode] = measure(mode, 0 if mode == "uvicorn" else 1, ref, items, work, args)
    header = ("mode", "capacity", f"{args.overload:g}x capacity for {args.burst_s:g} s", "back to 90%", "after 1,000 hang-ups",
              "soak at 70%", "SIGTERM, 32 in flight", "kill -9 mid-write: ids not logged")  # fmt: skip
    bench.write(result, [row(mode, m) for mode, m in result["modes"].items()], header, args.output)


if __name__ == "__main__":
    main()
