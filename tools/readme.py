"""README.md from nbs/index.ipynb, without Quarto (which cannot be installed on the build machines), with every
measured figure filled in from benchmarks/results/*.json.

`python tools/readme.py` fills the figure blocks of nbs/index.ipynb and writes README.md;
`python tools/readme.py --check` exits 1 when either is stale (a JSON changed, or the notebook did).

A figure block in a markdown cell is `<!-- figures:NAME -->...<!-- /figures -->`: its content is replaced by
what `FIGURES[NAME]` renders from the JSON files, so the prose around it and the figures can never drift
apart. A block whose opening marker ends its line is a block (tables, paragraphs); otherwise it is inline.
Markdown cells are copied as they are; code cells become fenced blocks (nbdev directives dropped); cells
marked `#| hide` are left out, as nbdev's own README export would.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from execnb.nbio import nb2str, read_nb

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"
BLOCK = re.compile(r"<!-- figures:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /figures -->", re.S)


class Results:
    "The JSON files of benchmarks/results, read once each."

    def __init__(self, folder: Path):
        self.folder, self.cache = folder, {}

    def __call__(self, name: str, required: bool = True) -> dict | None:
        if name not in self.cache:
            path = self.folder / f"{name}.json"
            if not path.exists():
                if required:
                    sys.exit(f"readme: {path} is missing: run the benchmark that writes it (see benchmarks/)")
                return None
            self.cache[name] = json.loads(path.read_text())
        return self.cache[name]


# formatting helpers ---------------------------------------------------------------------------------------


def ci(v: dict, digits: int = 3) -> str:
    "`{value, low, high}` as `0.959 (0.929–0.985)`."
    return f"{v['value']:.{digits}f} ({v['low']:.{digits}f}–{v['high']:.{digits}f})"


def duration(seconds: float) -> str:
    "Seconds as `45 s` or `3.2 min`."
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def provenance(d: dict, name: str | None = None) -> str:
    "Where, when, on what and under which load a JSON (`name`.json, default the benchmark's) was measured, and the command."
    m, load = d["machine"], d["load_average"]
    gpu = f", {m['gpu']['name']} (driver {m['gpu']['driver']}, CUDA {m['gpu']['cuda']})" if m.get("gpu") else ""
    sha = (d.get("git_sha") or "unknown")[:7] + (" plus uncommitted changes" if d.get("git_dirty") else "")
    pins = "; stack differs from the pins: " + ", ".join(m["stack_vs_pins"]) if m.get("stack_vs_pins") else ""
    where = f"benchmarks/results/{name or d['benchmark']}.json"
    return (f"<sub>`{where}`: `{d['command']}` on {d['started'][:10]}, {m['cpu']}, {m['cores']} cores, "
            f"{m['ram_gib']:.0f} GiB RAM{gpu}, Python {m['python']}; 1-minute load average {load['start'][0]:.1f} at the start and "
            f"{load['end'][0]:.1f} at the end (the machine is shared: a load above {m['cores']} means the run competed for the CPUs); "
            f"git {sha}{pins}.</sub>")  # fmt: skip


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    "A Markdown table."
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# the figure blocks ----------------------------------------------------------------------------------------


def train_time(r: Results) -> str:
    "How long `make run` takes to fine-tune the tagger on the benchmark machine, and under what load (inline)."
    d = r("train")
    run = d["runs"]["tagger, in-process"]
    load = run.get("load_average", d["load_average"])
    busiest = max(load["start"][0], load["end"][0])
    return f"{duration(run['seconds'])} on the {d['machine']['cores']}-core build machine at a 1-minute load average of up to {busiest:.1f}"


def baseline_time(r: Results) -> str:
    "How long the baseline takes to fit (inline)."
    return f"{r('baseline')['fit_seconds_median']:.1f} s"


def baseline_f1(r: Results) -> str:
    "The baseline's holdout F1 with its interval and fit time (inline)."
    d = r("baseline")
    return f"weighted F1 {ci(d['holdout']['f1'])} on holdout after {d['fit_seconds_median']:.1f} s of training"


def needs(r: Results) -> str:
    "The memory training and serving took on the benchmark machine (inline, a sentence without its full stop)."
    peak = r("train")["runs"]["tagger, in-process"]["peak_rss_mib"] / 1024
    uv = _server(r("serve"), "mwml serve --replicas 0")
    serving = f", and `mwml serve --replicas 0` held {uv['rss_mib_after'] / 1024:.1f} GiB while serving it (`serve.json`)" if uv else ""
    return f"Training the tagger in-process peaked at {peak:.1f} GiB of resident memory (`train.json`){serving}"


def train(r: Results) -> str:
    "The training table (CPU; GPU when train_gpu.json exists) and what it shows."
    d, gpu = r("train"), r("train_gpu", required=False)
    names = {"baseline": "baseline (TF-IDF + linear SVM)", "tagger, in-process": "tagger (MiniLM, fastai), in-process"}
    rows = []
    for source, label in ((d, ""), (gpu, " on GPU")):
        for name, run in (source or {}).get("runs", {}).items():
            h = run["holdout"]
            mlops, macro = ci(h["f1_per_class"]["mlops"]), ci(h["f1_macro"])
            rows.append((names.get(name, name) + label, ci(h["f1"]), mlops, macro, f"{h['ece']:.3f}", duration(run["seconds"])))
    out = [table(("model", "holdout weighted F1 (95% CI)", "mlops F1", "macro F1", "ECE", "wall clock"), rows), "", provenance(d)]
    inproc = d["runs"]["tagger, in-process"]
    name, ray = next(((k, v) for k, v in d["runs"].items() if k.startswith("tagger, Ray Train")), (None, None))
    if ray:
        same = ray["holdout"]["f1"]["low"] <= inproc["holdout"]["f1"]["value"] <= ray["holdout"]["f1"]["high"]
        quality = "The two reach the same quality within the interval." if same else "Their quality differs by more than the interval."
        loads = [f"{k.removeprefix('tagger, ')} {v['load_average']['start'][0]:.1f} → {v['load_average']['end'][0]:.1f}"
                 for k, v in d["runs"].items() if "load_average" in v]  # fmt: skip
        during = f" (1-minute load average during each: {', '.join(loads)})" if loads else ""
        took = f"{name.removeprefix('tagger, ')} took {duration(ray['seconds'])} against {duration(inproc['seconds'])} in-process"
        out += ["", f"{took}{during}. "
                    f"On {d['machine']['cores']} cores the workers share the cores and exchange gradients over gloo every step, so data "
                    "parallelism can only pay off with more cores or GPUs per worker; on a shared machine the difference in wall clock "
                    f"mostly reflects the load while each ran. {quality}"]  # fmt: skip
    out += ["", f"Not measured in this run: {'; '.join(d['notes'])}."] if d.get("notes") else []
    out += ["", f"In-process training peaked at {inproc['peak_rss_mib'] / 1024:.1f} GiB of resident memory."]
    if gpu:
        out += ["", provenance(gpu)]
    else:
        out += ["", "No GPU figures are published until the script measures them: on a machine with a CUDA GPU, "
                    "`.venv/bin/python benchmarks/train.py --device cuda` writes `benchmarks/results/train_gpu.json` (the GPU, "
                    "its driver, the CUDA, torch and Python versions and where that stack differs from the pins in `settings.ini`), "
                    "and `make readme` then adds its rows to this table."]  # fmt: skip
    return "\n".join(out)


def tune(r: Results) -> str:
    "The tuning table and whether the best trial beat the default."
    d = r("tune")
    trials = d["trials"]
    status = [t["status"] for t in trials]
    ran, planned = d["trial_epochs_run"], d["trial_epochs_if_run_to_end"]
    best = {k: v for k, v in d["best_config"].items() if k in d["space"]}
    judged = d["holdout"]
    rows = [("search", f"{len(trials)} trials ({status.count('failed')} failed) in {duration(d['search_seconds'])}, "
                       f"{d['sample_size']} rows, MiniLM, Optuna TPE + ASHA"),
            ("ASHA", f"{ran} trial-epochs run of {planned} had every trial run to the end ({1 - ran / planned:.0%} saved); "
                     f"{status.count('stopped early')} trials stopped early"),
            ("best trial", ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items()))]  # fmt: skip
    for name, j in judged.items():
        h = j["holdout"]
        rows.append(
            (f"holdout, {name}", f"F1 {ci(h['f1'])}, mlops F1 {ci(h['f1_per_class']['mlops'])}, trained in {duration(j['seconds'])}")
        )
    default, found = judged["default config"]["holdout"]["f1"], judged["best trial's config"]["holdout"]["f1"]
    better = "better" if found["value"] > default["value"] else "no better"
    inside = default["low"] <= found["value"] <= default["high"]
    verdict = f"The best trial's config is {better} than the default on holdout, " + (
        "and the difference is inside the interval: the default stays." if inside else "by more than the default's interval."
    )
    return "\n".join([table(("measure", "tuning"), rows), "", provenance(d), "", verdict])


def evaluate(r: Results) -> str:
    "What the promotion gate sees: intervals, ECE, behavioural pass rates, the tagger's errors and slices."
    d = r("evaluate")
    t = d["models"]["tagger"]
    rows = []
    for name, m in d["models"].items():
        rates = " / ".join(f"{m['pass_rates'][k]:.2f}" for k in ("MFT", "INV", "DIR"))
        rows.append((name, ci(m["overall"]["f1"]), ci(m["overall"]["f1_macro"]), ci(m["per_class"]["mlops"]), f"{m['ece']:.3f}", rates,
                     f"{m['evaluate_seconds']:.1f} + {m['suite_seconds']:.1f} s"))  # fmt: skip
    header = ("model", "holdout F1 (95% CI)", "macro F1", "mlops F1", "ECE", "MFT / INV / DIR pass rates", "evaluate + suite")
    q, qb = t["quadrants"], d["models"]["baseline"]["quadrants"]
    wrong, wrong_b = q["near miss"] + q["confidently wrong"], qb["near miss"] + qb["confidently wrong"]
    supports = [s["support"] for s in t["slices"]]
    threshold = f"{t['threshold']:.2f}" if t["threshold"] is not None else "none"
    slices = ", ".join(f"{s['slice']} {s['f1']:.2f}" for s in t["slices"])
    return "\n".join([
        f"The tagger is calibrated on validation data: temperature {t['temperature']:.2f}, `other` threshold {threshold}.", "",
        table(header, rows), "", provenance(d), "",
        f"Of the tagger's {wrong} holdout errors, {q['confidently wrong']} are *confidently wrong* (loss above 1 nat) and "
        f"{q['near miss']} near misses; the baseline's {wrong_b} errors are {qb['confidently wrong']} confidently wrong. "
        f"The slices hold {min(supports)} to {max(supports)} projects each (tagger F1 {slices}): read them as examples, "
        "not estimates."])  # fmt: skip


def command(cmd: str, model: str) -> str:
    "A server's command line as a reader would type it: no port, log level or model folder."
    for noise in (" --port PORT", " --log-level warning", f" --model {model}"):
        cmd = cmd.replace(noise, "")
    return cmd


def _server(d: dict, prefix: str) -> dict | None:
    return next((v for k, v in d["http"].items() if k.startswith(prefix)), None)


def _mean_batch(runs: list[dict]) -> float | None:
    "Median over runs of the mean batch size (requests over forward passes) at one concurrency."
    means = [r["requests"] / r["batch_sizes"]["batches"] for r in runs if r.get("batch_sizes") and r["batch_sizes"]["batches"]]
    return statistics.median(means) if means else None


def _rate(server: dict, c: str) -> float:
    return server["by_concurrency"][c]["items_per_s"]["median"]


def serve(r: Results) -> str:
    "Latency and throughput in-process and over HTTP, per server and concurrency, and what they mean."
    return _serve(r, r("serve"), "serve")


def serve_int8(r: Results) -> str:
    "The same HTTP benchmark with `mwml serve` on the int8 variant and the naive handler on its torch parent, and the issue's goals."
    d = r("serve-int8")
    uv, naive = _server(d, "mwml serve --replicas 0"), _server(d, "naive")
    cs = list(uv["by_concurrency"])
    first, top = cs[0], cs[-1]
    errors = sum(b["errors"] for s in d["http"].values() for b in s["by_concurrency"].values())
    ratio = _rate(uv, top) / _rate(naive, top)
    p99_top, p99_first = uv["by_concurrency"][top]["p99_ms"]["median"], uv["by_concurrency"][first]["p99_ms"]["median"]
    goals = table(("the issue's goal (`mwml serve --replicas 0` on int8)", "reached", "met"),
                  [(f">= 4x the naive handler's items/s at concurrency {top}", f"{ratio:.1f}x", "yes" if ratio >= 4 else "**no**"),
                   (f"p99 < 500 ms at concurrency {top}", f"{p99_top:.0f} ms", "yes" if p99_top < 500 else "**no**"),
                   (f"p99 < 30 ms at concurrency {first}", f"{p99_first:.0f} ms", "yes" if p99_first < 30 else "**no**"),
                   ("zero errors", str(errors), "yes" if errors == 0 else "**no**")])  # fmt: skip
    served = f"`mwml serve` served `{d['model']['ref']}`; the naive handler `{d['naive_model']['ref']}` (the torch parent)."
    return "\n".join([_serve(r, d, "serve-int8"), "", served, "", goals])


def _serve(r: Results, d: dict, name: str) -> str:
    "The serve table, its provenance and what it means, for one serve benchmark JSON."
    ip = d["in_process"]
    cs = list(next(iter(d["http"].values()))["by_concurrency"])
    header = ("server", *(f"concurrency {c}: p50 / p99, items/s (range over runs)" for c in cs))
    one = ip["one_item"]
    rows = [("in-process `Predictor`", f"1 item: {one['p50_ms']:.1f} / {one['p99_ms']:.1f} ms", *[""] * (len(cs) - 2),
             f"batch of 64: {ip['batch64_items_per_s']['median']:.0f} items/s")]  # fmt: skip
    for s in d["http"].values():
        cells = [f"{b['p50_ms']['median']:.0f} / {b['p99_ms']['median']:.0f} ms, {b['items_per_s']['median']:.0f}/s "
                 f"({b['items_per_s']['min']:.0f}–{b['items_per_s']['max']:.0f})" for b in s["by_concurrency"].values()]  # fmt: skip
        rows.append((f"`{command(s['command'], d['model']['ref'])}`", *cells))
    errors = sum(b["errors"] for s in d["http"].values() for b in s["by_concurrency"].values())
    model = d["model"]["how"]
    trained = (r("train", required=False) or {}).get("saved_tagger", {})
    if d["model"].get("sha256") and d["model"]["sha256"] == trained.get("sha256"):
        model = "the in-process tagger `benchmarks/train.py --output` saved (the same sha256 as in `train.json`)"
    elif trained.get("folder") and d["model"]["ref"] == trained["folder"]:
        model = f"the in-process tagger `benchmarks/train.py --output {trained['folder']}` saved"
    first, top = cs[0], cs[-1]
    naive, uv, ray = _server(d, "naive"), _server(d, "mwml serve --replicas 0"), _server(d, "mwml serve --replicas 1")
    facts = []
    if "time_split" in ip:
        s1, s64 = ip["time_split"]["batch_1"], ip["time_split"]["batch_64"]
        facts.append(f"tokenising one text takes {s1['tokenise_ms']:.1f} ms and the model {s1['model_ms']:.0f} ms (a batch of 64: "
                     f"{s64['tokenise_ms']:.0f} ms and {s64['model_ms']:.0f} ms)")  # fmt: skip
    if uv:
        p50 = uv["by_concurrency"][first]["p50_ms"]["median"]
        why = ("HTTP, validation and the prediction log add the difference" if p50 > one["p50_ms"] else
               "measured at different moments of a shared machine's load, so the two cannot be subtracted")  # fmt: skip
        facts.append(f"at concurrency {first} `mwml serve --replicas 0` answers in {p50:.0f} ms (p50) against {one['p50_ms']:.0f} ms "
                     f"for the same model in-process ({why})")  # fmt: skip
    if uv and naive:
        facts.append(f"at concurrency {top} `mwml serve --replicas 0` (micro-batching) reaches {_rate(uv, top) / _rate(naive, top):.1f}x "
                     "the naive handler's throughput")  # fmt: skip
    if uv and ray:
        ratio = _rate(uv, top) / _rate(ray, top)
        facts.append(f"uvicorn alone serves {ratio:.1f}x the items per second of one Ray Serve replica at concurrency {top}"
                     + (", which is why `make serve` uses it" if ratio > 1 else
                        ": in this run Ray Serve was faster, so re-measure before trusting `make serve`'s default"))  # fmt: skip
    batches = [f"{command(s['command'], d['model']['ref'])} {m:.1f}" for s in d["http"].values()
               if (m := _mean_batch(s["by_concurrency"][top]["runs"])) is not None]  # fmt: skip
    if batches:
        facts.append(f"mean items per forward pass at concurrency {top} (read from `/metrics`, `mwml_batch_size`): " + ", ".join(batches))
    starts = [
        f"{name.split(' (')[0]} {s['startup_seconds']:.0f} s and {s['rss_mib_after'] / 1024:.1f} GiB" for name, s in d["http"].items()
    ]
    facts.append("start-up until `/health` answers, and resident memory of the server's processes after the runs: " + "; ".join(starts))
    loads = [f"{name.split(' (')[0]} {s['load_average']['start'][0]:.1f} → {s['load_average']['end'][0]:.1f}"
             for name, s in [*d["http"].items(), ("in-process", ip)] if "load_average" in s]  # fmt: skip
    if loads:
        facts.append("1-minute load average while each was measured: " + "; ".join(loads))
    return "\n".join([table(header, rows), "", provenance(d, name), "",
                      f"Every server got the same load: at each concurrency {d['repeats']} runs of {d['requests_per_run']} one-item "
                      f"requests after an uncounted warm-up ({errors} errors in all); the model was {model}.", "",
                      "On this machine " + "; ".join(facts) + "."])  # fmt: skip


def baseline(r: Results) -> str:
    "The baseline's quality, speed, size and memory."
    d = r("baseline")
    h = d["holdout"]
    rows = [("holdout weighted precision / recall / F1", " / ".join(f"{h[m]['value']:.3f}" for m in ("precision", "recall", "f1"))),
            ("holdout weighted F1, 95% bootstrap interval", ci(h["f1"])),
            ("fit time (median)", f"{d['fit_seconds_median']:.2f} s on {d['n_train']} rows"),
            ("latency, 1 item (p50 / p99)", "{p50:.1f} / {p99:.1f} ms".format(**d["latency_ms_1_item"])),
            ("throughput, whole holdout in one batch", f"{d['throughput_items_per_s_batch']:.0f} items/s"),
            ("model size", f"{d['model_bytes'] / 1e6:.1f} MB")]  # fmt: skip
    width = (h["f1"]["high"] - h["f1"]["low"]) / 2
    note = (f"With {h['n']} holdout rows an interval is about ±{width:.2f} wide: differences between models smaller than that are noise, "
            f"which is why every headline figure comes with one (the one bootstrap of `mwml.evaluate`, {h['n_boot']} resamples, "
            f"seed {h['seed']}).")  # fmt: skip
    return "\n".join([table(("measure", "baseline"), rows), "", provenance(d), "", note])


def _share(v: dict | None) -> str:
    "A Wilson `{value, low, high}` as `0.62 (0.57–0.66)`; a dash where a scenario has no such figure."
    return "–" if not v else f"{v['value']:.2f} ({v['low']:.2f}–{v['high']:.2f})"


def monitor(r: Results) -> str:
    "The drift benchmark: detection per scenario and detector, false alarms, the label-free F1 error, time per detector, goals."
    d = r("monitor")
    design, seconds = d["design"], d["timing"]["seconds"]
    detectors = [k for k in next(iter(d["scenarios"].values()))["checks"] if not k.startswith("evidently:") and k != "estimated_f1"]
    header = ("scenario", "alarm (family)", "alarm (family + Evidently)", *detectors, "label-free F1 error (MAE)")
    rows = [(name, _share(s["family"]), _share(s["family_with_evidently"]), *(_share(s["checks"].get(k)) for k in detectors),
             f"{s['f1_estimate']['mae']['value']:.3f}" if s["f1_estimate"]["windows_scored"] else "–")
            for name, s in d["scenarios"].items()]  # fmt: skip
    goals = table(("the issue's goal", "reached", "met"),
                  [(g["goal"], _share(g["reached"]) if "k" in g["reached"] else ci(g["reached"]), "yes" if g["met"] else "**no**")
                   for g in d["goals"]])  # fmt: skip
    evidently_s = next(v["median"] for k, v in seconds.items() if k.startswith("evidently"))
    note = (f"Windows of {design['window']} predictions, {design['windows_per_scenario']} per scenario "
            f"(Evidently on the first {design['evidently_windows_per_scenario']} of each: it takes {evidently_s:.1f} s a window, "
            f"the embedding MMD with {d['timing']['permutations']} permutations {seconds['embedding_mmd']['median'] * 1000:.0f} ms). "
            f"Reference: {design['reference']}; production: {design['production_pool']}. Rates are the share of windows "
            f"that alarmed, with 95% Wilson intervals; a detector's own rate is at p ≤ alpha before the correction; the family "
            f"shares alpha {d['rules']['alpha']} per window (Holm). The windows overlap (one pool), so the intervals describe this "
            "pool; the JSON's notes say how each scenario is made.")  # fmt: skip
    return "\n".join([table(header, rows), "", note, "", goals, "", provenance(d)])


def optimize(r: Results) -> str:
    "The optimisation table: every variant's size, speed, quality and gate; QOperator against QDQ; FLOP/s against peak; goals."
    d = r("optimize")
    mem = d.get("memory", {})
    header = ("variant", "backend", "MB", "items/s b1 (× parent)", "items/s b16 (× parent)", "p99 ms b1 / b16", "holdout F1 (95%)",
              "mlops F1", "same tag alone / in a batch", "peak memory", "gate")  # fmt: skip
    rows, refusals = [], []
    for t in d["table"]:
        gate = t["gate"] or "(parent)"
        if gate.startswith("refused: "):
            refusals.append(f"- {t['variant']}: {gate.removeprefix('refused: ')}")
            gate = "refused (below)"
        peak = mem.get(t["variant"], {}).get("peak_mib")
        rows.append((t["variant"], t["backend"], f"{t['mb']:.1f}", f"{t['items_per_s_b1']:.0f} ({t['speedup_b1']:.2f}×)",
                     f"{t['items_per_s_b16']:.0f} ({t['speedup_b16']:.2f}×)", f"{t['p99_ms_b1']:.0f} / {t['p99_ms_b16']:.0f}",
                     ci({"value": t["f1"], "low": t["f1_low"], "high": t["f1_high"]}), f"{t['mlops_f1']:.3f}",
                     f"{t['batch_agreement']:.3f}", "–" if peak is None else f"{peak / 1024:.2f} GiB", gate))  # fmt: skip
    forms = d["int8_formats"]
    form_text = "; ".join(f"{name} {m['mb']:.0f} MB, {m['speed']['b1']['items_per_s']:.0f} / {m['speed']['b16']['items_per_s']:.0f} "
                          f"items/s at batch 1 / 16, holdout F1 {ci(m['holdout']['f1'])}"
                          for name, m in forms.items() if isinstance(m, dict) and "speed" in m)  # fmt: skip
    peak = d["flops"]["peak"]
    reached = "; ".join(f"{label} {x['flop_per_s'] / 1e9:.0f} GFLOP/s = {x['fraction_of_peak']:.0%}"
                        for label, x in d["flops"]["reached_b16"].items())  # fmt: skip
    flops = (f"The CPU's float32 peak: {peak['cores']} cores × {peak['mhz'] / 1000:.1f} GHz × {peak['fp32_lanes']} lanes × "
             f"{peak['flop_per_fma']} (FMA) × {peak['fma_units']} FMA units (assumed) = {peak['peak_flops'] / 1e9:.0f} GFLOP/s "
             f"(VNNI {'yes' if peak['vnni'] else 'no'}, AMX int8 {'yes' if peak['amx_int8'] else 'no'}); "
             f"reached at batch 16: {reached}.")  # fmt: skip
    goals = table(("the issue's goal", "reached", "met"),
                  [(g["goal"], ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in g["reached"].items()),
                    "yes" if g["met"] else "not measured" if g["met"] is None else "**no**") for g in d["goals"]])  # fmt: skip
    note = (f"Threads pinned to {d['threads']}; speed is the median of {d['repeats']} timed passes over holdout after a warm-up, "
            "preprocessing and tokenisation included; × is against the parent on torch float32. Peak memory: a fresh process "
            f"that loads the bundle and predicts holdout. int8 of the parent's fused graph in both forms: {form_text}.")  # fmt: skip
    why = ["", "Why the gate refused (the champion is the parent):", *refusals] if refusals else []
    return "\n".join([table(header, rows), *why, "", note, "", flops, "", goals, "", provenance(d)])


SHORT_OF_UVICORN = "**not met** on throughput"


def scale(r: Results) -> str:
    "Ray Serve's batching before and after, serving at concurrency 32 and predict-file on one node and on two."
    d = r("scale")
    serve, handle, predict = d["serve_at_32"], d["batcher_via_handle"], d["predict_file"]
    rows = [(name, f"{v['items_per_s']['median']:.0f} ({v['items_per_s']['min']:.0f}–{v['items_per_s']['max']:.0f})",
             f"{v['p99_ms']['median']:.0f} ms", f"{v['mean_batch']:.1f}" if v["mean_batch"] else "–", str(v["errors"]))
            for name, v in serve.items()]  # fmt: skip
    rows += [(f"one Ray Serve replica through a handle (no HTTP), {name}", f"{v['items_per_s']:.0f}", "–", f"{v['mean_batch']:.1f}", "–")
             for name, v in handle.items()]  # fmt: skip
    runs = [
        (name, f"{v['rows']:,}", f"{v['seconds']:.1f} s", f"{v['rows_per_s']:,.0f}") for name, v in predict.items() if isinstance(v, dict)
    ]
    same = ", ".join(f"{name.split(':')[0]} {'yes' if v else '**no**'}" for name, v in predict.items() if not isinstance(v, dict))
    c = d["cluster"]
    uvicorn, ray = serve["uvicorn (--replicas 0)"], serve["Ray Serve, 2 replicas, 1 node"]
    proxy = serve["Ray Serve, 2 replicas, 1 node, Ray's HTTP proxy"]
    proxy_ratio = proxy["items_per_s"]["median"] / uvicorn["items_per_s"]["median"]
    ratio = ray["items_per_s"]["median"] / uvicorn["items_per_s"]["median"]
    goal = (f"The issue's goal, two Ray Serve replicas on this machine at least matching uvicorn at concurrency 32 with a mean "
            f"batch above 4: {ratio:.2f}× uvicorn's items/s with a mean batch of {ray['mean_batch']:.1f} "
            f"({'met' if ratio >= 1 and ray['mean_batch'] > 4 else SHORT_OF_UVICORN}); "
            f"before the fix one replica made batches of {handle['serve.batch']['mean_batch']:.1f}. Behind Ray's Python HTTP "
            f"proxy instead of HAProxy the same two replicas reach {proxy_ratio:.2f}×: "
            f"on two cores the proxy's parsing and RPC compete with the model for CPU.")  # fmt: skip
    note = (f"One-item requests at concurrency 32, {d['repeats']} runs of {d['requests_per_run']} after a warm-up; mean batch = items "
            f"per forward pass from `/metrics` over the whole run. The two nodes are two `ray start` processes on this one machine, "
            f"1 CPU each ({c['start_seconds']:.0f} s to start both), so they share the cores of the one-node runs: they show what "
            f"a cluster costs and that the work lands on both nodes, not a speed-up. Same predictions in-process, on one node and "
            f"on two: {same}.")  # fmt: skip
    return "\n".join([table(("serving", "items/s (range)", "p99", "mean batch", "errors"), rows), "",
                      table(("`mwml predict-file`", "rows", "wall", "rows/s"), runs), "", goal, "", note, "", provenance(d)])  # fmt: skip


def rollout(r: Results) -> str:
    "Canaries over streams of real answers and in a real server, peeking, SRM, bandit regret and shadowing's cost."
    d = r("rollout")
    rows = [(f"canary: {name}", ", ".join(f"{k} {v}" for k, v in c["outcomes"].items()),
             f"{c['seconds_median']:.0f} s ({c['seconds_max']:.0f} max)", f"{c['candidate_requests_median']:.0f}")
            for name, c in d["canary"].items()]  # fmt: skip
    live = d["live"]
    secs = [x["seconds"] for x in live["rollbacks"]]
    rows.append(("canary of the broken candidate in a real `mwml serve`", ", ".join(x["state"] for x in live["rollbacks"]),
                 f"{sorted(secs)[len(secs) // 2]:.1f} s ({max(secs):.1f} max)", "–"))  # fmt: skip
    peek, srm, bandit = d["peeking"], d["srm"], d["bandit"]
    stats = [("A/A false positives, checking every 100 requests per arm up to 5,000", f"{peek['msprt']:.3f}", f"{peek['z_test']:.3f}"),
             *[(f"a 48/52 split caught by the SRM check at {int(n):,} requests", f"{v['48/52']:.3f}",
                f"false alarms at 50/50: {v['50/50']:.3f}") for n, v in srm.items()],
             ("regret at 100,000 requests, 2-point difference", f"{bandit['thompson_mean']:.0f} (Thompson)",
              f"{bandit['even_split']:.0f} (even split)"),
             ("primary's p99 at 20 requests/s, shadowing 100% vs none", f"{live['shadow_p99_ratio']:.2f}×",
              " / ".join(f"{k} {sorted(v)[len(v) // 2]:.0f} ms" for k, v in live["p99_ms"].items()))]  # fmt: skip
    minilm = d.get("live_minilm")
    if minilm:
        stats.append(("the same with MiniLM taggers as champion and candidate", f"{minilm['shadow_p99_ratio']:.2f}×",
                      " / ".join(f"{k} {sorted(v)[len(v) // 2]:.0f} ms" for k, v in minilm["p99_ms"].items())))  # fmt: skip
    acc = ", ".join(f"{k} {v:.3f}" for k, v in d["accuracy"].items())
    s = d["setup"]
    note = (f"Streams: {s['rps']:.0f} requests/s drawn from {s['pool_projects']} validation and holdout projects, every answer a "
            f"real TF-IDF baseline's (accuracy {acc}); labels for {s['label_share']:.0%} of the requests after "
            f"{s['label_delay_s']:.0f} s; checks every {s['check_every_s']:.0f} s; steps {', '.join(f'{x:.0%}' for x in s['steps'])} "
            f"of {s['interval_s']:.0f} s. In the real server the broken candidate is a random tiny tagger from the registry, "
            f"checked every second.")  # fmt: skip
    copies = {k: sum(x[k] for x in live["shadow_copies"]) for k in ("served", "copies", "failed")}
    note += (
        f" While shadowing, a helper process at the lowest CPU priority answered {copies['copies']} copies of "
        f"{copies['served']} requests served ({copies['failed']} failed)."
    )
    without, shadowed = live["p99_ms"]["no roll-out"], live["p99_ms"]["shadow 100%"]
    goals = (f"Goals: a bad candidate rolled back within 30 s at 20 requests/s in a real `mwml serve`: {max(secs):.1f} s at worst "
             f"({'met' if max(secs) <= 30 else '**not met**'}); A/A false positives ≤ 0.05 under continuous peeking: "
             f"{peek['msprt']:.3f} against {peek['z_test']:.3f} for the naive test ({'met' if peek['msprt'] <= 0.05 else '**not met**'}); "
             f"Thompson sampling's regret ≤ 25% of the even split's: {bandit['ratio']:.0%} "
             f"({'met' if bandit['ratio'] <= 0.25 else '**not met**'}); shadowing adds ≤ 5% to the primary's p99: "
             f"{live['shadow_p99_ratio']:.2f}× the p99 without (runs without ranged {min(without):.0f}–{max(without):.0f} ms, "
             f"with {min(shadowed):.0f}–{max(shadowed):.0f} ms) "
             f"({'met' if live['shadow_p99_ratio'] <= 1.05 else '**not met**'})"
             + (f"; with MiniLM taggers on both sides {minilm['shadow_p99_ratio']:.2f}× "
                f"({'met' if minilm['shadow_p99_ratio'] <= 1.05 else '**not met**'})" if minilm else "") + ".")  # fmt: skip
    return "\n".join([table(("policy run", "outcome", "time to decision", "candidate requests"), rows), "",
                      table(("statistics", "measured", "against"), stats), "", note, "", goals, "", provenance(d)])  # fmt: skip


def footprint(r: Results) -> str:
    "Disk, setup and test times (inline)."
    d = r("footprint")
    runs = d.get("runs", [])
    quick = [run for run in runs if run["tier"] == "quick" and run["returncode"] == 0]
    ci = [run for run in runs if run["tier"] == "ci"]
    timed = d.get("setup_seconds")
    setup = f"`make setup` took {duration(timed)} on a fresh clone" if timed else "`make setup` is not timed yet"
    parts = [setup]
    if quick:
        parts.append(f"`make test` (the quick tier) {duration(max(run['seconds'] for run in quick))}")
    if ci:
        passed, burned = sum(run["returncode"] == 0 for run in ci), sum(run["burner"] for run in ci)
        low, high = min(run["seconds"] for run in ci), max(run["seconds"] for run in ci)
        parts.append(
            f"CI's `.ci/run` (`make test-full`, then the linter) {duration(low)} to {duration(high)}, passing {passed} of "
            f"{len(ci)} runs in a row ({burned} of them beside a process spinning on one core)"
        )
    load = max([d["load_average"]["start"][0], d["load_average"]["end"][0]] + [run["load_average"]["end"][0] for run in runs])
    where = f"`footprint.json`, {d['machine']['cores']} cores, 1-minute load average up to {load:.1f}"
    return f"the virtual environment takes {d['venv_gib']:.1f} GiB on disk; {', '.join(parts)} ({where})"


def flagged_cells(r: Results) -> str:
    "Which notebook cells carry `#| slow` or `#| cuda` today (inline), read from nbs/*.ipynb so the sentence cannot drift."
    found = {"slow": [], "cuda": []}
    for nb in sorted((r.folder.parent.parent / "nbs").glob("*.ipynb")):
        for cell in read_nb(nb).cells:
            flags = set(_directives(cell.source)) if cell.cell_type == "code" else set()
            for flag in found:
                if flag in flags:
                    found[flag].append(nb.stem)
    parts = []
    for flag, names in found.items():
        where = ", ".join(n if names.count(n) == 1 else f"{n} ×{names.count(n)}" for n in dict.fromkeys(names))
        if not names:
            parts.append(f"no cell carries `#| {flag}`")
        else:
            parts.append(f"{len(names)} cell{' carries' if len(names) == 1 else 's carry'} `#| {flag}` ({where})")
    return " and ".join(parts)


FIGURES = {"flagged-cells": flagged_cells, "needs": needs, "train-time": train_time, "baseline-time": baseline_time,
           "baseline-f1": baseline_f1, "train": train, "tune": tune, "evaluate": evaluate, "serve": serve, "baseline": baseline,
           "footprint": footprint, "monitor": monitor, "optimize": optimize, "serve-int8": serve_int8,
           "scale": scale, "rollout": rollout}  # fmt: skip


# the notebook and the README --------------------------------------------------------------------------------


def fill(text: str, results: Results) -> str:
    "`text` with every figure block re-rendered from the JSON files."

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in FIGURES:
            sys.exit(f"readme: unknown figure block {name!r}; known: {', '.join(FIGURES)}")
        body = FIGURES[name](results)
        body = f"\n{body}\n" if m["body"].startswith("\n") else body
        return f"<!-- figures:{name} -->{body}<!-- /figures -->"

    return BLOCK.sub(one, text)


def filled(notebook: Path, results: Results):
    "(the notebook with its figure blocks filled, whether any block changed)."
    nb, changed = read_nb(notebook), False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            new = fill(cell.source, results)
            changed, cell.source = changed or new != cell.source, new
    return nb, changed


def _directives(source: str) -> list[str]:
    return [line[3:].strip() for line in source.splitlines() if line.startswith("#|")]


def render(nb) -> str:
    "The README text for notebook `nb`."
    parts = []
    for cell in nb.cells:
        directives = _directives(cell.source)
        if any(d.startswith(("hide", "default_exp")) for d in directives):
            continue
        if cell.cell_type == "markdown":
            parts.append(cell.source.strip())
        elif cell.cell_type == "code":
            code = "\n".join(line for line in cell.source.splitlines() if not line.startswith("#|"))
            parts.append(f"```python\n{code.strip()}\n```")
            texts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
            text = "".join("".join(t) if isinstance(t, list) else t for t in texts)
            if text.strip():
                parts.append("```\n" + text.rstrip() + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if nbs/index.ipynb's figures or README.md are not up to date")
    parser.add_argument("--root", type=Path, default=ROOT, help="project folder")
    args = parser.parse_args()
    notebook, readme = args.root / "nbs" / "index.ipynb", args.root / "README.md"
    nb, changed = filled(notebook, Results(args.root / "benchmarks" / "results"))
    text = render(nb)
    if args.check:
        stale = (["nbs/index.ipynb (its figure blocks)"] if changed else []) + (
            [] if readme.exists() and readme.read_text() == text else ["README.md"]
        )
        for what in stale:
            print(f"readme: {what} is not what nbs/index.ipynb and benchmarks/results/*.json render to: run `make readme`", file=sys.stderr)
        return 1 if stale else 0
    if changed:
        notebook.write_text(nb2str(nb))
    readme.write_text(text)
    print(f"wrote {notebook} (figure blocks) and {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
