"""Where the admin API may load a model from, checked before anything is loaded.

A location is a directory inside one of the allowed roots (after resolving symlinks), or a hub
id where the operator allowed hubs. Refused with a 422 that says why: URLs, `..`, paths or
symlinks that leave the roots, pickled weights (`*.bin`, `*.pt`, ...) unless allowed, and
`auto_map` (code shipped with the checkpoint) unless remote code is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from service.config import Settings
from service.errors import InvalidInput

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}$")


def allowed_roots(settings: Settings) -> list[Path]:
    return [p.resolve() for p in [*settings.model_roots, settings.cache_dir]]


def validate_location(location: str, settings: Settings) -> str:
    """The location to load, as a resolved directory path or a hub id; raises InvalidInput."""
    if location == "demo":
        return location
    if "://" in location or location.startswith(("http:", "https:", "file:")):
        raise InvalidInput(
            "model locations are directories under the allowed roots, not URLs",
            param="path",
        )
    if ".." in Path(location).parts:
        raise InvalidInput("'..' is not allowed in a model location", param="path")
    path = Path(location)
    if (
        not path.is_absolute()
        and HUB_ID.match(location)
        and not _inside_roots_exists(location, settings)
    ):
        if not settings.allow_hub_models:
            raise InvalidInput(
                "loading from the hub is off on this server (PAR_ALLOW_HUB_MODELS); give a "
                "directory under the allowed roots",
                param="path",
            )
        return location
    candidate = path if path.is_absolute() else _first_root(settings) / path
    resolved = candidate.resolve()
    roots = allowed_roots(settings)
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise InvalidInput(
            "the model location is outside the allowed model roots (PAR_MODEL_ROOTS); "
            "symlinks are followed before this check",
            param="path",
        )
    if not resolved.is_dir():
        raise InvalidInput("no model directory at that location", param="path")
    _check_contents(resolved, settings)
    return str(resolved)


def _first_root(settings: Settings) -> Path:
    roots = allowed_roots(settings)
    return roots[0]


def _inside_roots_exists(location: str, settings: Settings) -> bool:
    return any((root / location).exists() for root in allowed_roots(settings))


def _check_contents(directory: Path, settings: Settings) -> None:
    files = [p for p in directory.iterdir() if p.is_file()]
    if not settings.allow_pickle and any(p.suffix in PICKLE_SUFFIXES for p in files):
        raise InvalidInput(
            "the model directory holds pickled weights (*.bin, *.pt, ...), which can run "
            "arbitrary code when loaded; convert them to safetensors, or set "
            "PAR_ALLOW_PICKLE=1 if you trust them",
            param="path",
        )
    config = directory / "config.json"
    if not config.is_file():
        raise InvalidInput("the model directory has no config.json", param="path")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        raise InvalidInput("the model's config.json is not valid JSON", param="path") from None
    if isinstance(data, dict) and data.get("auto_map") and not settings.trust_remote_code:
        raise InvalidInput(
            "the model's config.json has 'auto_map' (code shipped with the checkpoint); set "
            "PAR_TRUST_REMOTE_CODE=1 only if you trust it",
            param="path",
        )
