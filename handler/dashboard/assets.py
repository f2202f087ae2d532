"""The dashboard's files in `handler/dashboard/static/` and their media types: named here, apart from the routes,
so the route table can list them without importing the dashboard."""

from __future__ import annotations

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",  # declared by the page: a browser would otherwise ask for /favicon.ico (a 404)
}
PAGE = "dashboard.html"
