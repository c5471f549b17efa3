"""Replay streams of real answers through mwml's roll-out policies (mwml.rollout): how fast a canary rolls back a bad
candidate and how often it promotes a good one, the false-positive rate of an A/A test under continuous peeking
(fixed-sample z-test against the always-valid mSPRT), how often the SRM check catches a 48/52 split, and the regret of
Thompson sampling against an even split. Writes benchmarks/results/rollout.json.

The models are TF-IDF baselines (mwml.baseline) trained here in seconds: the champion on the training split, and
candidates that are good (another regularisation), worse (trained on a small part of the data), broken (trained on
shuffled tags) or erroring (the champion's answers, one request in ten failed). The requests are the validation and
holdout projects drawn with replacement, so every answer and every label in a stream is a real model's on a real project.

    .venv/bin/python benchmarks/rollout.py
"""

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
from common import Benchmark
from serve import BIN, free_port, start, stop

from mwml.baseline import BaselineConfig, BaselineModel
from mwml.config import get_settings
from mwml.data import load, split
from mwml.rollout import (
    CanaryPlan,
    Ledger,
    Stream,
    bandit_regret,
    ledger_target,
    peeking_false_positives,
    rollout_rows,
    simulate_canary,
    srm_p,
)
from mwml.serve import PredictionLog

RPS, STEPS, INTERVAL_S, CHECK_S = 20.0, (0.05, 0.25, 0.5, 1.0), 60.0, 5.0
LABEL_SHARE, LABEL_DELAY_S = 0.5, 30.0


def train(projects: pd.DataFrame, **config) -> BaselineModel:
    return BaselineModel(BaselineConfig(**config)).fit(projects)


def answers(model: BaselineModel, pool: pd.DataFrame) -> np.ndarray:
    tags, _ = model.predict(pool.title, pool.description)
    return np.array(tags)


def latencies_ms(model: BaselineModel, pool: pd.DataFrame, n: int = 300) -> np.ndarray:
    "The model's real latency on one project at a time (what a canary's p99 gate sees), in ms."
    out = []
    for title, description in zip(pool.title[:n], pool.description[:n]):
        t0 = time.perf_counter()
        model.predict_proba([title], [description])
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def canary_runs(name: str, truth, champion, candidate, failed_rate: float, latency, seeds: int, requests: int) -> dict:
    "The canary over `seeds` streams drawn from the pool: outcomes, and seconds and candidate requests until each."
    plan = CanaryPlan(name, steps=STEPS, interval_s=INTERVAL_S)
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(truth), requests)
        stream = Stream(truth[idx], champion[idx], candidate[idx], rng.random(requests) < failed_rate, rng.choice(latency, requests))
        runs.append(simulate_canary(stream, plan, RPS, LABEL_SHARE, LABEL_DELAY_S, CHECK_S, seed=seed))
    outcomes = pd.Series([r["outcome"] for r in runs]).value_counts().to_dict()
    secs = [r["seconds"] for r in runs]
    reasons = pd.Series([", ".join(r["reasons"]) for r in runs]).value_counts().to_dict()
    summary = {"outcomes": outcomes, "reasons": reasons, "seconds_median": float(np.median(secs)), "seconds_max": float(max(secs)),
               "candidate_requests_median": float(np.median([r["candidate_requests"] for r in runs])), "runs": runs}  # fmt: skip
    print(f"canary, {name}: {outcomes}, {summary['seconds_median']:.0f} s median ({summary['seconds_max']:.0f} max)", flush=True)
    return summary


def srm_rates(experiments: int, n: int, seed: int = 0) -> dict:
    "How often the SRM check (p < 0.001) fires on a 50/50 split that really delivered 48/52, and on one that delivered 50/50."
    rng, shares = np.random.default_rng(seed), {"champion": 0.5, "challenger": 0.5}
    rates = {}
    for name, true_share in (("48/52", 0.52), ("50/50", 0.5)):
        draws = rng.binomial(n, true_share, experiments)
        rates[name] = sum(srm_p({"challenger": int(k), "champion": n - int(k)}, shares) < 0.001 for k in draws) / experiments
    return rates


