"""Hostile and malformed input, one table: each limit with its exact status and error type,
refused before the work it protects (no tokenizing for anything refused before it), quickly,
with a body that never echoes the input or leaks paths. In-process, on the fake runner.

Order of the checks, cheapest first: auth (test_access.py) -> body bytes (413) -> text that is
not UTF-8, NUL bytes, lone surrogate escapes (400) -> not JSON, nested too deep, absurd
numbers (400) -> schema, NaN/Infinity (422) -> pairs per request and characters per text
(422, before tokenizing) -> tokens per pair (422, or left truncation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.models.fake import checksum_reward
from tests.conftest import fake_model

MARK = "ZQXMARK"  # put in the offending free text; no error body may contain it

LIMITS = {
    "max_body_bytes": 1 << 20,
    "max_items_per_request": 8,
    "max_chars_per_item": 1000,
    "max_references_per_prompt": 4,
}
MAX_TOKENS = 64


def body(obj: Any) -> bytes:
    """JSON as Python's json.dumps writes it: non-ASCII (and lone surrogates) as \\u escapes."""
    return json.dumps(obj).encode()


def score(**item: Any) -> dict[str, Any]:
    return {"items": [{"prompt": f"p {MARK}", "response": f"r {MARK}", **item}]}


def vanilla(*items: dict[str, Any]) -> dict[str, Any]:
    return {"items": list(items), "shaping": {"method": "vanilla"}}


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


@dataclass
class Case:
    id: str
    content: bytes | Iterator[bytes]
    status: int
    type: str | None  # error type; None for a 200
    param: str | None = None
    path: str = "/v1/score"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    tokenizes: bool = False  # the limit is only known after tokenizing
    message: str | None = None  # a word the message must contain


def chunks(total: int) -> Iterator[bytes]:
    """A body streamed without Content-Length (chunked), `total` bytes of valid JSON prefix."""
    yield b'{"items": [{"prompt": "'
    sent = 0
    while sent < total:
        yield b"x" * 4096
        sent += 4096
    yield b'", "response": "r"}]}'


LONE = ["\ud800", "\udc00", "\udbff\u0041", "\udc00\ud800"]  # high, low, high+ASCII, reversed
BIG_TEXT = "x" * (LIMITS["max_chars_per_item"] + 1)

