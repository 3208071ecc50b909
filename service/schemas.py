"""Request and response models: the HTTP contract, validated and documented in one place.
Pydantic stops here: `ShapingRequest.to_spec()` and the scorer's own dataclasses carry the
values further in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.scoring.shaping import ShapingMethod, ShapingSpec

RUN_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
# Names and versions are identifiers, so an error naming one never echoes free text.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"


class _Strict(BaseModel):
    # Unknown fields are typos that would silently change nothing; NaN/Inf are never rewards.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ChatMessage(_Strict):
    role: str = Field(min_length=1, max_length=64, description="e.g. system, user, assistant")
    content: str


class _PromptFields(_Strict):
    prompt: str | None = Field(None, description="The prompt as plain text.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="The prompt as a chat; the RM's chat template applies."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> _PromptFields:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class ScoreItem(_PromptFields):
    """One prompt with one response, or a group of responses (GRPO), and optionally its
    references. Without references, those registered for the prompt are used."""

    response: str | None = Field(None, description="The policy's response.")
    responses: list[str] | None = Field(
        None,
        min_length=1,
        description="A group of responses to the same prompt (GRPO); "
        "one result per response, in order.",
    )
    references: list[str] | None = Field(
        None, min_length=1, description="Reference (SFT) responses, scored and cached."
    )
    reference_rewards: list[float] | None = Field(
        None, min_length=1, description="Precomputed reference rewards (raw RM scale)."
    )
    reference_lengths: list[int] | None = Field(
        None,
        description="Response tokens of each precomputed reference; needed only with "
        "a length penalty.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScoreItem:
        if (self.response is None) == (self.responses is None):
            raise ValueError("give exactly one of 'response' or 'responses'")
        if self.references is not None and self.reference_rewards is not None:
            raise ValueError("give 'references' or 'reference_rewards', not both")
        if self.reference_lengths is not None and (
            self.reference_rewards is None
            or len(self.reference_lengths) != len(self.reference_rewards)
        ):
            raise ValueError("'reference_lengths' needs one entry per 'reference_rewards' entry")
        return self


class ShapingRequest(_Strict):
    """How raw rewards become shaped rewards; see DESIGN.md for each method's formula."""

    method: ShapingMethod = Field("par", description="Shaping method.")
    max_references: int = Field(10, ge=1, le=1024, description="K: references used per prompt.")
    sigmoid_k: float = Field(1.0, gt=0, le=1e6, description="Slope of 'sigmoid'.")
    centered: bool = Field(False, description="sigmoid/tanh/fittedpoly: centre on references.")
    length_penalty: float = Field(
        0.0,
        ge=0,
        le=1e6,
        description="Subtracted per response token over 'free_tokens', "
        "from policy and reference rewards alike.",
    )
    free_tokens: int = Field(0, ge=0, description="Response tokens free of length penalty.")
    ceiling: float | None = Field(None, description="Rewards above it are cut to it.")

    def to_spec(self) -> ShapingSpec:
        return ShapingSpec(
            method=self.method,
            max_references=self.max_references,
            sigmoid_k=self.sigmoid_k,
            centered=self.centered,
            length_penalty=self.length_penalty,
            free_tokens=self.free_tokens,
            ceiling=self.ceiling,
        )


class ScoreRequest(_Strict):
    model: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Served model name; default the active one."
    )
    items: list[ScoreItem] = Field(min_length=1)
    shaping: ShapingRequest = Field(default_factory=ShapingRequest)  # type: ignore[arg-type]
    run_id: str | None = Field(
        None,
        pattern=RUN_ID_PATTERN,
        description="Scope of running statistics (stateful "
        "shapings) and dashboards, e.g. 'ppo-2026-11-21'.",
    )
    expected_model_version: str | None = Field(
        None,
        pattern=MODEL_VERSION_PATTERN,
        description="If set and the served version differs, 409 instead of scoring: a "
        "trainer never mixes two RMs in one step.",
    )
    truncation: Literal["left", "error"] | None = Field(
        None,
        description="Over-long pairs: cut the prompt from the left, or reject (422). "
        "Default: the server's setting.",
    )


class ScoreResult(BaseModel):
    reward: float = Field(description="Raw RM reward (logit, no activation).")
    shaped_reward: float
    reference_rewards: list[float] = Field(description="Raw rewards of the references used.")
    tokens: int = Field(description="Tokens the RM read for this pair.")
    truncated: bool


class ScoreUsage(BaseModel):
    pairs: int
    tokens: int
    reference_hits: int = Field(description="Reference scores served from the cache.")
    reference_misses: int = Field(description="Reference scores computed for this request.")


class ScoreResponse(BaseModel):
    model_version: str
    shaping: ShapingRequest
    run_id: str | None = None
    results: list[ScoreResult]
    usage: ScoreUsage


class ReferenceItem(_PromptFields):
    references: list[str] = Field(min_length=1, description="Reference (SFT) responses.")


class ReferencesRequest(_Strict):
    model: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Served model name; default the active one."
    )
    items: list[ReferenceItem] = Field(min_length=1)


class ReferenceResult(BaseModel):
    prompt_key: str
    reference_rewards: list[float] = Field(description="Scores of the references, in order.")
    stored: int = Field(description="How many of them were new to the store.")


class ReferencesResponse(BaseModel):
    model_version: str
    results: list[ReferenceResult]
    usage: ScoreUsage


class ModelInfo(BaseModel):
    name: str
    version: str
    active: bool
    info: dict[str, object]


class ModelsResponse(BaseModel):
    active: str | None
    active_version: str | None
    models: list[ModelInfo]
    swap: dict[str, object] = Field(
        default_factory=dict,
        description="Swap state: in progress, count, last error, and the background "
        "re-scoring of registered references for the active version (progress).",
    )


class RunStatsResponse(BaseModel):
    run_id: str
    stats: dict[str, dict[str, float | int | None]] = Field(
        description="Per stateful method: count, mean, m2, min, max, variance, std."
    )


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
