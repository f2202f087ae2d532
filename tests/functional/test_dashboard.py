"""The spend dashboard: a static shell behind a strict CSP, its data only for admin keys, and its charts as a
real browser (Debian's headless Chromium) draws them."""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Running, openai_client
from tests.support.browser import Browser, Image, Page, chromium_missing, decode_png

ASSETS = ("dashboard.html", "dashboard.js", "dashboard.css")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an identifier for createElementNS, never fetched
DATA_CALLS = (
    "/admin/usage?since=2020-01-01",
    "/admin/usage?since=2020-01-01&group_by=day,model",
    "/admin/usage?since=2020-01-01&group_by=day,key",
    "/admin/usage?since=2020-01-01&group_by=key",
    "/admin/keys",
)
PALETTE_SIZE = 8  # colours in dashboard.js: the 8th series and beyond share "other"


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def asset(name: str) -> str:
    return (resources.files("handler") / "static" / name).read_text()


def usd_text(value: float) -> str:
    """The dashboard's rendering of a USD amount: at most 9 decimals, at least 2."""
    whole, frac = f"{value:.9f}".split(".")
    return f"${int(whole):,}.{frac.rstrip('0').ljust(2, '0')}"


def usd_value(text: str) -> float:
    return float(text.replace("$", "").replace(",", ""))


