"""Typed results: small frozen dataclasses mirroring the service's JSON responses. Requests
are plain dicts in the service's wire format (see the service README), so nothing here has to
follow every new request field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A prompt is plain text, or a chat (the RM's chat template applies to it).
Prompt = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class ScoreResult:
    """One (prompt, response) pair. `reward` is the RM's raw logit; `shaped_reward` the
    value of the shaping method (PAR by default)."""

    reward: float
    shaped_reward: float
    reference_rewards: list[float]
    tokens: int
    truncated: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreResult:
        return cls(
            reward=float(data["reward"]),
            shaped_reward=float(data["shaped_reward"]),
            reference_rewards=[float(x) for x in data["reference_rewards"]],
            tokens=int(data["tokens"]),
            truncated=bool(data["truncated"]),
        )


@dataclass(frozen=True)
class Usage:
    pairs: int = 0
    tokens: int = 0
    reference_hits: int = 0
    reference_misses: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            pairs=int(data["pairs"]),
            tokens=int(data["tokens"]),
            reference_hits=int(data["reference_hits"]),
            reference_misses=int(data["reference_misses"]),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            pairs=self.pairs + other.pairs,
            tokens=self.tokens + other.tokens,
            reference_hits=self.reference_hits + other.reference_hits,
            reference_misses=self.reference_misses + other.reference_misses,
        )


@dataclass(frozen=True)
class ScoreResponse:
    """One result per pair, in the order of the items (a group gives one per response)."""

    model_version: str
    results: list[ScoreResult]
    usage: Usage
    shaping: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreResponse:
        return cls(
            model_version=str(data["model_version"]),
            results=[ScoreResult.from_json(r) for r in data["results"]],
            usage=Usage.from_json(data["usage"]),
            shaping=dict(data.get("shaping") or {}),
            run_id=data.get("run_id"),
        )

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.results]

    @property
    def shaped_rewards(self) -> list[float]:
        return [r.shaped_reward for r in self.results]


@dataclass(frozen=True)
class GroupScores:
    """`score_groups`' answer: one list of results per group, in order."""

    model_version: str
    groups: list[list[ScoreResult]]
    usage: Usage


@dataclass(frozen=True)
class ReferenceResult:
    prompt_key: str
    reference_rewards: list[float]
    stored: int  # how many of this item's references were new to the service's store

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceResult:
        return cls(
            prompt_key=str(data["prompt_key"]),
            reference_rewards=[float(x) for x in data["reference_rewards"]],
            stored=int(data["stored"]),
        )


@dataclass(frozen=True)
class ReferencesResponse:
    model_version: str
    results: list[ReferenceResult]
    usage: Usage

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferencesResponse:
        return cls(
            model_version=str(data["model_version"]),
            results=[ReferenceResult.from_json(r) for r in data["results"]],
            usage=Usage.from_json(data["usage"]),
        )

    @property
    def stored(self) -> int:
        """References new to the store (the rest were registered before)."""
        return sum(r.stored for r in self.results)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    active: bool
    info: dict[str, Any]


@dataclass(frozen=True)
class Models:
    active: str | None
    active_version: str | None
    models: list[ModelInfo]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Models:
        return cls(
            active=data.get("active"),
            active_version=data.get("active_version"),
            models=[
                ModelInfo(
                    name=str(m["name"]),
                    version=str(m["version"]),
                    active=bool(m["active"]),
                    info=dict(m.get("info") or {}),
                )
                for m in data["models"]
            ],
        )
