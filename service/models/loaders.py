"""Loading reward models from disk (or the hub) into an `HFRunner` + tokenizer + fingerprint.

Formats (detected from config `architectures`, `wrapper_type` and the checkpoint's key names,
reading only safetensors headers):
- `sequence_classification`: `AutoModelForSequenceClassification` (Skywork-Reward and most hub
  RMs), one label, or `head_index` for a multi-label head.
- `value_head`: a causal LM backbone plus a scalar head read at the last token:
  TRL `AutoModelForCausalLMWithValueHead` (`v_head.summary.weight/bias` beside the LM keys),
  OpenRLHF (`model.*` + bias-free `score.weight` or `value_head.weight`, with optional stored
  `normalize_reward`/`mean`/`std`), and the PAR repo's `AutoModelForCausalLMWithScalarHead`
  (bare backbone + `scalar_head.pt`/`scalar_head.safetensors` holding `summary.weight/bias`).

Safety: safetensors only unless `allow_pickle`; a checkpoint's own code only with
`trust_remote_code`. Every refusal is an `InvalidInput` whose message says what to change.
Blocking; the caller runs it off the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from service.config import DEFAULT_CACHE_DIR
from service.errors import InvalidInput
from service.models.runner import HFRunner, Normalization, RewardHead

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Files whose content decides how text becomes token ids; all go into the fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PAR_HEAD_STEM = "scalar_head"
PAR_WRAPPER = "AutoModelForCausalLMWithScalarHead"
# Fingerprint sampling: whole file below this size, else header + first and last chunk.
SAMPLE_BYTES = 1 << 20
# What a broken or mismatched checkpoint raises while loading (as opposed to, say, running out
# of memory, which is not the client's input to fix).
_LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError)


@dataclass(frozen=True)
class ModelSource:
    """What to load and how. `location` is "demo", a local directory or a hub id."""

    location: str
    head_index: int | None = None
    device: str = "auto"  # "auto" = cuda if available, else cpu
    dtype: str = "auto"  # "auto" = bfloat16 on CUDA, float32 on CPU
    allow_pickle: bool = False  # safetensors only unless explicitly allowed
    trust_remote_code: bool = False
    cache_dir: Path = field(default=DEFAULT_CACHE_DIR)  # where the demo RM is built


@dataclass
class LoadedModel:
    """A ready-to-serve RM: the runner, its tokenizer, and the version fingerprint that names
    it in every response and store key."""

    runner: HFRunner
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    kind: str  # "sequence_classification" | "value_head"
    location: str
    device: str
    dtype: str
    num_parameters: int


@dataclass(frozen=True)
class _Layout:
    """What detection found: the kind, the checkpoint family, and where the head lives."""

    kind: str
    style: str  # "seqcls" | "trl" | "openrlhf" | "par"
    head_weight_key: str | None = None
    head_bias_key: str | None = None
    head_file: Path | None = None  # PAR keeps its head in a file of its own


def load_reward_model(source: ModelSource) -> LoadedModel:
    """Load the RM `source` names, ready to serve. Raises `InvalidInput` for a bad location,
    missing or pickle-only weights (unless allowed), an unknown format or a bad `head_index`."""
    model_dir = _resolve_location(source)
    config = _read_config(model_dir)
    weight_files = _weight_files(model_dir, allow_pickle=source.allow_pickle)
    layout = _detect_layout(model_dir, config, weight_files)
    if layout.head_file is not None and layout.head_file.suffix != ".safetensors":
        _require_pickle_allowed(source, layout.head_file)
    normalization = _normalization(config)
    device = _resolve_device(source.device)
    dtype_name = _resolve_dtype(source.dtype, device)
    dtype = DTYPES[dtype_name]
    common: dict[str, Any] = {
        "dtype": dtype,
        # None lets transformers prefer safetensors and fall back to pickle; only reachable
        # with allow_pickle, since _weight_files refused pickle-only dirs otherwise.
        "use_safetensors": True if not source.allow_pickle else None,
        "trust_remote_code": source.trust_remote_code,
        "output_loading_info": True,
    }
    # The tokenizer first: it is cheap, and a missing one should not cost a full weight load.
    tokenizer = _load_tokenizer(model_dir, trust_remote_code=source.trust_remote_code)
    if layout.kind == "sequence_classification":
        runner, num_parameters, head_index = _load_seqcls(
            model_dir, common, source.head_index, normalization, device
        )
    else:
        runner, num_parameters, head_index = _load_value_head(
            model_dir, common, layout, weight_files, source.head_index, normalization, device
        )
    settings = {
        "kind": layout.kind,
        "style": layout.style,
        "head_index": head_index,
        "normalization": None if normalization is None else [normalization.mean, normalization.std],
        "dtype": dtype_name,
    }
    fingerprint = model_fingerprint(model_dir, weight_files, tokenizer, settings)
    logger.info(
        "loaded %s RM (%s) from %s: %d parameters, %s on %s, fingerprint %s",
        layout.kind,
        layout.style,
        model_dir,
        num_parameters,
        dtype_name,
        device,
        fingerprint,
    )
    return LoadedModel(
        runner=runner,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        kind=layout.kind,
        location=source.location,
        device=str(device),
        dtype=dtype_name,
        num_parameters=num_parameters,
    )


# --- location and files -----------------------------------------------------------------------


def _resolve_location(source: ModelSource) -> Path:
    if source.location == "demo":
        # Imported here: the demo builder pulls in training code the serving path never needs.
        from service.demo.build import ensure_demo_model

        return ensure_demo_model(source.cache_dir)
    path = Path(source.location).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InvalidInput(
            f"model location {source.location!r} is a file; give the model's directory "
            "(the one holding config.json and the weights)",
            param="location",
        )
    if _looks_like_path(source.location):
        raise InvalidInput(
            f"model directory {source.location!r} does not exist; give an existing local "
            "directory, a hub id like 'org/name', or 'demo'",
            param="location",
        )
    return _download_from_hub(source)


def _looks_like_path(location: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that is not a directory is a typo'd path
    # and must not turn into a network request.
    return location.startswith(("/", ".", "~")) or "\\" in location or location.count("/") > 1


def _download_from_hub(source: ModelSource) -> Path:
    """Fetch only what loading needs (configs, tokenizer, safetensors; pickles and code only
    when allowed) into `cache_dir/hub`. Needs network; the tests use local directories."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model", "*.tiktoken"]
    if source.allow_pickle:
        patterns += [f"*{suffix}" for suffix in PICKLE_SUFFIXES]
    if source.trust_remote_code:
        patterns.append("*.py")
    try:
        local = snapshot_download(
            source.location, cache_dir=str(source.cache_dir / "hub"), allow_patterns=patterns
        )
    # The hub client raises many unrelated types (HTTP, offline, validation, OS); each means
    # "this location cannot be loaded", which is the client's to fix.
    except Exception as exc:
        raise InvalidInput(
            f"{source.location!r} is not a local directory and could not be fetched from the "
            f"hub ({type(exc).__name__}: {exc}); check the path or the hub id and network access",
            param="location",
        ) from exc
    return Path(local)


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise InvalidInput(
            f"{model_dir} has no config.json; point the location at a Hugging Face model "
            "directory (config.json, weights and tokenizer files)",
            param="location",
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}", param="location") from exc
    if not isinstance(config, dict):
        raise InvalidInput(f"{path} must hold a JSON object", param="location")
    return config


