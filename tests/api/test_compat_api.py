"""OpenRLHF's `POST /get_reward`, in-process on the fake runner: how queries are split into
(prompt, response), the answer's shape, chunking past the per-request limit, and the errors.
The same protocol against the real demo RM over HTTP is in tests/clients/test_openrlhf.py."""

from __future__ import annotations

from typing import Any

import pytest

from service.models.encoding import PairEncoder
from service.models.fake import checksum_reward

PROMPTS = ["Name a red fruit.", "Say hi.", "Say hi."]
RESPONSES = [" A strawberry.", " Hello there.", " Go away."]


def raw(tokenizer: Any, prompt: str, response: str) -> float:
    encoder = PairEncoder(tokenizer, max_tokens=512)
    return checksum_reward(encoder.encode(prompt=prompt, response=response).input_ids)


def openrlhf_body(prompts: list[str], responses: list[str]) -> dict[str, Any]:
    """What OpenRLHF's `remote_rm_fn` posts: full texts, their prompts, and labels."""
    return {
        "query": [p + r for p, r in zip(prompts, responses, strict=True)],
        "prompts": prompts,
        "labels": ["" for _ in prompts],
    }


def test_the_response_is_what_follows_the_prompt(make_client, tokenizer) -> None:
    client = make_client()
    r = client.post("/get_reward?method=vanilla", json=openrlhf_body(PROMPTS, RESPONSES))
    assert r.status_code == 200, r.text
    data = r.json()
    expected = [raw(tokenizer, p, x) for p, x in zip(PROMPTS, RESPONSES, strict=True)]
    assert data["rewards"] == pytest.approx(expected, abs=1e-12)
    assert data["scores"] == data["rewards"]
    assert data["extra_logs"]["raw_reward"] == pytest.approx(expected, abs=1e-12)
    assert data["extra_logs"]["truncated"] == [0.0, 0.0, 0.0]


def test_decoded_special_tokens_before_the_prompt_are_skipped(make_client, tokenizer) -> None:
    client = make_client()
    body = {"query": ["<|bos|>Say hi. Hi!"], "prompts": ["Say hi."]}
    r = client.post("/get_reward?method=vanilla", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx([raw(tokenizer, "Say hi.", " Hi!")], abs=1e-12)


def test_without_prompts_the_whole_query_is_the_response(make_client, tokenizer) -> None:
    client = make_client()
    r = client.post("/get_reward?method=vanilla", json={"query": ["Say hi. Hi!"]})
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx([raw(tokenizer, "", "Say hi. Hi!")], abs=1e-12)


def test_a_batch_over_the_request_limit_is_scored_in_chunks_in_order(
    make_client, tokenizer
) -> None:
    client = make_client(max_items_per_request=2)
    prompts = [f"Prompt number {i}." for i in range(5)]
    responses = [f" Answer {i}." for i in range(5)]
    r = client.post("/get_reward?method=vanilla", json=openrlhf_body(prompts, responses))
    assert r.status_code == 200, r.text
    expected = [raw(tokenizer, p, x) for p, x in zip(prompts, responses, strict=True)]
    assert r.json()["rewards"] == pytest.approx(expected, abs=1e-12)


def test_par_uses_references_registered_for_the_prompt(make_client) -> None:
    client = make_client()
    reg = client.post(
        "/v1/references", json={"items": [{"prompt": "Say hi.", "references": ["Hi."]}]}
    )
    assert reg.status_code == 200, reg.text
    body = openrlhf_body(["Say hi."], [" Hello there."])
    r = client.post("/get_reward", json=body)
    assert r.status_code == 200, r.text
    expected = client.post(
        "/v1/score", json={"items": [{"prompt": "Say hi.", "response": " Hello there."}]}
    ).json()["results"][0]
    assert r.json()["rewards"] == [expected["shaped_reward"]]
    assert r.json()["extra_logs"]["raw_reward"] == [expected["reward"]]
    assert 0 < r.json()["rewards"][0] < 1


def test_errors_name_the_query(make_client) -> None:
    client = make_client()
    body = {"query": ["Say hi. Hi!", "Something else"], "prompts": ["Say hi.", "Say hi."]}
    r = client.post("/get_reward?method=vanilla", json=body)
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "query[1]"

    r = client.post("/get_reward?method=vanilla", json={"query": ["a", "b"], "prompts": ["a"]})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "prompts"

    # PAR without references is refused, never filled in.
    r = client.post("/get_reward", json=openrlhf_body(["Never registered."], [" x"]))
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "missing_references"

    r = client.post("/get_reward?method=nope", json={"query": ["x"]})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "method"

    r = client.post("/get_reward?metod=vanilla", json={"query": ["x"]})
    assert r.status_code == 422


def test_unknown_body_fields_from_newer_openrlhf_are_ignored(make_client) -> None:
    client = make_client()
    body = {**openrlhf_body(["Say hi."], [" Hi!"]), "metas": [{"turns": 1}]}
    r = client.post("/get_reward?method=vanilla", json=body)
    assert r.status_code == 200, r.text
