"""`make bench`: the service over HTTP against the in-process ceiling, same model, same work.

For each model (the demo RM and a ~40M-parameter Llama-style RM built from a config):
1. ceiling: a plain transformers forward in this process on pre-tokenized pairs, with the best
   batching we know in-process (all pairs sorted by length, batches under a padded-token
   budget; the budget is swept and the best one kept). Tokenization is not timed, so this is
   the strictest limit.
2. service, raw only: `python -m service` on the same model, 4 concurrent clients each sending
   batches of 64 pairs (8 prompts x 8 responses, method vanilla), over real HTTP.
3. service, PAR with cached references: the same after registering 2 references per prompt.
4. service, raw, on a second process with metrics off (what recording costs).
The four run in interleaved rounds (5 on the demo RM, 3 on the 40M one) and medians are
reported, because this shared machine drifts by 10-30% between runs a few seconds apart.
Every phase also records the host's CPU steal (time the hypervisor gave our vCPUs to someone
else, from /proc/stat): with steal in the tens of percent the ratios measure the host, not the
service, and the summary says so.
Prints pairs/s and the ratios, and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench.workload import Group, grpo_groups
from service.config import DEFAULT_CACHE_DIR
from service.models.encoding import PairEncoder, PairText
from tests.e2e.service_process import ServiceProcess

CLIENTS = 4
BATCH_PROMPTS = 8  # x 8 responses = 64 pairs per request
STEAL_WARNING = 0.05  # median steal above this: the numbers are not the service's


def host_cpu_ticks() -> tuple[int, int]:
    """(steal, total) ticks of all CPUs since boot, from /proc/stat; (0, 0) where absent."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return 0, 0
    values = [int(x) for x in fields]  # user nice system idle iowait irq softirq steal
    return (values[7] if len(values) > 7 else 0), sum(values)


def with_steal(measure_once: Callable[[], float]) -> tuple[float, float]:
    """The measurement, and the fraction of host CPU time stolen while it ran."""
    steal_before, total_before = host_cpu_ticks()
    value = measure_once()
    steal_after, total_after = host_cpu_ticks()
    total = total_after - total_before
    return value, (steal_after - steal_before) / total if total > 0 else 0.0


def models(cache_dir: Path) -> dict[str, Path]:
    from service.demo.build import ensure_demo_model
    from service.demo.factory import build_llama_40m

    demo = ensure_demo_model(cache_dir)
    big = cache_dir / "bench-llama-40m"
    if not (big / "config.json").is_file():
        build_llama_40m(big, demo)
    return {"demo": demo, "llama-40m": big}


# --- ceiling -------------------------------------------------------------------------------
def encode_all(model_dir: Path, groups: list[Group]) -> list[list[int]]:
    encoder = PairEncoder(AutoTokenizer.from_pretrained(model_dir), max_tokens=2048)
    pairs = [PairText(prompt=g.prompt, response=r) for g in groups for r in g.responses]
    return [e.input_ids for e in encoder.encode_many(pairs)]


