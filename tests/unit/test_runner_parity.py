"""The runner against plain transformers forwards, for every on-disk RM layout the loaders accept;
batch invariance; the loaders' refusals; the fingerprint.

Models are tiny Llamas (and one BERT) built from configs in a temp dir, so the whole module runs
in seconds with no downloads.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

from service.demo.factory import (
    build_seqcls_rm,
    build_value_head_rm,
    copy_tokenizer_files,
    synthetic_corpus,
    train_tokenizer,
)
from service.errors import InvalidInput
from service.models.loaders import LoadedModel, ModelSource, load_reward_model

PARITY_TOL = 1e-4
INVARIANCE_TOL = 1e-5
FIRST_ID = 8  # above the special tokens, so no sequence contains pad/bos/eos by accident


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rms")
    tok = train_tokenizer(root / "tok", synthetic_corpus(400, seed=1), vocab_size=400)
    dirs = {
        "seqcls": build_seqcls_rm(root / "seqcls", tok, seed=1),
        "seqcls_copy": build_seqcls_rm(root / "seqcls_copy", tok, seed=1),
        "seqcls_other": build_seqcls_rm(root / "seqcls_other", tok, seed=2),
        "multi": build_seqcls_rm(root / "multi", tok, num_labels=3, seed=3),
        "trl": build_value_head_rm(root / "trl", tok, style="trl", seed=4),
        "openrlhf": build_value_head_rm(
            root / "openrlhf", tok, style="openrlhf", normalize=(0.7, 2.5), seed=5
        ),
        "openrlhf_vh": build_value_head_rm(
            root / "openrlhf_vh", tok, style="openrlhf", head_name="value_head", seed=6
        ),
        "par": build_value_head_rm(root / "par", tok, style="par", seed=7),
        "bert": _build_bert(root / "bert", tok),
    }
    dirs["tok"] = tok
    return dirs


def _build_bert(out_dir: Path, tokenizer_dir: Path) -> Path:
    config = BertConfig(
        vocab_size=400,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(8)
    model = BertForSequenceClassification(config)
    model.save_pretrained(out_dir)
    copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def _load(path: Path, **kwargs: object) -> LoadedModel:
    return load_reward_model(ModelSource(str(path), device="cpu", **kwargs))  # type: ignore[arg-type]


def _random_sequences(n: int, *, seed: int, max_len: int = 96) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [rng.randrange(FIRST_ID, 400) for _ in range(rng.randint(1, max_len))] for _ in range(n)
    ]


def _last_hidden(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).last_hidden_state[0, -1]


# --- parity with plain transformers -----------------------------------------------------------


def test_seqcls_matches_transformers(models: dict[str, Path]) -> None:
    loaded = _load(models["seqcls"])
    reference = AutoModelForSequenceClassification.from_pretrained(models["seqcls"])
    sequences = _random_sequences(12, seed=0)
    expected = []
    with torch.no_grad():
        for ids in sequences:
            expected.append(reference(torch.tensor([ids])).logits[0, 0].item())
    assert loaded.kind == "sequence_classification"
    assert loaded.runner.forward(sequences) == pytest.approx(expected, abs=PARITY_TOL)


@pytest.mark.parametrize("head_index", [0, 1, 2])
def test_multi_label_head_index(models: dict[str, Path], head_index: int) -> None:
    loaded = _load(models["multi"], head_index=head_index)
    reference = AutoModelForSequenceClassification.from_pretrained(models["multi"])
    sequences = _random_sequences(6, seed=1)
    with torch.no_grad():
        expected = [reference(torch.tensor([s])).logits[0, head_index].item() for s in sequences]
    assert loaded.runner.forward(sequences) == pytest.approx(expected, abs=PARITY_TOL)


def test_trl_value_head_matches_transformers(models: dict[str, Path]) -> None:
    path = models["trl"]
    loaded = _load(path)
    state = load_file(path / "model.safetensors")
    weight, bias = state["v_head.summary.weight"][0], state["v_head.summary.bias"][0]
    lm = AutoModelForCausalLM.from_pretrained(path)
    sequences = _random_sequences(12, seed=2)
    expected = []
    with torch.no_grad():
        for ids in sequences:
            hidden = lm(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
            expected.append((hidden @ weight + bias).item())
    assert loaded.kind == "value_head"
    assert loaded.runner.forward(sequences) == pytest.approx(expected, abs=PARITY_TOL)


@pytest.mark.parametrize(
    ("name", "head_key", "mean", "std"),
    [("openrlhf", "score.weight", 0.7, 2.5), ("openrlhf_vh", "value_head.weight", 0.0, 1.0)],
)
def test_openrlhf_matches_transformers(
    models: dict[str, Path], name: str, head_key: str, mean: float, std: float
) -> None:
    path = models[name]
    loaded = _load(path)
    weight = load_file(path / "model.safetensors")[head_key][0]
    backbone = AutoModel.from_pretrained(path)
    sequences = _random_sequences(12, seed=3)
    expected = [((_last_hidden(backbone, s) @ weight).item() - mean) / std for s in sequences]
    assert loaded.runner.forward(sequences) == pytest.approx(expected, abs=PARITY_TOL)


def test_openrlhf_normalisation_is_applied(models: dict[str, Path]) -> None:
    # The normalised model must not agree with the raw head output: guards against a parity
    # test that passes because mean=0, std=1.
    path = models["openrlhf"]
    weight = load_file(path / "model.safetensors")["score.weight"][0]
    backbone = AutoModel.from_pretrained(path)
    ids = _random_sequences(1, seed=4)[0]
    raw = (_last_hidden(backbone, ids) @ weight).item()
    assert _load(path).runner.forward([ids])[0] == pytest.approx((raw - 0.7) / 2.5, abs=1e-5)
    assert abs(raw - (raw - 0.7) / 2.5) > 1e-3


def test_par_scalar_head_matches_transformers(models: dict[str, Path]) -> None:
    path = models["par"]
    loaded = _load(path, allow_pickle=True)
    head = torch.load(path / "scalar_head.pt", weights_only=True)
    backbone = AutoModel.from_pretrained(path)
    sequences = _random_sequences(12, seed=5)
    expected = [
        (_last_hidden(backbone, s) @ head["summary.weight"][0] + head["summary.bias"][0]).item()
        for s in sequences
    ]
    assert loaded.runner.forward(sequences) == pytest.approx(expected, abs=PARITY_TOL)


def test_encoder_without_score_uses_model_logits(models: dict[str, Path]) -> None:
    loaded = _load(models["bert"])
    reference = AutoModelForSequenceClassification.from_pretrained(models["bert"])
    sequences = _random_sequences(8, seed=6)
    with torch.no_grad():
        expected = [reference(torch.tensor([s])).logits[0, 0].item() for s in sequences]
    assert loaded.runner.forward(sequences) == pytest.approx(expected, abs=PARITY_TOL)


# --- batch invariance -------------------------------------------------------------------------


def _assert_batch_invariant(loaded: LoadedModel, seed: int) -> float:
    """Every item of a 33-item random-length batch scores as it does alone. Returns the max
    abs difference."""
    batch = _random_sequences(33, seed=seed, max_len=160)
    alone = [loaded.runner.forward([s])[0] for s in batch]
    together = loaded.runner.forward(batch)
    shuffled_order = list(range(len(batch)))
    random.Random(seed).shuffle(shuffled_order)
    shuffled = loaded.runner.forward([batch[i] for i in shuffled_order])
    diffs = [abs(a - b) for a, b in zip(alone, together, strict=True)]
    diffs += [abs(alone[i] - r) for i, r in zip(shuffled_order, shuffled, strict=True)]
    assert max(diffs) <= INVARIANCE_TOL
    return max(diffs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["seqcls", "trl", "openrlhf", "bert"])
def test_batch_invariance(models: dict[str, Path], name: str, attn: str) -> None:
    loaded = _load(models[name])
    loaded.runner.model.set_attn_implementation(attn)
    _assert_batch_invariant(loaded, seed=hash(name) % 1000)


def test_pad_equal_to_eos_does_not_move_the_read_position(models: dict[str, Path]) -> None:
    # A sequence ending in the pad id (pad == eos in many tokenizers) is still read at its
    # own last token, alone and in a batch.
    loaded = _load(models["seqcls"])
    pad = loaded.runner.model.config.pad_token_id
    ids = [*_random_sequences(1, seed=7)[0], pad]
    shorter = ids[:-1]
    alone = loaded.runner.forward([ids])[0]
    batched = loaded.runner.forward([_random_sequences(1, seed=8, max_len=200)[0], ids])[1]
    assert batched == pytest.approx(alone, abs=INVARIANCE_TOL)
    assert alone != pytest.approx(loaded.runner.forward([shorter])[0], abs=1e-6)


def test_empty_batch_and_warmup(models: dict[str, Path]) -> None:
    loaded = _load(models["seqcls"])
    assert loaded.runner.forward([]) == []
    loaded.runner.warmup()
    assert loaded.runner.device == "cpu"
    loaded.runner.close()
    with pytest.raises(RuntimeError):
        loaded.runner.forward([[FIRST_ID]])


# --- loader refusals --------------------------------------------------------------------------


def test_pickle_only_dir_needs_allow_pickle(models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "pickled"
    shutil.copytree(models["seqcls"], target)
    state = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    torch.save(state, target / "pytorch_model.bin")
    with pytest.raises(InvalidInput, match="allow_pickle"):
        _load(target)
    ids = _random_sequences(3, seed=9)
    pickled = _load(target, allow_pickle=True).runner.forward(ids)
    assert pickled == pytest.approx(_load(models["seqcls"]).runner.forward(ids), abs=1e-6)


def test_par_pickled_head_needs_allow_pickle(models: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="allow_pickle"):
        _load(models["par"])


def test_missing_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        _load(tmp_path / "nope")


def test_dir_without_weights_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    shutil.copy(models["seqcls"] / "config.json", target / "config.json")
    with pytest.raises(InvalidInput, match="no weights"):
        _load(target)


@pytest.mark.parametrize(("name", "head_index"), [("multi", 3), ("seqcls", 1), ("trl", 1)])
def test_head_index_out_of_range(models: dict[str, Path], name: str, head_index: int) -> None:
    with pytest.raises(InvalidInput, match="out of range") as info:
        _load(models[name], head_index=head_index)
    assert info.value.param == "head_index"


def test_multi_label_needs_head_index(models: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="set head_index"):
        _load(models["multi"])


def test_unknown_format_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    # A bare backbone: no classification architecture and no value-head keys.
    target = tmp_path / "bare"
    AutoModel.from_pretrained(models["openrlhf"]).save_pretrained(target)
    copy_tokenizer_files(models["tok"], target)
    with pytest.raises(InvalidInput, match="unknown reward-model format"):
        _load(target)


# --- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_stable_and_sensitive(models: dict[str, Path], tmp_path: Path) -> None:
    base = _load(models["seqcls"]).fingerprint
    assert _load(models["seqcls"]).fingerprint == base
    # Same bytes in another directory: same model, same version.
    assert _load(models["seqcls_copy"]).fingerprint == base
    assert _load(models["seqcls_other"]).fingerprint != base

    templated = tmp_path / "templated"
    shutil.copytree(models["seqcls"], templated)
    template = templated / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|end|>", "<|eos|>"))
    assert _load(templated).fingerprint != base

    multi = {_load(models["multi"], head_index=i).fingerprint for i in range(3)}
    assert len(multi) == 3
    assert _load(models["seqcls"], dtype="bfloat16").fingerprint != base


def test_checkpoint_missing_weights_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    # transformers would random-init the missing tensor and only log it; the loader refuses.
    target = tmp_path / "incomplete"
    shutil.copytree(models["seqcls"], target)
    state = load_file(target / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidInput, match="does not match its config"):
        _load(target)


def test_corrupt_weights_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "corrupt"
    shutil.copytree(models["trl"], target)
    (target / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidInput, match="not a readable weight file"):
        _load(target)
