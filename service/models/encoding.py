"""Turns (prompt | messages, response) into the token ids the RM reads.

With a chat template (the RM tokenizer's own), the conversation is the prompt messages plus the
response as the final assistant turn. Without one, the documented plain format is
`<prompt>\\n\\n<response>` with the tokenizer's own special tokens around it, where a chat
prompt is rendered as `role: content` lines.

User text is always tokenized as text: a string like "<|eot_id|>" inside a prompt or response
becomes ordinary tokens, never the special token. To get that, the template is rendered with
placeholders, and template pieces and user pieces are tokenized separately (template pieces
with special tokens recognised, user pieces with `split_special_tokens=True`).

Over-long pairs: policy "left" cuts the prompt's user text from the left (oldest first), and
only if that is not enough the response from the left, so the response end, where the RM
reads, survives; policy "error" rejects the pair.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from service.errors import InvalidInput

logger = logging.getLogger(__name__)

Truncation = Literal["left", "error"]

# Piece kinds: template text (may contain special tokens), prompt user text, response text.
_TEMPLATE, _PROMPT, _RESPONSE = 0, 1, 2


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one (prompt, response) pair, ready for the batcher."""

    input_ids: list[int]
    truncated: bool
    response_tokens: int  # tokens of the response text alone (the length penalty's L)

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class PairText:
    """One pair to encode; `param` names it in errors (e.g. `items[3]`)."""

    response: str
    prompt: str | None = None
    messages: Sequence[dict[str, Any]] | None = None
    param: str = "item"


