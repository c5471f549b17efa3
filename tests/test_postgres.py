"""The prediction log and MLflow's backend store on a real PostgreSQL (started by `postgres_fixture` on 127.0.0.1),
compared with the embedded SQLite default."""

import json
import socket
import sqlite3
import threading
import time

import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from mwml.config import DatabaseError, MwmlError, check_database, database_url, get_settings, use_mlflow
from mwml.models import Tagger
from mwml.predict import Predictor
from mwml.serve import FEEDBACK, Engine, PredictionLog, ServeConfig, build_app, read_predictions, replace_row

pytest_plugins = ["postgres_fixture"]


class LegacyPredictionLog:
    "The prediction log as mwml wrote it before issue 13 (sqlite3 only), to prove its files still open and read the same."

    def __init__(self, path):
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db as db:
            db.execute("""CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, time REAL, model_version TEXT, model_run_id TEXT,
                          title TEXT, description TEXT, tag TEXT, probabilities TEXT, abstained INTEGER, latency_ms REAL)""")
            db.execute("CREATE TABLE IF NOT EXISTS feedback (prediction_id TEXT PRIMARY KEY, tag TEXT, time REAL)")

    def write(self, rows):
        with self._db as db:
            db.executemany("INSERT INTO predictions VALUES (:id, :time, :model_version, :model_run_id, :title, :description, :tag, "
                           ":probabilities, :abstained, :latency_ms)", rows)  # fmt: skip

    def feedback(self, prediction_id, tag):
        with self._db as db:
            if not db.execute("SELECT 1 FROM predictions WHERE id = ?", (prediction_id,)).fetchone():
                return False
            db.execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?)", (prediction_id, tag, time.time()))
        return True

    def read(self):
        return pd.read_sql("SELECT p.*, f.tag AS true_tag FROM predictions p LEFT JOIN feedback f ON f.prediction_id = p.id", self._db)


def row(i: int, tag: str = "mlops") -> dict:
    "A prediction row as `log_row` makes them."
    return {"id": f"p{i}", "time": 1_700_000_000.123456 + i, "model_version": "3", "model_run_id": "r1", "title": f"title {i}",
            "description": "dé😀scription", "tag": tag, "probabilities": json.dumps({tag: 0.9}), "abstained": i % 2,
            "latency_ms": 5.5}  # fmt: skip


def exercise(log) -> pd.DataFrame:
    "The same writes, feedback (one replaced) and read on any log; the rows sorted by id."
    log.write([row(1), row(2, "computer-vision"), row(3, "other")])
    log.write([])
    assert log.feedback("p1", "computer-vision")
    assert log.feedback("p2", "other")
    assert log.feedback("p2", "natural-language-processing")  # replaces the first answer
    assert not log.feedback("nope", "mlops")
    return log.read().sort_values("id", ignore_index=True)


def closed_port() -> int:
    "A port on 127.0.0.1 that nothing listens on."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_round_trip_on_postgres(postgres_url):
    log = PredictionLog(postgres_url)
    rows = exercise(log)
    assert rows.id.tolist() == ["p1", "p2", "p3"]
    assert rows.true_tag.tolist() == ["computer-vision", "natural-language-processing", None]
    assert rows.time[0] == 1_700_000_001.123456  # 8-byte floats: PostgreSQL's REAL would round this to ~100 s
    assert rows.description[0] == "dé😀scription" and rows.abstained.tolist() == [1, 0, 1]
    with log.engine.connect() as conn:  # one feedback row per prediction: the second answer replaced the first
        assert conn.execute(sa.text("SELECT count(*) FROM feedback WHERE prediction_id = 'p2'")).scalar() == 1
    assert log.url.drivername == "postgresql+psycopg" and "postgresql+psycopg://mwml@127.0.0.1" in repr(log)


def test_postgres_and_sqlite_agree(fresh_postgres_url, tmp_path):
    on_postgres, on_sqlite = exercise(PredictionLog(fresh_postgres_url)), exercise(PredictionLog(tmp_path / "log.db"))
    pd.testing.assert_frame_equal(on_postgres, on_sqlite)


ROLLOUT_COLUMNS = ["arm", "rollout_id", "shadow_of", "error"]  # added by the roll-out issue; empty without a roll-out
USER_COLUMNS = ["user_key"]  # added by the reliability issue: the X-Mwml-User key's pseudonym; empty without one
FEEDBACK_COLUMNS = ["source", "reviewer"]  # added by the review issue: who gave the true tag (`api` or `review`, and the reviewer)


