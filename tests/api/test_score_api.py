"""The HTTP contract of /v1/score and /v1/references, in-process on the fake runner."""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from typing import Any

import pytest

from service.models.encoding import PairEncoder, PairText
from service.models.fake import checksum_reward
from tests.conftest import fake_model


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def raw(tokenizer: Any, prompt: str, response: str, *, max_tokens: int = 512) -> float:
    """What the fake runner returns for a pair, computed independently of the service."""
    encoder = PairEncoder(tokenizer, max_tokens=max_tokens)
    return checksum_reward(encoder.encode(prompt=prompt, response=response).input_ids)


def test_score_returns_one_result_per_pair_in_order(make_client, tokenizer) -> None:
    client = make_client()
    body = {
        "items": [
            {"prompt": "Name a red fruit.", "response": "A strawberry."},
            {"prompt": "Say hi.", "responses": ["Hi!", "Hello there.", "Go away."]},
            {"messages": [{"role": "user", "content": "Say hi."}], "response": "Hey."},
        ],
        "shaping": {"method": "vanilla"},
    }
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model_version"] == "fake-default"
    assert data["shaping"]["method"] == "vanilla"
    expected = [
        raw(tokenizer, "Name a red fruit.", "A strawberry."),
        raw(tokenizer, "Say hi.", "Hi!"),
        raw(tokenizer, "Say hi.", "Hello there."),
        raw(tokenizer, "Say hi.", "Go away."),
        raw(tokenizer, "Say hi.", "Hey."),  # one-user-turn chat == plain prompt
    ]
    assert [x["reward"] for x in data["results"]] == pytest.approx(expected, abs=1e-12)
    assert [x["shaped_reward"] for x in data["results"]] == pytest.approx(expected, abs=1e-12)
    assert all(x["tokens"] > 0 and x["truncated"] is False for x in data["results"])
    assert data["usage"]["pairs"] == 5
    assert data["usage"]["tokens"] == sum(x["tokens"] for x in data["results"])


def test_identical_pairs_are_scored_once(make_client, tokenizer) -> None:
    model = fake_model(tokenizer)
    client = make_client([model])
    item = {"prompt": "p", "response": "same"}
    r = client.post(
        "/v1/score", json={"items": [item, item, item], "shaping": {"method": "vanilla"}}
    )
    assert r.status_code == 200
    assert len({x["reward"] for x in r.json()["results"]}) == 1
    assert sum(len(b) for b in model.runner.batches) == 1


def test_par_with_inline_references_then_cached(make_client, tokenizer) -> None:
    client = make_client()
    item = {"prompt": "q", "response": "mine", "references": ["ref one", "ref two"]}
    first = client.post("/v1/score", json={"items": [item]}).json()
    r = raw(tokenizer, "q", "mine")
    refs = [raw(tokenizer, "q", "ref one"), raw(tokenizer, "q", "ref two")]
    result = first["results"][0]
    assert result["reference_rewards"] == pytest.approx(refs, abs=1e-12)
    assert result["shaped_reward"] == pytest.approx(
        (sigmoid(r - refs[0]) + sigmoid(r - refs[1])) / 2, abs=1e-12
    )
    assert first["usage"]["reference_misses"] == 2
    assert first["usage"]["reference_hits"] == 0
    second = client.post("/v1/score", json={"items": [item]}).json()
    assert second["usage"]["reference_hits"] == 2
    assert second["usage"]["reference_misses"] == 0
    assert second["results"][0] == result


