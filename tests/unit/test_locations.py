"""Model locations the admin API accepts, checked before anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import InvalidInput
from service.models.locations import validate_location


def model_dir(path: Path, config: dict | None = None, files: tuple[str, ...] = ()) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"architectures": ["X"]}))
    (path / "model.safetensors").write_bytes(b"")
    for name in files:
        (path / name).write_bytes(b"")
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Settings, Path, Path]:
    root = tmp_path / "models"
    outside = tmp_path / "elsewhere"
    settings = Settings(model_roots=[root], cache_dir=tmp_path / "cache")
    model_dir(root / "good")
    model_dir(outside / "secret")
    return settings, root, outside


def test_directory_inside_a_root_is_accepted(roots) -> None:
    settings, root, _ = roots
    assert validate_location(str(root / "good"), settings) == str((root / "good").resolve())
    assert validate_location("good", settings) == str((root / "good").resolve())


@pytest.mark.parametrize(
    ("location", "needle"),
    [
        ("https://example.com/model", "URL"),
        ("file:///etc", "URL"),
        ("s3://bucket/model", "URL"),
    ],
)
def test_urls_are_refused(roots, location: str, needle: str) -> None:
    settings, _, _ = roots
    with pytest.raises(InvalidInput, match=needle):
        validate_location(location, settings)


def test_dot_dot_and_outside_paths_are_refused(roots) -> None:
    settings, root, outside = roots
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        validate_location(str(root / ".." / "elsewhere" / "secret"), settings)
    with pytest.raises(InvalidInput, match="outside the allowed"):
        validate_location(str(outside / "secret"), settings)
    with pytest.raises(InvalidInput, match="outside the allowed"):
        validate_location("/etc", settings)


def test_symlink_escaping_the_root_is_refused(roots) -> None:
    settings, root, outside = roots
    (root / "sneaky").symlink_to(outside / "secret")
    with pytest.raises(InvalidInput, match="outside the allowed"):
        validate_location(str(root / "sneaky"), settings)


def test_pickled_weights_and_remote_code_need_opt_in(roots, tmp_path: Path) -> None:
    settings, root, _ = roots
    model_dir(root / "pickled", files=("pytorch_model.bin",))
    model_dir(root / "remote", config={"auto_map": {"AutoModel": "modeling_x.X"}})
    with pytest.raises(InvalidInput, match="pickled"):
        validate_location(str(root / "pickled"), settings)
    with pytest.raises(InvalidInput, match="auto_map"):
        validate_location(str(root / "remote"), settings)
    trusting = Settings(
        model_roots=[root], cache_dir=tmp_path / "cache", allow_pickle=True, trust_remote_code=True
    )
    assert validate_location(str(root / "pickled"), trusting)
    assert validate_location(str(root / "remote"), trusting)


def test_hub_ids_only_when_allowed(roots, tmp_path: Path) -> None:
    settings, root, _ = roots
    with pytest.raises(InvalidInput, match="hub"):
        validate_location("Skywork/Skywork-Reward-Llama-3.1-8B", settings)
    hub = Settings(model_roots=[root], cache_dir=tmp_path / "cache", allow_hub_models=True)
    assert validate_location("Skywork/Skywork-Reward-Llama-3.1-8B", hub) == (
        "Skywork/Skywork-Reward-Llama-3.1-8B"
    )


def test_missing_directory_and_missing_config(roots) -> None:
    settings, root, _ = roots
    with pytest.raises(InvalidInput, match="no model directory"):
        validate_location(str(root / "absent"), settings)
    (root / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"config\.json"):
        validate_location(str(root / "empty"), settings)
