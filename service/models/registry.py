"""The models this process serves and which one is active.

Every request pins one model for its whole life (`pin`), so a reward and the reference rewards
it is compared with always come from the same model version. A model replaced or unloaded is
first taken out of the table (no new pins), then drained (its pin count reaches zero), and
only then freed, on the model thread (see `ModelManager`).
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
    location: str = ""
    pins: int = 0  # requests currently using it
    idle: threading.Event = field(default_factory=threading.Event)  # set while pins == 0

    def __post_init__(self) -> None:
        self.idle.set()


class ModelRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._active: str | None = None
        self.previous: tuple[str, str] | None = None  # (name, location) active before

    def add(self, model: ServedModel, *, activate: bool = True) -> ServedModel | None:
        """Put `model` in the table (optionally active); returns the model it replaced under
        the same name, which the caller drains and frees."""
        with self._lock:
            replaced = self._models.get(model.name)
            self._models[model.name] = model
            if activate or self._active is None:
                self._set_active(model.name, replaced)
            return replaced

    def activate(self, name: str) -> ServedModel:
        with self._lock:
            model = self._resolve(name)
            self._set_active(model.name, None)
            return model

    def remove(self, name: str) -> ServedModel:
        with self._lock:
            model = self._resolve(name)
            del self._models[model.name]
            return model

    def _set_active(self, name: str, replaced: ServedModel | None) -> None:
        if self._active is not None and self._active != name:
            old = self._models.get(self._active)
            if old is not None:
                self.previous = (old.name, old.location)
        elif self._active == name and replaced is not None:
            self.previous = (replaced.name, replaced.location)
        self._active = name

    @property
    def ready(self) -> bool:
        return self._active is not None

    @property
    def active_name(self) -> str | None:
        return self._active

    def active(self) -> ServedModel | None:
        with self._lock:
            return self._models.get(self._active) if self._active else None

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
            model.idle.clear()
        try:
            yield model
        finally:
            with self._lock:
                model.pins -= 1
                if model.pins == 0:
                    model.idle.set()

    def _resolve(self, name: str | None) -> ServedModel:
        if self._active is None:
            raise NotReady("no model is loaded yet; retry when /readyz answers 200")
        if name is None or (name == "default" and "default" not in self._models):
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
