"""Headless Chromium (Debian's `chromium`) driven through the Chrome DevTools protocol, for tests of
what the MLflow UI shows a fresh browser profile. The websocket client is aiohttp's (installed with
ray[default]); no browser-automation package is needed.

    with Browser(tmp_path / "profile") as browser:
        page = browser.open(url)
        page.wait_for("document.body.innerText.includes('4 matching runs')")
        text = page.text()
        page.screenshot(tmp_path / "runs.png")
"""

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)", pytrace=False)
    return path


class Browser:
    """One headless Chromium with a new, empty profile in `profile_dir`."""

    def __init__(self, profile_dir: Path, width: int = 1600, height: int = 1000):
        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)
        self.ws = self.session = None
        self.loop.run_until_complete(self._connect(self._devtools_url()))

    def _devtools_url(self, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")

    async def _connect(self, url: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)

    def send(self, method: str, session_id: str | None = None, timeout: float = 60, **params) -> dict:
        """One DevTools command; its result (events are skipped)."""
        return self.loop.run_until_complete(self._send(method, session_id, timeout, params))

    async def _send(self, method, session_id, timeout, params):
        message_id = next(self.ids)
        message = {"id": message_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        await self.ws.send_str(json.dumps(message))
        while True:
            reply = json.loads((await self.ws.receive(timeout=timeout)).data)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> "Page":
        target = self.send("Target.createTarget", url=url)["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        if self.ws is not None:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def evaluate(self, expression: str):
        result = self.browser.send("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 120):
        """Poll a JS expression until it is truthy; its value (fails with the page's text)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {expression}; page text: {self.text()[:3000]}")

    def click(self, selector: str) -> bool:
        """Click the first element matching `selector`; False when there is none."""
        return bool(self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                                  f"if (e) e.click(); return !!e }})()"))

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_frame(self, url_prefix: str, timeout: float = 60) -> "Page":
        """The child frame whose URL starts with `url_prefix`, once loaded. Chromium runs sandboxed
        frames in their own process, so the frame is a DevTools target of its own."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            targets = self.browser.send("Target.getTargets")["targetInfos"]
            frame = next((t for t in targets if t["type"] == "iframe" and t["url"].startswith(url_prefix)), None)
            if frame is not None:
                session = self.browser.send("Target.attachToTarget", targetId=frame["targetId"], flatten=True)
                return Page(self.browser, session["sessionId"])
            time.sleep(0.5)
        raise AssertionError(f"no frame at {url_prefix}...; page text: {self.text()[:3000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.browser.send("Page.captureScreenshot", self.session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
