"""Where a score request goes, step by step.

    Scorer.score(request)
      0. expand items into pairs (groups -> one pair per response), dedupe identical pairs
      1. pin the model version (registry): r and r_ref come from the same model
      2. resolve references per item: precomputed rewards, inline texts or registered ones;
         one store round trip for the cached scores; 422 before any work if some are missing
      3. encode policy pairs and unscored references on the tokenizer pool
      4. submit everything to the micro-batcher in one go (policy and reference pairs share
         forwards) and wait, under the request deadline
      5. cache the new reference scores
      6. shape (pure functions; stateful methods merge this batch into the run's statistics
         first, atomically in the store)
      7. record distributions and metrics (one call to the recorder)
      -> ScoreResponse, one result per pair, in order

`register_references` is the same pipeline without the policy side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.batching.batcher import MicroBatcher
from service.config import Settings
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    MissingReferences,
    ModelOutputError,
    ModelVersionMismatch,
    StoreUnavailable,
    TokenizerFailed,
)
from service.models.encoding import EncodedPair, PairEncoder, PairText
from service.models.registry import ModelRegistry, ServedModel
from service.schemas import (
    ReferenceResult,
    ReferencesRequest,
    ReferencesResponse,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    ScoreUsage,
)
from service.scoring import shaping
from service.scoring.running_stats import RunningStats
from service.store.base import (
    LookupUnavailable,
    PromptReferences,
    ReferenceScore,
    ReferenceStore,
    RegisteredPrompt,
)
from service.store.keys import canonical_prompt, prompt_key, ref_id

if TYPE_CHECKING:
    from service.monitoring.recorder import Recorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prompt:
    """A prompt as the store and the encoder see it."""

    key: str
    json: str
    text: str | None
    messages: list[dict[str, str]] | None

    @classmethod
    def of(cls, item: ScoreItem | object) -> _Prompt:
        text: str | None = getattr(item, "prompt", None)
        raw = getattr(item, "messages", None)
        messages = [m.model_dump() for m in raw] if raw is not None else None
        as_json = canonical_prompt(text, messages)
        return cls(prompt_key(as_json), as_json, text, messages)

    @classmethod
    def from_json(cls, as_json: str) -> _Prompt:
        """A prompt kept in the store (canonical JSON: a list of messages)."""
        return cls(prompt_key(as_json), as_json, None, json.loads(as_json))

    def pair(self, response: str, param: str) -> PairText:
        return PairText(response=response, prompt=self.text, messages=self.messages, param=param)


@dataclass
class _ItemReferences:
    """The references one item is shaped against: ids into the store (registered or inline),
    or precomputed values."""

    prompt: _Prompt
    ids: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # inline texts, by id
    precomputed: list[ReferenceScore] | None = None


class Scorer:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: ModelRegistry,
        store: ReferenceStore,
        batcher: MicroBatcher,
        tokenizer_pool: Executor,
        recorder: Recorder | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.batcher = batcher
        self.tokenizer_pool = tokenizer_pool
        self.recorder = recorder  # metrics and reward distributions; None = not recorded

    # ---------------------------------------------------------------------------------------
    async def score(self, request: ScoreRequest) -> ScoreResponse:
        deadline = time.monotonic() + self.settings.request_timeout_s
        spec = request.shaping.to_spec()
        self._check_limits(request.items)
        if shaping.is_stateful(spec) and request.run_id is None:
            raise InvalidInput(
                f"shaping method {spec.method!r} keeps running statistics per run; send a 'run_id'",
                param="run_id",
            )

        # 0. Pairs in response order; identical pairs are encoded and scored once.
        prompts = [_Prompt.of(item) for item in request.items]
        pair_item: list[int] = []  # pair index -> item index
        pair_texts: list[PairText] = []
        for i, (item, prompt) in enumerate(zip(request.items, prompts, strict=True)):
            if item.response is not None:
                pair_texts.append(prompt.pair(item.response, f"items[{i}].response"))
                pair_item.append(i)
            else:
                for j, response in enumerate(item.responses or ()):
                    pair_texts.append(prompt.pair(response, f"items[{i}].responses[{j}]"))
                    pair_item.append(i)
        unique: dict[tuple[str, str], int] = {}
        pair_slot = [
            unique.setdefault((prompts[pair_item[p]].json, t.response), len(unique))
            for p, t in enumerate(pair_texts)
        ]
        first_of_slot = {slot: p for p, slot in reversed(list(enumerate(pair_slot)))}
        unique_texts = [pair_texts[first_of_slot[s]] for s in range(len(unique))]

        # 1. Pin one model for the whole request.
        with self.registry.pin(request.model) as model:
            if (
                request.expected_model_version is not None
                and request.expected_model_version != model.version
            ):
                raise ModelVersionMismatch(
                    f"the served model version is {model.version}, not the expected "
                    f"{request.expected_model_version}; re-read GET /v1/models and restart "
                    "the step with the new version",
                    param="expected_model_version",
                )

            # 2. References, only when the method compares against them.
            item_refs: list[_ItemReferences] = []
            cached: dict[str, dict[str, ReferenceScore]] = {}
            if shaping.needs_references(spec):
                item_refs, cached = await self._resolve_references(
                    model, request.items, prompts, spec.max_references
                )
            to_score = _unscored(item_refs, cached)
            if to_score:
                await self._fill_registered_texts(item_refs, to_score)

            # 3 + 4. Encode and score policy pairs and missing references together.
            truncation = request.truncation or self.settings.truncation
            ref_jobs = _ref_jobs(item_refs, to_score)
            ref_pairs = [
                refs.prompt.pair(text, f"items[{i}].references") for (i, refs, text) in ref_jobs
            ]
            encoded = await self.encode(model, unique_texts + ref_pairs, truncation)
            rewards = await self._forward(model, encoded, deadline)
            policy_enc, ref_enc = encoded[: len(unique)], encoded[len(unique) :]
            policy_rewards, ref_rewards = rewards[: len(unique)], rewards[len(unique) :]

            # 5. Keep the new reference scores under this model version.
            new_scores: dict[str, dict[str, ReferenceScore]] = {}
            for (_, refs, text), enc, reward in zip(ref_jobs, ref_enc, ref_rewards, strict=True):
                score = ReferenceScore(reward=reward, tokens=enc.response_tokens)
                new_scores.setdefault(refs.prompt.key, {})[ref_id(text)] = score
            await self._keep_scores(model.version, new_scores)
            for key, scores in new_scores.items():
                cached.setdefault(key, {}).update(scores)

            # 6. Shape.
            raw = np.array([policy_rewards[s] for s in pair_slot], dtype=np.float64)
            lengths = np.array([policy_enc[s].response_tokens for s in pair_slot])
            references = [
                _reference_scores(item_refs[i], cached) if item_refs else [] for i in pair_item
            ]
            shaped = await self._shape(spec, raw, lengths, references, request.run_id)

        results = [
            ScoreResult(
                reward=float(raw[p]),
                shaped_reward=float(shaped[p]),
                reference_rewards=[r.reward for r in references[p]],
                tokens=policy_enc[pair_slot[p]].tokens,
                truncated=policy_enc[pair_slot[p]].truncated,
            )
            for p in range(len(pair_texts))
        ]
        reply = ScoreResponse(
            model_version=model.version,
            shaping=request.shaping,
            run_id=request.run_id,
            results=results,
            usage=ScoreUsage(
                pairs=len(results),
                tokens=sum(r.tokens for r in results),
                reference_hits=sum(len(r.ids) for r in item_refs) - len(ref_pairs),
                reference_misses=len(ref_pairs),
            ),
        )
        # 7. Record distributions and metrics: one vectorised call (service/monitoring/).
        if self.recorder is not None:
            self.recorder.record_score(
                model_version=model.version,
                run_id=request.run_id,
                method=spec.method,
                raw=raw,
                references=references,
                shaped=shaped,
                lengths=lengths,
                reference_hits=reply.usage.reference_hits,
                reference_misses=reply.usage.reference_misses,
            )
        return reply

    # ---------------------------------------------------------------------------------------
    async def register_references(self, request: ReferencesRequest) -> ReferencesResponse:
        """Keep reference texts per prompt (model-independent) and score them under the
        active model; already cached scores are not recomputed."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        for i, item in enumerate(request.items):
            self._check_references(item.references, f"items[{i}].references")
            self._check_prompt(item, f"items[{i}]")
        prompts = [_Prompt.of(item) for item in request.items]
        registered = [
            RegisteredPrompt(
                prompt_key=p.key,
                prompt_json=p.json,
                references={ref_id(t): t for t in item.references},
            )
            for p, item in zip(prompts, request.items, strict=True)
        ]
        with self.registry.pin(request.model) as model:
            # One lookup before registering tells both what is new (per prompt) and which
            # scores are cached; then one call registers everything.
            found = await self.store.lookup(model.version, [p.key for p in prompts])
            await self.store.register(registered)
            stored = _newly_stored(registered, found)
            cached = {key: dict(refs.scores) for key, refs in found.items()}
            jobs: list[tuple[_Prompt, str, str]] = []  # (prompt, text, param) to score
            seen: set[tuple[str, str]] = set()
            for i, (p, r) in enumerate(zip(prompts, registered, strict=True)):
                for rid, text in r.references.items():
                    if rid not in cached.get(p.key, {}) and (p.key, rid) not in seen:
                        seen.add((p.key, rid))
                        jobs.append((p, text, f"items[{i}].references"))
            new_scores, tokens = await self._score_references(model, jobs, deadline)
            for key, scores in new_scores.items():
                cached.setdefault(key, {}).update(scores)

        results = [
            ReferenceResult(
                prompt_key=p.key,
                reference_rewards=[cached[p.key][rid].reward for rid in r.references],
                stored=n,
            )
            for p, r, n in zip(prompts, registered, stored, strict=True)
        ]
        total = sum(len(r.references) for r in registered)
        return ReferencesResponse(
            model_version=model.version,
            results=results,
            usage=ScoreUsage(
                pairs=len(jobs),
                tokens=tokens,
                reference_hits=total - len(jobs),
                reference_misses=len(jobs),
            ),
        )

    # ---------------------------------------------------------------------------------------
    async def rescore_registered(self, model: ServedModel, prompt_keys: Sequence[str]) -> int:
        """Score, under `model`, the registered references of these prompts that it has no
        score for yet (after a swap: the texts were kept, only scores are per version).
        Returns how many were scored."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        found = await self.store.lookup(model.version, prompt_keys)
        wanted = {
            key: [rid for rid in refs.registered if rid not in refs.scores]
            for key, refs in found.items()
        }
        wanted = {key: ids for key, ids in wanted.items() if ids}
        if not wanted:
            return 0
        texts = await self.store.reference_texts(wanted)
        jobs: list[tuple[_Prompt, str, str]] = []
        for key, ids in wanted.items():
            as_json = await self.store.prompt_json(key)
            if as_json is None:
                continue
            prompt = _Prompt.from_json(as_json)
            jobs.extend((prompt, texts[key][rid], key) for rid in ids if rid in texts.get(key, {}))
        new_scores, _ = await self._score_references(model, jobs, deadline)
        return sum(len(v) for v in new_scores.values())

    async def _score_references(
        self, model: ServedModel, jobs: list[tuple[_Prompt, str, str]], deadline: float
    ) -> tuple[dict[str, dict[str, ReferenceScore]], int]:
        """Score (prompt, reference text) jobs and keep the scores under the model version.
        Returns the new scores and the tokens read."""
        pairs = [prompt.pair(text, param) for prompt, text, param in jobs]
        encoded = await self.encode(model, pairs, self.settings.truncation)
        rewards = await self._forward(model, encoded, deadline)
        new_scores: dict[str, dict[str, ReferenceScore]] = {}
        for (prompt, text, _), enc, reward in zip(jobs, encoded, rewards, strict=True):
            score = ReferenceScore(reward=reward, tokens=enc.response_tokens)
            new_scores.setdefault(prompt.key, {})[ref_id(text)] = score
        await self._keep_scores(model.version, new_scores)
        return new_scores, sum(e.tokens for e in encoded)

    async def _keep_scores(
        self, model_version: str, scores: dict[str, dict[str, ReferenceScore]]
    ) -> None:
        """Cache new reference scores. Best effort: they are right and already in this
        answer; a store that cannot take them now only means they are computed again."""
        if not scores:
            return
        try:
            await self.store.save_scores(model_version, scores)
        except StoreUnavailable as exc:
            logger.info("new reference scores not cached: %s", exc.message)

    # -- steps ------------------------------------------------------------------------------
    async def _resolve_references(
        self,
        model: ServedModel,
        items: Sequence[ScoreItem],
        prompts: Sequence[_Prompt],
        max_references: int,
    ) -> tuple[list[_ItemReferences], dict[str, dict[str, ReferenceScore]]]:
        """Which references each item is shaped against, and the cached scores of those in
        the store, fetched in one round trip. Raises MissingReferences naming every item
        without any, before anything is encoded or run."""
        out: list[_ItemReferences] = []
        for item, prompt in zip(items, prompts, strict=True):
            refs = _ItemReferences(prompt)
            if item.reference_rewards is not None:
                lengths = item.reference_lengths or [-1] * len(item.reference_rewards)
                refs.precomputed = [
                    ReferenceScore(reward=r, tokens=n)
                    for r, n in zip(item.reference_rewards, lengths, strict=True)
                ][:max_references]
            elif item.references is not None:
                for text in item.references:
                    rid = ref_id(text)
                    if rid not in refs.texts:
                        refs.texts[rid] = text
                        refs.ids.append(rid)
                refs.ids = refs.ids[:max_references]
            out.append(refs)
        keys = sorted({r.prompt.key for r in out if r.precomputed is None})
        try:
            found = await self.store.lookup(model.version, keys) if keys else {}
        except LookupUnavailable as exc:
            # The store is down. Inline references are scored here whatever it holds; items
            # that rely on registered ones need them from its in-process copy, or the whole
            # request is a retryable 503 (never a partial batch, never a made-up reference).
            needs_registered = {
                r.prompt.key
                for r, item in zip(out, items, strict=True)
                if r.precomputed is None and item.references is None
            }
            if not needs_registered <= exc.known.keys():
                raise
            found = {key: exc.known.get(key, PromptReferences()) for key in keys}
        for refs, item in zip(out, items, strict=True):
            if refs.precomputed is None and item.references is None:
                refs.ids = list(found[refs.prompt.key].registered[:max_references])
        missing = [f"items[{i}]" for i, r in enumerate(out) if not r.ids and not r.precomputed]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise MissingReferences(
                f"{len(missing)} item(s) have no references for a reference-based shaping "
                f"({shown}); register them with POST /v1/references, send 'references' or "
                "'reference_rewards' inline, or use a method without references (vanilla, "
                "meanstd, clip, minmax)",
                param=missing[0],
            )
        cached = {key: dict(found[key].scores) for key in keys}
        return out, cached

    async def _fill_registered_texts(
        self, item_refs: list[_ItemReferences], to_score: dict[str, set[str]]
    ) -> None:
        """Registered references without a score under this model (first use, or after a
        swap): fetch their texts, kept in the store independent of any model."""
        wanted: dict[str, list[str]] = {}
        for refs in item_refs:
            for rid in refs.ids:
                if rid in to_score.get(refs.prompt.key, ()) and rid not in refs.texts:
                    wanted.setdefault(refs.prompt.key, []).append(rid)
        if not wanted:
            return
        texts = await self.store.reference_texts(wanted)
        for refs in item_refs:
            for rid in refs.ids:
                if rid not in refs.texts and rid in texts.get(refs.prompt.key, {}):
                    refs.texts[rid] = texts[refs.prompt.key][rid]

    async def encode(
        self, model: ServedModel, pairs: list[PairText], truncation: str
    ) -> list[EncodedPair]:
        """Tokenize pairs for `model` (also the hot-swap check's golden pairs)."""
        if not pairs:
            return []
        loop = asyncio.get_running_loop()
        # The tokenizer runs on its pool, never on the event loop.
        return await loop.run_in_executor(
            self.tokenizer_pool, _encode_pairs, model.encoder, pairs, truncation
        )

    async def _forward(
        self, model: ServedModel, encoded: list[EncodedPair], deadline: float
    ) -> list[float]:
        if not encoded:
            return []
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self.batcher.submit(
                    model.runner, [e.input_ids for e in encoded], deadline=deadline
                )
        except TimeoutError:
            raise DeadlineExceeded(
                f"scoring did not finish within {self.settings.request_timeout_s:g}s; send "
                "smaller batches or retry when the service is less loaded"
            ) from None

    async def _shape(
        self,
        spec: shaping.ShapingSpec,
        raw: np.ndarray,
        lengths: np.ndarray,
        references: list[list[ReferenceScore]],
        run_id: str | None,
    ) -> np.ndarray:
        rewards = shaping.adjust_rewards(raw, lengths, spec)
        if shaping.needs_references(spec):
            if spec.length_penalty > 0 and any(r.tokens < 0 for refs in references for r in refs):
                raise InvalidInput(
                    "a length penalty needs the length of every reference; send "
                    "'reference_lengths' with 'reference_rewards'",
                    param="shaping.length_penalty",
                )
            width = max(len(refs) for refs in references)
            ref_matrix = np.zeros((len(references), width))
            ref_tokens = np.zeros((len(references), width))
            mask = np.zeros((len(references), width), dtype=bool)
            for row, refs in enumerate(references):
                ref_matrix[row, : len(refs)] = [r.reward for r in refs]
                ref_tokens[row, : len(refs)] = [max(r.tokens, 0) for r in refs]
                mask[row, : len(refs)] = True
            adjusted_refs = shaping.adjust_rewards(ref_matrix, ref_tokens, spec)
            shaped = shaping.shape(spec, rewards, references=adjusted_refs, mask=mask)
        elif shaping.is_stateful(spec):
            assert run_id is not None
            stats = await self.store.update_run_stats(
                run_id, spec.method, RunningStats.from_values(rewards)
            )
            shaped = shaping.shape(spec, rewards, stats=stats)
        else:
            shaped = shaping.shape(spec, rewards)
        if not np.all(np.isfinite(shaped)):
            raise ModelOutputError("shaping produced a non-finite value; check the rewards")
        return shaped

    # -- limits -----------------------------------------------------------------------------
    def _check_limits(self, items: Sequence[ScoreItem]) -> None:
        """Cheap checks before any tokenizing: counts and characters per item."""
        limit = self.settings.max_items_per_request
        pairs = sum(len(it.responses) if it.responses else 1 for it in items)
        if pairs > limit:
            raise InvalidInput(
                f"the request has {pairs} pairs, over the limit of {limit}; split it",
                param="items",
            )
        for i, item in enumerate(items):
            self._check_prompt(item, f"items[{i}]")
            if item.response is not None:
                self._check_texts([item.response], f"items[{i}].response", indexed=False)
            else:
                self._check_texts(item.responses or [], f"items[{i}].responses", indexed=True)
            if item.references is not None:
                self._check_references(item.references, f"items[{i}].references")

    def _check_prompt(self, item: object, param: str) -> None:
        prompt = getattr(item, "prompt", None)
        messages = getattr(item, "messages", None)
        size = len(prompt) if prompt is not None else sum(len(m.content) for m in messages or [])
        if size > self.settings.max_chars_per_item:
            raise InvalidInput(
                f"the prompt has {size} characters, over the limit of "
                f"{self.settings.max_chars_per_item}",
                param=f"{param}.prompt" if prompt is not None else f"{param}.messages",
            )

    def _check_texts(self, texts: Sequence[str], param: str, *, indexed: bool) -> None:
        """Characters per text; `indexed` names each text as `param[j]` (lists)."""
        limit = self.settings.max_chars_per_item
        for j, text in enumerate(texts):
            if len(text) > limit:
                name = f"{param}[{j}]" if indexed else param
                raise InvalidInput(
                    f"{name} has {len(text)} characters, over the limit of {limit}", param=name
                )

    def _check_references(self, texts: Sequence[str], param: str) -> None:
        self._check_texts(texts, param, indexed=True)
        if len(texts) > self.settings.max_references_per_prompt:
            raise InvalidInput(
                f"{len(texts)} references, over the limit of "
                f"{self.settings.max_references_per_prompt} per prompt",
                param=param,
            )


def _encode_pairs(
    encoder: PairEncoder, pairs: list[PairText], truncation: str
) -> list[EncodedPair]:
    """Encode on a tokenizer thread, all pairs in one call. A Rust tokenizer that panics
    raises pyo3's PanicException, a BaseException: it would slip past every `except Exception`
    up to the server (a bare 500, a log of Rust frames). Here it becomes a typed 422 naming
    the pair (found by encoding pair by pair); the pool thread and the tokenizer serve the
    next request."""
    try:
        return encoder.encode_many(pairs, truncation=truncation)  # type: ignore[arg-type]
    except (Exception, KeyboardInterrupt, SystemExit):
        raise  # ServiceErrors (over-long pairs) and ordinary bugs go their usual ways
    except BaseException:
        pass
    for pair in pairs:
        try:
            encoder.encode_many([pair], truncation=truncation)  # type: ignore[arg-type]
        except (Exception, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            logger.error("tokenizer panicked on %s: %s", pair.param, type(exc).__name__)
            raise TokenizerFailed(
                f"the tokenizer failed on {pair.param} ({type(exc).__name__}); this text "
                "cannot be encoded by this model's tokenizer, change or drop it",
                param=pair.param,
            ) from exc
    raise TokenizerFailed(  # failed together, never alone: no pair to blame
        "the tokenizer failed on this request's texts together; send the items in smaller requests",
        param="items",
    )


def _newly_stored(
    registered: list[RegisteredPrompt], before: dict[str, PromptReferences]
) -> list[int]:
    """How many references of each item were not registered before this request (an item
    repeating another's prompt only counts what the earlier one did not add)."""
    known = {key: set(refs.registered) for key, refs in before.items()}
    out = []
    for prompt in registered:
        seen = known.setdefault(prompt.prompt_key, set())
        new = [rid for rid in prompt.references if rid not in seen]
        seen.update(new)
        out.append(len(new))
    return out


def _unscored(
    item_refs: list[_ItemReferences], cached: dict[str, dict[str, ReferenceScore]]
) -> dict[str, set[str]]:
    """prompt key -> ids of references used by this request with no score yet."""
    out: dict[str, set[str]] = {}
    for refs in item_refs:
        for rid in refs.ids:
            if rid not in cached.get(refs.prompt.key, {}):
                out.setdefault(refs.prompt.key, set()).add(rid)
    return out


def _ref_jobs(
    item_refs: list[_ItemReferences], to_score: dict[str, set[str]]
) -> list[tuple[int, _ItemReferences, str]]:
    """Each unscored (prompt, reference) once: (item index, its references, text)."""
    jobs: list[tuple[int, _ItemReferences, str]] = []
    seen: set[tuple[str, str]] = set()
    for i, refs in enumerate(item_refs):
        for rid in refs.ids:
            key = (refs.prompt.key, rid)
            if rid in to_score.get(refs.prompt.key, ()) and key not in seen:
                seen.add(key)
                jobs.append((i, refs, refs.texts[rid]))
    return jobs


def _reference_scores(
    refs: _ItemReferences, cached: dict[str, dict[str, ReferenceScore]]
) -> list[ReferenceScore]:
    if refs.precomputed is not None:
        return refs.precomputed
    scores = cached.get(refs.prompt.key, {})
    return [scores[rid] for rid in refs.ids]