CASES: list[Case] = [
    # --- 413: bytes, before anything is parsed -------------------------------------------------
    Case("declared-too-large", body(score(response="x" * (1 << 20))), 413, "payload_too_large"),
    Case("streamed-too-large", chunks(1 << 21), 413, "payload_too_large"),
    # --- 400: not text a tokenizer can take ----------------------------------------------------
    Case("not-utf8", b'{"items": [{"prompt": "\xff\xfe", "response": "r"}]}', 400, "bad_request",
         message="UTF-8"),
    Case("utf16", json.dumps(score()).encode("utf-16"), 400, "bad_request", message="UTF-8"),
    Case("utf16-no-bom", json.dumps(score()).encode("utf-16-le"), 400, "bad_request"),
    Case("utf8-encoded-surrogate", b'{"items": [{"prompt": "\xed\xa0\x80", "response": "r"}]}',
         400, "bad_request", message="UTF-8"),
    Case("nul-byte", b'{"items": [{"prompt": "a\x00", "response": "r"}]}', 400, "bad_request",
         message="NUL"),
    *[
        Case(f"lone-surrogate-{where}-{i}", body(obj), 400, "bad_request", path=path,
             message="surrogate")
        for i, lone in enumerate(LONE)
        for where, path, obj in [
            ("prompt", "/v1/score", vanilla({"prompt": MARK + lone, "response": "r"})),
            ("response", "/v1/score", vanilla({"prompt": "p", "response": lone + MARK})),
            ("responses", "/v1/score", vanilla({"prompt": "p", "responses": ["a", lone]})),
            ("reference", "/v1/score", score(references=["ok", lone])),
            ("message", "/v1/score", vanilla({"messages": [{"role": "user", "content": lone}],
                                               "response": "r"})),
            ("role", "/v1/score", vanilla({"messages": [{"role": lone, "content": "c"}],
                                           "response": "r"})),
            ("model", "/v1/score", {**vanilla({"prompt": "p", "response": "r"}), "model": lone}),
            ("run-id", "/v1/score", {**vanilla({"prompt": "p", "response": "r"}), "run_id": lone}),
            ("expected-version", "/v1/score",
             {**vanilla({"prompt": "p", "response": "r"}), "expected_model_version": lone}),
            ("key", "/v1/score", {**vanilla({"prompt": "p", "response": "r"}), lone: 1}),
            ("registration", "/v1/references",
             {"items": [{"prompt": "p", "references": [MARK + lone]}]}),
            ("openrlhf", "/get_reward?method=vanilla", {"query": [f"q {lone}"]}),
        ]
    ],
    # --- 400: not JSON, or JSON no parser should be made to build -----------------------------
    Case("not-json", b"{not json " + MARK.encode(), 400, "bad_request"),
    Case("truncated-json", b'{"items": [{"prompt": "' + MARK.encode(), 400, "bad_request"),
    Case("nested-10k-arrays", nested(10_000), 400, "bad_request", message="nested"),
    Case("nested-100k-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400,
         "bad_request", message="nested"),
    Case("nested-in-items", b'{"items": ' + nested(10_000) + b"}", 400, "bad_request"),
    Case("nested-in-openrlhf-labels", b'{"query": ["q"], "labels": ' + nested(5000) + b"}",
         400, "bad_request", path="/get_reward?method=vanilla"),
    Case("5000-digit-integer", b'{"items": [{"prompt": "p", "response": "r", '
         b'"reference_rewards": [' + b"9" * 5000 + b"]}]}", 400, "bad_request",
         message="digits"),
    # --- 422: the schema -------------------------------------------------------------------------
    *[
        Case(f"{literal}-reward", f'{{"items": [{{"prompt": "p", "response": "r", '
             f'"reference_rewards": [{literal}]}}]}}'.encode(), 422, "invalid_request",
             param="items[0].reference_rewards[0]", message="finite")
        for literal in ("NaN", "Infinity", "-Infinity", "1e400")
    ],
    Case("nan-sigmoid-k", b'{"items": [{"prompt": "p", "response": "r"}], '
         b'"shaping": {"method": "sigmoid", "sigmoid_k": NaN}}', 422, "invalid_request",
         param="shaping.sigmoid_k"),
    Case("infinite-ceiling", b'{"items": [{"prompt": "p", "response": "r"}], '
         b'"shaping": {"method": "vanilla", "ceiling": Infinity}}', 422, "invalid_request",
         param="shaping.ceiling"),
    Case("no-items", body({"items": []}), 422, "invalid_request", param="items"),
    Case("items-not-a-list", body({"items": MARK}), 422, "invalid_request", param="items"),
    Case("body-a-list", body([score()]), 422, "invalid_request"),
    Case("unknown-field", body(vanilla({"prompt": "p", "response": "r", "promtp": MARK})),
         422, "invalid_request", param="items[0].promtp"),
    Case("long-unknown-field", body(vanilla({"prompt": "p", "response": "r", MARK * 20: 1})),
         422, "invalid_request", param="items[0]"),
    Case("bad-model-name", body({**vanilla({"prompt": "p", "response": "r"}),
                                 "model": f"../{MARK}"}), 422, "invalid_request", param="model"),
    Case("bad-run-id", body({**vanilla({"prompt": "p", "response": "r"}),
                             "run_id": f"{MARK} <script>"}), 422, "invalid_request",
         param="run_id"),
    # --- 422: sizes, before tokenizing ---------------------------------------------------------
    Case("too-many-items", body(vanilla(*[{"prompt": "p", "response": str(i)} for i in range(9)])),
         422, "invalid_request", param="items"),
    Case("group-too-large", body(vanilla({"prompt": "p", "responses": [str(i) for i in range(9)]})),
         422, "invalid_request", param="items"),
    Case("prompt-too-long", body(vanilla({"prompt": BIG_TEXT, "response": "r"})), 422,
         "invalid_request", param="items[0].prompt"),
    Case("response-too-long", body(vanilla({"prompt": "p", "response": BIG_TEXT})), 422,
         "invalid_request", param="items[0].response"),
    Case("group-member-too-long",
         body(vanilla({"prompt": "p", "responses": ["a", "b", BIG_TEXT]})), 422,
         "invalid_request", param="items[0].responses[2]"),
    Case("reference-too-long", body(score(references=["a", BIG_TEXT])), 422, "invalid_request",
         param="items[0].references[1]"),
    Case("chat-prompt-too-long",
         body(vanilla({"messages": [{"role": "user", "content": "y" * 600},
                                    {"role": "assistant", "content": "z" * 600}],
                       "response": "r"})), 422, "invalid_request", param="items[0].messages"),
    Case("too-many-references", body(score(references=["a", "b", "c", "d", "e"])), 422,
         "invalid_request", param="items[0].references"),
    Case("registration-too-long", body({"items": [{"prompt": "p", "references": [BIG_TEXT]}]}),
         422, "invalid_request", param="items[0].references[0]", path="/v1/references"),
    # --- 422 or truncation: tokens, known only once tokenized ----------------------------------
    Case("too-many-tokens-error", body({**vanilla({"prompt": "p", "response": "w " * 300}),
                                         "truncation": "error"}), 422, "invalid_request",
         param="items[0].response", tokenizes=True, message="tokens"),
    Case("too-many-tokens-left", body(vanilla({"prompt": "w " * 300, "response": "end"})), 200,
         None, tokenizes=True),
    # --- not hostile: the near misses are served -----------------------------------------------
    Case("surrogate-pair", body(vanilla({"prompt": "\U0001f600", "response": "r \U0001f600"})),
         200, None, tokenizes=True),
    Case("escaped-backslash-u", rb'{"items": [{"prompt": "\\ud800", "response": "r"}], '
         rb'"shaping": {"method": "vanilla"}}', 200, None, tokenizes=True),
    Case("at-the-limits", body(vanilla(*[{"prompt": "p" * 1000, "response": str(i)}
                                         for i in range(8)])), 200, None, tokenizes=True),
]  # fmt: skip

