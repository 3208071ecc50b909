"""`python -m tests.e2e.fake_service --tokenizer DIR --port P`: the service run exactly as
`python -m service` runs it (same `serve`: signal handling, drain, exit code), on the fake
runner instead of a real model, for process-level tests (shutdown, soak) that should not
wait for a model to load. Settings come from the `PAR_*` environment as usual."""

from __future__ import annotations

import argparse
import logging
from collections import deque

from transformers import AutoTokenizer

from service.__main__ import serve
from service.app import create_app
from service.config import Settings
from service.models.encoding import PairEncoder
from service.models.fake import FakeRunner
from service.models.registry import ServedModel

MAX_TOKENS = 512


def main() -> None:
    parser = argparse.ArgumentParser(prog="fake_service", description=__doc__)
    parser.add_argument("--tokenizer", required=True, help="a saved tokenizer directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--seconds-per-token", type=float, default=0.0, help="fake forward time per padded token"
    )
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument(
        "--zero-reward",
        action="store_true",
        help="reward 0 for every pair instead of a checksum (a model that costs nothing, for "
        "measuring the service's own overhead)",
    )
    args = parser.parse_args()
    settings = Settings(port=args.port)
    logging.basicConfig(level=settings.log_level.upper())
    runner = (
        FakeRunner(reward_fn=lambda ids: 0.0)
        if args.zero_reward
        else FakeRunner(seconds_per_token=args.seconds_per_token)
    )
    # The fake runner records every batch for tests to inspect; a process that runs for
    # minutes (the soak) keeps the latest few only, or the record itself would be the leak.
    runner.batches = deque(maxlen=8)  # type: ignore[assignment]
    model = ServedModel(
        name="default",
        version="fake-default",
        runner=runner,
        encoder=PairEncoder(
            AutoTokenizer.from_pretrained(args.tokenizer), max_tokens=args.max_tokens
        ),
        info={"kind": "fake"},
    )
    serve(create_app(settings, models=[model]), settings)


if __name__ == "__main__":
    main()
