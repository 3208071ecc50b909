"""`par-client`: bulk jobs against the service, with progress bars (stderr) and a one-line JSON
summary (stdout).

    par-client refs import refs.jsonl [--url http://rm:8000]
        One JSON object per line: {"prompt": "..."} or {"messages": [...]}, plus
        "references": ["...", ...]. Resumable: the last line done is kept in
        refs.jsonl.progress, and a second run starts after it (--restart ignores it). The
        service itself keeps references idempotently, so re-sending lines only costs time;
        the summary says how many references were new ("stored").

    par-client score in.jsonl out.jsonl [--concurrency 4] [--method vanilla]
        One score item per line, in the service's format ({"prompt"|"messages",
        "response"|"responses", "references"?...}; blank lines are skipped); writes one line
        per item, in order:
        {"model_version": ..., "results": [{"reward", "shaped_reward", ...}, ...]}. All lines
        are scored by one model version (a hot swap half-way stops the job with a 409).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from par_client._core import DEFAULT_URL, RetryPolicy, pairs_of
from par_client.client import AsyncRewardClient, RewardClient
from par_client.errors import InvalidRequest, RewardServiceError
from par_client.types import ScoreResponse


class InputError(Exception):
    """A problem with the input file, named by line."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = args.run(args)
    except (InputError, RewardServiceError) as exc:
        print(f"par-client: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        action="append",
        help="service base URL; repeat (or comma-separate) for replicas "
        f"(default: $PAR_REWARD_URL or {DEFAULT_URL})",
    )
    common.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    common.add_argument("--max-attempts", type=int, default=8, help="tries per request (429/503)")
    common.add_argument("--batch-size", type=int, default=64, help="input lines per request")
    common.add_argument("--quiet", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(prog="par-client", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="command")

    refs = commands.add_parser("refs", help="reference responses")
    refs_commands = refs.add_subparsers(required=True, metavar="command")
    imp = refs_commands.add_parser(
        "import", parents=[common], help="register references from a JSONL file (resumable)"
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--restart", action="store_true", help="ignore FILE.progress")
    imp.add_argument("--model", help="served model name (default: the active one)")
    imp.set_defaults(run=import_references)

    score = commands.add_parser(
        "score", parents=[common], help="score a JSONL file of items into another, in order"
    )
    score.add_argument("input", type=Path)
    score.add_argument("output", type=Path)
    score.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    score.add_argument("--method", help="shaping method (default: the service's, par)")
    score.add_argument("--max-references", type=int, help="K: references per prompt")
    score.add_argument("--run-id", help="run of stateful shapings (meanstd, clip, minmax)")
    score.add_argument("--model", help="served model name (default: the active one)")
    score.set_defaults(run=score_file)
    return parser


def _urls(args: argparse.Namespace) -> list[str]:
    given = args.url or [os.environ.get("PAR_REWARD_URL") or DEFAULT_URL]
    return [u for value in given for u in value.split(",") if u.strip()]


def _retry(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(max_attempts=args.max_attempts)


# --- input ------------------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def _items(path: Path, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line after the first `skip` lines."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if number <= skip or not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise InputError(f"{path}:{number}: each line must be a JSON object")
            yield number, item


def _batches(
    path: Path, skip: int, size: int
) -> Iterator[tuple[int, list[tuple[int, dict[str, Any]]]]]:
    """(last line number covered, [(line number, item)...]) batches of up to `size` items."""
    batch: list[tuple[int, dict[str, Any]]] = []
    for number, item in _items(path, skip):
        batch.append((number, item))
        if len(batch) == size:
            yield number, batch
            batch = []
    if batch:
        yield batch[-1][0], batch


def _at_line(exc: RewardServiceError, path: Path, numbered: Sequence[tuple[int, Any]]) -> Exception:
    """The service names `items[k]...`; say which input line that is."""
    match = re.match(r"items\[(\d+)\]", exc.param or "")
    if match and int(match.group(1)) < len(numbered):
        return InputError(f"{path}:{numbered[int(match.group(1))][0]}: {exc}")
    return exc


# --- refs import ------------------------------------------------------------------------------


def import_references(args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.file
    progress = Path(f"{path}.progress")
    total = _count_lines(path)
    done = 0 if args.restart else _lines_done(progress)
    if done > total:
        raise InputError(
            f"{progress} says {done} lines were done but {path} has {total}; the file changed: "
            "run again with --restart (already stored references are not stored twice)"
        )
    prompts = references = stored = 0
    model_version = None
    with (
        RewardClient(_urls(args), timeout_s=args.timeout, retry=_retry(args)) as client,
        tqdm(total=total, initial=done, unit="line", desc="references", disable=args.quiet) as bar,
    ):
        position = done
        for last_line, batch in _batches(path, done, args.batch_size):
            try:
                response = client.register_references([item for _, item in batch], model=args.model)
            except InvalidRequest as exc:
                raise _at_line(exc, path, batch) from None
            prompts += len(batch)
            references += sum(len(r.reference_rewards) for r in response.results)
            stored += response.stored
            model_version = response.model_version
            _write_progress(progress, last_line)
            bar.update(last_line - position)
            position = last_line
        _write_progress(progress, total)
        bar.update(total - position)
    return {
        "file": str(path),
        "lines": total,
        "skipped_lines": done,
        "prompts": prompts,
        "references": references,
        "stored": stored,
        "already_stored": references - stored,
        "model_version": model_version,
    }


def _lines_done(progress: Path) -> int:
    if not progress.is_file():
        return 0
    try:
        return int(json.loads(progress.read_text())["lines_done"])
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"{progress} is not a progress file; remove it or pass --restart"
        ) from None


def _write_progress(progress: Path, lines_done: int) -> None:
    # Written to a temporary file and renamed: an interrupted run never leaves half a file.
    tmp = progress.with_name(progress.name + ".tmp")
    tmp.write_text(json.dumps({"lines_done": lines_done}))
    os.replace(tmp, progress)


# --- score ------------------------------------------------------------------------------------


def score_file(args: argparse.Namespace) -> dict[str, Any]:
    tmp = args.output.with_name(args.output.name + ".tmp")
    try:
        summary = asyncio.run(_score_file(args, tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a partial output behind
        raise
    os.replace(tmp, args.output)
    return summary


async def _score_file(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    total = _count_lines(args.input)
    shaping = {
        k: v
        for k, v in {"method": args.method, "max_references": args.max_references}.items()
        if v is not None
    }
    options: dict[str, Any] = {
        "shaping": shaping or None,
        "run_id": args.run_id,
        "model": args.model,
    }
    lines = pairs = 0
    model_version: str | None = None
    async with AsyncRewardClient(
        _urls(args), timeout_s=args.timeout, retry=_retry(args), max_concurrency=1
    ) as client:

        async def score(batch: list[tuple[int, dict[str, Any]]]) -> ScoreResponse:
            try:
                return await client.score([item for _, item in batch], **options)
            except InvalidRequest as exc:
                raise _at_line(exc, args.input, batch) from None

        # A window of batches in flight, written strictly in input order; a batch's slot is
        # freed only once it is written, so memory stays bounded by the window.
        window: collections.deque[tuple[list, asyncio.Task[ScoreResponse]]] = collections.deque()
        with (
            tmp.open("w", encoding="utf-8") as out,
            tqdm(total=total, unit="line", desc="scoring", disable=args.quiet) as bar,
        ):

            async def write_oldest() -> None:
                nonlocal lines, pairs, model_version
                batch, task = window.popleft()
                response = await task
                model_version = response.model_version
                start = 0
                for _, item in batch:
                    n = pairs_of(item)
                    results = [asdict(r) for r in response.results[start : start + n]]
                    out.write(json.dumps({"model_version": model_version, "results": results}))
                    out.write("\n")
                    start += n
                lines += len(batch)
                pairs += start
                bar.update(len(batch))

            try:
                for _, batch in _batches(args.input, 0, args.batch_size):
                    if len(window) >= max(1, args.concurrency):
                        await write_oldest()
                    window.append((batch, asyncio.create_task(score(batch))))
                    if model_version is None:
                        # The first answer names the model version; every later batch must be
                        # scored by the same one.
                        await write_oldest()
                        options["expected_model_version"] = model_version
                while window:
                    await write_oldest()
                bar.update(total - bar.n)  # blank lines
            finally:
                for _, task in window:
                    task.cancel()
                await asyncio.gather(*(task for _, task in window), return_exceptions=True)
    if lines == 0:
        raise InputError(f"{args.input} has no items")
    seconds = time.monotonic() - started
    return {
        "input": str(args.input),
        "output": str(args.output),
        "lines": lines,
        "pairs": pairs,
        "model_version": model_version,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs / seconds, 1) if seconds > 0 else None,
    }
