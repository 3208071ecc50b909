"""The client's pure parts: splitting batches, Retry-After, error types, URL rotation."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
from par_client._core import Endpoints, split_reference_items, split_score_items
from par_client.errors import (
    InvalidRequest,
    MissingReferences,
    Overloaded,
    ServerError,
    Unavailable,
    VersionMismatch,
    error_from_response,
    parse_retry_after,
)

ITEMS = [
    {"prompt": "a", "response": "x"},
    {"prompt": "g", "responses": ["a", "b", "c", "d", "e"], "references": ["r"]},
    {"prompt": "b", "response": "y"},
    {"prompt": "c", "responses": ["1", "2"]},
]


def flat(chunks: list[list[dict]]) -> list[tuple[str, str]]:
    return [
        (item["prompt"], r)
        for chunk in chunks
        for item in chunk
        for r in item.get("responses", [item.get("response")])
    ]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 9, 512])
def test_split_keeps_every_pair_in_order_under_the_limit(limit: int) -> None:
    chunks = split_score_items(ITEMS, limit)
    assert flat(chunks) == flat([ITEMS])
    assert all(sum(len(i.get("responses", [1])) for i in c) <= limit for c in chunks)
    # Pieces of a group keep its prompt and references.
    assert all(i["references"] == ["r"] for c in chunks for i in c if i["prompt"] == "g")
    # The first piece of a cut group fills the current chunk: no chunk but the last is short.
    if limit <= 3:
        assert len(chunks) == -(-9 // limit)


def test_split_references_never_cuts_an_item() -> None:
    items = [{"prompt": str(i), "references": ["r"] * n} for i, n in enumerate([2, 2, 3, 1])]
    chunks = split_reference_items(items, 4)
    assert [[i["prompt"] for i in c] for c in chunks] == [["0", "1"], ["2", "3"]]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30


def response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def test_errors_are_typed_from_the_service_body() -> None:
    err = error_from_response(
        response(422, {"error": {"type": "invalid_request", "message": "m", "param": "items[1]"}})
    )
    assert type(err) is InvalidRequest and err.param == "items[1]" and err.status == 422
    missing = {"error": {"type": "missing_references", "message": "m", "param": "items[0]"}}
    assert type(error_from_response(response(422, missing))) is MissingReferences
    over = error_from_response(
        response(429, {"error": {"type": "overloaded", "message": "m"}}, {"Retry-After": "2"})
    )
    assert type(over) is Overloaded and over.retry_after == 2.0
    assert type(error_from_response(response(409, {}))) is VersionMismatch
    assert type(error_from_response(response(503, {}))) is Unavailable
    # Not the service's body (a proxy's page): still typed by status.
    page = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert type(page) is ServerError and "bad gateway" in page.message


def test_endpoints_rotate_and_a_down_url_goes_last() -> None:
    endpoints = Endpoints(["http://a/", "http://b", "http://c"], cooldown_s=60)
    firsts = [endpoints.order()[0] for _ in range(4)]
    assert firsts == ["http://a", "http://b", "http://c", "http://a"]
    endpoints.mark_down("http://b")
    assert endpoints.order() == ["http://c", "http://a", "http://b"]  # b's turn, but b is down
    endpoints.mark_up("http://b")
    assert endpoints.order() == ["http://c", "http://a", "http://b"]  # c's turn
    with pytest.raises(ValueError):
        Endpoints([])
