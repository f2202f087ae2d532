"""The spend dashboard: `GET /dashboard` and its three static assets, shipped in the package (the routes are
rows of `handler/route_table.py`).

Auth. A browser cannot send `Authorization` on a page load, so the page is split in two:

- The shell (`/dashboard`, `/dashboard/static/dashboard.js`, `.css`) is static and public: it holds no data,
  no key and nothing about this deployment; anyone could read the same bytes in the package.
- Every figure on the page comes from the admin API (`/admin/usage`, `/admin/keys`, and `/health`'s count of
  settlements waiting in the spool, given to admin keys only), fetched by the page's
  script with `Authorization: Bearer <admin key>`. Without a key that call answers 401, with a non-admin
  key 403 `admin_only`, exactly as for any other client: the dashboard adds no new way in.

The key is typed into the page and kept in `sessionStorage` (gone when the tab closes), never in the URL,
a cookie or the server's logs: a cookie would make every admin route CSRF-able and a key in the URL would
leak into history and `Referer`. The other design (serve the page only to a request carrying the key as a
header, with the data inlined) would work only through a proxy that adds the header, and would put the
ledger into an HTML page that browsers and proxies may cache.

The page runs under `Content-Security-Policy: default-src 'self'` with no inline script or style, so a
key name or model name shown on it cannot run as code; `form-action 'none'` keeps the key form from ever
submitting the key as a query string. Nothing is fetched from anywhere but this gateway (no CDN, no fonts).
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from handler.errors import NotFoundError

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE = "dashboard.html"


def read_asset(name: str) -> bytes:
    """One file of `handler/static/`, as installed with the package."""
    return (resources.files("handler") / "static" / name).read_bytes()


class Dashboard:
    """Serves the dashboard's shell; the files are read once, when the app is built."""

    def __init__(self) -> None:
        self.page = read_asset(PAGE)
        self.assets = {name: (read_asset(name), media_type) for name, media_type in ASSETS.items()}

    async def index(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        found = self.assets.get(name)
        if found is None:
            raise NotFoundError(f"no dashboard asset '{name}'", code="not_found")
        body, media_type = found
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)
