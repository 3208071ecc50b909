"""Stable identities for prompts and reference texts, shared by every replica and store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def canonical_prompt(prompt: str | None, messages: Sequence[dict[str, Any]] | None) -> str:
    """Canonical JSON of a prompt. A plain prompt and the equivalent one-user-turn chat are the
    same prompt (they encode identically), so they share references."""
    if messages is None:
        messages = [{"role": "user", "content": prompt or ""}]
    return json.dumps(list(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def prompt_key(prompt_json: str) -> str:
    return hashlib.sha256(prompt_json.encode("utf-8")).hexdigest()[:32]


def ref_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
