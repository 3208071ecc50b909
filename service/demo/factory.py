"""Builders for small, local reward models: the demo RM, the tests and the benchmarks use them so
nothing is ever downloaded. Every builder writes a directory in exactly the on-disk layout a real
checkpoint of that kind has, so the loaders are exercised the way production uses them.

Layouts written here:
- `build_seqcls_rm`: `LlamaForSequenceClassification` (`model.*` + `score.weight`), the layout
  of Skywork-Reward and most hub RMs.
- `build_value_head_rm(style="trl")`: TRL `AutoModelForCausalLMWithValueHead.save_pretrained`:
  the causal LM's own keys (`model.*`, `lm_head.weight`) plus `v_head.summary.weight`/`.bias`,
  config `architectures = ["LlamaForCausalLM"]`.
- `build_value_head_rm(style="openrlhf")`: OpenRLHF `get_llm_for_sequence_regression`:
  backbone under `model.`, bias-free head `score.weight` (or `value_head.weight`), config fields
  `normalize_reward`, `mean`, `std`.
- `build_value_head_rm(style="par")`: the PAR repo's `AutoModelForCausalLMWithScalarHead`:
  the bare backbone (`AutoModel.save_pretrained`, keys without prefix), the head in a separate
  `scalar_head.pt` (`summary.weight`, `summary.bias`; a torch pickle), config `wrapper_type`.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    PreTrainedTokenizerFast,
)

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Every boundary between template text and message content is a special token or a newline, so
# byte-level BPE never merges across it: tokenizing the rendered pieces one by one gives the
# same ids as tokenizing the whole conversation (the encoder's truncation relies on that).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Roles must be system, user or assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Files a tokenizer directory may hold; copied beside the weights so a model dir is complete.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)

ValueHeadStyle = Literal["trl", "openrlhf", "par"]


# --- text -------------------------------------------------------------------------------------

_SUBJECTS = (
    "the engineer",
    "a small team",
    "my neighbour",
    "the committee",
    "our teacher",
    "the pilot",
    "a curious child",
    "the old farmer",
    "the new manager",
    "every student",
    "the baker",
    "the river guide",
    "a quiet reader",
    "the night nurse",
    "the chess club",
)
_VERBS = (
    "checked",
    "painted",
    "described",
    "repaired",
    "measured",
    "planned",
    "counted",
    "ordered",
    "cleaned",
    "explained",
    "carried",
    "questioned",
    "recorded",
    "built",
    "moved",
    "shared",
)
_OBJECTS = (
    "the bridge",
    "a long report",
    "three boxes",
    "the garden fence",
    "a map of the valley",
    "the broken clock",
    "forty apples",
    "the train schedule",
    "a simple recipe",
    "the budget",
    "two heavy tables",
    "the weather data",
    "a short poem",
    "the kitchen floor",
    "the results",
)
_TAILS = (
    "before noon",
    "with great care",
    "in the rain",
    "after lunch",
    "for the first time",
    "without help",
    "twice",
    "on Monday",
    "at the market",
    "in 1998",
    "by hand",
    "slowly",
    "for 12 minutes",
    "again and again",
    "at 7:45",
    "under the lamp",
)


def synthetic_corpus(n: int, *, seed: int = 0) -> Iterator[str]:
    """Endless-looking English-like sentences (digits, punctuation, varied lengths) for training
    tokenizers and for benchmark texts of a realistic token mix."""
    rng = random.Random(seed)
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(1, 6)):
            s = (
                f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                f"{rng.choice(_TAILS)}"
            )
            if rng.random() < 0.3:
                s += f", and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.randint(0, 999)}"
            sentences.append(s[0].upper() + s[1:] + rng.choice(".!?."))
        yield " ".join(sentences)


# --- tokenizer --------------------------------------------------------------------------------


def train_tokenizer(out_dir: Path, corpus: Iterable[str], *, vocab_size: int = 2048) -> Path:
    """Train a byte-level BPE tokenizer on `corpus` and save it as a `PreTrainedTokenizerFast`
    with pad/bos/eos, the chat-role special tokens and `CHAT_TEMPLATE`. Deterministic for a
    given corpus. Byte-level, so any text (any script, emoji) encodes without unknown tokens."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return out_dir


def copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer files of `tokenizer_dir` into a model directory."""
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copy2(src, Path(out_dir) / name)


def _tokenizer_ids(tokenizer_dir: Path) -> tuple[int, int, int, int]:
    """(vocab size, pad id, bos id, eos id) of a tokenizer built by `train_tokenizer`."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    return len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id


# --- models -----------------------------------------------------------------------------------


def llama_config(
    tokenizer_dir: Path,
    *,
    hidden_size: int,
    layers: int,
    heads: int,
    intermediate: int,
    num_labels: int = 1,
) -> LlamaConfig:
    """A Llama config sized for `tokenizer_dir`'s vocabulary, with its special-token ids."""
    vocab, pad_id, bos_id, eos_id = _tokenizer_ids(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=4096,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    config.num_labels = num_labels
    return config


def build_seqcls_rm(
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    num_labels: int = 1,
    seed: int = 0,
) -> Path:
    """A randomly initialised `LlamaForSequenceClassification` RM (safetensors + tokenizer)."""
    config = llama_config(
        tokenizer_dir,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    return save_seqcls_rm(model, out_dir, tokenizer_dir)


def save_seqcls_rm(
    model: LlamaForSequenceClassification, out_dir: Path, tokenizer_dir: Path
) -> Path:
    """Save a sequence-classification RM as safetensors with the tokenizer files beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def build_llama_40m(out_dir: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """The benchmark RM: a ~40M-parameter Llama-style sequence classifier (12 layers, hidden
    512, 8 heads, MLP 1376; ~38M outside the embeddings), random init."""
    return build_seqcls_rm(
        out_dir,
        tokenizer_dir,
        hidden_size=512,
        layers=12,
        heads=8,
        intermediate=1376,
        seed=seed,
    )


def build_value_head_rm(
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    style: ValueHeadStyle,
    normalize: tuple[float, float] | None = None,
    head_name: Literal["score", "value_head"] = "score",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    seed: int = 0,
) -> Path:
    """A causal LM + scalar value head RM in the exact layout of `style` (see the module
    docstring). `normalize=(mean, std)` (OpenRLHF only) writes `normalize_reward: true` with
    those statistics; `head_name` picks OpenRLHF's newer `score` or older `value_head` key."""
    if normalize is not None and style != "openrlhf":
        raise ValueError("only the OpenRLHF layout stores reward normalisation")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = llama_config(
        tokenizer_dir,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
    )
    torch.manual_seed(seed)
    # Heads get a larger scale than a fresh init would so rewards are far from 0 and a wrong
    # head (or a missing bias) shows up in the parity tests.
    head_weight = torch.randn(1, hidden_size) * 0.5
    head_bias = torch.randn(1)

    if style == "trl":
        lm = LlamaForCausalLM(config)
        state = _contiguous(lm.state_dict())
        state["v_head.summary.weight"] = head_weight
        state["v_head.summary.bias"] = head_bias
        config.architectures = ["LlamaForCausalLM"]
        config.save_pretrained(out_dir)
        save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    elif style == "openrlhf":
        backbone = LlamaModel(config)
        state = {f"model.{k}": v for k, v in _contiguous(backbone.state_dict()).items()}
        state[f"{head_name}.weight"] = head_weight
        config.architectures = ["LlamaForCausalLM"]
        config.normalize_reward = normalize is not None
        config.mean = normalize[0] if normalize is not None else 0.0
        config.std = normalize[1] if normalize is not None else 1.0
        config.value_head_prefix = head_name
        config.save_pretrained(out_dir)
        save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    elif style == "par":
        backbone = LlamaModel(config)
        backbone.save_pretrained(out_dir, safe_serialization=True)
        torch.save(
            {"summary.weight": head_weight, "summary.bias": head_bias}, out_dir / "scalar_head.pt"
        )
        raw = json.loads((out_dir / "config.json").read_text())
        raw["is_wrapper_model"] = True
        raw["wrapper_type"] = "AutoModelForCausalLMWithScalarHead"
        (out_dir / "config.json").write_text(json.dumps(raw, indent=2))
    else:
        raise ValueError(f"unknown value-head style {style!r}")
    copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone so each tensor owns its data.
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
