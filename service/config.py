"""The one settings object. Built once (from the environment, `PAR_*`, or a dict in tests) and
passed into `create_app`; nothing reads the environment anywhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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

    # --- encoding ------------------------------------------------------------------------
    max_tokens: int = Field(2048, ge=8, description="Max tokens per (prompt, response) pair.")
    truncation: Literal["left", "error"] = Field(
        "left",
        description="Default policy for over-long pairs: cut the prompt from the left "
        "(the response end, where the RM reads, survives) or reject with 422.",
    )
    tokenizer_threads: int = Field(2, ge=1)

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

    # --- admin ---------------------------------------------------------------------------
    admin_token: str | None = Field(None, description="Bearer token for /v1/admin; unset = off.")

    def effective_token_budget(self, device: str) -> int:
        if self.token_budget is not None:
            return self.token_budget
        return 65536 if device.startswith("cuda") else 1024
