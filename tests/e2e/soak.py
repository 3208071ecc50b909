"""A bounded soak (`make soak`, not CI): minutes of mixed load against a real service process
with a real Redis, sampling the process's memory (RSS), open file descriptors and threads, and
Redis's connected clients; they must stay flat once warm.

    python -m tests.e2e.soak --minutes 5 [--model demo] [--clients 8]

The load mixes what a long training run sends and what goes wrong around it: GRPO groups with
inline references, registered references, stateful shapings over many runs, registrations,
refusals (not JSON, too large, lone surrogates, NaN), clients that give up and disconnect,
metric scrapes and probes. By default the process serves the fake runner (the service's own
`serve`, no model to load, so the soak measures the service, not torch); `--model demo` soaks
`python -m service --model demo` instead.

Flat means: comparing the first third of the samples after warm-up with the last third, RSS
grows by less than max(10%, 40 MiB), descriptors by at most 8, threads by at most 4 and Redis
clients by at most 4. Any 5xx fails the soak too.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer

WARMUP_SHARE = 0.2


@dataclass
class Sample:
    at: float
    rss_mib: float
    fds: int
    threads: int
    redis_clients: int


def sample(pid: int, redis_client: redis.Redis, started: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    clients = int(redis_client.info("clients")["connected_clients"]) - 1  # not this one
    return Sample(time.monotonic() - started, rss_kib / 1024, fds, int(fields["Threads"]), clients)


class Traffic:
    """Client threads sending a weighted mix of requests until told to stop."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.seed = seed
        self.stop = threading.Event()
        self.statuses: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.statuses[f"{kind} {status}"] += 1

    def run(self, worker: int) -> None:
        rng = random.Random(self.seed + worker)
        kinds = [
            (self.group_inline, 30), (self.registered, 20), (self.stateful, 15),
            (self.register, 5), (self.hostile, 10), (self.disconnect, 5),
            (self.scrape, 5), (self.probe, 10),
        ]  # fmt: skip
        calls, weights = zip(*kinds, strict=True)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                call = rng.choices(calls, weights)[0]
                try:
                    call(client, rng)
                except httpx.HTTPError as exc:
                    self.count(call.__name__, type(exc).__name__)

    # -- the mix ------------------------------------------------------------------------------
    def group_inline(self, client: httpx.Client, rng: random.Random) -> None:
        n = rng.randrange(10_000)
        item = {
            "prompt": f"soak prompt {n % 500}",
            "responses": [f"answer {n}.{j} " + "word " * rng.randrange(5, 60) for j in range(8)],
            "references": [f"reference {n % 500}.{j}" for j in range(2)],
        }
        r = client.post("/v1/score", json={"items": [item]})
        self.count("group_inline", r.status_code)

    def registered(self, client: httpx.Client, rng: random.Random) -> None:
        p = rng.randrange(50)
        body = {"items": [{"prompt": f"registered {p}", "response": f"r {rng.random()}"}]}
        self.count("registered", client.post("/v1/score", json=body).status_code)

    def stateful(self, client: httpx.Client, rng: random.Random) -> None:
        body = {
            "items": [{"prompt": "s", "responses": [f"s {rng.random()}" for _ in range(4)]}],
            "shaping": {"method": rng.choice(["meanstd", "clip", "minmax"])},
            "run_id": f"soak-run-{rng.randrange(40)}",
        }
        self.count("stateful", client.post("/v1/score", json=body).status_code)

    def register(self, client: httpx.Client, rng: random.Random) -> None:
        p = rng.randrange(50)
        body = {
            "items": [{"prompt": f"registered {p}", "references": [f"ref {p}.{rng.randrange(3)}"]}]
        }
        self.count("register", client.post("/v1/references", json=body).status_code)

    def hostile(self, client: httpx.Client, rng: random.Random) -> None:
        bodies = [
            b"{not json",
            b'{"items": [{"prompt": "\\ud800", "response": "r"}]}',
            b'{"items": [{"prompt": "p", "response": "r", "reference_rewards": [NaN]}]}',
            b"[" * 5000 + b"]" * 5000,
            json.dumps({"items": [{"prompt": "p", "response": "x" * (17 << 20)}]}).encode(),
        ]
        body = rng.choice(bodies)
        r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
        self.count("hostile", r.status_code)

    def disconnect(self, client: httpx.Client, rng: random.Random) -> None:
        body = {"items": [{"prompt": "gone", "responses": [f"g {rng.random()}" for _ in range(16)]}],
                "shaping": {"method": "vanilla"}}  # fmt: skip
        try:
            with httpx.Client(base_url=self.url, timeout=0.02) as impatient:
                impatient.post("/v1/score", json=body)
            self.count("disconnect", "answered")
        except httpx.TimeoutException:
            self.count("disconnect", "gave up")

    def scrape(self, client: httpx.Client, rng: random.Random) -> None:
        self.count("scrape", client.get("/metrics").status_code)

    def probe(self, client: httpx.Client, rng: random.Random) -> None:
        self.count("probe", client.get(rng.choice(["/readyz", "/healthz"])).status_code)


