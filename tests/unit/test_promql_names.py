"""Every PromQL expression in the Grafana dashboard and the alert rules names only metrics that
a live /metrics scrape exposes (an app that served traffic, fake runner)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "par-reward-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# Words that look like identifiers but are no metric: binary operators and modifiers.
# (Functions and aggregations are recognised by the "(" that follows them.)
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
    "atan2",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside strings, label matchers,
    ranges and label lists, that are neither called like a function nor keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers (may hold Grafana $variables)
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries ([5m], [$__rate_interval])
    # Label lists go with their keyword, so `sum by (le) (...)` reads as a call of `sum`.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_the_extractor_on_tricky_expressions() -> None:
    expr = (
        'sum by (le, operation) (rate(x_bucket{a="b(c)", d=~"$run"}[$__rate_interval])) '
        "/ on(instance) group_left y_total > 0.5e3 and bool z offset 5m "
        "or histogram_quantile(0.9, w) unless max without (job) (v:recorded)"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z", "w", "v:recorded"}
    assert metric_names("par_queue_depth / par_queue_capacity > 0.8") == {
        "par_queue_depth",
        "par_queue_capacity",
    }


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def deployed_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query in the Grafana dashboard and every alert rule."""
    out: list[tuple[str, str]] = []
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else ""
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert inner, f"variable {variable['name']}: unexpected query {query!r}"
        out.append((f"variable {variable['name']}", inner.group(1)))
    for annotation in dashboard["annotations"]["list"]:
        out.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule['alert']}", rule["expr"]))
    return out


@pytest.fixture
def exposed(make_client) -> set[str]:
    """Sample names of a scrape after PAR, stateful and vanilla traffic (every family has
    series: the signals need PAR values, references and varied lengths)."""
    client = make_client()
    bodies = [
        {
            "items": [
                {
                    "prompt": "What is 2 + 2?",
                    "responses": ["4", "It is four, clearly.", "5", "four or so, I would say"],
                    "references": ["2 + 2 = 4.", "Four."],
                }
            ],
            "run_id": "promql",
        },
        {
            "items": [{"prompt": "Say hi.", "responses": ["Hi!", "Hello there."]}],
            "shaping": {"method": "meanstd"},
            "run_id": "promql",
        },
        {"items": [{"prompt": "p", "response": "q"}], "shaping": {"method": "vanilla"}},
    ]
    for body in bodies:
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
    text = client.get("/metrics").text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_deployed_promql_expression_names_exposed_metrics(exposed: set[str]) -> None:
    expressions = deployed_expressions()
    assert len(expressions) >= 30
    missing = [
        f"{where}: {name}"
        for where, expr in expressions
        for name in sorted(metric_names(expr))
        if name not in exposed
    ]
    assert not missing, "\n".join(missing)
    # The alert rules cover the reward-hacking signals and serving health.
    alerts = " ".join(expr for where, expr in expressions if where.startswith("alert"))
    for metric in (
        "par_reward_saturation_share",
        "par_reward_drift_reference_std",
        "par_reward_length_correlation",
        "par_queue_depth",
        "par_http_requests_total",
        "par_store_up",
    ):
        assert metric in alerts
