"""Ray Serve tests run only when asked for (`make test-ray`, i.e. `pytest -m ray`): Ray is not a
test dependency and starting a Ray cluster costs ~half a minute, so `make test` skips them
even where Ray happens to be installed."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "ray" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="Ray Serve: run with `make test-ray` (pytest -m ray)")
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(skip)
