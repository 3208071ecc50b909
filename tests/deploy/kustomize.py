"""A small kustomize build, for the tests (no kustomize binary on CI machines).

It implements exactly the features `deploy/k8s` and `deploy/grafana` use, the way kustomize
v5 does, and fails loudly on anything else:

- `resources`: files (multi-document YAML) and directories holding a kustomization;
- `components` (kind Component): applied to the resources accumulated so far;
- `configMapGenerator`: `literals` and `files`, `behavior: create | merge`, with the name
  suffix hash kustomize computes, and `generatorOptions` (`disableNameSuffixHash`,
  `labels`); references to a generated ConfigMap in pod templates follow the new name;
- `patches` with a `path`: strategic-merge patches, matched by kind and name, with the merge
  keys of the list fields our patches touch (containers by name, ...); other lists replace;
- `namespace` and `images` (newName / newTag).

Where `kubectl` is installed, tests/deploy/test_manifests.py checks that this builds the
same objects as `kubectl kustomize`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_FIELDS = {
    "apiVersion", "kind", "resources", "components", "configMapGenerator",
    "generatorOptions", "patches", "namespace", "images",
}  # fmt: skip
# Merge keys of the list fields our patches reach (from the Kubernetes API's
# x-kubernetes-patch-merge-key); any other list is replaced whole, as for atomic lists.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class KustomizeError(ValueError):
    pass


def build(directory: Path) -> list[Resource]:
    """The objects `kustomize build directory` would output (in an unspecified order)."""
    resources = _build(directory.resolve(), expect_kind="Kustomization")
    # Drop the builder's bookkeeping (which generator made a ConfigMap, whether it hashes).
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in resources]


def _load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this builder does not implement: {unknown}")
    return data  # type: ignore[no-any-return]


def _build(directory: Path, *, expect_kind: str) -> list[Resource]:
    kustomization = _load_kustomization(directory)
    kind = kustomization.get("kind", "Kustomization")
    if kind != expect_kind:
        raise KustomizeError(f"{directory}: kind {kind}, expected {expect_kind}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += _build(path, expect_kind="Kustomization")
        else:
            _inside(directory, path)
            resources += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return _apply(directory, kustomization, resources)


def _apply(
    directory: Path, kustomization: dict[str, Any], resources: list[Resource]
) -> list[Resource]:
    """The transformations of one kustomization or component, in kustomize's order."""
    resources = copy.deepcopy(resources)
    for entry in kustomization.get("components", []):
        component_dir = (directory / entry).resolve()
        component = _load_kustomization(component_dir)
        if component.get("kind") != "Component":
            raise KustomizeError(f"{component_dir}: not a Component")
        if component.get("resources"):
            raise KustomizeError(f"{component_dir}: component resources are not implemented")
        resources = _apply(component_dir, component, resources)
    options = kustomization.get("generatorOptions", {})
    for generator in kustomization.get("configMapGenerator", []):
        resources = _generate_config_map(directory, generator, options, resources)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: - path:` is implemented")
        path = (directory / patch["path"]).resolve()
        _inside(directory, path)
        for doc in yaml.safe_load_all(path.read_text()):
            target = _find(resources, doc["kind"], doc["metadata"]["name"])
            merged = strategic_merge(target, doc)
            resources[resources.index(target)] = merged
    if "namespace" in kustomization:
        for resource in resources:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in _containers(resources):
            name, sep, tag = container["image"].rpartition(":")
            if not sep or "/" in tag:  # no tag (a ':' may belong to a registry port)
                name = container["image"]
            if name == image["name"]:
                new = image.get("newName", name)
                tag = image.get("newTag")
                container["image"] = f"{new}:{tag}" if tag else new
    return resources


def _generate_config_map(
    directory: Path, generator: dict[str, Any], options: dict[str, Any], resources: list[Resource]
) -> list[Resource]:
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"literal without '=': {literal!r}")
        data[key] = value
    for entry in generator.get("files", []):
        path = (directory / entry).resolve()
        _inside(directory, path)
        data[path.name] = path.read_text()
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    if behavior == "merge":
        existing = next(
            (r for r in resources if r["kind"] == "ConfigMap" and r.get("_generated") == name), None
        )
        if existing is None:
            raise KustomizeError(f"merge into ConfigMap {name!r}, which no base generates")
        existing["data"] = {**existing.get("data", {}), **data}
        before = existing["metadata"]["name"]
        existing["metadata"]["name"] = _hashed_name(name, existing["data"], existing["_hash"])
        _rename_config_map_refs(resources, {name, before}, existing["metadata"]["name"])
        return resources
    if behavior != "create":
        raise KustomizeError(f"configMapGenerator behavior {behavior!r} is not implemented")
    use_hash = not options.get("disableNameSuffixHash", False)
    config_map: Resource = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": _hashed_name(name, data, use_hash)},
        "data": data,
        "_generated": name,  # bookkeeping, dropped by `build`
        "_hash": use_hash,
    }
    if options.get("labels"):
        config_map["metadata"]["labels"] = dict(options["labels"])
    resources = [*resources, config_map]
    _rename_config_map_refs(resources, {name}, config_map["metadata"]["name"])
    return resources


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a ConfigMap: sha256 of the JSON encoding of
    {"data", "kind", "name": ""} with keys sorted and Go's HTML escaping, first 10 hex
    digits with 0, 1, 3, a, e swapped for letters (no vowels, no digit-only suffix)."""
    encoded = json.dumps(
        {"data": dict(sorted(data.items())), "kind": "ConfigMap", "name": ""},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _hashed_name(name: str, data: dict[str, str], use_hash: bool) -> str:
    return f"{name}-{config_map_hash(data)}" if use_hash else name


def _rename_config_map_refs(resources: list[Resource], old: set[str], new: str) -> None:
    """Point pod templates' references to a generated ConfigMap (by its generator name or
    its previous hashed name, in `old`) at its new name."""
    for resource in resources:
        if resource["kind"] not in POD_TEMPLATE_KINDS:
            continue
        pod = resource["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if volume.get("configMap", {}).get("name") in old:
                volume["configMap"]["name"] = new
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                if source.get("configMapRef", {}).get("name") in old:
                    source["configMapRef"]["name"] = new
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref is not None and ref.get("name") in old:
                    ref["name"] = new


def strategic_merge(target: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(target, dict) and isinstance(patch, dict):
        out = dict(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(target, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out_list = list(target)
        for item in patch:
            match = next((i for i, x in enumerate(out_list) if x.get(key) == item.get(key)), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = strategic_merge(out_list[match], item)
        return out_list
    return copy.deepcopy(patch)


def _find(resources: list[Resource], kind: str, name: str) -> Resource:
    for resource in resources:
        if resource["kind"] == kind and resource["metadata"]["name"] == name:
            return resource
    raise KustomizeError(f"patch target {kind}/{name} not found")


def _containers(resources: list[Resource]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for resource in resources:
        if resource["kind"] in POD_TEMPLATE_KINDS:
            pod = resource["spec"]["template"]["spec"]
            out += pod.get("containers", []) + pod.get("initContainers", [])
    return out


def _inside(root: Path, path: Path) -> None:
    """kustomize's default load restriction: files come from the kustomization's own tree."""
    if not path.is_relative_to(root):
        raise KustomizeError(f"{path} is outside {root} (kustomize refuses to load it)")
    if not path.is_file():
        raise KustomizeError(f"{path}: no such file")
