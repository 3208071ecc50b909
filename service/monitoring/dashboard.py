"""The built-in dashboard page: one self-contained HTML file (inline CSS and JS, charts drawn
on <canvas>, no CDN), which polls `GET /v1/dashboard/data`."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def dashboard_page() -> str:
    return (resources.files("service.monitoring") / "static" / "dashboard.html").read_text(
        encoding="utf-8"
    )
