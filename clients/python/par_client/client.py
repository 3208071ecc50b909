"""`RewardClient` (sync) and `AsyncRewardClient`: the service's HTTP API with timeouts,
retries of 429/503/refused connections, batches split under `max_pairs_per_request` and put
back in order, and several base URLs taken in turn with failover.

Every request of one `score` call is scored by the same model version: the first chunk's
version is sent as `expected_model_version` with the others, so a hot swap half-way through
raises `VersionMismatch` instead of mixing two reward models in one batch."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import tenacity

from par_client._core import (
    DEFAULT_URL,
    Endpoints,
    RetryPolicy,
    group_items,
    merge_score_responses,
    score_options,
    split_reference_items,
    split_score_items,
)
from par_client.errors import ConnectionFailed, RequestTimeout, error_from_response
from par_client.types import (
    GroupScores,
    Models,
    Prompt,
    ReferencesResponse,
    ScoreResponse,
    Usage,
)

# Failing over to the next replica should not wait for a long connect timeout.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
# Longer than the service's own deadline (120 s by default), so a slow request ends with the
# service's typed 504 rather than a client-side timeout.
DEFAULT_TIMEOUT_S = 150.0


def _timeout(timeout_s: float, connect_timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))


def _regroup(response: ScoreResponse, sizes: Sequence[int]) -> GroupScores:
    groups, start = [], 0
    for n in sizes:
        groups.append(response.results[start : start + n])
        start += n
    return GroupScores(model_version=response.model_version, groups=groups, usage=response.usage)


def _merge_references(parts: Sequence[ReferencesResponse]) -> ReferencesResponse:
    usage = Usage()
    for part in parts:
        usage = usage + part.usage
    return ReferencesResponse(
        model_version=parts[0].model_version,
        results=[r for part in parts for r in part.results],
        usage=usage,
    )


def _checked(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise error_from_response(response)


class RewardClient:
    """Synchronous client. Use as a context manager, or call `close()`.

    `base_url` is one URL or several (replicas without a load balancer): requests take them
    in turn, and one that refuses a connection is skipped for the next (`ConnectionFailed`
    only when none answers, after the retries)."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_pairs_per_request: int = 512,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = Endpoints(base_url)
        self.max_pairs_per_request = max_pairs_per_request
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            timeout=_timeout(timeout_s, connect_timeout_s), headers=dict(headers or {})
        )

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- API ------------------------------------------------------------------------------------
    def score(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        shaping: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        expected_model_version: str | None = None,
        truncation: str | None = None,
    ) -> ScoreResponse:
        """Score items in the service's wire format (`{"prompt"|"messages", "response"|
        "responses", "references"?...}`): one result per pair, in order."""
        options = score_options(
            shaping=shaping,
            run_id=run_id,
            model=model,
            expected_model_version=expected_model_version,
            truncation=truncation,
        )
        parts: list[ScoreResponse] = []
        for chunk in split_score_items(items, self.max_pairs_per_request):
            pin = {"expected_model_version": parts[0].model_version} if parts else {}
            data = self._request("POST", "/v1/score", {**options, **pin, "items": chunk})
            parts.append(ScoreResponse.from_json(data))
        return merge_score_responses(parts)

    def score_groups(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[str]],
        *,
        references: Sequence[Sequence[str] | None] | None = None,
        shaping: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        expected_model_version: str | None = None,
    ) -> GroupScores:
        """GRPO-style: several responses per prompt; one list of results per group."""
        response = self.score(
            group_items(prompts, groups, references),
            shaping=shaping,
            run_id=run_id,
            model=model,
            expected_model_version=expected_model_version,
        )
        return _regroup(response, [len(g) for g in groups])

    def register_references(
        self, items: Sequence[Mapping[str, Any]], *, model: str | None = None
    ) -> ReferencesResponse:
        """Register reference responses (`{"prompt"|"messages", "references": [...]}`); the
        answer says how many were new (`stored`) and their rewards."""
        extra = {"model": model} if model is not None else {}
        parts = [
            ReferencesResponse.from_json(
                self._request("POST", "/v1/references", {**extra, "items": chunk})
            )
            for chunk in split_reference_items(items, self.max_pairs_per_request)
        ]
        return _merge_references(parts)

    def models(self) -> Models:
        return Models.from_json(self._request("GET", "/v1/models"))

    # -- transport ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in tenacity.Retrying(**self.retry.tenacity_kwargs()):
            with attempt:
                return self._send(method, path, body)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _send(self, method: str, path: str, body: Any) -> Any:
        refused: list[str] = []
        for url in self.endpoints.order():
            try:
                response = self._http.request(method, url + path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self.endpoints.mark_down(url)
                refused.append(f"{url}: {exc or type(exc).__name__}")
                continue
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {url}{path}: no answer in time ({exc})") from exc
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{method} {url}{path}: {exc}") from exc
            self.endpoints.mark_up(url)
            return _checked(response)
        raise ConnectionFailed("no base URL accepted a connection: " + "; ".join(refused))


class AsyncRewardClient:
    """Asynchronous client; the same API as `RewardClient`, awaited. The chunks of a large
    batch after the first go out concurrently (at most `max_concurrency` at once): the service
    batches requests from all clients together, so parallel chunks fill its forwards."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_pairs_per_request: int = 512,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = Endpoints(base_url)
        self.max_pairs_per_request = max_pairs_per_request
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            timeout=_timeout(timeout_s, connect_timeout_s), headers=dict(headers or {})
        )

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- API ------------------------------------------------------------------------------------
    async def score(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        shaping: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        expected_model_version: str | None = None,
        truncation: str | None = None,
    ) -> ScoreResponse:
        """See `RewardClient.score`."""
        options = score_options(
            shaping=shaping,
            run_id=run_id,
            model=model,
            expected_model_version=expected_model_version,
            truncation=truncation,
        )
        first, *rest = split_score_items(items, self.max_pairs_per_request)
        head = ScoreResponse.from_json(
            await self._request("POST", "/v1/score", {**options, "items": first})
        )
        # The first answer names the version; the other chunks must be scored by it too.
        pinned = {**options, "expected_model_version": head.model_version}
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(chunk: list[dict[str, Any]]) -> ScoreResponse:
            async with limit:
                data = await self._request("POST", "/v1/score", {**pinned, "items": chunk})
            return ScoreResponse.from_json(data)

        tail = await asyncio.gather(*(one(chunk) for chunk in rest))
        return merge_score_responses([head, *tail])

    async def score_groups(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[str]],
        *,
        references: Sequence[Sequence[str] | None] | None = None,
        shaping: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        expected_model_version: str | None = None,
    ) -> GroupScores:
        """See `RewardClient.score_groups`."""
        response = await self.score(
            group_items(prompts, groups, references),
            shaping=shaping,
            run_id=run_id,
            model=model,
            expected_model_version=expected_model_version,
        )
        return _regroup(response, [len(g) for g in groups])

    async def register_references(
        self, items: Sequence[Mapping[str, Any]], *, model: str | None = None
    ) -> ReferencesResponse:
        """See `RewardClient.register_references` (chunks go one after another)."""
        extra = {"model": model} if model is not None else {}
        parts = []
        for chunk in split_reference_items(items, self.max_pairs_per_request):
            data = await self._request("POST", "/v1/references", {**extra, "items": chunk})
            parts.append(ReferencesResponse.from_json(data))
        return _merge_references(parts)

    async def models(self) -> Models:
        return Models.from_json(await self._request("GET", "/v1/models"))

    # -- transport ------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        async for attempt in tenacity.AsyncRetrying(**self.retry.tenacity_kwargs()):
            with attempt:
                return await self._send(method, path, body)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _send(self, method: str, path: str, body: Any) -> Any:
        refused: list[str] = []
        for url in self.endpoints.order():
            try:
                response = await self._http.request(method, url + path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self.endpoints.mark_down(url)
                refused.append(f"{url}: {exc or type(exc).__name__}")
                continue
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {url}{path}: no answer in time ({exc})") from exc
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{method} {url}{path}: {exc}") from exc
            self.endpoints.mark_up(url)
            return _checked(response)
        raise ConnectionFailed("no base URL accepted a connection: " + "; ".join(refused))