def test_registered_references_are_used_and_kept(make_client, tokenizer) -> None:
    client = make_client()
    reg = client.post(
        "/v1/references",
        json={"items": [{"prompt": "q2", "references": ["a", "b", "c"]}]},
    )
    assert reg.status_code == 200, reg.text
    reg_data = reg.json()
    assert reg_data["results"][0]["stored"] == 3
    refs = [raw(tokenizer, "q2", t) for t in ("a", "b", "c")]
    assert reg_data["results"][0]["reference_rewards"] == pytest.approx(refs, abs=1e-12)
    again = client.post(
        "/v1/references", json={"items": [{"prompt": "q2", "references": ["a", "d"]}]}
    ).json()
    assert again["results"][0]["stored"] == 1  # "a" was kept already
    assert again["usage"]["reference_hits"] == 1

    scored = client.post(
        "/v1/score",
        json={"items": [{"prompt": "q2", "response": "x"}], "shaping": {"max_references": 2}},
    ).json()
    result = scored["results"][0]
    assert result["reference_rewards"] == pytest.approx(refs[:2], abs=1e-12)  # registration order
    r = raw(tokenizer, "q2", "x")
    assert result["shaped_reward"] == pytest.approx(
        (sigmoid(r - refs[0]) + sigmoid(r - refs[1])) / 2, abs=1e-12
    )
    assert scored["usage"]["reference_hits"] == 2


def test_precomputed_reference_rewards(make_client, tokenizer) -> None:
    client = make_client()
    body = {"items": [{"prompt": "q", "response": "r", "reference_rewards": [0.5, -1.0]}]}
    result = client.post("/v1/score", json=body).json()["results"][0]
    r = raw(tokenizer, "q", "r")
    assert result["shaped_reward"] == pytest.approx(
        (sigmoid(r - 0.5) + sigmoid(r + 1.0)) / 2, abs=1e-12
    )


def test_missing_references_is_a_422_naming_the_items(make_client) -> None:
    client = make_client()
    body = {
        "items": [
            {"prompt": "has", "response": "x", "reference_rewards": [0.0]},
            {"prompt": "none-1", "response": "x"},
            {"prompt": "none-2", "responses": ["x", "y"]},
        ]
    }
    r = client.post("/v1/score", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "missing_references"
    assert error["param"] == "items[1]"
    assert "items[1]" in error["message"] and "items[2]" in error["message"]
    assert "items[0]" not in error["message"]


@pytest.mark.parametrize("method", ["vanilla", "sigmoid", "tanh", "fittedpoly"])
def test_stateless_methods(make_client, tokenizer, method) -> None:
    client = make_client()
    shaping = {"method": method, "sigmoid_k": 0.5}
    if method == "vanilla":
        shaping.pop("sigmoid_k")
    body = {"items": [{"prompt": "q", "response": "r"}], "shaping": shaping}
    data = client.post("/v1/score", json=body).json()
    r = raw(tokenizer, "q", "r")
    expected = {
        "vanilla": r,
        "sigmoid": sigmoid(0.5 * r),
        "tanh": math.tanh(r),
        "fittedpoly": sigmoid(r)
        if abs(r) > 4
        else 0.000376132953 * r**5 - 0.0132916611 * r**3 + 0.239537005 * r + 0.5,
    }[method]
    assert data["results"][0]["shaped_reward"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", ["centered", "lsc", "sigmoid", "tanh", "fittedpoly"])
def test_reference_methods(make_client, tokenizer, method) -> None:
    client = make_client()
    refs = [0.25, -0.75, 1.5]
    body = {
        "items": [{"prompt": "q", "response": "r", "reference_rewards": refs}],
        "shaping": {"method": method, "centered": True, "sigmoid_k": 2.0},
    }
    data = client.post("/v1/score", json=body).json()
    r = raw(tokenizer, "q", "r")
    mean = sum(refs) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in refs) / 3)

    def poly(x: float) -> float:
        if abs(x) > 4:
            return sigmoid(x)
        return 0.000376132953 * x**5 - 0.0132916611 * x**3 + 0.239537005 * x + 0.5

    expected = {
        "centered": sum(r - x for x in refs) / 3,
        "lsc": math.log(sigmoid(r - (mean + 1.0364333894937898 * std))),
        "sigmoid": sum(sigmoid(2.0 * (r - x)) for x in refs) / 3,
        "tanh": sum(math.tanh(r - x) for x in refs) / 3,
        "fittedpoly": sum(poly(r - x) for x in refs) / 3,
    }[method]
    assert data["results"][0]["shaped_reward"] == pytest.approx(expected, abs=1e-9)


