"""Hot swap: load, check, activate, roll back and unload models while requests keep coming.

A swap is validate -> load on a side thread -> warm up -> check (finite rewards; the same
reward for a golden pair alone and inside a batch) -> swap the pointer -> drain requests
pinned to the replaced model -> free it on the model thread. Any failure before the pointer
moves leaves the old model serving, and says why. One swap at a time (409 for a second).
After a swap, registered references are re-scored in the background for the new version.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from service.batching.batcher import MicroBatcher
from service.config import Settings
from service.errors import Conflict, InvalidInput, ServiceError
from service.models.encoding import PairEncoder, PairText
from service.models.locations import validate_location
from service.models.registry import ModelRegistry, ServedModel
from service.models.torch_threads import run_on_own_thread
from service.scoring.scorer import Scorer
from service.store.base import ReferenceStore

logger = logging.getLogger(__name__)

Loader = Callable[[Settings, str, str], ServedModel]

# Golden pairs of the swap check: varied lengths so batch padding is exercised.
GOLDEN = [
    PairText(prompt="What is 2 + 2?", response="4"),
    PairText(prompt="Name a red fruit.", response="A strawberry is red and sweet."),
    PairText(
        prompt="Write one sentence about the sea.",
        response="The sea keeps moving under a grey sky while gulls circle over the harbour, "
        "waiting for the boats to come back with the morning catch.",
    ),
    PairText(prompt="Say hi.", response="Hi there!"),
]


class SwapInProgress(Conflict):
    type = "swap_in_progress"


class ModelCheckFailed(InvalidInput):
    type = "model_check_failed"


@dataclass
class RescoreProgress:
    version: str
    state: str = "pending"  # pending | running | done | failed
    prompts_total: int = 0
    prompts_done: int = 0
    references_scored: int = 0
    error: str | None = None


class ModelManager:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: ModelRegistry,
        batcher: MicroBatcher,
        scorer: Scorer,
        store: ReferenceStore,
        loader: Loader | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.batcher = batcher
        self.scorer = scorer
        self.store = store
        self.loader: Loader = loader or load_served_model
        self.swap_lock = asyncio.Lock()
        self.rescore: RescoreProgress | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- admin operations ----------------------------------------------------------------------
    async def load(self, name: str, location: str, *, activate: bool = True) -> ServedModel:
        """Load `location` as `name` (and make it active). A no-op when that version is
        already what `name` serves."""
        resolved = validate_location(location, self.settings)
        async with self._one_swap():
            try:
                # Not asyncio.to_thread: see torch_threads (a pooled thread that ran torch
                # slows every forward after it).
                model = await run_on_own_thread(self.loader, self.settings, name, resolved)
            except ServiceError as exc:
                self.last_error = exc.message
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("loading %s failed", name)
                raise ModelCheckFailed(
                    f"the model could not be loaded ({type(exc).__name__}); the previous "
                    "model keeps serving",
                    param="path",
                ) from None
            current = self._named(name)
            if current is not None and current.version == model.version:
                await self._free(model)
                if activate:
                    self.registry.activate(name)
                return current
            try:
                await self._check(model)
            except ModelCheckFailed as exc:
                self.last_error = exc.message
                await self._free(model)
                raise
            replaced = self.registry.add(model, activate=activate)
            self.swaps += 1
            self.last_error = None
            logger.info("model %s now serves version %s", name, model.version)
        if replaced is not None:
            self._spawn(self._retire(replaced))
        if activate:
            self._spawn(self._rescore(model))
        return model

    async def activate(self, name: str) -> ServedModel:
        async with self._one_swap():
            model = self.registry.activate(name)
        self._spawn(self._rescore(model))
        return model

    async def rollback(self) -> ServedModel:
        """Back to the model that was active before the last change: re-activated if it is
        still loaded, else reloaded from where it came from."""
        previous = self.registry.previous
        if previous is None:
            raise Conflict("there is no previous model to roll back to")
        name, location = previous
        models, _ = self.registry.list()
        loaded = next((m for m in models if m.name == name and m.location == location), None)
        if loaded is not None:
            return await self.activate(name)
        return await self.load(name, location)

    async def unload(self, name: str) -> None:
        async with self._one_swap():
            if self.registry.active_name == name:
                raise Conflict(
                    f"{name!r} is the active model; activate another one before unloading it"
                )
            model = self.registry.remove(name)
        await self._retire(model)

    def status(self) -> dict[str, object]:
        return {
            "swapping": self.swap_lock.locked(),
            "swaps": self.swaps,
            "last_error": self.last_error,
            "rescore": asdict(self.rescore) if self.rescore else None,
        }

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- steps -----------------------------------------------------------------------------
    def _one_swap(self) -> asyncio.Lock:
        if self.swap_lock.locked():
            raise SwapInProgress("another model change is in progress; retry when it is done")
        return self.swap_lock

    def _named(self, name: str) -> ServedModel | None:
        models, _ = self.registry.list()
        return next((m for m in models if m.name == name), None)

    async def _check(self, model: ServedModel) -> None:
        """Finite rewards, and batch invariance on the golden pairs, through the real batcher
        (the model is not visible to requests yet)."""
        encoded = await self.scorer.encode(model, GOLDEN, truncation="left")
        ids = [e.input_ids for e in encoded]
        deadline = time.monotonic() + 120
        try:
            together = await self.batcher.submit(model.runner, ids, deadline=deadline)
            alone = [
                (await self.batcher.submit(model.runner, [seq], deadline=deadline))[0]
                for seq in ids
            ]
        except ServiceError as exc:
            raise ModelCheckFailed(
                f"the model failed its check on golden pairs: {exc.message}", param="path"
            ) from None
        tolerance = 1e-3 if model.info.get("dtype") in (None, "float32") else 5e-2
        for a, b in zip(together, alone, strict=True):
            if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > tolerance * max(
                1.0, abs(b)
            ):
                raise ModelCheckFailed(
                    f"the model gives different rewards alone ({b:.6g}) and in a batch "
                    f"({a:.6g}); it would make rewards depend on batching",
                    param="path",
                )

    async def _retire(self, model: ServedModel) -> None:
        """Drain then free a model no longer in the table."""
        drained = await asyncio.to_thread(model.idle.wait, self.settings.drain_timeout_s)
        if not drained:
            logger.warning("freeing %s with %d requests still pinned", model.name, model.pins)
        await self._free(model)

    async def _free(self, model: ServedModel) -> None:
        # On the model thread: a runner is never closed under a forward in flight.
        await self.batcher.run_on_model_thread(model.runner.close)

    async def _rescore(self, model: ServedModel) -> None:
        progress = RescoreProgress(version=model.version, state="running")
        self.rescore = progress
        try:
            keys = await self.store.all_prompt_keys()
            progress.prompts_total = len(keys)
            for start in range(0, len(keys), 32):
                if self.registry.active() is not model:
                    progress.state = "superseded"
                    return
                chunk = keys[start : start + 32]
                progress.references_scored += await self.scorer.rescore_registered(model, chunk)
                progress.prompts_done += len(chunk)
            progress.state = "done"
        except Exception as exc:
            progress.state = "failed"
            progress.error = f"{type(exc).__name__}: {exc}"
            logger.exception("re-scoring references for %s failed", model.version)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def load_served_model(settings: Settings, name: str, location: str) -> ServedModel:
    """Load, warm up and wrap a model (blocking: run it off the event loop)."""
    from service.models.loaders import ModelSource, load_reward_model

    loaded = load_reward_model(
        ModelSource(
            location=location,
            head_index=settings.head_index,
            device=settings.device,
            dtype=settings.dtype,
            allow_pickle=settings.allow_pickle,
            trust_remote_code=settings.trust_remote_code,
            cache_dir=settings.cache_dir,
        )
    )
    loaded.runner.warmup()
    # The version also covers encoding settings that change what the RM reads.
    version = hashlib.sha256(
        f"{loaded.fingerprint}|max_tokens={settings.max_tokens}".encode()
    ).hexdigest()[:16]
    return ServedModel(
        name=name,
        version=version,
        runner=loaded.runner,
        encoder=PairEncoder(loaded.tokenizer, max_tokens=settings.max_tokens),
        location=location,
        info={
            "location": loaded.location,
            "kind": loaded.kind,
            "device": loaded.device,
            "dtype": loaded.dtype,
            "parameters": loaded.num_parameters,
            "max_tokens": settings.max_tokens,
        },
    )
