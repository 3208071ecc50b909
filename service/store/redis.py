"""The Redis store, shared by every replica.

Key layout (`P` = prefix, `pk` = prompt key, `V` = model version):

    P:prompts                 set    every registered prompt key (re-scoring after a swap)
    P:prompt:{pk}             hash   json -> canonical prompt JSON
    P:refs:{pk}               hash   ref_id -> reference text
    P:refs_order:{pk}         list   ref_ids in registration order (each once)
    P:scores:{V}:{pk}         hash   ref_id -> score, repr(float) (round-trips exactly)
    P:run:{run_id}            hash   {method}:count|mean|m2|min|max -> "%.17g" numbers
    P:merged:{token}          string a merge of run statistics was applied (30 s TTL)

Atomicity: registration and run-statistics merges are Lua scripts (one server-side step each),
so replicas racing on the same prompt or run never lose or duplicate anything. `lookup` is one
pipelined round trip however many prompts it is asked about.

Every Redis failure (unreachable, timeout, server error) becomes `StoreUnavailable`, chained
from the original; messages never carry the URL or credentials.

Failure budget, per call: a socket timeout of `timeout_s` (connect, read, write, and waiting
for a pooled connection), one retry on a dropped connection (a run-statistics merge carries a
token, so its retry finds it applied rather than applying it twice; and it carries a deadline,
so a server that runs it late does nothing), and a circuit breaker (`breaker.py`): after
`breaker_failures` failed calls in a row, calls fail at once for `breaker_cooldown_s`, then one
trial call decides. Lookups and writes go through a bounded in-process copy (`local_copy.py`),
which a failed lookup hands to the caller (`LookupUnavailable.known`).
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import StoreUnavailable
from service.scoring.running_stats import RunningStats
from service.store.base import (
    LookupUnavailable,
    PromptReferences,
    ReferenceScore,
    RegisteredPrompt,
)
from service.store.breaker import CircuitBreaker, CircuitOpen
from service.store.local_copy import LocalCopy

STAT_FIELDS = ("count", "mean", "m2", "min", "max")

# KEYS[1] = prompts set; then 3 keys per prompt: prompt hash, refs hash, refs order list.
# ARGV = per prompt: prompt_key, prompt_json, n, then n pairs (ref_id, text).
# Returns how many reference texts were new.
_REGISTER_LUA = """
local new = 0
local a = 1
local k = 2
local nargs = #ARGV
while a <= nargs do
  local pk = ARGV[a]
  local pj = ARGV[a + 1]
  local n = tonumber(ARGV[a + 2])
  a = a + 3
  redis.call('SADD', KEYS[1], pk)
  redis.call('HSETNX', KEYS[k], 'json', pj)
  for _ = 1, n do
    local rid = ARGV[a]
    if redis.call('HSETNX', KEYS[k + 1], rid, ARGV[a + 1]) == 1 then
      redis.call('RPUSH', KEYS[k + 2], rid)
      new = new + 1
    end
    a = a + 2
  end
  k = k + 3
end
return new
"""

# KEYS[1] = run hash, KEYS[2] = this merge's token key. ARGV = method, count, mean, m2, min,
# max of a non-empty batch, the deadline (see _LATE_LUA), the token's TTL in ms. Returns the
# merged statistics, or false when late. A merge whose token is there already was applied (its
# reply was lost with its connection): the retry returns the statistics instead of merging twice.
# Chan et al.'s parallel merge, the same expressions in the same order as
# RunningStats.merge (IEEE doubles both sides). Numbers are stored and returned as "%.17g"
# strings: exact round trip (Lua's tostring keeps only 14 digits, and a Lua number returned
# to Redis would be truncated to an integer).
_MERGE_STATS_LUA = """
local m = ARGV[1]
local fc, fmean, fm2, fmin, fmax = m .. ':count', m .. ':mean', m .. ':m2', m .. ':min', m .. ':max'
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.call('HMGET', KEYS[1], fc, fmean, fm2, fmin, fmax)
end
if _late(ARGV[7]) then return false end
local bn = tonumber(ARGV[2])
local bmean = tonumber(ARGV[3])
local bm2 = tonumber(ARGV[4])
local bmin = tonumber(ARGV[5])
local bmax = tonumber(ARGV[6])
local cur = redis.call('HMGET', KEYS[1], fc, fmean, fm2, fmin, fmax)
local an = tonumber(cur[1])
local n, mean, m2, mn, mx
if (not an) or an == 0 then
  n, mean, m2, mn, mx = bn, bmean, bm2, bmin, bmax
