"""The dashboard's files in `handler/dashboard/static/` and their media types: named here, apart from the routes,
so the route table can list them without importing the dashboard."""

from __future__ import annotations

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE = "dashboard.html"
