"""Scale-out: three service processes on loopback sharing one real Redis behave as one
service. References registered through one replica are cache hits on the others; a run's
running statistics after batches spread over all three are those of a single process given
the same batches in the same order."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PROMPTS = {
    "What is 17 + 25?": ["17 + 25 = 42.", "The answer is 42."],
    "Name a red fruit.": ["A strawberry is red.", "A cherry."],
    "Reply politely to: can you help me?": ["Of course, glad to help."],
}
# Six batches for one run; batch i goes to replica i % 3.
BATCHES = [
    [("What is 17 + 25?", ["42", "It is 51.", "17 + 25 = 42."])],
    [("Name a red fruit.", ["A banana.", "A strawberry is red."])],
    [("Reply politely to: can you help me?", ["No.", "Sure, happy to help!", "Maybe."])],
    [("What is 17 + 25?", ["I do not know."]), ("Name a red fruit.", ["Tomatoes are red."])],
    [("Name a red fruit.", ["A cherry is red.", "Grass.", "An apple can be red."])],
    [("What is 17 + 25?", ["Forty-two.", "41"])],
]


@pytest.fixture(scope="module")
def replicas(demo_dir: Path, demo_cache_dir: Path) -> Iterator[list[ServiceProcess]]:
    server = RedisServer().start()
    env = {"PAR_CACHE_DIR": str(demo_cache_dir), "PAR_REDIS_URL": server.url}
    procs = [ServiceProcess(env={**env, "PAR_REPLICA_ID": f"r{i}"}) for i in (1, 2, 3)]
    try:
        # Start (and stop) them together: each spends most of its start-up importing torch.
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda p: p.start(), procs))
        yield procs
    finally:
        with ThreadPoolExecutor(len(procs)) as pool:
            codes = list(pool.map(lambda p: p.stop(), procs))
        server.cleanup()
        assert codes == [0, 0, 0]


def post(proc: ServiceProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{proc.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_references_registered_on_one_replica_are_hits_on_the_others(
    replicas: list[ServiceProcess],
) -> None:
    first, second, third = replicas
    registered = post(
        first,
        "/v1/references",
        {"items": [{"prompt": p, "references": refs} for p, refs in PROMPTS.items()]},
    )
    ref_rewards = [x["reference_rewards"] for x in registered["results"]]
    body = {
        "items": [{"prompt": p, "responses": ["A reply.", "Another reply."]} for p in PROMPTS],
        "shaping": {"method": "par"},
    }
    answers = [post(proc, "/v1/score", body) for proc in (second, third)]
    for data in answers:
        assert data["model_version"] == registered["model_version"]
        # Hits count reference scores, per item: every registered reference, none computed.
        assert data["usage"]["reference_hits"] == sum(len(refs) for refs in PROMPTS.values())
        assert data["usage"]["reference_misses"] == 0
        got = [x["reference_rewards"] for x in data["results"]]
        assert got == [rewards for rewards in ref_rewards for _ in range(2)]
    # Same model, same pairs, same cached references: the two replicas agree exactly.
    assert answers[0]["results"] == answers[1]["results"]


def test_run_statistics_spread_over_replicas_equal_a_single_process(
    replicas: list[ServiceProcess],
) -> None:
    def body(batch: list[tuple[str, list[str]]], run_id: str) -> dict[str, Any]:
        return {
            "items": [{"prompt": p, "responses": rs} for p, rs in batch],
            "shaping": {"method": "meanstd"},
            "run_id": run_id,
        }

    spread = [
        post(replicas[i % 3], "/v1/score", body(batch, "spread-run"))
        for i, batch in enumerate(BATCHES)
    ]
    # The single process: one replica given every batch, in the same order, as another run.
    single = replicas[0]
    alone = [post(single, "/v1/score", body(batch, "alone-run")) for batch in BATCHES]

    for got, expected in zip(spread, alone, strict=True):
        got_raw = [x["reward"] for x in got["results"]]
        expected_raw = [x["reward"] for x in expected["results"]]
        assert got_raw == pytest.approx(expected_raw, abs=1e-6)
        # Each batch is shaped with the statistics of every batch before it plus itself,
        # wherever those were scored.
        got_shaped = [x["shaped_reward"] for x in got["results"]]
        expected_shaped = [x["shaped_reward"] for x in expected["results"]]
        assert got_shaped == pytest.approx(expected_shaped, abs=1e-6)

    single_stats = httpx.get(f"{single.url}/v1/runs/alone-run/stats").json()["stats"]
    assert single_stats["meanstd"]["count"] == sum(len(rs) for b in BATCHES for _, rs in b)
    for proc in replicas:
        stats = httpx.get(f"{proc.url}/v1/runs/spread-run/stats").json()["stats"]
        assert stats.keys() == single_stats.keys()
        for method, values in single_stats.items():
            assert stats[method] == pytest.approx(values, rel=1e-9, abs=1e-9), method
