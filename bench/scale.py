"""`make bench-scale`: throughput with 1, 2 and 3 replicas on one Redis, behind a client that
balances across them.

Three `python -m service` processes share one `redis-server` (the tests' throwaway server,
own port). For n = 1, 2, 3 the load goes to the first n replicas through one
`par_client.RewardClient` given their n base URLs (round robin per request), from 4 client
threads per replica, so each replica sees the same offered load as in `make bench`. Two
workloads, GRPO-shaped (8 responses per prompt): raw rewards (`vanilla`), and PAR with 2
references per prompt registered beforehand (all reference lookups are Redis hits).
Prints pairs/s and the ratios to one replica; writes bench/scale_results.json.

On a machine with fewer cores than replicas x torch threads, the replicas compete for the
same cores: see bench/SCALE.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from par_client import RewardClient
from transformers import AutoTokenizer

from bench.workload import Group, grpo_groups
from service.config import DEFAULT_CACHE_DIR
from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer

CLIENTS_PER_REPLICA = 4
BATCH_PROMPTS = 8  # x 8 responses = 64 pairs per request


def requests_of(groups: list[Group]) -> list[list[dict[str, Any]]]:
    return [
        [{"prompt": g.prompt, "responses": g.responses} for g in groups[i : i + BATCH_PROMPTS]]
        for i in range(0, len(groups), BATCH_PROMPTS)
    ]


def pairs_per_s(
    client: RewardClient, groups: list[Group], shaping: dict[str, Any], clients: int
) -> float:
    queue = requests_of(groups)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                items = queue.pop()
            client.score(items, shaping=shaping)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()  # re-raises a failed request
    elapsed = time.perf_counter() - start
    return sum(len(g.responses) for g in groups) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--model", default="demo", help="'demo' or a local RM directory")
    parser.add_argument("--prompts", type=int, default=48, help="prompts per measurement")
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--token-budget", type=int, default=1024)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS per replica (0 = torch's default: every core)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/scale_results.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]

    from service.demo.build import ensure_demo_model

    model_dir = ensure_demo_model(args.cache_dir) if args.model == "demo" else Path(args.model)
    groups = grpo_groups(AutoTokenizer.from_pretrained(model_dir), args.prompts, seed=7)
    pairs = sum(len(g.responses) for g in groups)

    redis_server = RedisServer().start()
    env = {
        "PAR_REDIS_URL": redis_server.url,
        "PAR_TOKEN_BUDGET": str(args.token_budget),
        "PAR_CACHE_DIR": str(args.cache_dir),
    }
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    replicas = [
        ServiceProcess(model=str(model_dir), env={**env, "PAR_REPLICA_ID": f"r{i}"})
        for i in range(max(counts))
    ]
    results: dict[str, Any] = {
        "conditions": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "model": str(model_dir),
            "pairs_per_measurement": pairs,
            "clients_per_replica": CLIENTS_PER_REPLICA,
            "token_budget": args.token_budget,
            "torch_threads": args.torch_threads or "default",
        },
        "replicas": {},
    }
    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(lambda p: p.start(), replicas))
        urls = [p.url for p in replicas]
        with RewardClient(urls) as client:
            client.register_references(
                [{"prompt": g.prompt, "references": g.references} for g in groups]
            )
            for url in urls:  # warm every replica (first forwards, tokenizer caches)
                with RewardClient(url) as one:
                    one.score(requests_of(groups)[0], shaping={"method": "vanilla"})
        for n in counts:
            clients = CLIENTS_PER_REPLICA * n
            with RewardClient(urls[:n], max_pairs_per_request=64) as client:
                raw = pairs_per_s(client, groups, {"method": "vanilla"}, clients)
                par = pairs_per_s(client, groups, {"method": "par"}, clients)
            results["replicas"][str(n)] = {"raw_pairs_per_s": raw, "par_pairs_per_s": par}
            print(f"[{n} replica(s)] raw {raw:.1f} pairs/s, PAR {par:.1f} pairs/s", file=sys.stderr)
    finally:
        for proc in replicas:
            proc.stop()
        redis_server.cleanup()

    base = results["replicas"][str(counts[0])]
    print(f"\n{'replicas':>8} {'raw':>9} {'PAR':>9} {'raw/1':>7} {'PAR/1':>7}")
    for n, r in results["replicas"].items():
        r["raw_ratio"] = r["raw_pairs_per_s"] / base["raw_pairs_per_s"]
        r["par_ratio"] = r["par_pairs_per_s"] / base["par_pairs_per_s"]
        print(
            f"{n:>8} {r['raw_pairs_per_s']:>9.1f} {r['par_pairs_per_s']:>9.1f} "
            f"{r['raw_ratio']:>7.2f} {r['par_ratio']:>7.2f}"
        )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
