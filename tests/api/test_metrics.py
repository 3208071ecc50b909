"""/metrics and /v1/dashboard/data after real scoring traffic, in-process on the fake runner."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.models.encoding import PairEncoder
from tests.conftest import fake_model

VERSION = "fake-default"


def scrape(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics scrape: (name, labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def series(samples: dict, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def score(client: Any, body: dict) -> dict:
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    return r.json()


PAR_BODY = {
    "items": [
        {
            "prompt": "What is 2 + 2?",
            "responses": ["4", "It is four.", "5, I believe, after a long think."],
            "references": ["2 + 2 = 4.", "Four."],
        },
        {"prompt": "Name a colour.", "response": "Blue.", "references": ["Red."]},
    ],
    "run_id": "run-a",
}
MEANSTD_ITEMS = [{"prompt": "Say hi.", "responses": ["Hey.", "Yo.", "Good day."]}]


def test_metrics_count_what_was_scored(make_client, tokenizer) -> None:
    model = fake_model(tokenizer)
    client = make_client([model])
    par = score(client, PAR_BODY)  # 4 pairs, 3 references scored (misses)
    par_again = score(client, PAR_BODY)  # the same, references now cached (hits)
    vanilla = score(
        client,
        {
            "items": [{"prompt": "Say hi.", "responses": ["Hi!", "Hello there."]}],
            "shaping": {"method": "vanilla"},
            "run_id": "run-a",
        },
    )
    meanstd = score(
        client,
        {
            "items": MEANSTD_ITEMS,
            "shaping": {"method": "meanstd"},
            "run_id": "run-b",
        },
    )
    no_run = score(
        client, {"items": [{"prompt": "x", "response": "y"}], "shaping": {"method": "vanilla"}}
    )
    assert client.post("/v1/score", json={"items": []}).status_code == 422
    assert client.get("/v1/runs/run-b/stats").status_code == 200
    assert client.get("/no/such/route").status_code == 404

    m = scrape(client)
    v = VERSION
    # Shaped rewards: one observation per pair, per method and run label.
    shaped_count = "par_reward_shaped_count"
    assert value(m, shaped_count, model_version=v, run="run-a", method="par") == 8
    assert value(m, shaped_count, model_version=v, run="run-a", method="vanilla") == 2
    assert value(m, shaped_count, model_version=v, run="run-b", method="meanstd") == 3
    assert value(m, shaped_count, model_version=v, run="none", method="vanilla") == 1
    shaped_par = [r["shaped_reward"] for d in (par, par_again) for r in d["results"]]
    for le in ("0.3", "0.5", "0.7", "0.95", "1.0"):
        expected = sum(x <= float(le) for x in shaped_par)
        labels = {"model_version": VERSION, "run": "run-a", "method": "par", "le": le}
        assert value(m, "par_reward_shaped_bucket", **labels) == expected

    # Raw rewards: counts and cumulative buckets match the responses; the mean is a gauge
    # (no _sum: with negative values it would be no counter).
    run_a_raw = [r["reward"] for d in (par, par_again, vanilla) for r in d["results"]]
    assert value(m, "par_reward_raw_count", model_version=VERSION, run="run-a") == 10
    assert series(m, "par_reward_raw_sum") == []
    assert value(
        m, "par_reward_window_mean", model_version=VERSION, run="run-a", kind="raw"
    ) == pytest.approx(sum(run_a_raw) / 10)
    for le in ("-4.0", "-1.0", "0.0", "0.5", "1.0", "4.0", "+Inf"):
        expected = sum(x <= float(le) for x in run_a_raw)
        assert value(m, "par_reward_raw_bucket", model_version=v, run="run-a", le=le) == expected
    assert value(m, "par_reward_raw_count", model_version=VERSION, run="run-b") == 3
    assert value(m, "par_reward_raw_count", model_version=VERSION, run="none") == 1

    # References: each pair's references, once per pair (3 x 2 + 1 x 1 per PAR request).
    assert value(m, "par_reward_reference_count", model_version=VERSION, run="run-a") == 14
    refs = [x for d in (par, par_again) for r in d["results"] for x in r["reference_rewards"]]
    assert value(
        m, "par_reward_window_mean", model_version=VERSION, run="run-a", kind="reference"
    ) == pytest.approx(sum(refs) / 14)
    assert value(m, "par_store_reference_misses_total") == 3
    assert value(m, "par_store_reference_hits_total") == 3

    # Response lengths.
    encoder = PairEncoder(tokenizer, max_tokens=512)
    lengths = [
        encoder.encode(prompt=item["prompt"], response=resp).response_tokens
        for item in MEANSTD_ITEMS
        for resp in item["responses"]
    ]
    assert value(m, "par_response_length_tokens_count", model_version=VERSION, run="run-b") == 3
    assert value(m, "par_response_length_tokens_sum", model_version=VERSION, run="run-b") == sum(
        lengths
    )
    assert meanstd["usage"]["pairs"] == 3 and no_run["usage"]["pairs"] == 1

    # Serving: requests by route template and status, batches as the runner saw them.
    requests, latency = "par_http_requests_total", "par_http_request_duration_seconds_count"
    assert value(m, requests, route="/v1/score", method="POST", status="200") == 5
    assert value(m, requests, route="/v1/score", method="POST", status="422") == 1
    assert value(m, requests, route="/v1/runs/{run_id}/stats", method="GET", status="200") == 1
    assert value(m, requests, route="unmatched", method="GET", status="404") == 1
    assert value(m, latency, route="/v1/score", method="POST", status="200") == 5
    runner = model.runner
    assert value(m, "par_batch_size_count") == len(runner.batches)
    assert value(m, "par_batch_size_sum") == sum(len(b) for b in runner.batches)
    assert value(m, "par_batch_tokens_total", kind="real") == sum(
        len(s) for b in runner.batches for s in b
    )
    assert value(m, "par_batch_tokens_total", kind="padded") == sum(
        max(len(s) for s in b) * len(b) for b in runner.batches
    )
    assert value(m, "par_forward_seconds_count") == len(runner.batches)
    assert value(m, "par_queue_depth") == 0
    assert value(m, "par_queue_capacity") == 8192
    assert value(m, "par_store_operation_seconds_count", operation="lookup") == 2
    assert value(m, "par_store_errors_total", operation="lookup") == 0
    assert value(m, "par_store_up") == 1
    assert value(m, "par_model_info", name="default", version=v, kind="fake", active="true") == 1
    assert value(m, "par_model_swaps_total") == 0

    # No label carries text from a request.
    texts = {"What is 2 + 2?", "Name a colour.", "Say hi.", "x", "y", "4", "Blue."}
    for _, labels in m:
        assert not texts & {v for _, v in labels}


def test_run_labels_are_capped_and_the_rest_is_other(make_client) -> None:
    client = make_client(metrics_max_runs=3)
    for run in ("r1", "r2", "r3", "r4", "r5", "r1"):
        score(
            client,
            {
                "items": [{"prompt": "p", "response": f"answer for {run}"}],
                "shaping": {"method": "vanilla"},
                "run_id": run,
            },
        )
    score(client, {"items": [{"prompt": "p", "response": "q"}], "shaping": {"method": "vanilla"}})
    m = scrape(client)
    runs = {labels["run"]: labels for labels in series(m, "par_reward_raw_count")}
    assert set(runs) == {"r1", "r2", "r3", "other"}
    assert value(m, "par_reward_raw_count", model_version=VERSION, run="r1") == 2
    # r4, r5 and the request without a run (over the cap too) share one label.
    assert value(m, "par_reward_raw_count", model_version=VERSION, run="other") == 3
    data = client.get("/v1/dashboard/data").json()
    assert {k["run"] for k in data["keys"]} == {"r1", "r2", "r3", "other"}


# -- the dashboard's JSON, on a case computed by hand ------------------------------------------
PROMPT = "Rate this."
RESPONSES = ["ok", "fine answer here", "a much longer answer than the others", "no"]
RAW = [3.0, 1.0, 2.0, 4.0]  # what the runner returns for each response, in order
REFS = [0.0, 1.0]  # precomputed reference rewards


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture
def hand_client(make_client, tokenizer) -> tuple[Any, list[int]]:
    """An app whose runner returns RAW for RESPONSES; also the responses' token lengths."""
    encoder = PairEncoder(tokenizer, max_tokens=512)
    encoded = [encoder.encode(prompt=PROMPT, response=r) for r in RESPONSES]
    table = {tuple(e.input_ids): reward for e, reward in zip(encoded, RAW, strict=True)}
    model = fake_model(tokenizer, reward_fn=lambda ids: table[tuple(ids)])
    return make_client([model]), [e.response_tokens for e in encoded]


