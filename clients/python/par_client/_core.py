"""What the sync and async clients share: base-URL rotation, the retry policy, splitting
batches under `max_pairs_per_request` and putting the answers back together. No I/O here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tenacity
from tenacity.wait import wait_base

from par_client.errors import RETRYABLE
from par_client.types import Prompt, ScoreResponse, Usage

logger = logging.getLogger("par_client")

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429, 503 and refused connections: full-jitter exponential backoff
    (a random wait in [0, min(max_backoff_s, initial_backoff_s * 2**n)]), never shorter than
    the service's Retry-After (capped at `max_retry_after_s`). Other errors are raised at once."""

    max_attempts: int = 6
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 20.0
    max_retry_after_s: float = 60.0

    def tenacity_kwargs(self) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts),
            "wait": _WaitRetryAfter(self),
            "retry": tenacity.retry_if_exception_type(RETRYABLE),
            "reraise": True,
            "before_sleep": _log_retry,
        }


class _WaitRetryAfter(wait_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.jitter = tenacity.wait_random_exponential(
            multiplier=policy.initial_backoff_s, max=policy.max_backoff_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        backoff = self.jitter(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.policy.max_retry_after_s))


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
    logger.info("retrying in %.2fs (attempt %d): %s", wait, retry_state.attempt_number, exc)


class Endpoints:
    """Base URLs of a replica set, taken in turn (round robin). A URL that refused a
    connection sits out `cooldown_s` (tried last, not skipped: when all are down, the one
    that went down first is as good a guess as any)."""

    def __init__(self, urls: str | Sequence[str], *, cooldown_s: float = 5.0) -> None:
        listed = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [u.strip().rstrip("/") for u in listed if u.strip()]
        if not self.urls:
            raise ValueError("give at least one base URL, e.g. http://127.0.0.1:8000")
        self.cooldown_s = cooldown_s
        self._next = 0
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()  # sync clients may be shared by threads

    def order(self) -> list[str]:
        """Every URL once for one request: the next in turn first, those cooling down last."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.urls)
            now = time.monotonic()
            rotated = self.urls[start:] + self.urls[:start]
            up = [u for u in rotated if self._down_until.get(u, 0.0) <= now]
            down = sorted((u for u in rotated if u not in up), key=lambda u: self._down_until[u])
        return up + down

    def mark_down(self, url: str) -> None:
        with self._lock:
            self._down_until[url] = time.monotonic() + self.cooldown_s

    def mark_up(self, url: str) -> None:
        with self._lock:
            self._down_until.pop(url, None)


# --- requests ---------------------------------------------------------------------------------


def prompt_fields(prompt: Prompt) -> dict[str, Any]:
    """`{"prompt": text}` or `{"messages": [...]}` (only `role` and `content` are sent)."""
    if isinstance(prompt, str):
        return {"prompt": prompt}
    messages = []
    for m in prompt:
        content = m["content"]
        if not isinstance(content, str):
            raise ValueError(
                f"message content must be text, not {type(content).__name__}; "
                "multimodal messages are not supported"
            )
        messages.append({"role": m["role"], "content": content})
    return {"messages": messages}


def score_options(
    *,
    shaping: Mapping[str, Any] | None,
    run_id: str | None,
    model: str | None,
    expected_model_version: str | None,
    truncation: str | None,
) -> dict[str, Any]:
    """The request fields besides `items`; unset ones are left out (the service's defaults)."""
    options = {
        "shaping": dict(shaping) if shaping is not None else None,
        "run_id": run_id,
        "model": model,
        "expected_model_version": expected_model_version,
        "truncation": truncation,
    }
    return {k: v for k, v in options.items() if v is not None}


def pairs_of(item: Mapping[str, Any]) -> int:
    responses = item.get("responses")
    return len(responses) if isinstance(responses, list) else 1


def split_score_items(
    items: Sequence[Mapping[str, Any]], max_pairs: int
) -> list[list[dict[str, Any]]]:
    """Consecutive chunks of at most `max_pairs` pairs, in order. An item is kept whole when
    it fits in a chunk; a group larger than a chunk is cut into items with the same prompt
    and references, the first piece filling what is left of the current chunk (results are
    per pair, so the order is unchanged)."""
    if max_pairs < 1:
        raise ValueError("max_pairs_per_request must be at least 1")
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in items:
        n = pairs_of(item)
        if n <= max_pairs:
            if current and size + n > max_pairs:
                chunks.append(current)
                current, size = [], 0
            current.append(dict(item))
            size += n
            continue
        responses = item["responses"]
        start = 0
        while start < n:
            if size == max_pairs:
                chunks.append(current)
                current, size = [], 0
            piece = responses[start : start + max_pairs - size]
            current.append({**item, "responses": piece})
            size += len(piece)
            start += len(piece)
    if current or not chunks:
        chunks.append(current)  # an empty batch still goes out: the service says what is wrong
    return chunks


def split_reference_items(
    items: Sequence[Mapping[str, Any]], max_references: int
) -> list[list[dict[str, Any]]]:
    """Consecutive chunks of items holding at most `max_references` references (an item is
    never cut: the service scores one prompt's references together)."""
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in items:
        n = len(item.get("references") or ())
        if current and size + n > max_references:
            chunks.append(current)
            current, size = [], 0
        current.append(dict(item))
        size += n
    if current or not chunks:
        chunks.append(current)
    return chunks


def merge_score_responses(parts: Sequence[ScoreResponse]) -> ScoreResponse:
    """Chunks' answers as one, in chunk order (all from one model version: the clients pin
    the version of the first chunk for the others)."""
    usage = Usage()
    for part in parts:
        usage = usage + part.usage
    return ScoreResponse(
        model_version=parts[0].model_version,
        results=[r for part in parts for r in part.results],
        usage=usage,
        shaping=parts[0].shaping,
        run_id=parts[0].run_id,
    )


def group_items(
    prompts: Sequence[Prompt],
    groups: Sequence[Sequence[str]],
    references: Sequence[Sequence[str] | None] | None,
) -> list[dict[str, Any]]:
    if len(prompts) != len(groups):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} groups; give one per prompt")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"{len(references)} reference lists for {len(prompts)} prompts")
    items = []
    for i, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
        item = {**prompt_fields(prompt), "responses": list(group)}
        if references is not None and references[i] is not None:
            item["references"] = list(references[i] or ())
        items.append(item)
    return items
