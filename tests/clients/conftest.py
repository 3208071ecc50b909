"""One live service process (the demo RM over real HTTP) shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.service_process import ServiceProcess


@pytest.fixture(scope="package")
def service(demo_dir: Path, demo_cache_dir: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(env={"PAR_CACHE_DIR": str(demo_cache_dir)}).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0
