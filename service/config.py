"""The one settings object. Built once (from the environment, `PAR_*`, or a dict in tests) and
passed into `create_app`; nothing reads the environment anywhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "par-reward"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAR_", extra="forbid", frozen=True)

    # --- process -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address; loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    # --- model ---------------------------------------------------------------------------
    model: str = Field(
        "demo",
        description="RM to load at start: 'demo' (built and cached locally), a local "
        "directory, or a hub id.",
    )
    model_name: str = Field("default", description="Name the start-up model is served under.")
    head_index: int | None = Field(None, ge=0, description="Output column of a multi-head RM.")
    device: str = Field(
        "auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda:0'..."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="'auto' = bfloat16 on CUDA, float32 on CPU (fp32 is 5-7x faster "
        "than bf16 on CPUs without AMX).",
    )
    allow_pickle: bool = Field(False, description="Allow *.bin/*.pt weights (arbitrary code).")
    trust_remote_code: bool = Field(False, description="Allow a checkpoint's own model code.")
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="Where the demo RM is built.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads for CPU forwards; None = torch's default (one per "
        "core of the host). Set it to the container's CPU limit.",
    )

    # --- encoding ------------------------------------------------------------------------
    max_tokens: int = Field(2048, ge=8, description="Max tokens per (prompt, response) pair.")
    truncation: Literal["left", "error"] = Field(
        "left",
        description="Default policy for over-long pairs: cut the prompt from the left "
        "(the response end, where the RM reads, survives) or reject with 422.",
    )
    tokenizer_threads: int = Field(2, ge=1)
    tokenizer_parallelism: bool = Field(
        False,
        description="Let the Rust tokenizer spread a request's texts over every core. Off by "
        "default: on a CPU-only host its threads compete with torch's (-17% pairs/s on 2 "
        "cores); a GPU host with idle cores may turn it on.",
    )

    # --- batching ------------------------------------------------------------------------
    token_budget: int | None = Field(
        None,
        ge=16,
        description="Padded tokens per forward. None = per-device default "
        "(1024 on CPU, where small batches are fastest; 65536 on CUDA).",
    )
    max_batch_size: int = Field(256, ge=1)
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long the model thread waits for more items after the "
        "first arrives, when the queue holds less than one budget's worth.",
    )
    max_queue_items: int = Field(8192, ge=1, description="Admission limit (pairs queued).")
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline of a score request.")

    # --- limits --------------------------------------------------------------------------
    max_items_per_request: int = Field(1024, ge=1)
    max_chars_per_item: int = Field(65536, ge=1)
    max_references_per_prompt: int = Field(64, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)

    # --- store ---------------------------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis for references and run stats; unset = in-process store."
    )
    redis_prefix: str = "par"
    redis_timeout_s: float = Field(1.0, gt=0)
    redis_breaker_failures: int = Field(
        5, ge=1, description="Consecutive failed Redis calls that open the circuit breaker."
    )
    redis_breaker_cooldown_s: float = Field(
        5.0,
        gt=0,
        description="How long an open breaker answers 503 at once before one trial call.",
    )
    redis_copy_size: int = Field(
        10_000,
        ge=0,
        description="Prompts whose registrations and reference scores are kept in process "
        "(LRU), to serve registered references while Redis is down; 0 = none.",
    )

    # --- monitoring ----------------------------------------------------------------------
    metrics_enabled: bool = Field(
        True,
        description="Prometheus metrics, reward distributions and the dashboard (turn off "
        "only to measure what recording costs).",
    )
    metrics_max_runs: int = Field(
        20,
        ge=1,
        description="Distinct run labels in metrics and dashboards; the rest share one.",
    )

    # --- access ----------------------------------------------------------------------------
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer keys for every route but /healthz, /readyz and /metrics (JSON "
        "list in the environment); empty = no key needed. Admin routes take the admin token.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed by CORS (JSON list, explicit origins only); "
        "empty = no CORS headers at all.",
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, keep serving this long with /readyz failing, so load "
        "balancers stop routing here first; then finish in-flight requests and exit.",
    )

    # --- admin and hot swap ---------------------------------------------------------------
    admin_token: str | None = Field(None, description="Bearer token for /v1/admin; unset = off.")
    model_roots: list[Path] = Field(
        default_factory=list,
        description="Directories the admin API may load models from (JSON list in the "
        "environment). The demo cache directory is always allowed.",
    )
    allow_hub_models: bool = Field(False, description="Let the admin API load hub ids.")
    drain_timeout_s: float = Field(
        60.0, gt=0, description="Wait for requests pinned to a replaced model before freeing it."
    )
    reconcile_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often a replica compares its model with the desired one in Redis.",
    )
    replica_id: str | None = Field(
        None, description="Name in /v1/admin/replicas; default host:pid."
    )

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            value = key.get_secret_value()
            if not value or not value.isprintable() or any(c.isspace() for c in value):
                raise ValueError("API keys must be non-empty printable text without spaces")
        return keys

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"CORS origins must be explicit, e.g. 'https://dash.example.org' ({origin!r})"
                )
        return origins

    def effective_token_budget(self, device: str) -> int:
        if self.token_budget is not None:
            return self.token_budget
        return 65536 if device.startswith("cuda") else 1024