def test_same_answers_as_the_old_sqlite_log(tmp_path):
    new, old = exercise(PredictionLog(tmp_path / "new.db")), exercise(LegacyPredictionLog(tmp_path / "old.db"))
    pd.testing.assert_frame_equal(new.drop(columns=ROLLOUT_COLUMNS + USER_COLUMNS), old)
    assert new[ROLLOUT_COLUMNS + USER_COLUMNS].isna().all().all()

    def columns(path):
        with sqlite3.connect(path) as db:
            return {t: [(c[1], c[2], c[5]) for c in db.execute(f"PRAGMA table_info({t})")] for t in ("predictions", "feedback")}

    before, after = columns(tmp_path / "old.db"), columns(tmp_path / "new.db")
    for table, added in (("predictions", ROLLOUT_COLUMNS + USER_COLUMNS), ("feedback", FEEDBACK_COLUMNS)):
        assert after[table][: len(before[table])] == before[table]  # the old columns as they were
        assert [c[0] for c in after[table][len(before[table]) :]] == added  # then the new ones
    with sqlite3.connect(tmp_path / "new.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT DISTINCT source FROM feedback").fetchall() == [("api",)]  # a client's POST /feedback


def test_old_log_files_still_open(tmp_path):
    old = LegacyPredictionLog(tmp_path / "log.db")
    old.write([row(1)])
    assert old.feedback("p1", "other")
    new = PredictionLog(str(tmp_path / "log.db"))
    new.write([row(2)])
    assert new.feedback("p1", "computer-vision")
    both = old.read().sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(both, new.read().sort_values("id", ignore_index=True))
    assert both.true_tag.tolist() == ["computer-vision", None]


def test_feedback_for_an_unknown_prediction(postgres_url):
    log = PredictionLog(postgres_url)
    assert not log.feedback("never-predicted", "mlops")
    with log.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback WHERE prediction_id = 'never-predicted'")).scalar() == 0


@pytest.mark.parametrize("native", [True, False])
def test_replace_row_on_both(native, fresh_postgres_url, tmp_path):
    for log in PredictionLog(fresh_postgres_url), PredictionLog(tmp_path / "log.db"):
        for tag in "mlops", "other":
            with log.engine.begin() as conn:
                replace_row(conn, FEEDBACK, {"prediction_id": "p1", "tag": tag, "time": 1.0}, "prediction_id", native=native)
        with log.engine.connect() as conn:
            assert conn.execute(sa.select(FEEDBACK.c.tag)).scalars().all() == ["other"]


def hammer(log, threads: int = 8, each: int = 20):
    "Write and give feedback on `each` predictions from each of `threads` threads at once."

    def work(t):
        for i in range(each):
            log.write([row(1000 * t + i)])
            assert log.feedback(f"p{1000 * t + i}", "other")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_writes_from_many_threads(fresh_postgres_url, tmp_path):
    for log in PredictionLog(fresh_postgres_url), PredictionLog(tmp_path / "log.db"):
        hammer(log)
        rows = log.read()
        assert len(rows) == 160 and rows.id.is_unique and (rows.true_tag == "other").all()


def test_an_unreachable_server_is_named_quickly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    url = f"postgresql://mwml:s3cret-pw@127.0.0.1:{port}/mwml"
    start = time.perf_counter()
    with pytest.raises(DatabaseError) as e:
        PredictionLog(url)
    print(f"unreachable server refused in {time.perf_counter() - start:.3f} s")
    message = str(e.value)
    assert isinstance(e.value, MwmlError) and f"127.0.0.1:{port}" in message and "Check that the server is running" in message
    assert "s3cret-pw" not in message and "***" in message, message
    assert list(tmp_path.iterdir()) == []  # no SQLite file, no folder: nothing written anywhere
    with pytest.raises(DatabaseError, match=f"127.0.0.1:{port}"):
        check_database(url)


