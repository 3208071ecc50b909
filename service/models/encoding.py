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
import os
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
# A piece before tokenizing: text, or ids already known (the plain format's special tokens).
_Piece = str | tuple[int, ...]


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
        prefix, suffix = self._special_tokens_around_text()
        self._plain_prefix, self._plain_suffix = tuple(prefix), tuple(suffix)
        self._plain_separator = tuple(self._ids("\n\n", user_text=False))

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
        """Encode pairs; raises InvalidInput naming the first pair that cannot fit.

        All texts of the call go through the Rust tokenizer in one batch per mode, each
        distinct text once (a GRPO group repeats its prompt 8 times), and the batch call runs
        without the GIL, so the model thread keeps dispatching ops meanwhile. A tokenizer that
        fails on one text fails the whole call; the caller retries pair by pair to name it."""
        rendered: dict[Any, list[str | int] | None] = {}
        layouts = [self._layout(pair, rendered) for pair in pairs]
        ids = self._encode_texts(layouts)
        return [
            self._fit(_with_ids(layout, ids), pair, truncation)
            for layout, pair in zip(layouts, pairs, strict=True)
        ]

    # -- layout: which texts, in which mode, in which order -------------------------------------

    def _layout(self, pair: PairText, rendered: dict[Any, Any]) -> list[tuple[int, _Piece]]:
        if self.chat_template:
            layout = self._chat_layout(pair, rendered)
            if layout is not None:
                return layout
        return self._plain_layout(pair)

    def _chat_layout(
        self, pair: PairText, rendered: dict[Any, Any]
    ) -> list[tuple[int, _Piece]] | None:
        messages = _prompt_messages(pair)
        conversation = [*messages, {"role": "assistant", "content": pair.response}]
        template = self._rendered_template(conversation, rendered)
        if template is None:
            return None
        last = len(conversation) - 1
        layout: list[tuple[int, _Piece]] = []
        for part in template:
            if isinstance(part, str):
                layout.append((_TEMPLATE, part))
            else:
                content = str(conversation[part]["content"])
                layout.append((_RESPONSE if part == last else _PROMPT, content))
        return layout

    def _rendered_template(
        self, conversation: list[dict[str, Any]], rendered: dict[Any, Any]
    ) -> list[str | int] | None:
        """The template rendered around placeholders: template text (str) and message indices
        (int), in order. With placeholders for every content, the rendering depends only on
        the rest of the messages (roles...), so it is done once per shape within a call (not
        across calls: a template may print today's date)."""
        try:
            shape: Any = tuple(
                tuple(sorted((k, v) for k, v in m.items() if k != "content")) for m in conversation
            )
            hash(shape)
        except TypeError:  # unhashable extra fields: render this one without the memo
            shape = object()
        if shape in rendered:
            return rendered[shape]  # type: ignore[no-any-return]
        placeheld = [
            {**m, "content": f"\ue000{self._nonce}:{i}\ue001"} for i, m in enumerate(conversation)
        ]
        text = self.tokenizer.apply_chat_template(placeheld, tokenize=False)
        parts = self._placeholder_re.split(text)
        # split() alternates text, index, text, ...; every message must appear exactly once, in
        # order, or the template transforms content and placeholders cannot be trusted.
        result: list[str | int] | None = None
        if [int(x) for x in parts[1::2]] != list(range(len(conversation))):
            logger.warning("chat template rewrites message content; using the plain format")
        else:
            result = [int(part) if k % 2 else part for k, part in enumerate(parts) if part or k % 2]
        rendered[shape] = result
        return result

    def _plain_layout(self, pair: PairText) -> list[tuple[int, _Piece]]:
        messages = pair.messages
        if messages is None:
            prompt_text = pair.prompt or ""
        elif len(messages) == 1 and messages[0].get("role") == "user":
            # The same prompt as plain text (the store treats them as one prompt, too).
            prompt_text = str(messages[0]["content"])
        else:
            prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return [
            (_TEMPLATE, self._plain_prefix),
            (_PROMPT, prompt_text),
            (_TEMPLATE, self._plain_separator),
            (_RESPONSE, pair.response),
            (_TEMPLATE, self._plain_suffix),
        ]

    # -- tokenizing ---------------------------------------------------------------------------

    def _encode_texts(
        self, layouts: list[list[tuple[int, _Piece]]]
    ) -> dict[tuple[bool, str], list[int]]:
        """(is user text, text) -> ids for every text piece of the layouts, each distinct
        text tokenized once."""
        wanted: dict[bool, dict[str, None]] = {False: {}, True: {}}
        for layout in layouts:
            for kind, piece in layout:
                if isinstance(piece, str):
                    wanted[kind != _TEMPLATE][piece] = None
        out: dict[tuple[bool, str], list[int]] = {}
        for user_text, texts in wanted.items():
            for text, ids in zip(
                texts, self._ids_many(list(texts), user_text=user_text), strict=True
            ):
                out[user_text, text] = ids
        return out

    def _ids_many(self, texts: list[str], *, user_text: bool) -> list[list[int]]:
        backend = self._user_backend if user_text else self._template_backend
        if backend is not None:
            non_empty = [t for t in texts if t]
            batch = (
                backend.encode_batch_fast(non_empty, add_special_tokens=False) if non_empty else []
            )
            encoded = iter(batch)
            return [list(next(encoded).ids) if t else [] for t in texts]
        return [self._ids(t, user_text=user_text) for t in texts]

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


def set_tokenizer_parallelism(enabled: bool) -> None:
    """Whether batch encoding runs on the tokenizers library's own thread pool. The library
    reads this switch from the environment at every batch call and offers no other API."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"


def _private_copy(backend: Any, *, encode_special_tokens: bool) -> Any:
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = encode_special_tokens
    return copy


def _with_ids(
    layout: list[tuple[int, _Piece]], ids: dict[tuple[bool, str], list[int]]
) -> list[tuple[int, list[int]]]:
    return [
        (kind, list(piece) if isinstance(piece, tuple) else ids[kind != _TEMPLATE, piece])
        for kind, piece in layout
    ]


def _prompt_messages(pair: PairText) -> list[dict[str, Any]]:
    if pair.messages is not None:
        return [dict(m) for m in pair.messages]
    return [{"role": "user", "content": pair.prompt or ""}]


def _concat(pieces: list[tuple[int, list[int]]]) -> list[int]:
    out: list[int] = []
    for _, ids in pieces:
        out.extend(ids)
    return out
