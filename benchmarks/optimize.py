"""Optimisation benchmark for `mwml.optimize`: every variant of the tagger (parent torch fp32, ONNX Runtime fp32, int8,
a distilled student, a pruned model, and each of those two in int8) built, registered, gated and measured by
`mwml.optimize.optimize` in one run on one machine with threads pinned: model MB, items/s (median, min, max over
`--repeats` timed passes after a warm-up pass) and p50/p99 latency per call at batch 1 and 16 on holdout.csv, holdout F1
with its 95% interval, the `mlops` F1 and the lowest behavioural pass rate. Beside the table, measured here: QOperator
against QDQ int8 of the fused parent graph; each variant's peak memory (a fresh process loads the bundle and predicts
holdout at batch 16); the physical limit (FLOP per text from the architecture, FLOP/s reached at batch 16 by torch fp32
and ONNX Runtime fp32 against the CPU's fp32 peak); the CPU's VNNI/AMX flags. Prints a Markdown table and the issue's
goals; writes benchmarks/results/optimize.json.

    .venv/bin/python benchmarks/optimize.py                         # trains the parent first: TrainConfig defaults (~5 min)
    .venv/bin/python benchmarks/optimize.py --keep /tmp/variants    # ... and keeps every variant's bundle folder there
    .venv/bin/python benchmarks/optimize.py --model champion        # optimise the champion of MWML_HOME's registry
    .venv/bin/python benchmarks/optimize.py --backbone tiny --sample-size 200 --epochs 1 --distill-epochs 1 \\
        --recover-epochs 1 --layers 1 --repeats 1 --output /tmp/optimize.json    # a smoke run in a few minutes

Without `--model` the parent is trained with `mwml.train.train` into a throw-away MWML_HOME (its own MLflow store and
registry) and registered there as champion, so the variants are gated against it as `mwml optimize --model champion`
gates them. With `--model`, the variants are registered in MWML_HOME's registry like any `mwml optimize` run.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import ROOT, Benchmark, holdout_scores, interval, weights_sha256

MEMORY_SCRIPT = """
import json, resource, sys
import torch
torch.set_num_threads(int(sys.argv[2]))
from mwml.data import load
from mwml.models import Tagger
def hwm(): return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
holdout = load("holdout")
before = hwm()
tagger = Tagger.load(sys.argv[1])
tagger.predict(holdout.title, holdout.description, 16)
print(json.dumps({"before_model_kib": before, "peak_kib": hwm(), "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def reached(tagger, holdout, batch_size: int, items_per_s: float, peak: float) -> dict:
    "FLOP per text (mean over the padded length-sorted batches), FLOP/s at `items_per_s` and its fraction of `peak`."
    from mwml.optimize import batch_flops

    per_text = batch_flops(tagger, holdout, batch_size) / len(holdout)
    return {"items_per_s": items_per_s, "flop_per_text": per_text, "flop_per_s": per_text * items_per_s,
            "fraction_of_peak": per_text * items_per_s / peak}  # fmt: skip


def train_parent(args) -> tuple[str, dict]:
    "Train the parent into the throw-away MWML_HOME, register it as champion there; return ('champion', how it was made)."
    from mwml.registry import register
    from mwml.train import TrainConfig, train

    overrides = {"backbone": args.backbone, "sample_size": args.sample_size or None}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = TrainConfig(**overrides)
    start = time.perf_counter()
    result = train(config)
    version = register(result.run_id, alias="champion").version
    return "champion", {"how": "trained by this script with mwml.train.train, registered as champion of a throw-away registry",
                        "config": asdict(config), "run_id": result.run_id, "version": str(version),
                        "train_seconds": time.perf_counter() - start}  # fmt: skip


def int8_formats(parent, parent_run: str, holdout, batch_sizes, repeats: int) -> dict:
    "QOperator against QDQ dynamic int8 of the fused parent graph: MB, speed per batch size, holdout F1, parity with torch."
    import mlflow

    from mwml.data import VALIDATION_ARTIFACT, load
    from mwml.optimize import (
        QUANT_FORMATS,
        calibration_batches,
        export_onnx,
        fuse_graph,
        logit_parity,
        measure_speed,
        model_megabytes,
        onnx_tagger,
        quantize_int8,
    )

    fused, fusions = fuse_graph(export_onnx(parent), parent.model.encoder.config.to_dict())
    with tempfile.TemporaryDirectory() as d:  # QDQ calibrates on the parent's validation split, as optimize() does
        calibration = calibration_batches(
            parent, load(mlflow.artifacts.download_artifacts(f"runs:/{parent_run}/{VALIDATION_ARTIFACT}", dst_path=d))
        )
    out = {"fusions": fusions}
    for form in QUANT_FORMATS:
        start = time.perf_counter()
        graph = quantize_int8(fused, form, calibration if form == "qdq" else None)
        model = onnx_tagger(parent, graph, {"variant": f"int8-{form}", "method": "int8", "format": form})
        out[form] = {"build_seconds": time.perf_counter() - start, "mb": model_megabytes(model),
                     "speed": {f"b{b}": measure_speed(model, holdout, b, repeats) for b in batch_sizes},
                     "holdout": holdout_scores(model, holdout), "parity_vs_parent": logit_parity(parent, model, holdout)}  # fmt: skip
    return out


def bundle(run_id: str, folder: Path) -> Path:
    "Download run `run_id`'s Tagger bundle into `folder` (replacing what is there)."
    from mwml.registry import resolve_model

    with tempfile.TemporaryDirectory() as d:
        source, _ = resolve_model(run_id, d)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(source), folder)
    return folder


def peak_memory(folder: Path, threads: int) -> dict:
    """Peak RSS (MiB) of a fresh process that loads the bundle in `folder` and predicts holdout at batch 16, and before the model.

    The peak is /proc/self/status VmHWM, the new process's own high-water mark: Linux carries the parent's high-water mark
    into a child's ru_maxrss across fork and exec, so ru_maxrss (kept as `ru_maxrss_mib`) reads at least this script's RSS."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(threads)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    kib = json.loads(proc.stdout.strip().splitlines()[-1])
    peak, before = kib["peak_kib"] / 1024, kib["before_model_kib"] / 1024
    return {
        "peak_mib": peak,
        "before_model_mib": before,
        "model_and_predict_mib": peak - before,
        "ru_maxrss_mib": kib["ru_maxrss_kib"] / 1024,
    }


def folder_mb(folder: Path) -> float:
    "Megabytes of every file in a bundle folder."
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def records(table) -> list[dict]:
    "The optimisation table's rows as JSON-safe dicts (NaN -> None)."
    return json.loads(table.to_json(orient="records"))


def goal(text: str, met, reached: dict) -> dict:
    "One of the issue's goals: what it asks, whether it is met (None: not measured) and the figures."
    return {"goal": text, "met": met, "reached": reached}


def speed_goal(rows: dict, name: str, speedup: float, loss_points: float) -> tuple[bool | None, dict]:
    "(met or None when not measured, figures): variant `name` at least `speedup` x the parent at batch 16, F1 loss at most `loss_points`."
    r = rows.get(name)
    if r is None:
        return None, {"variant": name, "measured": False}
    loss = 100 * (rows["parent"]["f1"] - r["f1"])
    return r["speedup_b16"] >= speedup and loss <= loss_points, {"variant": name, "speedup_b16": r["speedup_b16"], "f1_loss_points": loss}


def goals(rows: dict, flops: dict) -> list[dict]:
    "The issue's four in-process goals against the table's rows (by variant) and the physical-limit figures."
    int8_mb = rows["int8"]["mb"] if "int8" in rows else None
    paths = flops["reached_b16"]
    best = max(paths, key=lambda k: paths[k]["fraction_of_peak"]) if paths else None
    fraction = paths[best]["fraction_of_peak"] if best else None
    return [
        goal("ORT int8 >= 2.5x torch fp32 items/s at batch 16 with <= 0.5 point holdout F1 loss", *speed_goal(rows, "int8", 2.5, 0.5)),
        goal("student + int8 >= 5x torch fp32 items/s at batch 16, <= 1 point holdout F1 loss", *speed_goal(rows, "distill-int8", 5, 1)),
        goal("the int8 model <= 25 MB", None if int8_mb is None else int8_mb <= 25, {"mb": int8_mb}),
        goal("the best fp32 path >= 30% of the CPU's fp32 peak at batch 16", None if best is None else fraction >= 0.30,
             {"path": best, "fraction_of_peak": fraction}),
    ]  # fmt: skip


def table_rows(table) -> list[tuple[str, ...]]:
    "The Markdown table: variant, backend, MB, items/s at batch 1 and 16 (x parent), p99, F1 [interval], mlops F1, gate."
    out = []
    for r in records(table):
        gate = r["gate"] or "(parent)"
        gate = gate if gate in ("passed", "(parent)") else f"refused ({gate.count(';') + 1} reasons)"
        mlops = "" if r["mlops_f1"] is None else f"{r['mlops_f1']:.3f}"
        out.append((r["variant"], r["backend"], f"{r['mb']:.1f}", f"{r['items_per_s_b1']:.1f} ({r['speedup_b1']:.2f}x)",
                    f"{r['items_per_s_b16']:.1f} ({r['speedup_b16']:.2f}x)", f"{r['p99_ms_b1']:.1f} / {r['p99_ms_b16']:.1f}",
                    f"{r['f1']:.3f} [{r['f1_low']:.3f}, {r['f1_high']:.3f}]", mlops, gate))  # fmt: skip
    return out


HEADER = (
    "variant",
    "backend",
    "MB",
    "items/s b1 (x parent)",
    "items/s b16 (x parent)",
    "p99 ms b1 / b16",
    "holdout F1 [95%]",
    "mlops F1",
    "gate",
)


def main():
    from mwml.optimize import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained torch Tagger in MWML_HOME's registry: alias, version or run id (default: train one)")
    parser.add_argument("--backbone", default="minilm", help="backbone of the parent trained without --model (tiny: a smoke run)")
    parser.add_argument("--sample-size", type=int, help="train the parent on a stratified sample of this many rows (default: all)")
    parser.add_argument("--epochs", type=int, help="the parent's epochs after the frozen one (default: TrainConfig's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: onnx, int8, distill, prune")
    parser.add_argument("--layers", default="1,3,5", help="distill: the teacher's layers the student keeps")
    parser.add_argument("--distill-epochs", type=int, help="distill: the student's epochs (default: DistillConfig's)")
    parser.add_argument("--recover-epochs", type=int, help="prune: epochs of distillation after pruning (default: OptimizeConfig's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (ONNX Runtime uses the same)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over holdout per speed measurement, after one warm-up")
    parser.add_argument("--keep", type=Path, help="keep every variant's bundle folder here (DIR/<variant>), e.g. for serve.py")
    parser.add_argument("--output", type=Path, help="the JSON to write (default benchmarks/results/optimize.json)")
    args = parser.parse_args()
    bench = Benchmark("optimize", "torch", "transformers", "onnx", "onnxruntime", "mlflow", "fastai")
    work = Path(tempfile.mkdtemp(prefix="mwml-bench-optimize-"))
    if not args.model:  # a throw-away store and registry: before anything reads the settings
        os.environ["MWML_HOME"] = str(work / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)

    import torch

    torch.set_num_threads(args.threads)
    from mwml.data import load
    from mwml.optimize import DistillConfig, OptimizeConfig, cpu_facts, optimize
    from mwml.registry import load_model

    batch_sizes = (1, 16)
    distill = DistillConfig(layers=tuple(int(i) for i in args.layers.split(",")))
    if args.distill_epochs is not None:
        distill.epochs = args.distill_epochs
    config = OptimizeConfig(methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), distill=distill,
                            batch_sizes=batch_sizes, repeats=args.repeats)  # fmt: skip
    if args.recover_epochs is not None:
        config.recover_epochs = args.recover_epochs
    ref, model_info = (args.model, {"how": f"--model {args.model}"}) if args.model else train_parent(args)
    if not args.model:
        model_info["mwml_home"] = os.environ["MWML_HOME"] if args.keep else "(removed at the end)"
    cpu = cpu_facts(torch.get_num_threads())
    print(f"threads {torch.get_num_threads()}; CPU flags: {cpu['flags']}", flush=True)

    start = time.perf_counter()
    table = optimize(ref, config)
    optimize_seconds = time.perf_counter() - start
    rows = {r["variant"]: r for r in records(table)}
    print(table.drop(columns=["gate"]).round(3).to_string(index=False), flush=True)

    holdout = load("holdout")
    parent, _ = load_model(rows["parent"]["run_id"])
    start = time.perf_counter()
    formats = int8_formats(parent, rows["parent"]["run_id"], holdout, batch_sizes, args.repeats)
    formats["seconds"] = time.perf_counter() - start
    print("int8 formats:", {f: {b: round(s["items_per_s"], 1) for b, s in formats[f]["speed"].items()} for f in ("qoperator", "qdq")})

    folders = args.keep or work / "variants"
    memory = {}
    for name, r in rows.items():
        folder = bundle(r["run_id"], folders / name)
        memory[name] = {"folder": str(folder.resolve()), "folder_mb": folder_mb(folder), "sha256": weights_sha256(folder),
                        **peak_memory(folder, torch.get_num_threads())}  # fmt: skip
        print(f"{name}: peak memory {memory[name].get('peak_mib', float('nan')):.0f} MiB", memory[name].get("error", ""), flush=True)

    peak = cpu["peak_flops"]
    flops = {"formula": "per token: layers * (2*(4*d*d + 2*d*ff) + 4*L*d), L = the batch's padded length (mwml.optimize.flops_per_token)",
             "peak": cpu, "reached_b1": {}, "reached_b16": {}}  # fmt: skip
    for b in batch_sizes:
        for name, label in (("parent", "torch fp32"), ("onnx", "ONNX Runtime fp32")):
            if name in rows:
                flops[f"reached_b{b}"][label] = reached(parent, holdout, b, rows[name][f"items_per_s_b{b}"], peak)
    flops["assumptions"] = [
        f"{cpu['fma_units']} vector FMA units per core (Xeon server cores with AVX-512; many client cores have one): it doubles the peak",
        f"clock from {cpu['clock_from']}: the nominal clock; AVX-512 code often runs below it, so the fraction is a floor",
        f"cores = min(threads, physical cores {cpu['physical_cores']}) = {cpu['cores']}; the FLOP count includes padded tokens "
        "(dense kernels compute them) and leaves out embeddings, LayerNorm, GELU, softmax and the head (under 2%)",
    ]

    result = {"model": model_info, "threads": torch.get_num_threads(), "repeats": args.repeats, "batch_sizes": list(batch_sizes),
              "optimize_config": asdict(config), "optimize_seconds": optimize_seconds, "cpu": cpu, "table": list(rows.values()),
              "int8_formats": formats, "memory": memory, "flops": flops, "goals": goals(rows, flops),
              "variant_folders": {n: m["folder"] for n, m in memory.items()} if args.keep else None,
              "notes": ["speed-ups are against the parent on torch fp32 (the table's first row), same holdout, same threads",
                        "memory: VmHWM (peak RSS) of a fresh `python -c` that imports mwml, reads holdout, loads the bundle and "
                        "predicts holdout at batch 16; before_model_mib is the peak before the model was loaded. Not ru_maxrss: "
                        "on Linux a child's ru_maxrss starts at its parent's high-water mark (kept as ru_maxrss_mib)",
                        "the int8_formats section re-quantises the fused parent graph in both formats and measures them here, "
                        "outside optimize(); the table's int8 rows use OptimizeConfig.int8_format"]}  # fmt: skip
    bench.write(result, table_rows(table), HEADER, args.output)
    for name, r in rows.items():
        if r["gate"] not in ("", "passed", None):
            print(f"- {name}: {r['gate']}")
    print("\nint8 formats of the fused parent graph:")
    for f in ("qoperator", "qdq"):
        x = formats[f]
        speed = ", ".join(f"{b} {s['items_per_s']:.1f}/s (p99 {s['p99_ms']:.1f} ms)" for b, s in x["speed"].items())
        diff = x["parity_vs_parent"]["max_abs_logit_diff"]
        print(f"- {f}: {x['mb']:.1f} MB, {speed}, F1 {interval(x['holdout']['f1'])}, max |dlogit| vs torch {diff:.3f}")
    p = cpu
    factors = f"{p['cores']} cores x {p['mhz']:.0f} MHz x {p['fp32_lanes']} lanes x {p['flop_per_fma']} x {p['fma_units']} FMA units"
    print(f"\nfp32 peak: {factors} = {p['peak_flops'] / 1e9:.1f} GFLOP/s; VNNI {cpu['vnni']}, AMX int8 {cpu['amx_int8']}")
    for label, x in flops["reached_b16"].items():
        gflop, rate = x["flop_per_text"] / 1e9, x["flop_per_s"] / 1e9
        print(f"- {label} at batch 16: {gflop:.3f} GFLOP/text, {rate:.1f} GFLOP/s = {x['fraction_of_peak']:.1%} of peak")
    for name, m in memory.items():
        print(f"- {name}: peak {m.get('peak_mib', float('nan')):.0f} MiB ({m.get('model_and_predict_mib', float('nan')):.0f} over imports)")
    print()
    for g in result["goals"]:
        print(f"- {'met' if g['met'] else 'NOT met' if g['met'] is not None else 'not measured'}: {g['goal']}: {g['reached']}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
