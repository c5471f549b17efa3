"""Property-based fuzzing of the HTTP API (the review room's `/report` included) against its own OpenAPI schema:
schemathesis generates requests for every operation from the schema, valid ones and invalid ones, sends them to the app
in-process (ASGI) and checks that no answer is a 5xx and that every answer (status, media type, body, headers) is one the
schema declares."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from mwml.review import attach_review
from mwml.serve import Engine, ServeConfig, build_app

pytestmark = pytest.mark.full  # the whole module is a long proof: `make test-full`

TOKEN = {"Authorization": "Bearer s3cret"}
# 413 is a right answer to an invalid body too: one over the size limit (schemathesis's default list lacks it)
CONFIG = {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 406, 413, 415, 422]}}}


@pytest.fixture(scope="module")
def schema(tmp_path_factory, untrained_tiny):
    "The schema of an app as `mwml serve` builds it (the review room's routes too), with a token, a tiny random Tagger and small limits."
    log = tmp_path_factory.mktemp("fuzz") / "log.db"
    config = ServeConfig(model=str(untrained_tiny), max_items=4, max_body_bytes=20_000, prediction_log=str(log), token="s3cret")
    engine = Engine(config).load()
    attach_review(engine)  # `POST /report` is in the schema; the review page's own routes are not (they are the page's)
    app = build_app(engine)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=TOKEN, config=SchemathesisConfig.from_dict(CONFIG))


def test_the_schema_has_every_operation(schema):
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert labels == {"GET /health", "GET /ready", "GET /metrics", "GET /model", "POST /predict", "POST /feedback", "POST /report"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_keeps_to_the_schema_and_none_is_a_5xx(schema, mode):
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode == GenerationMode.NEGATIVE and not list(operation.body) and not list(operation.iter_parameters()):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(headers=TOKEN)

        check()
