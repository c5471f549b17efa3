"""The pieces of benchmarks/ whose mistakes would silently corrupt a published figure: the batch-size histogram
serve.py reads from `/metrics`, and where the installed stack differs from the pins."""

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402
import serve  # noqa: E402


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
