"""`par-client` as a user runs it (a real process) against the live service: references
imported from JSONL, a second run skipping what is done; offline scoring in order."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.service_process import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def par_client(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "par_client", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def write_jsonl(path: Path, rows: list[dict[str, Any] | None]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" if r is not None else "\n" for r in rows))
    return path


def test_refs_import_is_resumable_and_idempotent(service: ServiceProcess, tmp_path: Path) -> None:
    rows: list[dict[str, Any] | None] = [
        {"prompt": "CLI: what is 3 + 4?", "references": ["3 + 4 = 7.", "It is 7."]},
        {"messages": [{"role": "user", "content": "CLI: name a fruit."}], "references": ["A fig."]},
        None,  # blank lines are skipped
        {"prompt": "CLI: say hi.", "references": ["Hi!", "Hello.", "Hey."]},
    ]
    refs = write_jsonl(tmp_path / "refs.jsonl", rows)
    first = summary(par_client("refs", "import", refs, "--url", service.url, "--batch-size", "2"))
    assert first["prompts"] == 3 and first["references"] == 6
    assert first["stored"] == 6 and first["already_stored"] == 0
    assert json.loads((tmp_path / "refs.jsonl.progress").read_text()) == {"lines_done": 4}

    # The same file again: everything was done, nothing is sent.
    second = summary(par_client("refs", "import", refs, "--url", service.url))
    assert second["skipped_lines"] == 4 and second["prompts"] == 0 and second["stored"] == 0

    # Lines appended later: only they are sent.
    rows.append({"prompt": "CLI: what is 3 + 4?", "references": ["Seven.", "3 + 4 = 7."]})
    write_jsonl(refs, rows)
    third = summary(par_client("refs", "import", refs, "--url", service.url))
    assert third["skipped_lines"] == 4 and third["prompts"] == 1
    assert third["stored"] == 1 and third["already_stored"] == 1

    # Without the progress file the service itself knows what it has: nothing is new.
    again = summary(par_client("refs", "import", refs, "--url", service.url, "--restart"))
    assert again["prompts"] == 4 and again["stored"] == 0 and again["already_stored"] == 8

    # The references are there for PAR.
    r = httpx.post(
        f"{service.url}/v1/score",
        json={"items": [{"prompt": "CLI: say hi.", "response": "Hi!"}]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["results"][0]["reference_rewards"]) == 3


def test_refs_import_names_the_bad_line(service: ServiceProcess, tmp_path: Path) -> None:
    refs = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "CLI: fine.", "references": ["ok"]}, {"prompt": "CLI: no refs."}],
    )
    run = par_client("refs", "import", refs, "--url", service.url)
    assert run.returncode == 1
    assert f"{refs}:2" in run.stderr


def test_score_writes_one_line_per_item_in_order(service: ServiceProcess, tmp_path: Path) -> None:
    items: list[dict[str, Any]] = [
        {"prompt": "What is 17 + 25?", "response": "17 + 25 = 42."},
        {"prompt": "Say hi.", "responses": ["Hi!", "Go away."]},
        {"messages": [{"role": "user", "content": "Name a red fruit."}], "response": "A cherry."},
        {"prompt": "What is 2 + 2?", "responses": ["4.", "5.", "22."]},
        {"prompt": "Reply politely to: help?", "response": "Of course."},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", [*items[:2], None, *items[2:]])
    out = tmp_path / "out.jsonl"
    args = ["--batch-size", "2", "--concurrency", "3", "--method", "vanilla"]
    result = summary(par_client("score", source, out, "--url", service.url, *args))
    assert result["lines"] == 5 and result["pairs"] == 8
    expected = httpx.post(
        f"{service.url}/v1/score",
        json={"items": items, "shaping": {"method": "vanilla"}},
        timeout=60,
    ).json()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(line["results"]) for line in lines] == [1, 2, 1, 3, 1]
    got = [r["reward"] for line in lines for r in line["results"]]
    assert got == pytest.approx([r["reward"] for r in expected["results"]], abs=1e-5)
    assert {line["model_version"] for line in lines} == {expected["model_version"]}


def test_score_stops_on_an_invalid_line_without_output(
    service: ServiceProcess, tmp_path: Path
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": "b", "typo": 1}],
    )
    out = tmp_path / "out.jsonl"
    run = par_client("score", source, out, "--url", service.url, "--method", "vanilla")
    assert run.returncode == 1
    assert f"{source}:2" in run.stderr
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_the_console_script_is_installed() -> None:
    script = shutil.which("par-client", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e ./clients/python (make setup does it)"
    run = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "refs" in run.stdout and "score" in run.stdout