def test_dashboard_data_on_a_hand_computed_case(hand_client) -> None:
    client, lengths = hand_client
    body = {
        "items": [{"prompt": PROMPT, "responses": RESPONSES, "reference_rewards": REFS}],
        "run_id": "hand",
    }
    data = score(client, body)
    assert [r["reward"] for r in data["results"]] == RAW
    par = [(sigmoid(r - REFS[0]) + sigmoid(r - REFS[1])) / 2 for r in RAW]
    # PAR(4) = (s(4) + s(3)) / 2 = 0.967 is the one saturated value; PAR(3) = 0.917 is not.
    assert [p > 0.95 for p in par] == [False, False, False, True]

    d = client.get("/v1/dashboard/data", params={"run": "hand"}).json()
    assert d["model_version"] == VERSION and d["run"] == "hand"
    assert d["active_version"] == VERSION
    assert d["counts"] == {
        "samples": 4,
        "total_pairs": 4,
        "reference_samples": 8,
        "total_references": 8,
        "by_method": {"par": 4},
    }
    s = d["signals"]
    assert s["samples"] == 4 and s["par_samples"] == 4
    assert s["saturation_share"] == 0.25
    assert s["raw_mean"] == 2.5
    assert s["reference_mean"] == 0.5 and s["reference_std"] == 0.5
    assert s["drift_reference_std"] == pytest.approx((2.5 - 0.5) / 0.5)
    assert s["length_correlation"] == pytest.approx(np.corrcoef(lengths, RAW)[0, 1])

    h = d["histograms"]
    # Raw and reference share bins over [min, max] of both = [0, 4], 30 bins.
    assert h["raw"]["edges"] == pytest.approx(np.linspace(0, 4, 31).tolist())
    assert h["reference"]["edges"] == h["raw"]["edges"]
    assert sum(h["raw"]["counts"]) == 4 and h["raw"]["counts"][-1] == 1  # 4.0 in the last bin
    assert h["reference"]["counts"][0] == 4 and sum(h["reference"]["counts"]) == 8
    # PAR values live in [0, 1]: 20 bins of 0.05, the last one holding the saturated value.
    assert h["shaped"]["par"]["edges"] == pytest.approx(np.linspace(0, 1, 21).tolist())
    assert h["shaped"]["par"]["counts"][-1] == 1 and sum(h["shaped"]["par"]["counts"]) == 4
    assert sum(h["length"]["counts"]) == 4

    ts = d["series"]
    assert ts["pairs"] == [4]
    assert ts["raw_mean"] == [2.5] and ts["reference_mean"] == [0.5]
    assert ts["shaped_mean"] == [pytest.approx(sum(par) / 4)]
    assert ts["saturation_share"] == [0.25]
    assert ts["length_mean"] == [pytest.approx(sum(lengths) / 4)]
    assert sorted(zip(d["scatter"]["length"], d["scatter"]["reward"], strict=True)) == sorted(
        zip(lengths, RAW, strict=True)
    )
    assert [(m["model_version"], m["previous_version"]) for m in d["markers"]] == [(VERSION, None)]

    # The same signals as Prometheus gauges.
    m = scrape(client)
    labels = {"model_version": VERSION, "run": "hand"}
    assert value(m, "par_reward_saturation_share", **labels) == 0.25
    assert value(m, "par_reward_drift_reference_std", **labels) == pytest.approx(4.0)
    assert value(m, "par_reward_length_correlation", **labels) == pytest.approx(
        s["length_correlation"]
    )
    assert value(m, "par_reward_window_samples", **labels) == 4


