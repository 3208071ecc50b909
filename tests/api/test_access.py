"""Who may call what: optional API keys for every route but the probes and /metrics, the admin
token apart, auth decided before the body is read, CORS only for explicit origins."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings
from tests.conftest import fake_model, status_before_body

KEYS = ["key-one-0123456789", "key-two-9876543210"]
ADMIN = "admin-token-abcdef"
SCORE = {"items": [{"prompt": "p", "response": "r"}], "shaping": {"method": "vanilla"}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keyed(make_client) -> Any:
    return make_client(api_keys=KEYS, admin_token=ADMIN)


def test_without_keys_configured_scoring_needs_none(make_client) -> None:
    client = make_client()
    assert client.post("/v1/score", json=SCORE).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("POST", "/v1/score", SCORE),
        ("POST", "/v1/references", {"items": [{"prompt": "p", "references": ["a"]}]}),
        ("POST", "/get_reward?method=vanilla", {"query": ["q"]}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/runs/r1/stats", None),
        ("DELETE", "/v1/runs/r1/stats", None),
        ("GET", "/dashboard", None),
        ("GET", "/v1/dashboard/data", None),
        ("GET", "/openapi.json", None),
        ("GET", "/docs", None),
        ("GET", "/no-such-route", None),  # no route enumeration without a key either
    ],
)
def test_every_other_route_needs_a_key(keyed, method: str, path: str, json: Any) -> None:
    for headers in ({}, bearer("wrong"), bearer(ADMIN), {"Authorization": KEYS[0]}):
        r = keyed.request(method, path, json=json, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert KEYS[0] not in r.text and "wrong" not in r.text
    for key in KEYS:
        r = keyed.request(method, path, json=json, headers=bearer(key))
        assert r.status_code != 401, r.text


def test_probes_and_metrics_are_open(keyed) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_the_admin_api_takes_its_own_token_not_an_api_key(keyed) -> None:
    assert keyed.get("/v1/admin/replicas", headers=bearer(KEYS[0])).status_code == 401
    r = keyed.get("/v1/admin/replicas", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text


def test_an_api_key_gives_no_admin_when_admin_is_off(make_client) -> None:
    client = make_client(api_keys=KEYS)
    r = client.get("/v1/admin/replicas", headers=bearer(KEYS[0]))
    assert r.status_code == 403


def test_a_keyed_request_is_scored(keyed, tokenizer) -> None:
    r = keyed.post("/v1/score", json=SCORE, headers=bearer(KEYS[1]))
    assert r.status_code == 200
    assert r.json()["model_version"] == "fake-default"


async def test_keys_are_checked_before_the_body_is_read(tokenizer) -> None:
    app = create_app(Settings(api_keys=KEYS), models=[fake_model(tokenizer)])
    assert await status_before_body(app, "POST", "/v1/score") == 401


async def test_a_websocket_without_a_key_is_closed_before_the_handshake(tokenizer) -> None:
    app = create_app(Settings(api_keys=KEYS), models=[fake_model(tokenizer)])
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/anything", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_an_unauthenticated_oversized_body_is_a_401_not_a_413(make_client) -> None:
    client = make_client(api_keys=KEYS, max_body_bytes=2048)
    big = {"items": [{"prompt": "p", "response": "x" * 10_000}]}
    assert client.post("/v1/score", json=big).status_code == 401
    assert client.post("/v1/score", json=big, headers=bearer(KEYS[0])).status_code == 413


@pytest.mark.parametrize("keys", [[""], [" padded "], ["two words"], ["tab\tkey"]])
def test_unusable_keys_are_refused_at_start(keys: list[str]) -> None:
    with pytest.raises(ValidationError):
        Settings(api_keys=keys)


def test_keys_do_not_show_in_settings_repr() -> None:
    assert KEYS[0] not in repr(Settings(api_keys=KEYS))


# --- CORS --------------------------------------------------------------------------------------
ORIGIN = "https://dash.example.org"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_no_cors_by_default(make_client) -> None:
    client = make_client()
    r = client.options("/v1/score", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/v1/score", json=SCORE, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_for_explicit_origins_only(make_client) -> None:
    client = make_client(cors_origins=[ORIGIN], api_keys=KEYS)
    r = client.options("/v1/score", headers=PREFLIGHT)  # a preflight carries no key
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = client.post("/v1/score", json=SCORE, headers={"Origin": ORIGIN, **bearer(KEYS[0])})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = client.post("/v1/score", json=SCORE, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    other = {**PREFLIGHT, "Origin": "https://evil.example.com"}
    r = client.options("/v1/score", headers=other)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origins", [["*"], ["dash.example.org"], ["null"]])
def test_wildcard_or_vague_origins_are_refused(origins: list[str]) -> None:
    with pytest.raises(ValidationError):
        Settings(cors_origins=origins)


def test_the_default_bind_address_is_loopback() -> None:
    assert Settings().host == "127.0.0.1"
