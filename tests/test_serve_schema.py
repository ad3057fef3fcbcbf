"""The service's OpenAPI contract, fuzzed: Schemathesis runs every check on every operation, with and
without the token (bounded: 50 examples per operation, derandomized, over the ASGI transport).

Every answer must be documented (status, content type, headers, body schema: the one-line
``ErrorBody`` for errors), schema-valid requests must be accepted, schema-invalid ones rejected with a
4xx, never a 5xx. One exception, named here: ``POST /search/media`` takes a media *file*; whether its
bytes decode (a 400 when they do not) cannot be expressed in a schema, so that operation skips
``positive_data_acceptance`` (its other checks run).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import CHECKS  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

TOKEN = "s3cret-token-fuzz"
NO_INPUTS = {"/health", "/info"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_run, tiny_synth):
    from avret.index.build import build_indexes
    from avret.index.searcher import Searcher
    from avret.io import load_model
    from avret.serve.app import create_app
    from avret.serve.reload import ReloadingSearcher

    out = tmp_path_factory.mktemp("schema") / "index"
    build_indexes(load_model(tiny_run), tiny_synth, out, device="cpu")
    live = ReloadingSearcher(out, lambda root: Searcher(root, load_model=True, device="cpu"))  # as avret serve
    app = create_app(live, token=TOKEN, max_upload_bytes=200_000)
    return schemathesis.openapi.from_asgi(f"/openapi.json?token={TOKEN}", app)


FUZZ = settings(max_examples=50, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def _validate(case, headers):
    skip = [positive_data_acceptance] if case.path == "/search/media" else []
    case.call_and_validate(headers=headers, checks=CHECKS.get_all(), excluded_checks=skip)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
def test_every_operation_keeps_its_contract(served, with_token, mode):
    headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
    operations = [result.ok() for result in served.get_all_operations()]
    assert {op.path for op in operations} >= {"/health", "/info", "/search", "/search/media", "/media/{clip_id}",
                                                  "/admin/reload"}
    for op in operations:
        @given(case=op.as_strategy(generation_mode=mode))
        @FUZZ
        def check(case):
            _validate(case, headers)

        try:
            check()
        except Unsatisfiable:  # an operation without inputs (GET /health) has no invalid request
            assert mode is GenerationMode.NEGATIVE and op.path in NO_INPUTS, op.path


def test_the_schema_documents_errors_and_security(served):
    raw = served.raw_schema
    assert raw["components"]["securitySchemes"]
    search = raw["paths"]["/search"]["post"]
    for code in ("400", "401", "404", "413", "422"):
        body = search["responses"][code]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ErrorBody"}, (code, body)
    assert "415" in raw["paths"]["/search/media"]["post"]["responses"]
    req = raw["components"]["schemas"]["SearchRequest"]
    assert req["oneOf"] and req["properties"]["clip_ids"]["minItems"] == 1
