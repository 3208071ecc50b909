"""Property-based tests from the service's own OpenAPI document (schemathesis), in-process on
the fake runner: for every operation, requests generated to fit the schema (positive) and not
to fit it (negative), a bounded run with a fixed seed. No 5xx, every status code, content type
and body as documented, invalid input refused, and the admin operations refuse calls without
the admin token.

schemathesis' own pytest integration (`from_fixture`) does not run on this pytest, so the
operations are parametrized here and each one's strategy is driven with hypothesis directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.config import Settings
from tests.conftest import fake_model

ADMIN_TOKEN = "schemathesis-admin-token"
SETTINGS = {"admin_token": ADMIN_TOKEN, "max_items_per_request": 32, "max_chars_per_item": 2000}
EXAMPLES = 12  # per operation and mode: a few hundred requests in all

# The operations, read from the document itself (building the app loads nothing). Negative
# cases exist only for operations that take some input.
CASES = [
    (method.upper(), path, mode)
    for path, item in create_app(Settings(**SETTINGS)).openapi()["paths"].items()
    for method, spec in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
]


@pytest.fixture(scope="module")
def api_schema(tokenizer) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(Settings(**SETTINGS), models=[fake_model(tokenizer)])
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # the app's lifespan: model thread, tokenizer pool


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=str)
def test_operation_conforms_to_the_openapi_document(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # a fixed seed: the same examples every run
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call()
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
                negative_data_rejection,
            ],
        )
        if path.startswith("/v1/admin"):
            assert response.status_code == 401, response.text
            assert response.json()["error"]["type"] == "unauthorized"

    check()