# When one body breaks several limits, the cheapest check answers.
PRECEDENCE: list[Case] = [
    Case("too-large-and-not-utf8", b'{"items": "\xff' + b"x" * (1 << 20) + b'"}', 413,
         "payload_too_large"),
    Case("not-utf8-and-deep", b"\xff" + nested(10_000), 400, "bad_request", message="UTF-8"),
    Case("surrogate-and-too-many-items",
         body(vanilla(*[{"prompt": "\ud800", "response": str(i)} for i in range(9)])), 400,
         "bad_request", message="surrogate"),
    Case("nan-and-too-many-items", body(vanilla(*[{"prompt": "p", "response": str(i)}
                                                  for i in range(9)])).replace(
         b'"vanilla"}', b'"vanilla", "ceiling": NaN}'), 422, "invalid_request",
         param="shaping.ceiling"),
    Case("too-many-items-and-too-long", body(vanilla(*[{"prompt": BIG_TEXT, "response": "r"}
                                                       for i in range(9)])), 422,
         "invalid_request", param="items"),
]  # fmt: skip


@pytest.fixture(scope="module")
def app_and_counts(tokenizer) -> Iterator[tuple[TestClient, list[int]]]:
    """One app for the whole table, on a fake model whose encoder counts its calls."""
    model = fake_model(tokenizer, max_tokens=MAX_TOKENS)
    encoded: list[int] = []
    original = model.encoder.encode_many

    def counting(pairs: Any, **kw: Any) -> Any:
        encoded.append(len(pairs))
        return original(pairs, **kw)

    model.encoder.encode_many = counting  # type: ignore[method-assign]
    with TestClient(create_app(Settings(**LIMITS), models=[model])) as client:
        yield client, encoded


@pytest.fixture
def served(app_and_counts) -> tuple[TestClient, list[int]]:
    client, encoded = app_and_counts
    encoded.clear()
    return client, encoded