def mwml(*args, env: dict) -> str:
    r = subprocess.run([str(BIN / "mwml"), *map(str, args)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"mwml {' '.join(map(str, args))} failed: {r.stderr[-2000:]}")
    return r.stdout


def throwaway_env(home: Path) -> dict:
    "This environment with its own MWML_HOME (its own MLflow store, ledger and log), checks every second, no token."
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MWML_API_TOKEN", "RAY_ADDRESS")}
    return env | {"MWML_HOME": str(home), "MWML_ROLLOUT_CHECK_S": "1"}


def registered_models(home: Path) -> tuple[dict, str, str]:
    "A throw-away home: the baseline as version 1 (champion) and 2 (a good candidate), a random tiny tagger as 3 (broken)."
    env = throwaway_env(home)
    run = json.loads(mwml("train", "--model", "baseline", "--json", env=env))["run_id"]
    first = json.loads(mwml("register", run, "--json", env=env))["version"]
    client, name = mlflow.MlflowClient(get_settings(env).tracking_uri), get_settings(env).model_name
    client.set_registered_model_alias(name, "champion", first)
    v1 = client.get_model_version(name, first)
    good = client.create_model_version(name, v1.source, v1.run_id).version
    run = json.loads(mwml("train", "--backbone", "tiny", "--epochs", "1", "--sample-size", "64", "--json", env=env))["run_id"]
    broken = json.loads(mwml("register", run, "--json", env=env))["version"]
    return env, str(good), str(broken)


def paced(base: str, items: list[dict], rps: float, seconds: float, until=None, threads: int = 4) -> list[tuple[float, int]]:
    "Send one-item requests at `rps` (each a new user) for `seconds` or until `until()`: (latency ms, status) of each."
    out, stop_at = [], time.monotonic() + seconds

    def worker(k: int):
        next_at = time.monotonic() + k / rps
        with httpx.Client(timeout=30) as http:
            i = k
            while time.monotonic() < stop_at and not (until and until()):
                time.sleep(max(0.0, next_at - time.monotonic()))
                t0 = time.perf_counter()
                status = http.post(f"{base}/predict", json={"items": [items[i % len(items)]]}, headers={"X-Mwml-User": f"u{i}"}).status_code
                out.append(((time.perf_counter() - t0) * 1000, status))
                next_at, i = next_at + threads / rps, i + threads

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return out


def shadow_cost(base: str, env: dict, items: list[dict], candidate: str, repeats: int) -> dict:
    "The primary's p99 at RPS without a roll-out and with every request shadowed to `candidate` (`repeats` runs of 30 s each)."
    result = {"p99_ms": {"no roll-out": [], "shadow 100%": []}, "shadow_copies": []}
    log = PredictionLog(get_settings(env).home / "predictions.db")
    for _ in range(repeats):
        result["p99_ms"]["no roll-out"].append(float(np.percentile([ms for ms, _ in paced(base, items, RPS, 30)], 99)))
        shadowed = json.loads(mwml("rollout", "start", "--candidate", candidate, "--policy", "shadow", "--json", env=env))["id"]
        time.sleep(1.5)
        result["p99_ms"]["shadow 100%"].append(float(np.percentile([ms for ms, _ in paced(base, items, RPS, 30)], 99)))
        time.sleep(5)  # the last copies are answered after their requests
        mwml("rollout", "abort", env=env)
        time.sleep(1.5)
        rows = rollout_rows(log, shadowed)
        copies = rows[rows.shadow_of.notna()]
        result["shadow_copies"].append({"served": int(rows.shadow_of.isna().sum()), "copies": len(copies),
                                        "failed": int(copies.error.notna().sum())})  # fmt: skip
        print(f"shadow copies: {result['shadow_copies'][-1]}; p99 at {RPS:.0f} requests/s: {result['p99_ms']}", flush=True)
    p99 = {k: float(np.median(v)) for k, v in result["p99_ms"].items()}
    return result | {"shadow_p99_ratio": p99["shadow 100%"] / p99["no roll-out"]}


def live(items: list[dict], repeats: int, work: Path) -> dict:
    "In a real `mwml serve` (uvicorn): seconds until a canary of a broken candidate rolls back at 20 requests/s, and shadowing's p99 cost."
    env, good, broken = registered_models(work / "home")
    ledger = Ledger(ledger_target(get_settings(env)))
    port = free_port()
    proc, _ = start([str(BIN / "mwml"), "serve", "--port", str(port)], port, env, Path.cwd(), work / "serve.log")
    base, result = f"http://127.0.0.1:{port}", {"rollbacks": []}
    try:
        paced(base, items, RPS, 10)  # warm-up
        for _ in range(repeats):
            started = json.loads(mwml("rollout", "start", "--candidate", broken, "--json", env=env))["id"]
            time.sleep(1.5)  # the router reads the ledger every second
            t0 = time.monotonic()
            sent = paced(base, items, RPS, 120, until=lambda rid=started: ledger.get(rid)["state"] != "running")
            row = ledger.get(started)
            result["rollbacks"].append({"seconds": row["ended"] - row["started"] - 1.5, "traffic_seconds": time.monotonic() - t0,
                                        "requests": len(sent), "errors": sum(s != 200 for _, s in sent), "state": row["state"],
                                        "reason": row["reason"]})  # fmt: skip
            print(f"canary of a broken candidate: {row['state']} after {result['rollbacks'][-1]['seconds']:.1f} s", flush=True)
        result |= shadow_cost(base, env, items, good, repeats)
    finally:
        stop(proc)
    return result


def live_minilm(items: list[dict], repeats: int, work: Path) -> dict:
    "Shadowing's p99 cost with the product's model on both sides: MiniLM taggers (one epoch on 64 projects: the cost, not the F1)."
    env = throwaway_env(work / "home-minilm")
    run = json.loads(mwml("train", "--backbone", "minilm", "--epochs", "1", "--sample-size", "64", "--json", env=env))["run_id"]
    champion = json.loads(mwml("register", run, "--json", env=env))["version"]
    client, name = mlflow.MlflowClient(get_settings(env).tracking_uri), get_settings(env).model_name
    client.set_registered_model_alias(name, "champion", champion)
    v1 = client.get_model_version(name, champion)
    candidate = str(client.create_model_version(name, v1.source, v1.run_id).version)
    port = free_port()
    proc, _ = start([str(BIN / "mwml"), "serve", "--port", str(port)], port, env, Path.cwd(), work / "serve-minilm.log")
    try:
        paced(f"http://127.0.0.1:{port}", items, RPS, 10)  # warm-up
        return shadow_cost(f"http://127.0.0.1:{port}", env, items, candidate, repeats)
    finally:
        stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000, help="A/A experiments and SRM experiments")
    parser.add_argument("--seeds", type=int, default=20, help="canary runs per candidate and bandit runs")
    parser.add_argument("--minutes", type=float, default=10, help="minutes of traffic per canary stream")
    parser.add_argument("--live-repeats", type=int, default=3, help="canaries and shadow runs in a real mwml serve (0: none)")
    args = parser.parse_args()
    bench = Benchmark("rollout", "scikit-learn", "scipy")

    train_split, valid = split(load("dataset"))
    pool = pd.concat([valid, load("holdout")], ignore_index=True)
    truth = pool.tag.to_numpy()
    champion_model = train(train_split)
    shuffled = train_split.assign(tag=np.random.default_rng(0).permutation(train_split.tag.to_numpy()))
    models = {"good (C=0.5)": train(train_split, C=0.5),
              "worse (10% of the training split)": train(train_split.sample(frac=0.1, random_state=0)),
              "broken (shuffled tags)": train(shuffled)}  # fmt: skip
    champion = answers(champion_model, pool)
    latency = latencies_ms(champion_model, pool)
    accuracy = {"champion": float((champion == truth).mean())}
    candidates = {name: answers(m, pool) for name, m in models.items()}
    accuracy |= {name: float((a == truth).mean()) for name, a in candidates.items()}
    disagreement = {name: float((a != champion).mean()) for name, a in candidates.items()}
    print(f"accuracy on the pool: {accuracy}; disagreement with the champion: {disagreement}", flush=True)

    requests = int(args.minutes * 60 * RPS)
    canary = {name: canary_runs(name, truth, champion, a, 0.0, latency, args.seeds, requests) for name, a in candidates.items()}
    canary["erroring (1 request in 10 fails)"] = canary_runs("erroring", truth, champion, champion, 0.1, latency, args.seeds, requests)

    correct = (champion == truth).astype(float)
    t0 = time.perf_counter()
    peeking = peeking_false_positives(args.experiments, per_arm=5000, every=100, population=correct, seed=0)
    print(f"A/A false positives under peeking (every 100 per arm up to 5000): {peeking} ({time.perf_counter() - t0:.0f} s)", flush=True)
    srm = {n: srm_rates(args.experiments, n) for n in (5_000, 10_000, 20_000, 50_000)}
    print(f"SRM check at 10,000 requests: {srm}", flush=True)
    rates = {"champion": accuracy["champion"], "challenger": accuracy["champion"] + 0.02}
    regrets = [bandit_regret(rates, 100_000, every=1000, seed=s) for s in range(args.seeds)]
    bandit = {"rates": rates, "thompson_mean": float(np.mean([r["thompson"] for r in regrets])),
              "thompson_max": float(max(r["thompson"] for r in regrets)), "even_split": regrets[0]["even_split"]}  # fmt: skip
    bandit["ratio"] = bandit["thompson_mean"] / bandit["even_split"]
    print(f"bandit regret at n=100,000: {bandit}", flush=True)

    items = [{"title": t, "description": d} for t, d in zip(pool.title, pool.description)]
    work = Path(tempfile.mkdtemp(prefix="mwml-bench-rollout-"))
    live_result = live(items, args.live_repeats, work) if args.live_repeats else None
    minilm_result = live_minilm(items, args.live_repeats, work) if args.live_repeats else None

    result = {"setup": {"rps": RPS, "steps": STEPS, "interval_s": INTERVAL_S, "check_every_s": CHECK_S, "label_share": LABEL_SHARE,
                        "label_delay_s": LABEL_DELAY_S, "pool_projects": len(pool), "latency_p99_ms": float(np.percentile(latency, 99))},
              "accuracy": accuracy, "disagreement_with_champion": disagreement, "canary": canary, "peeking": peeking,
              "srm": srm, "bandit": bandit, "live": live_result, "live_minilm": minilm_result}  # fmt: skip
    rows = [(f"canary: {name}", ", ".join(f"{k} {v}" for k, v in c["outcomes"].items()),
             f"{c['seconds_median']:.0f} s ({c['seconds_max']:.0f} max)", f"{c['candidate_requests_median']:.0f}")
            for name, c in canary.items()]  # fmt: skip
    rows += [("A/A false positives, peeking: z-test / mSPRT", f"{peeking['z_test']:.3f} / {peeking['msprt']:.3f}", "–", "–"),
             *[(f"SRM at {n:,} requests: 48/52 caught / 50/50 false alarms", f"{r['48/52']:.3f} / {r['50/50']:.3f}", "–", "–")
               for n, r in srm.items()],
             ("bandit regret: Thompson / even split", f"{bandit['thompson_mean']:.0f} / {bandit['even_split']:.0f}", "–", "–")]  # fmt: skip
    if live_result:
        secs = [r["seconds"] for r in live_result["rollbacks"]]
        rows += [("live canary, broken candidate, 20 requests/s (`mwml serve`)", ", ".join(r["state"] for r in live_result["rollbacks"]),
                  f"{np.median(secs):.1f} s ({max(secs):.1f} max)", "–"),
                 ("live shadow (100% copies): p99 with / without", f"{live_result['shadow_p99_ratio']:.2f}×", "–", "–"),
                 ("live shadow, MiniLM both sides: p99 with / without", f"{minilm_result['shadow_p99_ratio']:.2f}×", "–", "–")]  # fmt: skip
    bench.write(result, rows, ("what", "result", "time to decision", "candidate requests"))


if __name__ == "__main__":
    main()
