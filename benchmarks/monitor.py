"""Drift benchmark for `mwml.monitor`: simulated shifts of production data, window by window. For each scenario, how often
each detector fires at its own level and how often the family decision (after the correction) fires, with 95% Wilson
intervals; the false-alarm rate on windows with no shift; the error of the label-free F1 estimate against the realised F1
on fully labelled windows; the time each detector takes per window. Prints a Markdown table; writes
benchmarks/results/monitor.json.

    .venv/bin/python benchmarks/monitor.py --output /tmp/tagger560   # trains the tagger on the sample first (~5 min on 2 cores)
    .venv/bin/python benchmarks/monitor.py --model /tmp/tagger560    # reuse it (a folder or a registry ref trained on the same split)
    .venv/bin/python benchmarks/monitor.py --model /tmp/tagger560 --windows 20 --scenarios no-shift prior+15   # a quick look

Design. The model must not have fitted its reference, or prediction-drift tests compare over-confident outputs on its
own training rows with honest outputs on new rows and alarm with no shift at all: the reference is the model's validation
split, as a registered model's stored reference profile is. Windows must be independent samples too: drawn with
replacement from a pool smaller than the window they repeat rows and the tests fire above their level. So the model
trains on a stratified sample of dataset.csv (`--sample-size 560 --val-size 0.27`: 408 training rows, a reference of
152), and the production pool is every row it never saw: the rest of dataset.csv and holdout.csv (395 rows), from which
windows are drawn without replacement wherever the rows suffice. The model runs once over a bank (the pool,
`--typo-copies` corrupted copies of it per typo rate, the off-domain texts of benchmarks/offdomain.csv); each window is
a subset of the bank's precomputed profile. Evidently takes seconds per window, so it runs on the first
`--evidently-windows` windows of each scenario. The JSON's notes say what each figure means.
"""

import argparse
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from common import Benchmark, weights_sha256
from fastprogress.fastprogress import master_bar, progress_bar
from sklearn.metrics import f1_score

HERE = Path(__file__).resolve().parent
OFF_DOMAIN = HERE / "offdomain.csv"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SCENARIOS = {  # name: (kind, parameter)
    "no-shift": ("none", None),
    "prior+5": ("prior", 0.05),
    "prior+10": ("prior", 0.10),
    "prior+15": ("prior", 0.15),
    "off-domain-50": ("off-domain", 0.5),
    "off-domain-100": ("off-domain", 1.0),
    "typo-5": ("typo", 0.05),
    "typo-15": ("typo", 0.15),
    "concept": ("concept", None),
    "mixed": ("mixed", None),
}
SHIFTS = [name for name, (kind, _) in SCENARIOS.items() if kind not in ("none", "mixed")]
SAMPLE_SIZE, VAL_SIZE = 560, 0.27  # train on 408 rows, keep 152 as the reference: 204 unseen rows of dataset.csv join holdout's 191
SEVERE, MODERATE = ("prior+15", "off-domain-100"), ("prior+10", "off-domain-50")
DESCRIPTIONS = {
    "none": "windows drawn uniformly without replacement from the pool",
    "prior": "one class, chosen at random per window, gains the stated probability mass (in points of share) and the other "
    "classes lose it in proportion to their pool shares; the window's class counts are multinomial with those shares and "
    "rows of each class are drawn from the pool's rows of that true class, without replacement unless the class has too few",
    "off-domain": "that fraction of the window drawn with replacement from 60 hand-written non-ML project descriptions "
    "(cooking, gardening, travel, sports, crafts, music, finance, nature, pets, home; benchmarks/offdomain.csv), the rest "
    "from the pool; the off-domain rows have no true tag, so realised F1 covers only the pool rows",
    "typo": "every letter of title and description, with that probability, is swapped with the next character, dropped or "
    "replaced by a random lowercase letter (one third each); each window row is a pool row in one of the corrupted copies",
    "concept": "inputs unchanged, windows drawn as with no shift, but the true tag of every pool row whose title or "
    "description matches the concept pattern becomes the concept tag",
    "mixed": "each window first draws one of the shifted scenarios uniformly, then a window of it",
}


def wilson(k: int, n: int, z: float = 1.96) -> dict:
    "`{value, low, high, k, n}`: the share k/n with its Wilson score interval."
    if n == 0:
        return {"value": None, "low": None, "high": None, "k": 0, "n": 0}
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "k": int(k), "n": int(n)}


