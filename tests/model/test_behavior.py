"""Behavioural model tests: `mwml test-model --model REF` (or `pytest tests/model --model REF`).

They load a trained model and fail when a CheckList pass rate falls below its minimum
(`mwml.behavioral.PASS_RATE_MINIMUMS`, justified in nbs/07_behavioral.ipynb). Without `--model`
they are skipped: the unit and system tests never need a trained model."""

import pytest

from mwml.behavioral import PASS_RATE_MINIMUMS, run_suite
from mwml.data import load
from mwml.registry import load_model


@pytest.fixture(scope="module")
def suite(request):
    "The behavioural suite's outcome for the model named by `--model`, on holdout rows."
    ref = request.config.getoption("--model")
    if not ref:
        pytest.skip("pass --model (a folder, run id, alias or version) to run the model tests")
    model, _ = load_model(ref)
    return run_suite(model, load("holdout"))


@pytest.mark.parametrize("kind", sorted(PASS_RATE_MINIMUMS))
def test_pass_rate_meets_minimum(suite, kind):
    rate, minimum = suite.pass_rates()[kind], PASS_RATE_MINIMUMS[kind]
    failures = suite.failures(kind, k=5)[["test", "title", "expected", "predicted"]].to_string(index=False)
    assert rate >= minimum, f"{kind} pass rate {rate:.2f} is below the minimum {minimum:.2f}; failing cases:\n{failures}"


@pytest.mark.parametrize("tag", ["computer-vision", "mlops", "natural-language-processing"])
def test_every_topic_passes_most_minimum_functionality_cases(suite, tag):
    "A model that misses half of a topic's textbook cases has not learned that topic, whatever the average says."
    cases = suite.cases[suite.cases.test == f"mft:{tag}"]
    assert cases.passed.mean() >= 0.5, cases[["title", "expected", "predicted"]].to_string(index=False)