def test_length_penalty_and_ceiling_apply_to_policy_and_references(make_client, tokenizer) -> None:
    client = make_client()
    encoder = PairEncoder(tokenizer, max_tokens=512)
    response, reference = "a long response with many words in it", "short"
    shaping = {"method": "centered", "length_penalty": 0.1, "free_tokens": 2, "ceiling": 3.0}
    body = {
        "items": [{"prompt": "q", "response": response, "references": [reference]}],
        "shaping": shaping,
    }
    result = client.post("/v1/score", json=body).json()["results"][0]

    def adjusted(text: str) -> float:
        enc = encoder.encode(prompt="q", response=text)
        value = checksum_reward(enc.input_ids) - 0.1 * max(0, enc.response_tokens - 2)
        return min(value, 3.0)

    assert result["shaped_reward"] == pytest.approx(adjusted(response) - adjusted(reference))
    # Precomputed references need their lengths for a penalty.
    body = {
        "items": [{"prompt": "q", "response": "r", "reference_rewards": [0.0]}],
        "shaping": shaping,
    }
    r = client.post("/v1/score", json=body)
    assert r.status_code == 422 and r.json()["error"]["param"] == "shaping.length_penalty"
    body["items"][0]["reference_lengths"] = [10]
    assert client.post("/v1/score", json=body).status_code == 200


