"""The benchmark workload: GRPO-like groups of 8 responses per prompt, mixed lengths (prompt
median ~120 tokens, response median ~200, log-normal spread), built from the model's own
tokenizer so the token counts are what the model reads."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from service.demo.factory import synthetic_corpus

GROUP = 8


@dataclass(frozen=True)
class Group:
    prompt: str
    responses: list[str]
    references: list[str]


def _lengths(rng: random.Random, median: int, n: int, lo: int, hi: int) -> list[int]:
    return [min(hi, max(lo, round(rng.lognormvariate(0, 0.5) * median))) for _ in range(n)]


def grpo_groups(tokenizer: Any, n_prompts: int, *, seed: int = 0, refs: int = 2) -> list[Group]:
    rng = random.Random(seed)
    stream: list[int] = []
    for text in synthetic_corpus(6000, seed=seed + 11):
        stream.extend(tokenizer(text + " ", add_special_tokens=False).input_ids)
    cursor = 0

    def text_of(n_tokens: int) -> str:
        nonlocal cursor
        if cursor + n_tokens > len(stream):
            cursor = 0
        ids = stream[cursor : cursor + n_tokens]
        cursor += n_tokens
        return str(tokenizer.decode(ids)).strip() or "ok"

    groups = []
    for p_len in _lengths(rng, 120, n_prompts, 16, 600):
        responses = [text_of(n) for n in _lengths(rng, 200, GROUP, 8, 900)]
        references = [text_of(n) for n in _lengths(rng, 200, refs, 8, 900)]
        groups.append(Group(text_of(p_len), responses, references))
    return groups