def _weight_files(model_dir: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files loading reads (sorted): the backbone's safetensors (or, only when
    allowed, its `pytorch_model*.bin` pickles) plus a PAR `scalar_head.*` file if present.
    Other pickles beside safetensors (`training_args.bin`, optimizer states) are ignored."""
    safetensors_files = sorted(model_dir.glob("*.safetensors"))
    pickle_files = sorted(model_dir.glob("pytorch_model*.bin"))
    head_files = sorted(
        p
        for p in model_dir.glob(f"{PAR_HEAD_STEM}.*")
        if p.suffix in (".safetensors", *PICKLE_SUFFIXES)
    )
    backbone = [p for p in safetensors_files if p.stem != PAR_HEAD_STEM]
    if backbone:
        return backbone + head_files
    if pickle_files and not allow_pickle:
        names = ", ".join(p.name for p in pickle_files[:3])
        raise InvalidInput(
            f"{model_dir} holds only pickle weights ({names}); loading a pickle can run "
            "arbitrary code. Convert them to safetensors, or, if you trust the source, set "
            'allow_pickle (PAR_ALLOW_PICKLE=true / "allow_pickle": true)',
            param="location",
        )
    if not pickle_files:
        raise InvalidInput(
            f"{model_dir} has no weights (*.safetensors); point the location at a complete "
            "model directory",
            param="location",
        )
    return pickle_files + head_files


def _require_pickle_allowed(source: ModelSource, path: Path) -> None:
    if not source.allow_pickle:
        raise InvalidInput(
            f"the reward head is stored as a pickle ({path.name}); loading a pickle can run "
            "arbitrary code. Save the head as scalar_head.safetensors, or, if you trust the "
            'source, set allow_pickle (PAR_ALLOW_PICKLE=true / "allow_pickle": true)',
            param="location",
        )


def _checkpoint_keys(weight_files: list[Path]) -> dict[str, Path]:
    """Tensor name -> file holding it. Safetensors: headers only. Pickles (only present when
    allowed) are memory-mapped with `weights_only`, so no tensor data is read."""
    keys: dict[str, Path] = {}
    for path in weight_files:
        if path.stem == PAR_HEAD_STEM:
            continue
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    names = list(handle.keys())
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                names = list(state) if isinstance(state, dict) else []
        except (*_LOAD_ERRORS, RuntimeError, pickle.UnpicklingError) as exc:
            raise InvalidInput(
                f"{path} is not a readable weight file ({type(exc).__name__}: {exc}); "
                "replace it with an uncorrupted copy",
                param="location",
            ) from exc
        for name in names:
            keys.setdefault(name, path)
    return keys


# --- format detection -------------------------------------------------------------------------


def _detect_layout(model_dir: Path, config: dict[str, Any], weight_files: list[Path]) -> _Layout:
    architectures = [str(a) for a in config.get("architectures") or []]
    wrapper = config.get("wrapper_type")
    if wrapper is not None and wrapper != PAR_WRAPPER:
        raise InvalidInput(
            f"{model_dir}: wrapper_type {wrapper!r} is not supported (only {PAR_WRAPPER}, one "
            "scalar head); export the quality head as a single-head checkpoint",
            param="location",
        )
    par_heads = [model_dir / f"{PAR_HEAD_STEM}{suffix}" for suffix in (".safetensors", ".pt")]
    par_head = next((p for p in par_heads if p.is_file()), None)
    if wrapper == PAR_WRAPPER or par_head is not None:
        if par_head is None:
            raise InvalidInput(
                f"{model_dir}: config says {PAR_WRAPPER} but there is no scalar_head.pt or "
                "scalar_head.safetensors beside it; copy the head file into the directory",
                param="location",
            )
        return _Layout("value_head", "par", "summary.weight", "summary.bias", par_head)

    keys = _checkpoint_keys(weight_files)
    if "v_head.summary.weight" in keys:
        bias = "v_head.summary.bias" if "v_head.summary.bias" in keys else None
        return _Layout("value_head", "trl", "v_head.summary.weight", bias)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return _Layout("sequence_classification", "seqcls")
    prefixes = [config.get("value_head_prefix"), "score", "value_head"]
    for prefix in prefixes:
        if prefix and f"{prefix}.weight" in keys:
            bias = f"{prefix}.bias" if f"{prefix}.bias" in keys else None
            return _Layout("value_head", "openrlhf", f"{prefix}.weight", bias)
    raise InvalidInput(
        f"{model_dir}: unknown reward-model format (architectures {architectures or 'none'}, "
        "no value-head weights). Supported: *ForSequenceClassification; a causal LM with "
        "v_head.summary.* (TRL), score.weight or value_head.weight (OpenRLHF), or "
        "scalar_head.pt (PAR)",
        param="location",
    )


def _normalization(config: dict[str, Any]) -> Normalization | None:
    if not config.get("normalize_reward"):
        return None
    mean, std = config.get("mean", 0.0), config.get("std", 1.0)
    if not (
        isinstance(mean, int | float)
        and isinstance(std, int | float)
        and math.isfinite(mean)
        and math.isfinite(std)
        and std > 0
    ):
        raise InvalidInput(
            f"config.json has normalize_reward with mean={mean!r}, std={std!r}; std must be a "
            "positive number and mean finite (or set normalize_reward to false)",
            param="location",
        )
    return Normalization(mean=float(mean), std=float(std))


# --- device and dtype -------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InvalidInput(
            f"device {name!r} is not a torch device; use 'auto', 'cpu' or 'cuda:N'",
            param="device",
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(
            f"device {name!r} asked for CUDA but none is available; use 'cpu' or 'auto'",
            param="device",
        )
    return device


def _resolve_dtype(name: str, device: torch.device) -> str:
    if name == "auto":
        # fp32 on CPU: 5-7x faster than bf16 on CPUs without AMX/AVX512-BF16 (DESIGN.md).
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise InvalidInput(
            f"dtype {name!r} is not supported; use 'auto', {', '.join(map(repr, DTYPES))}",
            param="dtype",
        )
    return name


# --- model loading ----------------------------------------------------------------------------


def _from_pretrained(factory: Any, model_dir: Path, common: dict[str, Any]) -> Any:
    """`factory.from_pretrained` that refuses anything but a complete, matching checkpoint."""
    try:
        model, info = factory.from_pretrained(model_dir, **common)
    except _LOAD_ERRORS as exc:
        raise InvalidInput(
            f"{model_dir}: could not load the weights ({type(exc).__name__}: {exc}); check "
            "that the directory holds a complete, uncorrupted checkpoint",
            param="location",
        ) from exc
    # transformers fills missing weights with random init and only logs it; a reward service
    # must never serve a half-random model, so any missing tensor is a refusal.
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        shown = ", ".join(map(str, (missing + mismatched)[:5]))
        raise InvalidInput(
            f"{model_dir}: the checkpoint does not match its config (missing or mis-shaped "
            f"weights: {shown}); check that the directory holds the complete, matching model",
            param="location",
        )
    return model


def _head_index(head_index: int | None, num_outputs: int, model_dir: Path) -> int:
    if head_index is None:
        if num_outputs != 1:
            raise InvalidInput(
                f"{model_dir}: the reward head has {num_outputs} outputs; set head_index to "
                f"the one to serve (0..{num_outputs - 1})",
                param="head_index",
            )
        return 0
    if not 0 <= head_index < num_outputs:
        raise InvalidInput(
            f"head_index {head_index} is out of range: the reward head has {num_outputs} "
            f"output(s); use 0..{num_outputs - 1}",
            param="head_index",
        )
    return head_index


def _load_seqcls(
    model_dir: Path,
    common: dict[str, Any],
    head_index: int | None,
    normalization: Normalization | None,
    device: torch.device,
) -> tuple[HFRunner, int, int]:
    try:
        hf_config = AutoConfig.from_pretrained(
            model_dir, trust_remote_code=common["trust_remote_code"]
        )
    except _LOAD_ERRORS as exc:
        raise InvalidInput(
            f"{model_dir}: config.json is not a config transformers can read ({exc}); for a "
            "model with its own code, set trust_remote_code if you trust the source",
            param="location",
        ) from exc
    index = _head_index(head_index, hf_config.num_labels, model_dir)
    model = _from_pretrained(AutoModelForSequenceClassification, model_dir, common)
    model.eval().to(device)
    num_parameters = sum(p.numel() for p in model.parameters())
    pad_id = model.config.pad_token_id
    pad_id = int(pad_id) if isinstance(pad_id, int) else 0
    score = getattr(model, "score", None)
    backbone = model.base_model
    if isinstance(score, torch.nn.Linear) and backbone is not model:
        bias = score.bias[index] if score.bias is not None else torch.zeros(())
        head = RewardHead(
            weight=score.weight[index].detach().to(device, torch.float32).clone(),
            bias=bias.detach().to(device, torch.float32).clone(),
        )
        # Keep only the backbone: the head is copied out, and the full model's own forward
        # (which finds the last token from pad ids) is never called.
        runner = HFRunner(
            backbone, device=device, head=head, normalization=normalization, pad_token_id=pad_id
        )
    else:
        logger.info("%s has no linear `score` head; using the model's own logits", model_dir)
        runner = HFRunner(
            model,
            device=device,
            head=None,
            head_index=index,
            normalization=normalization,
            pad_token_id=pad_id,
        )
    return runner, num_parameters, index


def _load_value_head(
    model_dir: Path,
    common: dict[str, Any],
    layout: _Layout,
    weight_files: list[Path],
    head_index: int | None,
    normalization: Normalization | None,
    device: torch.device,
) -> tuple[HFRunner, int, int]:
    weight, bias = _read_head(layout, weight_files)
    if weight.dim() == 1:
        weight = weight.unsqueeze(0)
    index = _head_index(head_index, weight.shape[0], model_dir)
    # AutoModel, not AutoModelForCausalLM: the LM head ([vocab, hidden], the largest matrix
    # of small models) is never needed for a scalar reward; its keys are skipped on load.
    backbone = _from_pretrained(AutoModel, model_dir, common)
    backbone.eval().to(device)
    hidden = getattr(backbone.config, "hidden_size", None)
    if hidden is not None and weight.shape[-1] != hidden:
        raise InvalidInput(
            f"{model_dir}: the value head expects hidden size {weight.shape[-1]} but the "
            f"backbone has {hidden}; the head and backbone do not belong together",
            param="location",
        )
    head = RewardHead(
        weight=weight[index].to(device, torch.float32).clone(),
        bias=(bias.reshape(-1)[index] if bias is not None else torch.zeros(()))
        .to(device, torch.float32)
        .clone(),
    )
    pad_id = backbone.config.pad_token_id
    pad_id = int(pad_id) if isinstance(pad_id, int) else 0
    runner = HFRunner(
        backbone, device=device, head=head, normalization=normalization, pad_token_id=pad_id
    )
    num_parameters = sum(p.numel() for p in backbone.parameters()) + weight.numel()
    num_parameters += bias.numel() if bias is not None else 0
    return runner, num_parameters, index


def _read_head(
    layout: _Layout, weight_files: list[Path]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head's weight and bias tensors, read directly from the checkpoint."""
    assert layout.head_weight_key is not None
    if layout.head_file is not None:
        tensors = _read_tensors(layout.head_file)
        weight = tensors.get(layout.head_weight_key)
        if weight is None:
            raise InvalidInput(
                f"{layout.head_file.name} has no {layout.head_weight_key!r}; expected the PAR "
                "scalar head state dict (summary.weight, summary.bias)",
                param="location",
            )
        bias = tensors.get(layout.head_bias_key) if layout.head_bias_key else None
        return weight, bias
    keys = _checkpoint_keys(weight_files)
    weight = _read_tensor(keys[layout.head_weight_key], layout.head_weight_key)
    bias = (
        _read_tensor(keys[layout.head_bias_key], layout.head_bias_key)
        if layout.head_bias_key
        else None
    )
    return weight, bias


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidInput(f"{path.name} does not hold a state dict", param="location")
    return state


