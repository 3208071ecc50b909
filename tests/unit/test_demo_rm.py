"""The demo RM means something: it ranks held-out preference pairs (a seed neither training nor
the build's own evaluation used) at >= 0.9, scored through the service's loader, encoder and
runner. Also: the build cache is atomic and built once under concurrency."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from service.config import DEFAULT_CACHE_DIR
from service.demo import build
from service.demo.build import METRICS_FILE, RECIPE, pairwise_accuracy, preference_pairs
from service.models.encoding import PairEncoder
from service.models.loaders import ModelSource, load_reward_model

FRESH_SEED = 20261121
assert FRESH_SEED not in (RECIPE.train_seed, RECIPE.eval_seed)


@pytest.mark.slow
def test_demo_rm_ranks_held_out_pairs() -> None:
    cache_dir = Path(os.environ.get("PAR_CACHE_DIR", DEFAULT_CACHE_DIR))
    loaded = load_reward_model(ModelSource("demo", device="cpu", cache_dir=cache_dir))
    encoder = PairEncoder(loaded.tokenizer, max_tokens=RECIPE.max_tokens)
    pairs = preference_pairs(600, seed=FRESH_SEED)
    encoded = [
        (
            encoder.encode(prompt=p.prompt, response=p.chosen).input_ids,
            encoder.encode(prompt=p.prompt, response=p.rejected).input_ids,
        )
        for p in pairs
    ]
    accuracy = pairwise_accuracy(loaded.runner.forward, encoded)
    by_family = {
        family: pairwise_accuracy(
            loaded.runner.forward,
            [e for e, p in zip(encoded, pairs, strict=True) if p.family == family],
        )
        for family in RECIPE.families
    }
    longer_is_chosen = sum(len(c) > len(r) for c, r in encoded) / len(encoded)
    print(f"held-out accuracy {accuracy:.3f}, by family {by_family}")
    assert accuracy >= 0.9, by_family
    # Length alone must not solve the task.
    assert 0.35 <= longer_is_chosen <= 0.65


def test_ensure_demo_model_builds_once_under_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def fake_train(out_dir: Path) -> dict[str, object]:
        calls.append(out_dir)
        time.sleep(0.2)  # long enough for the other builders to queue on the lock
        (out_dir / "config.json").write_text("{}")
        metrics: dict[str, object] = {"train_seconds": 0.2, "held_out_pairwise_accuracy": 1.0}
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(build, "train_demo_model", fake_train)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build.ensure_demo_model(tmp_path)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1
    assert len(set(results)) == 1
    target = results[0]
    assert target == build.demo_model_dir(tmp_path)
    assert (target / METRICS_FILE).is_file()
    # No temp directories left behind; the lock file is the only other entry.
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name, f"{target.name}.lock"]
    assert build.ensure_demo_model(tmp_path) == target
    assert len(calls) == 1


def test_killed_builders_temp_dirs_are_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / f".{build.demo_model_dir(tmp_path).name}-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_text("partial")

    def fake_train(out_dir: Path) -> dict[str, object]:
        (out_dir / METRICS_FILE).write_text("{}")
        return {"train_seconds": 0.0, "held_out_pairwise_accuracy": 1.0}

    monkeypatch.setattr(build, "train_demo_model", fake_train)
    target = build.ensure_demo_model(tmp_path)
    assert not stale.exists()
    assert (target / METRICS_FILE).is_file()


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_train(out_dir: Path) -> dict[str, object]:
        (out_dir / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setattr(build, "train_demo_model", broken_train)
    with pytest.raises(RuntimeError, match="boom"):
        build.ensure_demo_model(tmp_path)
    assert not build.demo_model_dir(tmp_path).exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"{build.demo_model_dir(tmp_path).name}.lock"]
