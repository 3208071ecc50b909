"""The models this process serves and which one is active.

Every request pins one model for its whole life (`pin`), so a reward and the reference rewards
it is compared with always come from the same model version. The pin count is what a hot swap
drains before it frees an old model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.errors import ModelNotFound, NotReady
from service.models.base import Runner
from service.models.encoding import PairEncoder


@dataclass(eq=False)
class ServedModel:
    """A loaded, warmed-up model ready to serve."""

    name: str
    version: str  # fingerprint of weights, tokenizer, chat template and scoring settings
    runner: Runner
    encoder: PairEncoder
    info: dict[str, Any] = field(default_factory=dict)
    pins: int = 0  # requests currently using it


class ModelRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._active: str | None = None

    def add(self, model: ServedModel, *, activate: bool = True) -> None:
        with self._lock:
            self._models[model.name] = model
            if activate or self._active is None:
                self._active = model.name

    @property
    def ready(self) -> bool:
        return self._active is not None

    def list(self) -> tuple[list[ServedModel], str | None]:
        with self._lock:
            return list(self._models.values()), self._active

    def get(self, name: str | None) -> ServedModel:
        with self._lock:
            return self._resolve(name)

    @contextmanager
    def pin(self, name: str | None = None) -> Iterator[ServedModel]:
        """The model a request uses from start to end. `None` or "default" = the active one."""
        with self._lock:
            model = self._resolve(name)
            model.pins += 1
        try:
            yield model
        finally:
            with self._lock:
                model.pins -= 1

    def _resolve(self, name: str | None) -> ServedModel:
        if self._active is None:
            raise NotReady("no model is loaded yet; retry when /readyz answers 200")
        if name is None or name == "default":
            return self._models[self._active]
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(
                f"no model named {name!r} is loaded (loaded: {known}); omit 'model' to use "
                "the active one",
                param="model",
            ) from None

    def close(self) -> None:
        with self._lock:
            models, self._models, self._active = list(self._models.values()), {}, None
        for model in models:
            model.runner.close()