def test_dashboard_data_defaults_unknown_keys_and_validation(make_client) -> None:
    client = make_client()
    empty = client.get("/v1/dashboard/data").json()
    assert empty["keys"] == [] and empty["counts"]["samples"] == 0
    assert empty["signals"]["saturation_share"] is None
    score(client, {"items": [{"prompt": "p", "response": "a"}], "shaping": {"method": "vanilla"}})
    score(
        client,
        {
            "items": [{"prompt": "p", "response": "b"}],
            "shaping": {"method": "vanilla"},
            "run_id": "z",
        },
    )
    latest = client.get("/v1/dashboard/data").json()
    assert latest["run"] == "z" and latest["counts"]["total_pairs"] == 1
    unknown = client.get("/v1/dashboard/data", params={"run": "never-seen"}).json()
    assert unknown["run"] == "never-seen" and unknown["counts"]["samples"] == 0
    bad = client.get("/v1/dashboard/data", params={"run": "bad run/id"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "run"
    schema = client.get("/openapi.json").json()
    assert "DashboardData" in schema["components"]["schemas"]
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "v1/dashboard/data" in page.text and "http" not in page.text.split("<script>")[1]


def test_a_model_swap_is_counted_and_marked(make_client, tokenizer) -> None:
    client = make_client()
    score(client, {"items": [{"prompt": "p", "response": "a"}], "shaping": {"method": "vanilla"}})
    # What a hot swap does to the registry: a new model becomes the active one.
    client.app.state.services.registry.add(fake_model(tokenizer, name="v2"))
    score(client, {"items": [{"prompt": "p", "response": "a"}], "shaping": {"method": "vanilla"}})
    m = scrape(client)
    assert value(m, "par_model_swaps_total") == 1
    assert value(m, "par_model_last_swap_timestamp_seconds") > 0
    assert value(m, "par_reward_raw_count", model_version="fake-v2", run="none") == 1
    assert value(m, "par_reward_raw_count", model_version=VERSION, run="none") == 1
    d = client.get("/v1/dashboard/data").json()
    assert d["model_version"] == "fake-v2"
    assert [(x["model_version"], x["previous_version"]) for x in d["markers"]] == [
        (VERSION, None),
        ("fake-v2", VERSION),
    ]


def test_metrics_can_be_turned_off(make_client) -> None:
    client = make_client(metrics_enabled=False)
    score(client, {"items": [{"prompt": "p", "response": "a"}], "shaping": {"method": "vanilla"}})
    for path in ("/metrics", "/dashboard", "/v1/dashboard/data"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    assert client.app.state.services.scorer.recorder is None


def test_each_app_has_its_own_registry(make_client) -> None:
    first, second = make_client(), make_client()
    score(first, {"items": [{"prompt": "p", "response": "a"}], "shaping": {"method": "vanilla"}})
    assert value(scrape(first), "par_reward_raw_count", model_version=VERSION, run="none") == 1
    assert series(scrape(second), "par_reward_raw_count") == []


def test_requests_answered_before_routing_keep_their_route(make_client) -> None:
    client = make_client(max_body_bytes=1024)
    big = {"items": [{"prompt": "p", "response": "x" * 4096}]}
    assert client.post("/v1/score", json=big).status_code == 413
    m = scrape(client)
    assert value(m, "par_http_requests_total", route="/v1/score", method="POST", status="413") == 1