def ceiling_pairs_per_s(model: Any, sequences: list[list[int]], budget: int) -> float:
    order = sorted(sequences, key=len)
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    for seq in order:
        if current and len(seq) * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(seq)
    batches.append(current)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            longest = len(batch[-1])
            ids = torch.zeros((len(batch), longest), dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            model(input_ids=ids, attention_mask=mask)
    return len(sequences) / (time.perf_counter() - start)


def load_ceiling_model(model_dir: Path) -> Any:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


def sweep_budgets(model: Any, sequences: list[list[int]], budgets: list[int]) -> dict[int, float]:
    ceiling_pairs_per_s(model, sequences[:32], 1024)  # warm-up
    probe = sequences[: max(64, len(sequences) // 4)]
    return {b: ceiling_pairs_per_s(model, probe, b) for b in budgets}


# --- service -------------------------------------------------------------------------------
def service_pairs_per_s(url: str, groups: list[Group], shaping: dict[str, Any]) -> float:
    requests = [
        {
            "items": [{"prompt": g.prompt, "responses": g.responses} for g in chunk],
            "shaping": shaping,
        }
        for chunk in (groups[i : i + BATCH_PROMPTS] for i in range(0, len(groups), BATCH_PROMPTS))
    ]
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    if not requests:
                        return
                    body = requests.pop()
                r = http.post("/v1/score", json=body)
                if r.status_code != 200:
                    failures.append(r.text[:200])

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[0]}")
    return sum(len(g.responses) for g in groups) / elapsed


def start_service(model_dir: Path, budget: int, *, metrics: bool) -> ServiceProcess:
    env = {"PAR_TOKEN_BUDGET": str(budget), "PAR_METRICS_ENABLED": "1" if metrics else "0"}
    return ServiceProcess(model=str(model_dir), env=env).start()


def register_references(url: str, groups: list[Group]) -> None:
    with httpx.Client(base_url=url, timeout=600) as http:
        for i in range(0, len(groups), 16):
            items = [{"prompt": g.prompt, "references": g.references} for g in groups[i : i + 16]]
            http.post("/v1/references", json={"items": items}).raise_for_status()


def measure(
    model_dir: Path,
    groups: list[Group],
    sequences: list[list[int]],
    budgets: list[int],
    rounds: int,
) -> dict[str, Any]:
    """Interleaved rounds of ceiling, service raw, service raw without metrics and service
    PAR, so slow drift of this shared machine hits all of them alike; medians are reported.
    Both services are started first and sit idle while the others run."""
    model = load_ceiling_model(model_dir)
    sweep = sweep_budgets(model, sequences, budgets)
    best = max(sweep, key=lambda b: sweep[b])
    recorded = start_service(model_dir, best, metrics=True)
    unrecorded = start_service(model_dir, best, metrics=False)
    runs: dict[str, list[float]] = {"ceiling": [], "raw": [], "raw_no_metrics": [], "par": []}
    steal: dict[str, list[float]] = {k: [] for k in runs}
    try:
        warm = groups[:BATCH_PROMPTS]
        for proc in (recorded, unrecorded):
            service_pairs_per_s(proc.url, warm, {"method": "vanilla"})
        register_references(recorded.url, groups)
        service_pairs_per_s(recorded.url, warm, {"method": "par"})
        phases: dict[str, Callable[[], float]] = {
            "ceiling": lambda: ceiling_pairs_per_s(model, sequences, best),
            "raw": lambda: service_pairs_per_s(recorded.url, groups, {"method": "vanilla"}),
            "raw_no_metrics": lambda: service_pairs_per_s(
                unrecorded.url, groups, {"method": "vanilla"}
            ),
            "par": lambda: service_pairs_per_s(recorded.url, groups, {"method": "par"}),
        }
        for _ in range(rounds):
            for name, phase in phases.items():
                value, stolen = with_steal(phase)
                runs[name].append(value)
                steal[name].append(stolen)
            print(
                f"  round: { {k: round(v[-1], 2) for k, v in runs.items()} } "
                f"steal { {k: f'{v[-1]:.0%}' for k, v in steal.items()} }",
                file=sys.stderr,
            )
    finally:
        recorded.stop()
        unrecorded.stop()
    median = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "token_budget": best,
        "ceiling_sweep_pairs_per_s": sweep,
        "rounds": runs,
        "ceiling_pairs_per_s": median["ceiling"],
        "service_raw_pairs_per_s": median["raw"],
        "service_par_pairs_per_s": median["par"],
        "service_raw_no_metrics_pairs_per_s": median["raw_no_metrics"],
        "metrics_cost": 1 - median["raw"] / median["raw_no_metrics"],
        "service_over_ceiling": median["raw"] / median["ceiling"],
        "service_over_ceiling_by_round": [
            r / c for r, c in zip(runs["raw"], runs["ceiling"], strict=True)
        ],
        "par_over_raw": median["par"] / median["raw"],
        "host_steal_by_round": steal,
        "host_steal_median": statistics.median(x for v in steal.values() for x in v),
    }


def overhead_pairs_per_s(tokenizer_dir: Path, groups: list[Group]) -> dict[str, float]:
    """The service's own cost: the same clients and workload against a model that costs
    nothing (the fake runner, reward 0), so HTTP, JSON, validation, tokenizing, batching and
    recording are all there is. Also the CPU the bench's own clients spent per pair."""
    argv = ["-m", "tests.e2e.fake_service", "--tokenizer", str(tokenizer_dir), "--zero-reward",
            "--max-tokens", "2048"]  # fmt: skip
    proc = ServiceProcess(argv=argv).start()
    try:
        service_pairs_per_s(proc.url, groups[:BATCH_PROMPTS], {"method": "vanilla"})
        before = os.times()
        rate = service_pairs_per_s(proc.url, groups, {"method": "vanilla"})
        after = os.times()
    finally:
        proc.stop()
    client_cpu = (after.user + after.system) - (before.user + before.system)
    pairs = sum(len(g.responses) for g in groups)
    return {"pairs_per_s": rate, "client_cpu_ms_per_pair": 1000 * client_cpu / pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--prompts", type=int, default=0, help="prompts per model (0 = auto)")
    parser.add_argument("--budgets", default="512,1024,2048,4096")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument(
        "--rounds", type=int, default=0, help="interleaved rounds, median kept (0 = 5 demo, 3 40M)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    results = {}
    for name, model_dir in models(args.cache_dir).items():
        if args.only and name not in args.only.split(","):
            continue
        n_prompts = args.prompts or (128 if name == "demo" else 12)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        groups = grpo_groups(tokenizer, n_prompts, seed=7)
        sequences = encode_all(model_dir, groups)
        lengths = [len(s) for s in sequences]
        print(
            f"[{name}] {len(sequences)} pairs, median {statistics.median(lengths):.0f} tokens",
            file=sys.stderr,
        )
        rounds = args.rounds or (5 if name == "demo" else 3)
        result = measure(model_dir, groups, sequences, budgets, rounds)
        results[name] = {
            "pairs": len(sequences),
            "median_tokens": statistics.median(lengths),
            **result,
        }
        if name == "demo":
            results[name]["no_op_model"] = overhead_pairs_per_s(model_dir, groups)
        print(json.dumps({name: results[name]}, indent=2), file=sys.stderr)
    print(
        f"\n{'model':<10} {'ceiling':>9} {'service':>9} {'PAR':>9} {'no-metr':>9} "
        f"{'svc/ceil':>9} {'PAR/raw':>8} {'metr cost':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<10} {r['ceiling_pairs_per_s']:>9.1f} {r['service_raw_pairs_per_s']:>9.1f} "
            f"{r['service_par_pairs_per_s']:>9.1f} "
            f"{r['service_raw_no_metrics_pairs_per_s']:>9.1f} {r['service_over_ceiling']:>9.2f} "
            f"{r['par_over_raw']:>8.2f} {r['metrics_cost']:>9.1%}"
        )
        stolen = r["host_steal_median"]
        print(
            f"{'':<10} host CPU steal during the rounds: median {stolen:.0%}"
            + (
                " -- over 5%: the hypervisor took CPU, these ratios measure the host as much "
                "as the service"
                if stolen > STEAL_WARNING
                else ""
            )
        )
        if "no_op_model" in r:
            no_op = r["no_op_model"]
            print(
                f"{'':<10} service on a no-op model (its own overhead): "
                f"{no_op['pairs_per_s']:.0f} pairs/s; bench client CPU "
                f"{no_op['client_cpu_ms_per_pair']:.3f} ms/pair"
            )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
