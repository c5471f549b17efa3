"""The review room through a real `mwml serve` on 127.0.0.1 and a real headless chromium (Debian's, driven by playwright): a
reviewer signs in with their own token and labels items with the keyboard, and the labels land in the prediction log with their
source and reviewer; the page refuses anyone without their own reviewer token (the page's secret is nobody's); user reports are
stored apart, rate-limited and never estimated from; bad answers are refused with nothing written; the export meets the data
contract."""

import json
import sqlite3

import httpx
import pytest
from browser import headless_chromium
from helpers import mwml_env, run_mwml, serve, terminate

from mwml.config import get_settings
from mwml.data import load
from mwml.serve import PredictionLog

API = {"Authorization": "Bearer api-s3cret"}
PAGE_SECRET = "review-page-s3cret"  # MWML_REVIEW_TOKEN: turns the page on and signs sessions; no reviewer's token
TOKENS: dict[str, str] = {}  # each reviewer's own token, from `mwml review add-reviewer` (the `server` fixture fills it)


@pytest.fixture(scope="module")
def server(tmp_path_factory, untrained_tiny):
    "One `mwml serve` (uvicorn alone) of a tiny tagger with both tokens, 40 holdout answers in its log and a review batch queued."
    home = tmp_path_factory.mktemp("review")
    env = mwml_env(home, MWML_API_TOKEN="api-s3cret", MWML_REVIEW_TOKEN=PAGE_SECRET, MWML_REVIEW_REPORTS_PER_MINUTE=3)
    proc, base = serve(env, "--model", untrained_tiny)
    try:
        holdout = load("holdout", get_settings(env)).head(40)
        items = [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]
        for i in range(0, len(items), 10):
            r = httpx.post(f"{base}/predict", json={"items": items[i : i + 10]}, headers=API, timeout=60)
            assert r.status_code == 200, r.text
        r = run_mwml("review", "sample", "--n", "16", "--seed", "0", "--json", env=env)
        assert r.returncode == 0, r.stderr
        for name in ("ann", "bob", "dee", "eve"):
            TOKENS[name] = json.loads(run_mwml("review", "add-reviewer", name, "--json", env=env).stdout)["token"]
        assert json.loads(r.stdout)["parts"] == {"uniform": 8, "stratified": 4, "uncertain": 4}, r.stdout  # an item may be in two
        yield base, env, home / "predictions.db"
    finally:
        stderr = terminate(proc)
    assert "Traceback" not in stderr, stderr


def rows(db, query: str, *args) -> list[tuple]:
    "What the prediction log's database holds (read with sqlite3, apart from the server)."
    with sqlite3.connect(db) as conn:
        return conn.execute(query, args).fetchall()


def reviewer(name: str) -> dict:
    "The headers a script of reviewer `name` sends: their own token and their name."
    return {"Authorization": f"Bearer {TOKENS[name]}", "X-Mwml-Reviewer": name}


def test_a_reviewer_labels_five_items_with_the_keyboard(server):
    base, _, db = server
    outside, problems, answered = [], [], {}
    with headless_chromium() as browser:
        page = browser.new_context().new_page()

        def local_only(route):  # the page may reach its own server and nothing else
            if route.request.url.startswith(base):
                return route.continue_()
            outside.append(route.request.url)
            route.abort("blockedbyclient")

        page.route("**/*", local_only)
        first = page.goto(f"{base}/review")
        assert first.status == 401 and page.locator("#signin").is_visible()  # without the token: the sign-in form, no item
        assert page.locator("#item").count() == 0
        page.fill("input[name=reviewer]", "ann")
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("#error:not(:empty)")  # selectors, not wait_for_function: the page's CSP forbids eval
        assert page.text_content("#error").startswith("wrong reviewer name or token"), page.text_content("#error")
        page.fill("input[name=token]", TOKENS["ann"])
        page.click("button[type=submit]")
        page.wait_for_selector('body[data-item]:not([data-item=""])')
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        assert page.text_content("#who") == "signed in as ann"

        for key in ("Enter", "1", "2", "Enter", "4", "s"):  # five labels, then a skip
            shown = page.evaluate("document.body.dataset.item")
            model_tag, classes = (
                page.text_content("#model"),
                page.eval_on_selector_all("#tags button", "bs => bs.map(b => b.dataset.tag)"),
            )
            # the page shows the model's answer as the log has it: its tag and each tag's probability
            [(tag, probabilities)] = rows(db, "SELECT tag, probabilities FROM predictions WHERE id = ?", shown)
            percents = page.eval_on_selector_all("#tags button", "bs => bs.map(b => parseFloat(b.lastChild.textContent))")
            assert model_tag == tag and all(abs(p - 100 * json.loads(probabilities)[t]) <= 0.5 for p, t in zip(percents, classes))
            answered[shown] = {"Enter": model_tag, "s": None}.get(key) or (classes[int(key) - 1] if key.isdigit() else None)
            page.keyboard.press(key)
            page.wait_for_selector(f'body:not([data-item="{shown}"])')
    assert not outside and not problems, (outside, problems)

    labels = dict(rows(db, "SELECT prediction_id, tag FROM review_labels WHERE reviewer = 'ann'"))
    assert labels == answered and sum(t is not None for t in labels.values()) == 5
    feedback = rows(db, "SELECT prediction_id, tag, source, reviewer FROM feedback")
    assert sorted(feedback) == sorted((i, t, "review", "ann") for i, t in answered.items() if t is not None)