def flat(samples: list[Sample]) -> list[str]:
    """What grew, comparing the first and last thirds of the samples after warm-up."""
    warm = samples[int(len(samples) * WARMUP_SHARE) :]
    third = max(1, len(warm) // 3)
    first, last = warm[:third], warm[-third:]

    def grew(name: str) -> float:
        return statistics.median(getattr(s, name) for s in last) - statistics.median(
            getattr(s, name) for s in first
        )

    problems = []
    rss_allowed = max(0.10 * statistics.median(s.rss_mib for s in first), 40.0)
    for name, allowed in (
        ("rss_mib", rss_allowed),
        ("fds", 8),
        ("threads", 4),
        ("redis_clients", 4),
    ):
        if grew(name) > allowed:
            problems.append(f"{name} grew by {grew(name):.1f} (allowed {allowed:.1f})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--model", choices=["fake", "demo"], default="fake")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="par-soak-"))
    with RedisServer() as server:
        env = {"PAR_REDIS_URL": server.url, "PAR_LOG_LEVEL": "warning"}
        if args.model == "fake":
            from service.demo.factory import synthetic_corpus, train_tokenizer

            tokenizer_dir = train_tokenizer(work, synthetic_corpus(3000, seed=1), vocab_size=1024)
            argv_ = ["-m", "tests.e2e.fake_service", "--tokenizer", str(tokenizer_dir),
                     "--seconds-per-token", "0.00002"]  # fmt: skip
            proc = ServiceProcess(argv=argv_, env=env)
        else:
            proc = ServiceProcess(model="demo", env=env)
        proc.start()
        assert proc.proc is not None
        traffic = Traffic(proc.url, args.seed)
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            for p in range(50):  # what the `registered` requests rely on
                refs = [f"ref {p}.{j}" for j in range(3)]
                client.post(
                    "/v1/references",
                    json={"items": [{"prompt": f"registered {p}", "references": refs}]},
                )
        threads = [
            threading.Thread(target=traffic.run, args=(i,), daemon=True)
            for i in range(args.clients)
        ]
        samples: list[Sample] = []
        redis_client = redis.Redis.from_url(server.url)
        started = time.monotonic()
        try:
            for t in threads:
                t.start()
            print(
                f"soak: {args.minutes:g} min, {args.clients} clients, model {args.model}, pid {proc.proc.pid}"
            )
            print(f"{'t (s)':>7} {'RSS MiB':>9} {'fds':>5} {'threads':>8} {'redis clients':>14}")
            while time.monotonic() - started < args.minutes * 60:
                s = sample(proc.proc.pid, redis_client, started)
                samples.append(s)
                print(
                    f"{s.at:7.0f} {s.rss_mib:9.1f} {s.fds:5d} {s.threads:8d} {s.redis_clients:14d}",
                    flush=True,
                )
                time.sleep(args.interval)
        finally:
            traffic.stop.set()
            for t in threads:
                t.join(120)
            redis_client.close()
            code = proc.stop()
    print("responses:", dict(sorted(traffic.statuses.items())))
    problems = flat(samples)
    server_errors = {k: v for k, v in traffic.statuses.items() if k.split()[-1].startswith("5")}
    if server_errors:
        problems.append(f"5xx answers: {server_errors}")
    if code != 0:
        problems.append(f"the service exited {code} on SIGTERM")
    if len(samples) < 6:
        problems.append("too few samples to judge; run longer")
    print("FLAT" if not problems else "NOT FLAT:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