def test_a_silent_server_times_out(tmp_path, monkeypatch):
    "A host that takes the TCP connection but never answers (a hung server, a firewall's tarpit): refused after connect_timeout."
    monkeypatch.chdir(tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes handshakes; nobody ever reads or answers
        url = f"postgresql://mwml@127.0.0.1:{silent.getsockname()[1]}/mwml"
        outcome = {}

        def connect():
            start = time.perf_counter()
            try:
                PredictionLog(url)
            except Exception as e:
                outcome["error"] = e
            outcome["seconds"] = time.perf_counter() - start

        attempt = threading.Thread(target=connect, daemon=True)
        attempt.start()
        attempt.join(120)  # not a speed limit: without a connect timeout this would wait forever
        assert not attempt.is_alive(), "PredictionLog hung on a server that never answers"
    print(f"silent server refused after {outcome['seconds']:.1f} s")
    assert isinstance(outcome["error"], DatabaseError) and "127.0.0.1:" in str(outcome["error"]), outcome
    assert list(tmp_path.iterdir()) == []


def test_a_missing_database_writes_nothing(postgres_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseError, match=f'127.0.0.1:{postgres_server.port}.*database "no_such_db" does not exist'):
        PredictionLog(postgres_server.url("no_such_db"))
    assert list(tmp_path.iterdir()) == []


def test_bad_urls_are_explained():
    with pytest.raises(DatabaseError, match="knows no database 'postgres'"):
        PredictionLog("postgres://u:pw@127.0.0.1/db")
    with pytest.raises(DatabaseError, match="not a database URL") as e:
        database_url("postgresql://u:pw@127.0.0.1:notaport/db")
    assert ":pw@" not in str(e.value)


def test_monitor_reads_without_writing(postgres_server, fresh_postgres_url, tmp_path):
    PredictionLog(fresh_postgres_url).write([row(1)])
    assert read_predictions(fresh_postgres_url).id.tolist() == ["p1"]
    empty = postgres_server.create_database()
    with pytest.raises(DatabaseError, match='is not a prediction log: relation "predictions" does not exist'):
        read_predictions(empty)
    with sa.create_engine(database_url(empty)).connect() as conn:  # reading created nothing
        assert sa.inspect(conn).get_table_names() == []
    with pytest.raises(DatabaseError, match="no prediction log at"):
        read_predictions(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()
    LegacyPredictionLog(tmp_path / "old.db").write([row(1)])
    assert read_predictions(tmp_path / "old.db").id.tolist() == ["p1"]
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE x (a)")
    with pytest.raises(DatabaseError, match="other.db is not a prediction log: no such table: predictions"):
        read_predictions(tmp_path / "other.db")
    with sqlite3.connect(tmp_path / "other.db") as db:  # left as it was
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["x"]
    with pytest.raises(DatabaseError, match="127.0.0.1:.*Connection refused"):
        read_predictions(f"postgresql://u:pw@127.0.0.1:{closed_port()}/db")


def test_mlflow_tracks_on_postgres(fresh_postgres_url, tmp_path):
    "MLFLOW_TRACKING_URI=postgresql://...: mwml's `use_mlflow` tracks runs in PostgreSQL, artifacts in MWML_HOME/mlartifacts."
    before = mlflow.get_tracking_uri()
    settings = get_settings({"MWML_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": fresh_postgres_url, "MWML_EXPERIMENT": "pg"})
    try:
        experiment = use_mlflow(settings)
        assert mlflow.get_experiment(experiment).artifact_location == (tmp_path / "mlartifacts").as_uri()
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_metric("f1", 0.875, step=3)
            mlflow.log_param("backbone", "minilm")
        got = mlflow.MlflowClient().get_run(run.info.run_id)
        assert got.data.metrics["f1"] == 0.875 and got.data.params["backbone"] == "minilm" and got.info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(before)
    with sa.create_engine(database_url(fresh_postgres_url)).connect() as conn:  # it is in PostgreSQL, not a file
        assert conn.execute(sa.text("SELECT value FROM metrics WHERE key = 'f1'")).scalar() == 0.875


def test_an_unreachable_tracking_database_is_named_quickly(tmp_path):
    "MLflow alone retries an unreachable PostgreSQL store for about 100 s; `use_mlflow` names it at once."
    port = closed_port()
    settings = get_settings({"MWML_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"postgresql://mwml:pw@127.0.0.1:{port}/mlflow"})
    with pytest.raises(DatabaseError, match=f"cannot use the database server at 127.0.0.1:{port}"):
        use_mlflow(settings)
    assert list(tmp_path.iterdir()) == []


def test_the_rollout_ledger_on_postgres(fresh_postgres_url):
    "The roll-out ledger on PostgreSQL: one roll-out at a time (a database constraint), events in order, finish frees the slot."
    from mwml.rollout import Ledger, RolloutError

    ledger = Ledger(fresh_postgres_url)
    ledger.start("r1", "canary", {"versions": {"2": "2"}}, now=1.0)
    with pytest.raises(RolloutError, match="roll-out r1 \\(canary\\) is running"):
        Ledger(fresh_postgres_url).start("r2", "ab", {}, now=2.0)  # another server, the same database
    ledger.record("r1", "traffic", {"shares": {"2": 0.05}}, now=3.0)
    ledger.finish("r1", "rolled back", "gate error_rate failed", now=4.0)
    assert [e["kind"] for e in ledger.events("r1")] == ["start", "traffic", "end"] and ledger.running() is None
    assert ledger.get("r1")["state"] == "rolled back" and ledger.get("r2") is None


def test_a_stopped_log_database_is_a_503_naming_it_and_serving_resumes_when_it_is_back(own_postgres_server, untrained_tiny):
    "The server fails closed: no answer without its log row. Its connections have a statement_timeout (ServeConfig.log_timeout_s)."
    server = own_postgres_server
    model = Predictor(Tagger.load(untrained_tiny), {"ref": str(untrained_tiny)})
    engine = Engine(ServeConfig(model=str(untrained_tiny), prediction_log=server.create_database(), log_timeout_s=5), model)
    one = {"items": [{"title": "object detection"}]}
    with TestClient(build_app(engine)) as client:
        assert client.post("/predict", json=one).status_code == 200
        with engine.log.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "5s"
        server.stop("fast")
        down = client.post("/predict", json=one)
        server.start()
        back = client.post("/predict", json=one)
    assert (down.status_code, down.headers["Retry-After"]) == (503, "5"), down.text
    assert f"{server.host}:{server.port}" in down.json()["detail"], down.text
    assert back.status_code == 200, back.text
    assert len(engine.log.read()) == 2