def mean_interval(values, seed: int = 0, n_boot: int = 2000) -> dict:
    "`{value, low, high, n}`: the mean of `values` with a 95% percentile-bootstrap interval."
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    means = np.random.default_rng(seed).choice(values, (n_boot, len(values))).mean(1)
    return {
        "value": float(values.mean()),
        "low": float(np.quantile(means, 0.025)),
        "high": float(np.quantile(means, 0.975)),
        "n": len(values),
    }


def corrupt(text: str, rate: float, rng: np.random.Generator) -> str:
    "`text` with each letter, at probability `rate`, swapped with the next character, dropped or replaced by a random letter."
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            op = rng.integers(3)
            if op == 0 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 2
                continue
            if op == 2:
                out.append(LETTERS[rng.integers(len(LETTERS))])
        else:
            out.append(c)
        i += 1
    return "".join(out)


def shifted_shares(base: np.ndarray, target: int, points: float) -> np.ndarray:
    "Class shares with `points` of probability mass moved to class `target` from the others, in proportion to their shares."
    if not 0 <= base[target] + points <= 1:
        raise ValueError(f"cannot move {points} to a class holding {base[target]:.3f}")
    out = base * (1 - base[target] - points) / (1 - base[target])
    out[target] = base[target] + points
    return out


def build_bank(pool: pd.DataFrame, offdomain: pd.DataFrame, typo_rates, copies: int, seed: int) -> tuple[pd.DataFrame, dict]:
    "(frame of every text the model will see, {part: bank row indices}): the pool, its corrupted copies, the off-domain texts."
    rng = np.random.default_rng(seed)
    pool = pool[["title", "description", "tag"]].reset_index(drop=True)
    frames, parts, start = [pool], {"pool": np.arange(len(pool))}, len(pool)
    for rate in typo_rates:
        idx = []
        for _ in range(copies):
            frames.append(pool.assign(title=[corrupt(t, rate, rng) for t in pool.title],
                                      description=[corrupt(d, rate, rng) for d in pool.description]))  # fmt: skip
            idx.append(np.arange(start, start + len(pool)))
            start += len(pool)
        parts[f"typo:{rate}"] = np.stack(idx)  # (copies, pool rows)
    frames.append(offdomain[["title", "description"]].assign(tag=None))
    parts["off-domain"] = np.arange(start, start + len(offdomain))
    return pd.concat(frames, ignore_index=True), parts


def choose(rng: np.random.Generator, rows: np.ndarray, k: int) -> tuple[np.ndarray, bool]:
    "(k of `rows` at random, whether it had to repeat rows): without replacement when `rows` has k or more, else with."
    return rng.choice(rows, k, replace=k > len(rows)), k > len(rows)


class Simulator:
    "Draws windows of each scenario from precomputed profiles of the bank, without replacement wherever the rows suffice."

    def __init__(self, bank, concept_bank, parts: dict, classes: tuple, window: int):
        self.bank, self.concept_bank, self.parts, self.window = bank, concept_bank, parts, window
        truth = bank.frame.truth.to_numpy()[parts["pool"]]
        self.by_class = [parts["pool"][truth == c] for c in classes]
        self.base = np.array([len(rows) for rows in self.by_class], dtype=float) / len(truth)
        self.classes = classes

    def draw(self, name: str, rng: np.random.Generator) -> tuple:
        "(current profile, what was drawn: whether rows repeat, and for mixed/prior windows which scenario/class) for one window."
        kind, param = SCENARIOS[name]
        n, pool = self.window, self.parts["pool"]
        if kind == "mixed":
            sub = SHIFTS[rng.integers(len(SHIFTS))]
            current, meta = self.draw(sub, rng)
            return current, {**meta, "mixed_from": sub}
        if kind in ("none", "concept"):
            rows, repeated = choose(rng, pool, n)
            return (self.concept_bank if kind == "concept" else self.bank).take(rows), {"repeated": repeated}
        if kind == "prior":
            target = int(rng.integers(len(self.classes)))
            counts = rng.multinomial(n, shifted_shares(self.base, target, param))
            drawn = [choose(rng, self.by_class[c], k) for c, k in enumerate(counts) if k]
            rows = np.concatenate([r for r, _ in drawn])
            return self.bank.take(rng.permutation(rows)), {"target": self.classes[target], "repeated": any(r for _, r in drawn)}
        if kind == "off-domain":
            k = round(n * param)
            (off, _), (rest, repeated) = choose(rng, self.parts["off-domain"], k), choose(rng, pool, n - k)
            return self.bank.take(rng.permutation(np.concatenate([off, rest]))), {"repeated": repeated}
        if kind == "typo":
            copies = self.parts[f"typo:{param}"]
            rows, repeated = choose(rng, np.arange(copies.shape[1]), n)
            return self.bank.take(copies[rng.integers(len(copies), size=n), rows]), {"repeated": repeated}
        raise ValueError(f"unknown scenario kind {kind!r}")


