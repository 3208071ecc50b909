"""Client of the PAR reward service: `RewardClient`, `AsyncRewardClient`, typed results and
errors. Trainer adapters live in `par_client.trl` and `par_client.verl`; the CLI in
`par_client.cli` (`par-client`)."""

from par_client._core import DEFAULT_URL, RetryPolicy
from par_client.client import AsyncRewardClient, RewardClient
from par_client.errors import (
    AuthenticationError,
    ConnectionFailed,
    DeadlineExceeded,
    InvalidRequest,
    MissingReferences,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    RewardServiceError,
    ServerError,
    Unavailable,
    VersionMismatch,
)
from par_client.types import (
    GroupScores,
    ModelInfo,
    Models,
    ReferenceResult,
    ReferencesResponse,
    ScoreResponse,
    ScoreResult,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AsyncRewardClient",
    "AuthenticationError",
    "ConnectionFailed",
    "DeadlineExceeded",
    "GroupScores",
    "InvalidRequest",
    "MissingReferences",
    "ModelInfo",
    "Models",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ReferenceResult",
    "ReferencesResponse",
    "RequestTimeout",
    "RetryPolicy",
    "RewardClient",
    "RewardServiceError",
    "ScoreResponse",
    "ScoreResult",
    "ServerError",
    "Unavailable",
    "Usage",
    "VersionMismatch",
]