def test_stateful_methods_keep_running_stats_per_run(make_client, tokenizer) -> None:
    client = make_client()
    batch1 = ["one", "two", "three"]
    batch2 = ["four", "five"]

    def post(method: str, responses: list[str], run: str = "run-a") -> list[float]:
        body = {
            "items": [{"prompt": "q", "responses": responses}],
            "shaping": {"method": method},
            "run_id": run,
        }
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
        return [x["shaped_reward"] for x in r.json()["results"]]

    r1 = [raw(tokenizer, "q", t) for t in batch1]
    r2 = [raw(tokenizer, "q", t) for t in batch2]
    post("meanstd", batch1)
    shaped = post("meanstd", batch2)
    values = r1 + r2
    mu = sum(values) / len(values)
    sigma = math.sqrt(max(sum((v - mu) ** 2 for v in values) / len(values), 1e-8))
    assert shaped == pytest.approx([(v - mu) / sigma for v in r2], abs=1e-9)

    # clip keeps its own statistics: only batch2 so far
    clipped = post("clip", batch2)
    mu2 = sum(r2) / 2
    s2 = math.sqrt(max(sum((v - mu2) ** 2 for v in r2) / 2, 1e-8))
    assert clipped == pytest.approx([min(max(v, mu2 - s2), mu2 + s2) for v in r2], abs=1e-9)

    minmax = post("minmax", batch1, run="run-b")
    lo, hi = min(r1), max(r1)
    assert minmax == pytest.approx([(v - lo) / (hi - lo) for v in r1], abs=1e-9)

    stats = client.get("/v1/runs/run-a/stats").json()["stats"]
    assert stats["meanstd"]["count"] == 5
    assert stats["meanstd"]["mean"] == pytest.approx(mu)
    assert stats["clip"]["count"] == 2
    assert client.delete("/v1/runs/run-a/stats").status_code == 200
    assert client.get("/v1/runs/run-a/stats").json()["stats"] == {}

    r = client.post(
        "/v1/score",
        json={"items": [{"prompt": "q", "response": "x"}], "shaping": {"method": "meanstd"}},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "run_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"items": [{"prompt": "p", "response": "r"}, {"prompt": "p"}]}, "items[1]"),
        ({"items": [{"prompt": "p", "response": 3}]}, "items[0].response"),
        ({"items": []}, "items"),
        ({"items": [{"prompt": "p", "response": "r", "typo": 1}]}, "items[0].typo"),
        (
            {"items": [{"prompt": "p", "response": "r"}], "shaping": {"method": "nope"}},
            "shaping.method",
        ),
        (
            {"items": [{"prompt": "p", "response": "r"}], "shaping": {"max_references": 0}},
            "shaping.max_references",
        ),
        ({"items": [{"prompt": "p", "response": "r"}], "run_id": "bad id!"}, "run_id"),
    ],
)
def test_invalid_input_is_a_422_naming_the_field(make_client, body, param) -> None:
    client = make_client()
    r = client.post("/v1/score", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["param"] == param
    assert error["message"]


def test_nan_and_infinity_are_rejected(make_client) -> None:
    client = make_client()
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = (
            f'{{"items": [{{"prompt": "p", "response": "r", "reference_rewards": [{literal}]}}]}}'
        )
        r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (literal, r.text)
        assert r.json()["error"]["param"] == "items[0].reference_rewards[0]"


def test_not_json_is_400_and_oversized_body_is_413(make_client) -> None:
    client = make_client(max_body_bytes=2048)
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request"
    big = {"items": [{"prompt": "p", "response": "x" * 4000}]}
    r = client.post("/v1/score", json=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def test_item_count_and_characters_are_limited(make_client) -> None:
    client = make_client(max_items_per_request=3, max_chars_per_item=10)
    r = client.post(
        "/v1/score",
        json={
            "items": [{"prompt": "p", "responses": ["a", "b", "c", "d"]}],
            "shaping": {"method": "vanilla"},
        },
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "items"
    r = client.post(
        "/v1/score",
        json={"items": [{"prompt": "p", "response": "x" * 11}], "shaping": {"method": "vanilla"}},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "items[0].response"


def test_truncation_left_keeps_the_response_end_and_error_rejects(make_client, tokenizer) -> None:
    model = fake_model(tokenizer, max_tokens=40)
    client = make_client([model])
    prompt = " ".join(f"word{i}" for i in range(60))
    body = {"items": [{"prompt": prompt, "response": "the end"}], "shaping": {"method": "vanilla"}}
    result = client.post("/v1/score", json=body).json()["results"][0]
    assert result["truncated"] is True and result["tokens"] == 40
    seen = model.runner.batches[-1][0]
    end_ids = tokenizer("the end", add_special_tokens=False).input_ids
    assert tokenizer.decode(seen).find("the end") >= 0
    assert any(seen[i : i + len(end_ids)] == end_ids for i in range(len(seen)))
    r = client.post("/v1/score", json={**body, "truncation": "error"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "items[0].response"


def test_special_token_strings_in_user_text_are_text(tokenizer) -> None:
    encoder = PairEncoder(tokenizer, max_tokens=512)
    eos = tokenizer.eos_token
    ids = encoder.encode_many([PairText(response=f"hi {eos}", prompt=f"{eos}")])[0].input_ids
    plain = encoder.encode(prompt="x", response="hi").input_ids
    # The template's own special tokens appear as often as in a pair without them in the text.
    assert ids.count(tokenizer.eos_token_id) == plain.count(tokenizer.eos_token_id)


def test_model_version_pin_and_unknown_model(make_client) -> None:
    client = make_client()
    item = {"prompt": "p", "response": "r"}
    ok = {
        "items": [item],
        "shaping": {"method": "vanilla"},
        "expected_model_version": "fake-default",
    }
    assert client.post("/v1/score", json=ok).status_code == 200
    r = client.post("/v1/score", json={**ok, "expected_model_version": "other"})
    assert r.status_code == 409 and r.json()["error"]["type"] == "model_version_mismatch"
    r = client.post("/v1/score", json={**ok, "model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    models = client.get("/v1/models").json()
    assert models["active_version"] == "fake-default"


def test_full_queue_answers_429_with_retry_after(make_client, tokenizer) -> None:
    gate = threading.Event()
    model = fake_model(tokenizer, block=gate)
    client = make_client([model], max_queue_items=2)
    batcher = client.app.state.services.batcher
    body = {"items": [{"prompt": "p", "responses": ["a", "b"]}], "shaping": {"method": "vanilla"}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, "/v1/score", json=body)
        deadline = time.monotonic() + 5
        while batcher.queued_items < 2:  # the first request holds the whole queue
            assert time.monotonic() < deadline
            time.sleep(0.005)
        r = client.post("/v1/score", json=body)
        gate.set()
        assert held.result().status_code == 200
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1


def test_health_and_readiness(make_client) -> None:
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
