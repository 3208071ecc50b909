"""Pair encoding: chat template, plain format, truncation, special tokens, threads."""

from __future__ import annotations

import concurrent.futures
import copy
from typing import Any

import pytest

from service.errors import InvalidInput
from service.models.encoding import PairEncoder, PairText


def test_chat_template_matches_whole_string_tokenization(tokenizer: Any) -> None:
    encoder = PairEncoder(tokenizer, max_tokens=512)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a red fruit."},
    ]
    ids = encoder.encode(messages=messages, response="A strawberry.").input_ids
    text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "A strawberry."}], tokenize=False
    )
    assert ids == tokenizer(text, add_special_tokens=False).input_ids


def test_plain_prompt_equals_one_user_turn(tokenizer: Any) -> None:
    encoder = PairEncoder(tokenizer, max_tokens=512)
    a = encoder.encode(prompt="Say hi.", response="Hi!").input_ids
    b = encoder.encode(messages=[{"role": "user", "content": "Say hi."}], response="Hi!")
    assert a == b.input_ids


def test_plain_format_without_a_chat_template(tokenizer: Any) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    encoder = PairEncoder(plain, max_tokens=512)
    ids = encoder.encode(prompt="Say hi.", response="Hi!").input_ids
    expected = plain("Say hi.\n\nHi!", add_special_tokens=True).input_ids
    assert ids == expected
    chat = encoder.encode(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        response="R",
    ).input_ids
    assert chat == plain("system: S\nuser: U\n\nR", add_special_tokens=True).input_ids


def test_special_token_strings_in_user_text_stay_text(tokenizer: Any) -> None:
    encoder = PairEncoder(tokenizer, max_tokens=512)
    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    injected = encoder.encode(prompt=f"{bos} hi {eos}", response=f"ok {eos}").input_ids
    clean = encoder.encode(prompt="x hi y", response="ok z").input_ids
    for special in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        assert injected.count(special) == clean.count(special)
    assert tokenizer.decode(injected).count(eos) == clean.count(tokenizer.eos_token_id) + 2


def test_left_truncation_keeps_the_response_end(tokenizer: Any) -> None:
    encoder = PairEncoder(tokenizer, max_tokens=48)
    prompt = " ".join(f"w{i}" for i in range(100))
    response = "and that is the final answer"
    full = PairEncoder(tokenizer, max_tokens=10_000).encode(prompt=prompt, response=response)
    cut = encoder.encode(prompt=prompt, response=response)
    assert cut.truncated and cut.tokens == 48 and not full.truncated
    assert full.input_ids[-20:] == cut.input_ids[-20:]  # the end, where the RM reads
    assert full.input_ids[:3] == cut.input_ids[:3]  # the template's start survives
    assert cut.response_tokens == full.response_tokens
    long_response = " ".join(f"r{i}" for i in range(100))
    both = encoder.encode(prompt=prompt, response=long_response)
    assert both.tokens == 48 and both.truncated
    with pytest.raises(InvalidInput) as error:
        encoder.encode_many([PairText(prompt=prompt, response=response, param="items[2]")],
                            truncation="error")  # fmt: skip
    assert error.value.param == "items[2]"


def test_concurrent_encoding_equals_serial(tokenizer: Any) -> None:
    """Regression: HF fast tokenizers flip shared state per call; threads must not see
    each other's special-token mode."""
    encoder = PairEncoder(tokenizer, max_tokens=512)
    eos = tokenizer.eos_token
    pairs = [PairText(prompt=f"q{i} {eos}", response=f"answer {i} {eos}") for i in range(200)]
    serial = [e.input_ids for e in encoder.encode_many(pairs)]

    def one(pair: PairText) -> list[int]:
        # Also hammer the shared HF tokenizer the way other code might, concurrently.
        tokenizer(pair.prompt, split_special_tokens=False)
        return encoder.encode_many([pair])[0].input_ids

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, pairs)) == serial


def _mixed_pairs(tokenizer: Any) -> list[PairText]:
    eos = tokenizer.eos_token
    long_prompt = " ".join(f"w{i}" for i in range(80))
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    pairs = [PairText(prompt="Name a fruit.", response=f"Fruit {i} {eos}") for i in range(8)]
    pairs += [PairText(messages=system, response=r) for r in ("Because.", "", "Because.")]
    pairs += [PairText(prompt=long_prompt, response="the end"), PairText(prompt="", response="x")]
    pairs += [PairText(messages=[{"role": "user", "content": "Name a fruit."}], response="Fig")]
    return pairs


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_a_batch_encodes_exactly_like_pairs_one_by_one(tokenizer: Any, template: str) -> None:
    """Batching (one tokenizer call per mode, each distinct text once, the template rendered
    once per conversation shape) must not change a single id, truncation flag or length."""
    tok = copy.deepcopy(tokenizer)
    if template == "plain":
        tok.chat_template = None
    encoder = PairEncoder(tok, max_tokens=48)
    pairs = _mixed_pairs(tok)
    together = encoder.encode_many(pairs)
    alone = [encoder.encode_many([pair])[0] for pair in pairs]
    assert together == alone
    assert any(e.truncated for e in together) and not all(e.truncated for e in together)


class CountingBackend:
    """Wraps a Rust tokenizer backend and records every text it is asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def encode(self, text: str, **kw: Any) -> Any:
        self.texts.append(text)
        return self.inner.encode(text, **kw)

    def encode_batch_fast(self, texts: list[str], **kw: Any) -> Any:
        self.texts.extend(texts)
        return self.inner.encode_batch_fast(texts, **kw)


def test_a_group_tokenizes_its_prompt_once_and_renders_the_template_once(
    tokenizer: Any,
) -> None:
    tok = copy.deepcopy(tokenizer)
    renders: list[int] = []
    original = tok.apply_chat_template

    def counting_render(conversation: Any, **kw: Any) -> Any:
        renders.append(len(conversation))
        return original(conversation, **kw)

    tok.apply_chat_template = counting_render
    encoder = PairEncoder(tok, max_tokens=512)
    user = encoder._user_backend = CountingBackend(encoder._user_backend)
    prompt = "Explain the rule of thirds in two sentences."
    responses = [f"answer number {i}" for i in range(8)]
    encoded = encoder.encode_many([PairText(prompt=prompt, response=r) for r in responses])
    assert user.texts.count(prompt) == 1
    assert sorted(t for t in user.texts if t != prompt) == sorted(responses)
    assert renders == [2]  # one user turn + the assistant turn, rendered once for all 8
    assert len({tuple(e.input_ids) for e in encoded}) == 8
