"""`python -m service` / `par-reward`: run the service with uvicorn."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import uvicorn

from service.app import create_app
from service.config import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="par-reward", description=__doc__)
    parser.add_argument("--host", help="bind address (PAR_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (PAR_PORT; default 8000)")
    parser.add_argument(
        "--model", help="'demo', a local directory or a hub id (PAR_MODEL; default demo)"
    )
    parser.add_argument("--redis-url", help="Redis URL (PAR_REDIS_URL; default in-process)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "model": args.model,
            "redis_url": args.redis_url,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
