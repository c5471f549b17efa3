"""The headless-browser helper (tests/browser.py): it sees drawn charts, console errors, thrown errors and requests to the internet."""

import numpy as np
import pandas as pd
import pytest
from browser import EVIDENTLY_DETAILS, chromium_path, open_report

CHART = '<svg class="chart" width="120" height="60"><rect x="10" y="10" width="30" height="40" fill="red"/></svg>'


@pytest.fixture(scope="module")
def chromium() -> str:
    "Debian's chromium (installed with apt-get when missing and root; else the test skips)."
    return chromium_path()


def page(folder, name: str, body: str, head: str = "") -> str:
    "Write a small HTML page into `folder`; its path."
    path = folder / name
    path.write_text(f"<!DOCTYPE html><html><head><title>{name}</title>{head}</head><body>{body}</body></html>")
    return path


def test_a_clean_page_drawn_late_by_a_script(tmp_path, chromium):
    # the chart appears 300 ms after load, as a plotting library's would: the helper must wait for it
    draw = f"<div id='plot'></div><script>setTimeout(() => document.getElementById('plot').innerHTML = '{CHART}', 300)</script>"
    check = open_report(page(tmp_path, "clean.html", draw), chart_selector="svg.chart", chromium=chromium)
    assert (check.chart_count, check.title) == (1, "clean.html")
    assert check.ok and check.console_errors == check.page_errors == check.failed_requests == []


def test_console_errors_and_thrown_errors_are_caught(tmp_path, chromium):
    script = "<script>console.error('drift plot failed'); null.x;</script><script>throw new Error('kaboom')</script>"
    check = open_report(page(tmp_path, "errors.html", CHART + script), chart_selector="svg.chart", chromium=chromium)
    assert check.chart_count == 1 and not check.ok
    assert len(check.console_errors) == 1 and "drift plot failed" in check.console_errors[0]
    assert len(check.page_errors) == 2 and "TypeError" in check.page_errors[0] and "kaboom" in check.page_errors[1]


def test_empty_charts_are_not_counted(tmp_path, chromium):
    blank = '<svg class="chart" width="120" height="60"></svg><canvas class="chart" width="50" height="50"></canvas>'
    hidden = f'<div style="display:none">{CHART}</div>'
    plotly = '<div class="js-plotly-plot chart" style="width:100px;height:50px"><div class="plot-container"></div></div>'  # no .main-svg
    paint = "document.getElementById('c').getContext('2d').fillRect(0, 0, 5, 5)"
    painted = f"<canvas id='c' class='chart' width='50' height='50'></canvas><script>{paint}</script>"
    path = page(tmp_path, "blank.html", blank + hidden + plotly + painted)
    check = open_report(path, chart_selector=".chart", min_charts=2, timeout=3, chromium=chromium)
    assert check.chart_count == 1  # only the painted canvas
    assert check.ok


def test_requests_to_the_internet_are_blocked_and_recorded(tmp_path, chromium):
    (tmp_path / "local.js").write_text("document.title = 'local script ran'")
    head = '<script src="local.js"></script><script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script>'
    body = CHART + "<img src='missing.png'><script>fetch('http://127.0.0.1:9/metrics').catch(() => {})</script>"
    check = open_report(page(tmp_path, "online.html", body, head), chart_selector="svg.chart", chromium=chromium)
    assert check.title == "local script ran"  # local files still load
    assert sorted(check.failed_requests) == sorted(  # the image and the fetch fail in whichever order the browser gets to them
        ["https://cdn.plot.ly/plotly-2.35.2.min.js", (tmp_path / "missing.png").as_uri(), "http://127.0.0.1:9/metrics"]
    )
    assert not check.ok and any("ERR_BLOCKED_BY_CLIENT" in e for e in check.console_errors)


@pytest.fixture(scope="module")
def evidently_html(tmp_path_factory):
    "A tiny Evidently 0.7 data-drift report (two numeric columns, one shifted) saved as HTML."
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"length": rng.normal(100, 20, 200), "words": rng.normal(15, 4, 200)})
    current = pd.DataFrame({"length": rng.normal(160, 20, 200), "words": rng.normal(15, 4, 200)})
    definition = DataDefinition(numerical_columns=["length", "words"])
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition), Dataset.from_pandas(reference, data_definition=definition)
    )
    path = tmp_path_factory.mktemp("evidently") / "drift.html"
    snapshot.save_html(str(path))
    return path


def test_an_evidently_report_draws_its_charts_offline(evidently_html, chromium):
    table = open_report(evidently_html, chromium=chromium)
    assert table.ok, table
    assert table.chart_count == 4  # a reference and a current histogram (<canvas>) per column
    details = open_report(evidently_html, expand=EVIDENTLY_DETAILS, chromium=chromium)
    assert details.ok, details
    assert details.chart_count == 6  # opening each row draws its plotly drift plot
