"""Roll-outs through a real `mwml serve` on 127.0.0.1 with models from a real MLflow registry: a shadow candidate's answers
are logged and never returned (uvicorn and Ray Serve), a canary with a broken candidate rolls back on its own under
20 requests/s, users keep their arm across a server restart, the ledger replays to the same decisions, a roll-out
promoted through the registry's gate makes the server serve the new champion, and on labelled feedback an A/B test rolls
a worse candidate back while a bandit moves the traffic to the better arm. Shadow helpers die with their server. On Ray
Serve a candidate runs as an application of its own, deployed when its roll-out starts and deleted when it ends."""

import contextlib
import json
import threading
import time

import httpx
import mlflow
import pandas as pd
import psutil
import pytest
import sqlalchemy as sa
from helpers import mwml_env, register, run_mwml, serve, terminate, train, wait_for

from mwml.config import get_settings
from mwml.data import load
from mwml.predict import Predictor
from mwml.rollout import CANDIDATE_APP_PREFIX, Ledger, current_traffic, in_test, ledger_target, replay, replay_canary
from mwml.serve import read_predictions

pytestmark = pytest.mark.full  # the whole module is a long proof: `make test-full`

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def registered(tmp_path_factory, good_files):
    "One MWML_HOME: the baseline as version 1 (champion) and again as 2 (a good candidate); a random tiny tagger as 3 (broken)."
    env = mwml_env(tmp_path_factory.mktemp("rollout") / "home", good_files, MWML_API_TOKEN="s3cret", MWML_ROLLOUT_CHECK_S="1")
    registry = mlflow.MlflowClient(get_settings(env).tracking_uri)
    name = get_settings(env).model_name
    first = registry.get_model_version(name, register(env, train(env, "--model", "baseline"), "champion"))
    good = registry.create_model_version(name, first.source, first.run_id)
    broken = register(env, train(env, "--backbone", "tiny", "--epochs", "1", "--sample-size", "64"))
    return env, str(first.version), str(good.version), broken


@pytest.fixture(autouse=True)
def no_rollout_left(registered):
    "A test that failed mid-roll-out aborts it: the next test (and a shared server) can start one of its own."
    yield
    env = registered[0]
    if Ledger(ledger_target(get_settings(env))).running() is not None:
        run_mwml("rollout", "abort", env=env)


def champion_back(env: dict, version: str):
    "Make `version` the champion again (a test may have promoted another)."
    mlflow.MlflowClient(get_settings(env).tracking_uri).set_registered_model_alias(get_settings(env).model_name, "champion", version)


def wait_for_rollout(base: str, running: bool = True, replicas: int = 0):
    "Block until the router of every copy of the API (`replicas` Ray Serve replicas; 0: uvicorn's one) has seen the roll-out start or end."
    what = f"every copy's router saw the roll-out {'start' if running else 'end'}"  # on Ray Serve: once its candidates are deployed
    seen = set()  # the replicas that did: until a replica's router has, its requests take no part in the roll-out

    def every_copy() -> bool:
        r = httpx.get(f"{base}/model", headers=TOKEN, timeout=30)
        if (r.json()["rollout"] is not None) == running:
            seen.add(r.headers["X-Mwml-Replica"])
        return len(seen) >= max(1, replicas)

    wait_for(every_copy, what, 180, every=0.2)


