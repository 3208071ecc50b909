"""`python -m service.demo [--cache-dir D]`: build (or find) the demo RM and print where it is
and how well it ranks held-out pairs."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from service.config import DEFAULT_CACHE_DIR
from service.demo.build import METRICS_FILE, ensure_demo_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("PAR_CACHE_DIR", DEFAULT_CACHE_DIR)),
        help="where the demo RM is built and cached (default: $PAR_CACHE_DIR or %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    path = ensure_demo_model(args.cache_dir)
    metrics = json.loads((path / METRICS_FILE).read_text())
    print(path)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