def raw_decisions(report, alpha: float) -> dict:
    "Each check's own decision before the correction: p <= `alpha` where it has a p-value, else the decision of its rule."
    return {c.name: bool(c.p_value <= alpha) if c.p_value is not None else bool(c.fired) for c in report.checks}


def family_without_evidently(monitor, report, rules) -> bool:
    "The window's decision had Evidently not run: the other p-value tests corrected together, or the estimated-F1 rule."
    tests = [c for c in report.checks if c.p_value is not None and not c.name.startswith("evidently:")]
    fired, _ = monitor.correct([c.p_value for c in tests], rules.alpha, rules.correction)
    return any(fired) or any(c.fired for c in report.checks if c.p_value is None and not c.name.startswith("evidently:"))


def run_window(monitor, reference, current, rules, vocabulary) -> dict:
    "One window's record: family decisions, each check's raw decision and p-value, estimated and realised F1, seconds."
    start = time.perf_counter()
    report = monitor.check_window(reference, current, rules, vocabulary=vocabulary)
    seconds = time.perf_counter() - start
    labelled, without = bool(current.frame.truth.notna().all()), family_without_evidently(monitor, report, rules)
    if vocabulary is None and without != bool(report.fired):
        raise RuntimeError(
            "the benchmark's family decision without Evidently disagrees with check_window's: update family_without_evidently"
        )
    return {"fired": bool(report.fired), "fired_without_evidently": without,
            "evidently": vocabulary is not None, "raw": raw_decisions(report, rules.alpha), "raw_05": raw_decisions(report, 0.05),
            "p": {c.name: c.p_value for c in report.checks if c.p_value is not None},
            "estimate": report.estimate["f1"]["value"] if report.estimate else None,
            "estimate_interval": (report.estimate["f1"]["low"], report.estimate["f1"]["high"]) if report.estimate else None,
            "realised": report.realised["f1"]["value"] if report.realised and labelled else None, "seconds": seconds}  # fmt: skip


def rates(records: list[dict], key: str = "raw") -> dict:
    "Each check's raw detection rate (Wilson) over the windows that ran it, and Evidently's columns taken together."
    names = sorted({name for r in records for name in r[key]})
    out = {name: wilson(sum(r[key][name] for r in records if name in r[key]), sum(name in r[key] for r in records)) for name in names}
    evidently = [r for r in records if r["evidently"]]
    if evidently:
        out["evidently (any column)"] = wilson(
            sum(any(v for k, v in r[key].items() if k.startswith("evidently:")) for r in evidently), len(evidently)
        )
    return out  # fmt: skip


def estimate_error(records: list[dict], seed: int) -> dict:
    "The label-free F1 estimate against the realised F1 on fully labelled windows: MAE, bias, interval coverage."
    scored = [r for r in records if r["realised"] is not None and r["estimate"] is not None]
    errors = [r["estimate"] - r["realised"] for r in scored]
    covered = sum(lo <= r["realised"] <= hi for r in scored for lo, hi in [r["estimate_interval"]])
    return {"windows_scored": len(scored), "mae": mean_interval(np.abs(errors), seed), "bias": mean_interval(errors, seed),
            "realised_in_interval": wilson(covered, len(scored)),
            "mean_estimate": float(np.mean([r["estimate"] for r in scored])) if scored else None,
            "mean_realised": float(np.mean([r["realised"] for r in scored])) if scored else None}  # fmt: skip


