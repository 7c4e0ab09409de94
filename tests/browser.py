"""Open a page in headless Chromium through the DevTools protocol: console errors, network requests, screenshot.

Skips (pytest.skip) when Chromium or the websocket client is not installed. Debian: ``apt-get install chromium``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")


@dataclass
class PageVisit:
    console_errors: list[str] = field(default_factory=list)  # console.error, uncaught exceptions, browser log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, itself included
    evaluated: list = field(default_factory=list)  # results of the ``scripts`` run after load


class DevTools:
    """One websocket to the browser; commands go to one page session (flattened protocol)."""

    def __init__(self, url: str) -> None:
        websocket = pytest.importorskip("websocket", reason="websocket-client is needed to drive chromium")
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > end:
                raise TimeoutError(f"no {method} within {timeout}s")
            self.events.append(json.loads(self.ws.recv()))

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive within ``seconds`` (late console messages, lazy requests)."""
        self.ws.settimeout(seconds)
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except Exception:  # noqa: BLE001 - the websocket's timeout ends the wait
            pass
        finally:
            self.ws.settimeout(30)


def visit(
    page: Path,
    profile: Path,
    screenshot: Path | None = None,
    width: int = 1366,
    height: int = 900,
    scripts: tuple[str, ...] = (),
) -> PageVisit:
    """Load ``page`` (a local file) in a fresh headless Chromium; report what it logged and requested."""
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port, path = port_file.read_text().split()
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        tools.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        tools.send("Page.navigate", url=page.resolve().as_uri())
        tools.wait_for("Page.loadEventFired")
        out = PageVisit()
        for script in scripts:
            result = tools.send("Runtime.evaluate", expression=script, returnByValue=True)
            if "exceptionDetails" in result:
                out.console_errors.append(f"script failed: {result['exceptionDetails']}")
            out.evaluated.append(result.get("result", {}).get("value"))
        tools.drain(0.5)
        if screenshot is not None:
            data = tools.send("Page.captureScreenshot", format="png")["data"]
            screenshot.write_bytes(base64.b64decode(data))
        for event in tools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                out.console_errors.append(str(params["exceptionDetails"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.console_errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                out.requests.append(params["request"]["url"])
        try:
            tools.send("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may close the socket before it answers
            pass
        return out
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser we started and its helper processes
            proc.wait()