else
  local amean = tonumber(cur[2])
  local am2 = tonumber(cur[3])
  local amin = tonumber(cur[4])
  local amax = tonumber(cur[5])
  n = an + bn
  local delta = bmean - amean
  mean = amean + delta * bn / n
  m2 = am2 + bm2 + delta * delta * an * bn / n
  mn = amin
  if bmin < mn then mn = bmin end
  mx = amax
  if bmax > mx then mx = bmax end
end
local out = {
  string.format('%.17g', n), string.format('%.17g', mean), string.format('%.17g', m2),
  string.format('%.17g', mn), string.format('%.17g', mx)
}
redis.call('HSET', KEYS[1], fc, out[1], fmean, out[2], fm2, out[3], fmin, out[4], fmax, out[5])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[8])
return out
"""


# Prepended to the scripts that must not run late. A client gives up on a reply after its
# socket timeout and answers 503; a paused or stalled server may still run the command later,
# when it reads it from the socket. A merge of run statistics applied then would count a batch
# the client was told failed (and will send again); a reset applied then would wipe newer
# merges. So these scripts carry a deadline on the server's own clock and do nothing past it.
_LATE_LUA = """
local function _late(deadline_ms)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 > tonumber(deadline_ms)
end
"""

# KEYS[1] = run hash; ARGV[1] = deadline (ms, server clock). 1 if deleted, 0 if absent,
# false if late.
_RESET_STATS_LUA = """
if _late(ARGV[1]) then return false end
return redis.call('DEL', KEYS[1])
"""

CLOCK_REFRESH_S = 300.0  # how often the server clock's offset is measured again
MERGE_TOKEN_TTL_MS = 30_000  # long enough for the one retry of a merge


def _encode_score(score: ReferenceScore) -> str:
    # repr of a float is the shortest string that parses back to the same double
    return f"{float(score.reward)!r} {int(score.tokens)}"


def _decode_score(text: str) -> ReferenceScore:
    reward, _, tokens = text.partition(" ")
    return ReferenceScore(float(reward), int(tokens) if tokens else -1)


def _stats_from_strings(values: Sequence[str | None]) -> RunningStats:
    count, mean, m2, mn, mx = values
    if count is None or int(float(count)) == 0:
        return RunningStats()
    return RunningStats(
        count=int(float(count)),
        mean=float(mean or 0.0),
        m2=float(m2 or 0.0),
        min=float(mn) if mn is not None else float("inf"),
        max=float(mx) if mx is not None else float("-inf"),
    )


class RedisStore:
    """`ReferenceStore` on Redis (`redis.asyncio`), shared by replicas.

    One bounded connection pool per store: a request waits up to `timeout_s` for a free
    connection, then fails as `StoreUnavailable`. Socket connect/read/write timeouts are
    `timeout_s`. redis-py's own retries are off: operations are retried once here on a
    dropped connection, and only those that are safe to repeat (`idempotent`).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "par",
        timeout_s: float = 1.0,
        max_connections: int = 64,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 5.0,
        copy_size: int = 10_000,
    ) -> None:
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._breaker = CircuitBreaker(
            failure_threshold=breaker_failures, cooldown_s=breaker_cooldown_s
        )
        self._copy = LocalCopy(copy_size)
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis.from_pool(self._pool)
        self._register = self._redis.register_script(_REGISTER_LUA)
        self._merge_stats = self._redis.register_script(_LATE_LUA + _MERGE_STATS_LUA)
        self._reset_stats = self._redis.register_script(_LATE_LUA + _RESET_STATS_LUA)
        self._clock_offset_s: float | None = None  # server clock - local clock
        self._clock_measured = 0.0

    # --- keys ----------------------------------------------------------------------------
    def _k_prompts(self) -> str:
        return f"{self._prefix}:prompts"

    def _k_prompt(self, pk: str) -> str:
        return f"{self._prefix}:prompt:{pk}"

    def _k_refs(self, pk: str) -> str:
        return f"{self._prefix}:refs:{pk}"

    def _k_order(self, pk: str) -> str:
        return f"{self._prefix}:refs_order:{pk}"

    def _k_scores(self, version: str, pk: str) -> str:
        return f"{self._prefix}:scores:{version}:{pk}"

    def _k_run(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}"

    # --- error mapping -------------------------------------------------------------------
    async def _call(
        self, op: str, fn: Callable[[], Awaitable[Any]], *, idempotent: bool = True
    ) -> Any:
        """One store operation through the breaker: fails at once while it is open."""
        try:
            self._breaker.acquire()
        except CircuitOpen as e:
            raise StoreUnavailable(
                f"reference store (redis) unavailable: {self._breaker.consecutive_failures} "
                f"failed calls in a row, not trying again for {e.retry_after:.1f}s; retry later",
                retry_after=e.retry_after,
            ) from None
        try:
            result = await self._attempt(op, fn, idempotent=idempotent)
        except StoreUnavailable:
            self._breaker.failure()
            raise
        except BaseException:
            self._breaker.abandon()  # cancelled (client gone, deadline): no verdict on Redis
            raise
        self._breaker.success()
        return result

    async def _attempt(self, op: str, fn: Callable[[], Awaitable[Any]], *, idempotent: bool) -> Any:
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            try:
                return await fn()
            except RedisTimeoutError as e:
                raise StoreUnavailable(
                    f"reference store (redis) timed out during {op} "
                    f"(timeout {self._timeout_s:g}s); retry later"
                ) from e
            except RedisConnectionError as e:
                # Connection messages name host and port: keep only the class.
                if attempt + 1 < attempts:
                    continue
                raise StoreUnavailable(
                    f"reference store (redis) unreachable during {op} "
                    f"({type(e).__name__}); retry later"
                ) from e
            except ResponseError as e:
                # A server reply (OOM, READONLY, LOADING, script error): no URL or secret in it.
                first_line = str(e).splitlines()[0][:200] if str(e) else ""
                raise StoreUnavailable(
                    f"reference store (redis) refused {op}: {type(e).__name__}: {first_line}"
                ) from e
            except (RedisError, OSError) as e:
                raise StoreUnavailable(
                    f"reference store (redis) failed during {op} ({type(e).__name__})"
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    # --- references ----------------------------------------------------------------------
    async def lookup(
        self, model_version: str, prompt_keys: Sequence[str]
    ) -> dict[str, PromptReferences]:
        keys = list(dict.fromkeys(prompt_keys))
        if not keys:
            return {}

        async def run() -> list[object]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for pk in keys:
                    pipe.lrange(self._k_order(pk), 0, -1)
                    pipe.hgetall(self._k_scores(model_version, pk))
                return await pipe.execute()

        try:
            replies = await self._call("lookup", run)
        except StoreUnavailable as e:
            raise LookupUnavailable(
                e.message, known=self._copy.lookup(model_version, keys), retry_after=e.retry_after
            ) from e.__cause__
        out: dict[str, PromptReferences] = {}
        for i, pk in enumerate(keys):
            order = replies[2 * i]
            raw_scores = replies[2 * i + 1]
            assert isinstance(order, list) and isinstance(raw_scores, dict)
            out[pk] = PromptReferences(
                registered=tuple(order),
                scores={rid: _decode_score(s) for rid, s in raw_scores.items()},
            )
        self._copy.saw_lookup(model_version, out)
        return out

    async def reference_texts(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, str]]:
        asked = [(pk, list(ids)) for pk, ids in wanted.items()]
        out: dict[str, dict[str, str]] = {pk: {} for pk, _ in asked}
        asked = [(pk, ids) for pk, ids in asked if ids]
        if not asked:
            return out

        async def run() -> list[object]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for pk, ids in asked:
                    pipe.hmget(self._k_refs(pk), ids)
                return await pipe.execute()

        replies = await self._call("reference_texts", run)
        for (pk, ids), texts in zip(asked, replies, strict=True):
            assert isinstance(texts, list)
            out[pk] = {rid: t for rid, t in zip(ids, texts, strict=True) if t is not None}
        return out

    async def register(self, prompts: Sequence[RegisteredPrompt]) -> int:
        if not prompts:
            return 0
        keys: list[str] = [self._k_prompts()]
        args: list[str] = []
        for p in prompts:
            pk = p.prompt_key
            keys += [self._k_prompt(pk), self._k_refs(pk), self._k_order(pk)]
            args += [pk, p.prompt_json, str(len(p.references))]
            for rid, text in p.references.items():
                args += [rid, text]
        new = await self._call("register", lambda: self._register(keys=keys, args=args))
        for p in prompts:
            self._copy.saw_registration(p.prompt_key, list(p.references))
        return int(new)

    async def save_scores(
        self, model_version: str, scores: Mapping[str, Mapping[str, ReferenceScore]]
    ) -> None:
        todo = {pk: by_ref for pk, by_ref in scores.items() if by_ref}
        if not todo:
            return
        self._copy.saw_scores(model_version, todo)  # kept here even if Redis fails below

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for pk, by_ref in todo.items():
                    pipe.hset(
                        self._k_scores(model_version, pk),
                        mapping={rid: _encode_score(s) for rid, s in by_ref.items()},
                    )
                await pipe.execute()

        await self._call("save_scores", run)

    # --- prompts (re-scoring after a model swap) -----------------------------------------
    async def iter_prompt_keys(self, batch: int = 1000) -> AsyncIterator[str]:
        """Every registered prompt key, each once, scanned in batches (SSCAN)."""
        seen: set[str] = set()
        cursor: int = 0
        while True:
            scan = functools.partial(self._redis.sscan, self._k_prompts(), cursor, count=batch)
            cursor, members = await self._call("iter_prompt_keys", scan)
            for pk in members:
                if pk not in seen:
                    seen.add(pk)
                    yield pk
            if int(cursor) == 0:
                return

    async def all_prompt_keys(self) -> list[str]:
        return [pk async for pk in self.iter_prompt_keys()]

    async def prompt_json(self, prompt_key: str) -> str | None:
        json: str | None = await self._call(
            "prompt_json", lambda: self._redis.hget(self._k_prompt(prompt_key), "json")
        )
        return json

    # --- run statistics ------------------------------------------------------------------
    async def update_run_stats(self, run_id: str, method: str, batch: RunningStats) -> RunningStats:
        if batch.count == 0:
            return (await self.get_run_stats(run_id)).get(method, RunningStats())
        args = [
            method,
            str(int(batch.count)),
            repr(float(batch.mean)),
            repr(float(batch.m2)),
            repr(float(batch.min)),
            repr(float(batch.max)),
            await self._deadline_ms(),
            str(MERGE_TOKEN_TTL_MS),
        ]
        keys = [self._k_run(run_id), f"{self._prefix}:merged:{secrets.token_hex(12)}"]
        # The token makes the merge safe to retry on a dropped connection (see the script).
        reply = await self._call(
            "update_run_stats", lambda: self._merge_stats(keys=keys, args=args)
        )
        if reply is None:
            raise self._too_late("update_run_stats")
        return _stats_from_strings(reply)

    async def get_run_stats(self, run_id: str) -> dict[str, RunningStats]:
        raw: dict[str, str] = await self._call(
            "get_run_stats", lambda: self._redis.hgetall(self._k_run(run_id))
        )
        methods: dict[str, dict[str, str]] = {}
        for name, value in raw.items():
            method, _, stat = name.rpartition(":")
            methods.setdefault(method, {})[stat] = value
        return {
            m: _stats_from_strings([fields.get(f) for f in STAT_FIELDS])
            for m, fields in methods.items()
        }

    async def reset_run_stats(self, run_id: str) -> bool:
        deadline = await self._deadline_ms()
        deleted = await self._call(
            "reset_run_stats",
            lambda: self._reset_stats(keys=[self._k_run(run_id)], args=[deadline]),
        )
        if deleted is None:
            raise self._too_late("reset_run_stats")
        return int(deleted) > 0

    async def _deadline_ms(self) -> str:
        """Half the timeout from now, in ms on the server's clock: a script reaching the
        server later does nothing, and one run in time has the other half to answer. The
        clocks' offset is measured with TIME (to half a round trip) now and then."""
        now = time.monotonic()
        if self._clock_offset_s is None or now - self._clock_measured > CLOCK_REFRESH_S:
            sent = time.time()
            seconds, micros = await self._call("time", self._redis.time)
            received = time.time()
            self._clock_offset_s = seconds + micros / 1e6 - (sent + received) / 2
            self._clock_measured = now
        return f"{(time.time() + self._clock_offset_s + self._timeout_s / 2) * 1000:.0f}"

    def _too_late(self, op: str) -> StoreUnavailable:
        self._clock_offset_s = None  # measure again, in case a clock jumped
        return StoreUnavailable(
            f"reference store (redis) was too slow to run {op} (it was not applied); retry later"
        )

    # --- lifecycle -----------------------------------------------------------------------
    async def ping(self) -> None:
        await self._call("ping", self._redis.ping)

    def state(self) -> dict[str, str | int | float]:
        breaker = self._breaker
        return {
            "backend": "redis",
            "breaker": breaker.state,
            "consecutive_failures": breaker.consecutive_failures,
            "failures": breaker.failures,
            "rejected": breaker.rejected,
            "opened": breaker.opened,
            "copy_prompts": len(self._copy),
            "copy_served": self._copy.served,
        }

    async def close(self) -> None:
        """Close the client and disconnect every pooled connection."""
        await self._redis.aclose()