def summarise(records: list[dict], seed: int) -> dict:
    "Family and per-check detection rates (Wilson intervals), median p-values, the F1 estimate's error and the time per window."
    evidently = [r for r in records if r["evidently"]]
    share = lambda rs, key: wilson(sum(r[key] for r in rs), len(rs))
    names = sorted({name for r in records for name in r["p"]})
    inputs = sorted({k for r in records for k in r["raw"] if k == "embedding_mmd" or k.startswith("evidently:")})
    seconds = lambda rs: float(np.median([r["seconds"] for r in rs])) if rs else None
    return {
        "windows": len(records),
        "windows_with_evidently": len(evidently),
        "windows_repeating_pool_rows": sum(bool(r.get("repeated")) for r in records),
        "family": share(records, "fired_without_evidently"),
        "family_with_evidently": share(evidently, "fired") if evidently else None,
        "family_without_evidently_same_windows": share(evidently, "fired_without_evidently") if evidently else None,
        "checks": rates(records),
        "checks_at_0.05": rates(records, "raw_05"),
        "any_input_check": wilson(
            sum(any(r["raw"].get(k, False) for k in inputs) for r in evidently or records), len(evidently or records)
        ),
        "median_p_value": {name: float(np.median([r["p"][name] for r in records if name in r["p"]])) for name in names},
        "f1_estimate": estimate_error(records, seed),
        "seconds_per_window": {
            "without_evidently": seconds([r for r in records if not r["evidently"]]),
            "with_evidently": seconds(evidently),
        },
    }


def family_where(records: list[dict], key: str, value) -> dict:
    "The family detection rate without Evidently (Wilson) over the windows whose `key` is `value`, e.g. mixed windows of one scenario."
    chosen = [r["fired_without_evidently"] for r in records if r.get(key) == value]
    return wilson(sum(chosen), len(chosen))


SPLIT_FIELDS = ("sample_size", "val_size", "seed")


def load_tagger(args, config):
    "(model, what it is): the `--model` reference loaded (a run's split checked against `config`), or one trained with `config`."
    if args.model:
        import mlflow

        from mwml.registry import load_model

        model, info = load_model(args.model)
        if Path(args.model).is_dir():
            info["sha256"] = weights_sha256(Path(args.model))
            info["split"] = f"assumed: a folder does not record its training split; this run used {config_split(config)}"
            return model, info
        with tempfile.TemporaryDirectory() as d:
            trained = json.loads(Path(mlflow.MlflowClient().download_artifacts(info["run_id"], "config.json", d)).read_text())
        if any(trained.get(k) != getattr(config, k) for k in SPLIT_FIELDS):
            split = {k: trained.get(k) for k in SPLIT_FIELDS}
            raise SystemExit(f"{args.model} was trained with {split}, not {config_split(config)}: give the same --sample-size/--val-size "
                             "(or --config), or its reference would hold rows it was trained on")  # fmt: skip
        return model, {**info, "split": f"checked against the run's config.json: {config_split(config)}"}
    from mwml.train import train

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"  # a throw-away store
    result = train(config, output=args.output)
    info = {"ref": "trained by this script", "run_id": result.run_id, "holdout_f1": result.scores["holdout"]["f1"]}
    if args.output:
        info |= {"folder": str(Path(args.output).resolve()), "sha256": weights_sha256(Path(args.output))}
    return result.model, info


def config_split(config) -> dict:
    "The fields of a TrainConfig that decide which rows the model trained on."
    return {k: getattr(config, k) for k in SPLIT_FIELDS}


def timing(monitor, reference, sim, rules, vocabulary, windows: int, rng) -> dict:
    "Median seconds (and range) per window of each detector of `check_window`, called alone on `windows` no-shift windows."
    share = rules.alpha / monitor.MAX_TESTS  # Evidently's text test level in a window that runs every test
    detectors = {
        "evidently (4 descriptors + text, one report)": lambda cur, r: monitor.input_checks(reference, cur, vocabulary, share),
        "embedding_mmd": lambda cur, r: monitor.embedding_checks(reference, cur, r),
        "predicted_tags_chi2 + confidence_ks + probabilities_ks": lambda cur, r: monitor.prediction_checks(reference, cur),
        "estimated_f1 + realised + calibration_shortfall": lambda cur, r: monitor.performance_checks(reference, cur, r),
    }
    times = {name: [] for name in detectors}
    for _ in progress_bar(range(windows)):
        current, _ = sim.draw("no-shift", rng)
        r = replace(rules, seed=int(rng.integers(2**31)))
        for name, fn in detectors.items():
            start = time.perf_counter()
            fn(current, r)
            times[name].append(time.perf_counter() - start)
    return {
        "windows": windows,
        "rows_per_window": sim.window,
        "permutations": rules.permutations,
        "draws": rules.draws,
        "seconds": {name: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))} for name, v in times.items()},
    }