def test_the_page_is_refused_without_the_reviewer_token(server):
    base, _, _ = server
    # the page's secret is nobody's token, and one reviewer's token is not another's: one person cannot be two reviewers
    shared, borrowed = {"Authorization": f"Bearer {PAGE_SECRET}", "X-Mwml-Reviewer": "ann"}, {**reviewer("bob"), "X-Mwml-Reviewer": "ann"}
    for headers in ({}, API, {**API, "X-Mwml-Reviewer": "mallory"}, {"Cookie": "mwml_reviewer=ann.4102444800.forged"}, shared, borrowed):
        page = httpx.get(f"{base}/review", headers=headers)
        assert page.status_code == 401 and "Sign in" in page.text and "Is it right?" not in page.text
        answer = httpx.get(f"{base}/review/next", headers=headers)
        assert answer.status_code == 401 and "reviewer token" in answer.json()["detail"]
    assert httpx.get(f"{base}/review/next", headers=reviewer("bob")).status_code == 200


def test_bad_answers_are_refused_and_nothing_is_written(server):
    base, _, db = server
    item = httpx.get(f"{base}/review/next", headers=reviewer("bob")).json()["item"]

    def written():
        return rows(db, "SELECT count(*) FROM review_labels")[0][0], rows(db, "SELECT count(*) FROM feedback")[0][0]

    before = written()
    not_a_tag = httpx.post(f"{base}/review/label", json={"id": item["id"], "tag": "robotics"}, headers=reviewer("bob"))
    unknown = httpx.post(f"{base}/review/label", json={"id": "no-such-id", "tag": "mlops"}, headers=reviewer("bob"))
    assert (not_a_tag.status_code, unknown.status_code) == (422, 404)
    assert "'robotics' is not a tag: expected one of" in not_a_tag.json()["detail"][0]
    assert unknown.json()["detail"] == "no prediction with id 'no-such-id'"
    assert written() == before
    assert httpx.post(f"{base}/review/label", json={"id": item["id"], "tag": "mlops"}, headers=reviewer("bob")).status_code == 200
    before = written()
    again = httpx.post(f"{base}/review/label", json={"id": item["id"], "tag": "other"}, headers=reviewer("bob"))
    assert again.status_code == 409 and "bob already answered" in again.json()["detail"]
    assert written() == before
    assert rows(db, "SELECT tag FROM review_labels WHERE prediction_id = ? AND reviewer = 'bob'", item["id"]) == [("mlops",)]


def test_user_reports_are_kept_apart_limited_per_client_and_never_estimated(server):
    base, env, db = server
    status = json.loads(run_mwml("review", "status", "--json", env=env).stdout)
    [(reported,)] = rows(db, "SELECT id FROM predictions WHERE id NOT IN (SELECT prediction_id FROM feedback) LIMIT 1")
    answers = [httpx.post(f"{base}/report", json={"id": reported, "tag": "mlops"}, headers={**API, "X-Mwml-User": "u1"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert int(answers[-1].headers["Retry-After"]) > 0 and "at most 3 a minute" in answers[-1].json()["detail"]
    assert httpx.post(f"{base}/report", json={"id": reported}, headers={**API, "X-Mwml-User": "u2"}).status_code == 201  # another user
    bad = [httpx.post(f"{base}/report", json={"id": "no-such-id"}, headers={**API, "X-Mwml-User": "u3"}).status_code,
           httpx.post(f"{base}/report", json={"id": reported, "tag": "robotics"}, headers={**API, "X-Mwml-User": "u3"}).status_code,
           httpx.post(f"{base}/report", json={"id": reported}).status_code]  # fmt: skip
    assert bad == [404, 422, 401]

    pseudonym = PredictionLog(db).pseudonym  # the log keeps who reported as a keyed hash, never the key itself
    assert rows(db, "SELECT client, tag FROM reports ORDER BY time") == [(f"user:{pseudonym('u1')}", "mlops")] * 3 + [
        (f"user:{pseudonym('u2')}", None)
    ]
    assert rows(db, "SELECT count(*) FROM feedback WHERE prediction_id = ?", reported) == [(0,)]  # not a label
    after = json.loads(run_mwml("review", "status", "--json", env=env).stdout)
    assert after["accuracy"] == status["accuracy"] and after["precision"] == status["precision"]
    assert after["reports"] == {"received": 4, "reviewed": 0}
    r = run_mwml("review", "sample", "--n", "0", "--json", env=env)
    assert json.loads(r.stdout)["parts"] == {"reported": 1}, r.stdout  # the next batch queues it for a look, as `reported`


def test_the_export_passes_the_data_contract(server, tmp_path):
    base, env, db = server
    # two reviewers of its own agree on an item: the module's other tests may have run in another process (xdist splits it)
    item = httpx.get(f"{base}/review/next", headers=reviewer("dee")).json()["item"]
    for name in ("dee", "eve"):
        answer = httpx.post(f"{base}/review/label", json={"id": item["id"], "tag": "mlops"}, headers=reviewer(name))
        assert answer.status_code == 200, answer.text
    r = run_mwml("review", "export", "--folder", tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    agreed = rows(db, "SELECT count(*) FROM feedback WHERE source = 'review'")[0][0]
    assert r.stdout.startswith(f"wrote {agreed} reviewed row(s) to "), r.stdout
    path = r.stdout.strip().split(" to ")[-1]
    r = run_mwml("data", "validate", path, env=env)
    assert r.returncode == 0 and f"meets the data contract ({agreed} rows)" in r.stdout, r.stdout + r.stderr