class PairEncoder:
    """Encodes pairs for one tokenizer. Thread-safe: HF fast tokenizers can be called from the
    tokenizer thread pool concurrently."""

    def __init__(self, tokenizer: Any, *, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # HF fast tokenizers flip shared backend state (`encode_special_tokens`, truncation)
        # on every call, so two threads encoding at once can get each other's mode and
        # wrong ids. The encoder keeps two private backend copies, one per mode, set once and
        # never mutated again: the Rust `encode` is then safe from any number of threads.
        self._lock = threading.Lock()  # only for slow (pure Python) tokenizers
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._template_backend = self._user_backend = None
        if backend is not None:
            self._template_backend = _private_copy(backend, encode_special_tokens=False)
            self._user_backend = _private_copy(backend, encode_special_tokens=True)
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None) or None
        # A per-encoder random nonce makes the placeholders impossible to forge from user text.
        self._nonce = secrets.token_hex(8)
        self._placeholder_re = re.compile(rf"\uE000{self._nonce}:(\d+)\uE001")
        self._plain_prefix, self._plain_suffix = self._special_tokens_around_text()
        self._plain_separator = self._ids("\n\n", user_text=False)

    # -- public -------------------------------------------------------------------------------

    def encode(
        self,
        *,
        response: str,
        prompt: str | None = None,
        messages: Sequence[dict[str, Any]] | None = None,
        truncation: Truncation = "left",
    ) -> EncodedPair:
        """Encode one pair (the demo trainer and tests use this form)."""
        pair = PairText(response=response, prompt=prompt, messages=messages)
        return self.encode_many([pair], truncation=truncation)[0]

    def encode_many(
        self, pairs: Sequence[PairText], *, truncation: Truncation = "left"
    ) -> list[EncodedPair]:
        """Encode pairs; raises InvalidInput naming the first pair that cannot fit."""
        return [self._fit(self._pieces(p), p, truncation) for p in pairs]

    # -- pieces -------------------------------------------------------------------------------

    def _pieces(self, pair: PairText) -> list[tuple[int, list[int]]]:
        if self.chat_template:
            pieces = self._chat_pieces(pair)
            if pieces is not None:
                return pieces
        return self._plain_pieces(pair)

    def _chat_pieces(self, pair: PairText) -> list[tuple[int, list[int]]] | None:
        messages = _prompt_messages(pair)
        conversation = [*messages, {"role": "assistant", "content": pair.response}]
        placeheld = [
            {**m, "content": f"\ue000{self._nonce}:{i}\ue001"} for i, m in enumerate(conversation)
        ]
        rendered = self.tokenizer.apply_chat_template(placeheld, tokenize=False)
        parts = self._placeholder_re.split(rendered)
        # split() alternates text, index, text, ...; every message must appear exactly once, in
        # order, or the template transforms content and placeholders cannot be trusted.
        indices = [int(x) for x in parts[1::2]]
        if indices != list(range(len(conversation))):
            logger.warning("chat template rewrites message content; using the plain format")
            return None
        pieces: list[tuple[int, list[int]]] = []
        last = len(conversation) - 1
        for k, part in enumerate(parts):
            if k % 2 == 0:
                if part:
                    pieces.append((_TEMPLATE, self._ids(part, user_text=False)))
            else:
                i = int(part)
                kind = _RESPONSE if i == last else _PROMPT
                pieces.append((kind, self._ids(str(conversation[i]["content"]), user_text=True)))
        return pieces

    def _plain_pieces(self, pair: PairText) -> list[tuple[int, list[int]]]:
        messages = pair.messages
        if messages is None:
            prompt_text = pair.prompt or ""
        elif len(messages) == 1 and messages[0].get("role") == "user":
            # The same prompt as plain text (the store treats them as one prompt, too).
            prompt_text = str(messages[0]["content"])
        else:
            prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return [
            (_TEMPLATE, list(self._plain_prefix)),
            (_PROMPT, self._ids(prompt_text, user_text=True)),
            (_TEMPLATE, list(self._plain_separator)),
            (_RESPONSE, self._ids(pair.response, user_text=True)),
            (_TEMPLATE, list(self._plain_suffix)),
        ]

    def _ids(self, text: str, *, user_text: bool, add_special_tokens: bool = False) -> list[int]:
        if not text:
            return []
        backend = self._user_backend if user_text else self._template_backend
        if backend is not None:
            return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)
        with self._lock:
            return list(
                self.tokenizer(
                    text, add_special_tokens=add_special_tokens, split_special_tokens=user_text
                ).input_ids
            )

    def _special_tokens_around_text(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer itself puts before and after a text (BOS, EOS,
        CLS/SEP...), found by encoding a probe with and without them."""
        probe = "a"
        bare = self._ids(probe, user_text=False)
        full = self._ids(probe, user_text=False, add_special_tokens=True)
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    # -- truncation ---------------------------------------------------------------------------

    def _fit(
        self, pieces: list[tuple[int, list[int]]], pair: PairText, truncation: Truncation
    ) -> EncodedPair:
        response_tokens = sum(len(ids) for kind, ids in pieces if kind == _RESPONSE)
        total = sum(len(ids) for _, ids in pieces)
        excess = total - self.max_tokens
        if excess <= 0:
            return EncodedPair(_concat(pieces), False, response_tokens)
        if truncation == "error":
            raise InvalidInput(
                f"{pair.param} is {total} tokens, over the limit of {self.max_tokens}; "
                "shorten the prompt or response, or send truncation 'left' to cut the "
                "prompt from the left",
                param=pair.param,
            )
        # Cut prompt text first (oldest first), then the response's beginning.
        for kind in (_PROMPT, _RESPONSE):
            for index, (piece_kind, ids) in enumerate(pieces):
                if excess <= 0:
                    break
                if piece_kind != kind or not ids:
                    continue
                cut = min(excess, len(ids))
                pieces[index] = (piece_kind, ids[cut:])
                excess -= cut
        if excess > 0:
            raise InvalidInput(
                f"{pair.param}: the chat template alone is over the limit of "
                f"{self.max_tokens} tokens; raise max_tokens",
                param=pair.param,
            )
        return EncodedPair(_concat(pieces), True, response_tokens)


def _private_copy(backend: Any, *, encode_special_tokens: bool) -> Any:
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = encode_special_tokens
    return copy


def _prompt_messages(pair: PairText) -> list[dict[str, Any]]:
    if pair.messages is not None:
        return [dict(m) for m in pair.messages]
    return [{"role": "user", "content": pair.prompt or ""}]


def _concat(pieces: list[tuple[int, list[int]]]) -> list[int]:
    out: list[int] = []
    for _, ids in pieces:
        out.extend(ids)
    return out