def goals(results: dict) -> list[dict]:
    "The issue's goals, each with the figure reached and whether it is met (on the point estimate), without and with Evidently."
    out = []
    targets = [("no-shift", "false alarms < 1% of no-shift windows", lambda v: v < 0.01)]
    targets += [(s, f"severe shift {s} detected in one window >= 0.95", lambda v: v >= 0.95) for s in SEVERE]
    targets += [(s, f"moderate shift {s} detected >= 0.9", lambda v: v >= 0.9) for s in MODERATE]
    targets += [("mixed", "mixed-severity average >= 0.7", lambda v: v >= 0.7)]
    for scenario, goal, ok in targets:
        if scenario not in results:
            continue
        for key, how in (("family", "without Evidently, all windows"), ("family_with_evidently", "with Evidently")):
            if (v := results[scenario].get(key)) and v["value"] is not None:
                out.append({"goal": f"{goal} ({how})", "reached": v, "met": bool(ok(v["value"]))})
    for s in ("typo-5", "typo-15"):
        mae = results.get(s, {}).get("f1_estimate", {}).get("mae")
        if mae and mae["value"] is not None:
            out.append({"goal": f"label-free F1 MAE <= 0.02 under covariate shift ({s})", "reached": mae, "met": mae["value"] <= 0.02})
    return out