def rollout(env: dict, *args) -> dict:
    "Run `mwml rollout ... --json` and return what it printed."
    r = run_mwml("rollout", *args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def shadow_rows(log, rollout_id: str) -> pd.DataFrame:
    "The shadow copies a roll-out logged."
    with sa.create_engine(f"sqlite:///{log}").connect() as conn:
        query = "SELECT id, shadow_of, arm, model_version FROM predictions WHERE rollout_id = :r AND shadow_of IS NOT NULL"
        return pd.read_sql(sa.text(query), conn, params={"r": rollout_id})


def commands(server) -> dict[psutil.Process, str]:
    "Every process under `server` (its Ray workers included) with its command line."
    found = {}
    for p in psutil.Process(server.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[p] = " ".join(p.cmdline())
    return found


def shadow_helpers(server) -> list[psutil.Process]:
    "The processes that answer shadow copies (`mwml.serve.ShadowPool`) under `server`, its Ray replicas included."
    return [p for p, command in commands(server).items() if "multiprocessing.spawn" in command]


def candidate_replicas(server) -> list[psutil.Process]:
    "The replicas of the candidates' own Ray Serve applications (`mwml.rollout.CandidateApps`) under `server`."
    return [p for p, command in commands(server).items() if f"ServeReplica:{CANDIDATE_APP_PREFIX}" in command]


@pytest.fixture(scope="module", params=[0, 2], ids=["uvicorn", "ray-serve"])
def api(request, registered):
    """One `mwml serve` of the champion per kind (uvicorn; Ray Serve, 2 replicas), shared by the shadow and canary tests (each ends
    its roll-out): (process, base URL, replicas, the shadow helpers a test saw). The helpers must die with the server."""
    env, champion, *_ = registered
    champion_back(env, champion)
    server, base = serve(env, replicas=request.param)
    helpers = []
    try:
        yield server, base, request.param, helpers
        helpers += shadow_helpers(server)
    finally:
        terminate(server)
    _, alive = psutil.wait_procs(helpers, timeout=15)
    assert not alive, f"shadow helpers outlived their server: {alive}"


def items(n: int) -> list[dict]:
    holdout = load("holdout").head(n)
    return [{"title": t, "description": d} for t, d in zip(holdout.title, holdout.description)]


def test_a_shadow_candidate_is_logged_never_returned(registered, api):
    (env, champion, _, broken), (server, base, replicas, seen_helpers) = registered, api
    champion_back(env, champion)
    started = rollout(env, "start", "--candidate", broken, "--policy", "shadow")
    wait_for_rollout(base, replicas=replicas)
    batch = items(12)
    answers = [httpx.post(f"{base}/predict", json={"items": [item]}, headers=TOKEN, timeout=60).json()["predictions"][0]
               for item in batch]  # fmt: skip
    mlflow.set_tracking_uri(get_settings(env).tracking_uri)
    expected = Predictor.load(champion, settings=get_settings(env)).predict(batch)
    assert [a["tag"] for a in answers] == [e["tag"] for e in expected] and {a["arm"] for a in answers} == {"champion"}

    log, served = get_settings(env).home / "predictions.db", {a["id"] for a in answers}
    copied = lambda: served <= set(shadow_rows(log, started["id"]).shadow_of)  # noqa: E731  (written in the background)
    wait_for(copied, f"a shadow copy of each of the {len(served)} answers in the log", 120)
    shadows = shadow_rows(log, started["id"])
    assert set(zip(shadows.arm, shadows.model_version)) == {(broken, broken)}  # the candidate answered every copy
    users_saw = set(read_predictions(log).id)  # what monitoring reads: the served answers, not the copies
    assert served <= users_saw and not users_saw & set(shadows.id)
    helpers = shadow_helpers(server)
    seen_helpers += helpers  # `api` checks that they die with the server
    if replicas:  # on Ray Serve the candidate is an application of its own, called by handle: no helper needed
        assert httpx.get(f"{base}/model", headers=TOKEN).json()["rollout"]["deployments"], "the candidate is not deployed apart"
        assert candidate_replicas(server) and not helpers, (candidate_replicas(server), helpers)
    else:
        assert len(helpers) == 1, helpers
    r = run_mwml("rollout", "abort", env=env)
    assert r.returncode == 0, r.stderr
    wait_for_rollout(base, running=False, replicas=replicas)
    wait_for(lambda: not candidate_replicas(server), "the candidate's application was deleted once the roll-out ended", 60)


def test_a_canary_with_a_broken_candidate_rolls_back_on_its_own(registered, api):
    (env, champion, _, broken), (server, base, replicas, _) = registered, api
    champion_back(env, champion)
    # the latency gate is the notebook's to prove: here a busy machine's p99 must not decide before the broken answers do
    started = rollout(env, "start", "--candidate", broken, "--steps", "5,25,50,100", "--interval", "60s", "--max-p99-ms", "60000")
    assert started["plan"]["canary"]["gates"]["max_p99_ms"] == 60000
    wait_for_rollout(base, replicas=replicas)
    assert bool(candidate_replicas(server)) == bool(replicas)  # on Ray Serve the candidate runs in an application of its own
    ledger, stop_traffic, sent = Ledger(ledger_target(get_settings(env))), threading.Event(), []

    def traffic(offset: int):  # 20 requests/s in all, from 4 threads, each request a new user
        with httpx.Client(timeout=30, headers=TOKEN) as http:
            next_at = time.monotonic()
            while not stop_traffic.is_set():
                i = len(sent)
                item = batch[i % len(batch)]
                sent.append(http.post(f"{base}/predict", json={"items": [item]}, headers={"X-Mwml-User": f"u{offset}-{i}"}).status_code)
                next_at += 0.2
                time.sleep(max(0.0, next_at - time.monotonic()))

    batch = items(100)
    t0 = time.monotonic()
    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        ended = wait_for(lambda: ledger.get(started["id"])["state"] != "running" and ledger.get(started["id"]), "the canary ended", 120)
    finally:
        stop_traffic.set()
        for t in threads:
            t.join()
    print(f"rolled back after {time.monotonic() - t0:.1f} s of traffic and {len(sent)} requests: {ended['reason']}")
    assert ended["state"] == "rolled back" and "gate disagreement failed" in ended["reason"], ended
    assert set(sent) == {200}
    assert replay_canary(ledger, started["id"]).outcome == "rollback"  # the recorded checks replay to the same decisions
    assert rollout(env, "status")["traffic"]["shares"] == {broken: 0.0}
    assert mlflow.MlflowClient(get_settings(env).tracking_uri).get_model_version_by_alias(
        get_settings(env).model_name, "champion").version == int(champion)  # fmt: skip
    wait_for_rollout(base, running=False, replicas=replicas)
    wait_for(lambda: not candidate_replicas(server), "the candidate's application was deleted once the roll-out was rolled back")


def test_users_keep_their_arm_across_a_restart_and_a_promotion_moves_the_champion(registered):
    env, champion, good, _ = registered
    champion_back(env, champion)
    server, base = serve(env)
    try:
        rollout(env, "start", "--candidate", good, "--steps", "50,100", "--interval", "1h")
        wait_for_rollout(base)
        users = [f"user-{i}" for i in range(40)]

        def arms(base):
            one = {"items": items(1)}
            return [
                httpx.post(f"{base}/predict", json=one, headers={**TOKEN, "X-Mwml-User": u}).json()["predictions"][0]["arm"] for u in users
            ]

        before = arms(base)
        assert 5 < before.count(good) < 35  # about half the users
        terminate(server)
        server, base = serve(env)
        wait_for_rollout(base)
        assert arms(base) == before

        r = run_mwml("rollout", "promote", env=env)  # through the registry's gate: the same model passes it
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: httpx.get(f"{base}/model", headers=TOKEN).json()["version"] == good, "the server serves the new champion", 60)
        assert httpx.get(f"{base}/model", headers=TOKEN).json()["rollout"] is None
    finally:
        terminate(server)
        champion_back(env, champion)


def labelled_traffic(base: str, until, patience: float = 120) -> dict[str, str]:
    "Send holdout projects, each from a new user, and post each answer's true tag, until `until()`: each answer's user by its id."
    holdout = load("holdout")
    deadline, users = time.monotonic() + patience, {}
    with httpx.Client(timeout=30, headers=TOKEN) as http:
        while not until():
            assert time.monotonic() < deadline, f"no decision after {len(users)} labelled requests in {patience} s"
            row, user = holdout.iloc[len(users) % len(holdout)], f"user-{len(users)}"
            item = {"title": row.title, "description": row.description}
            r = http.post(f"{base}/predict", json={"items": [item]}, headers={"X-Mwml-User": user})
            assert r.status_code == 200, r.text
            answer_id = r.json()["predictions"][0]["id"]
            assert http.post(f"{base}/feedback", json={"id": answer_id, "tag": row.tag}).status_code == 200
            users[answer_id] = user
    return users


def test_ab_and_bandit_decide_on_feedback_through_the_server(registered):
    env, champion, _, broken = registered
    champion_back(env, champion)
    server, base = serve(env)
    ledger = Ledger(ledger_target(get_settings(env)))
    try:
        # A/B: 20% of the users in the test for 15 s, then all; half of them on a random tagger. The always-valid test finds it
        # worse on the labels and rolls it back
        ab = rollout(env, "start", "--candidate", broken, "--policy", "ab", "--share", "50", "--exposure", "20,100", "--interval", "15s")
        wait_for_rollout(base)
        users = labelled_traffic(base, lambda: ledger.get(ab["id"])["state"] != "running")
        ended = ledger.get(ab["id"])
        print(f"A/B ended after {len(users)} labelled requests: {ended['state']}, {ended['reason']}")
        assert ended["state"] == "rolled back" and "the candidate is worse" in ended["reason"], ended
        assert replay(ledger, ab["id"]) >= 1  # every recorded check replays to the same decision
        events = ledger.events(ab["id"])
        widenings = [e for e in events if e["kind"] == "check" and e["data"]["decision"]["action"] == "expose"]
        if widenings:  # the usual course: the first step passed its SRM check and widened before the test decided
            [widened] = widenings
            assert widened["data"]["decision"]["exposure"] == 1.0 and widened["data"]["srm"] >= 0.001, widened
        else:  # a worse candidate is rolled back at any step: on a slow run the labels can settle it inside the first one
            print("the A/B test decided inside its first exposure step, before widening")
        # Which users the test held, checked user by user against the hash that assigns them, not counted inside a time window. A
        # row is stamped after its request was routed, and the controller stamps a change before the routers can read it: a row
        # stamped before the widening (or the end) was routed at 20% exposure
        rows = read_predictions(get_settings(env).home / "predictions.db")  # the answers users got, as monitoring reads them
        rows = rows[rows.id.isin(users) & (rows.time < events[-1]["time"])]  # answered while the A/B test ran
        first_fifth = rows.id.map(lambda answer: in_test(users[answer], ab["id"], 0.2))  # the users 20% exposure puts in the test
        tested, first_step = rows.rollout_id == ab["id"], rows.time < (widenings or events)[-1]["time"]
        print(f"first exposure step: {tested[first_step].sum()} of {first_step.sum()} users in the test")
        assert tested.any() and tested[first_fifth].all()  # the first fifth is in the test at every step (exposure only grows)
        assert not tested[first_step & ~first_fifth].any()  # nobody else, until it widened
        wait_for_rollout(base, running=False)

        # bandit: after the burn-in, Thompson sampling moves the traffic to the champion, keeping the floor on the candidate
        bandit = rollout(env, "start", "--candidate", broken, "--policy", "bandit", "--reweight", "2s")
        wait_for_rollout(base)

        def weights() -> dict:
            return current_traffic(ledger, bandit["id"]).get("weights") or {}

        answered = labelled_traffic(base, lambda: weights().get("champion", 0) > 0.9)
        print(f"bandit weights after {len(answered)} labelled requests: {weights()}")
        assert weights()[broken] >= 0.01  # the floor
        assert replay(ledger, bandit["id"]) >= 1
        r = run_mwml("rollout", "abort", env=env)
        assert r.returncode == 0, r.stderr
        assert mlflow.MlflowClient(get_settings(env).tracking_uri).get_model_version_by_alias(
            get_settings(env).model_name, "champion").version == int(champion)  # fmt: skip
    finally:
        terminate(server)
