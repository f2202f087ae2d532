"""Debian's headless Chromium, driven over the DevTools protocol, and a PNG reader for its screenshots.

The browser speaks DevTools on a pipe (`--remote-debugging-pipe`: commands in on fd 3, answers out on fd 4,
each message JSON ending in a NUL byte) rather than on a TCP port, so no other local process can drive it
and no websocket client is needed. It starts with an empty profile, no extensions, no sync or background
traffic, and a host resolver that knows only 127.0.0.1: a page that reaches for the internet fails to load
that part, as it would on an offline machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is absent (Debian's chromium package; `make test` installs it)"
    return None


class BrowserError(RuntimeError):
    """The browser answered a command with an error, died, or did not answer in time."""


@dataclass
class PageEvents:
    """What a page did besides answering commands."""

    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, width: int = 1200, height: int = 900) -> None:
        self.width = width
        self.height = height
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.log_path = Path(self.profile) / "chromium.log"
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Browser:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-color-profile=srgb",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--window-size={self.width},{self.height}",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        log = open(self.log_path, "wb")  # the child keeps its own copy; ours is closed below
        try:
            # The shell hands our stdin/stdout pipes to the browser as fds 3 and 4 (its DevTools pipe).
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", CHROMIUM, *flags],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    # --- the pipe ---------------------------------------------------------------------------

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buffer = b""
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        """Send one command and wait for its answer's `result`."""
        assert self.proc is not None and self.proc.stdin is not None
        with self._cond:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\0")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise BrowserError(f"{method}: the browser is gone ({self.log_tail()})") from exc
        deadline = time.monotonic() + timeout
        with self._cond:
            while message_id not in self._answers:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(
                        f"{method}: no answer ({'closed' if self._closed else 'timeout'}); {self.log_tail()}"
                    )
                self._cond.wait(left)
            answer = self._answers.pop(message_id)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def events(self, session: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._events if e.get("sessionId") == session]

    def wait_event(self, session: str, method: str, timeout: float = 15, after: int = 0) -> dict[str, Any]:
        """The first event `method` of this session, at or beyond index `after` of its event list."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                mine = [e for e in self._events if e.get("sessionId") == session]
                for event in mine[after:]:
                    if event["method"] == method:
                        return event
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"no {method} event; {self.log_tail()}")
                self._cond.wait(left)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Network", "Log"):
            page.send(f"{domain}.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page


class Page:
    """One tab, attached with a flat DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str, timeout: float = 15) -> None:
        """Navigate and wait for the load event."""
        mark = len(self.browser.events(self.session))
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")
        self.browser.wait_event(self.session, "Page.loadEventFired", timeout, after=mark)

    def evaluate(self, expression: str, timeout: float = 15) -> Any:
        """The value of a JS expression (awaited if a promise), as JSON."""
        answer = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression[:80]}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Poll a JS expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still falsy after {timeout}s: {expression}")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page (not only the viewport), written to `path` and returned."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        answer = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        png = base64.b64decode(answer["data"])
        path.write_bytes(png)
        return png

    def mark(self) -> int:
        """A point in this page's event list, for `activity(since=...)`."""
        return len(self.browser.events(self.session))

    def activity(self, since: int = 0) -> PageEvents:
        """Requests, failures, uncaught exceptions and console errors seen so far (after `since`)."""
        seen = PageEvents()
        for event in self.browser.events(self.session)[since:]:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                seen.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                seen.failed_requests.append(f"{params.get('errorText')} {params.get('blockedReason', '')}".strip())
            elif method == "Runtime.exceptionThrown":
                seen.exceptions.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                seen.console_errors.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                seen.console_errors.append(params["entry"].get("text", ""))
        return seen


# --- PNG ------------------------------------------------------------------------------------


@dataclass
class Image:
    """Decoded 8-bit RGB or RGBA pixels, row after row."""

    width: int
    height: int
    channels: int
    pixels: bytes

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        at = (y * self.width + x) * self.channels
        return self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]

    def count_colours(
        self, colours: Iterable[tuple[int, int, int]], box: tuple[int, int, int, int], tolerance: int = 2
    ) -> dict[tuple[int, int, int], int]:
        """How many pixels inside `box` (left, top, right, bottom) are each colour, within `tolerance`."""
        wanted = list(colours)
        counts = dict.fromkeys(wanted, 0)
        left, top, right, bottom = (max(0, box[0]), max(0, box[1]), min(self.width, box[2]), min(self.height, box[3]))
        exact: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        for y in range(top, bottom):
            row = self.pixels[(y * self.width + left) * self.channels : (y * self.width + right) * self.channels]
            for at in range(0, len(row), self.channels):
                rgb = (row[at], row[at + 1], row[at + 2])
                match = exact.get(rgb)
                if match is None:
                    match = next(
                        (c for c in wanted if all(abs(a - b) <= tolerance for a, b in zip(c, rgb, strict=True))),
                        (-1, -1, -1),
                    )
                    exact[rgb] = match
                if match in counts:
                    counts[match] += 1
        return counts


def decode_png(data: bytes) -> Image:
    """The pixels of a non-interlaced 8-bit RGB/RGBA PNG (what Chromium writes), by hand: zlib and the five
    row filters of the PNG specification."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    at = 8
    header: tuple[int, ...] = ()
    idat = []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}, interlace {interlace}")
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(b"".join(idat))
    out = bytearray(height * stride)
    previous = bytearray(stride)
    for y in range(height):
        row_filter = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if row_filter == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif row_filter == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif row_filter == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif row_filter == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = previous[i]
                c = previous[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + predictor) & 0xFF
        elif row_filter != 0:
            raise ValueError(f"bad PNG filter {row_filter} on row {y}")
        out[y * stride : (y + 1) * stride] = line
        previous = line
    return Image(width, height, channels, bytes(out))