def fmt(v: dict | None, digits: int = 2) -> str:
    "`0.95 (0.90–0.98)`, or `–` when there is no figure."
    if not v or v.get("value") is None:
        return "–"
    return f"{v['value']:.{digits}f} ({v['low']:.{digits}f}–{v['high']:.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved Tagger folder or a registry reference (default: train one with TrainConfig defaults)")
    parser.add_argument("--output", help="when training, also save the tagger here (reuse it with --model)")
    parser.add_argument("--config", help="JSON file of TrainConfig fields the model was (or is to be) trained with; it fixes the split")
    parser.add_argument(
        "--sample-size", type=int, default=SAMPLE_SIZE, help="TrainConfig.sample_size: rows of dataset.csv it may see; 0: all"
    )
    parser.add_argument(
        "--val-size", type=float, default=VAL_SIZE, help="TrainConfig.val_size: the share of the sample kept as the reference"
    )
    parser.add_argument("--window", type=int, default=200, help="rows per window")
    parser.add_argument("--windows", type=int, default=500, help="windows per scenario (the issue asks for at least 100)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS), metavar="NAME",
                        help=f"scenarios to run (default all: {' '.join(SCENARIOS)})")  # fmt: skip
    parser.add_argument(
        "--evidently-windows", type=int, default=15, help="the first k windows of each scenario also run Evidently (~5 s each)"
    )
    parser.add_argument("--typo-copies", type=int, default=3, help="corrupted copies of the pool per typo rate")
    parser.add_argument(
        "--concept-pattern", default=r"\btransformers?\b|\bbert\b", help="regex (case-insensitive) of the re-labelled subtopic"
    )
    parser.add_argument("--concept-tag", default="other", help="the tag the subtopic's rows get in the concept-drift scenario")
    parser.add_argument("--timing-windows", type=int, default=5, help="no-shift windows on which each detector is timed alone")
    parser.add_argument("--permutations", type=int, help="override MonitorRules.permutations")
    parser.add_argument("--alpha", type=float, help="override MonitorRules.alpha")
    parser.add_argument("--seed", type=int, default=42, help="seeds the bank's corruption and every window draw")
    args = parser.parse_args()
    bench = Benchmark("monitor", "torch", "transformers", "evidently", "scipy", "scikit-learn")

    from mwml import monitor
    from mwml.data import load
    from mwml.registry import profile_of
    from mwml.train import TrainConfig, training_data

    config = replace(TrainConfig.from_file(args.config) if args.config else TrainConfig(), sample_size=args.sample_size or None,
                     val_size=args.val_size)  # fmt: skip
    train_rows, val, holdout = training_data(config)
    dataset = load("dataset")
    unseen = dataset[~dataset.id.isin(set(train_rows.id) | set(val.id))]
    pool_frame = pd.concat([unseen, holdout], ignore_index=True)
    model, model_info = load_tagger(args, config)
    classes = tuple(model.labels.classes)
    if args.concept_tag not in classes:
        parser.error(f"--concept-tag must be one of {classes}")
    rules = replace(
        monitor.MonitorRules(), **{k: v for k, v in (("permutations", args.permutations), ("alpha", args.alpha)) if v is not None}
    )
    typo_rates = sorted({SCENARIOS[s][1] for s in (SHIFTS if "mixed" in args.scenarios else args.scenarios) if SCENARIOS[s][0] == "typo"})
    offdomain = pd.read_csv(OFF_DOMAIN)
    frame, parts = build_bank(pool_frame, offdomain, typo_rates, args.typo_copies, args.seed)

    start = time.perf_counter()
    reference = profile_of(model, val[["title", "description", "tag"]])
    bank = profile_of(model, frame)
    profile_seconds = time.perf_counter() - start
    vocabulary = monitor.model_vocabulary(model)
    text = bank.frame.title + " " + bank.frame.description
    concept_rows = text.str.contains(args.concept_pattern, flags=re.IGNORECASE, regex=True).to_numpy() & np.isin(
        np.arange(len(text)), parts["pool"]
    )
    truth = bank.frame.truth.to_numpy()
    concept_bank = replace(bank, frame=bank.frame.assign(truth=np.where(concept_rows, args.concept_tag, truth)))
    sim = Simulator(bank, concept_bank, parts, classes, args.window)

    seeds = dict(zip([*SCENARIOS, "timing"], np.random.SeedSequence(args.seed).spawn(len(SCENARIOS) + 1)))
    results = {}
    bar = master_bar(args.scenarios)
    for name in bar:
        rng, records = np.random.default_rng(seeds[name]), []
        for w in progress_bar(range(args.windows), parent=bar):
            bar.child.comment = name
            current, meta = sim.draw(name, rng)
            window_rules = replace(rules, seed=int(rng.integers(2**31)))
            records.append(
                {**run_window(monitor, reference, current, window_rules, vocabulary if w < args.evidently_windows else None), **meta}
            )
        results[name] = summarise(records, args.seed)
        if name == "mixed":
            results[name]["family_by_drawn_scenario"] = {s: family_where(records, "mixed_from", s) for s in SHIFTS}
        if SCENARIOS[name][0] == "prior":
            results[name]["family_by_target"] = {c: family_where(records, "target", c) for c in classes}
    times = (
        timing(monitor, reference, sim, rules, vocabulary, args.timing_windows, np.random.default_rng(seeds["timing"]))
        if args.timing_windows
        else None
    )

    pool = parts["pool"]
    pool_f1 = f1_score(truth[pool], bank.frame.pred.to_numpy()[pool], average="weighted")
    repeats = len(pool) < args.window
    design = {
        "training_split": {**config_split(config), "train_rows": len(train_rows), "config": args.config or "TrainConfig() defaults"},
        "reference": f"the validation split: {len(val)} rows of dataset.csv, model F1 "
        f"{f1_score(reference.frame.truth, reference.frame.pred, average='weighted'):.3f}",
        "production_pool": f"{len(pool)} rows the model never saw: {len(unseen)} of dataset.csv outside its training sample and "
        f"holdout.csv's {len(holdout)}; model F1 {pool_f1:.3f}",
        "window": args.window,
        "windows_per_scenario": args.windows,
        "draw": "with replacement (the pool is smaller than a window)" if repeats else "without replacement wherever the rows suffice",
        "distinct_pool_rows_per_no_shift_window": round(len(pool) * (1 - (1 - 1 / len(pool)) ** args.window), 1)
        if repeats
        else args.window,
        "evidently_windows_per_scenario": min(args.evidently_windows, args.windows),
        "pool_class_shares": {c: round(float(s), 4) for c, s in zip(classes, sim.base)},
        "reference_class_shares": {c: round(float((val.tag == c).mean()), 4) for c in classes},
        "typo_rates": typo_rates,
        "typo_copies": args.typo_copies,
        "off_domain_texts": len(offdomain),
        "concept": {
            "pattern": args.concept_pattern,
            "tag": args.concept_tag,
            "pool_rows_matching": int(concept_rows.sum()),
            "pool_rows_changed": int((concept_rows & (truth != args.concept_tag)).sum()),
            "pool_share_changed": round(float((concept_rows & (truth != args.concept_tag)).sum() / len(pool)), 4),
        },
        "scenarios": {
            s: {"kind": SCENARIOS[s][0], "parameter": SCENARIOS[s][1], "how": DESCRIPTIONS[SCENARIOS[s][0]]} for s in args.scenarios
        },
        "seed": args.seed,
    }
    notes = [
        "Reference = the model's validation split, not its training split as the issue first said: a model's outputs on its own "
        "training rows are over-confident, so prediction-drift tests (confidence KS, predicted-tag chi-square) would alarm with no "
        "shift. The validation rows chose the best epoch and fitted the temperature, but the weights never fitted them.",
        "Why the model trains on a sample of dataset.csv: trained on all of it (TrainConfig()), the only rows it never saw besides "
        "its reference are holdout.csv's 191, fewer than a window of 200, so windows must repeat rows. A window drawn with "
        "replacement is a bootstrap sample: its spread around the reference is about twice an independent sample's, and the "
        "tests fire above their level with no shift (measured with that model, pool = holdout: confidence KS at p <= 0.01 fired "
        "in 10.5% of 200 no-shift windows of 200 drawn with replacement, in 0% of windows of 150 drawn without; MMD and "
        "chi-square were not affected). A window drawn without replacement from rows the model never saw is itself an "
        f"independent sample, so the false-alarm rate means what it says. The price: the model trains on {len(train_rows)} rows, "
        "not 611. --sample-size 0 --val-size 0.2 runs the TrainConfig() design for comparison.",
        f"Windows of {args.window} from a pool of {len(pool)} rows overlap heavily. The Wilson and bootstrap intervals treat "
        "windows as independent, so they describe this pool; another pool of production projects would move every figure "
        "together. Rows repeat within a window only where the scenario needs more rows than there are: a class pushed above its "
        "pool count by a prior shift, and the 60 off-domain texts ('windows_repeating_pool_rows' counts windows that repeated pool rows).",
        "'family' is the window's decision as check_window makes it without Evidently (MMD, chi-square, the two KS tests and, on "
        f"labelled windows, the calibration shortfall, {rules.correction}-corrected at alpha {rules.alpha}; or the estimated-F1 rule), "
        "over all windows. "
        f"'family_with_evidently' adds Evidently's five columns to the family; Evidently takes seconds per window, so it runs on the "
        f"first {design['evidently_windows_per_scenario']} windows of each scenario only ('family_without_evidently_same_windows' "
        "is the paired comparison on those windows).",
        f"'checks' are each check's own decision before the correction: p <= alpha ({rules.alpha}); 'checks_at_0.05' at p <= 0.05, "
        "Evidently's own default per column. Evidently's text test (domain classifier, no p-value) decides at its Bonferroni share "
        "of alpha in both; the estimated-F1 rule has no p-value either and decides by its threshold.",
        "The F1 estimate's error is scored on fully labelled windows only: the off-domain scenarios have no true tag for their "
        "off-domain rows and are left out; prior shifts are label shifts (resampling by class); the typo scenarios are the "
        "covariate shifts; in the concept scenario the error is the drift itself.",
    ]
    out = {"model": model_info, "rules": asdict(rules), "design": design, "profile_seconds": profile_seconds,
           "scenarios": results, "timing": times, "goals": goals(results), "notes": notes}  # fmt: skip

    detectors = [k for k in next(iter(results.values()))["checks"] if not k.startswith("evidently:") and k != "estimated_f1"]
    header = ("scenario", "family", "family + Evidently", *detectors, "F1 est. MAE")
    rows = [(name, fmt(r["family"]), fmt(r["family_with_evidently"]), *(fmt(r["checks"].get(k)) for k in detectors),
             fmt(r["f1_estimate"]["mae"], 3)) for name, r in results.items()]  # fmt: skip
    bench.write(out, rows, header)
    for g in out["goals"]:
        print(f"- {'met' if g['met'] else 'NOT met'}: {g['goal']}: {fmt(g['reached'], 3)}")
    if times:
        print("seconds per window, each detector alone: " + ", ".join(f"{k} {v['median']:.2f}" for k, v in times["seconds"].items()))


if __name__ == "__main__":
    main()
