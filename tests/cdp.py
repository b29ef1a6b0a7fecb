"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``, for report tests.

Why a pipe and not playwright or a websocket: the pipe needs nothing beyond the standard
library and Debian's ``chromium`` (no driver download, no browser build pinned to a
library version), opens no TCP port, and dies with the browser. Chromium reads
NUL-terminated JSON commands on fd 3 and writes NUL-terminated JSON replies and events on
fd 4; this module owns both ends.

The browser is started with flags that keep it off the network (no background
networking, component updates, sync, QUIC) and with a throw-away profile.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    "--hide-scrollbars", "--remote-debugging-pipe",
)


class CDPError(RuntimeError):
    """The browser answered a command with an error, or did not answer in time."""


def find_chromium() -> str | None:
    """Debian's chromium, else one on PATH (chromium, chromium-browser)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    """One headless Chromium and one page; events are collected per page load."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900) -> None:
        self._profile = tempfile.mkdtemp(prefix="simx-cdp-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser wants its ends as fds 3 and 4: bash moves them there and execs it
        # (no preexec_fn, unsafe in a process with threads; dash takes one-digit fds only).
        # They are first put at fds >= 10, so that moving one never overwrites the other.
        to_browser_r, from_browser_w = _high_fd(to_browser_r), _high_fd(from_browser_w)
        move = (f'exec 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- '
                f'{from_browser_w}>&-; exec "$0" "$@"')
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", move, executable, *FLAGS, f"--user-data-dir={self._profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self._stderr_tail: list[bytes] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True)

    # ------------------------------------------------------------------ plumbing
    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line])[-20:]

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cv:
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cv:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                        if msg.get("method") == "Page.javascriptDialogOpening":
                            self._dismiss_dialog(msg.get("sessionId"))
                    self._cv.notify_all()

    def _dismiss_dialog(self, session: str | None) -> None:
        """Close an alert() at once (fire and forget: the reader thread cannot wait on itself),
        so a script that ran shows up as an event instead of hanging the page."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": "Page.handleJavaScriptDialog",
               "params": {"accept": True}, "sessionId": session}
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False,
             timeout: float = 60.0) -> dict[str, Any]:
        """Send one command and wait for its reply; raises CDPError on an error reply."""
        with self._cv:
            self._next_id += 1
            mid = self._next_id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cv:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = b"".join(self._stderr_tail).decode(errors="replace")[-2000:]
                    raise CDPError(f"{method}: no reply (browser exit {self.proc.poll()}): {tail}")
                self._cv.wait(min(left, 0.5))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, since: int, timeout: float = 60.0) -> dict[str, Any]:
        """The first event ``method`` at or after index ``since`` of ``events``."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for ev in self.events[since:]:
                    if ev.get("method") == method:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"timed out waiting for {method}")
                self._cv.wait(min(left, 0.5))

    # ------------------------------------------------------------------ page
    def open(self, path: str | os.PathLike[str], timeout: float = 120.0) -> PageLoad:
        """Load a local file and wait for its load event; returns what happened meanwhile."""
        since = len(self.events)
        t0 = time.perf_counter()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=True)
        self.wait_event("Page.loadEventFired", since, timeout)
        seconds = time.perf_counter() - t0
        time.sleep(0.2)  # let late console messages arrive
        return PageLoad(self, since, seconds)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (DevTools ignores page CSP)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            raise CDPError(f"evaluate failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, out: str | os.PathLike[str], full_page: bool = False,
                   max_height: int = 4000) -> Path:
        """A PNG (or, for a .jpg name, a JPEG) of the viewport (or the page, capped at
        ``max_height`` px) written to ``out``."""
        jpeg = Path(out).suffix.lower() in (".jpg", ".jpeg")
        params: dict[str, Any] = {"format": "jpeg", "quality": 85} if jpeg else {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth,"
                                 " document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0],
                              "height": min(size[1], max_height), "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params, session=True)["data"]
        out = Path(out)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except CDPError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PageLoad:
    """The events of one page load: console errors, exceptions, dialogs, failed requests."""

    def __init__(self, browser: Browser, since: int, seconds: float) -> None:
        self.browser = browser
        self.since = since
        self.seconds = seconds

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.browser.events[self.since:]

    def problems(self) -> list[str]:
        """Everything that should not happen on a report page, one line each."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.consoleAPICalled":
                out.append(f"console.{p.get('type')} called (a script ran): {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log {p['entry'].get('level')}: {p['entry'].get('text')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"a dialog opened (a script ran): {p.get('message')}")
        return out