@pytest.mark.parametrize("case", CASES + PRECEDENCE, ids=lambda c: c.id)
def test_hostile_input(served, case: Case) -> None:
    client, encoded = served
    started = time.perf_counter()
    r = client.post(case.path, content=case.content, headers=case.headers)
    elapsed = time.perf_counter() - started
    assert r.status_code == case.status, r.text[:500]
    assert elapsed < 2.0, f"{case.id} took {elapsed:.2f}s"
    if case.type is None:
        assert "error" not in r.json()
    else:
        error = r.json()["error"]
        assert error["type"] == case.type
        if case.param is not None:
            assert error["param"] == case.param
        if case.message is not None:
            assert case.message.lower() in error["message"].lower()
        assert_clean(r.text)
    assert bool(encoded) == case.tokenizes, f"tokenizer calls: {encoded}"


def assert_clean(text: str) -> None:
    """An error body: no echo of the input, no paths, no traceback."""
    assert MARK not in text
    for leak in ("/work", "site-packages", "Traceback", 'File "', ".py", "\\ud8", "\\udc"):
        assert leak not in text, leak


def test_refusals_leave_the_service_serving(served, tokenizer) -> None:
    """After the whole table, a plain request is served, and with the right reward."""
    client, _ = served
    for case in CASES + PRECEDENCE:
        client.post(case.path, content=case.content, headers=case.headers)
    r = client.post("/v1/score", json=vanilla({"prompt": "p", "response": "r"}))
    assert r.status_code == 200
    expected = fake_reward(tokenizer, "p", "r")
    assert r.json()["results"][0]["reward"] == pytest.approx(expected, abs=1e-12)


def fake_reward(tokenizer: Any, prompt: str, response: str) -> float:
    from service.models.encoding import PairEncoder

    encoder = PairEncoder(tokenizer, max_tokens=MAX_TOKENS)
    return checksum_reward(encoder.encode(prompt=prompt, response=response).input_ids)


# --- the tokenizer panics ---------------------------------------------------------------------
class FakePanic(BaseException):
    """Stands in for pyo3_runtime.PanicException (a BaseException, not an Exception)."""


class PanickingBackend:
    """A tokenizer backend that panics on one trigger word, like a Rust bug hit by an input."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.panics = 0

    def encode(self, text: str, **kw: Any) -> Any:
        if "PANIC" in text:
            self.panics += 1
            raise FakePanic("called `Option::unwrap()` on a `None` value")
        return self.inner.encode(text, **kw)

    def encode_batch_fast(self, texts: list[str], **kw: Any) -> Any:
        if any("PANIC" in text for text in texts):
            self.panics += 1
            raise FakePanic("called `Option::unwrap()` on a `None` value")
        return self.inner.encode_batch_fast(texts, **kw)


def test_a_tokenizer_panic_is_a_typed_error_and_the_next_request_works(
    make_client, tokenizer
) -> None:
    model = fake_model(tokenizer)
    backend = PanickingBackend(model.encoder._user_backend)
    model.encoder._user_backend = backend
    client = make_client([model], tokenizer_threads=1)  # one thread: the same one must survive
    bad = vanilla({"prompt": "p", "response": "fine"}, {"prompt": "p", "response": "PANIC now"})
    for _ in range(3):
        r = client.post("/v1/score", json=bad)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["type"] == "tokenizer_failed"
        assert error["param"] == "items[1].response"
        assert "FakePanic" in error["message"]
        assert "unwrap" not in error["message"] and "PANIC" not in error["message"]
    assert backend.panics == 6  # per request: the batch, then the pair named by the retry
    assert model.runner.batches == []  # nothing of a failed request reached the model
    good = client.post("/v1/score", json=vanilla({"prompt": "p", "response": "fine"}))
    assert good.status_code == 200
    assert good.json()["results"][0]["reward"] == pytest.approx(
        fake_reward(tokenizer, "p", "fine"), abs=1e-12
    )


def test_a_tokenizer_panic_in_registration_is_typed_too(make_client, tokenizer) -> None:
    model = fake_model(tokenizer)
    model.encoder._user_backend = PanickingBackend(model.encoder._user_backend)
    client = make_client([model])
    r = client.post("/v1/references", json={"items": [{"prompt": "p", "references": ["PANIC"]}]})
    assert r.status_code == 422 and r.json()["error"]["type"] == "tokenizer_failed"
    r = client.post("/v1/references", json={"items": [{"prompt": "p", "references": ["ok"]}]})
    assert r.status_code == 200