def test_the_page_is_a_static_shell_under_a_strict_csp(running: Running) -> None:
    page = httpx.get(f"{running.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "form-action 'none'" in csp
    assert "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert html == asset("dashboard.html")
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts and all(body.strip() == "" for body in scripts), "no inline script"
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "no inline event handlers"
    assert not re.search(r"\sstyle\s*=|<style", html, re.I), "no inline style"
    assert not re.search(r"gwk_\w", html), "the shell carries no key"
    for name, media in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        served = httpx.get(f"{running.url}/dashboard/static/{name}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(media)
        assert served.text == asset(name) and served.headers["content-security-policy"] == csp
    missing = httpx.get(f"{running.url}/dashboard/static/..%2Fapp.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{running.url}/dashboard/static/dashboard.html").status_code == 404


def test_the_assets_ship_in_the_package_and_reach_for_nothing_outside() -> None:
    for name in ASSETS:
        text = asset(name).replace(SVG_NAMESPACE, "")
        assert not re.search(r"[a-z][a-z0-9+.-]*://", text, re.I), f"{name} names an absolute URL"
        assert not re.search(r"""["'(]\s*//""", text), f"{name} names a protocol-relative URL"
        assert "@import" not in text and "url(" not in text, f"{name} pulls in other resources"
    html = asset("dashboard.html")
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(referenced) == ["dashboard/static/dashboard.css", "dashboard/static/dashboard.js"]
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["handler"]


def test_the_data_behind_the_page_needs_an_admin_key(running: Running, key: str) -> None:
    for path in DATA_CALLS:
        anonymous = httpx.get(f"{running.url}{path}")
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        not_admin = httpx.get(f"{running.url}{path}", headers=headers(key))
        assert not_admin.status_code == 403, path
        assert not_admin.json()["error"]["code"] == "admin_only"


# --- in the browser -------------------------------------------------------------------------


def seed(running: Running, mint: Callable[..., str]) -> dict[str, str]:
    """Requests from three keys to three models, through the SDK as users send them."""
    keys = {name: mint(name=f"dashboard-{name}") for name in ("alpha", "beta", "gamma")}
    plan = {
        "alpha": [("regional", 1200), ("regional", 800), ("gpt-4o-mini", 400)],
        "beta": [("flaky", 900), ("gpt-4o-mini", 300)],
        "gamma": [("gpt-4o-mini", 200)],
    }
    for name, calls in plan.items():
        client = openai_client(running, keys[name])
        for model, words in calls:
            prompt = " ".join(["spend"] * words)
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    wait_for_ledger(running, {keys[name].split("_")[1]: len(calls) for name, calls in plan.items()})
    return keys


def wait_for_ledger(running: Running, expected: dict[str, int], timeout: float = 10) -> None:
    """Line items settle after the answer is sent: wait until each key has its requests in the ledger."""
    admin = running.mint(admin=True, name="dashboard-ledger-reader")
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{running.url}/admin/usage", params={"group_by": "key"}, headers=headers(admin))
        counts = {row["key"]: row["requests"] for row in answer.json()["data"]}
        if all(counts.get(key_id) == n for key_id, n in expected.items()):
            return
        assert time.monotonic() < deadline, f"the ledger has {counts}, expected {expected}"
        time.sleep(0.05)


def sign_in(page: Page, key: str) -> str:
    """Type a key into the page's form and submit it, as a person would; the state the page settles in."""
    page.wait_for("!document.getElementById('sign-in').hidden")
    page.evaluate(
        f"(() => {{ const input = document.getElementById('key'); input.value = {key!r};"
        " document.getElementById('sign-in').requestSubmit(); })()"
    )
    state: str = page.wait_for(
        "['ready', 'refused', 'error'].includes(document.documentElement.dataset.state)"
        " && document.documentElement.dataset.state"
    )
    return state


def expected_legend(rows: list[dict[str, Any]], field: str, label: Callable[[str], str]) -> list[list[str]]:
    """The legend the page should draw: series by spend, the tail folded into "other"."""
    ranked = sorted(rows, key=lambda r: (-r["total_usd"], r[field]))
    shown = PALETTE_SIZE - 1 if len(ranked) > PALETTE_SIZE else len(ranked)
    legend = [[label(r[field]), usd_text(r["total_usd"])] for r in ranked[:shown]]
    if len(ranked) > shown:
        rest = ranked[shown:]
        legend.append([f"other ({len(rest)})", usd_text(sum(r["total_usd"] for r in rest))])
    return legend


def chart_geometry(page: Page, chart_id: str) -> dict[str, Any]:
    geometry: dict[str, Any] = page.evaluate(
        f"""(() => {{
            const svg = document.querySelector('#{chart_id} svg');
            const box = svg.getBoundingClientRect();
            const bars = [...svg.querySelectorAll('rect.bar')].map((r) => {{
                const b = r.getBoundingClientRect();
                return {{ fill: r.getAttribute('fill'), width: b.width, height: b.height }};
            }});
            const legend = [...document.querySelectorAll('#{chart_id} .legend li')].map(
                (li) => [li.querySelector('.name').textContent, li.querySelector('.sum').textContent]);
            const top = box.top + window.scrollY;
            return {{ box: [box.left, top, box.right, top + box.height], bars, legend }};
        }})()"""
    )
    return geometry


def assert_bars_painted(image: Image, geometry: dict[str, Any]) -> int:
    """Each bar colour covers, in the screenshot's chart area, the area the DOM gives its bars (give or take
    the anti-aliased pixel on each edge)."""
    inner: dict[tuple[int, ...], float] = {}
    outer: dict[tuple[int, ...], float] = {}
    for bar in geometry["bars"]:
        colour = tuple(int(bar["fill"][i : i + 2], 16) for i in (1, 3, 5))
        width, height = bar["width"], bar["height"]
        inner[colour] = inner.get(colour, 0) + max(0, width - 2) * max(0, height - 2)
        outer[colour] = outer.get(colour, 0) + (width + 2) * (height + 2)
    left, top, right, bottom = (int(v) for v in geometry["box"])
    counts = image.count_colours([(c[0], c[1], c[2]) for c in inner], (left, top, right, bottom))
    for colour, painted in counts.items():
        assert inner[colour] <= painted <= outer[colour], (colour, inner[colour], painted, outer[colour])
    return sum(counts.values())


def refusals_logged(page: Page, since: int) -> int:
    """A mark after the browser has logged every admin request refused since `since` (it logs a failed load
    as a console error, which can arrive after the page has moved on)."""
    deadline = time.monotonic() + 5
    while True:
        seen = page.activity(since=since)
        refused = sum("/admin/" in url for url in seen.requests)
        if sum("403" in error for error in seen.console_errors) >= refused or time.monotonic() > deadline:
            return page.mark()
        time.sleep(0.05)


@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
def test_the_dashboard_draws_spend_in_a_real_browser(running: Running, mint: Any, key: str, tmp_path: Path) -> None:
    seeded = seed(running, mint)
    admin = mint(admin=True, name="dashboard-admin")
    url = f"{running.url}/dashboard"
    with Browser() as browser:
        page = browser.new_page()
        page.goto(url)

        before = page.mark()
        assert sign_in(page, key) == "refused"
        status = page.evaluate("document.getElementById('status').textContent")
        assert status.startswith("403 admin_only")
        assert page.evaluate("sessionStorage.length") == 0, "a refused key is not kept"

        mark = refusals_logged(page, before)  # the browser logs each of the refused key's 403s as a failed load
        assert sign_in(page, admin) == "ready"
        assert page.evaluate("sessionStorage.getItem('gateway.dashboard.adminKey')") == admin
        assert admin not in page.evaluate("location.href + document.documentElement.outerHTML")

        page.evaluate(
            "(() => { const p = document.getElementById('period'); p.value = '7';"
            " p.dispatchEvent(new Event('change')); })()"
        )
        page.wait_for("document.documentElement.dataset.state === 'ready'")
        window = page.evaluate("({...document.getElementById('report').dataset})")
        png = page.screenshot(tmp_path / "dashboard.png")
        model_chart = chart_geometry(page, "chart-model")
        key_chart = chart_geometry(page, "chart-key")
        shown = page.evaluate(
            """({
                total: document.getElementById('total-spend').textContent,
                pending: document.getElementById('pending').hidden,
                requests: document.getElementById('total-requests').textContent,
                footer: [...document.querySelectorAll('#all-keys td')].map((td) => td.textContent),
                rows: [...document.querySelectorAll('#top-keys tbody tr')].map(
                    (tr) => [tr.dataset.key || null, ...[...tr.cells].map((td) => td.textContent)]),
            })"""
        )
        activity = page.activity(since=mark)

    def usage(group_by: str = "") -> list[dict[str, Any]]:
        params = {"since": window["since"], "until": window["until"], "group_by": group_by}
        answer = httpx.get(f"{running.url}/admin/usage", params=params, headers=headers(admin))
        assert answer.status_code == 200
        rows: list[dict[str, Any]] = answer.json()["data"]
        return rows

    # The figures are the API's, to the ninth decimal, and the line items add up to the total.
    (total,) = usage()
    assert shown["total"] == usd_text(total["total_usd"])
    assert shown["requests"] == f"{total['requests']:,}"
    assert shown["footer"][-1] == usd_text(total["total_usd"])
    assert shown["footer"][1] == f"{total['requests']:,}"
    assert abs(sum(usd_value(row[-1]) for row in shown["rows"]) - total["total_usd"]) <= 1e-9 * len(shown["rows"])
    by_key = sorted(usage("key"), key=lambda r: (-r["total_usd"], r["key"]))
    assert shown["rows"][0][0] == by_key[0]["key"] and shown["rows"][0][-1] == usd_text(by_key[0]["total_usd"])
    ids = {k.split("_")[1] for k in seeded.values()}
    assert ids <= {r["key"] for r in by_key}

    # The legends are the API's series, by spend; the bars are painted where the DOM says they are.
    names = {r["id"]: r["name"] for r in httpx.get(f"{running.url}/admin/keys", headers=headers(admin)).json()["data"]}
    assert model_chart["legend"] == expected_legend(usage("model"), "model", lambda m: m)
    assert key_chart["legend"] == expected_legend(by_key, "key", lambda k: f"{names[k]} · {k}" if k in names else k)
    image = decode_png(png)
    assert image.width == 1200
    for chart in (model_chart, key_chart):
        assert len({bar["fill"] for bar in chart["bars"]}) >= min(3, len(chart["legend"]))
        assert assert_bars_painted(image, chart) >= 3000, "the chart's bars are visible in the screenshot"

    # Settlements waiting in the spool would be announced (from /health, read with the admin key): none wait.
    assert shown["pending"] is True and any(u.endswith("/health") for u in activity.requests)

    # Nothing but this gateway was asked for anything, and the page ran without errors or CSP reports.
    assert all(u.startswith(running.url) or u == "about:blank" for u in activity.requests), activity.requests
    assert not activity.failed_requests and not activity.exceptions and not activity.console_errors, activity
