"""The pieces of benchmarks/ whose mistakes would silently corrupt a published figure: the batch-size histogram
serve.py reads from `/metrics`, where the installed stack differs from the pins, and the drift benchmark's shifts and
intervals (the optimisation benchmark's FLOP count and fp32 peak are `mwml.optimize`'s, checked in its notebook)."""

import difflib
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402
import serve  # noqa: E402
from monitor import corrupt, shifted_shares, wilson  # noqa: E402  (benchmarks/monitor.py)


def metrics_page(batches: list[int]) -> str:
    "A real Prometheus page with an `mwml_batch_size` histogram (the buckets `mwml serve` uses) after `batches`."
    registry = CollectorRegistry()
    h = Histogram("mwml_batch_size", "items per forward pass", registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64))
    for b in batches:
        h.observe(b)
    return generate_latest(registry).decode()


def test_a_run_s_histogram_is_the_difference_between_two_readings():
    before = serve.batch_buckets(metrics_page([1, 1, 3]))  # the warm-up's batches
    after = serve.batch_buckets(metrics_page([1, 1, 3, 1, 5, 32, 32]))  # ... then a run's: 1, 5, 32, 32
    got = serve.histogram_between(before, after)
    assert got["batches"] == 4
    assert got["per_bucket"] == {"<=1": 1, "<=2": 0, "<=4": 0, "<=8": 1, "<=16": 0, "<=32": 2, "<=64": 0, "+Inf": 0}


def test_a_server_without_metrics_has_no_histogram():
    assert serve.batch_buckets("<html>not found</html>") == {}
    assert serve.histogram_between({}, {}) is None


def test_stack_vs_pins_names_a_package_outside_its_pin(monkeypatch, tmp_path):
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nmin_python = 3.11\nrequirements = pytest<1 packaging\ndev_requirements =\n")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    differs = common.stack_vs_pins()
    assert len(differs) == 1 and differs[0].startswith("pytest ") and "(pinned <1)" in differs[0]


def test_the_project_pins_hold_here():
    "The JSONs say `stack_vs_pins: []` on the build machine; a drifted venv shows up here first."
    assert common.stack_vs_pins() == []


def test_a_prior_shift_moves_exactly_its_points_to_one_class_from_the_others_in_proportion():
    base = np.array([0.3, 0.1, 0.4, 0.2])
    shifted = shifted_shares(base, 1, 0.15)
    assert shifted[1] == pytest.approx(0.25) and shifted.sum() == pytest.approx(1.0)
    ratios = np.delete(shifted, 1) / np.delete(base, 1)
    assert np.allclose(ratios, ratios[0])
    with pytest.raises(ValueError, match="cannot move 0.95"):
        shifted_shares(base, 1, 0.95)


def test_typos_alter_about_their_rate_of_the_letters():
    words = np.random.default_rng(1)  # random words: a repeated sentence would confuse the matcher
    text = " ".join("".join(words.choice(list("abcdefghijklmnopqrstuvwxyz"), words.integers(3, 9))) for _ in range(300))
    rng = np.random.default_rng(0)
    assert corrupt(text, 0.0, rng) == text
    kept = [difflib.SequenceMatcher(None, text, corrupt(text, rate, rng), autojunk=False).ratio() for rate in (0.05, 0.15)]
    assert 0.95 < kept[0] < 0.99 and 0.85 < kept[1] < 0.95 and kept[1] < kept[0]


def test_the_wilson_interval_of_no_alarm_in_300_windows_reaches_one_percent():
    w = wilson(0, 300)
    assert (w["value"], w["low"]) == (0.0, 0.0) and w["high"] == pytest.approx(1.96**2 / (300 + 1.96**2))
    half = wilson(150, 300)
    assert half["value"] - half["low"] == pytest.approx(half["high"] - half["value"])