def _read_tensor(path: Path, key: str) -> torch.Tensor:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)[key].clone()


def _load_tokenizer(model_dir: Path, *, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"{model_dir}: could not load the tokenizer ({exc}); the directory needs the "
            "tokenizer files the RM was trained with",
            param="location",
        ) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InvalidInput(
                f"{model_dir}: the tokenizer has neither a pad nor an eos token; add a "
                "pad_token to tokenizer_config.json",
                param="location",
            )
        # Only for code that pads with the tokenizer; the runner reads lengths, not pad ids.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --- fingerprint ------------------------------------------------------------------------------


def model_fingerprint(
    model_dir: Path,
    weight_files: list[Path],
    tokenizer: PreTrainedTokenizerBase,
    settings: dict[str, Any],
) -> str:
    """A short hex id of everything that decides a reward: weights, config, tokenizer files,
    chat template and scoring settings.

    Weights are *sampled*, not hashed whole, so a 16 GB RM does not hash for a minute: for each
    file its name, size, safetensors header (every tensor's name, dtype, shape and offsets) and
    its first and last MiB. Retraining or swapping checkpoints changes those; an in-place edit
    of bytes in the middle of a tensor that keeps the size would not be seen.
    """
    digest = hashlib.sha256(b"par-reward-fingerprint-v1\0")

    def add(label: str, payload: bytes) -> None:
        digest.update(f"{label}\0{len(payload)}\0".encode())
        digest.update(payload)

    for path in sorted(weight_files, key=lambda p: p.name):
        add("weights", path.name.encode())
        add("sample", _sample_file(path))
    config_path = model_dir / "config.json"
    add("config", config_path.read_bytes())
    for name in TOKENIZER_FILES:
        path = model_dir / name
        if path.is_file():
            add(name, path.read_bytes())
    template = tokenizer.chat_template
    add("chat_template", json.dumps(template, sort_keys=True).encode())
    add("settings", json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _sample_file(path: Path) -> bytes:
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= 2 * SAMPLE_BYTES:
            return size.to_bytes(8, "little") + handle.read()
        parts = [size.to_bytes(8, "little")]
        if path.suffix == ".safetensors":
            header_len = int.from_bytes(handle.read(8), "little")
            parts.append(handle.read(min(header_len, size - 8)))
            handle.seek(0)
        parts.append(handle.read(SAMPLE_BYTES))
        handle.seek(size - SAMPLE_BYTES)
        parts.append(handle.read(SAMPLE_BYTES))
        return b"".join(parts)
