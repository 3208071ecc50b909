"""The built-in dashboard as an operator sees it: a real service process on the demo RM, real
scoring traffic over HTTP, and the page in headless Chromium (Debian's `chromium`, driven by
Playwright; `make system-deps` installs it). The page must show the traffic's counts, draw
its charts, and load nothing from outside the service. A screenshot is kept in artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Request, Route, expect, sync_playwright

from tests.e2e.service_process import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
RUN = "e2e-dashboard"
OTHER_RUN = "e2e-baseline"
PROMPTS = {
    "What is 17 + 25?": (
        ["17 + 25 = 42.", "The answer is 42."],
        ["42.", "17 + 25 = 42, since 17 + 20 = 37 and 37 + 5 = 42.", "It is 51.", "No idea."],
    ),
    "Name a red fruit.": (
        ["A strawberry is red."],
        ["A strawberry.", "Cherries are red, and so are raspberries.", "A banana.", "Red."],
    ),
    "Reply politely to: can you help me?": (
        ["Of course, I would be glad to help."],
        ["Sure, happy to help!", "No.", "Of course. What do you need?", "Go away."],
    ),
}


@pytest.fixture(scope="module")
def service(demo_dir: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(model=str(demo_dir)).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def send_traffic(url: str) -> tuple[int, int]:
    """Two PAR requests on registered references for RUN, one vanilla request for OTHER_RUN.
    Returns (pairs, reference rewards) recorded for RUN."""
    reg = httpx.post(
        f"{url}/v1/references",
        json={"items": [{"prompt": p, "references": refs} for p, (refs, _) in PROMPTS.items()]},
        timeout=120,
    )
    assert reg.status_code == 200, reg.text
    pairs = references = 0
    for responses in (slice(0, 4), slice(1, 3)):
        body = {
            "items": [{"prompt": p, "responses": r[responses]} for p, (_, r) in PROMPTS.items()],
            "run_id": RUN,
        }
        r = httpx.post(f"{url}/v1/score", json=body, timeout=120)
        assert r.status_code == 200, r.text
        pairs += len(r.json()["results"])
        references += sum(len(x["reference_rewards"]) for x in r.json()["results"])
    baseline = {
        "items": [{"prompt": "Name a red fruit.", "responses": ["A tomato.", "Apples", "Plums."]}],
        "shaping": {"method": "vanilla"},
        "run_id": OTHER_RUN,
    }
    r = httpx.post(f"{url}/v1/score", json=baseline, timeout=120)
    assert r.status_code == 200, r.text
    return pairs, references


# Pixels of a colour drawn on a canvas (the bars of a histogram), read back from the page.
COUNT_PIXELS = """([id, r, g, b]) => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40
        && Math.abs(d[i + 2] - b) < 40) n++;
  }
  return n;
}"""


def test_dashboard_shows_the_traffic_in_chromium(service: ServiceProcess) -> None:
    assert CHROMIUM.exists(), "install Debian's chromium: make system-deps"
    pairs, references = send_traffic(service.url)
    assert (pairs, references) == (18, 24)

    outside: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

            def only_the_service(route: Route, request: Request) -> None:
                if request.url.startswith(service.url):
                    route.continue_()
                else:
                    outside.append(request.url)
                    route.abort()

            page.route("**/*", only_the_service)
            page.goto(f"{service.url}/dashboard?run={RUN}")

            # Counts, as text, once the first refresh has landed.
            expect(page.locator("#count-total")).to_have_text(str(pairs), timeout=20_000)
            expect(page.locator("#count-window")).to_have_text(str(pairs))
            expect(page.locator("#count-references")).to_have_text(str(references))
            expect(page.locator("#count-methods")).to_have_text(f"par: {pairs}")
            expect(page.locator("#count-par")).to_have_text(str(pairs))
            expect(page.locator("#signal-saturation")).to_contain_text("%")
            assert page.locator("#signal-drift").inner_text().endswith("σ")
            assert page.locator("#status-text").inner_text().startswith("live")

            # The charts show the traffic: raw (blue) and reference (amber) bars, PAR bars.
            assert page.evaluate(COUNT_PIXELS, ["chart-rewards", 37, 99, 235]) > 200
            assert page.evaluate(COUNT_PIXELS, ["chart-rewards", 245, 158, 11]) > 200
            assert page.evaluate(COUNT_PIXELS, ["chart-shaped", 5, 150, 105]) > 200
            assert page.evaluate(COUNT_PIXELS, ["chart-scatter", 37, 99, 235]) > 50

            # Selectors list both runs; switching shows the other run's counts live.
            runs = page.locator("#run-select option").all_inner_texts()
            assert RUN in runs and OTHER_RUN in runs
            page.select_option("#run-select", OTHER_RUN)
            expect(page.locator("#count-total")).to_have_text("3")
            expect(page.locator("#count-methods")).to_have_text("vanilla: 3")
            assert f"run={OTHER_RUN}" in page.url
            page.select_option("#run-select", RUN)
            expect(page.locator("#count-total")).to_have_text(str(pairs))

            ARTIFACTS.mkdir(exist_ok=True)
            page.wait_for_timeout(300)  # let the redraw after the switch settle
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the page reached outside the service: {outside}"
    assert problems == [], problems
